//! Signed updates. A party signs, with its ed25519 key, a canonical digest of everything that
//! says what its blob is: task, spec id, round, step, the base model it started from, its own
//! name, the blob's sha256 and length, and how many rows it trained on.
//!
//! [`verify`] is the only way to obtain a [`VerifiedUpdate`], the only input aggregation
//! accepts. It checks, cheapest first: the declared length against the spec's cap and the
//! bytes received; every expectation (task, spec, round, step, base, party, samples > 0); that
//! the envelope names the party's enrolled key; the signature; the sha256 of the very bytes
//! received; and finally the strict safetensors decode against the spec. For blobs of 1 MiB
//! and more the hash and the decode run at once on two threads; a wrong hash is still the
//! error reported, and decoded weights are only returned when the hash matches.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256 as Sha256Hasher};

use crate::blob::{self, BlobError, BlobRole};
use crate::ids::{PartyId, RoundNo, Sha256, SpecId, StepNo, TaskId};
use crate::keys::fingerprint;
use crate::spec::ModelSpec;
use crate::weights::Weights;

/// Domain separation tag of the update digest.
const UPDATE_TAG: &[u8] = b"yosegi.v1.update\0";

/// What a party's signature covers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpdateHeader {
    /// The task.
    pub task: TaskId,
    /// The task's spec.
    pub spec_id: SpecId,
    /// The round.
    pub round: RoundNo,
    /// The step within the round (0 unless relay).
    pub step: StepNo,
    /// sha256 of the model blob training started from.
    pub base_model: Sha256,
    /// The party that trained.
    pub party: PartyId,
    /// sha256 of the update blob.
    pub blob_sha256: Sha256,
    /// Length of the update blob in bytes.
    pub blob_len: u64,
    /// Rows trained on (the FedAvg weight).
    pub sample_count: u64,
    /// The fewest parties, this one included, whose updates must be merged with this one (its
    /// site policy's `min_other_parties` + 1); 0 = no requirement. Signed, so the coordinator
    /// cannot drop it: an update whose requirement the merged set does not meet is left out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_cohort: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl UpdateHeader {
    /// The canonical digest: sha256 over a domain tag and every field in a fixed order,
    /// strings length-prefixed, integers little-endian u64, digests raw.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256Hasher::new();
        h.update(UPDATE_TAG);
        let mut text = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        text(self.task.as_str());
        text(self.party.as_str());
        h.update(self.spec_id.0.as_bytes());
        h.update(self.round.0.to_le_bytes());
        h.update(self.step.0.to_le_bytes());
        h.update(self.base_model.as_bytes());
        h.update(self.blob_sha256.as_bytes());
        h.update(self.blob_len.to_le_bytes());
        h.update(self.sample_count.to_le_bytes());
        // Appended only when set, so the digest of an update without a requirement is what it
        // was before the field existed.
        if self.min_cohort > 0 {
            h.update(b"min_cohort");
            h.update(u64::from(self.min_cohort).to_le_bytes());
        }
        h.finalize().into()
    }
}

/// A header with the signer's public key and signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedUpdate {
    /// What is signed.
    pub header: UpdateHeader,
    /// The key that signed.
    pub signer: VerifyingKey,
    /// ed25519 signature over [`UpdateHeader::digest`].
    pub signature: Signature,
}

impl SignedUpdate {
    /// Signs a header.
    pub fn sign(header: UpdateHeader, key: &SigningKey) -> Self {
        let signature = key.sign(&header.digest());
        Self {
            header,
            signer: key.verifying_key(),
            signature,
        }
    }

    /// Builds the header for `blob` and signs it.
    #[allow(clippy::too_many_arguments)]
    pub fn for_blob(
        task: TaskId,
        spec_id: SpecId,
        round: RoundNo,
        step: StepNo,
        base_model: Sha256,
        party: PartyId,
        blob: &[u8],
        sample_count: u64,
        key: &SigningKey,
    ) -> Self {
        Self::sign(
            UpdateHeader {
                task,
                spec_id,
                round,
                step,
                base_model,
                party,
                blob_sha256: Sha256::of(blob),
                blob_len: blob.len() as u64,
                sample_count,
                min_cohort: 0,
            },
            key,
        )
    }

