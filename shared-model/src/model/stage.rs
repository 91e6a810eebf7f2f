//! Where a new Series Network stage starts training. A stage trained from a fresh random
//! network for one round's few epochs on one party's rows is the Series Network's weak point:
//! under label skew the last party may hold one or two classes, and a fresh stage learns to
//! answer only those — the chain collapses (macro-F1 0.2 where FedAvg reaches 0.8). So a stage
//! starts from the chain it extends (a warm start):
//!
//! - stage 0 starts from the base network (the task's initial model on the first relay);
//! - stage 1 starts as stage 0 with zero weights on its extra inputs (the chain's output): before
//!   training, the two-stage chain predicts exactly what stage 0 does;
//! - stage j ≥ 2 starts from stage j − 1's weights (the same layout and normalisation). It is not
//!   an exact copy of the chain before it — stage j − 1 learnt to correct y_{j−2}, and stage j
//!   first applies that correction to y_{j−1} — but it starts from what the chain has learnt,
//!   not from nothing.
//!
//! The extra inputs are normalised by a rule no single party's rows can skew: probabilities
//! (classification) are used as they are, in [0, 1]; a regression chain's values by the task's
//! federated target scale when the spec standardises the target, else (the only choice left)
//! by stage 1's party's statistics of them — and later stages inherit stage 1's. (With per-party statistics a party whose rows the
//! chain already classifies confidently sees a near-constant output, a std of 10⁻⁴, and feeds
//! the next stage inputs of ±1000 on any other row.)

use crate::data::Dataset;
use crate::spec::{ModelSpec, TaskKind};
use crate::stats::{FeatureSums, Normalization};
use crate::weights::{NamedTensor, Weights};

/// The network series stage `stages.len()` starts from. `base_network` is the base model's
/// network when the base is a single network; `augmented` is the party's training rows as the
/// stage sees them ([`super::stage_dataset`]).
pub fn stage_start(
    spec: &ModelSpec,
    stages: &[Weights],
    base_network: Option<&Weights>,
    task_norm: &Normalization,
    augmented: &Dataset,
) -> Weights {
    let stage = super::stage_spec(spec, stages.len());
    match stages {
        [] => base_network
            .cloned()
            .unwrap_or_else(|| Weights::initial(&stage, task_norm)),
        [first] => {
            let extra = chain_input_norm(spec, task_norm, augmented);
            widen(first, &stage, &extra)
        }
        [.., last] => last.clone(),
    }
}

/// How stage 1 normalises the chain's outputs (see the module docs).
fn chain_input_norm(
    spec: &ModelSpec,
    task_norm: &Normalization,
    augmented: &Dataset,
) -> Normalization {
    let k = spec.task.kind.output_width();
    if spec.task.kind != TaskKind::Regression {
        return Normalization::identity(k);
    }
    if let Some(t) = task_norm.target {
        return Normalization {
            mean: vec![t.mean],
            std: vec![t.std],
            target: None,
            vocabularies: Default::default(),
            medians: Default::default(),
        };
    }
    let d = spec.input_width();
    let outputs: Vec<f32> = augmented
        .features
        .chunks_exact(augmented.width)
        .flat_map(|r| r[d..].iter().copied())
        .collect();
    FeatureSums::of_rows(&outputs, k)
        .normalization()
        .unwrap_or_else(|_| Normalization::identity(k))
}

/// `network` (a stage-0 layout) as a network of `stage`'s layout: its first layer gains zero
/// weights for the extra inputs, whose normalisation is `extra`; everything else is copied.
fn widen(network: &Weights, stage: &ModelSpec, extra: &Normalization) -> Weights {
    let layout = stage.tensors();
    let mut first_layer = true;
    let tensors: Vec<NamedTensor> = network
        .tensors()
        .iter()
        .map(|t| {
            let mut t = t.clone();
            match t.name.as_str() {
                "norm.mean" => t.data.extend(&extra.mean),
                "norm.std" => t.data.extend(&extra.std),
                _ if first_layer && t.shape.len() == 2 => {
                    first_layer = false;
                    let (out, d) = (t.shape[0], t.shape[1]);
                    let k = extra.mean.len();
                    let mut data = Vec::with_capacity(out * (d + k));
                    for row in t.data.chunks_exact(d) {
                        data.extend_from_slice(row);
                        data.extend(std::iter::repeat_n(0.0, k));
                    }
                    t.data = data;
                    t.shape = vec![out, d + k];
                }
                _ => {}
            }
            if t.name.starts_with("norm.") {
                t.shape = vec![t.data.len()];
            }
            t
        })
        .collect();
    Weights::from_tensors(&layout, tensors).expect("a widened stage follows the stage layout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, stage_spec};
    use crate::network::CpuBackend;
    use crate::spec::tests::SMALL;

    #[test]
    fn each_stage_starts_as_the_chain_before_it_predicts() {
        let spec = ModelSpec::parse(SMALL, "small.toml").unwrap();
        let d = spec.input_width();
        let norm = Normalization {
            mean: vec![0.5; d],
            std: vec![2.0; d],
            target: None,
            vocabularies: Default::default(),
            medians: Default::default(),
        };
        let s0 = Weights::initial(&spec, &norm);
        let rows: Vec<f32> = (0..5 * d).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let data = Dataset {
            width: d,
            features: rows.clone(),
            targets: vec![0.0; 5],
        };
        let be = CpuBackend::default();
        let aug1 = crate::model::stage_dataset(&spec, std::slice::from_ref(&s0), &data, be);
        let s1 = stage_start(&spec, std::slice::from_ref(&s0), None, &norm, &aug1);
        assert_eq!(
            s1.normalization().mean.len(),
            d + spec.task.kind.output_width()
        );
        // Before training, the two-stage chain predicts exactly what stage 0 alone does.
        let one = Model::Series(vec![s0.clone()]).predict(&spec, &rows, be);
        let two = Model::Series(vec![s0.clone(), s1.clone()]).predict(&spec, &rows, be);
        assert_eq!(one, two);
        // Stage 2 starts as stage 1.
        let stages = vec![s0.clone(), s1.clone()];
        let aug2 = crate::model::stage_dataset(&spec, &stages, &data, be);
        assert_eq!(aug2.width, stage_spec(&spec, 2).input_width());
        assert_eq!(stage_start(&spec, &stages, None, &norm, &aug2), s1);
        // Stage 0 starts from the base network when there is one.
        assert_eq!(stage_start(&spec, &[], Some(&s0), &norm, &data), s0);
        // The chain's probabilities enter as they are.
        let n1 = s1.normalization();
        assert!(n1.mean[d..].iter().all(|&m| m == 0.0));
        assert!(n1.std[d..].iter().all(|&s| s == 1.0));
    }
}
