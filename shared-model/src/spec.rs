//! The declared model: a `ModelSpec` TOML file says what the task is (kind, target and feature
//! columns), what the network is (MLP widths, activation, dropout) and how each party trains it.
//! Parties never receive code, only this declaration and weight blobs. The spec id is the sha256
//! of a canonical encoding of the *validated* spec, so formatting, comments, key order and
//! spelled-out defaults do not change it, while any change of meaning does.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::encoding::{self, Column, Missing};
use crate::ids::{Sha256, SpecId};

/// The spec format this build reads and writes.
pub const SPEC_FORMAT: u32 = 1;

mod found;
mod raw;
mod toml_text;

use raw::{RawSpec, validate};

/// Upper bound on the number of parameters a spec may declare (4 GiB of f32).
pub const MAX_PARAMETERS: u64 = 1 << 30;

/// Errors from reading or validating a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read spec file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML did not parse or had unknown or mistyped fields.
    #[error("spec {origin} is not a valid model spec: {message}")]
    Parse {
        /// The file name, or `<text>`.
        origin: String,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// A field had a value outside what it allows.
    #[error("spec {origin}: field `{field}`: {message}")]
    Invalid {
        /// The file name, or `<text>`.
        origin: String,
        /// The dotted field path, e.g. `training.learning_rate`.
        field: &'static str,
        /// What was expected and what was found.
        message: String,
    },
}

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TaskKind {
    /// Two classes, labels 0 and 1 (1 is the positive class); one logit output.
    Binary,
    /// `classes` classes, labels 0..classes-1; one logit per class.
    Multiclass {
        /// Number of classes (at least 3).
        classes: usize,
    },
    /// A real-valued target; one output.
    Regression,
}

impl TaskKind {
    /// Width of the network's last layer.
    pub fn output_width(self) -> usize {
        match self {
            TaskKind::Binary | TaskKind::Regression => 1,
            TaskKind::Multiclass { classes } => classes,
        }
    }

    /// The kind's name as written in a spec.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Binary => "binary",
            TaskKind::Multiclass { .. } => "multiclass",
            TaskKind::Regression => "regression",
        }
    }
}

/// Hidden-layer activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x)
    Relu,
    /// tanh(x)
    Tanh,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// Gaussian error linear unit.
    Gelu,
}

/// Local optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam with burn's default betas and epsilon.
    Adam,
    /// Plain stochastic gradient descent.
    Sgd,
}

/// The prediction task: what is learned from which columns.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskSpec {
    /// Binary, multiclass or regression.
    pub kind: TaskKind,
    /// Name of the target column in each site's CSV.
    pub target: String,
    /// Names of the feature columns, in the order the network sees them.
    pub features: Vec<String>,
    /// The classes' names, when the target column holds names (`classes = ["ok", "scrap"]`):
    /// the label of row is the index of its name; `predict` writes names. Binary tasks name the
    /// negative class first. `None`: the labels are the numbers 0, 1, ….
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// Feature columns that are not plain numbers refused when blank (`[task.columns.NAME]`,
    /// with `task.missing` / `task.missing_indicator` applied): categories and missing values.
    /// Left out of the spec id when empty, so specs without them keep their ids.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, Column>,
    /// Regression: the network learns the target standardised with the federated mean and
    /// standard deviation of the training targets (from the statistics step, like the
    /// features'); the blob carries them as `target.mean` / `target.std` and every prediction
    /// is mapped back to the target's units. Left out of the spec id when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub standardize_target: bool,
}

/// The multilayer perceptron.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MlpSpec {
    /// Widths of the hidden layers, input side first. May be empty (a linear model).
    pub hidden: Vec<usize>,
    /// Activation after each hidden layer.
    pub activation: Activation,
    /// Dropout probability after each hidden activation, in [0, 1).
    pub dropout: f64,
}

