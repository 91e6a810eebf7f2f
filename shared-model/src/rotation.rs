//! Rotation of the coordinator's signing key, as TUF rotates its root keys: the new key is
//! announced in a statement signed by the key it replaces (and by the new key, so nobody can
//! announce a key they do not hold). A party that pins a key follows the chain of statements
//! from it to the newest key, pins that, and from then on trusts manifests signed by it only.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ids::Sha256;

/// The statement format.
pub const FORMAT: &str = "yosegi.key-rotation.v1";

const DOMAIN: &[u8] = b"yosegi.v1.key-rotation\0";

/// The most rotations a party follows in one chain.
pub const MAX_ROTATIONS: usize = 1000;

/// What a rotation says (signed as its exact JSON bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotation {
    /// [`FORMAT`].
    pub format: String,
    /// 1 for the first rotation, then one more each time.
    pub sequence: u64,
    /// The replaced key, 32 raw bytes as hex.
    pub previous_key: String,
    /// The new key, hex.
    pub new_key: String,
    /// When, Unix ms.
    pub created_unix_ms: i64,
}

/// A rotation statement with both signatures, as stored and sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRotation {
    /// The statement's JSON bytes, exactly as signed.
    pub statement: Vec<u8>,
    /// Signature by the previous key over `sha256("yosegi.v1.key-rotation\0" ‖ statement)`.
    pub by_previous: [u8; 64],
    /// The same by the new key.
    pub by_new: [u8; 64],
}

/// Why a chain of rotations is not followed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotationError {
    /// A statement does not parse.
    #[error("key rotation {index}: not a {FORMAT} statement: {why}")]
    Malformed {
        /// Its place in the chain.
        index: usize,
        /// Why.
        why: String,
    },
    /// A statement is not signed by the key it replaces, or by the key it announces.
    #[error("key rotation {sequence}: the signature of the {which} key does not verify")]
    BadSignature {
        /// Its sequence number.
        sequence: u64,
        /// `previous` or `new`.
        which: &'static str,
    },
    /// Two statements replace the same key, or share a sequence number: the chain forks, and
    /// which branch is genuine cannot be told.
    #[error("the key rotations fork: {0}; refusing to follow either branch")]
    Forked(String),
    /// The chain does not pass through the pinned key.
    #[error("no key rotation starts from the pinned coordinator key {pinned}")]
    NotFromPinned {
        /// The pinned key's fingerprint.
        pinned: String,
    },
}

fn digest(statement: &[u8]) -> [u8; 32] {
    *Sha256::of(&[DOMAIN, statement].concat()).as_bytes()
}

fn key_hex(k: &VerifyingKey) -> String {
    hex::encode(k.to_bytes())
}

impl SignedRotation {
    /// `previous` announces `new` as rotation number `sequence`.
    pub fn sign(previous: &SigningKey, new: &SigningKey, sequence: u64, now_unix_ms: i64) -> Self {
        let statement = serde_json::to_vec(&KeyRotation {
            format: FORMAT.into(),
            sequence,
            previous_key: key_hex(&previous.verifying_key()),
            new_key: key_hex(&new.verifying_key()),
            created_unix_ms: now_unix_ms,
        })
        .expect("a rotation serialises");
        let d = digest(&statement);
        Self {
            by_previous: previous.sign(&d).to_bytes(),
            by_new: new.sign(&d).to_bytes(),
            statement,
        }
    }

    /// The statement, parsed (not verified).
    pub fn rotation(&self) -> Result<KeyRotation, String> {
        let r: KeyRotation = serde_json::from_slice(&self.statement).map_err(|e| e.to_string())?;
        if r.format != FORMAT {
            return Err(format!("format is {:?}", r.format));
        }
        Ok(r)
    }
}

