//! The raw (serde) form of a spec file and its validation into a [`ModelSpec`]: every field
//! checked, defaults filled in, each error naming the field.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::*;
use crate::encoding::{self, RawColumn};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpec {
    format: u32,
    name: String,
    task: RawTask,
    model: RawModel,
    training: RawTraining,
    #[serde(default)]
    privacy: Option<RawPrivacy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    membership_max_advantage: Option<f64>,
    dp: Option<RawDp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDp {
    mode: DpMode,
    clip: f64,
    noise_multiplier: f64,
    #[serde(default = "default_delta")]
    delta: f64,
}

fn default_delta() -> f64 {
    1e-5
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    kind: String,
    target: String,
    features: Vec<String>,
    classes: Option<RawClasses>,
    missing: Option<Missing>,
    missing_indicator: Option<bool>,
    #[serde(default)]
    columns: BTreeMap<String, RawColumn>,
    #[serde(default)]
    standardize_target: bool,
}

/// `classes = 3` or `classes = ["a", "b", "c"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawClasses {
    Count(usize),
    Names(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    hidden: Vec<usize>,
    #[serde(default = "default_activation")]
    activation: Activation,
    #[serde(default)]
    dropout: f64,
}

fn default_activation() -> Activation {
    Activation::Relu
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraining {
    #[serde(default = "default_optimizer")]
    optimizer: OptimizerKind,
    learning_rate: f64,
    local_epochs: u32,
    batch_size: usize,
    seed: u64,
    fedprox_mu: Option<f64>,
    #[serde(default)]
    weight_decay: f64,
    early_stopping: Option<RawEarlyStopping>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEarlyStopping {
    #[serde(default = "default_patience")]
    patience: u32,
    #[serde(default)]
    min_delta: f64,
}

fn default_patience() -> u32 {
    3
}

fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adam
}

fn check_class_names(names: &[String]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() || n.trim() != n || n.len() > 256 {
            return Err(format!(
                "class {i} must be 1 to 256 bytes with no surrounding spaces (cells are trimmed), found {n:?}"
            ));
        }
        if !seen.insert(n.as_str()) {
            return Err(format!("class {n:?} is named twice"));
        }
        if encoding::MISSING_TOKENS.contains(&n.as_str()) {
            return Err(format!(
                "class {n:?} reads as a blank target (a row with it would be left out): rename it"
            ));
        }
    }
    Ok(())
}

pub(super) fn validate(raw: RawSpec, origin: &str) -> Result<ModelSpec, SpecError> {
    let invalid = |field: &'static str, message: String| SpecError::Invalid {
        origin: origin.to_string(),
        field,
        message,
    };
    if raw.format != SPEC_FORMAT {
        return Err(invalid(
            "format",
            format!("expected {SPEC_FORMAT}, found {}", raw.format),
        ));
    }
    if raw.name.trim().is_empty() || raw.name.len() > 128 {
        return Err(invalid(
            "name",
            "expected a non-empty name of at most 128 bytes".into(),
        ));
    }
    let (count, class_names) = match raw.task.classes {
        None => (None, None),
        Some(RawClasses::Count(n)) => (Some(n), None),
        Some(RawClasses::Names(names)) => {
            check_class_names(&names).map_err(|m| invalid("task.classes", m))?;
            (Some(names.len()), Some(names))
        }
    };
    let kind = match (raw.task.kind.as_str(), count) {
        ("binary", None) => TaskKind::Binary,
        ("binary", Some(2)) if class_names.is_some() => TaskKind::Binary,
        ("binary", Some(n)) if class_names.is_some() => {
            return Err(invalid(
                "task.classes",
                format!("a binary task names 2 classes (the negative first), found {n}"),
            ));
        }
        ("regression", None) => TaskKind::Regression,
        ("binary" | "regression", Some(_)) => {
            return Err(invalid(
                "task.classes",
                format!(
                    "only multiclass tasks take a count of `classes` (a binary one may name its two); this task is {}",
                    raw.task.kind
                ),
            ));
        }
        ("multiclass", Some(classes)) if (3..=10_000).contains(&classes) => {
            TaskKind::Multiclass { classes }
        }
        ("multiclass", Some(classes)) => {
            return Err(invalid(
                "task.classes",
                format!(
                    "expected 3 to 10000 classes (use kind = \"binary\" for two), found {classes}"
                ),
            ));
        }
        ("multiclass", None) => {
            return Err(invalid(
                "task.classes",
                "a multiclass task must say how many classes it has, or name them".into(),
            ));
        }
        (other, _) => {
            return Err(invalid(
                "task.kind",
                format!("expected \"binary\", \"multiclass\" or \"regression\", found {other:?}"),
            ));
        }
    };
    if raw.task.target.trim().is_empty() {
        return Err(invalid(
            "task.target",
            "expected a column name, found an empty string".into(),
        ));
    }
    if raw.task.features.is_empty() {
        return Err(invalid(
            "task.features",
            "expected at least one feature column".into(),
        ));
    }
    if raw.task.features.len() > 100_000 {
        return Err(invalid(
            "task.features",
            format!(
                "expected at most 100000 features, found {}",
                raw.task.features.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for f in &raw.task.features {
        if f.trim().is_empty() {
            return Err(invalid("task.features", "a feature name is empty".into()));
        }
        if !seen.insert(f.as_str()) {
            return Err(invalid(
                "task.features",
                format!("feature {f:?} is listed twice"),
            ));
        }
        if *f == raw.task.target {
            return Err(invalid(
                "task.features",
                format!("the target column {f:?} cannot also be a feature"),
            ));
        }
    }
    if raw.task.standardize_target && kind != TaskKind::Regression {
        return Err(invalid(
            "task.standardize_target",
            format!(
                "only a regression target is standardised; this task is {}",
                kind.name()
            ),
        ));
    }
    let columns = encoding::resolve(
        &raw.task.features,
        raw.task.missing,
        raw.task.missing_indicator,
        raw.task.columns,
    )
    .map_err(|(field, message)| invalid(field, message))?;
    if raw.model.hidden.len() > 64 {
        return Err(invalid(
            "model.hidden",
            format!(
                "expected at most 64 hidden layers, found {}",
                raw.model.hidden.len()
            ),
        ));
    }
    if let Some(pos) = raw
        .model
        .hidden
        .iter()
        .position(|&w| !(1..=1 << 20).contains(&w))
    {
        return Err(invalid(
            "model.hidden",
            format!(
                "expected widths from 1 to {}, found {} at position {pos}",
                1 << 20,
                raw.model.hidden[pos]
            ),
        ));
    }
    if !(0.0..1.0).contains(&raw.model.dropout) {
        return Err(invalid(
            "model.dropout",
            format!(
                "expected a probability in [0, 1), found {}",
                raw.model.dropout
            ),
        ));
    }
    let t = &raw.training;
    if !(t.learning_rate.is_finite() && t.learning_rate > 0.0 && t.learning_rate <= 10.0) {
        return Err(invalid(
            "training.learning_rate",
            format!("expected a number in (0, 10], found {}", t.learning_rate),
        ));
    }
    if !(1..=100_000).contains(&t.local_epochs) {
        return Err(invalid(
            "training.local_epochs",
            format!("expected 1 to 100000, found {}", t.local_epochs),
        ));
    }
    if !(1..=1 << 20).contains(&t.batch_size) {
        return Err(invalid(
            "training.batch_size",
            format!("expected 1 to {}, found {}", 1 << 20, t.batch_size),
        ));
    }
    if let Some(mu) = t.fedprox_mu
        && !(mu.is_finite() && mu >= 0.0)
    {
        return Err(invalid(
            "training.fedprox_mu",
            format!("expected a number ≥ 0, found {mu}"),
        ));
    }
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        return Err(invalid(
            "training.weight_decay",
            format!("expected a number ≥ 0, found {}", t.weight_decay),
        ));
    }
    if let Some(e) = &t.early_stopping {
        if !(1..=10_000).contains(&e.patience) {
            return Err(invalid(
                "training.early_stopping.patience",
                format!("expected 1 to 10000 epochs, found {}", e.patience),
            ));
        }
        if !(e.min_delta.is_finite() && e.min_delta >= 0.0) {
            return Err(invalid(
                "training.early_stopping.min_delta",
                format!("expected a number ≥ 0, found {}", e.min_delta),
            ));
        }
    }
    let privacy = match raw.privacy {
        None => PrivacySpec::default(),
        Some(p) => {
            // A task cannot switch the audit off: above 0.5 the attacker is right three times
            // in four, which no task should call acceptable.
            if let Some(a) = p.membership_max_advantage
                && !(a.is_finite() && a > 0.0 && a <= MAX_MEMBERSHIP_ADVANTAGE)
            {
                return Err(invalid(
                    "privacy.membership_max_advantage",
                    format!("expected a number in (0, {MAX_MEMBERSHIP_ADVANTAGE}], found {a}"),
                ));
            }
            let dp = match p.dp {
                None => None,
                Some(d) => {
                    if !(d.clip.is_finite() && d.clip > 0.0) {
                        return Err(invalid(
                            "privacy.dp.clip",
                            format!("expected a number > 0, found {}", d.clip),
                        ));
                    }
                    if !(d.noise_multiplier.is_finite()
                        && d.noise_multiplier > 0.0
                        && d.noise_multiplier <= 1e6)
                    {
                        return Err(invalid(
                            "privacy.dp.noise_multiplier",
                            format!(
                                "expected a number in (0, 1e6], found {}",
                                d.noise_multiplier
                            ),
                        ));
                    }
                    if !(d.delta.is_finite() && d.delta > 0.0 && d.delta < 1.0) {
                        return Err(invalid(
                            "privacy.dp.delta",
                            format!("expected a number in (0, 1), found {}", d.delta),
                        ));
                    }
                    Some(DpSpec {
                        mode: d.mode,
                        clip: d.clip,
                        noise_multiplier: d.noise_multiplier,
                        delta: d.delta,
                    })
                }
            };
            PrivacySpec {
                membership_max_advantage: p.membership_max_advantage,
                dp,
            }
        }
    };
    let spec = ModelSpec {
        name: raw.name,
        task: TaskSpec {
            kind,
            target: raw.task.target,
            features: raw.task.features,
            class_names,
            columns,
            standardize_target: raw.task.standardize_target,
        },
        model: MlpSpec {
            hidden: raw.model.hidden,
            activation: raw.model.activation,
            dropout: raw.model.dropout,
        },
        training: TrainingSpec {
            optimizer: t.optimizer,
            learning_rate: t.learning_rate,
            local_epochs: t.local_epochs,
            batch_size: t.batch_size,
            seed: t.seed,
            // μ = 0 means the same as no proximal term: one canonical form, one spec id.
            fedprox_mu: t.fedprox_mu.filter(|&mu| mu > 0.0),
            weight_decay: t.weight_decay,
            early_stopping: t.early_stopping.as_ref().map(|e| EarlyStopping {
                patience: e.patience,
                min_delta: e.min_delta,
            }),
        },
        privacy,
    };
    if spec.parameter_count() > MAX_PARAMETERS {
        return Err(invalid(
            "model.hidden",
            format!(
                "the network would have {} parameters; at most {MAX_PARAMETERS} are allowed",
                spec.parameter_count()
            ),
        ));
    }
    Ok(spec)
}
