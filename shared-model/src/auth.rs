//! Call authentication, the pure part. Every gRPC call carries the caller's name, a timestamp,
//! a random nonce and an ed25519 signature over a digest of those, the method path and the
//! sha256 of the call's first message as sent (the unary request, or a stream's first message;
//! [`body_sha256`]). The server checks the signature against the caller's enrolled key, the
//! timestamp against its skew bound, and that the nonce is new ([`NonceCache`]).

use std::collections::{HashMap, VecDeque};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256 as Sha256Hasher};

const CALL_TAG: &[u8] = b"yosegi.v1.call.v2\0";

/// The version of the call proof, sent as metadata `x-yosegi-proof`. Version 1 (no body
/// digest) is refused by name.
pub const PROOF_VERSION: &str = "2";

/// The sha256 of a message's bytes as sent: what a call proof's `body` is.
pub fn body_sha256(encoded: &[u8]) -> [u8; 32] {
    Sha256Hasher::digest(encoded).into()
}

/// The caller name the operator uses.
pub const OPERATOR: &str = "operator";

/// What a call's signature covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallProof {
    /// Full gRPC method path, e.g. `/yosegi.v1.PartyService/UploadUpdate`.
    pub method: String,
    /// Party name or [`OPERATOR`].
    pub caller: String,
    /// Unix milliseconds at the caller.
    pub timestamp_ms: i64,
    /// 16 random bytes.
    pub nonce: [u8; 16],
    /// sha256 of the call's first message as sent ([`body_sha256`]).
    pub body: [u8; 32],
}

impl CallProof {
    /// A fresh proof for a call made now whose first message hashes to `body`.
    pub fn new(method: &str, caller: &str, now_ms: i64, body: [u8; 32]) -> Self {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the system random source works");
        Self {
            method: method.to_string(),
            caller: caller.to_string(),
            timestamp_ms: now_ms,
            nonce,
            body,
        }
    }

    /// The digest that is signed.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256Hasher::new();
        h.update(CALL_TAG);
        h.update((self.method.len() as u64).to_le_bytes());
        h.update(self.method.as_bytes());
        h.update((self.caller.len() as u64).to_le_bytes());
        h.update(self.caller.as_bytes());
        h.update(self.timestamp_ms.to_le_bytes());
        h.update(self.nonce);
        h.update(self.body);
        h.finalize().into()
    }

    /// Signs the proof.
    pub fn sign(&self, key: &SigningKey) -> Signature {
        key.sign(&self.digest())
    }
}

/// Why a call was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    /// A metadata entry is missing or malformed.
    #[error("call is not authenticated: {0}")]
    Missing(String),
    /// The timestamp is outside the skew bound.
    #[error(
        "clock skew: the call of {caller} is stamped {} the coordinator's clock; at most {} s either way is allowed (synchronise the clocks, e.g. with NTP)",
        describe_skew(*skew_ms),
        *max_ms as f64 / 1000.0
    )]
    Skew {
        /// The caller as it named itself.
        caller: String,
        /// Signed difference caller − coordinator.
        skew_ms: i64,
        /// The bound.
        max_ms: i64,
    },
    /// The nonce was seen before.
    #[error("call replayed: nonce already used by {caller}")]
    Replay {
        /// The caller.
        caller: String,
    },
    /// Signature invalid for the caller's key.
    #[error("call signature of {caller} does not verify with its enrolled key")]
    BadSignature {
        /// The caller.
        caller: String,
    },
}

/// "12.345 s ahead of" / "3.000 s behind" (milliseconds as seconds).
fn describe_skew(skew_ms: i64) -> String {
    let secs = skew_ms.unsigned_abs() as f64 / 1000.0;
    if skew_ms >= 0 {
        format!("{secs:.3} s ahead of")
    } else {
        format!("{secs:.3} s behind")
    }
}

impl CallProof {
    /// Checks skew and signature (not the nonce; see [`NonceCache`]).
    pub fn verify(
        &self,
        signature: &Signature,
        key: &VerifyingKey,
        now_ms: i64,
        max_skew_ms: i64,
    ) -> Result<(), AuthError> {
        let skew_ms = self.timestamp_ms.saturating_sub(now_ms);
        if skew_ms.unsigned_abs() > max_skew_ms.unsigned_abs() {
            return Err(AuthError::Skew {
                caller: self.caller.clone(),
                skew_ms,
                max_ms: max_skew_ms,
            });
        }
        key.verify_strict(&self.digest(), signature)
            .map_err(|_| AuthError::BadSignature {
                caller: self.caller.clone(),
            })
    }
}

