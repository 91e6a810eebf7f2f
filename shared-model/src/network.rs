//! The burn side of a model: the CPU device, the MLP as a burn `Module`, and conversion between
//! it and [`Weights`]. Weights are stored `[out, in]` like PyTorch's `nn.Linear`, so blobs load
//! into a torch MLP unchanged. The normalisation is applied to the rows before they become
//! tensors (it is fixed, not trained), so the module holds only the dense layers.
//!
//! burn-ndarray is deprecated in burn 0.22 (its successor is `flex`). The design card names
//! burn-ndarray, so it is the default; [`CpuBackend`] is the one place that chooses, and the
//! `flex` feature builds the alternative for benchmarks.

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, relu, sigmoid, softmax, tanh};
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::spec::{Activation, ModelSpec, TaskKind};
use crate::weights::{NamedTensor, Weights};

/// Which burn CPU backend runs training and inference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuBackend {
    /// burn-ndarray (the design card's backend, deprecated upstream in 0.22).
    #[default]
    NdArray,
    /// burn-flex, the pure-Rust successor (only with the `flex` feature).
    #[cfg(feature = "flex")]
    Flex,
}

impl CpuBackend {
    /// A device for inference.
    pub fn device(self) -> Device {
        match self {
            #[allow(deprecated)] // the design card's backend; see the module docs
            CpuBackend::NdArray => Device::ndarray(),
            #[cfg(feature = "flex")]
            CpuBackend::Flex => Device::flex(),
        }
    }

    /// A device with autodiff, for training.
    pub fn training_device(self) -> Device {
        self.device().autodiff()
    }
}

/// One fully connected layer, `y = x·Wᵀ + b` with `W: [out, in]`.
#[derive(Module, Debug)]
pub struct Dense {
    /// `[out, in]`
    pub weight: Param<Tensor<2>>,
    /// `[out]`
    pub bias: Param<Tensor<1>>,
}

/// The network: dense layers with the spec's activation between them.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Input side first.
    pub layers: Vec<Dense>,
}

/// Dropout during training: masks drawn from the caller's seeded stream, so a run is
/// reproducible no matter what else uses burn's own RNG.
#[derive(Debug)]
pub struct DropoutMasks<'a> {
    /// Drop probability.
    pub p: f64,
    /// Source of the masks.
    pub rng: &'a mut ChaCha8Rng,
}

impl Mlp {
    /// Builds the module on `device` from weights; layers with index < `frozen_layers` do not
    /// receive gradients.
    pub fn from_weights(weights: &Weights, device: &Device, frozen_layers: usize) -> Self {
        let tensor = |t: &NamedTensor| TensorData::new(t.data.clone(), t.shape.clone());
        let layers = weights
            .layers()
            .enumerate()
            .map(|(i, (w, b))| {
                let trainable = i >= frozen_layers;
                Dense {
                    weight: Param::from_data(tensor(w), device).set_require_grad(trainable),
                    bias: Param::from_data(tensor(b), device).set_require_grad(trainable),
                }
            })
            .collect();
        Self { layers }
    }

    /// Reads the trained values back into weights with `template`'s normalisation and layout.
    pub fn to_weights(&self, template: &Weights) -> Weights {
        let mut values = Vec::with_capacity(self.layers.len() * 2);
        for layer in &self.layers {
            values.push(to_vec(layer.weight.val()));
            values.push(to_vec(layer.bias.val()));
        }
        let mut it = values.into_iter();
        template
            .map_trainable(|_| it.next().expect("one value vector per trainable tensor"))
            .expect("training produced non-finite weights; lower the learning rate")
    }

