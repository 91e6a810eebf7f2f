//! What one experiment run trains on: the data and spec (`--data`, `--spec` or `--target`, or
//! the synthetic Friedman #1 set), the grid of points the sweeps span, and each run's setup —
//! the holdout, every party's share of the training rows and the initial model from their
//! feature sums.

use std::path::Path;

use anyhow::Context as _;
use party_client::contribute::PlantRows;
use shared_model::data::{Dataset, SplitFractions, load as load_file};
use shared_model::discovery;
use shared_model::ids::PartyId;
use shared_model::partition::{Partition, partition};
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use shared_model::synthetic::{self, Friedman1};
use shared_model::weights::Weights;
use yosegi_round::Limits;

use super::{ExperimentArgs, Point};

/// Reads the data and the spec; the rows are encoded with the spec's
/// [`discovery::wide_spec`] (also returned: the spec itself when it discovers nothing).
fn load(args: &ExperimentArgs, seed: u64) -> anyhow::Result<(ModelSpec, ModelSpec, Dataset)> {
    if args.data == "synthetic" {
        let spec = synthetic::spec(10)?;
        let data = Friedman1 {
            rows: args.synthetic_rows,
            dim: 10,
            noise: 1.0,
            seed,
        }
        .generate();
        return Ok((spec.clone(), spec, data));
    }
    let path = Path::new(&args.data);
    let spec = match (&args.spec, &args.target) {
        (Some(s), _) => ModelSpec::from_file(s)?,
        (None, Some(target)) => derive_spec(path, target, args.kind, args.discover)?,
        (None, None) => anyhow::bail!("--data {} needs --spec or --target", path.display()),
    };
    let (data, report) = load_file(path, &spec)?;
    if !spec.discovers() {
        return Ok((spec.clone(), spec, data));
    }
    let wide = discovery::wide_spec(&spec, &report.counts.seen_among(None));
    let data = load_file(path, &wide)?.0;
    Ok((spec, wide, data))
}

/// A spec for a CSV and its target column, inferred as `spec init` does
/// ([`crate::specinit::infer_spec`]); what it chose and why goes to stderr, an ambiguous
/// column is refused naming its lines.
pub fn derive_spec(
    path: &Path,
    target: &str,
    kind: Option<super::infer::Kind>,
    discover: bool,
) -> anyhow::Result<ModelSpec> {
    let inferred = crate::specinit::infer_spec(
        path,
        target,
        kind,
        crate::specinit::DEFAULT_MIN_COUNT,
        discover,
    )?;
    for s in &inferred.said {
        eprintln!("{}: {s}", path.display());
    }
    Ok(inferred.spec)
}

pub(super) fn grid(args: &ExperimentArgs) -> anyhow::Result<Vec<Point>> {
    let mut points = vec![Point {
        parties: args.parties,
        partition: args.partition.clone(),
        rounds: args.rounds,
    }];
    for axis in &args.sweep {
        let (key, values) = axis
            .split_once('=')
            .with_context(|| format!("--sweep must be KEY=V1,V2,…, found {axis:?}"))?;
        let values: Vec<&str> = values.split(',').map(str::trim).collect();
        let mut next = Vec::new();
        for p in &points {
            for v in &values {
                let bad = || format!("--sweep {key}: bad value {v:?}");
                let mut q = p.clone();
                match key {
                    "parties" => {
                        q.parties = v.parse().ok().filter(|n| *n >= 1).with_context(bad)?
                    }
                    "rounds" => q.rounds = v.parse().ok().filter(|n| *n >= 1).with_context(bad)?,
                    "alpha" => {
                        let a: f64 = v
                            .parse()
                            .ok()
                            .filter(|a: &f64| *a > 0.0)
                            .with_context(bad)?;
                        q.partition = format!("dirichlet:{a}");
                    }
                    "quantity" => {
                        let a: f64 = v
                            .parse()
                            .ok()
                            .filter(|a: &f64| *a > 0.0)
                            .with_context(bad)?;
                        q.partition = format!("quantity:{a}");
                    }
                    other => anyhow::bail!(
                        "--sweep {other}: unknown axis; use parties, alpha, quantity or rounds"
                    ),
                }
                next.push(q);
            }
        }
        points = next;
    }
    Ok(points)
}

/// The parties' data of one run.
pub(super) struct Setup {
    pub(super) spec: ModelSpec,
    pub(super) holdout: Dataset,
    /// Each party's rows, split as its daemon splits them: it trains on `train`, its
    /// membership gate audits against `validation` + `holdout`.
    pub(super) parties: Vec<(String, PlantRows)>,
    /// The federation's initial model: normalised by the statistics step under the default
    /// contribution limits.
    pub(super) initial: Weights,
    /// The data-sharing baseline's: normalised by every row pooled, no party capped.
    pub(super) pooled_initial: Weights,
}

pub(super) fn setup(args: &ExperimentArgs, point: &Point, seed: u64) -> anyhow::Result<Setup> {
    let (mut spec, mut wide, all) = load(args, seed)?;
    // Every seed changes the initial weights and the batch order too.
    spec.training.seed = spec.training.seed.wrapping_add(seed);
    wide.training.seed = spec.training.seed;
    let split = all.split(
        spec.task.kind,
        SplitFractions {
            validation: 0.0,
            holdout: 0.2,
        },
        seed,
    );
    let how: Partition = point.partition.parse()?;
    let parts = partition(&split.train, &wide, &how, point.parties, 5, seed)?;
    let parties: Vec<(String, PlantRows)> = parts
        .iter()
        .enumerate()
        .map(|(i, idx)| {
            let rows = PlantRows::of(&spec, split.train.subset(idx));
            (format!("party-{i:02}"), rows)
        })
        .collect();
    // The statistics step: normalisation from every party's feature sums of its training
    // rows (and their counts of each value of `discover` columns), each counted within the default
    // contribution limits, as a live task does.
    let sums: Vec<(PartyId, FeatureSums)> = parties
        .iter()
        .map(|(n, rows)| {
            Ok((
                PartyId::new(n)?,
                discovery::plant_sums(&wide, &spec, &rows.train),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let normalised = |limits: Limits, spec: &ModelSpec| -> anyhow::Result<(ModelSpec, Weights)> {
        let pooled = limits
            .pooled_sums(spec.stats_width(), &sums)
            .map_err(|e| anyhow::anyhow!(e))?;
        let norm = pooled.normalization_for(spec)?;
        let s = spec.resolved(&norm).map_err(|e| anyhow::anyhow!(e))?;
        let w = Weights::initial(&s, &norm);
        Ok((s, w))
    };
    let (task_spec, initial) = normalised(Limits::default(), &spec)?;
    // The data-sharing baseline: every row counted, the federation's vocabularies (from
    // here on every row is encoded with them).
    let (_, pooled_initial) = normalised(
        Limits {
            max_share: 1.0,
            ..Limits::default()
        },
        &task_spec,
    )?;
    let recode = |d: &Dataset| discovery::recode(&wide, &task_spec, d);
    let parties = parties
        .into_iter()
        .map(|(n, r)| {
            let rows = PlantRows {
                train: recode(&r.train),
                validation: recode(&r.validation),
                holdout: recode(&r.holdout),
            };
            (n, rows)
        })
        .collect();
    let holdout = recode(&split.holdout);
    let spec = task_spec;
    Ok(Setup {
        spec,
        holdout,
        parties,
        initial,
        pooled_initial,
    })
}