/// Remembers nonces for as long as their timestamps could still pass the skew check, so a
/// replay inside the window is refused and memory stays bounded.
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: HashMap<[u8; 16], i64>,
    order: VecDeque<([u8; 16], i64)>,
}

impl NonceCache {
    /// Records a nonce; false if it was already there. Forgets nonces older than
    /// `now_ms − 2·max_skew_ms` (their calls fail the skew check anyway).
    pub fn insert(
        &mut self,
        nonce: [u8; 16],
        timestamp_ms: i64,
        now_ms: i64,
        max_skew_ms: i64,
    ) -> bool {
        let horizon = now_ms - 2 * max_skew_ms;
        while let Some(&(n, t)) = self.order.front() {
            if t >= horizon {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&n);
        }
        if self.seen.contains_key(&nonce) {
            return false;
        }
        self.seen.insert(nonce, timestamp_ms);
        self.order.push_back((nonce, timestamp_ms.max(now_ms)));
        true
    }

    /// The nonces remembered with their calls' timestamps (to keep them across a restart).
    pub fn entries(&self) -> impl Iterator<Item = ([u8; 16], i64)> + '_ {
        self.seen.iter().map(|(n, t)| (*n, *t))
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;

    #[test]
    fn a_signed_call_verifies_and_tampering_fails() {
        let key = generate().unwrap();
        let p = CallProof::new(
            "/yosegi.v1.PartyService/NextAssignment",
            "plant-a",
            10_000,
            body_sha256(b"x"),
        );
        let sig = p.sign(&key);
        p.verify(&sig, &key.verifying_key(), 10_500, 1_000).unwrap();
        let other = CallProof {
            method: "/yosegi.v1.OperatorService/RevokeParty".into(),
            ..p.clone()
        };
        assert!(matches!(
            other.verify(&sig, &key.verifying_key(), 10_500, 1_000),
            Err(AuthError::BadSignature { .. })
        ));
        // A changed body fails too.
        let other = CallProof {
            body: body_sha256(b"y"),
            ..p.clone()
        };
        assert!(matches!(
            other.verify(&sig, &key.verifying_key(), 10_500, 1_000),
            Err(AuthError::BadSignature { .. })
        ));
        let e = p
            .verify(&sig, &key.verifying_key(), 12_000, 1_000)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "clock skew: the call of plant-a is stamped 2.000 s behind the coordinator's clock; at most 1 s either way is allowed (synchronise the clocks, e.g. with NTP)"
        );
        // Extreme timestamps are refused, not an arithmetic overflow.
        for ts in [i64::MIN, i64::MAX] {
            let p = CallProof::new("/m", "plant-a", ts, [0; 32]);
            let sig = p.sign(&key);
            assert!(matches!(
                p.verify(&sig, &key.verifying_key(), 10_500, 1_000),
                Err(AuthError::Skew { .. })
            ));
        }
    }

    /// The vector in docs/PROTOCOL.md ("Call authentication"): another implementation checks
    /// its proofs against it.
    #[test]
    fn the_documented_call_proof_vector() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let p = CallProof {
            method: "/yosegi.v1.OperatorService/EnrollParty".into(),
            caller: OPERATOR.into(),
            timestamp_ms: 1_767_225_600_000,
            nonce: [0xab; 16],
            body: body_sha256(b"\x0a\x07plant-a"),
        };
        assert_eq!(
            hex::encode(p.body),
            "be06fbf30e02c588e7562622fd23ab5efefe82bea58d57dcca2a3df4a496bf2a"
        );
        assert_eq!(
            hex::encode(p.digest()),
            "ecd8d52cee0c7b9ffb76ebb0b23ad20d7de09848cb63582aeaa8262ebf45c5ef"
        );
        assert_eq!(
            hex::encode(p.sign(&key).to_bytes()),
            "cee66271d33dbcc76fa8861ed703fa5f111de027fa158aad5b2b39659783259c8c6805f654977bd7dafbe7e7d1c5022f42ccad307e3dba5b82ed5f7b1539dc09"
        );
    }

    #[test]
    fn nonces_are_refused_twice_and_forgotten_later() {
        let mut c = NonceCache::default();
        assert!(c.insert([1; 16], 0, 0, 100));
        assert!(!c.insert([1; 16], 0, 50, 100));
        assert!(c.insert([2; 16], 50, 50, 100));
        assert!(c.insert([3; 16], 1_000, 1_000, 100));
        assert_eq!(c.len(), 1, "old nonces are pruned");
    }
}
