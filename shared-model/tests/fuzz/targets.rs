//! The fuzz targets and their oracles. Beyond "never panics", each target checks what is
//! decidable: an accepted blob round-trips and has a finite, usable model; a blob cannot be
//! accepted in two roles or two layouts; an edit the decoder checks must be refused; a
//! verified envelope or manifest is exactly the signed one; an accepted CSV or spec is
//! well-formed (and a spec survives its own `to_toml`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use shared_model::blob::{self, BlobLimits, BlobMeta, BlobRole};
use shared_model::ids::{ModelVersion, TaskId};
use shared_model::manifest::{MANIFEST_FORMAT, Manifest, ManifestError, SignedManifest};
use shared_model::model::{Model, stage_spec};
use shared_model::network::CpuBackend;
use shared_model::spec::ModelSpec;
use shared_model::update::{VerifyError, verify};
use shared_model::weights::Weights;

use crate::fixtures::{self, UpdateContext};
use crate::mutate::{mutate_blob, mutate_bytes, random_bytes};
use crate::run;

/// What a generated blob must do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expect {
    /// An edit every strict decoder must refuse.
    Refused,
    /// Anything but a panic (or another oracle's violation).
    Any,
}

/// Random bytes (half with a plausible length prefix), a structure-aware edit, or generic
/// mutations of a corpus blob (a pure truncation must be refused).
pub fn blob_input(rng: &mut ChaCha8Rng, corpus: &[Vec<u8>]) -> (Vec<u8>, Expect) {
    let source = &corpus[rng.random_range(0..corpus.len())];
    match rng.random_range(0..20) {
        0..=2 => {
            let mut v = random_bytes(rng, 512);
            if rng.random_bool(0.5) && v.len() >= 8 {
                let n = rng.random_range(0..v.len() as u64);
                v[..8].copy_from_slice(&n.to_le_bytes());
            }
            (v, Expect::Any)
        }
        3..=11 => {
            let (v, must_fail) = mutate_blob(rng, source);
            let expect = if must_fail {
                Expect::Refused
            } else {
                Expect::Any
            };
            (v, expect)
        }
        _ => {
            let mut v = source.clone();
            mutate_bytes(rng, &mut v, corpus);
            let truncated = v.len() < source.len() && source.starts_with(&v);
            let expect = if truncated {
                Expect::Refused
            } else {
                Expect::Any
            };
            (v, expect)
        }
    }
}

fn round_trips(w: &Weights, spec: &ModelSpec, role: BlobRole, layout: &ModelSpec) -> bool {
    let meta = BlobMeta::new(spec, role);
    blob::decode_as(&blob::encode(w, &meta), layout, spec, role).as_ref() == Ok(w)
}

/// Every blob decoder on one input: single networks in each role and layout, composite
/// models, tiny limits.
pub fn check_blob_decoders(bytes: &[u8], expect: &Expect) -> Result<(), String> {
    let spec = fixtures::spec();
    let stage = stage_spec(&spec, 1);
    let tiny = BlobLimits {
        max_bytes: 64,
        max_header_bytes: 64,
    };
    if blob::decode_limited(bytes, &spec, BlobRole::Update, tiny).is_ok() {
        return Err("accepted a blob over a 64-byte limit".into());
    }
    let mut accepted = 0;
    for role in [BlobRole::Initial, BlobRole::Update, BlobRole::Merged] {
        for layout in [&spec, &stage] {
            if let Ok(w) = blob::decode_as(bytes, layout, &spec, role) {
                accepted += 1;
                if !round_trips(&w, &spec, role, layout) {
                    return Err(format!("decoded {role} weights do not round-trip"));
                }
            }
        }
        if let Ok(w) = blob::decode(bytes, &spec, role)
            && !round_trips(&w, &spec, role, &spec)
        {
            return Err(format!("decode({role}) result does not round-trip"));
        }
        if let Ok(model) = Model::decode(bytes, &spec, role) {
            accepted += 1;
            check_model(&model, &spec, role)?;
        }
    }
    // A single network is also a model of kind `single`: it may count twice, nothing more.
    if accepted > 2 {
        return Err(format!("accepted in {accepted} roles or layouts"));
    }
    if *expect == Expect::Refused && accepted > 0 {
        return Err("accepted an edit the decoder must refuse".into());
    }
    Ok(())
}

fn check_model(model: &Model, spec: &ModelSpec, role: BlobRole) -> Result<(), String> {
    let again = Model::decode(&model.encode(spec, role), spec, role);
    if again.as_ref() != Ok(model) {
        return Err(format!(
            "decoded {} model does not round-trip",
            model.kind()
        ));
    }
    if let Model::Ensemble(members) = model {
        let total: f64 = members.iter().map(|m| m.weight).sum();
        if !(total.is_finite() && total > 0.0) {
            return Err(format!(
                "ensemble accepted with member weights summing to {total}"
            ));
        }
    }
    let rows = [0.5f32, -1.0, 2.0, 3.0, 0.0, -4.0];
    let p = model.predict(spec, &rows, CpuBackend::default());
    if p.len() != 2 || p.iter().any(|v| *v < 0.0 || *v > 1.0) {
        return Err(format!("binary model predicts {p:?} for two rows"));
    }
    Ok(())
}

