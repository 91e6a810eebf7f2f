//! Rotating the coordinator's signing key (`coordinator key rotate`, with the coordinator
//! stopped): a new key is made, announced in a statement signed by the old key and the new one
//! (`shared_model::rotation`), and every published manifest is signed again with it — the
//! statement, the new signatures and a `coordinator_key_rotated` record in one transaction.
//! Parties that pin the old key follow the statement to the new one (`PartyService.
//! CoordinatorKeys`) and from then on accept manifests signed by the new key only.
//!
//! Crash safety: the new key is written first as `coordinator.key.pem.next`, then the
//! transaction commits, then the key files are moved into place. [`recover`] (run when the data
//! dir is opened) finishes a rotation whose transaction committed and drops one that did not, and
//! refuses a key file that is not the newest key of the recorded chain.

use std::path::Path;

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use shared_model::keys;
use shared_model::manifest::SignedManifest;
use shared_model::rotation::SignedRotation;
use yosegi_round::Transition;

use crate::state::{COORDINATOR_KEY, COORDINATOR_PUB};
use crate::store::Store;

/// The new key while a rotation is in progress.
pub const NEXT_KEY: &str = "coordinator.key.pem.next";

/// What a rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotated {
    /// Its sequence number (1 for the first).
    pub sequence: u64,
    /// Fingerprint of the replaced key.
    pub previous: String,
    /// Fingerprint of the new key.
    pub new: String,
    /// Manifests signed again.
    pub resigned: usize,
}

/// Rotates the signing key of the stopped coordinator in `dir`.
pub fn rotate(dir: &Path, now: i64) -> anyhow::Result<Rotated> {
    let mut data = crate::state::open(dir)?;
    let new = keys::generate()?;
    let next = dir.join(NEXT_KEY);
    keys::write_private(&next, &new)?;
    // Durable before the commit names the key: a power loss cannot leave a database whose
    // newest key no file holds.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    let sequence = data.store.key_rotations()?.len() as u64 + 1;
    let rotation = SignedRotation::sign(&data.key, &new, sequence, now);
    let resigned = data
        .store
        .all_manifests()?
        .into_iter()
        .map(|(task, version, bytes)| {
            let s = SignedManifest::sign_bytes(bytes, &new);
            (task, version, s.signature.to_bytes().to_vec())
        })
        .collect::<Vec<_>>();
    let count = resigned.len();
    let at = data.store.version()?;
    let applied = data.store.apply(
        at,
        now,
        &Transition::RotateCoordinatorKey { rotation, resigned },
    );
    if let Err(e) = applied {
        let _ = std::fs::remove_file(&next);
        return Err(e).context("recording the key rotation");
    }
    install(dir, &new)?;
    Ok(Rotated {
        sequence,
        previous: keys::fingerprint(&data.key.verifying_key()),
        new: keys::fingerprint(&new.verifying_key()),
        resigned: count,
    })
}

