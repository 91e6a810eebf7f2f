//! Command-line interface of the `party-client` binary.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use shared_model::eval::Metrics;
use shared_model::keys;
use shared_model::model::Model;
use shared_model::spec::ModelSpec;

use crate::config::RawConfig;
use crate::local::{train_local, write_blob};

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

/// Yosegi party client: trains the declared network on this site's data; only signed weight
/// blobs ever leave the site.
#[derive(Debug, Parser)]
#[command(name = "party-client", version = yosegi_proto::version::DESCRIPTION, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this site's ed25519 key pair: party.key.pem (mode 0600) and party.pub.pem.
    Keygen {
        /// Directory to write the key files into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the site daemon: connect to the coordinator and do the work it assigns until
    /// SIGINT/SIGTERM. Every key of the config file can also be given as a flag (flags win).
    Run {
        /// A party.toml file (keys: server, name, key, coordinator_key, data, state_dir, and
        /// the `[policy]` table, which only the file can set).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The coordinator's URL, e.g. https://coordinator.example.org:50051.
        #[arg(long)]
        server: Option<String>,
        /// This party's enrolled name.
        #[arg(long)]
        name: Option<String>,
        /// This party's private key file (from `keygen`).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The coordinator's public key file, pinned: models signed by any other key are refused.
        #[arg(long)]
        coordinator_key: Option<PathBuf>,
        /// The site's CSV.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where the daemon keeps its state (accepted versions, upload log).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The coordinator's CA certificate, pinned for an https:// server.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Client certificate for a coordinator that requires mutual TLS.
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// The client certificate's private key (mode 0600).
        #[arg(long)]
        tls_key: Option<PathBuf>,
    },
    /// Predict the site's rows with a model (a published one, an ensemble, a series, or a local
    /// one) and write a CSV of predictions. Nothing is sent anywhere.
    Predict {
        /// The task's ModelSpec TOML file (the blob must carry its spec id).
        #[arg(long)]
        spec: PathBuf,
        /// The model blob (e.g. from `coordinator model pull`).
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        verify: VerifyArgs,
        /// The rows to predict (header row; feature columns named as in the spec; no target
        /// needed).
        #[arg(long)]
        data: PathBuf,
        /// A column to copy into the output beside each prediction (e.g. a row id).
        #[arg(long)]
        id_column: Option<String>,
        /// Where to write the predictions CSV.
        #[arg(long)]
        out: PathBuf,
    },
    /// Score a model on labelled local rows: the metrics of the task kind.
    Evaluate {
        /// The task's ModelSpec TOML file.
        #[arg(long)]
        spec: PathBuf,
        /// The model blob.
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Labelled rows (header row; feature and target columns named as in the spec).
        #[arg(long)]
        data: PathBuf,
        /// Print metrics as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The site's policy: what this plant agrees to train.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Train the declared network on local data only (the local-only baseline) and report
    /// holdout metrics. Nothing is sent anywhere.
    Train {
        /// The ModelSpec TOML file.
        #[arg(long)]
        spec: PathBuf,
        /// The site's CSV (header row; columns named as in the spec).
        #[arg(long)]
        data: PathBuf,
        /// Override the spec's local epochs.
        #[arg(long)]
        epochs: Option<u32>,
        /// Seed of the train/validation/holdout split.
        #[arg(long, default_value_t = 0)]
        split_seed: u64,
        /// Write the trained model as a safetensors blob here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print metrics as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--manifest` / `--coordinator-key`: check a model file before using it.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The model's signed manifest (`coordinator model pull` writes MODEL.manifest.json): the
    /// model is used only if the manifest's signature verifies, it names this spec, and the
    /// file is exactly the blob it names.
    #[arg(long, requires = "coordinator_key")]
    pub manifest: Option<PathBuf>,
    /// The coordinator's public key file the manifest must be signed with.
    #[arg(long, requires = "manifest")]
    pub coordinator_key: Option<PathBuf>,
}

impl VerifyArgs {
    /// Loads the model — verified against its manifest when one is given, saying what was
    /// checked on stderr — decoding exactly the bytes that were checked.
    /// The model and the spec it follows ([`crate::inference::load_model`]).
    fn load(
        &self,
        spec: &ModelSpec,
        model: &std::path::Path,
    ) -> anyhow::Result<(ModelSpec, Model)> {
        let (Some(manifest), Some(key)) = (&self.manifest, &self.coordinator_key) else {
            eprintln!(
                "note: {} used without a manifest: its origin is not checked (give --manifest and --coordinator-key)",
                model.display()
            );
            return crate::inference::load_model(spec, model);
        };
        let (m, bytes) = crate::inference::verify_manifest(spec, model, manifest, key)?;
        eprintln!(
            "verified: task {} version {} (round {}, {}), signed by the coordinator, sha256 {}",
            m.task,
            m.version,
            m.round,
            m.strategy,
            m.blob_sha256.short()
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if now > m.expires_unix_ms {
            eprintln!(
                "warning: the manifest expired at {} ms; the model is authentic but may not be the task's latest",
                m.expires_unix_ms
            );
        }
        crate::inference::decode_model(spec, model, &bytes)
    }
}

/// `party-client policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Tell, before joining, whether a spec passes this site's policy and why not. Exits 1 when
    /// the site would decline the task's work.
    Check {
        /// The site's party.toml (only its `[policy]` table is read).
        #[arg(long)]
        config: PathBuf,
        /// The task's ModelSpec TOML file.
        #[arg(long)]
        spec: PathBuf,
        /// Also check a round combining this many parties (this site included).
        #[arg(long)]
        round_parties: Option<u32>,
    },
}

/// Prints the policy check of `spec`; an error when the site would decline.
fn policy_check(
    config: &std::path::Path,
    spec_path: &std::path::Path,
    round_parties: Option<u32>,
) -> anyhow::Result<()> {
    let raw = RawConfig::from_file(config)?;
    let site = raw.name.clone().unwrap_or_else(|| "this site".into());
    let policy = raw
        .policy
        .unwrap_or_default()
        .validate()
        .with_context(|| format!("{}", config.display()))?;
    let spec = ModelSpec::from_file(spec_path)?;
    println!("site policy of {site} ({}):", config.display());
    for rule in policy.describe() {
        println!("  {rule}");
    }
    println!(
        "spec {} ({}): {} task, {} features, {} parameters, {} local epochs{}",
        spec.id(),
        spec.name,
        spec.task.kind.name(),
        spec.input_width(),
        spec.parameter_count(),
        spec.training.local_epochs,
        if spec.privacy.dp.is_some() {
            ", differential privacy"
        } else {
            ""
        }
    );
    let refusals = match round_parties {
        Some(n) => policy.check_training(&spec, 0, n),
        None => policy.check_spec(&spec),
    };
    if refusals.is_empty() {
        println!("PASS: {site} would train this spec");
        if policy.min_other_parties > 0 && round_parties.is_none() {
            println!(
                "  (each round must also combine at least {} parties: policy.min_other_parties = {})",
                policy.min_other_parties + 1,
                policy.min_other_parties
            );
        }
        return Ok(());
    }
    println!("DECLINE: {site} would refuse this spec's work:");
    for r in &refusals {
        println!("  - {r}");
    }
    anyhow::bail!(
        "spec {} does not pass the site policy of {site} ({} reason(s))",
        spec.id().0.short(),
        refusals.len()
    )
}

/// Sets up logging to stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let key = keys::generate()?;
            let (sk, pk) = (out.join("party.key.pem"), out.join("party.pub.pem"));
            keys::write_private(&sk, &key)?;
            keys::write_public(&pk, &key.verifying_key())?;
            println!(
                "private key  {} (mode 0600, never leaves this site)",
                sk.display()
            );
            println!(
                "public key   {} (give this file to the operator)",
                pk.display()
            );
            println!("fingerprint  {}", keys::fingerprint(&key.verifying_key()));
        }
        Command::Run {
            config,
            server,
            name,
            key,
            coordinator_key,
            data,
            state_dir,
            ca,
            tls_cert,
            tls_key,
        } => {
            let file = match &config {
                Some(path) => RawConfig::from_file(path)?,
                None => RawConfig::default(),
            };
            let flags = RawConfig {
                server,
                name,
                key,
                coordinator_key,
                data,
                state_dir,
                ca,
                tls_cert,
                tls_key,
                policy: None,
            };
            let config = file.overlay(flags).validate()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(crate::daemon::run(config, shutdown_signal()))?;
        }
        Command::Predict {
            spec,
            model,
            verify,
            data,
            id_column,
            out,
        } => {
            let spec = ModelSpec::from_file(&spec)?;
            let (spec, m) = verify.load(&spec, &model)?;
            let n = crate::inference::predict_csv(&spec, &m, &data, id_column.as_deref(), &out)?;
            println!(
                "{n} rows predicted with a {} model of spec {} → {}",
                m.kind(),
                spec.id().0.short(),
                out.display()
            );
        }
        Command::Evaluate {
            spec,
            model,
            verify,
            data,
            json,
        } => {
            let spec = ModelSpec::from_file(&spec)?;
            let (spec, m) = verify.load(&spec, &model)?;
            let metrics = crate::inference::evaluate_csv(&spec, &m, &data)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&metrics)?);
            } else {
                println!(
                    "{} model of spec {} on {}:",
                    m.kind(),
                    spec.id().0.short(),
                    data.display()
                );
                for (name, v) in serde_json::to_value(&metrics)?
                    .as_object()
                    .into_iter()
                    .flatten()
                {
                    println!("  {name:<10} {v}");
                }
            }
        }
        Command::Policy(PolicyCommand::Check {
            config,
            spec,
            round_parties,
        }) => policy_check(&config, &spec, round_parties)?,
        Command::Train {
            spec,
            data,
            epochs,
            split_seed,
            out,
            json,
        } => {
            let spec = ModelSpec::from_file(&spec)?;
            let run = train_local(&spec, &data, epochs, split_seed)?;
            if let Some(path) = &out {
                write_blob(path, &run.spec, &run.weights)?;
            }
            if json {
                let v = serde_json::json!({
                    "spec_id": spec.id().to_string(),
                    "rows": {"train": run.rows.0, "validation": run.rows.1, "holdout": run.rows.2},
                    "epoch_losses": run.epoch_losses,
                    "early_stopping": run.early_stop.as_ref().map(|e| serde_json::json!({
                        "best_epoch": e.best_epoch,
                        "validation_losses": e.validation_losses,
                    })),
                    "holdout": run.holdout,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("spec {} ({})", spec.id().0.short(), spec.name);
                println!(
                    "rows: {} train, {} validation, {} holdout",
                    run.rows.0, run.rows.1, run.rows.2
                );
                println!(
                    "loss: {:.4} → {:.4}",
                    run.epoch_losses.first().copied().unwrap_or(f64::NAN),
                    run.epoch_losses.last().copied().unwrap_or(f64::NAN)
                );
                if let Some(e) = &run.early_stop {
                    println!(
                        "early stopping: kept epoch {} of {} trained (validation loss {:.4})",
                        e.best_epoch,
                        run.epoch_losses.len(),
                        e.validation_losses[e.best_epoch as usize - 1]
                    );
                }
                print_metrics(&run.holdout);
                if let Some(path) = out {
                    println!("model written to {}", path.display());
                }
            }
        }
    }
    Ok(())
}

fn print_metrics(m: &Metrics) {
    match m {
        Metrics::Binary(b) => println!(
            "holdout: accuracy {:.4}  precision {:.4}  recall {:.4}  F1 {:.4}  AUC {:.4}  log-loss {:.4}  (n = {})",
            b.accuracy, b.precision, b.recall, b.f1, b.roc_auc, b.log_loss, b.count
        ),
        Metrics::Multiclass(c) => println!(
            "holdout: accuracy {:.4}  macro-P {:.4}  macro-R {:.4}  macro-F1 {:.4}  log-loss {:.4}  (n = {})",
            c.accuracy, c.macro_precision, c.macro_recall, c.macro_f1, c.log_loss, c.count
        ),
        Metrics::Regression(r) => println!(
            "holdout: MSE {:.4}  MAE {:.4}  R² {:.4}  (n = {})",
            r.mse, r.mae, r.r2, r.count
        ),
    }
}