/// How each party trains locally.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainingSpec {
    /// Adam or SGD.
    pub optimizer: OptimizerKind,
    /// Step size, > 0.
    pub learning_rate: f64,
    /// Passes over the local training rows per round, ≥ 1.
    pub local_epochs: u32,
    /// Rows per mini-batch, ≥ 1.
    pub batch_size: usize,
    /// Seed for initial weights, shuffling and dropout.
    pub seed: u64,
    /// FedProx proximal coefficient μ (`None` or 0 = plain local training).
    pub fedprox_mu: Option<f64>,
    /// L2 penalty coefficient on weights (not biases), ≥ 0.
    pub weight_decay: f64,
    /// `[training.early_stopping]`: stop a local run when the validation loss stops
    /// improving, keeping the best epoch's weights. Left out of the spec id when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
}

/// Early stopping of one local training run on the site's validation rows: after each epoch
/// the data loss on the validation rows is measured; the run stops once it has not fallen by
/// more than `min_delta` below its best for `patience` epochs, and returns the weights of the
/// best epoch. Without validation rows the run trains every epoch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping, ≥ 1.
    pub patience: u32,
    /// The fall in validation loss that counts as an improvement, ≥ 0.
    pub min_delta: f64,
}

/// A validated model specification.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSpec {
    /// Human-readable name (not part of the task's identity beyond the spec id).
    pub name: String,
    /// What is predicted.
    pub task: TaskSpec,
    /// The network.
    pub model: MlpSpec,
    /// Local training.
    pub training: TrainingSpec,
    /// Privacy settings (`[privacy]`); left out of the spec id when all default, so specs
    /// without the section keep their ids.
    #[serde(skip_serializing_if = "PrivacySpec::is_default")]
    pub privacy: PrivacySpec,
}

/// The loosest membership-audit threshold a task may set.
pub const MAX_MEMBERSHIP_ADVANTAGE: f64 = 0.5;

/// The task's privacy settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PrivacySpec {
    /// Largest membership-inference advantage a party's trained model may show before its
    /// upload is refused at the party (`None` = the documented default,
    /// `membership::default_threshold`: 0.3, or the audit's chance level at its row counts when
    /// higher). A site's policy may insist on a stricter one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub membership_max_advantage: Option<f64>,
    /// Differential privacy of the updates, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpSpec>,
}

impl PrivacySpec {
    /// True when nothing is set.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Where the Gaussian noise of differential privacy is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpMode {
    /// Each party clips its own update and adds noise before signing it: the coordinator never
    /// sees an un-noised update.
    Local,
    /// Each party clips its update; the coordinator adds the noise once, to the sum.
    Central,
}

/// Differential privacy: each party's update (its delta from the base model) is clipped to L2
/// norm `clip` and Gaussian noise of standard deviation `noise_multiplier · clip` is added.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DpSpec {
    /// Local or central noise.
    pub mode: DpMode,
    /// The clipping norm C, > 0.
    pub clip: f64,
    /// σ: the noise's standard deviation is σ·C, > 0.
    pub noise_multiplier: f64,
    /// δ of the reported (ε, δ), in (0, 1).
    pub delta: f64,
}

