//! The valid inputs mutations start from: specs, blobs of every model kind, a signed update
//! envelope as the coordinator stores it, a signed manifest, site CSVs. Deterministic keys
//! and weights, so every run fuzzes the same seeds.

use std::path::Path;

use serde::{Deserialize, Serialize};
use shared_model::blob::{self, BlobMeta, BlobRole};
use shared_model::data::Dataset;
use shared_model::ids::{ModelVersion, PartyId, RoundNo, Sha256, StepNo, TaskId};
use shared_model::manifest::{Contributor, MANIFEST_FORMAT, Manifest, SignedManifest};
use shared_model::model::{Member, Model, stage_spec};
use shared_model::network::CpuBackend;
use shared_model::spec::ModelSpec;
use shared_model::stats::Normalization;
use shared_model::update::{Expectations, SignedUpdate, UpdateHeader};
use shared_model::weights::Weights;
use shared_model::{SigningKey, VerifyingKey};

/// A three-feature binary task with one hidden layer.
pub const SMALL: &str = r#"
format = 1
name = "small"
[task]
kind = "binary"
target = "y"
features = ["a", "b", "c"]
[model]
hidden = [4]
activation = "relu"
dropout = 0.0
[training]
optimizer = "adam"
learning_rate = 0.01
local_epochs = 2
batch_size = 8
seed = 3
"#;

/// The spec every blob fixture follows.
pub fn spec() -> ModelSpec {
    ModelSpec::parse(SMALL, "<fuzz>").unwrap()
}

/// Spec texts: the small one, its multiclass, regression and privacy variants, and WDBC's.
pub fn spec_texts() -> Vec<String> {
    let wdbc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/wdbc.toml");
    vec![
        SMALL.to_string(),
        SMALL.replace("kind = \"binary\"", "kind = \"multiclass\"\nclasses = 3"),
        SMALL.replace("kind = \"binary\"", "kind = \"regression\""),
        format!(
            "{SMALL}weight_decay = 0.001\nfedprox_mu = 0.1\n[privacy]\nmembership_max_advantage = 0.25\n[privacy.dp]\nmode = \"local\"\nclip = 1.5\nnoise_multiplier = 0.8\n"
        ),
        std::fs::read_to_string(wdbc).unwrap(),
    ]
}

/// Network weights of `spec` with a non-trivial normalisation, shifted by `by`.
pub fn weights(spec: &ModelSpec, by: f32) -> Weights {
    let d = spec.input_width();
    let norm = Normalization {
        mean: (0..d).map(|i| i as f32 * 0.5).collect(),
        std: (0..d).map(|i| 1.0 + i as f32).collect(),
        target: None,
        vocabularies: Default::default(),
        medians: Default::default(),
    };
    Weights::initial(spec, &norm)
        .map_trainable(|t| t.data.iter().map(|v| v + by).collect())
        .unwrap()
}

/// A single, an ensemble and a series model of [`spec`].
pub fn models() -> Vec<Model> {
    let spec = spec();
    let w = weights(&spec, 0.0);
    vec![
        Model::Single(w.clone()),
        Model::Ensemble(vec![
            Member {
                party: "plant-a".into(),
                weight: 10.0,
                weights: w.clone(),
            },
            Member {
                party: "plant-b".into(),
                weight: 30.0,
                weights: weights(&spec, 0.25),
            },
        ]),
        Model::Series(vec![w, weights(&stage_spec(&spec, 1), -0.125)]),
    ]
}

/// An update blob of [`spec`] (one network).
pub fn update_blob() -> Vec<u8> {
    let spec = spec();
    blob::encode(
        &weights(&spec, 0.5),
        &BlobMeta::new(&spec, BlobRole::Update),
    )
}

/// A series stage-1 update blob (wider than the task's network).
pub fn stage_blob() -> Vec<u8> {
    let spec = spec();
    blob::encode(
        &weights(&stage_spec(&spec, 1), 0.5),
        &BlobMeta::new(&spec, BlobRole::Update),
    )
}

/// The party's key (fixed, so runs are reproducible).
pub fn party_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The coordinator's key.
pub fn coordinator_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

/// What the coordinator expects of the fixture's update.
pub struct UpdateContext {
    pub spec: ModelSpec,
    pub task: TaskId,
    pub party: PartyId,
    pub base: Sha256,
}

