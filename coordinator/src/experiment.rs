//! `coordinator experiment`: the offline simulator behind docs/RESULTS.md. It runs the same
//! training ([`local_update`]) and the same strategies ([`StrategyConfig::merge`],
//! [`relay_step`]) as a live federation, with an in-memory transport that still encodes every
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
mod setup;
use output::write_report;
pub use output::{summarize, table};
pub use setup::derive_spec;
use setup::{Setup, grid, setup};

use anyhow::Context as _;
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
}

/// Poisoning of an update.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Attack {
    SignFlip(f32),
}

fn parse_attack(s: &str) -> anyhow::Result<Attack> {
    match s.split_once(':') {
        Some(("sign-flip", v)) => {
            Ok(Attack::SignFlip(v.parse().with_context(|| {
                format!("--attack sign-flip:SCALE needs a number, found {v:?}")
            })?))
        }
        _ => anyhow::bail!("--attack must be sign-flip:SCALE, found {s:?}"),
    }
}

/// The party side and the coordinator side of one update, in memory: train, (poison,) encode,
/// sign, verify. Returns the verified network and the bytes moved (update up).
#[allow(clippy::too_many_arguments)]
fn exchange(
    s: &Setup,
    cfg: &StrategyConfig,
    party: usize,
    base: &Model,
    base_bytes: &[u8],
    pass: u64,
    round: RoundNo,
    step: usize,
    attack: Option<Attack>,
    key: &shared_model::SigningKey,
) -> anyhow::Result<(VerifiedUpdate, Sha256, u64)> {
    let (name, data) = &s.parties[party];
    // The seed follows the pass over the parties (the experiment's round), as it always has.
    let seed = s.spec.training.seed ^ (pass << 20) ^ (party as u64) << 8;
    let opts = cfg.train_options(&s.spec, step, seed);
    let out = local_update(&s.spec, &cfg.name, name, base, data, &opts)?;
    // The party's DP step, as the daemon runs it; the noise is seeded so a run is reproducible.
    let out = match &s.spec.privacy.dp {
        Some(d) => dp::privatize(
            d,
            &cfg.name,
            base,
            out,
            &mut dp::seeded_rng(seed ^ 0xd1ff_9a7e),
        )?,
        None => out,
    };
    let mut weights = out.weights;
    if let Some(Attack::SignFlip(scale)) = attack {
        weights = match base.start_for(name) {
            Some(b) if out.stage == 0 => weights.map_trainable(|t| {
                let bt = b
                    .trainable()
                    .iter()
                    .find(|x| x.name == t.name)
                    .expect("same layout");
                t.data
                    .iter()
                    .zip(&bt.data)
                    .map(|(&w, &b)| b - scale * (w - b))
                    .collect()
            })?,
            _ => weights.map_trainable(|t| t.data.iter().map(|w| -scale * w).collect())?,
        };
    }
    if let (Some(d), Some(b)) = (&s.spec.privacy.dp, base.start_for(name))
        && d.mode == DpMode::Central
        && attack.is_some()
    {
        // A live coordinator rejects a delta beyond the clip in central mode (`dp_clip`): the
        // most an attacker can send is a clipped one.
        weights = dp::clip_delta(b, &weights, d.clip)
            .map_err(|e| anyhow::anyhow!("clipping an attacker's update: {e}"))?
            .0;
    }
    let bytes = encode(
        &weights,
        &BlobMeta {
            spec_id: s.spec.id(),
            role: BlobRole::Update,
        },
    );
    let task = TaskId::new(TASK)?;
    let party_id = PartyId::new(name)?;
    let base_sha = Sha256::of(base_bytes);
    let env = SignedUpdate::for_blob(
        task.clone(),
        s.spec.id(),
        round,
        StepNo(step as u64),
        base_sha,
        party_id.clone(),
        &bytes,
        out.samples as u64,
        key,
    );
    let verified = verify(
        &env,
        &bytes,
        &key.verifying_key(),
        &Expectations {
            task: &task,
            spec: &s.spec,
            round,
            step: StepNo(step as u64),
            base_model: base_sha,
            party: &party_id,
            // What the coordinator expects, from the base: not what the party says it trained.
            stage: cfg.expected_stage(base),
        },
    )?;
    base.check_update_normalization(verified.weights(), s.spec.input_width())
        .map_err(|why| anyhow::anyhow!("update of {name}: {why}"))?;
    Ok((verified, Sha256::of(&bytes), bytes.len() as u64))
}

