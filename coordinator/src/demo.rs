//! `coordinator demo`: a whole federation on this machine in one command. It starts a real
//! coordinator on a loopback port and N plant daemons (real gRPC, real keys, temp state dirs),
//! splits the data (the bundled WDBC set by default) into a held-back holdout and one slice per
//! plant, runs rounds with each strategy, and compares the merged models on the holdout with the
//! **local-only** baseline (each plant alone, averaged over plants) and the **data-sharing**
//! baseline (one model on the pooled rows — possible only in simulation). It prints a table and
//! writes a report folder (Markdown and JSON).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use party_client::contribute::PlantRows;
use serde::Serialize;
use shared_model::blob::{self, BlobRole};
use shared_model::data::{Dataset, SplitFractions, load};
use shared_model::discovery;
use shared_model::eval::{Metrics, evaluate};
use shared_model::model::{Model, model_limits};
use shared_model::network::CpuBackend;
use shared_model::partition::{Partition, partition};
use shared_model::spec::ModelSpec;
use shared_model::stats::Normalization;
use shared_model::strategy::{StrategyConfig, options_for};
use shared_model::train::{TrainOptions, train};
use shared_model::weights::Weights;

use crate::grpc::ServeConfig;
use crate::local::LocalFederation;

const WDBC_CSV: &str = include_str!("../../data/wdbc.csv");
const WDBC_SPEC: &str = include_str!("../../data/wdbc.toml");

/// Demo settings (the CLI's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of plants.
    #[arg(long, default_value_t = 3)]
    pub parties: usize,
    /// Federation rounds per strategy.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// A strategy name (fedavg, fedprox, ensemble, transfer, series, median, trimmed-mean,
    /// krum, multi-krum) or all.
    #[arg(long, default_value = "all")]
    pub strategy: String,
    /// A CSV to use instead of the bundled WDBC data (needs --spec or --target), or `plant`:
    /// the synthetic plant export (`data synth --kind plant`; target grade, or yield_kg).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The ModelSpec for --data.
    #[arg(long, requires = "data", conflicts_with = "target")]
    pub spec: Option<PathBuf>,
    /// The target column of --data when no --spec is given: every other column becomes a
    /// feature of a 16→8 MLP (binary, multiclass or regression from the target's values).
    #[arg(long, requires = "data")]
    pub target: Option<String>,
    /// What --target is, when its values leave it open (inferred otherwise, and said).
    #[arg(long, value_enum, requires = "target")]
    pub kind: Option<crate::experiment::infer::Kind>,
    /// With --target (or --data plant): text columns' vocabularies are found in the
    /// statistics step from the plants' counts (`discover`), not written into the spec.
    #[arg(long)]
    pub discover: bool,
    /// How rows are dealt to plants: iid, dirichlet:ALPHA, quantity:ALPHA, shift:FEATURE.
    #[arg(long, default_value = "iid")]
    pub partition: String,
    /// Seed of the split and partition.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Where to write the report.
    #[arg(long, default_value = "yosegi-demo-report")]
    pub out: PathBuf,
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Strategy or baseline name.
    pub name: String,
    /// Federation rounds (0 for baselines).
    pub rounds: u32,
    /// Metrics on the held-back rows.
    pub metrics: Metrics,
    /// Bytes of weight blobs that crossed the network (0 for baselines).
    pub blob_bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Why the strategy failed (its metrics are then of the last model it published).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

fn progress(msg: &str) {
    eprintln!("[demo] {msg}");
}

