//! `Weights`: a model's named f32 tensors as plain vectors, in the canonical order the spec
//! gives. This is the domain form that blobs encode, strategies merge and the burn network is
//! built from; it carries no backend and no autodiff state.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::spec::{ModelSpec, TensorSpec};
use crate::stats::{Normalization, TargetScale};

/// One named tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Stable name, e.g. `layers.0.weight`.
    pub name: String,
    /// Shape; `data.len()` equals its product.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Errors from assembling weights that do not match a spec.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WeightsError {
    /// A tensor the spec demands is absent.
    #[error("tensor `{name}` is missing")]
    Missing {
        /// The tensor.
        name: String,
    },
    /// A tensor the spec does not know is present.
    #[error("tensor `{name}` is not part of this spec")]
    Unexpected {
        /// The tensor.
        name: String,
    },
    /// A tensor has another shape than the spec demands.
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    WrongShape {
        /// The tensor.
        name: String,
        /// What the spec demands.
        expected: Vec<usize>,
        /// What was found.
        found: Vec<usize>,
    },
    /// A value is NaN or infinite.
    #[error("tensor `{name}`: value {value} at index {index} is not finite")]
    NonFinite {
        /// The tensor.
        name: String,
        /// Flat index of the first bad value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A normalisation standard deviation is not positive.
    #[error("tensor `norm.std`: value {value} at index {index} must be > 0")]
    BadStd {
        /// Feature index.
        index: usize,
        /// The value.
        value: f32,
    },
}

/// A model's tensors, checked against its spec: every tensor present with the right shape,
/// all values finite, positive standard deviations.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    tensors: Vec<NamedTensor>,
    /// How many leading tensors are fixed (`norm.*`, and `target.*` when the target is
    /// standardised): never trained, never merged.
    fixed: usize,
}

/// True for the tensors a model carries but does not train.
fn is_fixed(name: &str) -> bool {
    name.starts_with("norm.") || name.starts_with("target.")
}

impl Weights {
    /// Assembles weights from tensors in any order, checking them against `layout`
    /// (normally [`ModelSpec::tensors`]). The result is in layout order.
    pub fn from_tensors(
        layout: &[TensorSpec],
        mut tensors: Vec<NamedTensor>,
    ) -> Result<Self, WeightsError> {
        let mut ordered = Vec::with_capacity(layout.len());
        for want in layout {
            let pos = tensors
                .iter()
                .position(|t| t.name == want.name)
                .ok_or_else(|| WeightsError::Missing {
                    name: want.name.clone(),
                })?;
            let t = tensors.swap_remove(pos);
            if t.shape != want.shape || t.data.len() != want.numel() {
                return Err(WeightsError::WrongShape {
                    name: t.name,
                    expected: want.shape.clone(),
                    found: t.shape,
                });
            }
            check_finite(&t)?;
            if (t.name == "norm.std" || t.name == "target.std")
                && let Some((index, &value)) = t.data.iter().enumerate().find(|(_, v)| **v <= 0.0)
            {
                return Err(WeightsError::BadStd { index, value });
            }
            ordered.push(t);
        }
        if let Some(extra) = tensors.into_iter().next() {
            return Err(WeightsError::Unexpected { name: extra.name });
        }
        let fixed = ordered.iter().take_while(|t| is_fixed(&t.name)).count();
        Ok(Self {
            tensors: ordered,
            fixed,
        })
    }

