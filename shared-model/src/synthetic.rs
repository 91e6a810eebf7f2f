//! The synthetic regression data for the paper's regression experiment: Friedman's function #1
//! (Friedman 1991, "Multivariate adaptive regression splines"; also scikit-learn's
//! `make_friedman1`):
//!
//! x ~ U(0, 1)^d with d ≥ 5, and
//! y = 10·sin(π·x₀·x₁) + 20·(x₂ − 0.5)² + 10·x₃ + 5·x₄ + ε, ε ~ N(0, noise²).
//!
//! Features x₅ … x_{d−1} are pure noise the network must learn to ignore. Columns are named
//! `x0` … `x{d-1}` and the target `y`; [`spec`] gives a matching ModelSpec.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::data::Dataset;
use crate::spec::{ModelSpec, SpecError};

/// Parameters of the generator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Friedman1 {
    /// Rows to draw.
    pub rows: usize,
    /// Input dimension (≥ 5).
    pub dim: usize,
    /// Standard deviation of the Gaussian noise on y.
    pub noise: f64,
    /// Seed of the ChaCha8 stream.
    pub seed: u64,
}

impl Default for Friedman1 {
    fn default() -> Self {
        Self {
            rows: 2000,
            dim: 10,
            noise: 1.0,
            seed: 0,
        }
    }
}

/// The noiseless target for one row (its first five values matter).
pub fn friedman1(x: &[f32]) -> f64 {
    let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    10.0 * (std::f64::consts::PI * x[0] * x[1]).sin()
        + 20.0 * (x[2] - 0.5).powi(2)
        + 10.0 * x[3]
        + 5.0 * x[4]
}

impl Friedman1 {
    /// Draws the dataset. Panics if `dim < 5` (a programming error; [`spec`] validates).
    pub fn generate(&self) -> Dataset {
        assert!(self.dim >= 5, "Friedman #1 needs at least 5 inputs");
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let noise = Normal::new(0.0, self.noise.max(0.0)).expect("finite noise");
        let mut ds = Dataset::empty(self.dim);
        for _ in 0..self.rows {
            let row: Vec<f32> = (0..self.dim).map(|_| rng.random::<f32>()).collect();
            let y = friedman1(&row) + noise.sample(&mut rng);
            ds.features.extend_from_slice(&row);
            ds.targets.push(y as f32);
        }
        ds
    }
}

/// A regression ModelSpec for `dim` Friedman inputs: MLP d→32→16→1, Adam.
pub fn spec(dim: usize) -> Result<ModelSpec, SpecError> {
    let features: Vec<String> = (0..dim).map(|j| format!("\"x{j}\"")).collect();
    let text = format!(
        "format = 1\nname = \"friedman1-d{dim}\"\n\n[task]\nkind = \"regression\"\ntarget = \"y\"\nfeatures = [{}]\n\n[model]\nhidden = [32, 16]\nactivation = \"relu\"\n\n[training]\noptimizer = \"adam\"\nlearning_rate = 0.01\nlocal_epochs = 10\nbatch_size = 32\nseed = 7\n",
        features.join(", ")
    );
    let spec = ModelSpec::parse(&text, "<synthetic>")?;
    if dim < 5 {
        return Err(SpecError::Invalid {
            origin: "<synthetic>".into(),
            field: "task.features",
            message: format!("Friedman #1 needs at least 5 inputs, found {dim}"),
        });
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_value() {
        // sin(π·0.5·1) = 1 → 10 + 20·0 + 10·1 + 5·0 = 20
        assert!((friedman1(&[0.5, 1.0, 0.5, 1.0, 0.0]) - 20.0).abs() < 1e-9);
    }

    #[test]
    fn generation_is_deterministic_and_has_the_documented_noise() {
        let g = Friedman1 {
            rows: 5000,
            dim: 6,
            noise: 0.5,
            seed: 1,
        };
        let a = g.generate();
        assert_eq!(a, g.generate());
        assert_eq!(a.len(), 5000);
        assert!(a.features.iter().all(|v| (0.0..1.0).contains(v)));
        let resid: Vec<f64> = (0..a.len())
            .map(|i| f64::from(a.targets[i]) - friedman1(a.row(i)))
            .collect();
        let mean = resid.iter().sum::<f64>() / resid.len() as f64;
        let sd =
            (resid.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / resid.len() as f64).sqrt();
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((sd - 0.5).abs() < 0.03, "{sd}");
    }

    #[test]
    fn spec_matches_columns() {
        let s = spec(10).unwrap();
        assert_eq!(s.input_width(), 10);
        assert_eq!(s.task.features[9], "x9");
        assert!(spec(4).is_err());
    }
}
