//! The coordinator key a party trusts: the configured `coordinator_key`, until the coordinator
//! rotates its key — then the newest key of the rotation chain it serves, followed from the
//! pinned key (each step signed by the key it replaces and by the new key), pinned in the state
//! dir. Only the pinned key verifies manifests: once a party followed a rotation, the old key
//! is refused. Configuring another `coordinator_key` (handed over out of band, e.g. after a
//! stolen key signed a rotation) drops the pin.

use shared_model::manifest::{Manifest, ManifestError, SignedManifest};
use shared_model::{VerifyingKey, keys, rotation};

use crate::config::Config;
use crate::grpc::PartyClient;
use crate::state::PartyState;

/// The key the party trusts now.
pub fn pinned(config: &Config, state: &PartyState) -> anyhow::Result<VerifyingKey> {
    Ok(state
        .coordinator_key(&config.coordinator_key)?
        .unwrap_or(config.coordinator_key))
}

/// Verifies `signed` with the pinned key; when its signature does not verify, follows the
/// coordinator's key rotations from the pinned key, and if they lead to a newer key that
/// verifies it, pins that key (durably, before the manifest is used) and returns the manifest.
pub async fn verify_manifest(
    c: &mut PartyClient,
    config: &Config,
    state: &mut PartyState,
    signed: &SignedManifest,
) -> anyhow::Result<Manifest> {
    let now = crate::daemon::now_ms();
    let key = pinned(config, state)?;
    match signed.verify(&key, now) {
        Err(ManifestError::BadSignature) => {}
        other => return Ok(other?),
    }
    let chain = c.coordinator_keys().await?;
    let newest = rotation::follow(&key, &chain)?;
    if newest == key {
        return Err(ManifestError::BadSignature.into());
    }
    let m = signed.verify(&newest, now)?;
    state.pin_coordinator_key(&newest, &config.coordinator_key)?;
    tracing::warn!(
        previous = %keys::fingerprint(&key),
        new = %keys::fingerprint(&newest),
        "the coordinator rotated its signing key: followed its signed rotation; the old key is refused from now on"
    );
    Ok(m)
}
