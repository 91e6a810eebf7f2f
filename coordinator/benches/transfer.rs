//! Chunked model download and update upload throughput on loopback (issue #7), beside the raw
//! limits of the same bytes (memcpy, sha256). A plain `main` that prints a table: criterion's
//! repetitions would take far too long for a 1 GB blob.
//!
//! An in-process coordinator serves over TLS on 127.0.0.1 (`LocalFederation`); one simulated
//! party is enrolled in a task whose synthetic regression spec has the size asked for, answers
//! the statistics step, then, timed:
//! - download of the base model (version 0) through `PartyClient::download`;
//! - upload of a signed update of the same size through `PartyClient::upload` until the ack,
//!   which includes the coordinator's verification and its durable store (fsync). The
//!   coordinator's own time for that (`yosegi_verification_seconds_sum` from its metrics) is
//!   subtracted to give the pure transfer, and `shared_model::update::verify` of the same bytes
//!   is timed here alone.
//!
//! Sizes: `YOSEGI_BENCH_SIZES_MB=100,1000` (the default). Peak memory is the process's `VmHWM`
//! (coordinator and party together), reset through `/proc/self/clear_refs` just before the
//! download and just before the upload, so each figure covers one transfer (plus what the
//! process already held then, e.g. the update blob before its upload).
//!
//! Run: `cargo bench --workspace --bench transfer`.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use coordinator::grpc::ServeConfig;
use coordinator::local::LocalFederation;
use coordinator::swarm::{self, MemorySource, RandomUpdate};
use party_client::grpc::{Ack, PartyClient, Work};
use shared_model::ids::{PartyId, RoundNo, Sha256, StepNo, TaskId};
use shared_model::model::max_model_blob_bytes;
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use shared_model::update::{self, Expectations};

/// Bytes per parameter in a blob (f32).
const F32: u64 = 4;
/// Feature columns of `swarm::spec_text`.
const FEATURES: usize = 16;
/// Longest any wait may take.
const TIMEOUT: Duration = Duration::from_secs(1800);

/// One size's measurements.
#[derive(Debug)]
struct Row {
    mb: u64,
    params: u64,
    blob_bytes: u64,
    update_bytes: u64,
    download_secs: f64,
    upload_ack_secs: f64,
    coordinator_secs: f64,
    verify_secs: f64,
    memcpy_secs: f64,
    sha256_secs: f64,
    download_peak_kib: Option<u64>,
    upload_peak_kib: Option<u64>,
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0))
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<u64> = std::env::var("YOSEGI_BENCH_SIZES_MB")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .map(|s| s.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .context("YOSEGI_BENCH_SIZES_MB: expected comma-separated megabytes, e.g. 100,1000")?;
    // Criterion-style flags (`--bench`) from cargo are ignored.
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for mb in sizes {
        let row = rt.block_on(one_size(mb))?;
        eprintln!("{row:?}");
        rows.push(row);
    }
    print!("{}", table(&rows));
    Ok(())
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| blob | parameters | download MB/s (s) | upload→ack MB/s (s) | coordinator verify+store s | upload transfer only MB/s | verify alone s (MB/s) | memcpy MB/s | sha256 MB/s | peak RSS MiB download / upload |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let transfer = (r.upload_ack_secs - r.coordinator_secs).max(1e-9);
        let up = r.update_bytes;
        s.push_str(&format!(
            "| {} MB ({:.0} MB) | {} | {:.0} ({:.2}) | {:.0} ({:.2}) | {:.2} | {:.0} | {:.2} ({:.0}) | {:.0} | {:.0} | {} / {} |\n",
            r.mb,
            r.blob_bytes as f64 / 1e6,
            r.params,
            mbps(r.blob_bytes, r.download_secs),
            r.download_secs,
            mbps(up, r.upload_ack_secs),
            r.upload_ack_secs,
            r.coordinator_secs,
            mbps(up, transfer),
            r.verify_secs,
            mbps(up, r.verify_secs),
            mbps(up, r.memcpy_secs),
            mbps(up, r.sha256_secs),
            mib(r.download_peak_kib),
            mib(r.upload_peak_kib),
        ));
    }
    s
}

