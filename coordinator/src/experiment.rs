//! `coordinator experiment`: the offline simulator behind docs/RESULTS.md. Each simulated plant
//! splits its rows as a daemon does and takes its turn with the daemon's own code
//! ([`contribute::prepare`]: local training, differential privacy, the membership gate — a
//! withheld update is a decline, and the round fails as it would live); the coordinator side
//! runs the same round rules and strategies, with an in-memory transport that still encodes every
//! update as a blob, signs it with the party's ed25519 key and verifies it like the coordinator
//! does — only the sockets and the database are left out. For each grid point (parties ×
//! heterogeneity × rounds), strategy and seed it records the metrics of the merged model on rows
//! no party trained on, next to the **local-only** and **data-sharing** baselines, and writes
//! `results.json`, `results.csv`, a Markdown table (mean ± std over seeds) and SVG plots.

use std::path::PathBuf;
use std::time::Instant;

pub use crate::results::{Point, Summary, mean_std};

pub mod infer;
mod output;
mod plant;
mod setup;
use output::write_report;
pub use output::{summarize, table};
use plant::{Attack, Turn, exchange, parse_attack};
pub use setup::derive_spec;
use setup::{Setup, grid, setup};

use anyhow::Context as _;
use party_client::contribute::{self, Prepared};
use serde::Serialize;
use shared_model::blob::{BlobMeta, BlobRole, encode};
use shared_model::data::Dataset;
use shared_model::dp;
use shared_model::eval::Metrics;
use shared_model::ids::{PartyId, RoundNo, Sha256, StepNo, TaskId};
use shared_model::model::{MAX_PARTS, Model};
use shared_model::network::CpuBackend;
use shared_model::spec::DpMode;
use shared_model::stats::FeatureSums;
use shared_model::strategy::{NAMES, StrategyConfig, local_update, options_for, runs_with};
use shared_model::train::{TrainOptions, train};
use shared_model::update::{Expectations, SignedUpdate, VerifiedUpdate, verify};
use shared_model::weights::Weights;
use yosegi_round::Limits;

/// What a task with differential privacy runs, for the notes on skipped strategies.
/// The task name the simulated federation signs its updates for.
pub const TASK: &str = "experiment";

const DP_STRATEGIES: &str = "no ensemble or series, central mode only fedavg and fedprox";

/// Settings of an experiment (the CLI's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct ExperimentArgs {
    /// A CSV file, or `synthetic` for Friedman #1 regression (10 inputs, noise 1).
    #[arg(long)]
    pub data: String,
    /// The ModelSpec for a CSV (without it, one is derived from --target: every other column
    /// is a feature, an MLP 16→8).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// The target column of a CSV when no --spec is given.
    #[arg(long)]
    pub target: Option<String>,
    /// What --target is, when its values leave it open (inferred otherwise, and said).
    #[arg(long, value_enum, requires = "target")]
    pub kind: Option<infer::Kind>,
    /// With --target (or --data plant): text columns' vocabularies are found in the
    /// statistics step from the plants' counts (`discover`), not written into the spec.
    #[arg(long)]
    pub discover: bool,
    /// Number of parties.
    #[arg(long, default_value_t = 3)]
    pub parties: usize,
    /// How rows are dealt: iid, dirichlet:ALPHA, quantity:ALPHA, shift:FEATURE.
    #[arg(long, default_value = "iid")]
    pub partition: String,
    /// Strategies: all, or a comma-separated list.
    #[arg(long, default_value = "all")]
    pub strategies: String,
    /// Federation rounds (for relays: relays, each one step per party).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seeds (1..=S): each changes the holdout, the partition, initial weights and shuffling.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// A grid axis, KEY=V1,V2,…: parties, alpha (Dirichlet label skew), quantity (size skew),
    /// rounds. Repeatable; the grid is every combination.
    #[arg(long)]
    pub sweep: Vec<String>,
    /// Parties (the first ones by name) that upload poisoned updates.
    #[arg(long, default_value_t = 0)]
    pub attackers: usize,
    /// The poisoning: `sign-flip:S` uploads base − S·(trained − base).
    #[arg(long, default_value = "sign-flip:10")]
    pub attack: String,
    /// Updates a broadcast round needs (its quorum), as `round start --min-parties`: by
    /// default every party; raised to what a strategy merges (Krum's 2f + 3). With fewer updates
    /// than this (a plant declines: its membership audit withholds its update, or it holds too
    /// few rows to audit) the round fails, as it would live.
    #[arg(long)]
    pub min_parties: Option<u32>,
    /// Rows drawn for `--data synthetic`.
    #[arg(long, default_value_t = 3000)]
    pub synthetic_rows: usize,
    /// Where to write the results.
    #[arg(long, default_value = "yosegi-experiment")]
    pub out: PathBuf,
}

