//! `coordinator swarm`: load generation (issue #7). N simulated parties in one process, each
//! with its own ed25519 key, run one task against one coordinator over real gRPC (TLS pinned to
//! the CA): enrolment, the statistics step (sums of a few random rows), then R FedAvg rounds of
//! real signed uploads of random finite weights built on the downloaded base model. Reports the
//! time of each phase and the coordinator's peak resident memory (`VmHWM`).
//!
//! It lives in the coordinator binary, not in `party-client`, because enrolling the parties
//! needs the operator key and client; the parties themselves use `party_client::grpc`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use party_client::grpc::{Ack, ClientTls, PartyClient, Work};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use shared_model::SigningKey;
use shared_model::ids::{PartyId, Sha256, TaskId};
use shared_model::model::max_model_blob_bytes;
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::grpc::client::OperatorClient;
mod update;
use crate::views::{PartyStateName, RoundPhase};
pub use update::{RandomUpdate, random_update};

/// Feature columns of the synthetic spec.
const FEATURES: usize = 16;
/// Rows each party pretends to hold (its sums and its update's sample count).
const ROWS: usize = 8;

/// Where the coordinator's peak memory is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// The coordinator runs in this process (`LocalFederation`): `/proc/self/status`, which
    /// then also counts the simulated parties.
    ThisProcess,
    /// A coordinator process on this machine: `/proc/PID/status`.
    Pid(u32),
    /// Not measured.
    None,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// The coordinator's URL.
    pub server: String,
    /// TLS settings (the pinned CA).
    pub tls: ClientTls,
    /// The operator key, to enroll the parties, create the task and start the rounds.
    pub operator_key: SigningKey,
    /// Simulated parties.
    pub parties: usize,
    /// Approximate trainable parameter count of the task's network.
    pub param_count: u64,
    /// FedAvg rounds.
    pub rounds: u32,
    /// Deadline of each round, and the longest any phase may take.
    pub deadline: Duration,
    /// Parties working (connected) at once.
    pub concurrency: usize,
    /// Prefix of the task and party names (unique per run: enrolment refuses known names).
    pub prefix: String,
    /// Where to read the coordinator's peak memory.
    pub memory: MemorySource,
}

/// The command's flags.
#[derive(Debug, clap::Args)]
pub struct SwarmArgs {
    /// Simulated parties.
    #[arg(long, default_value_t = 100)]
    pub parties: usize,
    /// Approximate trainable parameters of the task's network (a 16-input regression MLP
    /// with one hidden layer sized to match).
    #[arg(long, default_value_t = 10_000)]
    pub param_count: u64,
    /// FedAvg rounds.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Deadline of each round and the longest any phase may take, in seconds.
    #[arg(long, default_value_t = 600)]
    pub deadline: u64,
    /// Parties connected and working at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Prefix of the task and party names [default: swarm-UNIXSECONDS].
    #[arg(long)]
    pub prefix: Option<String>,
    /// The coordinator's process id on this machine: its peak memory (VmHWM) is reported.
    #[arg(long)]
    pub coordinator_pid: Option<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub remote: crate::remote::Remote,
}

impl SwarmArgs {
    /// The validated run settings.
    pub fn config(&self) -> anyhow::Result<SwarmConfig> {
        let remote = &self.remote;
        let tls = ClientTls {
            ca: Some(remote.ca.clone()),
            identity: remote.tls_cert.clone().zip(remote.tls_key.clone()),
        };
        let prefix = self.prefix.clone().unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("swarm-{secs}")
        });
        Ok(SwarmConfig {
            server: remote.server.clone(),
            tls,
            operator_key: crate::grpc::client::operator_key(&remote.operator_key)?,
            parties: self.parties,
            param_count: self.param_count,
            rounds: self.rounds,
            deadline: Duration::from_secs(self.deadline),
            concurrency: self.concurrency,
            prefix,
            memory: self
                .coordinator_pid
                .map_or(MemorySource::None, MemorySource::Pid),
        })
    }
}