fn parse_key(hex_key: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Follows `chain` (in any order) from the `pinned` key: each step a statement whose previous
/// key is the current one, signed by it and by the key it announces, with a higher sequence.
/// Returns the newest key reached (`pinned` itself if no statement starts from it and it is
/// the chain's newest key). Fails if a statement on the path is forged, or if the pinned key is
/// neither on the chain nor its newest key.
pub fn follow(
    pinned: &VerifyingKey,
    chain: &[SignedRotation],
) -> Result<VerifyingKey, RotationError> {
    if chain.len() > MAX_ROTATIONS {
        return Err(RotationError::Malformed {
            index: MAX_ROTATIONS,
            why: format!("more than {MAX_ROTATIONS} rotations"),
        });
    }
    let mut parsed = Vec::with_capacity(chain.len());
    for (index, s) in chain.iter().enumerate() {
        let r = s
            .rotation()
            .map_err(|why| RotationError::Malformed { index, why })?;
        let (Some(prev), Some(new)) = (parse_key(&r.previous_key), parse_key(&r.new_key)) else {
            return Err(RotationError::Malformed {
                index,
                why: "a key is not 32 bytes of hex".into(),
            });
        };
        parsed.push((r.sequence, prev, new, s));
    }
    parsed.sort_by_key(|(seq, ..)| *seq);
    for (i, (seq, prev, ..)) in parsed.iter().enumerate() {
        for (other_seq, other_prev, ..) in &parsed[i + 1..] {
            if seq == other_seq {
                return Err(RotationError::Forked(format!(
                    "two statements have sequence {seq}"
                )));
            }
            if prev == other_prev {
                return Err(RotationError::Forked(format!(
                    "rotations {seq} and {other_seq} both replace key {}",
                    crate::keys::fingerprint(prev)
                )));
            }
        }
    }
    let mut current = *pinned;
    let mut moved = false;
    let mut last_seq = 0;
    for (seq, prev, new, s) in parsed {
        if prev != current || seq <= last_seq {
            continue;
        }
        let d = digest(&s.statement);
        prev.verify(&d, &Signature::from_bytes(&s.by_previous))
            .map_err(|_| RotationError::BadSignature {
                sequence: seq,
                which: "previous",
            })?;
        new.verify(&d, &Signature::from_bytes(&s.by_new))
            .map_err(|_| RotationError::BadSignature {
                sequence: seq,
                which: "new",
            })?;
        current = new;
        last_seq = seq;
        moved = true;
    }
    if !moved && !chain.is_empty() {
        // Only the newest key of the chain may have no statement starting from it.
        let newest = chain
            .iter()
            .filter_map(|s| s.rotation().ok())
            .max_by_key(|r| r.sequence)
            .and_then(|r| parse_key(&r.new_key));
        if newest != Some(*pinned) {
            return Err(RotationError::NotFromPinned {
                pinned: crate::keys::fingerprint(pinned),
            });
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;

    #[test]
    fn a_pinned_key_follows_the_chain_to_the_newest_key() {
        let (k0, k1, k2) = (
            generate().unwrap(),
            generate().unwrap(),
            generate().unwrap(),
        );
        let chain = vec![
            SignedRotation::sign(&k1, &k2, 2, 20),
            SignedRotation::sign(&k0, &k1, 1, 10),
        ];
        assert_eq!(
            follow(&k0.verifying_key(), &chain).unwrap(),
            k2.verifying_key()
        );
        assert_eq!(
            follow(&k1.verifying_key(), &chain).unwrap(),
            k2.verifying_key()
        );
        assert_eq!(
            follow(&k2.verifying_key(), &chain).unwrap(),
            k2.verifying_key()
        );
        assert_eq!(
            follow(&k0.verifying_key(), &[]).unwrap(),
            k0.verifying_key()
        );
    }

    #[test]
    fn forged_or_unrelated_rotations_are_refused() {
        let (k0, k1, evil) = (
            generate().unwrap(),
            generate().unwrap(),
            generate().unwrap(),
        );
        // Someone without k0 announces their own key "from" k0.
        let mut forged = SignedRotation::sign(&evil, &evil, 1, 10);
        let mut r = forged.rotation().unwrap();
        r.previous_key = key_hex(&k0.verifying_key());
        forged.statement = serde_json::to_vec(&r).unwrap();
        assert_eq!(
            follow(&k0.verifying_key(), &[forged]),
            Err(RotationError::BadSignature {
                sequence: 1,
                which: "previous"
            })
        );
        // A key that is not on the chain at all.
        let chain = [SignedRotation::sign(&k0, &k1, 1, 10)];
        assert!(matches!(
            follow(&evil.verifying_key(), &chain),
            Err(RotationError::NotFromPinned { .. })
        ));
        // Two statements replacing the same key: a fork, refused whichever is served first.
        let fork = [
            SignedRotation::sign(&k0, &k1, 1, 10),
            SignedRotation::sign(&k0, &evil, 2, 11),
        ];
        assert!(matches!(
            follow(&k0.verifying_key(), &fork),
            Err(RotationError::Forked(_))
        ));
        // A statement that does not parse.
        let mut bad = chain[0].clone();
        bad.statement = b"{}".to_vec();
        assert!(matches!(
            follow(&k0.verifying_key(), &[bad]),
            Err(RotationError::Malformed { index: 0, .. })
        ));
    }
}