/// One run: a strategy (or baseline) at a grid point with a seed.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// Strategy name with its options, or `local-only` / `data-sharing`.
    pub strategy: String,
    /// The bare strategy name.
    pub name: String,
    /// Seed.
    pub seed: u64,
    /// Grid point.
    #[serde(flatten)]
    pub point: Point,
    /// Poisoning parties.
    pub attackers: usize,
    /// Metrics of the final model on the held-back rows.
    pub metrics: Metrics,
    /// The headline metric's name (f1, macro_f1, mse).
    pub metric: String,
    /// The headline metric after each round (one value for baselines).
    pub per_round: Vec<f64>,
    /// Blob bytes that a live federation would move (base down, update up, result down).
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// The first round that failed, and why (the metrics are then of the last model published).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Runs one strategy at one point with one seed.
fn run_strategy(
    s: &Setup,
    cfg: &StrategyConfig,
    point: &Point,
    attackers: usize,
    attack: Attack,
    min_parties: Option<u32>,
) -> anyhow::Result<Run> {
    let keys: Vec<shared_model::SigningKey> = s
        .parties
        .iter()
        .map(|_| shared_model::keys::generate())
        .collect::<Result<_, _>>()?;
    let names: Vec<String> = s.parties.iter().map(|(n, _)| n.clone()).collect();
    let index = |name: &str| names.iter().position(|n| n == name).expect("a party");
    let poisoned = |i: usize| (i < attackers).then_some(attack);
    let mut per_round = Vec::new();
    let mut bytes = 0u64;
    let mut failed = None;
    // The server's rules on an in-memory federation: `round start --rounds N` queues the
    // rounds (a relay: N relays, one step per party), each opens, takes the verified updates
    // and closes with the engine's merge.
    // Each party reported its training rows in the statistics step.
    let reported: Vec<(String, u64)> = s
        .parties
        .iter()
        .map(|(n, rows)| (n.clone(), rows.train.len() as u64))
        .collect();
    let mut sim = crate::simround::SimFederation::new(
        TASK,
        &s.spec,
        &reported,
        Limits::default(),
        s.initial.clone(),
    )?;
    sim.queue(cfg, point.rounds, min_parties)?;
    let per_pass = if cfg.is_relay() {
        cfg.relay_order(&names).len()
    } else {
        1
    };
    let mut opened = 0usize;
    while let Some(open) = sim.open_next()? {
        let pass = (opened / per_pass) as u64 + 1;
        let base = sim.model().clone();
        let base_bytes = base.encode(&s.spec, BlobRole::Merged);
        let mut updates = Vec::with_capacity(open.invited.len());
        for party in &open.invited {
            let i = index(party.as_str());
            let step = open.step.0 as usize;
            let turn = exchange(
                s,
                cfg,
                i,
                &base,
                &base_bytes,
                pass,
                open.round,
                step,
                poisoned(i),
                &keys[i],
            )?;
            bytes += base_bytes.len() as u64;
            match turn {
                Turn::Upload(v, sha, up) => {
                    bytes += up;
                    sim.accept(open.round, &v, sha)?;
                    updates.push(*v);
                }
                Turn::Declined(reason) => sim.decline(open.round, party, &reason)?,
            }
        }
        // Central DP's noise is seeded here, so a run is reproducible.
        let mut rng = dp::seeded_rng(s.spec.training.seed ^ pass);
        // A failed round does not end the run, as it does not end a live task's queue: the
        // next round starts from the last published model, and the run is marked failed.
        if let Err(reason) = sim.close(open.round, updates, &mut rng)?
            && failed.is_none()
        {
            failed = Some(format!("round {} failed: {reason}", open.round));
        }
        opened += 1;
        if opened.is_multiple_of(per_pass) {
            // Every party downloads the published model to evaluate it.
            let model = sim.model();
            bytes += names.len() as u64 * model.encode(&s.spec, BlobRole::Merged).len() as u64;
            let m = model.evaluate(&s.spec, &s.holdout, CpuBackend::default());
            per_round.push(m.headline().1);
        }
    }
    let metrics = sim
        .model()
        .evaluate(&s.spec, &s.holdout, CpuBackend::default());
    Ok(Run {
        metrics,
        per_round,
        bytes,
        failed,
    })
}