/// One tensor the spec demands in a weight blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Stable name, e.g. `layers.0.weight`.
    pub name: String,
    /// Shape, e.g. `[out, in]` for a weight (PyTorch's `nn.Linear` layout).
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of f32 values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl ModelSpec {
    /// Reads and validates a spec file.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates spec text; `origin` names it in errors (a file name or `<text>`).
    pub fn parse(text: &str, origin: &str) -> Result<Self, SpecError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        validate(raw, origin)
    }

    /// The canonical encoding the spec id is computed over: a domain tag followed by compact
    /// JSON of the validated spec (fields in declaration order, defaults filled in).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = b"yosegi.spec.v1\n".to_vec();
        out.extend(serde_json::to_vec(self).expect("a validated spec always serialises"));
        out
    }

    /// The spec id: sha256 of [`Self::canonical_bytes`].
    pub fn id(&self) -> SpecId {
        SpecId(Sha256::of(&self.canonical_bytes()))
    }

    /// Number of network inputs: one per numeric feature, one per category and "other" of a
    /// categorical one, one per missing-value indicator.
    pub fn input_width(&self) -> usize {
        self.task
            .features
            .iter()
            .map(|f| self.task.columns.get(f).map_or(1, Column::width))
            .sum()
    }

    /// Values per row a party sums in the statistics step: the network inputs, then the target
    /// when the spec standardises it.
    pub fn stats_width(&self) -> usize {
        self.input_width() + usize::from(self.task.standardize_target)
    }

    /// The name of each network input ([`encoding::input_names`]).
    pub fn input_names(&self) -> Vec<String> {
        encoding::input_names(&self.task.features, &self.task.columns)
    }

    /// The index of the network input a numeric feature column feeds (`None` for a
    /// categorical column or a name that is not a feature).
    pub fn input_of(&self, feature: &str) -> Option<usize> {
        let mut at = 0;
        for f in &self.task.features {
            let c = self.task.columns.get(f);
            if f == feature {
                return c.is_none_or(|c| !c.is_categorical()).then_some(at);
            }
            at += c.map_or(1, Column::width);
        }
        None
    }

    /// For each statistics-step value ([`Self::stats_width`]): true when a party's rows may
    /// lack it — an input of a column whose blanks are filled with the mean (`missing = "mean"`;
    /// `drop-row` and the rest fill or drop before summing, indicators and the target are always
    /// present). The coordinator refuses sums reporting a value missing anywhere else.
    pub fn may_be_missing(&self) -> Vec<bool> {
        let mut out = Vec::with_capacity(self.stats_width());
        for f in &self.task.features {
            let c = self.task.columns.get(f).cloned().unwrap_or_default();
            let values = c.one_hot().map_or(1, |k| k + 1);
            let filled_later = matches!(c.missing, Missing::Mean | Missing::Median);
            out.extend(std::iter::repeat_n(filled_later, values));
            if c.indicator {
                out.push(false);
            }
        }
        if self.task.standardize_target {
            out.push(false);
        }
        out
    }

    /// The encoder of this task's feature columns ([`encoding::Encoder`]); `predicting` fills a
    /// `drop-row` blank with the mean, since a row to predict cannot be left out.
    pub fn encoder(&self, predicting: bool) -> encoding::Encoder {
        encoding::Encoder::new(&self.task.features, &self.task.columns, predicting)
    }

    /// The name of class `i`: its declared name, else the number.
    pub fn class_name(&self, i: usize) -> String {
        match &self.task.class_names {
            Some(names) => names.get(i).cloned().unwrap_or_else(|| i.to_string()),
            None => i.to_string(),
        }
    }

    /// Layer widths from input to output, e.g. `[30, 16, 8, 1]`.
    pub fn layer_widths(&self) -> Vec<usize> {
        let mut w = vec![self.input_width()];
        w.extend(&self.model.hidden);
        w.push(self.task.kind.output_width());
        w
    }

    /// The tensors a weight blob of this spec holds, in canonical order: the normalisation
    /// (`norm.mean`, `norm.std`, one value per input; `target.mean`, `target.std` `[1]` when the
    /// target is standardised) then `layers.{i}.weight` `[out, in]` and `layers.{i}.bias`
    /// `[out]` for each dense layer.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let d = self.input_width();
        let mut out = vec![
            TensorSpec {
                name: "norm.mean".into(),
                shape: vec![d],
            },
            TensorSpec {
                name: "norm.std".into(),
                shape: vec![d],
            },
        ];
        if self.task.standardize_target {
            for name in ["target.mean", "target.std"] {
                out.push(TensorSpec {
                    name: name.into(),
                    shape: vec![1],
                });
            }
        }
        for (i, pair) in self.layer_widths().windows(2).enumerate() {
            out.push(TensorSpec {
                name: format!("layers.{i}.weight"),
                shape: vec![pair[1], pair[0]],
            });
            out.push(TensorSpec {
                name: format!("layers.{i}.bias"),
                shape: vec![pair[1]],
            });
        }
        out
    }

    /// Number of trainable parameters (weights and biases; the normalisation is fixed).
    pub fn parameter_count(&self) -> u64 {
        self.layer_widths()
            .windows(2)
            .map(|p| (p[0] as u64 + 1) * p[1] as u64)
            .sum()
    }

    /// Largest safetensors header a blob of this spec may declare, in bytes.
    pub fn max_header_bytes(&self) -> u64 {
        4096 + 256 * self.tensors().len() as u64 + self.max_names_bytes()
    }

    /// The most bytes the blob metadata's names (`classes`, `vocabularies`) may take in a
    /// header: each name at most 256 bytes, JSON inside a JSON string (at most 12 bytes per
    /// byte of name, with quotes and a comma), every slot of a `discover` column filled, and
    /// the `medians`.
    fn max_names_bytes(&self) -> u64 {
        let name = |len: usize| 12 * len as u64 + 6;
        let classes: u64 = self
            .task
            .class_names
            .iter()
            .flatten()
            .map(|c| name(c.len()))
            .sum();
        let vocabularies: u64 = self
            .task
            .columns
            .iter()
            .filter_map(|(f, c)| {
                c.discover
                    .map(|d| name(f.len()) + d.slots as u64 * name(256))
            })
            .sum();
        // a median: the column's name and a number of at most 32 characters
        let medians: u64 = self
            .task
            .columns
            .iter()
            .filter(|(_, c)| c.missing == Missing::Median)
            .map(|(f, _)| name(f.len()) + 40)
            .sum();
        classes + vocabularies + medians
    }

    /// Largest blob of this spec, in bytes: the size prefix, the header cap and the data.
    pub fn max_blob_bytes(&self) -> u64 {
        let floats: u64 = self.tensors().iter().map(|t| t.numel() as u64).sum();
        8 + self.max_header_bytes() + 4 * floats
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} on {:?}, {} features, MLP {:?}, {} parameters)",
            self.name,
            self.task.kind.name(),
            self.task.target,
            self.input_width(),
            self.layer_widths(),
            self.parameter_count()
        )
    }
}

