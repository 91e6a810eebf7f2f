//! Published models beyond one network: the **Average Ensemble** (a set of party networks whose
//! outputs are averaged) and the **Series Network** (a cascade of stages, each seeing the raw
//! features and the previous stage's output). [`Model`] predicts, encodes and strictly decodes
//! all three kinds; a blob's `kind` metadata says which it is.
//!
//! Blob layout (still plain safetensors): a single network is as in [`crate::blob`]; an ensemble
//! prefixes each member's tensors with `members.{i}.` and lists the members in the `members`
//! metadata (JSON `[{"party": …, "weight": …}]`); a series prefixes stage tensors with
//! `stages.{j}.` and gives the count in `stages`. Stage `j ≥ 1` is a network over
//! `features + output width` inputs (see [`stage_spec`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::blob::{self, BlobError, BlobLimits, BlobMeta, BlobRole};
use crate::data::Dataset;
use crate::eval::{MetricStats, Metrics, metrics_from_predictions};
use crate::network::{CpuBackend, predict};
use crate::spec::{ModelSpec, TensorSpec};
use crate::weights::{NamedTensor, Weights};

mod stage;
pub use stage::stage_start;

/// Most members of an ensemble or stages of a series a blob may hold.
pub const MAX_PARTS: usize = 64;

/// Name prefix of the extra inputs of a series stage.
pub const STAGE_INPUT: &str = "stage_output_";

/// One member of an Average Ensemble.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The party that trained it.
    pub party: String,
    /// Its weight in the average (its sample count, normally).
    pub weight: f64,
    /// The network.
    pub weights: Weights,
}

/// A model the coordinator publishes.
#[derive(Clone, Debug, PartialEq)]
pub enum Model {
    /// One network (FedAvg, FedProx, robust merges, Transfer Learning, the initial model).
    Single(Weights),
    /// Average Ensemble: the prediction is the weighted mean of the members' outputs
    /// (probabilities for classification, values for regression).
    Ensemble(Vec<Member>),
    /// Series Network: stage 0 sees the features; stage j sees the features and stage j−1's
    /// output; the model predicts with its last stage.
    Series(Vec<Weights>),
}

/// The largest blob a published model of `spec` may be: [`MAX_PARTS`] of its widest network.
pub fn max_model_blob_bytes(spec: &ModelSpec) -> u64 {
    model_limits(spec).max_bytes
}

/// The limits a model blob of `spec` of any kind is read within before any metadata is: at
/// most [`MAX_PARTS`] of its widest network.
pub fn model_limits(spec: &ModelSpec) -> BlobLimits {
    let widest = BlobLimits::for_spec(&stage_spec(spec, 1));
    BlobLimits {
        max_bytes: widest.max_bytes * MAX_PARTS as u64,
        max_header_bytes: widest.max_header_bytes * MAX_PARTS as u64,
    }
}

/// The largest single network a party may upload for `spec` (a series stage is the widest).
pub fn max_update_blob_bytes(spec: &ModelSpec) -> u64 {
    stage_spec(spec, 1).max_blob_bytes()
}

/// Metadata entry of an ensemble member.
#[derive(Serialize, Deserialize)]
struct MemberMeta {
    party: String,
    weight: f64,
}

/// The spec of series stage `j`: stage 0 is the task's network; later stages take the output
/// of the stage before as extra inputs named `stage_output_{k}`. Only the layout is used (the
/// blob keeps the task's spec id).
pub fn stage_spec(spec: &ModelSpec, j: usize) -> ModelSpec {
    let mut s = spec.clone();
    if j > 0 {
        for k in 0..spec.task.kind.output_width() {
            s.task.features.push(format!("{STAGE_INPUT}{k}"));
        }
    }
    s
}

