//! Issue #7, performance: what the coordinator does with received updates, against the limits.
//!
//! 1. Throughput in MB/s of update bytes over 10 parties × ~100 MB blobs (a 25.3M-parameter MLP):
//!    `verify` (length and header checks, ed25519 signature, sha256 of the bytes, strict
//!    safetensors decode) folded into a streaming [`FedAvg`] and finished, next to the limits
//!    measured in the same run on the same bytes — sha256 (sha2 crate) and a plain memory copy —
//!    and the parts (decode alone, accumulate alone) as a timing split.
//! 2. Peak memory of FedAvg over N = 10 and 100 updates of a ~10 MB model, each case in a child
//!    process of this binary (so `VmHWM` is per case): updates produced, verified and folded one
//!    at a time (`streaming`), and, for comparison, all verified updates held before merging
//!    (`collected`, what `fedavg(&[VerifiedUpdate])` needs).
//!
//! Run: `cargo bench --workspace --bench aggregate`. Numbers are in docs/BENCHMARKS.md.
//! Without `--bench` (e.g. `cargo test --benches`) everything runs once on a tiny model.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use sha2::{Digest, Sha256 as Sha256Hasher};
use shared_model::SigningKey;
use shared_model::aggregate::{FedAvg, fedavg};
use shared_model::blob::{self, BlobMeta, BlobRole};
use shared_model::ids::{PartyId, RoundNo, Sha256, StepNo, TaskId};
use shared_model::spec::ModelSpec;
use shared_model::stats::Normalization;
use shared_model::update::{Expectations, SignedUpdate, VerifiedUpdate, verify};
use shared_model::weights::Weights;

/// Set in a child process: which memory case to run (`streaming:N:HIDDEN` or `collected:N:HIDDEN`).
const CASE_ENV: &str = "YOSEGI_AGGREGATE_MEMORY_CASE";

/// Sizes of one run: the full benchmark, or a quick smoke run.
#[derive(Clone, Copy, Debug)]
struct Scale {
    parties: usize,
    big_hidden: &'static str,
    mem_hidden: &'static str,
    mem_counts: [usize; 2],
}

const FULL: Scale = Scale {
    parties: 10,
    // 30 → 4096 → 4096 → 2048 → 1: 25 300 993 parameters, 101.2 MB blobs.
    big_hidden: "[4096, 4096, 2048]",
    // 30 → 1600 → 1536 → 1: 2 509 473 parameters, 10.0 MB blobs.
    mem_hidden: "[1600, 1536]",
    mem_counts: [10, 100],
};

const SMOKE: Scale = Scale {
    parties: 2,
    big_hidden: "[64]",
    mem_hidden: "[32]",
    mem_counts: [2, 3],
};

fn spec(hidden: &str) -> ModelSpec {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("data/wdbc.toml"))
        .unwrap()
        .replace("hidden = [16, 8]", &format!("hidden = {hidden}"));
    ModelSpec::parse(&text, "bench").unwrap()
}

/// What one coordinator round expects, and a key per party (deterministic).
struct Round {
    spec: ModelSpec,
    task: TaskId,
    base: Sha256,
    base_weights: Weights,
}

impl Round {
    fn new(hidden: &str) -> Self {
        let spec = spec(hidden);
        let base_weights = Weights::initial(&spec, &Normalization::identity(spec.input_width()));
        Self {
            spec,
            task: TaskId::new("bench").unwrap(),
            base: Sha256::of(b"base model"),
            base_weights,
        }
    }

    fn party(&self, i: usize) -> (PartyId, SigningKey) {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        (
            PartyId::new(format!("plant-{i}")).unwrap(),
            SigningKey::from_bytes(&seed),
        )
    }

    /// Party `i`'s signed update: the base model shifted by a party-specific amount.
    fn update(&self, i: usize) -> (SignedUpdate, Vec<u8>) {
        let shift = 1e-3 * (i as f32 + 1.0);
        let w = self
            .base_weights
            .map_trainable(|t| t.data.iter().map(|v| v + shift).collect())
            .unwrap();
        let bytes = blob::encode(&w, &BlobMeta::new(&self.spec, BlobRole::Update));
        drop(w);
        let (party, key) = self.party(i);
        let env = SignedUpdate::for_blob(
            self.task.clone(),
            self.spec.id(),
            RoundNo(1),
            StepNo(0),
            self.base,
            party,
            &bytes,
            100 + i as u64,
            &key,
        );
        (env, bytes)
    }

    /// What the coordinator does with one received blob.
    fn verify(&self, i: usize, env: &SignedUpdate, bytes: &[u8]) -> VerifiedUpdate {
        let (party, key) = self.party(i);
        let expect = Expectations {
            task: &self.task,
            spec: &self.spec,
            round: RoundNo(1),
            step: StepNo(0),
            base_model: self.base,
            party: &party,
            stage: 0,
        };
        verify(env, bytes, &key.verifying_key(), &expect).unwrap()
    }
}