/// `swarm::spec_text` with two hidden layers of width w (w² + 19w + 1 parameters over its 16
/// features): one layer may be at most 2^20 wide, too narrow for 25M parameters.
fn spec_text(name: &str, params: u64) -> String {
    let w = ((361.0 + 4.0 * params.saturating_sub(1) as f64).sqrt() - 19.0) / 2.0;
    let w = (w as u64).max(1);
    let text = swarm::spec_text(name, 1_000);
    let start = text
        .find("hidden = [")
        .expect("spec_text has a hidden line");
    let end = start + text[start..].find(']').expect("the hidden list ends");
    format!("{}hidden = [{w}, {w}{}", &text[..start], &text[end..])
}

/// With `YOSEGI_PERF_CTL=FIFO`, tells `perf record --control=fifo:FIFO -D -1` to start or stop
/// sampling (`enable`/`disable`), so a profile covers only the timed transfers;
/// `YOSEGI_PERF_PHASE=download` or `upload` narrows it to one of them.
fn perf(cmd: &str, phase: &str) {
    let wanted = std::env::var("YOSEGI_PERF_PHASE").map_or(true, |p| p == phase);
    if let Some(path) = std::env::var_os("YOSEGI_PERF_CTL").filter(|_| wanted) {
        let sent = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{cmd}\n").as_bytes()));
        if let Err(e) = sent {
            eprintln!("perf control {}: {e}", path.to_string_lossy());
        }
    }
}

/// Resets this process's `VmHWM` (Linux: writing 5 to `clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A free loopback port for the metrics endpoint.
fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// `yosegi_verification_seconds_sum` from the coordinator's metrics endpoint (over its TLS).
fn verification_seconds(at: std::net::SocketAddr, ca: &std::path::Path) -> anyhow::Result<f64> {
    let (_, text) = coordinator::metrics::get(at, "/metrics", Some(ca))?;
    text.lines()
        .find_map(|l| l.strip_prefix("yosegi_verification_seconds_sum "))
        .context("metrics without yosegi_verification_seconds_sum")?
        .trim()
        .parse()
        .context("parsing yosegi_verification_seconds_sum")
}