    /// Output logits (or values) for normalised rows `x: [batch, in]`.
    pub fn forward(
        &self,
        mut x: Tensor<2>,
        activation: Activation,
        mut dropout: Option<DropoutMasks<'_>>,
    ) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let bias = layer.bias.val().unsqueeze::<2>();
            x = x.matmul(layer.weight.val().transpose()) + bias;
            if i < last {
                x = match activation {
                    Activation::Relu => relu(x),
                    Activation::Tanh => tanh(x),
                    Activation::Sigmoid => sigmoid(x),
                    Activation::Gelu => gelu(x),
                };
                if let Some(d) = dropout.as_mut()
                    && d.p > 0.0
                {
                    let [rows, cols] = x.dims();
                    let keep = 1.0 / (1.0 - d.p) as f32;
                    let mask: Vec<f32> = (0..rows * cols)
                        .map(|_| {
                            if d.rng.random::<f64>() < d.p {
                                0.0
                            } else {
                                keep
                            }
                        })
                        .collect();
                    let device = x.device();
                    x = x * Tensor::from_data(TensorData::new(mask, [rows, cols]), &device);
                }
            }
        }
        x
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("model tensors are f32")
}

/// Rows per inference batch (bounds memory for large inputs).
const INFER_BATCH: usize = 8192;

/// Predictions for raw (unnormalised) rows: P(class 1) per row for binary, class
/// probabilities (`rows × classes`, row-major) for multiclass, values for regression.
pub fn predict(spec: &ModelSpec, weights: &Weights, rows: &[f32], backend: CpuBackend) -> Vec<f32> {
    let width = spec.input_width();
    let device = backend.device();
    let mlp = Mlp::from_weights(weights, &device, 0);
    let norm = weights.normalization();
    let mut out = Vec::with_capacity(rows.len() / width * spec.task.kind.output_width());
    for chunk in rows.chunks(INFER_BATCH * width) {
        let n = chunk.len() / width;
        let x = Tensor::<2>::from_data(TensorData::new(norm.apply(chunk), [n, width]), &device);
        let z = mlp.forward(x, spec.model.activation, None);
        let y = match spec.task.kind {
            TaskKind::Binary => sigmoid(z),
            TaskKind::Multiclass { .. } => softmax(z, 1),
            TaskKind::Regression => z,
        };
        match norm.target {
            // a standardised target: the output is in standard units
            Some(t) => out.extend(to_vec(y).into_iter().map(|z| t.unscale(z))),
            None => out.extend(to_vec(y)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::SMALL;
    use crate::stats::Normalization;

    #[test]
    fn weights_survive_the_module_round_trip() {
        let spec = ModelSpec::parse(SMALL, "<t>").unwrap();
        let w = Weights::initial(&spec, &Normalization::identity(3));
        let device = CpuBackend::default().training_device();
        assert_eq!(Mlp::from_weights(&w, &device, 0).to_weights(&w), w);
    }

    #[test]
    fn forward_matches_a_hand_computation() {
        let spec = ModelSpec::parse(SMALL, "<t>").unwrap();
        let norm = Normalization {
            mean: vec![1.0, 0.0, 0.0],
            std: vec![2.0, 1.0, 1.0],
            target: None,
            vocabularies: Default::default(),
            medians: Default::default(),
        };
        let w = Weights::initial(&spec, &norm);
        let x = [3.0f32, -1.0, 0.5];
        // by hand: normalise, dense, relu, dense, sigmoid
        let z: Vec<f32> = vec![(3.0 - 1.0) / 2.0, -1.0, 0.5];
        let (w0, b0) = w.layers().next().unwrap();
        let h: Vec<f32> = (0..4)
            .map(|o| {
                let s: f32 = (0..3).map(|i| w0.data[o * 3 + i] * z[i]).sum::<f32>() + b0.data[o];
                s.max(0.0)
            })
            .collect();
        let (w1, b1) = w.layers().nth(1).unwrap();
        let logit: f32 = (0..4).map(|i| w1.data[i] * h[i]).sum::<f32>() + b1.data[0];
        let expected = 1.0 / (1.0 + (-logit).exp());
        let got = predict(&spec, &w, &x, CpuBackend::default());
        assert_eq!(got.len(), 1);
        assert!((got[0] - expected).abs() < 1e-6, "{} vs {expected}", got[0]);
    }
}