    /// The starting model of a task: PyTorch's default `nn.Linear` initialisation
    /// (uniform in ±1/√fan_in for weights and biases) drawn from a ChaCha8 stream seeded by the
    /// spec's seed, so every party and the coordinator derive the same model; plus the task's
    /// normalisation (its `target`, when the spec standardises the target; none given is the
    /// identity).
    pub fn initial(spec: &ModelSpec, norm: &Normalization) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.training.seed);
        let mut tensors = vec![
            NamedTensor {
                name: "norm.mean".into(),
                shape: vec![spec.input_width()],
                data: norm.mean.clone(),
            },
            NamedTensor {
                name: "norm.std".into(),
                shape: vec![spec.input_width()],
                data: norm.std.clone(),
            },
        ];
        if spec.task.standardize_target {
            let t = norm.target.unwrap_or(TargetScale::IDENTITY);
            for (name, v) in [("target.mean", t.mean), ("target.std", t.std)] {
                tensors.push(NamedTensor {
                    name: name.into(),
                    shape: vec![1],
                    data: vec![v],
                });
            }
        }
        let fixed = tensors.len();
        for t in spec.tensors().into_iter().skip(fixed) {
            let fan_in = if t.shape.len() == 2 {
                t.shape[1]
            } else {
                // bias of layer i: its fan-in is the previous tensor's column count
                tensors
                    .last()
                    .map(|w: &NamedTensor| w.shape[1])
                    .unwrap_or(1)
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let data = (0..t.numel())
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            tensors.push(NamedTensor {
                name: t.name,
                shape: t.shape,
                data,
            });
        }
        Self::from_tensors(&spec.tensors(), tensors).expect("initial weights follow the spec")
    }

    /// All tensors in canonical order.
    pub fn tensors(&self) -> &[NamedTensor] {
        &self.tensors
    }

    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The normalisation the model applies to its inputs, and to the target if it
    /// standardises it.
    pub fn normalization(&self) -> Normalization {
        let target = match (self.get("target.mean"), self.get("target.std")) {
            (Some(m), Some(s)) => Some(TargetScale {
                mean: m.data[0],
                std: s.data[0],
            }),
            _ => None,
        };
        Normalization {
            mean: self.tensors[0].data.clone(),
            std: self.tensors[1].data.clone(),
            target,
            vocabularies: Default::default(),
            medians: Default::default(),
        }
    }

    /// The dense layers as (weight `[out, in]`, bias `[out]`) pairs, input side first.
    pub fn layers(&self) -> impl Iterator<Item = (&NamedTensor, &NamedTensor)> {
        self.tensors[self.fixed..]
            .chunks_exact(2)
            .map(|p| (&p[0], &p[1]))
    }

    /// The trainable tensors (everything but the normalisation).
    pub fn trainable(&self) -> &[NamedTensor] {
        &self.tensors[self.fixed..]
    }

    /// Replaces the trainable values with `f(name, old values)`, keeping shapes; fails if the
    /// result is not finite. Used by merge strategies.
    pub fn map_trainable(
        &self,
        mut f: impl FnMut(&NamedTensor) -> Vec<f32>,
    ) -> Result<Self, WeightsError> {
        let mut out = self.tensors.clone();
        for t in &mut out[self.fixed..] {
            let data = f(t);
            assert_eq!(data.len(), t.data.len(), "map_trainable must keep sizes");
            t.data = data;
            check_finite(t)?;
        }
        Ok(Self {
            tensors: out,
            fixed: self.fixed,
        })
    }

    /// Total number of f32 values, normalisation included.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }

    /// Euclidean distance between the trainable values of two models of the same layout.
    pub fn l2_distance(&self, other: &Self) -> f64 {
        self.trainable()
            .iter()
            .zip(other.trainable())
            .flat_map(|(a, b)| a.data.iter().zip(&b.data))
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// Largest absolute difference of any value between two models of the same layout.
    pub fn max_abs_diff(&self, other: &Self) -> f32 {
        self.tensors
            .iter()
            .zip(&other.tensors)
            .flat_map(|(a, b)| a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f32::max)
    }
}

fn check_finite(t: &NamedTensor) -> Result<(), WeightsError> {
    match t.data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(WeightsError::NonFinite {
            name: t.name.clone(),
            index,
            value: t.data[index],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::SMALL;

    fn spec() -> ModelSpec {
        ModelSpec::parse(SMALL, "<t>").unwrap()
    }

    #[test]
    fn initial_weights_are_deterministic_and_bounded() {
        let spec = spec();
        let norm = Normalization::identity(3);
        let a = Weights::initial(&spec, &norm);
        assert_eq!(a, Weights::initial(&spec, &norm));
        let (w0, b0) = a.layers().next().unwrap();
        let bound = 1.0 / 3f32.sqrt();
        assert!(w0.data.iter().chain(&b0.data).all(|v| v.abs() <= bound));
        let (w1, _) = a.layers().nth(1).unwrap();
        assert!(w1.data.iter().all(|v| v.abs() <= 0.5));
        assert_ne!(w0.data[0], w0.data[1]);
    }

    #[test]
    fn from_tensors_checks_names_shapes_and_values() {
        let spec = spec();
        let good = Weights::initial(&spec, &Normalization::identity(3));
        let mut t = good.tensors().to_vec();
        t.reverse();
        assert_eq!(Weights::from_tensors(&spec.tensors(), t).unwrap(), good);

        let mut missing = good.tensors().to_vec();
        missing.pop();
        assert_eq!(
            Weights::from_tensors(&spec.tensors(), missing),
            Err(WeightsError::Missing {
                name: "layers.1.bias".into()
            })
        );
        let mut extra = good.tensors().to_vec();
        extra.push(NamedTensor {
            name: "evil".into(),
            shape: vec![1],
            data: vec![0.0],
        });
        assert!(matches!(
            Weights::from_tensors(&spec.tensors(), extra),
            Err(WeightsError::Unexpected { name }) if name == "evil"
        ));
        let mut nan = good.tensors().to_vec();
        nan[3].data[2] = f32::NAN;
        assert!(matches!(
            Weights::from_tensors(&spec.tensors(), nan),
            Err(WeightsError::NonFinite { name, index: 2, .. }) if name == "layers.0.bias"
        ));
        let mut zero_std = good.tensors().to_vec();
        zero_std[1].data[0] = 0.0;
        assert!(matches!(
            Weights::from_tensors(&spec.tensors(), zero_std),
            Err(WeightsError::BadStd { index: 0, .. })
        ));
    }
}