async fn one_size(mb: u64) -> anyhow::Result<Row> {
    let root = tempfile::Builder::new()
        .prefix("yosegi-transfer-")
        .tempdir_in(std::env::var_os("YOSEGI_BENCH_DIR").unwrap_or_else(|| "/tmp".into()))?;
    let metrics_at = free_port()?;
    let fed = LocalFederation::start(
        root.path(),
        ServeConfig {
            metrics: Some(metrics_at),
            ..ServeConfig::default()
        },
    )
    .await?;
    let mut op = fed.operator().await?;

    let task = format!("transfer-{mb}mb");
    let spec_toml = spec_text(&task, mb * 1_000_000 / F32);
    let spec = ModelSpec::parse(&spec_toml, "<bench>")?;
    let party = "bench-party".to_string();
    let key = shared_model::keys::generate()?;
    op.enroll(&party, &key.verifying_key()).await?;
    let t = Instant::now();
    op.create_task(&task, &spec_toml, std::slice::from_ref(&party))
        .await?;
    let round = op
        .start_round(&task, "fedavg", HashMap::new(), 1, 3_600_000, 1)
        .await?;
    eprintln!(
        "{mb} MB: task created ({} parameters) in {:.1} s",
        spec.parameter_count(),
        t.elapsed().as_secs_f64()
    );

    let mut c = PartyClient::connect_with(&fed.url, &fed.client_tls(), &party, key.clone()).await?;
    // Statistics step, then the training assignment.
    let until = Instant::now() + TIMEOUT;
    let (assignment, base_version, base_sha, step) = loop {
        anyhow::ensure!(Instant::now() < until, "no training assignment in time");
        let Some(a) = c.next_assignment(2_000).await? else {
            continue;
        };
        match &a.work {
            Work::Stats => {
                let rows: Vec<f32> = (0..8 * FEATURES).map(|i| i as f32 * 0.01).collect();
                c.submit_sums(&a.id, &FeatureSums::of_rows(&rows, FEATURES))
                    .await?;
            }
            Work::Train {
                base_version,
                base_sha256,
                ..
            } if a.round == round => {
                break (
                    a.id.clone(),
                    *base_version,
                    party_client::grpc::digest(base_sha256)?,
                    a.step,
                );
            }
            other => anyhow::bail!("unexpected assignment {other:?}"),
        }
    };

    reset_peak();
    // (1) Download of the base model.
    perf("enable", "download");
    let t = Instant::now();
    let (_manifest, base) = c
        .download(&task, base_version, max_model_blob_bytes(&spec))
        .await?;
    let download_secs = t.elapsed().as_secs_f64();
    perf("disable", "download");
    let download_peak_kib = swarm::peak_kib(MemorySource::ThisProcess);
    anyhow::ensure!(Sha256::of(&base) == base_sha, "base model hash mismatch");
    let blob_bytes = base.len() as u64;

    // The update to send (not timed): random weights of the base's shapes, signed.
    let (party_id, task_id) = (PartyId::new(&party)?, TaskId::new(&task)?);
    let (blob, env) = tokio::task::spawn_blocking({
        let (spec, key, party_id, task_id) =
            (spec.clone(), key.clone(), party_id.clone(), task_id.clone());
        move || {
            swarm::random_update(&RandomUpdate {
                spec: &spec,
                base: &base,
                base_version,
                task: task_id,
                round,
                step,
                party: party_id,
                samples: 8,
                seed: 1,
                key: &key,
            })
        }
    })
    .await??;
    let update_bytes = blob.len() as u64;

    // Raw limits and verification alone, on the update's own bytes, before sending them.
    let params = spec.parameter_count();
    let (blob, env, memcpy_secs, sha256_secs, verify_secs) = tokio::task::spawn_blocking({
        let (spec, key) = (spec.clone(), key.clone());
        move || {
            let mut dst = vec![0u8; blob.len()];
            dst.copy_from_slice(&blob); // fault the pages in
            let t = Instant::now();
            dst.copy_from_slice(&blob);
            let memcpy = t.elapsed().as_secs_f64();
            drop(dst);
            let t = Instant::now();
            std::hint::black_box(Sha256::of(std::hint::black_box(&blob)));
            let sha = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let v = update::verify(
                &env,
                &blob,
                &key.verifying_key(),
                &Expectations {
                    task: &task_id,
                    spec: &spec,
                    round: RoundNo(round),
                    step: StepNo(step),
                    base_model: base_sha,
                    party: &party_id,
                    stage: 0,
                },
            );
            let verify = t.elapsed().as_secs_f64();
            drop(v.context("verifying the update here")?);
            anyhow::Ok((blob, env, memcpy, sha, verify))
        }
    })
    .await??;

    // (2) Upload until the ack; the coordinator's verify + store time from its metrics.
    let before = verification_seconds(metrics_at, &fed.ca())?;
    reset_peak();
    perf("enable", "upload");
    let t = Instant::now();
    let ack = c.upload(&assignment, &env, blob, None).await?;
    let upload_ack_secs = t.elapsed().as_secs_f64();
    perf("disable", "upload");
    let upload_peak_kib = swarm::peak_kib(MemorySource::ThisProcess);
    anyhow::ensure!(
        ack == Ack::Accepted,
        "expected an accepted upload, got {ack:?}"
    );
    let coordinator_secs = verification_seconds(metrics_at, &fed.ca())? - before;

    // Let the round publish before stopping, so the next size starts on a quiet machine.
    let t = Instant::now();
    fed.wait_for(&task, TIMEOUT, |rs| {
        rs.iter()
            .any(|r| r.round == round && (r.phase == "published" || r.phase == "failed"))
    })
    .await?;
    eprintln!(
        "{mb} MB: round merged and published {:.1} s after the ack",
        t.elapsed().as_secs_f64()
    );
    drop(c);
    drop(op);
    fed.stop().await?;
    Ok(Row {
        mb,
        params,
        blob_bytes,
        update_bytes,
        download_secs,
        upload_ack_secs,
        coordinator_secs,
        verify_secs,
        memcpy_secs,
        sha256_secs,
        download_peak_kib,
        upload_peak_kib,
    })
}
