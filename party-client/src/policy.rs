//! The site's policy: what this plant agrees to train, decided at the plant. It is the
//! `[policy]` table of `party.toml`. Work outside it is declined at the site with the reasons,
//! which the operator sees in the round's status; the coordinator cannot override it.
//!
//! Approval is by spec id (the sha256 of the canonical ModelSpec), so any change of a task's
//! network, columns, training or privacy settings makes a new id that must be approved again.
//! Limits apply to every spec, approved or not.

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use shared_model::ids::SpecId;
use shared_model::spec::ModelSpec;

/// `[policy]` as written in `party.toml`. Every key is optional; unknown keys are errors.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Spec ids (64 hex digits) this site trains for; when set, any other spec is declined.
    pub approved_specs: Option<Vec<String>>,
    /// Largest network (trainable parameters) the site trains.
    pub max_parameters: Option<u64>,
    /// Most local epochs per round (the spec's, or the round's override).
    pub max_local_epochs: Option<u32>,
    /// Task kinds allowed: "binary", "multiclass", "regression".
    pub allowed_kinds: Option<Vec<String>>,
    /// The only columns a task may read (features and target).
    pub allowed_columns: Option<Vec<String>>,
    /// Columns no task may read at all.
    pub refused_columns: Option<Vec<String>>,
    /// Fewest other parties a round's result must combine with this site's.
    pub min_other_parties: Option<u32>,
    /// The membership-audit threshold the site insists on: the stricter of this and the task's
    /// is applied before every upload.
    pub max_membership_advantage: Option<f64>,
    /// Decline tasks whose spec does not declare differential privacy (`[privacy.dp]`).
    pub require_dp: Option<bool>,
    /// Report the values of `discover` columns (category names and their row counts) in the
    /// statistics step (default true). When false the site reports none: its values count as
    /// "other" unless other plants make them common enough.
    pub share_category_names: Option<bool>,
}

const KINDS: [&str; 3] = ["binary", "multiclass", "regression"];

impl RawPolicy {
    /// Validates the values; errors name the `policy.<key>` at fault.
    pub fn validate(self) -> anyhow::Result<Policy> {
        let approved = match self.approved_specs {
            None => None,
            Some(ids) => {
                let mut set = BTreeSet::new();
                for (i, id) in ids.iter().enumerate() {
                    let parsed: SpecId = id.trim().parse().map_err(|e| {
                        anyhow::anyhow!(
                            "party config: `policy.approved_specs[{i}]` {id:?} is not a spec id (64 hex digits, as `coordinator spec id` or `party-client policy check` prints): {e}"
                        )
                    })?;
                    set.insert(parsed.to_string());
                }
                Some(set)
            }
        };
        if let Some(kinds) = &self.allowed_kinds {
            for k in kinds {
                anyhow::ensure!(
                    KINDS.contains(&k.as_str()),
                    "party config: `policy.allowed_kinds` has {k:?}; expected some of {KINDS:?}"
                );
            }
        }
        if let Some(a) = self.max_membership_advantage {
            anyhow::ensure!(
                a.is_finite() && a > 0.0 && a <= 1.0,
                "party config: `policy.max_membership_advantage` must be in (0, 1], found {a}"
            );
        }
        if let Some(p) = self.max_parameters {
            anyhow::ensure!(
                p > 0,
                "party config: `policy.max_parameters` must be at least 1"
            );
        }
        if let Some(e) = self.max_local_epochs {
            anyhow::ensure!(
                e > 0,
                "party config: `policy.max_local_epochs` must be at least 1"
            );
        }
        let set = |v: Option<Vec<String>>| v.map(|v| v.into_iter().collect::<BTreeSet<_>>());
        Ok(Policy {
            approved,
            max_parameters: self.max_parameters,
            max_local_epochs: self.max_local_epochs,
            allowed_kinds: set(self.allowed_kinds),
            allowed_columns: set(self.allowed_columns),
            refused_columns: set(self.refused_columns).unwrap_or_default(),
            min_other_parties: self.min_other_parties.unwrap_or(0),
            max_membership_advantage: self.max_membership_advantage,
            require_dp: self.require_dp.unwrap_or(false),
            withhold_category_names: !self.share_category_names.unwrap_or(true),
        })
    }
}

