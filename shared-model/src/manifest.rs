//! Published-model manifests. A manifest says what a merged blob is — task, spec, version,
//! strategy, the blob's sha256 and length, who contributed which update with how many rows,
//! merged metrics, when it was made and when it expires — and the coordinator signs it. A party
//! trusts a model only after checking the signature against its pinned coordinator key, the
//! expiry, the task and spec, that the version does not go backwards, and that the blob hashes
//! to what the manifest names.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256 as Sha256Hasher};

use crate::eval::Metrics;
use crate::ids::{ModelVersion, PartyId, Sha256, SpecId, TaskId};

/// Value of the manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "yosegi.manifest.v1";

const MANIFEST_TAG: &[u8] = b"yosegi.v1.manifest\0";

/// One accepted update that went into a merge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contributor {
    /// The party.
    pub party: PartyId,
    /// sha256 of its update blob.
    pub update_sha256: Sha256,
    /// Rows it trained on.
    pub sample_count: u64,
}

/// What a published model is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The task.
    pub task: TaskId,
    /// The task's spec.
    pub spec_id: SpecId,
    /// Version, starting at 0 for the initial model; only goes forward.
    pub version: ModelVersion,
    /// The round that produced it (0 for the initial model).
    pub round: u64,
    /// Strategy name (`initial` for version 0).
    pub strategy: String,
    /// sha256 of the blob.
    pub blob_sha256: Sha256,
    /// Length of the blob.
    pub blob_len: u64,
    /// Updates merged, in the order they were merged.
    pub contributors: Vec<Contributor>,
    /// Merged local metrics the contributors reported for their updates, if any.
    pub metrics: Option<Metrics>,
    /// When it was signed.
    pub created_unix_ms: i64,
    /// After this, parties refuse it (a coordinator serving a stale model is noticed).
    pub expires_unix_ms: i64,
}

/// A manifest as signed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    /// The manifest's JSON, exactly as signed.
    pub bytes: Vec<u8>,
    /// ed25519 over sha256(tag ‖ bytes).
    pub signature: Signature,
}

/// Why a manifest or the blob it names was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    /// The signature is not the pinned coordinator key's.
    #[error("manifest signature does not verify with the pinned coordinator key")]
    BadSignature,
    /// The signed bytes are not a manifest.
    #[error("manifest is not valid: {0}")]
    Malformed(String),
    /// Expired.
    #[error(
        "manifest of task {task} version {version} expired at {expires_unix_ms} (now {now_unix_ms}); the coordinator may be serving a stale model"
    )]
    Expired {
        /// The task.
        task: TaskId,
        /// The version.
        version: ModelVersion,
        /// Expiry.
        expires_unix_ms: i64,
        /// Now.
        now_unix_ms: i64,
    },
    /// For another task or spec than expected.
    #[error("manifest is for {found}, expected {expected}")]
    WrongTask {
        /// What was expected.
        expected: String,
        /// What the manifest says.
        found: String,
    },
    /// Older than a version already accepted.
    #[error(
        "refusing model version {offered} of task {task}: version {accepted} was already accepted (rollback)"
    )]
    Rollback {
        /// The task.
        task: TaskId,
        /// Offered version.
        offered: ModelVersion,
        /// Highest accepted version.
        accepted: ModelVersion,
    },
    /// The blob is not the one the manifest names.
    #[error("model blob does not match its manifest: {0}")]
    BlobMismatch(String),
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256Hasher::new();
    h.update(MANIFEST_TAG);
    h.update(bytes);
    h.finalize().into()
}

impl Manifest {
    /// Signs the manifest with the coordinator key.
    pub fn sign(&self, key: &SigningKey) -> SignedManifest {
        let bytes = serde_json::to_vec(self).expect("manifests serialise");
        let signature = key.sign(&digest(&bytes));
        SignedManifest { bytes, signature }
    }
}

impl SignedManifest {
    /// Signs manifest bytes exactly as they are (a published manifest signed again after the
    /// coordinator's key was rotated: the bytes, and so everything they say, do not change).
    pub fn sign_bytes(bytes: Vec<u8>, key: &SigningKey) -> Self {
        let signature = key.sign(&digest(&bytes));
        SignedManifest { bytes, signature }
    }

