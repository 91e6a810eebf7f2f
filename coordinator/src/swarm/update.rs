//! What a simulated party uploads: signed random weights of the task's shapes, keeping its
//! normalisation.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use shared_model::SigningKey;
use shared_model::blob::{self, BlobMeta, BlobRole};
use shared_model::ids::{PartyId, RoundNo, Sha256, StepNo, TaskId};
use shared_model::model::Model;
use shared_model::spec::ModelSpec;
use shared_model::update::SignedUpdate;

/// What [`random_update`] builds an update from.
#[derive(Debug)]
pub struct RandomUpdate<'a> {
    /// The task's spec.
    pub spec: &'a ModelSpec,
    /// The base model's blob (as downloaded).
    pub base: &'a [u8],
    /// Its version (0: the initial model).
    pub base_version: u64,
    /// The task.
    pub task: TaskId,
    /// The round answered.
    pub round: u64,
    /// Its relay step (0 outside relays).
    pub step: u64,
    /// The party signing.
    pub party: PartyId,
    /// The sample count declared.
    pub samples: u64,
    /// Seeds the perturbation: the same inputs give the same bytes.
    pub seed: u64,
    /// The party's key.
    pub key: &'a SigningKey,
}

/// A signed update of random finite weights: the base model's trainable tensors, each value
/// moved by up to ±0.05 (deterministic for the seed), with the base's normalisation. Returns
/// the blob and its signed envelope.
pub fn random_update(u: &RandomUpdate<'_>) -> anyhow::Result<(Vec<u8>, SignedUpdate)> {
    let role = if u.base_version == 0 {
        BlobRole::Initial
    } else {
        BlobRole::Merged
    };
    let Model::Single(base) = Model::decode(u.base, u.spec, role)? else {
        anyhow::bail!("base model {} is not a single network", u.base_version);
    };
    let mut rng = StdRng::seed_from_u64(u.seed);
    let weights = base.map_trainable(|t| {
        t.data
            .iter()
            .map(|v| v + rng.random_range(-0.05f32..0.05))
            .collect()
    })?;
    let blob = blob::encode(&weights, &BlobMeta::new(u.spec, BlobRole::Update));
    let env = SignedUpdate::for_blob(
        u.task.clone(),
        u.spec.id(),
        RoundNo(u.round),
        StepNo(u.step),
        Sha256::of(u.base),
        u.party.clone(),
        &blob,
        u.samples,
        u.key,
    );
    Ok((blob, env))
}