/// Runs one strategy at one point with one seed.
fn run_strategy(
    s: &Setup,
    cfg: &StrategyConfig,
    point: &Point,
    attackers: usize,
    attack: Attack,
) -> anyhow::Result<(Metrics, Vec<f64>, u64)> {
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
    // The server's rules on an in-memory federation: `round start --rounds N` queues the
    // rounds (a relay: N relays, one step per party), each opens, takes the verified updates
    // and closes with the engine's merge.
    // Each party reported its training rows in the statistics step.
    let reported: Vec<(String, u64)> = s
        .parties
        .iter()
        .map(|(n, d)| (n.clone(), d.len() as u64))
        .collect();
    let mut sim = crate::simround::SimFederation::new(
        TASK,
        &s.spec,
        &reported,
        Limits::default(),
        s.initial.clone(),
    )?;
    sim.queue(cfg, point.rounds)?;
    let per_pass = if cfg.is_relay() {
        cfg.relay_order(&names).len()
    } else {
        1
    };
    let mut opened = 0usize;
    while let Some(open) = sim.open_next()? {
        let pass = (opened / per_pass) as u64 + 1;
        let base = sim.model().clone();
        let base_bytes = base.encode(s.spec.id(), BlobRole::Merged);
        let mut updates = Vec::with_capacity(open.invited.len());
        for party in &open.invited {
            let i = index(party.as_str());
            let step = open.step.0 as usize;
            let (v, sha, up) = exchange(
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
            bytes += base_bytes.len() as u64 + up;
            sim.accept(open.round, &v, sha)?;
            updates.push(v);
        }
        // Central DP's noise is seeded here, so a run is reproducible.
        let mut rng = dp::seeded_rng(s.spec.training.seed ^ pass);
        sim.close(open.round, updates, &mut rng)?;
        opened += 1;
        if opened.is_multiple_of(per_pass) {
            // Every party downloads the published model to evaluate it.
            let model = sim.model();
            bytes += names.len() as u64 * model.encode(s.spec.id(), BlobRole::Merged).len() as u64;
            let m = model.evaluate(&s.spec, &s.holdout, CpuBackend::default());
            per_round.push(m.headline().1);
        }
    }
    let m = sim
        .model()
        .evaluate(&s.spec, &s.holdout, CpuBackend::default());
    Ok((m, per_round, bytes))
}

/// The two baselines, with as many local epochs in total as a federation gives each party.
fn baselines(s: &Setup, point: &Point) -> anyhow::Result<(Metrics, Metrics)> {
    let epochs = s.spec.training.local_epochs * point.rounds;
    let opts = TrainOptions {
        epochs,
        ..TrainOptions::from_spec(&s.spec, s.spec.training.seed)
    };
    let mut local = Vec::new();
    for (_, d) in &s.parties {
        let norm = FeatureSums::of_dataset(&s.spec, d).normalization_for(&s.spec)?;
        let out = train(&s.spec, &Weights::initial(&s.spec, &norm), d, &opts)?;
        local.push(Model::Single(out.weights).evaluate(&s.spec, &s.holdout, CpuBackend::default()));
    }
    let pooled = Dataset::concat(s.parties.iter().map(|(_, d)| d));
    let out = train(&s.spec, &s.pooled_initial, &pooled, &opts)?;
    let sharing = Model::Single(out.weights).evaluate(&s.spec, &s.holdout, CpuBackend::default());
    Ok((crate::results::mean_metrics(&local), sharing))
}

/// Runs the experiment; returns every record.
pub fn run(args: &ExperimentArgs) -> anyhow::Result<Vec<Record>> {
    let started = Instant::now();
    anyhow::ensure!(args.seeds >= 1, "--seeds must be at least 1");
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
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
                let (metrics, per_round, bytes) =
                    run_strategy(&s, &cfg, point, args.attackers, attack)
                        .with_context(|| format!("{cfg} at {point:?}, seed {seed}"))?;
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
            parties: 3,
            partition: "iid".into(),
            strategies: "all".into(),
            rounds: 2,
            seeds: 1,
            sweep: vec!["parties=2,5".into(), "alpha=0.1,100".into()],
            attackers: 0,
            attack: "sign-flip:10".into(),
            synthetic_rows: 100,
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