/// A validated site policy. The default (no `[policy]` table) trains any spec, with the task's
/// own membership-audit threshold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// Approved spec ids (lowercase hex); `None` = no approval list.
    pub approved: Option<BTreeSet<String>>,
    /// Largest parameter count.
    pub max_parameters: Option<u64>,
    /// Most local epochs per round.
    pub max_local_epochs: Option<u32>,
    /// Allowed task kinds.
    pub allowed_kinds: Option<BTreeSet<String>>,
    /// Allowed columns.
    pub allowed_columns: Option<BTreeSet<String>>,
    /// Refused columns.
    pub refused_columns: BTreeSet<String>,
    /// Fewest other parties in a round.
    pub min_other_parties: u32,
    /// The site's membership-audit threshold.
    pub max_membership_advantage: Option<f64>,
    /// Differential privacy required.
    pub require_dp: bool,
    /// Category names of `discover` columns are not reported in the statistics step
    /// (`share_category_names = false`).
    pub withhold_category_names: bool,
}

/// Why a piece of work is outside the site's policy. The text is what the operator reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The spec id is not in `approved_specs`.
    NotApproved {
        /// The spec's id.
        spec_id: String,
        /// Its name.
        name: String,
    },
    /// Too many parameters.
    TooManyParameters {
        /// The spec's.
        count: u64,
        /// The site's limit.
        max: u64,
    },
    /// Too many local epochs.
    TooManyEpochs {
        /// Asked for.
        epochs: u32,
        /// The site's limit.
        max: u32,
        /// Whether the round overrode the spec's epochs.
        from_round: bool,
    },
    /// The task kind is not allowed.
    KindNotAllowed {
        /// The task's kind.
        kind: String,
    },
    /// A column the task reads is not in `allowed_columns`.
    ColumnNotAllowed {
        /// The column.
        column: String,
    },
    /// A column the task reads is in `refused_columns`.
    ColumnRefused {
        /// The column.
        column: String,
    },
    /// The round combines too few parties.
    TooFewParties {
        /// Parties in the round, this site included (0 = the coordinator did not say).
        round_parties: u32,
        /// The site's minimum of others.
        min_others: u32,
    },
    /// The spec declares no differential privacy.
    NoDp,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotApproved { spec_id, name } => write!(
                f,
                "spec {}… ({name}) is not approved (policy.approved_specs)",
                &spec_id[..spec_id.len().min(12)]
            ),
            Refusal::TooManyParameters { count, max } => write!(
                f,
                "the network has {count} parameters, more than policy.max_parameters = {max}"
            ),
            Refusal::TooManyEpochs {
                epochs,
                max,
                from_round,
            } => write!(
                f,
                "{epochs} local epochs{} exceed policy.max_local_epochs = {max}",
                if *from_round {
                    " (the round's override)"
                } else {
                    ""
                }
            ),
            Refusal::KindNotAllowed { kind } => {
                write!(f, "task kind {kind} is not in policy.allowed_kinds")
            }
            Refusal::ColumnNotAllowed { column } => {
                write!(f, "column `{column}` is not in policy.allowed_columns")
            }
            Refusal::ColumnRefused { column } => {
                write!(f, "column `{column}` is in policy.refused_columns")
            }
            Refusal::TooFewParties {
                round_parties: 0,
                min_others,
            } => write!(
                f,
                "the coordinator did not say how many parties the round combines; policy.min_other_parties = {min_others} needs to know"
            ),
            Refusal::TooFewParties {
                round_parties,
                min_others,
            } => write!(
                f,
                "the round combines {round_parties} parties: {} other(s), fewer than policy.min_other_parties = {min_others}",
                round_parties.saturating_sub(1)
            ),
            Refusal::NoDp => write!(
                f,
                "the spec declares no differential privacy ([privacy.dp]) and policy.require_dp is set"
            ),
        }
    }
}

/// The refusals of one check, joined for a log line or a decline reason.
pub fn explain(refusals: &[Refusal]) -> String {
    let parts: Vec<String> = refusals.iter().map(ToString::to_string).collect();
    format!("site policy: {}", parts.join("; "))
}

