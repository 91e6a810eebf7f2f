//! What a plant does between a verified base model and a signed upload, with no I/O: train the
//! round's local update, apply the task's differential privacy, audit the result for membership
//! leakage and decide whether it may leave the site. The daemon runs it on a blocking thread;
//! `coordinator experiment` runs the very same function for every simulated plant, so the lab
//! and a live federation refuse the same updates for the same reasons.

use std::sync::Arc;

use shared_model::data::{Dataset, SplitFractions};
use shared_model::dp;
use shared_model::eval::MetricStats;
use shared_model::membership::{self, MembershipAudit};
use shared_model::model::Model;
use shared_model::network::CpuBackend;
use shared_model::spec::ModelSpec;
use shared_model::strategy::{LocalUpdate, local_update_observed};
use shared_model::train::TrainOptions;

/// A plant's rows for one task, split as the daemon splits them.
#[derive(Clone, Debug)]
pub struct PlantRows {
    /// Rows it trains on (the membership audit's members).
    pub train: Dataset,
    /// Rows it validates on (never trained on).
    pub validation: Dataset,
    /// Rows it evaluates published models on (never trained on).
    pub holdout: Dataset,
}

impl PlantRows {
    /// `rows` split deterministically by the spec's seed with the daemon's fractions.
    pub fn split(spec: &ModelSpec, rows: &Dataset) -> Self {
        Self::of(spec, rows.clone())
    }

    /// [`Self::split`], consuming the rows (the daemon's loader: no second copy of the file's
    /// rows at the peak).
    pub fn of(spec: &ModelSpec, rows: Dataset) -> Self {
        let s = rows.into_split(
            spec.task.kind,
            SplitFractions::default(),
            spec.training.seed,
        );
        Self {
            train: s.train,
            validation: s.validation,
            holdout: s.holdout,
        }
    }

    /// Which of `rows` [`Self::of`] makes training rows (their indices, ascending).
    pub fn train_indices(spec: &ModelSpec, rows: &Dataset) -> Vec<usize> {
        let [train, _, _] = rows.split_indices(
            spec.task.kind,
            SplitFractions::default(),
            spec.training.seed,
        );
        train
    }

    /// The rows the trained model never saw: the membership audit's non-members.
    pub fn non_members(&self) -> Dataset {
        Dataset::concat([&self.validation, &self.holdout])
    }
}

/// An update that passed the plant's gate, ready to be encoded and signed.
#[derive(Debug)]
pub struct Contribution {
    /// The trained (and, under differential privacy, clipped and noised) update.
    pub update: LocalUpdate,
    /// The membership audit of what the update yields.
    pub audit: MembershipAudit,
    /// The threshold the audit was held to.
    pub threshold: f64,
    /// What the update yields, evaluated on the plant's holdout.
    pub local: MetricStats,
}

/// The outcome of a plant's turn.
#[derive(Debug)]
pub enum Prepared {
    /// Upload this.
    Ready(Contribution),
    /// Upload nothing and decline the assignment with this reason (it names only numbers, never
    /// a row). `audit` is the audit that refused it, if it ran.
    Withheld {
        /// The reason the operator sees.
        reason: String,
        /// The audit, when it was the audit that refused.
        audit: Option<MembershipAudit>,
    },
}

/// The membership-audit threshold a plant applies: the task's when it sets one, else
/// [`membership::default_threshold`] at the audit's row counts; the site's when stricter.
pub fn threshold(spec: &ModelSpec, audit: &MembershipAudit, site: Option<f64>) -> f64 {
    let task = spec
        .privacy
        .membership_max_advantage
        .unwrap_or_else(|| membership::default_threshold(audit.members, audit.non_members));
    site.map_or(task, |s| s.min(task))
}

