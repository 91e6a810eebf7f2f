//! Command-line interface of the `coordinator` binary: `init` and `serve` run a coordinator;
//! `party`, `task`, `round` and `model` are the operator's commands against a running one;
//! `audit` reads the governance log from the data dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shared_model::spec::ModelSpec;

use crate::grpc::client::{OperatorClient, operator_key};
use crate::state;
use crate::views::print_rounds;

/// Yosegi coordinator: merges models trained apart at many sites without seeing their data.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about, long_about = None)]
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

/// Where the operator commands find the coordinator and the operator key.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The coordinator's URL (https://; http:// only for a server run with --plaintext).
    #[arg(long, env = "YOSEGI_SERVER", default_value = "https://127.0.0.1:50051")]
    pub server: String,
    /// The coordinator's CA certificate, pinned for https:// (written by `coordinator init`).
    #[arg(long, env = "YOSEGI_CA", default_value = "coordinator-data/tls/ca.pem")]
    pub ca: PathBuf,
    /// Client certificate for a coordinator that requires mutual TLS (with --tls-key).
    #[arg(long, env = "YOSEGI_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client certificate's private key (mode 0600).
    #[arg(long, env = "YOSEGI_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The operator's private key (written by `coordinator init` into the data dir).
    #[arg(
        long,
        env = "YOSEGI_OPERATOR_KEY",
        default_value = "coordinator-data/operator.key.pem"
    )]
    pub operator_key: PathBuf,
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
    /// Inspect model specs.
    #[command(subcommand)]
    Spec(SpecCommand),
    /// Prepare simulation data: split a CSV into a held-back holdout and one slice per party.
    #[command(subcommand)]
    Data(DataCommand),
    /// Enroll, list and revoke parties.
    #[command(subcommand)]
    Party(PartyCommand),
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
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Create the CA and server certificate of an existing data dir (`init` does this for a new
    /// one). Refuses to overwrite.
    Init {
        /// The data directory.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
        /// A host name or IP address parties dial (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Issue a client certificate for mutual TLS (serve with --client-ca DATA_DIR/tls/ca.pem).
    Client {
        /// The data directory holding the CA.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
        /// The party's name (the certificate's common name).
        #[arg(long)]
        name: String,
        /// Directory to write NAME.pem and NAME.key.pem into.
        #[arg(long)]
        out: PathBuf,
    },
}

fn print_tls(data_dir: &std::path::Path, names: &[String]) {
    let d = crate::tls::dir(data_dir);
    println!(
        "TLS: CA certificate {} (give it to every plant and operator: they pin it), server certificate for {}",
        d.join(crate::tls::CA_CERT).display(),
        names.join(", ")
    );
}

/// `coordinator spec …`
#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Print the spec id (sha256 of the canonical encoding) of a ModelSpec file.
    Id {
        /// The ModelSpec TOML file.
        file: PathBuf,
    },
    /// Validate a ModelSpec file and describe the network and its weight blobs.
    Show {
        /// The ModelSpec TOML file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `coordinator data …`
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Split a CSV into `holdout.csv` (never given to a party) and `party-1.csv` … `party-N.csv`.
    Split {
        /// The CSV.
        #[arg(long)]
        data: PathBuf,
        /// The ModelSpec naming its columns.
        #[arg(long)]
        spec: PathBuf,
        /// Number of parties.
        #[arg(long, default_value_t = 3)]
        parties: usize,
        /// iid, dirichlet:ALPHA, quantity:ALPHA or shift:FEATURE.
        #[arg(long, default_value = "iid")]
        partition: String,
        /// Fraction of rows held back as the common holdout.
        #[arg(long, default_value_t = 0.2)]
        holdout: f64,
        /// Seed of the split and the partition.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `coordinator party …`
#[derive(Debug, Subcommand)]
pub enum PartyCommand {
    /// Enroll a party with its public key file (from `party-client keygen`).
    Enroll {
        /// The party's name.
        #[arg(long)]
        name: String,
        /// Its public key (SPKI PEM).
        #[arg(long)]
        public_key: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// List parties.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a party: its key is refused from now on, mid-round included.
    Revoke {
        /// The party's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `coordinator task …`
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Create a task from a ModelSpec; parties default to every enrolled party.
    Create {
        /// The ModelSpec TOML file.
        #[arg(long)]
        spec: PathBuf,
        /// The task's name.
        #[arg(long)]
        name: String,
        /// Parties taking part (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        parties: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tasks.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `coordinator round …`
#[derive(Debug, Subcommand)]
pub enum RoundCommand {
    /// Start one or more rounds of a task.
    Start {
        /// The task.
        #[arg(long)]
        task: String,
        /// Merge strategy: fedavg, fedprox, ensemble, transfer, series, median, trimmed-mean,
        /// krum or multi-krum (docs/STRATEGIES.md).
        #[arg(long, default_value = "fedavg")]
        strategy: String,
        /// Strategy option KEY=VALUE, e.g. mu=0.01 (fedprox), beta=0.2 (trimmed-mean), f=1
        /// (krum), passes=2 / freeze=1 / lr_scale=0.5 / order=random / seed=S (transfer),
        /// norm_bound=5 (broadcast strategies); repeatable.
        #[arg(long = "option", value_parser = parse_kv)]
        options: Vec<(String, String)>,
        /// Fewest accepted updates needed to merge.
        #[arg(long)]
        min_parties: u32,
        /// Time allowed per round, e.g. 90s, 5m, 1h.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        deadline: Duration,
        /// Rounds to run back to back.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show every round of a task: phase, who answered, who is late, rejections, metrics.
    Status {
        /// The task.
        #[arg(long)]
        task: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow a task's rounds until none is queued or training.
    Watch {
        /// The task.
        #[arg(long)]
        task: String,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1)]
        interval_secs: u64,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `coordinator model …`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a published model and its manifest, verified with the coordinator's key.
    Pull {
        /// The task.
        #[arg(long)]
        task: String,
        /// Version (default: latest).
        #[arg(long)]
        version: Option<u64>,
        /// Where to write the blob; the signed manifest goes to FILE.manifest.json.
        #[arg(long)]
        out: PathBuf,
        /// The coordinator's public key file (what parties pin).
        #[arg(
            long,
            env = "YOSEGI_COORDINATOR_KEY",
            default_value = "coordinator-data/coordinator.pub.pem"
        )]
        coordinator_key: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `coordinator audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain: prints the record count and the head hash, or names the first
    /// broken record (seq, kind, what is wrong) and exits non-zero.
    Verify {
        /// The coordinator's data directory.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
    },
    /// List records, oldest first, as a table.
    Show {
        /// The coordinator's data directory.
        #[arg(long, default_value = "coordinator-data")]
        data_dir: PathBuf,
        /// Only records of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only the newest N records.
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON (every field, the detail as an object) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

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

async fn connect(remote: &Remote) -> anyhow::Result<OperatorClient> {
    let key = operator_key(&remote.operator_key)?;
    let tls = crate::tls::ClientTls {
        ca: Some(remote.ca.clone()),
        identity: remote.tls_cert.clone().zip(remote.tls_key.clone()),
    };
    OperatorClient::connect_with(&remote.server, &tls, key).await
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
        Command::Data(DataCommand::Split {
            data,
            spec,
            parties,
            partition,
            holdout,
            seed,
            out,
        }) => {
            use shared_model::data::{SplitFractions, load_csv};
            use shared_model::partition::Partition;
            anyhow::ensure!(
                (0.0..1.0).contains(&holdout),
                "--holdout must be in [0, 1), found {holdout}"
            );
            anyhow::ensure!(parties >= 1, "--parties must be at least 1");
            let spec = ModelSpec::from_file(&spec)?;
            let how: Partition = partition.parse()?;
            let all = load_csv(&data, &spec)?;
            let split = all.split(
                spec.task.kind,
                SplitFractions {
                    validation: 0.0,
                    holdout,
                },
                seed,
            );
            let parts =
                shared_model::partition::partition(&split.train, &spec, &how, parties, 10, seed)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            split.holdout.write_csv(&out.join("holdout.csv"), &spec)?;
            println!(
                "{:<14} {:>6} rows (held back)",
                "holdout.csv",
                split.holdout.len()
            );
            for (i, idx) in parts.iter().enumerate() {
                let name = format!("party-{}.csv", i + 1);
                split.train.subset(idx).write_csv(&out.join(&name), &spec)?;
                println!("{name:<14} {:>6} rows", idx.len());
            }
        }
        Command::Party(cmd) => runtime()?.block_on(party_command(cmd))?,
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
    }
    Ok(())
}

fn audit_command(cmd: AuditCommand) -> anyhow::Result<()> {
    let open = |dir: &Path| {
        let path = dir.join(state::DB);
        anyhow::ensure!(
            path.exists(),
            "{} has no coordinator database ({} is missing)",
            dir.display(),
            path.display()
        );
        let store = crate::store::Store::open_read_only(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok((store, path))
    };
    match cmd {
        AuditCommand::Verify { data_dir } => {
            let (store, path) = open(&data_dir)?;
            let head = store
                .verify_audit()
                .with_context(|| format!("governance log in {}", path.display()))?;
            println!("audit log OK: {} records, head {}", head.records, head.hash);
        }
        AuditCommand::Show {
            data_dir,
            task,
            limit,
            json,
        } => {
            let (store, _) = open(&data_dir)?;
            let records = store.audit_records(task.as_deref(), limit)?;
            if json {
                let rows: Vec<serde_json::Value> = records
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::to_value(r)?;
                        // The detail as the object it is (the hash covers the stored text).
                        if let Ok(d) = serde_json::from_str::<serde_json::Value>(&r.detail) {
                            v["detail"] = d;
                        }
                        Ok(v)
                    })
                    .collect::<serde_json::Result<_>>()?;
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                crate::audit::write_table(&mut std::io::stdout().lock(), &records)?;
            }
        }
    }
    Ok(())
}

fn spec_command(cmd: SpecCommand) -> anyhow::Result<()> {
    match cmd {
        SpecCommand::Id { file } => {
            let spec = ModelSpec::from_file(&file)?;
            println!("{}", spec.id());
        }
        SpecCommand::Show { file, json } => {
            let spec = ModelSpec::from_file(&file)?;
            let tensors = spec.tensors();
            if json {
                let out = serde_json::json!({
                    "spec_id": spec.id().to_string(),
                    "name": spec.name,
                    "kind": spec.task.kind.name(),
                    "target": spec.task.target,
                    "features": spec.task.features,
                    "layer_widths": spec.layer_widths(),
                    "parameters": spec.parameter_count(),
                    "max_blob_bytes": spec.max_blob_bytes(),
                    "tensors": tensors.iter().map(|t| serde_json::json!({"name": t.name, "shape": t.shape})).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("spec id      {}", spec.id());
                println!("name         {}", spec.name);
                println!(
                    "task         {} on column {:?}",
                    spec.task.kind.name(),
                    spec.task.target
                );
                println!("features     {}", spec.input_width());
                println!("layers       {:?}", spec.layer_widths());
                println!("parameters   {}", spec.parameter_count());
                println!("max blob     {} bytes", spec.max_blob_bytes());
                println!("tensors");
                for t in tensors {
                    println!("  {:<20} {:?}", t.name, t.shape);
                }
            }
        }
    }
    Ok(())
}

async fn party_command(cmd: PartyCommand) -> anyhow::Result<()> {
    match cmd {
        PartyCommand::Enroll {
            name,
            public_key,
            remote,
        } => {
            let key = shared_model::keys::read_public(&public_key)?;
            let fp = connect(&remote).await?.enroll(&name, &key).await?;
            println!("enrolled {name} (key {fp})");
        }
        PartyCommand::List { remote, json } => {
            let parties = connect(&remote).await?.parties().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&parties)?);
            } else {
                for p in parties {
                    println!(
                        "{:<16} {}  {}",
                        p.name,
                        p.fingerprint,
                        if p.revoked { "revoked" } else { "active" }
                    );
                }
            }
        }
        PartyCommand::Revoke { name, remote } => {
            connect(&remote).await?.revoke(&name).await?;
            println!("revoked {name}");
        }
    }
    Ok(())
}

async fn task_command(cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Create {
            spec,
            name,
            parties,
            remote,
        } => {
            // validate locally first, for an error that names the file
            ModelSpec::from_file(&spec)?;
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("reading {}", spec.display()))?;
            let id = connect(&remote)
                .await?
                .create_task(&name, &text, &parties)
                .await?;
            println!("created task {name} (spec {id})");
        }
        TaskCommand::List { remote, json } => {
            let tasks = connect(&remote).await?.tasks().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tasks)?);
            } else {
                for t in tasks {
                    println!(
                        "{:<16} spec {} ({})  parties {}  latest version {}",
                        t.name,
                        &t.spec_id[..12.min(t.spec_id.len())],
                        t.spec_name,
                        t.parties.join(","),
                        t.latest_version
                    );
                }
            }
        }
    }
    Ok(())
}

async fn round_command(cmd: RoundCommand) -> anyhow::Result<()> {
    match cmd {
        RoundCommand::Start {
            task,
            strategy,
            options,
            min_parties,
            deadline,
            rounds,
            remote,
        } => {
            let mut map: HashMap<String, String> = HashMap::new();
            for (k, v) in options {
                if let Some(old) = map.insert(k.clone(), v.clone()) {
                    anyhow::bail!("--option {k} is given twice ({old} and {v})");
                }
            }
            let options = map;
            let relay = matches!(strategy.as_str(), "transfer" | "series");
            let first = connect(&remote)
                .await?
                .start_round(
                    &task,
                    &strategy,
                    options,
                    min_parties,
                    deadline.as_millis() as u64,
                    rounds,
                )
                .await?;
            if relay {
                println!(
                    "queued {rounds} {strategy} relay(s) of {task} from round {first}: one round per party step, each party in turn"
                );
            } else {
                let last = first + u64::from(rounds) - 1;
                println!(
                    "queued rounds {first}..={last} of {task} ({strategy}, quorum {min_parties})"
                );
            }
        }
        RoundCommand::Status { task, json, remote } => {
            let (rounds, declines) = connect(&remote).await?.status_with_declines(&task).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rounds)?);
            } else {
                print_rounds(&task, &rounds);
                crate::views::print_declines(&declines);
            }
        }
        RoundCommand::Watch {
            task,
            interval_secs,
            remote,
        } => {
            let mut c = connect(&remote).await?;
            loop {
                let (rounds, declines) = c.status_with_declines(&task).await?;
                print_rounds(&task, &rounds);
                crate::views::print_declines(&declines);
                if rounds.iter().all(|r| r.is_final()) {
                    break;
                }
                println!();
                tokio::time::sleep(Duration::from_secs(interval_secs.max(1))).await;
            }
        }
    }
    Ok(())
}
