//! The membership-inference audit a party runs on its own trained model before uploading it:
//! the loss-threshold attack of Yeom et al. (2018, "Privacy Risk in Machine Learning: Analyzing
//! the Connection to Overfitting"). An attacker who sees a row and the model guesses "member"
//! when the model's loss on the row is low. Run against the party's training rows (members)
//! and rows it did not train on (non-members), the attack's success measures how much the
//! model memorised its rows — what the upload would leak about them.
//!
//! [`audit`] computes per-row losses ([`row_losses`]) and the attack's statistics
//! ([`audit_losses`]): the AUC, the best advantage `max_t (TPR − FPR)` and the TPR at 1 % FPR.
//! [`check`] is the gate: it refuses the upload when the advantage exceeds the threshold, or
//! when there are too few rows on either side to judge (no audit is not a pass).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::model::Model;
use crate::network::CpuBackend;
use crate::spec::{ModelSpec, TaskKind};

/// The floor of the threshold applied when neither the task nor the site sets one
/// ([`default_threshold`]: this, or the audit's 95 % chance level when that is higher).
///
/// An advantage of 0.3 means the attacker tells a training row from a held-out row with 65 %
/// accuracy on a balanced guess (accuracy = (1 + advantage) / 2): clear memorisation. It is
/// set by what the attack can resolve at the sizes plants have. For a model that leaks
/// nothing the advantage is a two-sample Kolmogorov–Smirnov statistic whose 95 % quantile is
/// ≈ 1.36·√((m + n)/(m·n)) ([`chance_advantage`]): 0.14 for all of WDBC (455 training / 114
/// held-out rows), but 0.28 for a plant holding a third of it (≈ 135 training / 29
/// validation rows). Measured on such plants (30 seeds, the WDBC spec, 30 and 100 epochs),
/// honest models scored 0.03–0.27: a threshold of 0.2 refused 4 to 7 of the 30, 0.25 one or
/// two, 0.3 none — while an overfitted network on 100 rows scores ≈ 0.5 (see the tests).
/// Sites with hundreds of held-out rows can afford a stricter threshold (0.15–0.2), set in
/// the spec's `[privacy]` or the site's policy. For reference, ε-differential privacy bounds
/// the advantage by e^ε − 1, so 0.3 corresponds to ε ≈ 0.26.
pub const DEFAULT_MAX_ADVANTAGE: f64 = 0.3;

/// The threshold when neither the task nor the site sets one: [`DEFAULT_MAX_ADVANTAGE`], or the
/// advantage a model that leaks nothing stays below 95 % of the time at these row counts
/// ([`chance_advantage`]) when that is higher — a small plant's honest model is not refused for
/// what chance alone gives (0.48 at 40 training / 10 held-out rows), while a larger plant keeps
/// the 0.3 floor. A threshold the task or the site sets is applied as set.
pub fn default_threshold(members: usize, non_members: usize) -> f64 {
    DEFAULT_MAX_ADVANTAGE.max(chance_advantage(members, non_members))
}

/// Fewest rows on each side (members and non-members) the audit needs to judge a model.
pub const MIN_AUDIT_ROWS: usize = 10;

/// Probabilities are clamped to `[EPS, 1 − EPS]` before taking logarithms.
pub const LOSS_EPS: f64 = 1e-7;

/// The largest false-positive rate of [`MembershipAudit::tpr_at_1pct_fpr`].
const LOW_FPR: f64 = 0.01;

/// The outcome of the loss-threshold membership-inference attack on one model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipAudit {
    /// Training rows (members) attacked.
    pub members: usize,
    /// Rows the model was not trained on (non-members) attacked.
    pub non_members: usize,
    /// Probability that a random member has a lower loss than a random non-member (ties
    /// count ½): 0.5 is no leakage, 1 is perfect separation.
    pub auc: f64,
    /// The attack's best advantage over all loss thresholds, `max_t (TPR − FPR)`, in [0, 1].
    pub advantage: f64,
    /// The largest true-positive rate at a threshold whose false-positive rate is at most 1 %:
    /// how many members the attacker identifies with confidence.
    pub tpr_at_1pct_fpr: f64,
}