impl UpdateContext {
    pub fn new() -> Self {
        Self {
            spec: spec(),
            task: TaskId::new("wdbc").unwrap(),
            party: PartyId::new("plant-a").unwrap(),
            base: Sha256::of(b"base model"),
        }
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

    /// The envelope the party signs for `blob`.
    pub fn sign(&self, blob: &[u8]) -> SignedUpdate {
        SignedUpdate::for_blob(
            self.task.clone(),
            self.spec.id(),
            RoundNo(3),
            StepNo(0),
            self.base,
            self.party.clone(),
            blob,
            120,
            &party_key(),
        )
    }
}

/// An envelope as the coordinator stores it (and as JSON carries it): the header, the signer
/// and the signature in hex.
#[derive(Serialize, Deserialize)]
pub struct StoredEnvelope {
    pub header: UpdateHeader,
    pub signer: String,
    pub signature: String,
}

/// Encodes an envelope as JSON.
pub fn envelope_json(e: &SignedUpdate) -> Vec<u8> {
    serde_json::to_vec(&StoredEnvelope {
        header: e.header.clone(),
        signer: hex::encode(e.signer.as_bytes()),
        signature: hex::encode(e.signature.to_bytes()),
    })
    .unwrap()
}

/// Reads an envelope from JSON the way the coordinator reads received and stored ones: every
/// id through its validating constructor, the key through `VerifyingKey::from_bytes`.
pub fn parse_envelope(bytes: &[u8]) -> Option<SignedUpdate> {
    let e: StoredEnvelope = serde_json::from_slice(bytes).ok()?;
    let signer: [u8; 32] = hex::decode(&e.signer).ok()?.try_into().ok()?;
    let sig: [u8; 64] = hex::decode(&e.signature).ok()?.try_into().ok()?;
    Some(SignedUpdate {
        header: e.header,
        signer: VerifyingKey::from_bytes(&signer).ok()?,
        signature: ed25519_dalek::Signature::from_bytes(&sig),
    })
}

/// Signs arbitrary bytes as `Manifest::sign` signs a manifest's JSON (ed25519 over
/// sha256(tag ‖ bytes)), so mutated manifests get past the signature and reach the parser.
/// `fuzz_signed_manifests` checks that it agrees with `Manifest::sign`.
pub fn sign_manifest_bytes(bytes: &[u8], key: &SigningKey) -> SignedManifest {
    use ed25519_dalek::Signer;
    use sha2::{Digest, Sha256 as Sha256Hasher};
    let mut h = Sha256Hasher::new();
    h.update(b"yosegi.v1.manifest\0");
    h.update(bytes);
    let digest: [u8; 32] = h.finalize().into();
    SignedManifest {
        bytes: bytes.to_vec(),
        signature: key.sign(&digest),
    }
}

/// A manifest of the merged fixture ensemble, with metrics and contributors.
pub fn manifest() -> (Manifest, Vec<u8>) {
    let spec = spec();
    let model = &models()[1];
    let blob = model.encode(&spec, BlobRole::Merged);
    let rows = Dataset {
        width: 3,
        features: vec![0.5, -1.0, 2.0, 1.0, 0.0, -0.5, 3.0, 1.0, 1.0],
        targets: vec![1.0, 0.0, 1.0],
    };
    let m = Manifest {
        format: MANIFEST_FORMAT.into(),
        task: TaskId::new("wdbc").unwrap(),
        spec_id: spec.id(),
        version: ModelVersion(4),
        round: 4,
        strategy: "ensemble".into(),
        blob_sha256: Sha256::of(&blob),
        blob_len: blob.len() as u64,
        contributors: vec![
            Contributor {
                party: PartyId::new("plant-a").unwrap(),
                update_sha256: Sha256::of(b"a"),
                sample_count: 10,
            },
            Contributor {
                party: PartyId::new("plant-b").unwrap(),
                update_sha256: Sha256::of(b"b"),
                sample_count: 30,
            },
        ],
        metrics: Some(model.evaluate(&spec, &rows, CpuBackend::default())),
        created_unix_ms: 1_000,
        expires_unix_ms: 2_000,
    };
    (m, blob)
}

/// Valid site CSVs for [`spec`]: reordered and extra columns, quoting, CRLF, spacing.
pub fn csv_texts() -> Vec<String> {
    vec![
        "a,b,c,y\n1,2,3,0\n4,5,6,1\n".into(),
        "id,c,y,a,b\nr1,3,1,1,2\nr2, 6 ,0,4,5\n".into(),
        "\"a\",\"b\",\"c\",\"y\"\r\n\"1.5\",-2e-3,3,1.0\r\n0,0,0,0\r\n".into(),
        "y,a,b,c,note\n0,1e10,-0.0,7,\"x, y\"\n1,2,3,4,\"multi\nline\"\n".into(),
    ]
}