impl Policy {
    /// Everything about the spec itself the policy refuses (for every kind of work: statistics
    /// and evaluation read the same columns as training).
    pub fn check_spec(&self, spec: &ModelSpec) -> Vec<Refusal> {
        let mut out = Vec::new();
        let id = spec.id().to_string();
        if let Some(approved) = &self.approved
            && !approved.contains(&id)
        {
            out.push(Refusal::NotApproved {
                spec_id: id,
                name: spec.name.clone(),
            });
        }
        if let Some(max) = self.max_parameters
            && spec.parameter_count() > max
        {
            out.push(Refusal::TooManyParameters {
                count: spec.parameter_count(),
                max,
            });
        }
        if let Some(max) = self.max_local_epochs
            && spec.training.local_epochs > max
        {
            out.push(Refusal::TooManyEpochs {
                epochs: spec.training.local_epochs,
                max,
                from_round: false,
            });
        }
        if let Some(kinds) = &self.allowed_kinds
            && !kinds.contains(spec.task.kind.name())
        {
            out.push(Refusal::KindNotAllowed {
                kind: spec.task.kind.name().to_string(),
            });
        }
        for column in spec.task.features.iter().chain([&spec.task.target]) {
            if self.refused_columns.contains(column) {
                out.push(Refusal::ColumnRefused {
                    column: column.clone(),
                });
            } else if let Some(allowed) = &self.allowed_columns
                && !allowed.contains(column)
            {
                out.push(Refusal::ColumnNotAllowed {
                    column: column.clone(),
                });
            }
        }
        if self.require_dp && spec.privacy.dp.is_none() {
            out.push(Refusal::NoDp);
        }
        out
    }

    /// Everything the policy refuses about a training assignment: the spec, the round's
    /// epochs override (0 = the spec's) and how many parties the round combines.
    pub fn check_training(
        &self,
        spec: &ModelSpec,
        epochs_override: u32,
        round_parties: u32,
    ) -> Vec<Refusal> {
        let mut out = self.check_spec(spec);
        if epochs_override > 0
            && let Some(max) = self.max_local_epochs
            && epochs_override > max
        {
            out.retain(|r| !matches!(r, Refusal::TooManyEpochs { .. }));
            out.push(Refusal::TooManyEpochs {
                epochs: epochs_override,
                max,
                from_round: true,
            });
        } else if epochs_override > 0 {
            // The round's epochs replace the spec's.
            out.retain(|r| !matches!(r, Refusal::TooManyEpochs { .. }));
        }
        if self.min_other_parties > 0
            && (round_parties == 0 || round_parties.saturating_sub(1) < self.min_other_parties)
        {
            out.push(Refusal::TooFewParties {
                round_parties,
                min_others: self.min_other_parties,
            });
        }
        out
    }

    /// The membership-audit threshold to apply: the stricter of the task's and the site's.
    pub fn membership_threshold(&self, task_threshold: f64) -> f64 {
        self.max_membership_advantage
            .map_or(task_threshold, |site| site.min(task_threshold))
    }