impl fmt::Display for MembershipAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AUC {:.2}, advantage {:.2}, TPR@1%FPR {:.2} ({} train / {} holdout rows)",
            self.auc, self.advantage, self.tpr_at_1pct_fpr, self.members, self.non_members
        )
    }
}

/// Why the audit refused an upload, or could not run.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum MembershipError {
    /// The model leaks membership beyond the threshold.
    #[error(
        "membership audit: advantage {advantage:.3} exceeds the threshold {max_advantage} ({audit}; a model that leaks nothing stays below {chance:.2} 95 % of the time at these row counts): the model memorises its training rows, the upload is refused",
        advantage = audit.advantage,
        chance = chance_advantage(audit.members, audit.non_members)
    )]
    TooLeaky {
        /// The audit.
        audit: MembershipAudit,
        /// The threshold it exceeded.
        max_advantage: f64,
    },
    /// Too few rows on one side to tell a leaky model from a safe one.
    #[error(
        "membership audit: too few rows to judge ({members} training, {non_members} held-out; at least {min} of each are needed): no audit is not a pass, the upload is refused",
        min = MIN_AUDIT_ROWS
    )]
    TooFewRows {
        /// Training rows available.
        members: usize,
        /// Held-out rows available.
        non_members: usize,
    },
    /// The threshold is not in (0, 1].
    #[error("membership audit: threshold must be in (0, 1], found {0}")]
    BadThreshold(f64),
    /// Rows of another width than the spec's features.
    #[error(
        "membership audit: the {which} rows have {found} features; the spec declares {expected}"
    )]
    Width {
        /// `training` or `held-out`.
        which: &'static str,
        /// The spec's feature count.
        expected: usize,
        /// The rows'.
        found: usize,
    },
}

/// The loss of `model` on each row of `data`, lower meaning "more member-like": binary
/// cross-entropy of the predicted probability (clamped to `[LOSS_EPS, 1 − LOSS_EPS]`) for a
/// binary task, cross-entropy of the true class for a multiclass one, squared error for
/// regression. `data` must have the spec's width.
pub fn row_losses(
    model: &Model,
    spec: &ModelSpec,
    data: &Dataset,
    backend: CpuBackend,
) -> Vec<f64> {
    if data.is_empty() {
        return Vec::new();
    }
    let preds = model.predict(spec, &data.features, backend);
    let k = spec.task.kind.output_width();
    let clamp = |p: f32| f64::from(p).clamp(LOSS_EPS, 1.0 - LOSS_EPS);
    preds
        .chunks_exact(k)
        .zip(&data.targets)
        .map(|(out, &y)| match spec.task.kind {
            TaskKind::Binary => {
                let p = clamp(out[0]);
                let y = f64::from(y);
                -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
            }
            TaskKind::Multiclass { .. } => -clamp(out[y as usize]).ln(),
            TaskKind::Regression => (f64::from(out[0]) - f64::from(y)).powi(2),
        })
        .collect()
}

/// Runs the attack on `model`: `members` are the rows it was trained on, `non_members` rows it
/// never saw (the party's validation or holdout rows).
pub fn audit(
    model: &Model,
    spec: &ModelSpec,
    members: &Dataset,
    non_members: &Dataset,
    backend: CpuBackend,
) -> Result<MembershipAudit, MembershipError> {
    for (which, d) in [("training", members), ("held-out", non_members)] {
        if d.width != spec.input_width() {
            return Err(MembershipError::Width {
                which,
                expected: spec.input_width(),
                found: d.width,
            });
        }
    }
    Ok(audit_losses(
        &row_losses(model, spec, members, backend),
        &row_losses(model, spec, non_members, backend),
    ))
}