/// The inputs of series stage `stages.len()`: each row's features followed by the output of
/// the chain `stages` (nothing appended when `stages` is empty).
pub fn series_inputs(
    spec: &ModelSpec,
    stages: &[Weights],
    features: &[f32],
    backend: CpuBackend,
) -> Vec<f32> {
    if stages.is_empty() {
        return features.to_vec();
    }
    let d = spec.input_width();
    let k = spec.task.kind.output_width();
    let out = series_predict(spec, stages, features, backend);
    let mut rows = Vec::with_capacity(features.len() / d * (d + k));
    for (x, y) in features.chunks_exact(d).zip(out.chunks_exact(k)) {
        rows.extend_from_slice(x);
        rows.extend_from_slice(y);
    }
    rows
}

fn series_predict(
    spec: &ModelSpec,
    stages: &[Weights],
    features: &[f32],
    backend: CpuBackend,
) -> Vec<f32> {
    let d = spec.input_width();
    let k = spec.task.kind.output_width();
    let mut out = predict(spec, &stages[0], features, backend);
    for (j, stage) in stages.iter().enumerate().skip(1) {
        let mut rows = Vec::with_capacity(features.len() / d * (d + k));
        for (x, y) in features.chunks_exact(d).zip(out.chunks_exact(k)) {
            rows.extend_from_slice(x);
            rows.extend_from_slice(y);
        }
        out = predict(&stage_spec(spec, j), stage, &rows, backend);
    }
    out
}

/// Series stage `j`'s training data: the chain's outputs appended to the features.
pub fn stage_dataset(
    spec: &ModelSpec,
    stages: &[Weights],
    data: &Dataset,
    backend: CpuBackend,
) -> Dataset {
    let extra = if stages.is_empty() {
        0
    } else {
        spec.task.kind.output_width()
    };
    Dataset {
        width: data.width + extra,
        features: series_inputs(spec, stages, &data.features, backend),
        targets: data.targets.clone(),
    }
}

fn prefixed(prefix: &str, layout: &[TensorSpec]) -> Vec<TensorSpec> {
    layout
        .iter()
        .map(|t| TensorSpec {
            name: format!("{prefix}{}", t.name),
            shape: t.shape.clone(),
        })
        .collect()
}

fn strip(prefix: &str, tensors: Vec<NamedTensor>) -> Vec<NamedTensor> {
    tensors
        .into_iter()
        .map(|mut t| {
            t.name = t.name[prefix.len()..].to_string();
            t
        })
        .collect()
}