#[test]
fn fuzz_single_network_blobs() {
    let corpus = vec![fixtures::update_blob(), fixtures::stage_blob()];
    run("blob", |rng| blob_input(rng, &corpus), check_blob_decoders);
}

#[test]
fn fuzz_composite_model_blobs() {
    let spec = fixtures::spec();
    let corpus: Vec<Vec<u8>> = fixtures::models()
        .iter()
        .map(|m| m.encode(&spec, BlobRole::Merged))
        .collect();
    run("model", |rng| blob_input(rng, &corpus), check_blob_decoders);
}

/// Which part of an upload a case changes.
#[derive(Debug)]
pub enum UploadCase {
    /// The envelope's JSON; the blob is the signed one.
    Envelope,
    /// The blob, with an envelope honestly signed for it.
    Resigned(Expect),
    /// The blob, under the envelope signed for the original blob.
    Replaced,
}

fn odd_value(rng: &mut ChaCha8Rng) -> Value {
    let values = [
        json!(""),
        json!("plant-b"),
        json!("a".repeat(65)),
        json!("-a"),
        json!("00".repeat(32)),
        json!("0".repeat(63)),
        json!("zz".repeat(32)),
        json!("ff".repeat(64)),
        json!(format!("01{}", "00".repeat(31))),
        json!(u64::MAX),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(4),
        Value::Null,
        json!([]),
    ];
    values[rng.random_range(0..values.len())].clone()
}