/// The attack's statistics from per-row losses, in O(n log n). A NaN loss counts as the
/// largest loss (least member-like). With no rows on one side there is nothing to measure:
/// AUC 0.5, advantage and TPR 0 (and [`check`] refuses such an audit).
pub fn audit_losses(member_losses: &[f64], non_member_losses: &[f64]) -> MembershipAudit {
    let (m, n) = (member_losses.len(), non_member_losses.len());
    let mut audit = MembershipAudit {
        members: m,
        non_members: n,
        auc: 0.5,
        advantage: 0.0,
        tpr_at_1pct_fpr: 0.0,
    };
    if m == 0 || n == 0 {
        return audit;
    }
    // NaN → +∞ and −0 → +0, so that equal losses are adjacent and compare equal.
    let key = |l: f64| if l.is_nan() { f64::INFINITY } else { l + 0.0 };
    let mut all: Vec<(f64, bool)> = member_losses
        .iter()
        .map(|&l| (key(l), true))
        .chain(non_member_losses.iter().map(|&l| (key(l), false)))
        .collect();
    all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    // Sweep the threshold t upwards ("member" iff loss ≤ t), one group of tied losses at a time.
    let (m64, n64) = (m as u64, n as u64);
    let (mut tp, mut fp) = (0u64, 0u64);
    // Twice the number of (member, non-member) pairs ranked right, a tie counting one.
    let mut pairs2: u128 = 0;
    let mut rest = all.as_slice();
    while let Some(&(loss, _)) = rest.first() {
        let len = rest.iter().take_while(|(l, _)| *l == loss).count();
        let (group, tail) = rest.split_at(len);
        rest = tail;
        let mg = group.iter().filter(|(_, member)| *member).count() as u64;
        let ng = len as u64 - mg;
        fp += ng;
        // Members of this group beat every non-member above it and tie with those in it.
        pairs2 += u128::from(mg) * u128::from(2 * (n64 - fp) + ng);
        tp += mg;
        let tpr = tp as f64 / m as f64;
        let fpr = fp as f64 / n as f64;
        audit.advantage = audit.advantage.max(tpr - fpr);
        if fpr <= LOW_FPR {
            audit.tpr_at_1pct_fpr = audit.tpr_at_1pct_fpr.max(tpr);
        }
    }
    audit.auc = pairs2 as f64 / (2.0 * m64 as f64 * n64 as f64);
    audit
}

/// The advantage a model that leaks nothing stays below with 95 % probability when attacked on
/// `members` and `non_members` rows: the asymptotic 95 % quantile of the two-sample
/// Kolmogorov–Smirnov statistic, 1.358·√((m + n)/(m·n)) (1 when a side is empty).
pub fn chance_advantage(members: usize, non_members: usize) -> f64 {
    if members == 0 || non_members == 0 {
        return 1.0;
    }
    let (m, n) = (members as f64, non_members as f64);
    (1.358 * ((m + n) / (m * n)).sqrt()).min(1.0)
}

impl MembershipAudit {
    /// Checks an audit received from a party: rows on both sides (at most
    /// [`crate::stats::MAX_ROWS`]), and AUC, advantage and TPR finite numbers in [0, 1]; errors
    /// name the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, n) in [("members", self.members), ("non_members", self.non_members)] {
            if n == 0 || n as u64 > crate::stats::MAX_ROWS {
                return Err(format!(
                    "membership audit: `{name}` is {n}, expected 1 to {}",
                    crate::stats::MAX_ROWS
                ));
            }
        }
        for (name, v) in [
            ("auc", self.auc),
            ("advantage", self.advantage),
            ("tpr_at_1pct_fpr", self.tpr_at_1pct_fpr),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(format!(
                    "membership audit: `{name}` is {v}, expected a number in [0, 1]"
                ));
            }
        }
        Ok(())
    }
}