impl Model {
    /// `single`, `ensemble` or `series`.
    pub fn kind(&self) -> &'static str {
        match self {
            Model::Single(_) => "single",
            Model::Ensemble(_) => "ensemble",
            Model::Series(_) => "series",
        }
    }

    /// Predictions for raw rows, in the shape of [`predict`].
    pub fn predict(&self, spec: &ModelSpec, rows: &[f32], backend: CpuBackend) -> Vec<f32> {
        match self {
            Model::Single(w) => predict(spec, w, rows, backend),
            Model::Ensemble(members) => {
                let total: f64 = members.iter().map(|m| m.weight).sum();
                let mut acc: Vec<f64> = Vec::new();
                for m in members {
                    let p = predict(spec, &m.weights, rows, backend);
                    if acc.is_empty() {
                        acc = vec![0.0; p.len()];
                    }
                    for (a, v) in acc.iter_mut().zip(p) {
                        *a += m.weight / total * f64::from(v);
                    }
                }
                acc.into_iter().map(|v| v as f32).collect()
            }
            Model::Series(stages) => series_predict(spec, stages, rows, backend),
        }
    }

    /// Exact metrics on labelled rows.
    pub fn evaluate(&self, spec: &ModelSpec, data: &Dataset, backend: CpuBackend) -> Metrics {
        let preds = self.predict(spec, &data.features, backend);
        metrics_from_predictions(spec.task.kind, &preds, &data.targets)
    }

    /// Mergeable metric statistics on labelled rows.
    pub fn evaluate_stats(
        &self,
        spec: &ModelSpec,
        data: &Dataset,
        backend: CpuBackend,
    ) -> MetricStats {
        let preds = self.predict(spec, &data.features, backend);
        MetricStats::from_predictions(spec.task.kind, &preds, &data.targets)
    }

    /// The task's normalisation this model carries (every network of a model shares it for the
    /// task's features).
    pub fn task_normalization(&self) -> crate::stats::Normalization {
        match self {
            Model::Single(w) => w.normalization(),
            Model::Ensemble(m) => m[0].weights.normalization(),
            Model::Series(s) => s[0].normalization(),
        }
    }

    /// Checks that an update trained from this model kept the task's normalisation for the
    /// task's `d` features (a series stage adds its own for the extra inputs after them).
    pub fn check_update_normalization(&self, update: &Weights, d: usize) -> Result<(), String> {
        let task = self.task_normalization();
        let n = update.normalization();
        let same = n.mean.get(..d) == task.mean.get(..d)
            && n.std.get(..d) == task.std.get(..d)
            && n.target == task.target;
        if same {
            Ok(())
        } else {
            Err("its normalisation (norm.mean / norm.std) differs from the task's".into())
        }
    }

    /// Total number of parameters.
    pub fn numel(&self) -> usize {
        match self {
            Model::Single(w) => w.numel(),
            Model::Ensemble(m) => m.iter().map(|m| m.weights.numel()).sum(),
            Model::Series(s) => s.iter().map(Weights::numel).sum(),
        }
    }

    /// The network a party continues training from: the model itself if single; in an
    /// ensemble, the party's own member if it has one; in a series, nothing (a new stage starts
    /// from its initial weights).
    pub fn start_for(&self, party: &str) -> Option<&Weights> {
        match self {
            Model::Single(w) => Some(w),
            Model::Ensemble(m) => m.iter().find(|m| m.party == party).map(|m| &m.weights),
            Model::Series(_) => None,
        }
    }

    /// The canonical blob.
    pub fn encode(&self, spec: &ModelSpec, role: BlobRole) -> Vec<u8> {
        let meta = BlobMeta::new(spec, role);
        match self {
            Model::Single(w) => blob::encode(w, &meta),
            Model::Ensemble(members) => {
                let mut tensors = Vec::new();
                for (i, m) in members.iter().enumerate() {
                    for t in m.weights.tensors() {
                        tensors.push(NamedTensor {
                            name: format!("members.{i}.{}", t.name),
                            ..t.clone()
                        });
                    }
                }
                let list: Vec<MemberMeta> = members
                    .iter()
                    .map(|m| MemberMeta {
                        party: m.party.clone(),
                        weight: m.weight,
                    })
                    .collect();
                blob::encode_tensors_with(
                    &tensors,
                    &meta,
                    &BTreeMap::from([
                        ("kind", "ensemble".to_string()),
                        ("members", serde_json::to_string(&list).expect("json")),
                    ]),
                )
            }
            Model::Series(stages) => {
                let mut tensors = Vec::new();
                for (j, s) in stages.iter().enumerate() {
                    for t in s.tensors() {
                        tensors.push(NamedTensor {
                            name: format!("stages.{j}.{}", t.name),
                            ..t.clone()
                        });
                    }
                }
                blob::encode_tensors_with(
                    &tensors,
                    &meta,
                    &BTreeMap::from([
                        ("kind", "series".to_string()),
                        ("stages", stages.len().to_string()),
                    ]),
                )
            }
        }
    }

    /// Strictly decodes a blob of any kind against the task's spec, expecting `role` (for a
    /// spec that discovers vocabularies: the spec with the blob's, [`blob::spec_for`]).
    pub fn decode(bytes: &[u8], spec: &ModelSpec, role: BlobRole) -> Result<Model, BlobError> {
        let single = BlobLimits::for_spec(spec);
        let limits = model_limits(spec);
        let meta = blob::read_header(bytes, limits)?
            .metadata()
            .clone()
            .unwrap_or_default();
        let bad = |key: &'static str, expected: &str| BlobError::Metadata {
            key,
            expected: expected.to_string(),
            found: meta.get(key).cloned(),
        };
        match meta.get("kind").map(String::as_str) {
            None => Ok(Model::Single(blob::decode_limited(
                bytes, spec, role, single,
            )?)),
            Some("ensemble") => {
                let list: Vec<MemberMeta> = meta
                    .get("members")
                    .and_then(|s| serde_json::from_str(s).ok())
                    .ok_or_else(|| bad("members", "a JSON list of {party, weight}"))?;
                // The total must be finite too: predictions divide by it.
                let total: f64 = list.iter().map(|m| m.weight).sum();
                if list.is_empty()
                    || list.len() > MAX_PARTS
                    || list
                        .iter()
                        .any(|m| !(m.weight.is_finite() && m.weight > 0.0))
                    || !total.is_finite()
                {
                    return Err(bad(
                        "members",
                        &format!(
                            "1 to {MAX_PARTS} members with finite weights > 0 and a finite total"
                        ),
                    ));
                }
                let one = spec.tensors();
                let mut layout = Vec::new();
                for i in 0..list.len() {
                    layout.extend(prefixed(&format!("members.{i}."), &one));
                }
                let mut tensors =
                    blob::decode_tensors(bytes, &layout, limits, &BlobMeta::new(spec, role))?
                        .into_iter();
                let mut members = Vec::with_capacity(list.len());
                for (i, m) in list.into_iter().enumerate() {
                    let part: Vec<NamedTensor> = tensors.by_ref().take(one.len()).collect();
                    let weights =
                        Weights::from_tensors(&one, strip(&format!("members.{i}."), part))?;
                    members.push(Member {
                        party: m.party,
                        weight: m.weight,
                        weights,
                    });
                }
                Ok(Model::Ensemble(members))
            }
            Some("series") => {
                let n: usize = meta
                    .get("stages")
                    .and_then(|s| s.parse().ok())
                    .filter(|n| (1..=MAX_PARTS).contains(n))
                    .ok_or_else(|| bad("stages", &format!("a count from 1 to {MAX_PARTS}")))?;
                let layouts: Vec<Vec<TensorSpec>> =
                    (0..n).map(|j| stage_spec(spec, j).tensors()).collect();
                let mut layout = Vec::new();
                for (j, l) in layouts.iter().enumerate() {
                    layout.extend(prefixed(&format!("stages.{j}."), l));
                }
                let mut tensors =
                    blob::decode_tensors(bytes, &layout, limits, &BlobMeta::new(spec, role))?
                        .into_iter();
                let mut stages = Vec::with_capacity(n);
                for (j, l) in layouts.iter().enumerate() {
                    let part: Vec<NamedTensor> = tensors.by_ref().take(l.len()).collect();
                    stages.push(Weights::from_tensors(
                        l,
                        strip(&format!("stages.{j}."), part),
                    )?);
                }
                Ok(Model::Series(stages))
            }
            Some(_) => Err(bad("kind", "absent, \"ensemble\" or \"series\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::SMALL;
    use crate::stats::Normalization;
    use safetensors::SafeTensors;

    fn spec() -> ModelSpec {
        ModelSpec::parse(SMALL, "<t>").unwrap()
    }

    fn shifted(w: &Weights, by: f32) -> Weights {
        w.map_trainable(|t| t.data.iter().map(|v| v + by).collect())
            .unwrap()
    }

    #[test]
    fn an_ensemble_of_one_is_that_model() {
        let spec = spec();
        let w = Weights::initial(&spec, &Normalization::identity(3));
        let rows = [0.5f32, -1.0, 2.0, 1.0, 0.0, -0.5];
        let one = Model::Ensemble(vec![Member {
            party: "plant-a".into(),
            weight: 7.0,
            weights: w.clone(),
        }]);
        let a = one.predict(&spec, &rows, CpuBackend::default());
        let b = predict(&spec, &w, &rows, CpuBackend::default());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn an_ensemble_averages_outputs_by_weight() {
        let spec = spec();
        let w = Weights::initial(&spec, &Normalization::identity(3));
        let v = shifted(&w, 0.3);
        let rows = [0.5f32, -1.0, 2.0];
        let pw = predict(&spec, &w, &rows, CpuBackend::default())[0];
        let pv = predict(&spec, &v, &rows, CpuBackend::default())[0];
        let m = Model::Ensemble(vec![
            Member {
                party: "a".into(),
                weight: 1.0,
                weights: w,
            },
            Member {
                party: "b".into(),
                weight: 3.0,
                weights: v,
            },
        ]);
        let got = m.predict(&spec, &rows, CpuBackend::default())[0];
        assert!((got - (0.25 * pw + 0.75 * pv)).abs() < 1e-6);
    }

    #[test]
    fn every_kind_round_trips_through_its_blob_and_is_refused_when_broken() {
        let spec = spec();
        let w = Weights::initial(&spec, &Normalization::identity(3));
        let s1 = Weights::initial(&stage_spec(&spec, 1), &Normalization::identity(4));
        let models = [
            Model::Single(w.clone()),
            Model::Ensemble(vec![
                Member {
                    party: "plant-a".into(),
                    weight: 10.0,
                    weights: w.clone(),
                },
                Member {
                    party: "plant-b".into(),
                    weight: 20.0,
                    weights: shifted(&w, 0.1),
                },
            ]),
            Model::Series(vec![w.clone(), s1]),
        ];
        for m in &models {
            let bytes = m.encode(&spec, BlobRole::Merged);
            assert_eq!(bytes, m.encode(&spec, BlobRole::Merged), "canonical");
            let back = Model::decode(&bytes, &spec, BlobRole::Merged).unwrap();
            assert_eq!(&back, m);
            assert!(
                Model::decode(&bytes, &spec, BlobRole::Update).is_err(),
                "role checked"
            );
            // Python-readable: a plain safetensors file.
            assert!(SafeTensors::deserialize(&bytes).is_ok());
        }
        // A series whose count claims more stages than it holds is refused, naming the tensor.
        let bytes = models[2].encode(&spec, BlobRole::Merged);
        let forged = bytes_with_meta(&bytes, "stages", "3");
        let e = Model::decode(&forged, &spec, BlobRole::Merged).unwrap_err();
        assert!(e.to_string().contains("stages.2."), "{e}");
        let forged = bytes_with_meta(&bytes, "kind", "pipeline");
        assert!(matches!(
            Model::decode(&forged, &spec, BlobRole::Merged),
            Err(BlobError::Metadata { key: "kind", .. })
        ));
    }

    /// Re-encodes a blob with one metadata value changed.
    fn bytes_with_meta(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
        crate::blob::tests::rewrite_header(bytes, |h| {
            h["__metadata__"][key] = serde_json::Value::String(value.into());
        })
    }

    #[test]
    fn a_series_feeds_each_stage_the_previous_output() {
        let spec = spec();
        let s0 = Weights::initial(&spec, &Normalization::identity(3));
        let s1 = Weights::initial(&stage_spec(&spec, 1), &Normalization::identity(4));
        let rows = [0.5f32, -1.0, 2.0];
        let y0 = predict(&spec, &s0, &rows, CpuBackend::default());
        let y1 = predict(
            &stage_spec(&spec, 1),
            &s1,
            &[0.5, -1.0, 2.0, y0[0]],
            CpuBackend::default(),
        );
        let m = Model::Series(vec![s0.clone(), s1]);
        assert_eq!(m.predict(&spec, &rows, CpuBackend::default()), y1);
        // A series of one stage is that network.
        assert_eq!(
            Model::Series(vec![s0]).predict(&spec, &rows, CpuBackend::default()),
            y0
        );
    }
}