/// One plant's turn in a round of `strategy` from `base`: train on `rows.train`, privatise
/// under the task's DP (noise from `rng`), audit against the rows never trained on, and keep the
/// update only if the audit passes. `site_max_advantage` is the site policy's threshold.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    spec: &ModelSpec,
    strategy: &str,
    party: &str,
    base: &Model,
    rows: &PlantRows,
    opts: &TrainOptions,
    site_max_advantage: Option<f64>,
    rng: &mut dp::NoiseRng,
    on_epoch: &mut dyn FnMut(u32, f64),
) -> anyhow::Result<Prepared> {
    // Early stopping (when the spec asks for it) watches the site's validation rows.
    let opts = TrainOptions {
        validation: spec
            .training
            .early_stopping
            .map(|_| Arc::new(rows.validation.clone())),
        ..opts.clone()
    };
    let out = local_update_observed(spec, strategy, party, base, &rows.train, &opts, on_epoch)?;
    // Differential privacy: the delta from the base is clipped, and in local mode noised,
    // before the audit, the evaluation and the signature see it.
    let out = match &spec.privacy.dp {
        Some(d) => match dp::privatize(d, strategy, base, out, rng) {
            Ok(out) => out,
            // Nothing to send (e.g. training diverged): say so, upload nothing.
            Err(e) => {
                return Ok(Prepared::Withheld {
                    reason: format!("differential privacy: {e}"),
                    audit: None,
                });
            }
        },
        None => out,
    };
    // Before anything is signed: how much does the trained model give away about its training
    // rows? Members: the training rows; non-members: the rows it never saw — the validation and
    // holdout rows, or only the holdout when early stopping chose the epoch on the validation
    // rows (their losses would flatter the model, understating the leak).
    let non_members = if out.early_stop.is_some() {
        rows.holdout.clone()
    } else {
        rows.non_members()
    };
    let audit = membership::audit(
        &out.result,
        spec,
        &rows.train,
        &non_members,
        CpuBackend::default(),
    )?;
    let threshold = threshold(spec, &audit, site_max_advantage);
    if let Err(refused) = membership::check(&audit, threshold) {
        return Ok(Prepared::Withheld {
            reason: refused.to_string(),
            audit: Some(audit),
        });
    }
    // Evaluated as what it yields: the network, or a relay's model after this step.
    let local = out
        .result
        .evaluate_stats(spec, &rows.holdout, CpuBackend::default());
    Ok(Prepared::Ready(Contribution {
        update: out,
        audit,
        threshold,
        local,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_model::data::load_csv;
    use shared_model::stats::FeatureSums;
    use shared_model::weights::Weights;

    fn wdbc() -> (ModelSpec, Dataset) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let spec = ModelSpec::from_file(&root.join("data/wdbc.toml")).unwrap();
        let data = load_csv(&root.join("data/wdbc.csv"), &spec).unwrap();
        (spec, data)
    }

    fn turn(spec: &ModelSpec, rows: &PlantRows, epochs: u32, site: Option<f64>) -> Prepared {
        let norm = FeatureSums::of_dataset(spec, &rows.train)
            .normalization_for(spec)
            .unwrap();
        let base = Model::Single(Weights::initial(spec, &norm));
        let opts = TrainOptions {
            epochs,
            ..TrainOptions::from_spec(spec, 7)
        };
        prepare(
            spec,
            "fedavg",
            "plant-a",
            &base,
            rows,
            &opts,
            site,
            &mut dp::seeded_rng(1),
            &mut |_, _| {},
        )
        .unwrap()
    }

    #[test]
    fn an_honest_update_passes_and_the_site_can_be_stricter_than_the_task() {
        let (spec, data) = wdbc();
        let rows = PlantRows::split(&spec, &data);
        let Prepared::Ready(c) = turn(&spec, &rows, 2, None) else {
            panic!("an honest two-epoch WDBC model passes the default gate")
        };
        assert_eq!(c.audit.members, rows.train.len());
        assert_eq!(
            c.audit.non_members,
            rows.validation.len() + rows.holdout.len()
        );
        assert!(c.audit.advantage <= c.threshold);
        let local = c.local.metrics();
        assert_eq!(
            local.binary().map(|b| b.count),
            Some(rows.holdout.len() as u64)
        );
        // A site threshold below the audit's advantage withholds the same update, by number.
        let strict = c.audit.advantage / 2.0;
        match turn(&spec, &rows, 2, Some(strict)) {
            Prepared::Withheld { reason, audit } => {
                assert!(reason.contains("membership audit"), "{reason}");
                assert_eq!(audit.unwrap().advantage, c.audit.advantage);
            }
            Prepared::Ready(_) => panic!("the stricter site threshold refuses it"),
        }
    }

    #[test]
    fn with_early_stopping_the_audit_uses_only_rows_that_chose_nothing() {
        let (mut spec, data) = wdbc();
        spec.training.early_stopping = Some(shared_model::spec::EarlyStopping {
            patience: 2,
            min_delta: 0.0,
        });
        let rows = PlantRows::split(&spec, &data);
        let Prepared::Ready(c) = turn(&spec, &rows, 2, None) else {
            panic!("an honest two-epoch WDBC model passes the default gate")
        };
        assert!(c.update.early_stop.is_some());
        // The validation rows picked the epoch: they are not the audit's non-members.
        assert_eq!(c.audit.non_members, rows.holdout.len());
    }

    #[test]
    fn a_memorising_update_on_few_rows_is_withheld() {
        let (spec, data) = wdbc();
        // 60 rows whose labels have nothing to do with their features, trained 300 epochs: the
        // model can only learn its training rows by heart.
        let mut few = data.subset(&(0..60).collect::<Vec<_>>());
        for (i, t) in few.targets.iter_mut().enumerate() {
            *t = ((i * 7 / 3) % 2) as f32;
        }
        let rows = PlantRows::split(&spec, &few);
        match turn(&spec, &rows, 300, None) {
            Prepared::Withheld { reason, audit } => {
                let audit = audit.expect("the audit refused it");
                assert!(audit.advantage > threshold(&spec, &audit, None), "{reason}");
                assert!(reason.contains("memorises"), "{reason}");
            }
            Prepared::Ready(c) => panic!("an overfitted model passed: {}", c.audit),
        }
    }
}