/// One strategy's run at one point with one seed.
struct Run {
    metrics: Metrics,
    per_round: Vec<f64>,
    bytes: u64,
    /// The first round that failed (e.g. every plant's membership audit withheld its update).
    failed: Option<String>,
}

/// The two baselines, with as many local epochs in total as a federation gives each party,
/// on the rows each party trains on (early stopping, if the spec asks, on its validation rows).
fn baselines(s: &Setup, point: &Point) -> anyhow::Result<(Metrics, Metrics)> {
    let epochs = s.spec.training.local_epochs * point.rounds;
    let opts = |validation: Dataset| TrainOptions {
        epochs,
        validation: s
            .spec
            .training
            .early_stopping
            .map(|_| std::sync::Arc::new(validation)),
        ..TrainOptions::from_spec(&s.spec, s.spec.training.seed)
    };
    let mut local = Vec::new();
    for (_, rows) in &s.parties {
        let d = &rows.train;
        let norm = FeatureSums::of_dataset(&s.spec, d).normalization_for(&s.spec)?;
        let o = opts(rows.validation.clone());
        let out = train(&s.spec, &Weights::initial(&s.spec, &norm), d, &o)?;
        local.push(Model::Single(out.weights).evaluate(&s.spec, &s.holdout, CpuBackend::default()));
    }
    let pooled = Dataset::concat(s.parties.iter().map(|(_, rows)| &rows.train));
    let validation = Dataset::concat(s.parties.iter().map(|(_, rows)| &rows.validation));
    let out = train(&s.spec, &s.pooled_initial, &pooled, &opts(validation))?;
    let sharing = Model::Single(out.weights).evaluate(&s.spec, &s.holdout, CpuBackend::default());
    Ok((crate::results::mean_metrics(&local), sharing))
}