fn throughput(c: &mut Criterion, scale: Scale) {
    let round = Round::new(scale.big_hidden);
    let updates: Vec<(SignedUpdate, Vec<u8>)> =
        (0..scale.parties).map(|i| round.update(i)).collect();
    let total: usize = updates.iter().map(|(_, b)| b.len()).sum();
    eprintln!(
        "aggregate: {} parties × {} bytes ({} parameters), {} bytes in all",
        scale.parties,
        updates[0].1.len(),
        round.spec.parameter_count(),
        total
    );
    let verified: Vec<VerifiedUpdate> = updates
        .iter()
        .enumerate()
        .map(|(i, (env, bytes))| round.verify(i, env, bytes))
        .collect();
    let mut copy = vec![0u8; updates[0].1.len()];

    let mut group = c.benchmark_group("fedavg_10x100MB");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function("limit_memcpy", |b| {
        b.iter(|| {
            for (_, bytes) in &updates {
                copy.copy_from_slice(bytes);
                black_box(&copy);
            }
        })
    });
    group.bench_function("limit_sha256", |b| {
        b.iter(|| {
            for (_, bytes) in &updates {
                black_box(Sha256Hasher::digest(bytes));
            }
        })
    });
    group.bench_function("verify_and_fedavg", |b| {
        b.iter(|| {
            let mut acc = FedAvg::new();
            for (i, (env, bytes)) in updates.iter().enumerate() {
                let v = round.verify(i, env, bytes);
                acc.add(&v).unwrap();
            }
            black_box(acc.finish().unwrap())
        })
    });
    // The timing split of verify_and_fedavg.
    group.bench_function("part_verify", |b| {
        b.iter(|| {
            for (i, (env, bytes)) in updates.iter().enumerate() {
                black_box(round.verify(i, env, bytes));
            }
        })
    });
    group.bench_function("part_decode", |b| {
        b.iter(|| {
            for (_, bytes) in &updates {
                black_box(blob::decode(bytes, &round.spec, BlobRole::Update).unwrap());
            }
        })
    });
    group.bench_function("part_accumulate_and_finish", |b| {
        b.iter(|| black_box(fedavg(&verified).unwrap()))
    });
    group.finish();
}

/// `VmHWM` (peak) or `VmRSS` (current) of this process, in bytes.
fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
    let kb: u64 = line
        .trim_start_matches(key)
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// One memory case, in a child process: prints one line `case n model_bytes base_rss peak_rss seconds`.
fn memory_child(case: &str) {
    let mut parts = case.splitn(3, ':');
    let (mode, n, hidden) = (
        parts.next().unwrap(),
        parts.next().unwrap().parse::<usize>().unwrap(),
        parts.next().unwrap(),
    );
    let round = Round::new(hidden);
    let model_bytes = round.base_weights.numel() as u64 * 4;
    // Start the peak at the current RSS (writing 5 to clear_refs resets VmHWM, Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let base = status_bytes("VmRSS");
    let start = Instant::now();
    let merged = match mode {
        "streaming" => {
            let mut acc = FedAvg::new();
            for i in 0..n {
                let (env, bytes) = round.update(i);
                let v = round.verify(i, &env, &bytes);
                drop(bytes);
                acc.add(&v).unwrap();
            }
            acc.finish().unwrap()
        }
        "collected" => {
            let mut all = Vec::with_capacity(n);
            for i in 0..n {
                let (env, bytes) = round.update(i);
                all.push(round.verify(i, &env, &bytes));
            }
            fedavg(&all).unwrap()
        }
        other => panic!("unknown memory case {other}"),
    };
    let seconds = start.elapsed().as_secs_f64();
    black_box(merged);
    let peak = status_bytes("VmHWM");
    println!("{mode} {n} {model_bytes} {base} {peak} {seconds:.2}");
}

fn memory_report(scale: Scale) {
    let exe = std::env::current_exe().unwrap();
    println!("\npeak memory of FedAvg (each case a child process; growth = VmHWM − VmRSS before)");
    println!(
        "{:<10} {:>4} {:>11} {:>12} {:>12} {:>8} {:>6}",
        "mode", "N", "model MB", "RSS before", "peak growth", "× model", "s"
    );
    for mode in ["streaming", "collected"] {
        for n in scale.mem_counts {
            let out = Command::new(&exe)
                .env(CASE_ENV, format!("{mode}:{n}:{}", scale.mem_hidden))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let f: Vec<&str> = text.split_whitespace().collect();
            let mb = |s: &str| s.parse::<f64>().unwrap() / 1e6;
            let (model, base, peak) = (mb(f[2]), mb(f[3]), mb(f[4]));
            println!(
                "{:<10} {:>4} {:>11.1} {:>9.1} MB {:>9.1} MB {:>8.1} {:>6}",
                f[0],
                f[1],
                model,
                base,
                peak - base,
                (peak - base) / model,
                f[5]
            );
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let scale = if full { FULL } else { SMOKE };
    if let Ok(case) = std::env::var(CASE_ENV) {
        memory_child(&case);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    throughput(&mut c, scale);
    c.final_summary();
    memory_report(scale);
}