/// Runs the demo; returns the rows it printed.
pub async fn run(args: DemoArgs) -> anyhow::Result<Vec<Row>> {
    let started = Instant::now();
    let work = tempfile::tempdir().context("creating a temp dir")?;
    let (spec, data_path) = match (&args.data, &args.spec, &args.target) {
        (Some(d), None, target) if d.as_os_str() == "plant" && !d.exists() => {
            // The synthetic plant export: text columns, sensor blanks, an identifier.
            let target = match target.as_deref().unwrap_or("grade") {
                "grade" => shared_model::plantdata::Target::Grade,
                "yield_kg" => shared_model::plantdata::Target::Yield,
                t => anyhow::bail!("--data plant has targets grade and yield_kg, not {t:?}"),
            };
            let p = work.path().join("plant.csv");
            std::fs::write(
                &p,
                shared_model::plantdata::PlantData::default().csv(target),
            )?;
            progress(&format!(
                "synthetic plant export: {} rows, target {}",
                shared_model::plantdata::PlantData::default().rows_per_site * 3,
                target.column()
            ));
            (
                crate::experiment::derive_spec(&p, target.column(), args.kind, args.discover)?,
                p,
            )
        }
        (Some(d), Some(s), _) => (ModelSpec::from_file(s)?, d.clone()),
        (Some(d), None, Some(t)) => (
            crate::experiment::derive_spec(d, t, args.kind, args.discover)?,
            d.clone(),
        ),
        (Some(d), None, None) => {
            anyhow::bail!("--data {} needs --spec or --target", d.display())
        }
        _ => {
            let p = work.path().join("wdbc.csv");
            std::fs::write(&p, WDBC_CSV)?;
            (ModelSpec::parse(WDBC_SPEC, "bundled data/wdbc.toml")?, p)
        }
    };
    let strategies: Vec<&str> = match args.strategy.as_str() {
        "all" => crate::engine::STRATEGIES
            .iter()
            .copied()
            .filter(|s| {
                // Krum scores each update by its n − f − 2 nearest others: it needs 3 plants.
                let fits = shared_model::strategy::runs_with(s, args.parties);
                if !fits {
                    progress(&format!("{s} skipped: it needs at least 3 plants"));
                }
                fits
            })
            .collect(),
        s if crate::engine::STRATEGIES.contains(&s) => vec![s],
        s => anyhow::bail!(
            "unknown strategy {s:?}; choose one of {} or all",
            crate::engine::STRATEGIES.join(", ")
        ),
    };
    anyhow::ensure!(
        args.parties >= 1 && args.rounds >= 1,
        "--parties and --rounds must be at least 1"
    );
    let how: Partition = args.partition.parse()?;
    let (all, loaded) = load(&data_path, &spec)?;
    if !loaded.is_clean() {
        progress(&format!("{}: {loaded}", data_path.display()));
    }
    // A spec that discovers vocabularies: the plants find them live; the baselines and the
    // evaluation here hold the rows with one slot per value the file has (`discovery`), and
    // encode them as each model's vocabularies say.
    let wide = discovery::wide_spec(&spec, &loaded.counts.seen_among(None));
    let all = if spec.discovers() {
        load(&data_path, &wide)?.0
    } else {
        all
    };
    let [pool_idx, _, holdout_idx] = all.split_indices(
        spec.task.kind,
        SplitFractions {
            validation: 0.0,
            holdout: 0.2,
        },
        args.seed,
    );
    let (pool, holdout) = (all.subset(&pool_idx), all.subset(&holdout_idx));
    let parts = partition(&pool, &wide, &how, args.parties, 10, args.seed)?;
    let slices: Vec<Dataset> = parts.iter().map(|idx| pool.subset(idx)).collect();
    // Each plant's file holds its rows exactly as the source wrote them (names, blanks and all).
    let records: Vec<Vec<u64>> = parts
        .iter()
        .map(|idx| idx.iter().map(|&k| loaded.offsets[pool_idx[k]]).collect())
        .collect();
    progress(&format!(
        "{}: {} rows → {} held back, {} plants with {:?} rows ({})",
        spec.name,
        all.len(),
        holdout.len(),
        args.parties,
        slices.iter().map(Dataset::len).collect::<Vec<_>>(),
        how
    ));

    let config = ServeConfig {
        tick: Duration::from_millis(50),
        grace: Duration::from_secs(2),
        ..Default::default()
    };
    let mut fed = LocalFederation::start(work.path(), config).await?;
    progress(&format!("coordinator listening on {}", fed.url));
    let mut op = fed.operator().await?;
    let names: Vec<String> = (0..args.parties)
        .map(|i| match args.parties {
            ..=26 => format!("plant-{}", (b'a' + i as u8) as char),
            _ => format!("plant-{}", i + 1),
        })
        .collect();
    let pinned = fed.coordinator_pub();
    let files = fed.party_files_from(&names, &data_path, &records)?;
    for (name, files) in names.iter().zip(&files) {
        op.enroll(name, &shared_model::keys::read_public(&files.public_key)?)
            .await?;
        fed.start_party(files, &pinned)?;
    }
    progress(&format!(
        "{} plant daemons enrolled and running",
        names.len()
    ));

    let spec_text = spec.to_toml();
    let mut rows = Vec::new();
    for strategy in &strategies {
        let t0 = Instant::now();
        let task = format!("demo-{strategy}");
        op.create_task(&task, &spec_text, &[]).await?;
        let options = options_for(strategy, args.parties);
        let cfg = StrategyConfig::parse(strategy, &options)?;
        let relay = cfg.is_relay();
        // A relay is one round per plant per pass; --rounds counts relays.
        let expected = if relay {
            args.rounds as usize * args.parties
        } else {
            args.rounds as usize
        };
        op.start_round(
            &task,
            strategy,
            options.into_iter().collect(),
            args.parties as u32,
            120_000,
            args.rounds,
        )
        .await?;
        let mut shown = 0;
        let rounds = fed
            .wait_for(&task, Duration::from_secs(600), |rs| {
                let done = rs.iter().filter(|r| r.is_final()).count();
                if done > shown {
                    shown = done;
                    progress(&format!("{strategy}: round {done}/{expected} closed"));
                }
                rs.len() == expected && rs.iter().all(|r| r.is_final())
            })
            .await?;
        // A failed round does not end the demo: the strategy is reported as failed, with the
        // reason, and the metrics of the last model it did publish; the others still run.
        let failed = rounds
            .iter()
            .find(|r| r.phase == crate::views::RoundPhase::Failed)
            .map(|f| format!("round {} failed: {}", f.round, f.failure));
        if let Some(why) = &failed {
            progress(&format!("{strategy}: {why}"));
        }
        let (_, bytes, _) = op.pull(&task, 0, &fed.coordinator_key).await?;
        let task_spec = blob::spec_for(&bytes, &spec, model_limits(&spec))?;
        let model = Model::decode(&bytes, &task_spec, BlobRole::Merged)?;
        let metrics = model.evaluate(
            &task_spec,
            &discovery::recode(&wide, &task_spec, &holdout),
            CpuBackend::default(),
        );
        // Blob bytes over the network: every invited plant downloads the round's base model and
        // uploads one network; every plant downloads each published model to evaluate it.
        let network = Weights::initial(&spec, &Normalization::identity(spec.input_width()));
        let mut base_len = Model::Single(network.clone())
            .encode(&spec, BlobRole::Initial)
            .len() as u64;
        let update_len = Model::Single(network).encode(&spec, BlobRole::Update).len() as u64;
        let mut blob_bytes = 0u64;
        for r in &rounds {
            let invited = r.parties.len() as u64;
            let accepted = r
                .parties
                .iter()
                .filter(|p| p.state == crate::views::PartyStateName::Accepted)
                .count() as u64;
            blob_bytes += invited * base_len + accepted * update_len;
            if r.version > 0 {
                let (m, _, _) = op.pull(&task, r.version, &fed.coordinator_key).await?;
                blob_bytes += args.parties as u64 * m.blob_len;
                base_len = m.blob_len;
            }
        }
        rows.push(Row {
            name: cfg.to_string(),
            rounds: args.rounds,
            metrics,
            blob_bytes,
            seconds: t0.elapsed().as_secs_f64(),
            failed,
        });
    }
    fed.stop().await?;

    // Baselines: the same local epochs in total as the federation gave each plant, on the same
    // rows each plant daemon trains on (its slice's training split; the rest it keeps for its
    // own validation and holdout).
    let epochs = spec.training.local_epochs * args.rounds;
    let t0 = Instant::now();
    let plants: Vec<PlantRows> = slices.iter().map(|d| PlantRows::split(&spec, d)).collect();
    // Early stopping, when the spec asks for it, on the validation rows, as at the plants.
    let opts = |validation: Dataset| TrainOptions {
        epochs,
        validation: spec
            .training
            .early_stopping
            .map(|_| std::sync::Arc::new(validation)),
        ..TrainOptions::from_spec(&spec, args.seed)
    };
    let mut local = Vec::new();
    for plant in &plants {
        let (s, norm) =
            discovery::fix_alone(&wide, &spec, &plant.train).map_err(|e| anyhow::anyhow!(e))?;
        let o = opts(discovery::recode(&wide, &s, &plant.validation));
        let train_rows = discovery::recode(&wide, &s, &plant.train);
        let out = train(&s, &Weights::initial(&s, &norm), &train_rows, &o)?;
        let holdout_s = discovery::recode(&wide, &s, &holdout);
        local.push(evaluate(
            &s,
            &out.weights,
            &holdout_s,
            CpuBackend::default(),
        ));
    }
    rows.push(Row {
        name: "local-only (mean over plants)".into(),
        rounds: 0,
        metrics: crate::results::mean_metrics(&local),
        blob_bytes: 0,
        seconds: t0.elapsed().as_secs_f64(),
        failed: None,
    });
    let t0 = Instant::now();
    let pooled = Dataset::concat(plants.iter().map(|p| &p.train));
    let (s, norm) = discovery::fix_alone(&wide, &spec, &pooled).map_err(|e| anyhow::anyhow!(e))?;
    let validation = Dataset::concat(plants.iter().map(|p| &p.validation));
    let opts = opts(discovery::recode(&wide, &s, &validation));
    let pooled = discovery::recode(&wide, &s, &pooled);
    let out = train(&s, &Weights::initial(&s, &norm), &pooled, &opts)?;
    let holdout_s = discovery::recode(&wide, &s, &holdout);
    rows.push(Row {
        name: "data-sharing (simulation only)".into(),
        rounds: 0,
        metrics: evaluate(&s, &out.weights, &holdout_s, CpuBackend::default()),
        blob_bytes: 0,
        seconds: t0.elapsed().as_secs_f64(),
        failed: None,
    });

    let table = render(&rows);
    println!("{table}");
    write_report(&args, &spec, &rows, &table, holdout.len())?;
    println!(
        "report written to {} (total {:.1} s)",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(rows)
}

/// The comparison table as Markdown.
pub fn render(rows: &[Row]) -> String {
    let mut s = String::new();
    match &rows[0].metrics {
        Metrics::Binary(_) => {
            s += "| strategy | rounds | precision | recall | F1 | accuracy | AUC | blob bytes moved | wall time |\n";
            s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        }
        Metrics::Multiclass(_) => {
            s += "| strategy | rounds | macro precision | macro recall | macro F1 | accuracy | log-loss | blob bytes moved | wall time |\n";
            s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        }
        Metrics::Regression(_) => {
            s += "| strategy | rounds | MSE | MAE | R² | blob bytes moved | wall time |\n";
            s += "|---|---:|---:|---:|---:|---:|---:|\n";
        }
    }
    for r in rows {
        let name = match &r.failed {
            Some(_) => format!("{} ✗ failed", r.name),
            None => r.name.clone(),
        };
        match &r.metrics {
            Metrics::Binary(b) => {
                s += &format!(
                    "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {:.1} s |\n",
                    name,
                    r.rounds,
                    b.precision,
                    b.recall,
                    b.f1,
                    b.accuracy,
                    b.roc_auc,
                    r.blob_bytes,
                    r.seconds
                );
            }
            Metrics::Multiclass(m) => {
                s += &format!(
                    "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {:.1} s |\n",
                    name,
                    r.rounds,
                    m.macro_precision,
                    m.macro_recall,
                    m.macro_f1,
                    m.accuracy,
                    m.log_loss,
                    r.blob_bytes,
                    r.seconds
                );
            }
            Metrics::Regression(m) => {
                s += &format!(
                    "| {} | {} | {:.4} | {:.4} | {:.4}{} | {} | {:.1} s |\n",
                    name,
                    r.rounds,
                    m.mse,
                    m.mae,
                    m.r2,
                    if r.metrics.worse_than_the_mean() {
                        " ⚠"
                    } else {
                        ""
                    },
                    r.blob_bytes,
                    r.seconds
                );
            }
        }
    }
    for r in rows {
        if let Some(why) = &r.failed {
            s += &format!(
                "\n✗ {} FAILED — {why}; its row shows the last model it published.\n",
                r.name
            );
        }
    }
    let worse: Vec<&str> = rows
        .iter()
        .filter(|r| r.metrics.worse_than_the_mean())
        .map(|r| r.name.as_str())
        .collect();
    if !worse.is_empty() {
        s += &format!(
            "\n⚠ R² < 0: {} predict worse than the targets' mean on these rows — do not use them; look at the learning rate, the epochs and the target's scale.\n",
            worse.join(", ")
        );
    }
    s
}

fn write_report(
    args: &DemoArgs,
    spec: &ModelSpec,
    rows: &[Row],
    table: &str,
    holdout: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let md = format!(
        "# Yosegi demo\n\nSpec `{}` ({}), {} plants, partition `{}`, {} rounds per strategy, seed {}.\n\
         Metrics are on {holdout} held-back rows no plant trained on.\n\n{table}\n\
         - **local-only**: each plant trains alone for the same number of epochs; metrics averaged over plants.\n\
         - **data-sharing**: one model on all plants' rows pooled — possible only in simulation.\n",
        spec.name,
        spec.id().0.short(),
        args.parties,
        args.partition,
        args.rounds,
        args.seed
    );
    let md = md + "\n![metric per strategy](metric-by-strategy.svg)\n";
    std::fs::write(args.out.join("README.md"), md)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_vec_pretty(rows)?,
    )?;
    // One point per row (a single run: no error bars), with the experiment's plot.
    let point = crate::results::Point {
        parties: args.parties,
        partition: args.partition.clone(),
        rounds: args.rounds,
    };
    let summaries: Vec<crate::results::Summary> = rows
        .iter()
        .filter(|r| r.failed.is_none())
        .map(|r| {
            let (metric, value) = r.metrics.headline();
            crate::results::Summary {
                point: point.clone(),
                strategy: r.name.clone(),
                name: r.name.split(' ').next().unwrap_or_default().to_string(),
                metric: metric.to_string(),
                values: std::collections::BTreeMap::from([(metric.to_string(), (value, 0.0))]),
                per_round: vec![value],
                runs: 1,
                failed: 0,
                failure: None,
            }
        })
        .collect();
    let refs: Vec<&crate::results::Summary> = summaries.iter().collect();
    crate::plots::by_strategy(&args.out.join("metric-by-strategy.svg"), &refs)?;
    Ok(())
}