/// Runs the command: prints the table, writes the JSON if asked.
pub async fn command(args: SwarmArgs) -> anyhow::Result<()> {
    let report = run(args.config()?).await?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Time of one round.
#[derive(Clone, Debug, Serialize)]
pub struct RoundTiming {
    /// Round number.
    pub round: u64,
    /// Round open (previous phase done) → every upload acknowledged, seconds.
    pub uploads_secs: f64,
    /// Last acknowledgement → the merged model published, seconds.
    pub merge_publish_secs: f64,
    /// Published model version.
    pub version: u64,
    /// Contributors the coordinator reports for the round.
    pub contributors: usize,
    /// Update blob size, bytes.
    pub update_bytes: u64,
}

/// The outcome of a swarm run.
#[derive(Clone, Debug, Serialize)]
pub struct SwarmReport {
    /// Parties.
    pub parties: usize,
    /// Trainable parameters of the spec actually used.
    pub param_count: u64,
    /// The task created.
    pub task: String,
    /// Key generation, seconds.
    pub keygen_secs: f64,
    /// Enrolment of every party, seconds.
    pub enroll_secs: f64,
    /// Task creation → statistics merged and the first round open, seconds.
    pub task_statistics_secs: f64,
    /// Per round.
    pub rounds: Vec<RoundTiming>,
    /// Whole run, seconds.
    pub total_secs: f64,
    /// Coordinator's peak resident set (`VmHWM`), KiB, when measured.
    pub coordinator_peak_kib: Option<u64>,
    /// What the memory figure covers.
    pub memory_source: String,
}

impl SwarmReport {
    /// A plain-text table of the phases.
    pub fn table(&self) -> String {
        let mut s = format!(
            "swarm: {} parties, {} parameters, task {}\n{:<34} {:>10}\n",
            self.parties, self.param_count, self.task, "phase", "seconds"
        );
        let mut row = |name: &str, secs: f64| s.push_str(&format!("{name:<34} {secs:>10.2}\n"));
        row("key generation", self.keygen_secs);
        row("enroll", self.enroll_secs);
        row(
            "task + statistics (→ round open)",
            self.task_statistics_secs,
        );
        for r in &self.rounds {
            row(
                &format!("round {}: open → all uploads acked", r.round),
                r.uploads_secs,
            );
            row(
                &format!("round {}: merge → published", r.round),
                r.merge_publish_secs,
            );
        }
        row("total", self.total_secs);
        for r in &self.rounds {
            s.push_str(&format!(
                "round {}: version {}, {} contributors, update blob {} bytes\n",
                r.round, r.version, r.contributors, r.update_bytes
            ));
        }
        match self.coordinator_peak_kib {
            Some(k) => s.push_str(&format!(
                "coordinator peak memory (VmHWM, {}): {:.1} MiB\n",
                self.memory_source,
                k as f64 / 1024.0
            )),
            None => s.push_str("coordinator peak memory: not measured (give --coordinator-pid)\n"),
        }
        s
    }
}

/// A regression spec over [`FEATURES`] columns whose network has about `param_count`
/// trainable parameters: linear when that is at most 17, else one hidden layer of width h
/// ((16 + 1)·h + h + 1 = 18h + 1 parameters).
pub fn spec_text(name: &str, param_count: u64) -> String {
    let per_unit = FEATURES as u64 + 2;
    let hidden = if param_count <= FEATURES as u64 + 1 {
        String::new()
    } else {
        ((param_count - 1) / per_unit).max(1).to_string()
    };
    let features: Vec<String> = (0..FEATURES).map(|j| format!("\"x{j}\"")).collect();
    format!(
        "format = 1\nname = \"{name}\"\n\n[task]\nkind = \"regression\"\ntarget = \"y\"\nfeatures = [{}]\n\n[model]\nhidden = [{hidden}]\nactivation = \"relu\"\n\n[training]\noptimizer = \"sgd\"\nlearning_rate = 0.01\nlocal_epochs = 1\nbatch_size = 8\nseed = 7\n",
        features.join(", ")
    )
}

/// The peak resident set of a process, from `VmHWM` in its `/proc/…/status`, in KiB.
pub fn peak_kib(source: MemorySource) -> Option<u64> {
    let path = match source {
        MemorySource::ThisProcess => PathBuf::from("/proc/self/status"),
        MemorySource::Pid(pid) => PathBuf::from(format!("/proc/{pid}/status")),
        MemorySource::None => return None,
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One simulated party.
#[derive(Debug)]
struct SimParty {
    name: String,
    key: SigningKey,
    seed: u64,
}

/// What all parties share.
#[derive(Debug)]
struct Shared {
    server: String,
    tls: ClientTls,
    task: String,
    spec: ModelSpec,
    deadline: Duration,
}

/// Runs the swarm and returns its report.
pub async fn run(config: SwarmConfig) -> anyhow::Result<SwarmReport> {
    anyhow::ensure!(config.parties > 0, "expected at least one party, found 0");
    anyhow::ensure!(
        config.concurrency > 0,
        "expected a concurrency of at least 1, found 0"
    );
    let started = Instant::now();
    let task = format!("{}-task", config.prefix);
    let spec_toml = spec_text(&task, config.param_count);
    let spec = ModelSpec::parse(&spec_toml, "<swarm>")?;

    let t = Instant::now();
    let n = config.parties;
    let parties: Vec<Arc<SimParty>> = tokio::task::spawn_blocking({
        let prefix = config.prefix.clone();
        move || {
            (0..n)
                .map(|i| {
                    Ok(Arc::new(SimParty {
                        name: format!("{prefix}-p{i:05}"),
                        key: shared_model::keys::generate()?,
                        seed: i as u64,
                    }))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        }
    })
    .await??;
    let keygen_secs = t.elapsed().as_secs_f64();

    let mut op =
        OperatorClient::connect_with(&config.server, &config.tls, config.operator_key.clone())
            .await?;
    let limit = Arc::new(Semaphore::new(config.concurrency));

    // Enrolment: operator calls over one channel, `concurrency` at a time.
    let t = Instant::now();
    let mut set = JoinSet::new();
    for p in &parties {
        let (mut op, p, limit) = (op.clone(), p.clone(), limit.clone());
        set.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            op.enroll(&p.name, &p.key.verifying_key())
                .await
                .with_context(|| format!("enrolling {}", p.name))
        });
    }
    join_all(set).await?;
    let enroll_secs = t.elapsed().as_secs_f64();

    // Task, queued rounds, statistics; done when the first round opens.
    let t = Instant::now();
    let names: Vec<String> = parties.iter().map(|p| p.name.clone()).collect();
    op.create_task(&task, &spec_toml, &names).await?;
    let deadline_ms = u64::try_from(config.deadline.as_millis()).unwrap_or(u64::MAX);
    let first = op
        .start_round(
            &task,
            "fedavg",
            HashMap::new(),
            u32::try_from(n).context("too many parties")?,
            deadline_ms,
            config.rounds,
        )
        .await?;
    let shared = Arc::new(Shared {
        server: config.server.clone(),
        tls: config.tls.clone(),
        task: task.clone(),
        spec,
        deadline: config.deadline,
    });
    let mut set = JoinSet::new();
    for p in &parties {
        let (p, limit, shared) = (p.clone(), limit.clone(), shared.clone());
        set.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            statistics(&shared, &p)
                .await
                .with_context(|| format!("party {} in the statistics step", p.name))
        });
    }
    join_all(set).await?;
    wait_phase(&mut op, &task, first, config.deadline, |ph| {
        ph != RoundPhase::Queued
    })
    .await?;
    let task_statistics_secs = t.elapsed().as_secs_f64();

    let mut rounds = Vec::new();
    for round in first..first + u64::from(config.rounds) {
        let t = Instant::now();
        let mut set = JoinSet::new();
        for p in &parties {
            let (p, limit, shared) = (p.clone(), limit.clone(), shared.clone());
            set.spawn(async move {
                let _permit = limit.acquire_owned().await?;
                train(&shared, &p, round)
                    .await
                    .with_context(|| format!("party {} in round {round}", p.name))
            });
        }
        let sizes = join_all(set).await?;
        let uploads_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let view = wait_phase(&mut op, &task, round, config.deadline, |ph| ph.is_final()).await?;
        anyhow::ensure!(
            view.phase == RoundPhase::Published,
            "round {round} of {task} failed: {}",
            view.failure
        );
        let merge_publish_secs = t.elapsed().as_secs_f64();
        rounds.push(RoundTiming {
            round,
            uploads_secs,
            merge_publish_secs,
            version: view.version,
            contributors: view
                .parties
                .iter()
                .filter(|p| p.state == PartyStateName::Accepted)
                .count(),
            update_bytes: sizes.first().copied().unwrap_or(0),
        });
    }
    Ok(SwarmReport {
        parties: n,
        param_count: shared.spec.parameter_count(),
        task,
        keygen_secs,
        enroll_secs,
        task_statistics_secs,
        rounds,
        total_secs: started.elapsed().as_secs_f64(),
        coordinator_peak_kib: peak_kib(config.memory),
        memory_source: match config.memory {
            MemorySource::ThisProcess => "this process: coordinator and parties".into(),
            MemorySource::Pid(pid) => format!("pid {pid}"),
            MemorySource::None => "not measured".into(),
        },
    })
}

/// Waits for every task of a phase; fails with the first error.
async fn join_all<T: 'static>(mut set: JoinSet<anyhow::Result<T>>) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(set.len());
    while let Some(r) = set.join_next().await {
        out.push(r.context("a simulated party panicked")??);
    }
    Ok(out)
}