    /// The same envelope with a cohort requirement (see [`UpdateHeader::min_cohort`]),
    /// signed again.
    pub fn with_min_cohort(self, min_cohort: u32, key: &SigningKey) -> Self {
        Self::sign(
            UpdateHeader {
                min_cohort,
                ..self.header
            },
            key,
        )
    }
}

/// What the verifier expects of an update.
#[derive(Clone, Copy, Debug)]
pub struct Expectations<'a> {
    /// The task.
    pub task: &'a TaskId,
    /// The task's spec.
    pub spec: &'a ModelSpec,
    /// The open round.
    pub round: RoundNo,
    /// The expected step.
    pub step: StepNo,
    /// The model the round handed out.
    pub base_model: Sha256,
    /// The authenticated caller.
    pub party: &'a PartyId,
    /// Series Network stage the update is (0 otherwise): stage j ≥ 1 is a network over the
    /// features plus the previous stage's output ([`crate::model::stage_spec`]).
    pub stage: usize,
}

/// Why an update was rejected. Each variant is a distinct, readable reason.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VerifyError {
    /// The declared blob length is over the spec's cap.
    #[error("update of {party} declares {declared} bytes; the spec allows at most {max}")]
    TooLarge {
        /// The party.
        party: PartyId,
        /// Declared length.
        declared: u64,
        /// The cap.
        max: u64,
    },
    /// The bytes received are not as long as declared.
    #[error("update of {party} declares {declared} bytes but {received} arrived")]
    LengthMismatch {
        /// The party.
        party: PartyId,
        /// Declared length.
        declared: u64,
        /// Bytes received.
        received: u64,
    },
    /// A header field is not what the coordinator expects.
    #[error("update of {party}: {field} is {found}, expected {expected}")]
    Mismatch {
        /// The party.
        party: PartyId,
        /// Which field: task, spec id, round, step, base model, party.
        field: &'static str,
        /// Expected value.
        expected: String,
        /// Value in the envelope.
        found: String,
    },
    /// The update claims to have trained on nothing.
    #[error("update of {party} reports 0 training samples")]
    ZeroSamples {
        /// The party.
        party: PartyId,
    },
    /// The update claims more rows than any site can have (it would dominate a weighted mean).
    #[error("update of {party} reports {count} training samples; at most {max} are plausible", max = crate::stats::MAX_ROWS)]
    TooManySamples {
        /// The party.
        party: PartyId,
        /// The count claimed.
        count: u64,
    },
    /// The envelope is signed by another key than the party's enrolled one.
    #[error(
        "update of {party} is signed by key {found}, but {party} is enrolled with key {enrolled}"
    )]
    ForeignKey {
        /// The party.
        party: PartyId,
        /// Fingerprint of the signer.
        found: String,
        /// Fingerprint of the enrolled key.
        enrolled: String,
    },
    /// The signature does not match the header (a field was changed after signing).
    #[error("update of {party}: signature does not match the header (altered after signing)")]
    BadSignature {
        /// The party.
        party: PartyId,
    },
    /// The bytes do not hash to the signed digest (altered in transit or storage).
    #[error("update of {party}: blob sha256 is {computed}, but the signed header says {declared}")]
    HashMismatch {
        /// The party.
        party: PartyId,
        /// Signed digest.
        declared: Sha256,
        /// Digest of the bytes received.
        computed: Sha256,
    },
    /// The blob does not decode against the spec.
    #[error("update of {party}: {source}")]
    Blob {
        /// The party.
        party: PartyId,
        /// Why the blob was refused.
        source: BlobError,
    },
}

impl VerifyError {
    /// A short, stable name of the failed check, for metrics and logs (`signature`, `hash`…).
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::TooLarge { .. } => "too_large",
            VerifyError::LengthMismatch { .. } => "length",
            VerifyError::Mismatch { field, .. } => match *field {
                "task" => "task",
                "spec id" => "spec",
                "round" => "round",
                "step" => "step",
                "base model" => "base_model",
                _ => "party",
            },
            VerifyError::ZeroSamples { .. } | VerifyError::TooManySamples { .. } => "samples",
            VerifyError::ForeignKey { .. } => "foreign_key",
            VerifyError::BadSignature { .. } => "signature",
            VerifyError::HashMismatch { .. } => "hash",
            VerifyError::Blob { .. } => "blob",
        }
    }
}