/// A JSON-aware edit: one field of the envelope (or of its header) set to an odd value, or
/// one hex digit of the key or signature changed.
fn mutate_envelope(rng: &mut ChaCha8Rng, json: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(json).unwrap();
    let header = [
        "task",
        "spec_id",
        "round",
        "step",
        "base_model",
        "party",
        "blob_sha256",
        "blob_len",
        "sample_count",
    ];
    match rng.random_range(0..3) {
        0 => {
            let f = header[rng.random_range(0..header.len())];
            v["header"][f] = odd_value(rng);
        }
        1 => {
            let f = ["signer", "signature"][rng.random_range(0..2)];
            if rng.random_bool(0.5) {
                v[f] = odd_value(rng);
            } else {
                let mut s = v[f].as_str().unwrap().to_string().into_bytes();
                let i = rng.random_range(0..s.len());
                s[i] = b"0123456789abcdefABCDEFg"[rng.random_range(0..23)];
                v[f] = json!(String::from_utf8(s).unwrap());
            }
        }
        _ => {
            let o = v.as_object_mut().unwrap();
            let f = ["header", "signer", "signature"][rng.random_range(0..3)];
            o.remove(f);
        }
    }
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn fuzz_signed_updates() {
    let ctx = UpdateContext::new();
    let blob = fixtures::update_blob();
    let signed = ctx.sign(&blob);
    let json = fixtures::envelope_json(&signed);
    let key = fixtures::party_key().verifying_key();
    let blobs = vec![blob.clone(), fixtures::stage_blob()];
    let envelopes = vec![json.clone()];
    run(
        "update",
        |rng| match rng.random_range(0..10) {
            0..=3 => {
                let v = if rng.random_bool(0.5) {
                    mutate_envelope(rng, &json)
                } else {
                    let mut v = json.clone();
                    mutate_bytes(rng, &mut v, &envelopes);
                    v
                };
                (v, UploadCase::Envelope)
            }
            4..=7 => {
                let (v, expect) = blob_input(rng, &blobs);
                (v, UploadCase::Resigned(expect))
            }
            _ => (blob_input(rng, &blobs).0, UploadCase::Replaced),
        },
        |bytes, case| match case {
            UploadCase::Envelope => {
                let Some(env) = fixtures::parse_envelope(bytes) else {
                    return Ok(());
                };
                match verify(&env, &blob, &key, &ctx.expect()) {
                    Ok(_) if env != signed => Err(format!("verified an altered envelope {env:?}")),
                    _ => Ok(()),
                }
            }
            UploadCase::Resigned(expect) => {
                let env = ctx.sign(bytes);
                let verified = verify(&env, bytes, &key, &ctx.expect());
                let max = ctx.spec.max_blob_bytes();
                if bytes.len() as u64 > max {
                    return match verified {
                        Err(VerifyError::TooLarge { .. }) => Ok(()),
                        other => Err(format!("{} bytes over the cap gave {other:?}", bytes.len())),
                    };
                }
                let decoded = blob::decode(bytes, &ctx.spec, BlobRole::Update);
                match (&verified, &decoded) {
                    (Ok(v), Ok(w)) if v.weights() == w => {}
                    // the same kind of refusal (messages may differ: NaN ≠ NaN, and
                    // safetensors names one of several tensors sharing an offset)
                    (Err(VerifyError::Blob { source, .. }), Err(e))
                        if std::mem::discriminant(source) == std::mem::discriminant(e) => {}
                    _ => return Err(format!("verify {verified:?} but decode {decoded:?}")),
                }
                if *expect == Expect::Refused && verified.is_ok() {
                    return Err("verified a blob edit that must be refused".into());
                }
                Ok(())
            }
            UploadCase::Replaced => match verify(&signed, bytes, &key, &ctx.expect()) {
                Ok(_) if bytes != blob.as_slice() => {
                    Err("verified other bytes than the signed blob".into())
                }
                _ => Ok(()),
            },
        },
    );
}

/// Which part of a signed manifest a case changes.
#[derive(Debug)]
pub enum ManifestCase {
    /// The manifest's JSON, signed again by the coordinator (reaches the parser).
    Resigned,
    /// The manifest's JSON under the original signature.
    Bytes,
    /// The signature (the input) of the original JSON.
    Signature,
}

fn mutate_manifest(rng: &mut ChaCha8Rng, json: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    if rng.random_bool(0.5) {
        let mut v = json.to_vec();
        mutate_bytes(rng, &mut v, corpus);
        return v;
    }
    let mut v: Value = serde_json::from_slice(json).unwrap();
    let fields = [
        "format",
        "task",
        "spec_id",
        "version",
        "round",
        "strategy",
        "blob_sha256",
        "blob_len",
        "contributors",
        "metrics",
        "created_unix_ms",
        "expires_unix_ms",
        "unknown",
    ];
    let f = fields[rng.random_range(0..fields.len())];
    let odd = [
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(-1),
        json!(1e308),
        json!(MANIFEST_FORMAT),
        json!("wdbc"),
        json!({"kind": "binary"}),
        json!({"kind": "regression", "count": 1, "mse": 1e308, "mae": 0, "r2": -1e308}),
        json!([{"party": "plant-a", "update_sha256": "00", "sample_count": 1}]),
        json!([]),
        Value::Null,
    ];
    v[f] = odd[rng.random_range(0..odd.len())].clone();
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn fuzz_signed_manifests() {
    let key = fixtures::coordinator_key();
    let pinned = key.verifying_key();
    let (manifest, blob) = fixtures::manifest();
    let signed = manifest.sign(&key);
    assert_eq!(
        fixtures::sign_manifest_bytes(&signed.bytes, &key),
        signed,
        "the harness signs manifests as the coordinator does"
    );
    let corpus = vec![signed.bytes.clone()];
    let task = TaskId::new("wdbc").unwrap();
    run(
        "manifest",
        |rng| match rng.random_range(0..4) {
            0 | 1 => (
                mutate_manifest(rng, &signed.bytes, &corpus),
                ManifestCase::Resigned,
            ),
            2 => (
                mutate_manifest(rng, &signed.bytes, &corpus),
                ManifestCase::Bytes,
            ),
            _ => {
                let mut sig = signed.signature.to_bytes().to_vec();
                if rng.random_bool(0.2) {
                    sig = random_bytes(rng, 64);
                } else {
                    for _ in 0..rng.random_range(1..=3) {
                        let i = rng.random_range(0..64);
                        sig[i] ^= 1 << rng.random_range(0..8);
                    }
                }
                (sig, ManifestCase::Signature)
            }
        },
        |bytes, case| {
            let candidate = match case {
                ManifestCase::Resigned => fixtures::sign_manifest_bytes(bytes, &key),
                ManifestCase::Bytes => SignedManifest {
                    bytes: bytes.to_vec(),
                    signature: signed.signature,
                },
                ManifestCase::Signature => {
                    let Ok(sig) = <[u8; 64]>::try_from(bytes) else {
                        return Ok(()); // the wire conversion refuses other lengths
                    };
                    SignedManifest {
                        bytes: signed.bytes.clone(),
                        signature: ed25519_dalek::Signature::from_bytes(&sig),
                    }
                }
            };
            let result = candidate.verify(&pinned, 1_500);
            match (case, &result) {
                (ManifestCase::Resigned, Ok(m)) => {
                    if m.format != MANIFEST_FORMAT || m.expires_unix_ms < 1_500 {
                        return Err(format!("accepted {m:?}"));
                    }
                    let _ = m.check_for(&task, manifest.spec_id, Some(ModelVersion(4)));
                    let _ = m.check_blob(&blob);
                    let again: Result<Manifest, _> =
                        serde_json::from_slice(&serde_json::to_vec(m).unwrap());
                    if let Err(e) = again {
                        return Err(format!("an accepted manifest does not re-parse: {e}"));
                    }
                    Ok(())
                }
                (ManifestCase::Bytes, Ok(_)) if bytes != signed.bytes.as_slice() => {
                    Err("verified altered bytes under the original signature".into())
                }
                (ManifestCase::Signature, Ok(_)) if candidate.signature != signed.signature => {
                    Err("verified another signature".into())
                }
                (ManifestCase::Bytes | ManifestCase::Signature, Err(e))
                    if *e != ManifestError::BadSignature =>
                {
                    Err(format!("expected a bad signature, got {e}"))
                }
                _ => Ok(()),
            }
        },
    );
}
