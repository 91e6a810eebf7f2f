//! The merge a close runs, chosen once from the plan and the spec: a streaming FedAvg that
//! folds each update in as it verifies (O(model) memory), the strategy over all updates, the
//! central-DP mean with noise, or one relay step. The live close and the experiment simulator
//! both run this, so the published results come from the rules the server runs.

use rand::Rng;
use shared_model::aggregate::FedAvg;
use shared_model::dp;
use shared_model::ids::PartyId;
use shared_model::model::Model;
use shared_model::spec::{DpMode, ModelSpec};
use shared_model::strategy::{Contribution, Strategy, relay_step};
use shared_model::update::VerifiedUpdate;
use shared_model::weights::Weights;

use crate::plan::RoundPlan;

/// How a round's updates are merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergePath {
    /// FedAvg/FedProx without a norm bound or central DP: each update folded in as it
    /// verifies, one held at a time.
    Streaming,
    /// The strategy over every update at once.
    Batch,
    /// Central DP: the unweighted mean of the clipped deltas plus noise.
    CentralDp,
    /// One step of a Transfer Learning or Series relay.
    Relay,
}

impl MergePath {
    /// The path for a round of `plan` on a task of `spec`.
    pub fn of(plan: &RoundPlan, spec: &ModelSpec) -> Self {
        let central_dp = spec
            .privacy
            .dp
            .as_ref()
            .is_some_and(|d| d.mode == DpMode::Central);
        if plan.relay.is_some() {
            Self::Relay
        } else if central_dp {
            Self::CentralDp
        } else if plan.strategy.norm_bound.is_none()
            && matches!(
                plan.strategy.strategy,
                Strategy::FedAvg | Strategy::FedProx { .. }
            )
        {
            Self::Streaming
        } else {
            Self::Batch
        }
    }
}

/// A merge in progress: verified updates go in one at a time.
#[derive(Debug)]
pub struct Merger {
    path: MergePath,
    acc: FedAvg,
    held: Vec<(VerifiedUpdate, u64)>,
    /// The first error folding an update in: the merge fails with it.
    error: Option<String>,
}

impl Merger {
    /// An empty merge along `path`.
    pub fn new(path: MergePath) -> Self {
        Self {
            path,
            acc: FedAvg::new(),
            held: Vec::new(),
            error: None,
        }
    }

    /// Its path.
    pub fn path(&self) -> MergePath {
        self.path
    }

    /// Adds one verified update with its merge weight (`close::merge_weights`), folded in at
    /// once on the streaming path.
    pub fn add(&mut self, update: VerifiedUpdate, weight: u64) {
        match self.path {
            MergePath::Streaming => {
                let party = update.party().as_str();
                if self.error.is_none()
                    && let Err(e) = self.acc.add_weights(party, update.weights(), weight)
                {
                    self.error = Some(format!("update of {party}: {e}"));
                }
            }
            _ => self.held.push((update, weight)),
        }
    }

    /// Keeps only the updates of `kept`, with the weights given there. Returns false if the
    /// updates must be added again (the streaming sum cannot take one out or reweigh one): the
    /// merge is then empty.
    pub fn retain(&mut self, kept: &[(PartyId, u64)]) -> bool {
        match self.path {
            MergePath::Streaming => {
                *self = Self::new(self.path);
                false
            }
            _ => {
                self.held.retain_mut(|(v, weight)| {
                    match kept.iter().find(|(p, _)| p == v.party()) {
                        Some((_, w)) => {
                            *weight = *w;
                            true
                        }
                        None => false,
                    }
                });
                true
            }
        }
    }

    /// The merged model, or why the merge failed. `rng` draws central DP's noise.
    pub fn finish(
        self,
        plan: &RoundPlan,
        spec: &ModelSpec,
        base: &Model,
        rng: &mut impl Rng,
    ) -> Result<Model, String> {
        let cfg = &plan.strategy;
        let failed = |e: String| format!("{} merge failed: {e}", cfg.name);
        match self.path {
            MergePath::Streaming => match self.error {
                Some(e) => Err(failed(e)),
                None => self
                    .acc
                    .finish()
                    .map(Model::Single)
                    .map_err(|e| failed(e.to_string())),
            },
            MergePath::Relay => {
                let party = &plan.relay.as_ref().expect("a relay plan").party;
                let only = self
                    .held
                    .iter()
                    .find(|(v, _)| v.party() == party)
                    .map(|(v, _)| v)
                    .ok_or_else(|| {
                        failed(format!("relay step of {party} has no update of {party}"))
                    })?;
                Ok(relay_step(&cfg.strategy, base, only.weights()))
            }
            MergePath::CentralDp => {
                let (Some(d), Model::Single(b)) = (&spec.privacy.dp, base) else {
                    return Err(failed(format!(
                        "differential privacy needs a single-network base, the round's is a {}",
                        base.kind()
                    )));
                };
                let updates: Vec<&Weights> = self.held.iter().map(|(v, _)| v.weights()).collect();
                dp::central_merge(d, b, &updates, rng)
                    .map(Model::Single)
                    .map_err(|e| failed(e.to_string()))
            }
            MergePath::Batch => {
                let contributions: Vec<Contribution<'_>> = self
                    .held
                    .iter()
                    .map(|(v, weight)| Contribution {
                        party: v.party().as_str(),
                        weights: v.weights(),
                        samples: *weight,
                    })
                    .collect();
                cfg.merge(base, &contributions)
                    .map_err(|e| failed(e.to_string()))
            }
        }
    }
}