/// Polls the round's status (every 50 ms) until `done(phase)`; returns the round.
async fn wait_phase(
    op: &mut OperatorClient,
    task: &str,
    round: u64,
    timeout: Duration,
    done: impl Fn(RoundPhase) -> bool,
) -> anyhow::Result<crate::views::RoundView> {
    let until = Instant::now() + timeout;
    loop {
        let rounds = op.status(task).await?;
        if let Some(r) = rounds.into_iter().find(|r| r.round == round)
            && done(r.phase)
        {
            return Ok(r);
        }
        anyhow::ensure!(
            Instant::now() < until,
            "timed out after {timeout:?} waiting for round {round} of {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(shared: &Shared, p: &SimParty) -> anyhow::Result<PartyClient> {
    PartyClient::connect_with(&shared.server, &shared.tls, &p.name, p.key.clone()).await
}

/// Polls for the statistics assignment and reports the sums of [`ROWS`] random rows.
async fn statistics(shared: &Shared, p: &SimParty) -> anyhow::Result<()> {
    let mut c = connect(shared, p).await?;
    let until = Instant::now() + shared.deadline;
    while Instant::now() < until {
        let Some(a) = c.next_assignment(2_000).await? else {
            continue;
        };
        anyhow::ensure!(
            a.task == shared.task && a.work == Work::Stats,
            "expected the statistics assignment of {}, found {:?} of {}",
            shared.task,
            a.work,
            a.task
        );
        let mut rng = StdRng::seed_from_u64(p.seed);
        let rows: Vec<f32> = (0..ROWS * FEATURES).map(|_| rng.random::<f32>()).collect();
        c.submit_sums(&a.id, &FeatureSums::of_rows(&rows, FEATURES))
            .await?;
        return Ok(());
    }
    anyhow::bail!("no statistics assignment within {:?}", shared.deadline)
}

/// Polls for the training assignment of `round`, downloads the base model, uploads random
/// weights of its shapes with its normalisation, signed; returns the blob size.
async fn train(shared: &Shared, p: &SimParty, round: u64) -> anyhow::Result<u64> {
    let mut c = connect(shared, p).await?;
    let until = Instant::now() + shared.deadline;
    while Instant::now() < until {
        let Some(a) = c.next_assignment(2_000).await? else {
            continue;
        };
        let Work::Train {
            base_version,
            base_sha256,
            ..
        } = &a.work
        else {
            // Evaluation of a published model: a simulated party has no holdout.
            c.decline(&a.id, "swarm: simulated parties do not evaluate")
                .await?;
            continue;
        };
        anyhow::ensure!(
            a.task == shared.task && a.round == round,
            "expected training in round {round} of {}, found round {} of {}",
            shared.task,
            a.round,
            a.task
        );
        let (_manifest, bytes) = c
            .download(&a.task, *base_version, max_model_blob_bytes(&shared.spec))
            .await?;
        let want: Sha256 = party_client::grpc::digest(base_sha256)?;
        let spec = shared.spec.clone();
        let (key, party, task) = (p.key.clone(), PartyId::new(&p.name)?, TaskId::new(&a.task)?);
        let (seed, version, step) = (p.seed ^ (round << 32), *base_version, a.step);
        // Decoding, filling, encoding, hashing and signing are CPU work: off the runtime.
        let (blob, env) = tokio::task::spawn_blocking(move || {
            anyhow::ensure!(
                Sha256::of(&bytes) == want,
                "base model {version} does not hash to the assignment's {want}"
            );
            random_update(&RandomUpdate {
                spec: &spec,
                base: &bytes,
                base_version: version,
                task,
                round,
                step,
                party,
                samples: ROWS as u64,
                seed,
                key: &key,
            })
        })
        .await??;
        let size = blob.len() as u64;
        match c.upload(&a.id, &env, blob, None).await? {
            Ack::Accepted | Ack::AlreadyAccepted => return Ok(size),
        }
    }
    anyhow::bail!(
        "no training assignment for round {round} within {:?}",
        shared.deadline
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_has_about_the_asked_parameter_count() {
        for (asked, got) in [
            (1, 17),
            (17, 17),
            (500, 487),
            (10_000, 9_991),
            (100_000, 99_991),
        ] {
            let spec = ModelSpec::parse(&spec_text("t", asked), "<test>").unwrap();
            assert_eq!(spec.parameter_count(), got, "asked for {asked}");
        }
    }

    #[test]
    fn peak_memory_is_read_from_proc() {
        let kib = peak_kib(MemorySource::ThisProcess).expect("Linux has /proc/self/status");
        assert!(kib > 0);
        assert_eq!(
            peak_kib(MemorySource::Pid(std::process::id())).map(|k| k > 0),
            Some(true)
        );
        assert_eq!(peak_kib(MemorySource::None), None);
    }
}
