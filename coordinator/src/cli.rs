//! Command-line interface of the `coordinator` binary: `init` and `serve` run a coordinator;
//! `party`, `task`, `round` and `model` are the operator's commands against a running one;
//! `audit` reads the governance log from the data dir.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::remote::connect;
use crate::state;

mod args;
mod commands;
mod data;
mod operators;

pub use crate::remote::Remote;
pub use args::{
    AuditCommand, DataCommand, KeyCommand, ModelCommand, OperatorCommand, PartyCommand,
    RoundCommand, SpecCommand, TaskCommand, TlsCommand,
};
use commands::{audit_command, party_command, round_command, spec_command, task_command};

/// Yosegi coordinator: merges models trained apart at many sites without seeing their data.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version = yosegi_proto::version::DESCRIPTION, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a coordinator's state: database, signing key, operator key. Prints the public key
    /// parties pin. Refuses to overwrite existing state.
    Init {
        /// The data directory.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
        /// A host name or IP address parties dial (repeatable); the server certificate holds
        /// these besides localhost and 127.0.0.1.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Run a whole federation on this machine — a coordinator and N plants over real gRPC on
    /// loopback — with each strategy, and compare with the local-only and data-sharing baselines.
    Demo(crate::demo::DemoArgs),
    /// Offline experiments: every strategy and both baselines on simulated parties (the same
    /// training, strategy and verification code, in memory), over seeds and sweeps; writes
    /// results.json, results.csv, a Markdown table and SVG plots.
    Experiment(crate::experiment::ExperimentArgs),
    /// Load test (issue #7): N simulated parties in this process, each with its own key, enrolled
    /// with the operator key, run the statistics step and FedAvg rounds of signed random-weight
    /// uploads against a running coordinator; prints the time per phase and, with
    /// --coordinator-pid, the coordinator's peak memory.
    Swarm(crate::swarm::SwarmArgs),
    /// Serve the party and operator gRPC services (and Prometheus metrics, if asked) until
    /// SIGINT/SIGTERM. Settings come from --config coordinator.toml and flags (flags win); see
    /// docs/CONFIG.md.
    Serve {
        /// A coordinator.toml file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data directory [default: coordinator-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// gRPC address to listen on [default: 127.0.0.1:50051].
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Serve Prometheus metrics at GET /metrics on this address [default: off].
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Largest accepted clock difference of a caller, in seconds [default: 300].
        #[arg(long)]
        max_skew_secs: Option<u64>,
        /// Serve plain HTTP/2 instead of TLS: every call is still signed, but updates, sums and
        /// metrics travel in clear. Logged loudly; for tests and private networks only.
        #[arg(long)]
        plaintext: bool,
        /// Require client certificates chaining to this CA (mutual TLS), e.g.
        /// DATA_DIR/tls/ca.pem; issue them with `coordinator tls client`.
        #[arg(long)]
        client_ca: Option<PathBuf>,
    },
    /// TLS certificates: the federation's private CA, the server's, clients'.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// The coordinator's signing key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Inspect model specs.
    #[command(subcommand)]
    Spec(SpecCommand),
    /// Prepare simulation data: split a CSV into a held-back holdout and one slice per party.
    #[command(subcommand)]
    Data(DataCommand),
    /// Enroll, list and revoke parties.
    #[command(subcommand)]
    Party(PartyCommand),
    /// Operator keys and their roles: add, revoke, list; recover with the data dir.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Create and list tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Start rounds and follow them.
    #[command(subcommand)]
    Round(RoundCommand),
    /// Download published models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Check and list the governance log, the hash-chained record of every enrolment,
    /// revocation, task, round, accepted or rejected update, decline, merge and publication
    /// (docs/AUDIT.md). Reads the data dir directly; safe while the coordinator runs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Write a task's report: per-round merged metrics, per-party contribution, rejections,
    /// bytes moved, time per round, gain of the merged model over each party's own update
    /// (Markdown, JSON and an SVG plot).
    Report {
        /// The task.
        #[arg(long)]
        task: String,
        /// Where to write README.md, report.json and metric-by-round.svg.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `coordinator tls …`
fn print_tls(data_dir: &std::path::Path, names: &[String]) {
    let d = crate::tls::dir(data_dir);
    println!(
        "TLS: CA certificate {} (give it to every plant and operator: they pin it), server certificate for {}",
        d.join(crate::tls::CA_CERT).display(),
        names.join(", ")
    );
}

/// `coordinator spec …`
fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, found {s:?}"))
}

/// Parses `90s`, `5m`, `2h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 90s, 5m or 1h, found {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n * 60,
        "h" => n * 3600,
        _ => {
            return Err(format!(
                "unknown duration unit {unit:?} in {s:?}; use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// Sets up logging to stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { data_dir, hosts } => {
            let (key, path) = state::init(&data_dir)?;
            let names = crate::tls::create(&data_dir, &hosts)?;
            println!("coordinator state created in {}", data_dir.display());
            println!(
                "coordinator public key (parties pin this file): {}",
                path.display()
            );
            println!("fingerprint {}", shared_model::keys::fingerprint(&key));
            print!("{}", shared_model::keys::public_pem(&key));
            println!(
                "operator key: {}",
                data_dir.join(state::OPERATOR_KEY).display()
            );
            print_tls(&data_dir, &names);
        }
        Command::Tls(TlsCommand::Init { data_dir, hosts }) => {
            let names = crate::tls::create(&data_dir, &hosts)?;
            print_tls(&data_dir, &names);
        }
        Command::Tls(TlsCommand::Renew { data_dir, hosts }) => {
            let names = crate::tls::renew(&data_dir, &hosts)?;
            println!(
                "new server certificate for {} in {} (same CA: plants need nothing); restart the coordinator to serve it",
                names.join(", "),
                crate::tls::dir(&data_dir).display()
            );
        }
        Command::Key(KeyCommand::Rotate { data_dir }) => {
            let r = crate::rotate::rotate(&data_dir, crate::state::now_ms())?;
            println!(
                "coordinator key {} replaced by {} (rotation {}, {} manifests signed again); plants follow it from the key they pin — the new public key is {}",
                r.previous,
                r.new,
                r.sequence,
                r.resigned,
                data_dir.join(crate::state::COORDINATOR_PUB).display()
            );
        }
        Command::Tls(TlsCommand::Client {
            data_dir,
            name,
            out,
        }) => {
            let (cert, key) = crate::tls::issue_client(&data_dir, &name, &out)?;
            println!(
                "client certificate for {name}: {} (key {}, mode 0600); the plant sets tls_cert and tls_key in party.toml",
                cert.display(),
                key.display()
            );
        }
        Command::Serve {
            config,
            data_dir,
            listen,
            metrics_listen,
            max_skew_secs,
            plaintext,
            client_ca,
        } => {
            let file = match &config {
                Some(p) => crate::config::RawServeConfig::from_file(p)?,
                None => Default::default(),
            };
            let settings = file
                .overlay(crate::config::RawServeConfig {
                    data_dir,
                    listen,
                    metrics_listen,
                    max_skew_secs,
                    plaintext: plaintext.then_some(true),
                    client_ca,
                    ..Default::default()
                })
                .validate()?;
            let data = state::open(&settings.data_dir)?;
            let mut settings = settings;
            settings.serve.tls = settings.tls.as_ref().map(|t| t.load()).transpose()?;
            runtime()?.block_on(async move {
                let listen = settings.listen;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                crate::grpc::serve(listener, data, settings.serve, shutdown_signal()).await
            })?;
        }
        Command::Report { task, out, remote } => runtime()?.block_on(async move {
            let mut c = connect(&remote).await?;
            let t = c
                .tasks()
                .await?
                .into_iter()
                .find(|t| t.name == task)
                .with_context(|| format!("no task named {task}"))?;
            let rounds = c.status(&task).await?;
            let report = crate::report::build(&t, &rounds);
            crate::report::write(&out, &t, &report)?;
            println!(
                "report of {task}: {} round(s) published, {} failed, {} blob bytes moved; written to {}",
                report.published,
                report.failed,
                report.bytes_moved,
                out.display()
            );
            anyhow::Ok(())
        })?,
        Command::Experiment(args) => {
            crate::experiment::run(&args)?;
        }
        Command::Swarm(args) => runtime()?.block_on(crate::swarm::command(args))?,
        Command::Demo(args) => {
            runtime()?.block_on(crate::demo::run(args))?;
        }
        Command::Spec(cmd) => spec_command(cmd)?,
        Command::Audit(cmd) => audit_command(cmd)?,
        Command::Data(cmd) => data::command(cmd)?,
        Command::Party(cmd) => runtime()?.block_on(party_command(cmd))?,
        Command::Operator(cmd) => operators::command(cmd, runtime)?,
        Command::Task(cmd) => runtime()?.block_on(task_command(cmd))?,
        Command::Round(cmd) => runtime()?.block_on(round_command(cmd))?,
        Command::Model(ModelCommand::Pull {
            task,
            version,
            out,
            coordinator_key,
            remote,
        }) => runtime()?.block_on(async move {
            let key = shared_model::keys::read_public(&coordinator_key)?;
            let mut c = connect(&remote).await?;
            let (m, blob, signed) = c.pull(&task, version.unwrap_or(0), &key).await?;
            std::fs::write(&out, &blob).with_context(|| format!("writing {}", out.display()))?;
            let mpath = PathBuf::from(format!("{}.manifest.json", out.display()));
            // The signed form: a plant can check it later with the coordinator's public key
            // (`party-client predict --manifest … --coordinator-key …`).
            std::fs::write(&mpath, signed.to_file_json())
                .with_context(|| format!("writing {}", mpath.display()))?;
            println!(
                "task {} version {} ({}, round {}): {} bytes, sha256 {}, signature verified",
                m.task, m.version, m.strategy, m.round, m.blob_len, m.blob_sha256
            );
            println!("blob {}\nmanifest {}", out.display(), mpath.display());
            anyhow::Ok(())
        })?,
        Command::Model(ModelCommand::Restore {
            task,
            version,
            blob,
            remote,
        }) => runtime()?.block_on(async move {
            let bytes = std::fs::read(&blob).with_context(|| format!("reading {}", blob.display()))?;
            let mut c = connect(&remote).await?;
            let sha = c
                .restore(&task, version, bytes)
                .await
                .with_context(|| format!("restoring version {version} of {task} from {}", blob.display()))?;
            println!("task {task} version {version}: blob {sha} restored from {}", blob.display());
            anyhow::Ok(())
        })?,
    }
    Ok(())
}