/// The gate: `Ok` when the audit had at least [`MIN_AUDIT_ROWS`] rows on each side and its
/// advantage is at most `max_advantage` (which must be in (0, 1]); otherwise the upload is
/// refused with the reason.
pub fn check(audit: &MembershipAudit, max_advantage: f64) -> Result<(), MembershipError> {
    if !(max_advantage.is_finite() && max_advantage > 0.0 && max_advantage <= 1.0) {
        return Err(MembershipError::BadThreshold(max_advantage));
    }
    if audit.members < MIN_AUDIT_ROWS || audit.non_members < MIN_AUDIT_ROWS {
        return Err(MembershipError::TooFewRows {
            members: audit.members,
            non_members: audit.non_members,
        });
    }
    if audit.advantage > max_advantage {
        return Err(MembershipError::TooLeaky {
            audit: *audit,
            max_advantage,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn perfect_separation() {
        let a = audit_losses(&[0.1, 0.2, 0.3], &[0.4, 0.5]);
        assert_eq!((a.members, a.non_members), (3, 2));
        assert_eq!((a.auc, a.advantage, a.tpr_at_1pct_fpr), (1.0, 1.0, 1.0));
        // The other way round the attack gets nothing: every member has the higher loss.
        let b = audit_losses(&[0.4, 0.5], &[0.1, 0.2, 0.3]);
        assert_eq!((b.auc, b.advantage, b.tpr_at_1pct_fpr), (0.0, 0.0, 0.0));
    }

    #[test]
    fn identical_distributions_give_half() {
        let l = [0.3, 0.1, 0.7, 0.2];
        let a = audit_losses(&l, &l);
        assert_eq!(a.auc, 0.5);
        assert_eq!(a.advantage, 0.0);
        // Every loss the same: one tie group, AUC ½, no threshold separates anything.
        let a = audit_losses(&[1.0; 5], &[1.0; 7]);
        assert_eq!((a.auc, a.advantage, a.tpr_at_1pct_fpr), (0.5, 0.0, 0.0));
    }

    #[test]
    fn hand_computed_with_ties() {
        // members 1, 2, 2, 4; non-members 2, 3, 5.
        // Pairs (m, n) with m < n: 1 beats 3 of them; each 2 beats 3 and 5 and ties 2 (2.5);
        // 4 beats 5 (1). (3 + 2.5 + 2.5 + 1) / 12 = 0.75.
        let a = audit_losses(&[1.0, 2.0, 2.0, 4.0], &[2.0, 3.0, 5.0]);
        assert!(close(a.auc, 0.75), "{a:?}");
        // Thresholds: ≤1 → (¼, 0); ≤2 → (¾, ⅓); ≤3 → (¾, ⅔); ≤4 → (1, ⅔); ≤5 → (1, 1).
        // Best TPR − FPR = ¾ − ⅓ = 5/12; at FPR 0 the TPR is ¼.
        assert!(close(a.advantage, 5.0 / 12.0), "{a:?}");
        assert_eq!(a.tpr_at_1pct_fpr, 0.25);
    }

    #[test]
    fn tpr_at_one_percent_fpr_allows_one_false_positive_in_a_hundred() {
        // 100 non-members at losses 1..=100; members at 0.5 (10 of them) and 1.5 (10).
        let non: Vec<f64> = (1..=100).map(f64::from).collect();
        let mut mem = vec![0.5; 10];
        mem.extend([1.5; 10]);
        // t = 1.5 takes 20 members and one non-member: FPR exactly 1 %, TPR 1.
        let a = audit_losses(&mem, &non);
        assert_eq!(a.tpr_at_1pct_fpr, 1.0);
        // With 99 non-members one false positive is already over 1 %: only the first 10 count.
        let a = audit_losses(&mem, &non[..99]);
        assert_eq!(a.tpr_at_1pct_fpr, 0.5);
    }

    #[test]
    fn nan_counts_as_the_largest_loss_and_signed_zeros_tie() {
        let a = audit_losses(&[f64::NAN, 0.0], &[-0.0, 1.0]);
        // 0 ties −0 (½), 0 beats 1 (1), NaN loses to both: 1.5 / 4.
        assert!(close(a.auc, 0.375), "{a:?}");
    }

    #[test]
    fn empty_sides_measure_nothing_and_are_refused() {
        let a = audit_losses(&[], &[1.0]);
        assert_eq!((a.auc, a.advantage, a.tpr_at_1pct_fpr), (0.5, 0.0, 0.0));
        assert!(matches!(
            check(&a, DEFAULT_MAX_ADVANTAGE),
            Err(MembershipError::TooFewRows { members: 0, .. })
        ));
    }

    fn audit_of(members: usize, non_members: usize, advantage: f64) -> MembershipAudit {
        MembershipAudit {
            members,
            non_members,
            auc: 0.5 + advantage / 2.0,
            advantage,
            tpr_at_1pct_fpr: 0.03,
        }
    }

    #[test]
    fn the_gate_refuses_leaky_models_small_audits_and_bad_thresholds() {
        assert_eq!(
            check(&audit_of(455, 114, 0.18), DEFAULT_MAX_ADVANTAGE),
            Ok(())
        );
        assert_eq!(
            check(&audit_of(455, 114, 0.2), 0.2),
            Ok(()),
            "at the threshold passes"
        );
        assert_eq!(check(&audit_of(455, 114, 1.0), 1.0), Ok(()));
        let e = check(&audit_of(455, 114, 0.61), 0.2).unwrap_err();
        assert!(matches!(e, MembershipError::TooLeaky { .. }));
        let msg = e.to_string();
        assert!(
            msg.starts_with("membership audit: advantage 0.610 exceeds the threshold 0.2 (AUC 0.8"),
            "{msg}"
        );
        assert!(msg.contains("(455 train / 114 holdout rows)"), "{msg}");
        assert!(msg.ends_with("the upload is refused"), "{msg}");
        let e = check(&audit_of(9, 114, 0.0), 0.2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "membership audit: too few rows to judge (9 training, 114 held-out; at least 10 of each are needed): no audit is not a pass, the upload is refused"
        );
        assert!(check(&audit_of(455, 9, 0.0), 0.2).is_err());
        assert!(check(&audit_of(10, 10, 0.0), 0.2).is_ok());
        for bad in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(
                    check(&audit_of(455, 114, 0.0), bad),
                    Err(MembershipError::BadThreshold(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn display_and_serde() {
        let a = MembershipAudit {
            members: 455,
            non_members: 114,
            auc: 0.6125,
            advantage: 0.18,
            tpr_at_1pct_fpr: 0.03,
        };
        assert_eq!(
            a.to_string(),
            "AUC 0.61, advantage 0.18, TPR@1%FPR 0.03 (455 train / 114 holdout rows)"
        );
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<MembershipAudit>(&json).unwrap(), a);
        assert!(json.contains("\"tpr_at_1pct_fpr\":0.03"), "{json}");
    }

    #[test]
    fn the_default_threshold_is_never_below_chance_at_the_audit_s_sizes() {
        // All of WDBC: the 0.3 floor. A small plant (40 training / 10 held-out rows): chance
        // reaches 0.48, and an honest model there scoring 0.42 passes the default gate while
        // a memorising one (0.9) is still refused.
        assert_eq!(default_threshold(455, 114), DEFAULT_MAX_ADVANTAGE);
        let small = default_threshold(40, 10);
        assert!(small > 0.47 && small == chance_advantage(40, 10), "{small}");
        assert!(check(&audit_of(40, 10, 0.42), small).is_ok());
        assert!(check(&audit_of(40, 10, 0.42), DEFAULT_MAX_ADVANTAGE).is_err());
        let e = check(&audit_of(40, 10, 0.9), small)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceeds the threshold"), "{e}");
    }

    #[test]
    fn chance_level_shrinks_with_rows() {
        assert!((chance_advantage(455, 114) - 0.142).abs() < 1e-3);
        assert!(chance_advantage(10, 10) > 0.6);
        assert_eq!(chance_advantage(0, 5), 1.0);
    }

    /// The gate on real models: a wide network trained long on 100 WDBC rows with 20 % of the
    /// labels flipped memorises them (noisy labels included) and is refused; a small network
    /// with weight decay trained briefly on the same rows passes.
    #[test]
    fn an_overfitted_model_is_refused_and_a_regularised_one_passes() {
        use crate::data::{SplitFractions, load_csv};
        use crate::stats::FeatureSums;
        use crate::train::{TrainOptions, train};
        use crate::weights::Weights;
        use rand::{Rng, SeedableRng};

        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let wdbc = ModelSpec::from_file(&root.join("data/wdbc.toml")).unwrap();
        let mut data = load_csv(&root.join("data/wdbc.csv"), &wdbc).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for t in &mut data.targets {
            if rng.random_bool(0.2) {
                *t = 1.0 - *t;
            }
        }
        let halves = data.split(
            wdbc.task.kind,
            SplitFractions {
                validation: 0.0,
                holdout: 0.5,
            },
            3,
        );
        let members = halves.train.subset(&(0..100).collect::<Vec<_>>());
        let non_members = halves.holdout;
        let norm = FeatureSums::of_rows(&members.features, 30)
            .normalization()
            .unwrap();
        let fit = |edits: &[(&str, &str)], epochs: u32| {
            let mut text = wdbc.to_toml();
            for (old, new) in edits {
                assert!(text.contains(old), "{old}");
                text = text.replace(old, new);
            }
            let spec = ModelSpec::parse(&text, "<test>").unwrap();
            let opts = TrainOptions {
                epochs,
                ..TrainOptions::from_spec(&spec, 7)
            };
            let start = Weights::initial(&spec, &norm);
            let model = Model::Single(train(&spec, &start, &members, &opts).unwrap().weights);
            audit(&model, &spec, &members, &non_members, CpuBackend::default()).unwrap()
        };
        let overfitted = fit(
            &[
                ("hidden = [16, 8]", "hidden = [128, 128]"),
                ("dropout = 0.1", "dropout = 0.0"),
                ("weight_decay = 0.0001", "weight_decay = 0.0"),
                ("batch_size = 32", "batch_size = 16"),
            ],
            150,
        );
        let regularised = fit(
            &[
                ("hidden = [16, 8]", "hidden = [4]"),
                ("weight_decay = 0.0001", "weight_decay = 0.01"),
            ],
            10,
        );
        eprintln!("overfitted: {overfitted}\nregularised: {regularised}");
        assert_eq!((overfitted.members, overfitted.non_members), (100, 285));
        assert!(overfitted.advantage > DEFAULT_MAX_ADVANTAGE, "{overfitted}");
        assert!(overfitted.auc > 0.6, "{overfitted}");
        let refusal = check(&overfitted, DEFAULT_MAX_ADVANTAGE).unwrap_err();
        assert!(
            matches!(refusal, MembershipError::TooLeaky { .. }),
            "{refusal}"
        );
        assert!(
            regularised.advantage <= DEFAULT_MAX_ADVANTAGE,
            "{regularised}"
        );
        assert!(regularised.advantage < overfitted.advantage / 2.0);
        assert_eq!(check(&regularised, DEFAULT_MAX_ADVANTAGE), Ok(()));
    }

    /// O(n²) reference: the definition of the AUC and a sweep over every distinct threshold.
    fn brute(mem: &[f64], non: &[f64]) -> (f64, f64, f64) {
        let mut pairs = 0.0;
        for &a in mem {
            for &b in non {
                pairs += if a < b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let auc = pairs / (mem.len() * non.len()) as f64;
        let (mut adv, mut tpr1) = (0.0f64, 0.0f64);
        for &t in mem.iter().chain(non) {
            let tpr = mem.iter().filter(|&&l| l <= t).count() as f64 / mem.len() as f64;
            let fpr = non.iter().filter(|&&l| l <= t).count() as f64 / non.len() as f64;
            adv = adv.max(tpr - fpr);
            if fpr <= LOW_FPR {
                tpr1 = tpr1.max(tpr);
            }
        }
        (auc, adv, tpr1)
    }

    proptest! {
        #[test]
        fn statistics_are_bounded_symmetric_and_match_the_definition(
            // Few distinct values, so that ties are common.
            mem in prop::collection::vec(0u8..20, 1..60),
            non in prop::collection::vec(0u8..20, 1..60),
        ) {
            let mem: Vec<f64> = mem.into_iter().map(|v| f64::from(v) / 4.0).collect();
            let non: Vec<f64> = non.into_iter().map(|v| f64::from(v) / 4.0).collect();
            let a = audit_losses(&mem, &non);
            prop_assert!((0.0..=1.0).contains(&a.auc));
            prop_assert!((0.0..=1.0).contains(&a.advantage));
            prop_assert!((0.0..=1.0).contains(&a.tpr_at_1pct_fpr));
            prop_assert!(a.tpr_at_1pct_fpr <= a.advantage + LOW_FPR + 1e-12);
            let swapped = audit_losses(&non, &mem);
            prop_assert!(close(swapped.auc, 1.0 - a.auc), "{} vs {}", swapped.auc, a.auc);
            let (auc, adv, tpr1) = brute(&mem, &non);
            prop_assert!(close(a.auc, auc), "{} vs {auc}", a.auc);
            prop_assert!(close(a.advantage, adv), "{} vs {adv}", a.advantage);
            prop_assert!(close(a.tpr_at_1pct_fpr, tpr1));
            // Shuffling rows within a side changes nothing.
            let mut rev = mem.clone();
            rev.reverse();
            prop_assert_eq!(audit_losses(&rev, &non), a);
        }
    }
}