/// An update that passed every check. Only [`verify`] makes one.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedUpdate {
    header: UpdateHeader,
    weights: Weights,
}

impl VerifiedUpdate {
    /// The signed header.
    pub fn header(&self) -> &UpdateHeader {
        &self.header
    }

    /// The decoded model.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The party that trained it.
    pub fn party(&self) -> &PartyId {
        &self.header.party
    }

    /// Rows trained on.
    pub fn sample_count(&self) -> u64 {
        self.header.sample_count
    }
}

fn mismatch(
    party: &PartyId,
    field: &'static str,
    expected: impl ToString,
    found: impl ToString,
) -> VerifyError {
    VerifyError::Mismatch {
        party: party.clone(),
        field,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// Blobs at least this large are hashed on a second thread while this one decodes them
/// (issue #7: sha256 and the strict decode each take about half of `verify`; see
/// docs/BENCHMARKS.md). Smaller blobs are hashed first, then decoded, on the calling thread.
const PARALLEL_HASH_BYTES: usize = 1 << 20;

/// The sha256 of `bytes` (on a scoped thread) and `decode()` (on this one), at once. If no
/// thread can be started, hashes here after decoding.
fn hash_while_decoding(
    bytes: &[u8],
    decode: &impl Fn() -> Result<Weights, BlobError>,
) -> (Sha256, Result<Weights, BlobError>) {
    std::thread::scope(|s| {
        let hasher = std::thread::Builder::new()
            .name("verify-sha256".into())
            .spawn_scoped(s, || Sha256::of(bytes));
        let decoded = decode();
        let computed = match hasher {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => Sha256::of(bytes),
        };
        (computed, decoded)
    })
}

/// Verifies an envelope and the bytes received with it against the party's enrolled key and
/// the coordinator's expectations.
pub fn verify(
    envelope: &SignedUpdate,
    bytes: &[u8],
    enrolled_key: &VerifyingKey,
    expect: &Expectations<'_>,
) -> Result<VerifiedUpdate, VerifyError> {
    let h = &envelope.header;
    let party = expect.party;
    let max = crate::model::stage_spec(expect.spec, expect.stage).max_blob_bytes();
    if h.blob_len > max {
        return Err(VerifyError::TooLarge {
            party: party.clone(),
            declared: h.blob_len,
            max,
        });
    }
    if bytes.len() as u64 != h.blob_len {
        return Err(VerifyError::LengthMismatch {
            party: party.clone(),
            declared: h.blob_len,
            received: bytes.len() as u64,
        });
    }
    if h.party != *expect.party {
        return Err(mismatch(party, "party", expect.party, &h.party));
    }
    if h.task != *expect.task {
        return Err(mismatch(party, "task", expect.task, &h.task));
    }
    let spec_id = expect.spec.id();
    if h.spec_id != spec_id {
        return Err(mismatch(party, "spec id", spec_id, h.spec_id));
    }
    if h.round != expect.round {
        return Err(mismatch(party, "round", expect.round, h.round));
    }
    if h.step != expect.step {
        return Err(mismatch(party, "step", expect.step, h.step));
    }
    if h.base_model != expect.base_model {
        return Err(mismatch(
            party,
            "base model",
            expect.base_model,
            h.base_model,
        ));
    }
    if h.sample_count == 0 {
        return Err(VerifyError::ZeroSamples {
            party: party.clone(),
        });
    }
    if h.sample_count > crate::stats::MAX_ROWS {
        return Err(VerifyError::TooManySamples {
            party: party.clone(),
            count: h.sample_count,
        });
    }
    if envelope.signer != *enrolled_key {
        return Err(VerifyError::ForeignKey {
            party: party.clone(),
            found: fingerprint(&envelope.signer),
            enrolled: fingerprint(enrolled_key),
        });
    }
    enrolled_key
        .verify_strict(&h.digest(), &envelope.signature)
        .map_err(|_| VerifyError::BadSignature {
            party: party.clone(),
        })?;
    let layout = crate::model::stage_spec(expect.spec, expect.stage);
    let decode = || blob::decode_as(bytes, &layout, expect.spec, BlobRole::Update);
    // Small blobs keep the strict order: nothing is decoded unless the hash matches.
    let (computed, decoded) = if bytes.len() >= PARALLEL_HASH_BYTES {
        let (computed, decoded) = hash_while_decoding(bytes, &decode);
        (computed, Some(decoded))
    } else {
        (Sha256::of(bytes), None)
    };
    // A wrong hash is the reason whatever the decode found (it never reaches the caller).
    if computed != h.blob_sha256 {
        return Err(VerifyError::HashMismatch {
            party: party.clone(),
            declared: h.blob_sha256,
            computed,
        });
    }
    let weights = decoded
        .unwrap_or_else(decode)
        .map_err(|source| VerifyError::Blob {
            party: party.clone(),
            source,
        })?;
    Ok(VerifiedUpdate {
        header: h.clone(),
        weights,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::blob::BlobMeta;
    use crate::keys::generate;
    use crate::spec::tests::SMALL;
    use crate::stats::Normalization;

    pub(crate) struct Fixture {
        pub spec: ModelSpec,
        pub key: SigningKey,
        pub task: TaskId,
        pub party: PartyId,
        pub base: Sha256,
    }

    impl Fixture {
        pub fn new() -> Self {
            Self {
                spec: ModelSpec::parse(SMALL, "<t>").unwrap(),
                key: generate().unwrap(),
                task: TaskId::new("wdbc").unwrap(),
                party: PartyId::new("plant-a").unwrap(),
                base: Sha256::of(b"base model"),
            }
        }

        pub fn blob(&self, weights: &Weights) -> Vec<u8> {
            blob::encode(weights, &BlobMeta::new(&self.spec, BlobRole::Update))
        }

        pub fn sign(&self, bytes: &[u8], samples: u64) -> SignedUpdate {
            SignedUpdate::for_blob(
                self.task.clone(),
                self.spec.id(),
                RoundNo(3),
                StepNo(0),
                self.base,
                self.party.clone(),
                bytes,
                samples,
                &self.key,
            )
        }

        pub fn expect(&self) -> Expectations<'_> {
            Expectations {
                task: &self.task,
                spec: &self.spec,
                round: RoundNo(3),
                step: StepNo(0),
                base_model: self.base,
                party: &self.party,
                stage: 0,
            }
        }

        /// A verified update of `weights` (the only way tests get one, too).
        pub fn verified(&self, weights: &Weights, samples: u64) -> VerifiedUpdate {
            let bytes = self.blob(weights);
            let env = self.sign(&bytes, samples);
            verify(&env, &bytes, &self.key.verifying_key(), &self.expect()).unwrap()
        }
    }

    fn weights(f: &Fixture) -> Weights {
        Weights::initial(&f.spec, &Normalization::identity(3))
    }

    #[test]
    fn a_good_update_verifies() {
        let f = Fixture::new();
        let w = weights(&f);
        let v = f.verified(&w, 100);
        assert_eq!(v.weights(), &w);
        assert_eq!(v.sample_count(), 100);
        assert_eq!(v.party().as_str(), "plant-a");
    }

    #[test]
    fn each_tampering_fails_with_a_distinct_error() {
        let f = Fixture::new();
        let bytes = f.blob(&weights(&f));
        let env = f.sign(&bytes, 100);
        let key = f.key.verifying_key();
        let check =
            |env: &SignedUpdate, bytes: &[u8]| verify(env, bytes, &key, &f.expect()).unwrap_err();

        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let e_flip = check(&env, &flipped);
        assert!(
            matches!(e_flip, VerifyError::HashMismatch { .. }),
            "{e_flip}"
        );

        let other = generate().unwrap();
        let e_key = verify(
            &f.sign(&bytes, 100),
            &bytes,
            &other.verifying_key(),
            &f.expect(),
        )
        .unwrap_err();
        assert!(matches!(e_key, VerifyError::ForeignKey { .. }), "{e_key}");
        // a foreign signer that claims the enrolled key in the envelope
        let mut forged = SignedUpdate::sign(env.header.clone(), &other);
        forged.signer = key;
        assert!(matches!(
            check(&forged, &bytes),
            VerifyError::BadSignature { .. }
        ));

        let mut round = env.clone();
        round.header.round = RoundNo(4);
        let e_round = check(&round, &bytes);
        assert!(
            matches!(&e_round, VerifyError::Mismatch { field: "round", .. }),
            "{e_round}"
        );
        assert_eq!(
            e_round.to_string(),
            "update of plant-a: round is 4, expected 3"
        );

        let mut base = env.clone();
        base.header.base_model = Sha256::of(b"another model");
        let e_base = check(&base, &bytes);
        assert!(
            matches!(
                e_base,
                VerifyError::Mismatch {
                    field: "base model",
                    ..
                }
            ),
            "{e_base}"
        );

        let mut samples = env.clone();
        samples.header.sample_count = 1_000_000;
        let e_samples = check(&samples, &bytes);
        assert!(
            matches!(e_samples, VerifyError::BadSignature { .. }),
            "{e_samples}"
        );

        let messages = [&e_flip, &e_key, &e_round, &e_base, &e_samples].map(|e| e.to_string());
        let distinct: std::collections::HashSet<_> = messages.iter().collect();
        assert_eq!(distinct.len(), 5, "{messages:?}");
    }

    #[test]
    fn other_expectations_and_sizes() {
        let f = Fixture::new();
        let bytes = f.blob(&weights(&f));
        let key = f.key.verifying_key();
        let env = f.sign(&bytes, 100);
        let e = verify(&env, &bytes[..bytes.len() - 1], &key, &f.expect()).unwrap_err();
        assert!(matches!(e, VerifyError::LengthMismatch { .. }), "{e}");
        let zero = f.sign(&bytes, 0);
        assert!(matches!(
            verify(&zero, &bytes, &key, &f.expect()),
            Err(VerifyError::ZeroSamples { .. })
        ));
        // A signed but absurd sample count would dominate (or overflow) a weighted mean.
        let absurd = f.sign(&bytes, u64::MAX);
        assert!(matches!(
            verify(&absurd, &bytes, &key, &f.expect()),
            Err(VerifyError::TooManySamples {
                count: u64::MAX,
                ..
            })
        ));
        assert!(
            verify(
                &f.sign(&bytes, crate::stats::MAX_ROWS),
                &bytes,
                &key,
                &f.expect()
            )
            .is_ok()
        );
        let mut big = env.clone();
        big.header.blob_len = u64::MAX;
        assert!(matches!(
            verify(&big, &bytes, &key, &f.expect()),
            Err(VerifyError::TooLarge { .. })
        ));
        let other_party = PartyId::new("plant-b").unwrap();
        let e = verify(
            &env,
            &bytes,
            &key,
            &Expectations {
                party: &other_party,
                ..f.expect()
            },
        )
        .unwrap_err();
        assert!(
            matches!(e, VerifyError::Mismatch { field: "party", .. }),
            "{e}"
        );
        let other_step = Expectations {
            step: StepNo(1),
            ..f.expect()
        };
        assert!(matches!(
            verify(&env, &bytes, &key, &other_step),
            Err(VerifyError::Mismatch { field: "step", .. })
        ));
    }

    #[test]
    fn nan_weights_are_refused_after_the_signature_checks() {
        let f = Fixture::new();
        let w = weights(&f);
        let mut t = w.tensors().to_vec();
        t[2].data[0] = f32::NAN;
        let bytes = blob::encode_tensors(&t, &BlobMeta::new(&f.spec, BlobRole::Update));
        let env = f.sign(&bytes, 10);
        let e = verify(&env, &bytes, &f.key.verifying_key(), &f.expect()).unwrap_err();
        assert!(
            e.to_string()
                .contains("tensor `layers.0.weight`: value NaN at index 0 is not finite"),
            "{e}"
        );
    }

    /// Blobs ≥ 1 MiB are hashed while they decode: the result is the same, and a tampered
    /// blob is a hash mismatch even when its bytes no longer decode either.
    #[test]
    fn large_blobs_hash_while_decoding_with_the_same_outcomes() {
        let mut f = Fixture::new();
        f.spec = ModelSpec::parse(
            &crate::spec::tests::SMALL.replace("hidden = [4]", "hidden = [512, 512]"),
            "<t>",
        )
        .unwrap();
        let w = weights(&f);
        let bytes = f.blob(&w);
        assert!(bytes.len() >= PARALLEL_HASH_BYTES, "{}", bytes.len());
        let env = f.sign(&bytes, 7);
        let key = f.key.verifying_key();
        assert_eq!(
            verify(&env, &bytes, &key, &f.expect()).unwrap().weights(),
            &w
        );
        let mut data_flip = bytes.clone();
        *data_flip.last_mut().unwrap() ^= 1;
        let mut header_flip = bytes.clone();
        header_flip[9] ^= 0x55;
        for tampered in [data_flip, header_flip] {
            let e = verify(&env, &tampered, &key, &f.expect()).unwrap_err();
            assert!(matches!(e, VerifyError::HashMismatch { .. }), "{e}");
        }
        let mut t = w.tensors().to_vec();
        t[2].data[5] = f32::INFINITY;
        let bad = blob::encode_tensors(&t, &BlobMeta::new(&f.spec, BlobRole::Update));
        let e = verify(&f.sign(&bad, 7), &bad, &key, &f.expect()).unwrap_err();
        assert!(matches!(e, VerifyError::Blob { .. }), "{e}");
    }

    #[test]
    fn digest_covers_every_field() {
        let f = Fixture::new();
        let h = f.sign(b"x", 1).header;
        let base = h.digest();
        let variants = [
            UpdateHeader {
                task: TaskId::new("other").unwrap(),
                ..h.clone()
            },
            UpdateHeader {
                spec_id: SpecId(Sha256::of(b"s")),
                ..h.clone()
            },
            UpdateHeader {
                round: RoundNo(9),
                ..h.clone()
            },
            UpdateHeader {
                step: StepNo(9),
                ..h.clone()
            },
            UpdateHeader {
                base_model: Sha256::of(b"b"),
                ..h.clone()
            },
            UpdateHeader {
                party: PartyId::new("p2").unwrap(),
                ..h.clone()
            },
            UpdateHeader {
                blob_sha256: Sha256::of(b"y"),
                ..h.clone()
            },
            UpdateHeader {
                blob_len: 2,
                ..h.clone()
            },
            UpdateHeader {
                sample_count: 2,
                ..h.clone()
            },
            UpdateHeader {
                min_cohort: 3,
                ..h.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.digest(), base, "{v:?}");
        }
    }
}

#[cfg(test)]
mod known_answers {
    use super::*;

    /// The spec id and the update digest are what plant policies approve and signatures cover:
    /// a silent change of either encoding must fail here (docs/PROTOCOL.md has the same vectors).
    #[test]
    fn the_spec_id_and_the_update_digest_are_pinned() {
        let spec =
            ModelSpec::parse(include_str!("../../data/wdbc.toml"), "data/wdbc.toml").unwrap();
        assert_eq!(
            spec.id().to_string(),
            "27ffce1f5720f153172e7da34b2c6a6c433c0eae4b12343c0660f8e56eb74286"
        );
        let header = UpdateHeader {
            task: TaskId::new("wdbc").unwrap(),
            spec_id: spec.id(),
            round: RoundNo(3),
            step: StepNo(1),
            base_model: Sha256::from_bytes([0x11; 32]),
            party: PartyId::new("plant-a").unwrap(),
            blob_sha256: Sha256::from_bytes([0x22; 32]),
            blob_len: 4242,
            sample_count: 106,
            min_cohort: 0,
        };
        assert_eq!(
            hex::encode(header.digest()),
            "8f883f062da3e18ece648df05c105ff8fa5d4914c13899d8d61b398cc49f602f"
        );
        let with_cohort = UpdateHeader {
            min_cohort: 3,
            ..header
        };
        assert_eq!(
            hex::encode(with_cohort.digest()),
            "1b1095ed2be5cd1066b76cd606392ce23b2572a321f0d22bb5a86d87fd68405f"
        );
    }
}