fn toml_list(items: &[String]) -> String {
    items
        .iter()
        .map(|f| toml_str(f))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A string as a TOML basic string (quoted, escaped).
pub fn toml_str(s: &str) -> String {
    // JSON string escaping is valid TOML basic-string escaping for the characters it produces;
    // TOML also forbids a raw DEL (U+007F), which JSON leaves as it is.
    serde_json::to_string(s)
        .expect("strings serialise")
        .replace('\u{7f}', "\\u007f")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashSet;

    pub(crate) const SMALL: &str = r#"
format = 1
name = "small"
[task]
kind = "binary"
target = "y"
features = ["a", "b", "c"]
[model]
hidden = [4]
activation = "relu"
dropout = 0.0
[training]
optimizer = "adam"
learning_rate = 0.01
local_epochs = 2
batch_size = 8
seed = 3
"#;

    fn with(old: &str, new: &str) -> String {
        assert!(SMALL.contains(old), "{old}");
        SMALL.replacen(old, new, 1)
    }

    #[test]
    fn wdbc_spec_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/wdbc.toml");
        let spec = ModelSpec::from_file(&path).unwrap();
        assert_eq!(spec.input_width(), 30);
        assert_eq!(spec.task.kind, TaskKind::Binary);
        assert_eq!(spec.task.target, "malignant");
    }

    #[test]
    fn layout_and_counts() {
        let spec = ModelSpec::parse(SMALL, "<t>").unwrap();
        assert_eq!(spec.layer_widths(), vec![3, 4, 1]);
        assert_eq!(spec.parameter_count(), 4 * 4 + 5);
        let names: Vec<_> = spec
            .tensors()
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        assert_eq!(
            names,
            vec![
                ("norm.mean".to_string(), vec![3]),
                ("norm.std".to_string(), vec![3]),
                ("layers.0.weight".to_string(), vec![4, 3]),
                ("layers.0.bias".to_string(), vec![4]),
                ("layers.1.weight".to_string(), vec![1, 4]),
                ("layers.1.bias".to_string(), vec![1]),
            ]
        );
    }

    #[test]
    fn spec_id_ignores_formatting_and_spelled_out_defaults() {
        let a = ModelSpec::parse(SMALL, "<t>").unwrap();
        let reformatted = format!(
            "# a comment\n{}\n",
            SMALL
                .replace("seed = 3", "seed   =   3  # same")
                .replace("dropout = 0.0\n", "")
        );
        let b = ModelSpec::parse(&reformatted, "<t>").unwrap();
        assert_eq!(a.id(), b.id());
        let c = ModelSpec::parse(&with("seed = 3", "seed = 3\nfedprox_mu = 0.0"), "<t>").unwrap();
        assert_eq!(a.id(), c.id());
        let round_trip = ModelSpec::parse(&a.to_toml(), "<t>").unwrap();
        assert_eq!(round_trip, a);
        assert_eq!(round_trip.id(), a.id());
    }

    #[test]
    fn privacy_settings_are_part_of_the_id_and_round_trip() {
        let plain = ModelSpec::parse(SMALL, "<t>").unwrap();
        assert!(plain.privacy.is_default());
        let empty = ModelSpec::parse(&format!("{SMALL}\n[privacy]\n"), "<t>").unwrap();
        assert_eq!(
            empty.id(),
            plain.id(),
            "an empty [privacy] section changes nothing"
        );
        let audit = ModelSpec::parse(
            &format!("{SMALL}\n[privacy]\nmembership_max_advantage = 0.1\n"),
            "<t>",
        )
        .unwrap();
        let dp_text = format!(
            "{SMALL}\n[privacy]\nmembership_max_advantage = 0.1\n[privacy.dp]\nmode = \"local\"\nclip = 1.5\nnoise_multiplier = 0.8\n"
        );
        let dp = ModelSpec::parse(&dp_text, "<t>").unwrap();
        let central =
            ModelSpec::parse(&dp_text.replace("\"local\"", "\"central\""), "<t>").unwrap();
        let ids = HashSet::from([plain.id(), audit.id(), dp.id(), central.id()]);
        assert_eq!(ids.len(), 4, "every privacy change makes a new spec id");
        let d = dp.privacy.dp.unwrap();
        assert_eq!(
            (d.mode, d.clip, d.noise_multiplier, d.delta),
            (DpMode::Local, 1.5, 0.8, 1e-5)
        );
        for s in [&audit, &dp, &central] {
            let back = ModelSpec::parse(&s.to_toml(), "<t>").unwrap();
            assert_eq!(&back, s);
            assert_eq!(back.id(), s.id());
        }
    }

    #[test]
    fn bad_privacy_settings_name_the_field() {
        for (section, field) in [
            (
                "membership_max_advantage = 0.0",
                "privacy.membership_max_advantage",
            ),
            (
                "membership_max_advantage = 1.5",
                "privacy.membership_max_advantage",
            ),
            (
                "membership_max_advantage = 0.6",
                "privacy.membership_max_advantage",
            ),
            (
                "[privacy.dp]\nmode = \"local\"\nclip = 0.0\nnoise_multiplier = 1.0",
                "privacy.dp.clip",
            ),
            (
                "[privacy.dp]\nmode = \"local\"\nclip = 1.0\nnoise_multiplier = -1.0",
                "privacy.dp.noise_multiplier",
            ),
            (
                "[privacy.dp]\nmode = \"local\"\nclip = 1.0\nnoise_multiplier = 1.0\ndelta = 1.0",
                "privacy.dp.delta",
            ),
        ] {
            let e = ModelSpec::parse(&format!("{SMALL}\n[privacy]\n{section}\n"), "<t>")
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{section}: {e}");
        }
        let e = ModelSpec::parse(
            &format!(
                "{SMALL}\n[privacy.dp]\nmode = \"secure\"\nclip = 1.0\nnoise_multiplier = 1.0\n"
            ),
            "<t>",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mode") || e.contains("secure"), "{e}");
    }

    #[test]
    fn any_change_of_meaning_changes_the_id() {
        let base = ModelSpec::parse(SMALL, "<t>").unwrap().id();
        let changes = [
            ("name = \"small\"", "name = \"small2\""),
            ("kind = \"binary\"", "kind = \"regression\""),
            ("target = \"y\"", "target = \"z\""),
            ("[\"a\", \"b\", \"c\"]", "[\"b\", \"a\", \"c\"]"),
            ("hidden = [4]", "hidden = [5]"),
            ("activation = \"relu\"", "activation = \"tanh\""),
            ("dropout = 0.0", "dropout = 0.1"),
            ("optimizer = \"adam\"", "optimizer = \"sgd\""),
            ("learning_rate = 0.01", "learning_rate = 0.02"),
            ("local_epochs = 2", "local_epochs = 3"),
            ("batch_size = 8", "batch_size = 9"),
            ("seed = 3", "seed = 4"),
            ("seed = 3", "seed = 3\nfedprox_mu = 0.1"),
            ("seed = 3", "seed = 3\nweight_decay = 0.001"),
        ];
        let mut ids = HashSet::from([base]);
        for (old, new) in changes {
            let id = ModelSpec::parse(&with(old, new), "<t>").unwrap().id();
            assert!(
                ids.insert(id),
                "changing {old:?} to {new:?} did not change the id"
            );
        }
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let cases = [
            (with("format = 1", "format = 2"), "`format`"),
            (
                with("kind = \"binary\"", "kind = \"ranking\""),
                "`task.kind`",
            ),
            (
                with("kind = \"binary\"", "kind = \"multiclass\""),
                "`task.classes`",
            ),
            (
                with("kind = \"binary\"", "kind = \"binary\"\nclasses = 3"),
                "`task.classes`",
            ),
            (with("[\"a\", \"b\", \"c\"]", "[]"), "`task.features`"),
            (
                with("[\"a\", \"b\", \"c\"]", "[\"a\", \"a\"]"),
                "`task.features`",
            ),
            (
                with("[\"a\", \"b\", \"c\"]", "[\"a\", \"y\"]"),
                "`task.features`",
            ),
            (with("hidden = [4]", "hidden = [0]"), "`model.hidden`"),
            (with("dropout = 0.0", "dropout = 1.0"), "`model.dropout`"),
            (
                with("learning_rate = 0.01", "learning_rate = -1.0"),
                "`training.learning_rate`",
            ),
            (
                with("local_epochs = 2", "local_epochs = 0"),
                "`training.local_epochs`",
            ),
            (
                with("batch_size = 8", "batch_size = 0"),
                "`training.batch_size`",
            ),
            (
                with("seed = 3", "seed = 3\nfedprox_mu = -1.0"),
                "`training.fedprox_mu`",
            ),
            (
                with("seed = 3", "seed = 3\nweight_decay = -1.0"),
                "`training.weight_decay`",
            ),
            (
                with("hidden = [4]", "hidden = [1048576, 1048576]"),
                "`model.hidden`",
            ),
        ];
        for (text, field) in cases {
            let err = ModelSpec::parse(&text, "spec.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "expected {field} in: {err}");
            assert!(err.starts_with("spec spec.toml"), "{err}");
        }
    }

    #[test]
    fn unknown_and_mistyped_fields_are_parse_errors_with_location() {
        let err = ModelSpec::parse(&with("seed = 3", "seed = 3\nsede = 4"), "s.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sede") && msg.contains("line"), "{msg}");
        let err = ModelSpec::parse(&with("batch_size = 8", "batch_size = \"8\""), "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn caps_derive_from_the_spec() {
        let spec = ModelSpec::parse(SMALL, "<t>").unwrap();
        let floats = 3 + 3 + 12 + 4 + 4 + 1;
        assert_eq!(
            spec.max_blob_bytes(),
            8 + spec.max_header_bytes() + 4 * floats
        );
    }
}