/// Runs the experiment; returns every record.
pub fn run(args: &ExperimentArgs) -> anyhow::Result<Vec<Record>> {
    let started = Instant::now();
    anyhow::ensure!(args.seeds >= 1, "--seeds must be at least 1");
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(
        args.min_parties != Some(0),
        "--min-parties must be at least 1 (it is clamped to each grid point's parties)"
    );
    let attack = parse_attack(&args.attack)?;
    let names: Vec<&str> = if args.strategies == "all" {
        NAMES.to_vec()
    } else {
        let list: Vec<&str> = args.strategies.split(',').map(str::trim).collect();
        for n in &list {
            anyhow::ensure!(
                NAMES.contains(n),
                "--strategies: unknown strategy {n:?}; known: {} (or all)",
                NAMES.join(", ")
            );
        }
        list
    };
    let points = grid(args)?;
    for p in &points {
        anyhow::ensure!(
            args.attackers < p.parties,
            "--attackers {} leaves no honest party among {}",
            args.attackers,
            p.parties
        );
    }
    let total = (points.len() * args.seeds as usize * (names.len() + 1)) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} runs  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut records = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for point in &points {
        for seed in 1..=args.seeds {
            let s = setup(args, point, seed)
                .with_context(|| format!("setting up {point:?} with seed {seed}"))?;
            for name in &names {
                bar.set_message(format!(
                    "{name}, {} parties, {}, seed {seed}",
                    point.parties, point.partition
                ));
                // What a live coordinator would refuse is skipped here too: Krum below three
                // parties, a published model of more than MAX_PARTS networks.
                let parts = match *name {
                    "series" => point.parties * point.rounds as usize,
                    "ensemble" => point.parties,
                    _ => 1,
                };
                // And on a task with differential privacy, strategies the DP step cannot serve.
                let dp_refused = s
                    .spec
                    .privacy
                    .dp
                    .as_ref()
                    .is_some_and(|d| dp::check_strategy(d.mode, name).is_err());
                if dp_refused {
                    if seed == 1 {
                        skipped.push(format!("{name} (differential privacy)"));
                    }
                    bar.inc(1);
                    continue;
                }
                if !runs_with(name, point.parties) || parts > MAX_PARTS {
                    if seed == 1 {
                        skipped.push(format!(
                            "{name} at {} parties × {} rounds",
                            point.parties, point.rounds
                        ));
                    }
                    bar.inc(1);
                    continue;
                }
                let cfg = StrategyConfig::parse(name, &options_for(name, point.parties))?;
                let t0 = Instant::now();
                let run = run_strategy(&s, &cfg, point, args.attackers, attack, args.min_parties)
                    .with_context(|| format!("{cfg} at {point:?}, seed {seed}"))?;
                if let Some(why) = &run.failed {
                    bar.suspend(|| eprintln!("{cfg}, {point:?}, seed {seed}: {why}"));
                }
                let Run {
                    metrics,
                    per_round,
                    bytes,
                    failed,
                } = run;
                records.push(Record {
                    strategy: cfg.to_string(),
                    name: name.to_string(),
                    seed,
                    point: point.clone(),
                    attackers: args.attackers,
                    metric: metrics.headline().0.to_string(),
                    metrics,
                    per_round,
                    bytes,
                    seconds: t0.elapsed().as_secs_f64(),
                    failed,
                });
                bar.inc(1);
            }
            let t0 = Instant::now();
            let (local, sharing) = baselines(&s, point)?;
            let secs = t0.elapsed().as_secs_f64();
            for (name, m) in [("local-only", local), ("data-sharing", sharing)] {
                records.push(Record {
                    strategy: name.into(),
                    name: name.into(),
                    seed,
                    point: point.clone(),
                    attackers: 0,
                    metric: m.headline().0.to_string(),
                    per_round: vec![m.headline().1],
                    metrics: m,
                    bytes: 0,
                    seconds: secs / 2.0,
                    failed: None,
                });
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    for s in &skipped {
        eprintln!(
            "skipped {s}: a live coordinator refuses it (Krum needs 3 parties; a model holds at most {MAX_PARTS} networks; differential privacy: {DP_STRATEGIES})"
        );
    }
    write_report(
        args,
        &points,
        &records,
        &skipped,
        started.elapsed().as_secs_f64(),
    )?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_are_every_combination_and_bad_axes_are_named() {
        let mut args = ExperimentArgs {
            data: "synthetic".into(),
            spec: None,
            target: None,
            kind: None,
            discover: false,
            parties: 3,
            partition: "iid".into(),
            strategies: "all".into(),
            rounds: 2,
            seeds: 1,
            sweep: vec!["parties=2,5".into(), "alpha=0.1,100".into()],
            attackers: 0,
            attack: "sign-flip:10".into(),
            synthetic_rows: 100,
            min_parties: None,
            out: PathBuf::from("x"),
        };
        let g = grid(&args).unwrap();
        assert_eq!(g.len(), 4);
        assert_eq!(
            g[3],
            Point {
                parties: 5,
                partition: "dirichlet:100".into(),
                rounds: 2
            }
        );
        args.sweep = vec!["colour=red".into()];
        assert!(
            grid(&args)
                .unwrap_err()
                .to_string()
                .contains("unknown axis")
        );
        args.sweep = vec!["parties=0".into()];
        assert!(
            grid(&args)
                .unwrap_err()
                .to_string()
                .contains("bad value \"0\"")
        );
    }

    #[test]
    fn mean_and_sample_std_by_hand() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[7.0]), (7.0, 0.0));
    }
}