    /// Checks the signature and expiry and parses the manifest.
    pub fn verify(
        &self,
        coordinator: &VerifyingKey,
        now_unix_ms: i64,
    ) -> Result<Manifest, ManifestError> {
        let m = self.verify_signature(coordinator)?;
        if now_unix_ms > m.expires_unix_ms {
            return Err(ManifestError::Expired {
                task: m.task,
                version: m.version,
                expires_unix_ms: m.expires_unix_ms,
                now_unix_ms,
            });
        }
        Ok(m)
    }

    /// Checks the signature and parses the manifest, without the expiry: for a model kept at
    /// the plant (`party-client predict`), where an old but authentic model is still usable.
    /// Live training and evaluation always use [`Self::verify`].
    pub fn verify_signature(&self, coordinator: &VerifyingKey) -> Result<Manifest, ManifestError> {
        coordinator
            .verify_strict(&digest(&self.bytes), &self.signature)
            .map_err(|_| ManifestError::BadSignature)?;
        let m: Manifest = serde_json::from_slice(&self.bytes)
            .map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if m.format != MANIFEST_FORMAT {
            return Err(ManifestError::Malformed(format!(
                "format is {:?}, expected {MANIFEST_FORMAT:?}",
                m.format
            )));
        }
        Ok(m)
    }

    /// The file form written next to a pulled model: the exact signed manifest text and the
    /// signature in hex, so anyone holding the coordinator's public key can check it later.
    pub fn to_file_json(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let file = serde_json::json!({
            "format": SIGNED_MANIFEST_FILE_FORMAT,
            "manifest": text,
            "signature": hex::encode(self.signature.to_bytes()),
        });
        serde_json::to_string_pretty(&file).expect("JSON values serialise")
    }

    /// Reads [`Self::to_file_json`]; `origin` names the file in errors. Only parses: call
    /// [`Self::verify`] or [`Self::verify_signature`] before trusting it.
    pub fn from_file_json(text: &str, origin: &str) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            format: String,
            manifest: String,
            signature: String,
        }
        let bad = |what: String| ManifestError::Malformed(format!("{origin}: {what}"));
        let f: File = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "not a signed manifest file ({e}); `coordinator model pull` writes one as MODEL.manifest.json"
            ))
        })?;
        if f.format != SIGNED_MANIFEST_FILE_FORMAT {
            return Err(bad(format!(
                "field `format` is {:?}, expected {SIGNED_MANIFEST_FILE_FORMAT:?}",
                f.format
            )));
        }
        let sig: [u8; 64] = hex::decode(f.signature.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("field `signature` is not 64 bytes of hex".into()))?;
        Ok(Self {
            bytes: f.manifest.into_bytes(),
            signature: Signature::from_bytes(&sig),
        })
    }
}

/// `format` of the signed-manifest file.
pub const SIGNED_MANIFEST_FILE_FORMAT: &str = "yosegi.signed-manifest.v1";

impl Manifest {
    /// Checks the manifest is for `task` with `spec_id` and not older than `accepted`.
    pub fn check_for(
        &self,
        task: &TaskId,
        spec_id: SpecId,
        accepted: Option<ModelVersion>,
    ) -> Result<(), ManifestError> {
        if self.task != *task || self.spec_id != spec_id {
            return Err(ManifestError::WrongTask {
                expected: format!("task {task} spec {}", spec_id.0.short()),
                found: format!("task {} spec {}", self.task, self.spec_id.0.short()),
            });
        }
        if let Some(accepted) = accepted
            && self.version < accepted
        {
            return Err(ManifestError::Rollback {
                task: task.clone(),
                offered: self.version,
                accepted,
            });
        }
        Ok(())
    }