    /// One line per rule, for the daemon's start-up log and `policy check`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.approved {
            None => out.push("approved specs: any (no policy.approved_specs list)".into()),
            Some(a) => out.push(format!("approved specs: {} listed", a.len())),
        }
        let or_any = |v: Option<String>| v.unwrap_or_else(|| "no limit".into());
        out.push(format!(
            "max parameters: {}",
            or_any(self.max_parameters.map(|v| v.to_string()))
        ));
        out.push(format!(
            "max local epochs: {}",
            or_any(self.max_local_epochs.map(|v| v.to_string()))
        ));
        out.push(format!(
            "task kinds: {}",
            self.allowed_kinds.as_ref().map_or("any".into(), |k| k
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "))
        ));
        out.push(format!(
            "columns: {}{}",
            self.allowed_columns
                .as_ref()
                .map_or("any".into(), |c| format!("only {}", c.len())),
            if self.refused_columns.is_empty() {
                String::new()
            } else {
                format!(
                    ", never {}",
                    self.refused_columns
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ));
        out.push(format!(
            "min other parties in a round: {}",
            self.min_other_parties
        ));
        out.push(format!(
            "membership-audit threshold: {}",
            self.max_membership_advantage
                .map_or("the task's".into(), |a| format!(
                    "advantage ≤ {a} (or the task's, if stricter)"
                ))
        ));
        out.push(format!(
            "differential privacy required: {}",
            if self.require_dp { "yes" } else { "no" }
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/wdbc.toml"),
        )
        .unwrap()
    }

    fn policy(toml_text: &str) -> Policy {
        toml::from_str::<RawPolicy>(toml_text)
            .unwrap()
            .validate()
            .unwrap()
    }

    #[test]
    fn no_policy_refuses_nothing() {
        let s = spec();
        assert!(Policy::default().check_spec(&s).is_empty());
        assert!(Policy::default().check_training(&s, 0, 1).is_empty());
    }

    #[test]
    fn approval_is_by_spec_id_and_does_not_carry_over_to_a_changed_spec() {
        let s = spec();
        let p = policy(&format!("approved_specs = [\"{}\"]", s.id()));
        assert!(p.check_spec(&s).is_empty());
        let mut changed = s.clone();
        changed.training.local_epochs += 1;
        let r = p.check_spec(&changed);
        assert_eq!(r.len(), 1, "{r:?}");
        let text = explain(&r);
        assert!(
            text.contains(&changed.id().to_string()[..12]) && text.contains("not approved"),
            "{text}"
        );
    }

    #[test]
    fn each_limit_is_refused_with_its_reason() {
        let s = spec();
        let feature = s.task.features[0].clone();
        let cases = [
            (
                "max_parameters = 10".to_string(),
                format!(
                    "the network has {} parameters, more than policy.max_parameters = 10",
                    s.parameter_count()
                ),
            ),
            (
                "max_local_epochs = 1".into(),
                format!(
                    "{} local epochs exceed policy.max_local_epochs = 1",
                    s.training.local_epochs
                ),
            ),
            (
                "allowed_kinds = [\"regression\"]".into(),
                "task kind binary is not in policy.allowed_kinds".into(),
            ),
            (
                format!("refused_columns = [\"{feature}\"]"),
                format!("column `{feature}` is in policy.refused_columns"),
            ),
            (
                format!("allowed_columns = [\"{feature}\", \"{}\"]", s.task.target),
                format!(
                    "column `{}` is not in policy.allowed_columns",
                    s.task.features[1]
                ),
            ),
            (
                "require_dp = true".into(),
                "the spec declares no differential privacy".into(),
            ),
        ];
        for (rule, want) in cases {
            let r = policy(&rule).check_spec(&s);
            assert!(!r.is_empty(), "{rule} refused nothing");
            let text = explain(&r);
            assert!(text.contains(&want), "{rule}: {text}");
        }
    }

    #[test]
    fn round_limits_apply_to_training() {
        let s = spec();
        let p = policy("min_other_parties = 2\nmax_local_epochs = 100");
        assert!(p.check_spec(&s).is_empty());
        assert!(p.check_training(&s, 0, 3).is_empty());
        let r = explain(&p.check_training(&s, 0, 2));
        assert!(
            r.contains("combines 2 parties: 1 other(s), fewer than policy.min_other_parties = 2"),
            "{r}"
        );
        let r = explain(&p.check_training(&s, 0, 0));
        assert!(r.contains("did not say how many parties"), "{r}");
        let r = explain(&p.check_training(&s, 500, 3));
        assert!(
            r.contains("500 local epochs (the round's override) exceed"),
            "{r}"
        );
        // A round that lowers the epochs below the limit is fine even if the spec's are above.
        let strict = policy(&format!(
            "max_local_epochs = {}",
            s.training.local_epochs - 1
        ));
        assert_eq!(strict.check_spec(&s).len(), 1);
        assert!(strict.check_training(&s, 1, 3).is_empty());
    }

    #[test]
    fn bad_policies_name_the_key() {
        let bad = [
            ("approved_specs = [\"abc\"]", "policy.approved_specs[0]"),
            ("allowed_kinds = [\"images\"]", "policy.allowed_kinds"),
            (
                "max_membership_advantage = 2.0",
                "policy.max_membership_advantage",
            ),
            ("max_parameters = 0", "policy.max_parameters"),
            ("max_local_epochs = 0", "policy.max_local_epochs"),
        ];
        for (text, key) in bad {
            let e = toml::from_str::<RawPolicy>(text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = toml::from_str::<RawPolicy>("aproved_specs = []")
            .unwrap_err()
            .to_string();
        assert!(e.contains("aproved_specs"), "{e}");
    }

    #[test]
    fn the_stricter_membership_threshold_wins() {
        assert_eq!(Policy::default().membership_threshold(0.2), 0.2);
        let p = policy("max_membership_advantage = 0.1");
        assert_eq!(p.membership_threshold(0.2), 0.1);
        assert_eq!(p.membership_threshold(0.05), 0.05);
    }
}
