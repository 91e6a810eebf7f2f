//! The engine test fixture: an engine on a temp store with enrolled parties and a task past its
//! statistics step, and correctly signed uploads.

use super::*;
use crate::store::Store;
use shared_model::blob::{self, BlobMeta};
use shared_model::ids::{RoundNo, StepNo, TaskId};
use shared_model::keys::generate;
use shared_model::update::SignedUpdate;
use shared_model::weights::Weights;

pub(super) const SPEC: &str = r#"
format = 1
name = "tiny"
[task]
kind = "binary"
target = "y"
features = ["a", "b"]
[model]
hidden = [3]
[training]
learning_rate = 0.1
local_epochs = 1
batch_size = 4
seed = 1
"#;

pub(super) struct Fixture {
    pub(super) _dir: tempfile::TempDir,
    pub(super) engine: Engine,
    pub(super) keys: Vec<(String, SigningKey)>,
    pub(super) spec: String,
    /// Signed cohort requirement of each party's uploads (0 = none).
    pub(super) min_cohort: Vec<u32>,
    /// Sample count each party claims (0 or absent = [`samples`]).
    pub(super) claims: Vec<u64>,
}

pub(super) fn sums() -> FeatureSums {
    FeatureSums::of_rows(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 2)
}

/// A bare engine on a store in `dir` with `n` enrolled parties `plant-0 …` (fresh keys), no task.
pub(super) fn enrolled_engine(dir: &std::path::Path, n: usize) -> Engine {
    let store = Store::create(&dir.join("y.db")).unwrap();
    let blobs = BlobStore::open(&dir.join("blobs")).unwrap();
    let mut engine = Engine::new(store, blobs, generate().unwrap(), EngineConfig::default());
    for i in 0..n {
        let k = generate().unwrap();
        engine
            .enroll(&format!("plant-{i}"), &k.verifying_key(), 0)
            .unwrap();
    }
    engine
}

/// A fixture of `n` parties with one FedAvg round (quorum `min`) open, every party's update
/// accepted, not yet closed.
pub(super) fn uploaded(n: usize, min: u32) -> Fixture {
    let mut f = fixture(n);
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), min, 60_000, 1, 1)
        .unwrap();
    f.engine.tick(2).unwrap();
    for i in 0..n {
        f.upload(i, 1, 3).unwrap();
    }
    f
}

/// An engine with `n` enrolled parties and a task `t` past its statistics step.
pub(super) fn fixture(n: usize) -> Fixture {
    fixture_with(n, SPEC)
}

/// The same with another spec text for the task.
pub(super) fn fixture_with(n: usize, spec: &str) -> Fixture {
    fixture_limited(n, spec, "", |_| sums())
}

/// The same with contribution limits for the task and each party's feature sums.
pub(super) fn fixture_limited(
    n: usize,
    spec: &str,
    limits: &str,
    sums_of: impl Fn(usize) -> FeatureSums,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("y.db")).unwrap();
    let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
    let mut engine = Engine::new(store, blobs, generate().unwrap(), EngineConfig::default());
    let keys: Vec<(String, SigningKey)> = (0..n)
        .map(|i| (format!("plant-{i}"), generate().unwrap()))
        .collect();
    for (name, k) in &keys {
        engine.enroll(name, &k.verifying_key(), 0).unwrap();
    }
    engine
        .create_task_limited("t", spec, &[], limits, 0)
        .unwrap();
    for (i, (name, _)) in keys.iter().enumerate() {
        engine
            .submit_sums(name, "t/stats/0", &sums_of(i), 0)
            .unwrap();
    }
    assert!(engine.tick(1).unwrap(), "statistics complete");
    Fixture {
        _dir: dir,
        engine,
        keys,
        spec: spec.to_string(),
        min_cohort: Vec::new(),
        claims: Vec::new(),
    }
}

/// The sample count party `i` signs: different for every party, so a merge that weights by
/// samples where it must not (central DP) or does not where it must (FedAvg) shows.
pub(super) fn samples(i: usize) -> u64 {
    10 * (i as u64 + 1).pow(2)
}

impl Fixture {
    /// A correctly signed update of party `i` for round `round`, trained on nothing.
    pub(super) fn upload(&mut self, i: usize, round: u64, now: i64) -> Result<UploadOutcome> {
        let norm = sums().normalization().unwrap();
        self.upload_with(i, round, now, &norm)
    }

    /// The same with a chosen normalisation.
    pub(super) fn upload_with(
        &mut self,
        i: usize,
        round: u64,
        now: i64,
        norm: &shared_model::stats::Normalization,
    ) -> Result<UploadOutcome> {
        let spec = ModelSpec::parse(&self.spec, "t").unwrap();
        let w = Weights::initial(&spec, norm)
            .map_trainable(|t| t.data.iter().map(|v| v + 0.01 * (i as f32 + 1.0)).collect())
            .unwrap();
        self.upload_weights(i, round, now, &w)
    }

    /// A correctly signed update of party `i` for round `round` holding `w`.
    pub(super) fn upload_weights(
        &mut self,
        i: usize,
        round: u64,
        now: i64,
        w: &Weights,
    ) -> Result<UploadOutcome> {
        let spec = ModelSpec::parse(&self.spec, "t").unwrap();
        let (name, key) = &self.keys[i];
        let r = self.engine.store().rounds("t").unwrap();
        let r = r.iter().find(|r| r.round.0 == round).unwrap();
        let base = self
            .engine
            .store()
            .model("t", r.base_version.map(|v| v.0))
            .unwrap()
            .unwrap();
        let bytes = blob::encode(w, &BlobMeta::new(&spec, BlobRole::Update));
        let env = SignedUpdate::for_blob(
            TaskId::new("t").unwrap(),
            spec.id(),
            RoundNo(round),
            StepNo(0),
            base.blob_sha256,
            PartyId::new(name).unwrap(),
            &bytes,
            self.claims
                .get(i)
                .copied()
                .filter(|&c| c > 0)
                .unwrap_or(samples(i)),
            key,
        );
        let env = match self.min_cohort.get(i) {
            Some(&k) if k > 0 => env.with_min_cohort(k, key),
            _ => env,
        };
        let vk = key.verifying_key();
        self.engine.accept_upload(
            &Upload {
                party: name,
                party_key: &vk,
                assignment: &format!("t/train/{round}"),
                envelope: &env,
                bytes: &bytes,
                local_metrics: None,
                membership_audit: None,
            },
            None,
            now,
        )
    }
}