/// Moves the new key into place: the private key by rename over the old one, then the public
/// key file, each made durable.
fn install(dir: &Path, new: &SigningKey) -> anyhow::Result<()> {
    let public_next = dir.join(format!("{COORDINATOR_PUB}.next"));
    let _ = std::fs::remove_file(&public_next);
    keys::write_public(&public_next, &new.verifying_key())?;
    std::fs::rename(dir.join(NEXT_KEY), dir.join(COORDINATOR_KEY))
        .with_context(|| format!("installing the new key in {}", dir.display()))?;
    std::fs::rename(&public_next, dir.join(COORDINATOR_PUB))
        .with_context(|| format!("installing the new public key in {}", dir.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Finishes or drops an interrupted rotation, then checks that the key file is the newest key
/// the recorded rotations name (a data dir restored with an old key file would sign manifests
/// no party follows).
pub fn recover(dir: &Path, store: &Store) -> anyhow::Result<()> {
    let newest = match store.key_rotations()?.last() {
        Some(r) => Some(
            r.rotation()
                .map_err(|e| anyhow::anyhow!("the newest key rotation: {e}"))?
                .new_key,
        ),
        None => None,
    };
    let next = dir.join(NEXT_KEY);
    if next.exists() {
        let key = keys::read_private(&next)?;
        if newest.as_deref() == Some(&hex::encode(key.verifying_key().to_bytes())) {
            tracing::warn!(data_dir = %dir.display(), "finishing a key rotation a crash interrupted after its commit");
            install(dir, &key)?;
        } else {
            tracing::warn!(data_dir = %dir.display(), "dropping the new key of a rotation that never committed");
            std::fs::remove_file(&next).with_context(|| format!("removing {}", next.display()))?;
        }
    }
    if let Some(newest) = newest {
        let key = keys::read_private(&dir.join(COORDINATOR_KEY))?;
        anyhow::ensure!(
            hex::encode(key.verifying_key().to_bytes()) == newest,
            "{} is not the newest coordinator key the database records (its key rotations end at {}); restore the key file that goes with this database",
            dir.join(COORDINATOR_KEY).display(),
            newest.get(..16).unwrap_or(&newest)
        );
        // A crash between the two renames of an install leaves the old public key file.
        let public = keys::read_public(&dir.join(COORDINATOR_PUB)).ok();
        if public != Some(key.verifying_key()) {
            tracing::warn!(data_dir = %dir.display(), "rewriting the public key file of the current coordinator key");
            let next = dir.join(format!("{COORDINATOR_PUB}.next"));
            let _ = std::fs::remove_file(&next);
            keys::write_public(&next, &key.verifying_key())?;
            std::fs::rename(&next, dir.join(COORDINATOR_PUB))
                .with_context(|| format!("installing {}", dir.join(COORDINATOR_PUB).display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public_of(dir: &Path) -> String {
        keys::fingerprint(&keys::read_public(&dir.join(COORDINATOR_PUB)).unwrap())
    }

    #[test]
    fn a_rotation_signs_a_chain_installs_the_key_and_survives_an_interrupted_install() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        crate::state::init(&dir).unwrap();
        let old = keys::read_private(&dir.join(COORDINATOR_KEY)).unwrap();
        let r = rotate(&dir, 5).unwrap();
        assert_eq!((r.sequence, r.resigned), (1, 0));
        assert_eq!(r.previous, keys::fingerprint(&old.verifying_key()));
        assert_eq!(public_of(&dir), r.new);
        let data = crate::state::open(&dir).unwrap();
        let chain = data.store.key_rotations().unwrap();
        let followed = shared_model::rotation::follow(&old.verifying_key(), &chain).unwrap();
        assert_eq!(followed, data.key.verifying_key());
        drop(data);

        // A crash after the commit, before the install: the old key file, the new one beside.
        let new = keys::read_private(&dir.join(COORDINATOR_KEY)).unwrap();
        std::fs::remove_file(dir.join(COORDINATOR_KEY)).unwrap();
        keys::write_private(&dir.join(COORDINATOR_KEY), &old).unwrap();
        keys::write_private(&dir.join(NEXT_KEY), &new).unwrap();
        let data = crate::state::open(&dir).unwrap();
        assert_eq!(
            data.key.verifying_key(),
            new.verifying_key(),
            "the install is finished"
        );
        assert!(!dir.join(NEXT_KEY).exists());
        drop(data);

        // A crash before the commit: a stray new key is dropped, the current one kept.
        keys::write_private(&dir.join(NEXT_KEY), &keys::generate().unwrap()).unwrap();
        let data = crate::state::open(&dir).unwrap();
        assert_eq!(data.key.verifying_key(), new.verifying_key());
        assert!(!dir.join(NEXT_KEY).exists());
        drop(data);

        // An old key file restored over the newest is refused, naming the cure.
        std::fs::remove_file(dir.join(COORDINATOR_KEY)).unwrap();
        keys::write_private(&dir.join(COORDINATOR_KEY), &old).unwrap();
        let e = crate::state::open(&dir).unwrap_err().to_string();
        assert!(e.contains("is not the newest coordinator key"), "{e}");
    }
}