    /// Checks that `blob` is the one this manifest names.
    pub fn check_blob(&self, blob: &[u8]) -> Result<(), ManifestError> {
        if blob.len() as u64 != self.blob_len {
            return Err(ManifestError::BlobMismatch(format!(
                "{} bytes, manifest says {}",
                blob.len(),
                self.blob_len
            )));
        }
        let sha = Sha256::of(blob);
        if sha != self.blob_sha256 {
            return Err(ManifestError::BlobMismatch(format!(
                "sha256 {sha}, manifest says {}",
                self.blob_sha256
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            task: TaskId::new("wdbc").unwrap(),
            spec_id: SpecId(Sha256::of(b"spec")),
            version: ModelVersion(3),
            round: 3,
            strategy: "fedavg".into(),
            blob_sha256: Sha256::of(b"blob"),
            blob_len: 4,
            contributors: vec![Contributor {
                party: PartyId::new("plant-a").unwrap(),
                update_sha256: Sha256::of(b"u"),
                sample_count: 10,
            }],
            metrics: None,
            created_unix_ms: 1_000,
            expires_unix_ms: 2_000,
        }
    }

    #[test]
    fn the_manifest_file_form_round_trips_and_tampering_is_caught() {
        let key = generate().unwrap();
        let signed = manifest().sign(&key);
        let text = signed.to_file_json();
        let back = SignedManifest::from_file_json(&text, "m.json").unwrap();
        assert_eq!(back, signed);
        assert_eq!(
            back.verify_signature(&key.verifying_key()).unwrap(),
            manifest()
        );
        // Expired for live use, still authentic for a model kept at the plant.
        assert!(back.verify(&key.verifying_key(), 3_000).is_err());
        let tampered = text.replace("\\\"round\\\":3", "\\\"round\\\":4");
        assert_ne!(tampered, text, "the edit applies");
        let t = SignedManifest::from_file_json(&tampered, "m.json").unwrap();
        assert_eq!(
            t.verify_signature(&key.verifying_key()),
            Err(ManifestError::BadSignature)
        );
        let other = generate().unwrap();
        assert_eq!(
            back.verify_signature(&other.verifying_key()),
            Err(ManifestError::BadSignature)
        );
        for (bad, want) in [
            ("{}", "m.json: not a signed manifest file"),
            (
                &text.replace(SIGNED_MANIFEST_FILE_FORMAT, "v0"),
                "field `format`",
            ),
            (
                &text.replace(&hex::encode(signed.signature.to_bytes()), "abcd"),
                "field `signature`",
            ),
        ] {
            let e = SignedManifest::from_file_json(bad, "m.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn signed_manifests_verify_and_round_trip() {
        let key = generate().unwrap();
        let m = manifest();
        let signed = m.sign(&key);
        assert_eq!(signed.verify(&key.verifying_key(), 1_500).unwrap(), m);
        m.check_blob(b"blob").unwrap();
        m.check_for(&m.task, m.spec_id, Some(ModelVersion(3)))
            .unwrap();
    }

    #[test]
    fn each_refusal_is_distinct() {
        let key = generate().unwrap();
        let m = manifest();
        let signed = m.sign(&key);
        let other = generate().unwrap();
        assert_eq!(
            signed.verify(&other.verifying_key(), 1_500),
            Err(ManifestError::BadSignature)
        );
        let mut tampered = signed.clone();
        tampered.bytes[10] ^= 1;
        assert_eq!(
            tampered.verify(&key.verifying_key(), 1_500),
            Err(ManifestError::BadSignature)
        );
        let e = signed.verify(&key.verifying_key(), 2_001).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let e = m
            .check_for(&m.task, m.spec_id, Some(ModelVersion(4)))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "refusing model version 3 of task wdbc: version 4 was already accepted (rollback)"
        );
        assert!(matches!(
            m.check_for(&TaskId::new("other").unwrap(), m.spec_id, None),
            Err(ManifestError::WrongTask { .. })
        ));
        assert!(matches!(
            m.check_blob(b"blob!"),
            Err(ManifestError::BlobMismatch(_))
        ));
        assert!(matches!(
            m.check_blob(b"bloc"),
            Err(ManifestError::BlobMismatch(_))
        ));
    }
}
