//! Merge strategies as pure functions of verified updates: no I/O, no clock, no async.
//! FedAvg is streaming — updates are folded one at a time into f64 running sums — so memory is
//! O(model), not O(parties × model).

use crate::update::VerifiedUpdate;
use crate::weights::{Weights, WeightsError};

/// Errors from merging.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AggregateError {
    /// Nothing to merge.
    #[error("no updates to merge")]
    Empty,
    /// An update's normalisation differs from the first one's.
    #[error("update of {party} was trained with another normalisation than the round's")]
    Normalization {
        /// The party.
        party: String,
    },
    /// The sample counts add up beyond what a u64 holds (verified updates cannot get here).
    #[error("sample counts overflow")]
    SampleOverflow,
    /// A strategy's precondition does not hold (e.g. Krum needs n > 2f + 2 updates).
    #[error("{0}")]
    Unsuitable(String),
    /// The merged values are not finite.
    #[error("merged model is not finite: {0}")]
    Weights(#[from] WeightsError),
}

/// Sample-weighted parameter averaging, one update at a time.
#[derive(Debug, Default)]
pub struct FedAvg {
    sums: Vec<Vec<f64>>,
    total: u64,
    first: Option<Weights>,
}

impl FedAvg {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds in one update, weighted by its sample count.
    pub fn add(&mut self, update: &VerifiedUpdate) -> Result<(), AggregateError> {
        self.add_weights(
            update.party().as_str(),
            update.weights(),
            update.sample_count(),
        )
    }

    /// Folds in one model of `party`, weighted by `n` (its sample count).
    pub fn add_weights(&mut self, party: &str, w: &Weights, n: u64) -> Result<(), AggregateError> {
        let total = self
            .total
            .checked_add(n)
            .ok_or(AggregateError::SampleOverflow)?;
        match &self.first {
            None => {
                self.sums = w
                    .trainable()
                    .iter()
                    .map(|t| t.data.iter().map(|&v| f64::from(v) * n as f64).collect())
                    .collect();
                self.first = Some(w.clone());
            }
            Some(first) => {
                if first.normalization() != w.normalization() {
                    return Err(AggregateError::Normalization {
                        party: party.to_string(),
                    });
                }
                for (sum, t) in self.sums.iter_mut().zip(w.trainable()) {
                    for (s, &v) in sum.iter_mut().zip(&t.data) {
                        *s += f64::from(v) * n as f64;
                    }
                }
            }
        }
        self.total = total;
        Ok(())
    }

    /// Number of samples folded in so far.
    pub fn total_samples(&self) -> u64 {
        self.total
    }

    /// The weighted mean of everything added.
    pub fn finish(self) -> Result<Weights, AggregateError> {
        let first = self.first.ok_or(AggregateError::Empty)?;
        let total = self.total as f64;
        let mut sums = self.sums.into_iter();
        Ok(first.map_trainable(|_| {
            sums.next()
                .expect("one sum per tensor")
                .into_iter()
                .map(|s| (s / total) as f32)
                .collect()
        })?)
    }
}

/// FedAvg of a slice of updates.
pub fn fedavg(updates: &[VerifiedUpdate]) -> Result<Weights, AggregateError> {
    let mut acc = FedAvg::new();
    for u in updates {
        acc.add(u)?;
    }
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Normalization;
    use crate::update::tests::Fixture;
    use proptest::prelude::*;

    fn model(f: &Fixture, values: &[f32]) -> Weights {
        let w = Weights::initial(&f.spec, &Normalization::identity(3));
        let mut it = values.iter().cycle();
        w.map_trainable(|t| t.data.iter().map(|_| *it.next().unwrap()).collect())
            .unwrap()
    }

    #[test]
    fn weighted_mean_by_hand() {
        let f = Fixture::new();
        let a = f.verified(&model(&f, &[1.0]), 1);
        let b = f.verified(&model(&f, &[4.0]), 2);
        let m = fedavg(&[a, b]).unwrap();
        assert!(
            m.trainable()
                .iter()
                .all(|t| t.data.iter().all(|&v| v == 3.0))
        );
        assert_eq!(fedavg(&[]), Err(AggregateError::Empty));
    }

    #[test]
    fn fedavg_of_identical_models_is_that_model() {
        let f = Fixture::new();
        let w = model(&f, &[0.3, -1.7, 2.5e-3]);
        let ups: Vec<_> = [5, 17, 100].iter().map(|&n| f.verified(&w, n)).collect();
        assert_eq!(fedavg(&ups).unwrap(), w);
    }

    #[test]
    fn different_normalisations_do_not_mix() {
        let f = Fixture::new();
        let a = f.verified(&model(&f, &[1.0]), 1);
        let other = Weights::initial(
            &f.spec,
            &Normalization {
                vocabularies: Default::default(),
                medians: Default::default(),
                mean: vec![1.0; 3],
                std: vec![1.0; 3],
                target: None,
            },
        );
        let b = f.verified(&other, 1);
        assert!(matches!(
            fedavg(&[a, b]),
            Err(AggregateError::Normalization { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The order of updates does not change the result beyond float tolerance.
        #[test]
        fn order_does_not_matter(
            vals in prop::collection::vec((-10.0f32..10.0, 1u64..1000), 2..6),
            rot in 0usize..6,
        ) {
            let f = Fixture::new();
            let ups: Vec<_> = vals.iter().map(|(v, n)| f.verified(&model(&f, &[*v, -*v]), *n)).collect();
            let mut rotated = ups.clone();
            rotated.rotate_left(rot % ups.len());
            rotated.reverse();
            let a = fedavg(&ups).unwrap();
            let b = fedavg(&rotated).unwrap();
            prop_assert!(a.max_abs_diff(&b) <= 1e-5);
        }
    }
}
