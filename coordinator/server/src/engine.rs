//! The round engine: the shell around the round rules (`yosegi-round`). Synchronous and free of
//! gRPC; the `grpc` module calls it from blocking threads (`spawn_blocking`), never from async
//! workers, because merges and blob hashing are CPU work.
//!
//! Every call has the same shape: load a snapshot from the store, ask the rules, do the effectful
//! work the decision names (verify an upload, store a blob, merge, sign a manifest), then hand the
//! decision's [`Transition`] to [`Store::apply`], which writes it with its governance-log records
//! in one transaction — refused whole if the state it was decided on has moved on. The engine
//! decides nothing itself. The close of a round (`tick`) is in `engine/close.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use shared_model::blob::BlobRole;
use shared_model::eval::MetricStats;
use shared_model::ids::{PartyId, Sha256};
use shared_model::manifest::SignedManifest;
use shared_model::model::Model;
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use yosegi_round::decide::{self, DeclineContext, QueueContext, RoundRequest, TaskRecord};
use yosegi_round::{AssignmentId, AssignmentKind, Refusal, RefusalKind, Transition};

use crate::blobs::{BlobStore, BlobStoreError};
use crate::store::{Applied, RoundRecord, Store, StoreError, Version};

mod close;
#[cfg(test)]
mod dp_tests;
#[cfg(test)]
mod fixture;
#[cfg(test)]
mod limits_tests;
mod operators;
mod repair;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
mod upload;

pub use close::{DpSpent, dp_spent};
pub use upload::{Upload, UploadOutcome};
use upload::{check_dp_clip, load_envelope};
pub use yosegi_round::decide::{Assignment, Work};

/// Strategies this build can run.
pub const STRATEGIES: &[&str] = shared_model::strategy::NAMES;

/// Errors of the engine, mapped to gRPC codes in one place (`grpc::status`).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad request (unknown strategy, bad spec, bad name…).
    #[error("{0}")]
    Invalid(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Already exists.
    #[error("{0}")]
    Exists(String),
    /// Not allowed in the current state (late upload, round closed…).
    #[error("{0}")]
    Precondition(String),
    /// An upload failed verification; recorded as a rejection.
    #[error("rejected: {reason}")]
    Rejected {
        /// The failed check, e.g. `signature` (see `VerifyError::code`).
        code: &'static str,
        /// The readable reason, naming the party.
        reason: String,
    },
    /// Database.
    #[error(transparent)]
    Store(StoreError),
    /// Blob storage.
    #[error(transparent)]
    Blobs(#[from] BlobStoreError),
}

impl From<Refusal> for EngineError {
    fn from(r: Refusal) -> Self {
        match r.kind {
            RefusalKind::Invalid => Self::Invalid(r.message),
            RefusalKind::NotFound => Self::NotFound(r.message),
            RefusalKind::Exists => Self::Exists(r.message),
            RefusalKind::Precondition => Self::Precondition(r.message),
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Self::Exists(m),
            e => Self::Store(e),
        }
    }
}

type Result<T> = std::result::Result<T, EngineError>;

/// Settings of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How long a published manifest stays valid.
    pub manifest_ttl_ms: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            manifest_ttl_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

fn parse_id(s: &str) -> Result<AssignmentId> {
    s.parse()
        .map_err(|e: yosegi_round::assignment::AssignmentIdError| {
            EngineError::Invalid(e.to_string())
        })
}

fn party_id(s: &str) -> Result<PartyId> {
    PartyId::new(s).map_err(|e| EngineError::Invalid(e.to_string()))
}

/// The round engine.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    blobs: BlobStore,
    key: SigningKey,
    config: EngineConfig,
    /// Seconds each merge took (re-verification, strategy, publication) since last taken.
    merge_seconds: Vec<f64>,
    /// The last stored model decoded, by blob sha256 (blobs are immutable, so it never goes stale).
    model_cache: Option<(Sha256, Arc<Model>)>,
    /// The operator whose call is being carried out ([`Self::acting_as`]): its changes' records
    /// name it.
    actor: Option<String>,
}

impl Engine {
    /// Wraps an opened store, blob store and the coordinator's signing key.
    pub fn new(store: Store, blobs: BlobStore, key: SigningKey, config: EngineConfig) -> Self {
        Self {
            store,
            blobs,
            key,
            config,
            merge_seconds: Vec::new(),
            model_cache: None,
            actor: None,
        }
    }

    /// Durations of the merges done since the last call (for the metrics endpoint).
    pub fn take_merge_seconds(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.merge_seconds)
    }

    /// The database (read access for status views).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The blob store (uploads stage their bytes in it before the engine decides).
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Writes a decision taken on the state at `at`.
    fn commit(&mut self, at: Version, now: i64, t: &Transition) -> Result<Applied> {
        Ok(self.store.apply_by(at, now, self.actor.as_deref(), t)?)
    }

    /// Enrolled parties' keys and whether each is revoked.
    pub fn party_keys(&self) -> Result<Vec<(String, VerifyingKey, bool)>> {
        Ok(self
            .store
            .parties()?
            .into_iter()
            .filter_map(|p| {
                VerifyingKey::from_bytes(&p.public_key)
                    .ok()
                    .map(|k| (p.name.to_string(), k, p.revoked))
            })
            .collect())
    }

    /// Enrolls a party.
    pub fn enroll(&mut self, name: &str, key: &VerifyingKey, now: i64) -> Result<()> {
        let at = self.store.version()?;
        let t = decide::enroll(name, key.to_bytes())?;
        self.commit(at, now, &t).map(drop)
    }

    /// Replaces a party's key (name and place in tasks kept); the old key is refused from then
    /// on. Returns the fingerprint of the key replaced.
    pub fn rotate_key(&mut self, name: &str, key: &VerifyingKey, now: i64) -> Result<String> {
        let at = self.store.version()?;
        let known = self.store.party(name)?.map(|p| (p.public_key, p.revoked));
        let t = decide::rotate_key(name, known, key.to_bytes())?;
        self.commit(at, now, &t)?;
        let Transition::RotateKey { previous, .. } = t else {
            unreachable!("rotate_key decides a RotateKey")
        };
        Ok(Sha256::of(&previous).to_string()[..16].to_string())
    }

    /// Revokes a party; in any open round it stops counting as awaited (one transaction).
    pub fn revoke(&mut self, name: &str, now: i64) -> Result<()> {
        let at = self.store.version()?;
        let known = self.store.party(name)?.is_some();
        let awaited = if known {
            self.store.awaited_rounds(name)?
        } else {
            vec![]
        };
        let t = decide::revoke(name, known, awaited)?;
        self.commit(at, now, &t).map(drop)
    }

    /// Creates a task with the default contribution limits; empty `parties` means every
    /// enrolled, non-revoked party.
    pub fn create_task(
        &mut self,
        name: &str,
        spec_toml: &str,
        parties: &[String],
        now: i64,
    ) -> Result<String> {
        self.create_task_limited(name, spec_toml, parties, "", now)
    }

    /// Creates a task with the operator's contribution limits (`limits_toml`, empty = the
    /// defaults; see `yosegi_round::limits`).
    pub fn create_task_limited(
        &mut self,
        name: &str,
        spec_toml: &str,
        parties: &[String],
        limits_toml: &str,
        now: i64,
    ) -> Result<String> {
        let at = self.store.version()?;
        let known: Vec<(PartyId, bool)> = self
            .store
            .parties()?
            .into_iter()
            .map(|p| (p.name, p.revoked))
            .collect();
        let t = decide::create_task(name, spec_toml, parties, limits_toml, &known)?;
        self.commit(at, now, &t)?;
        let Transition::CreateTask { spec_id, .. } = t else {
            unreachable!("create_task decides a CreateTask")
        };
        Ok(spec_id)
    }

    fn task(&self, name: &str) -> Result<(TaskRecord, ModelSpec)> {
        let t = self
            .store
            .task(name)?
            .ok_or_else(|| EngineError::NotFound(format!("no task named {name}")))?;
        let spec = t.spec()?;
        Ok((t, spec))
    }

    /// Queues `count` rounds at `now`; returns the first round number.
    #[allow(clippy::too_many_arguments)]
    pub fn start_rounds(
        &mut self,
        task: &str,
        strategy: &str,
        options: &BTreeMap<String, String>,
        min_parties: u32,
        deadline_ms: i64,
        count: u32,
        now: i64,
    ) -> Result<u64> {
        let at = self.store.version()?;
        let (t, spec) = self.task(task)?;
        let series_stages = match self.stored_model(task, &spec, None) {
            Ok(Some((_, m))) => match &*m {
                Model::Series(stages) => stages.len(),
                _ => 0,
            },
            Ok(None) => 0,
            Err(EngineError::Blobs(e)) => {
                let latest = self.store.latest_version(task)?;
                let why = self
                    .base_damage(&t.name, latest.0)?
                    .unwrap_or(e.to_string());
                return Err(EngineError::Precondition(format!(
                    "no round can start on task {task}: {why}"
                )));
            }
            Err(e) => return Err(e),
        };
        let series_pending = self
            .store
            .rounds(task)?
            .iter()
            .filter(|r| r.plan.strategy_name() == "series" && !r.phase.is_final())
            .count();
        let revoked = self.store.revoked()?;
        let ctx = QueueContext {
            task: &t,
            spec: &spec,
            revoked: &revoked,
            series_stages,
            series_pending,
        };
        let req = RoundRequest {
            strategy,
            options,
            min_parties,
            deadline_ms,
            count,
        };
        let decision = decide::queue_rounds(&ctx, &req)?;
        match self.commit(at, now, &decision)? {
            Applied::Queued(first) => Ok(first.0),
            other => unreachable!("queued rounds apply as Queued, not {other:?}"),
        }
    }

    /// The next piece of work for `party`, if any (see `yosegi_round::decide::next_work`).
    pub fn next_assignment(&self, party: &str, now: i64) -> Result<Option<Assignment>> {
        let tasks = self.store.party_tasks(&party_id(party)?)?;
        Ok(decide::next_work(&tasks, now)?)
    }

    /// Takes a party's feature sums for a task's statistics step.
    pub fn submit_sums(
        &mut self,
        party: &str,
        assignment: &str,
        sums: &FeatureSums,
        now: i64,
    ) -> Result<()> {
        let at = self.store.version()?;
        let id = parse_id(assignment)?;
        let (t, spec) = self.task(id.task.as_str())?;
        let party = party_id(party)?;
        match decide::record_sums(&id, &party, &t, &spec, sums) {
            Ok(decision) => self.commit(at, now, &decision).map(drop),
            Err(refusal) => {
                // Sums refused as invalid are recorded (once) as the party declining the
                // statistics step with the reason, so the operator sees the plant's problem.
                if refusal.kind == RefusalKind::Invalid
                    && t.normalization.is_none()
                    && !self.store.declined(&id, party.as_str())?
                {
                    tracing::warn!(task = %t.name, %party, reason = %refusal.message, "feature sums refused");
                    self.commit(at, now, &decide::refuse_sums(&id, &party, &refusal))?;
                }
                Err(refusal.into())
            }
        }
    }

    /// Fails unless `party` takes part in `task` (parties see only their own tasks' models).
    pub fn check_member(&self, task: &str, party: &str) -> Result<()> {
        let (t, _) = self.task(task)?;
        if !t.parties.iter().any(|p| p.as_str() == party) {
            return Err(EngineError::Precondition(format!(
                "{party} does not take part in task {task}"
            )));
        }
        Ok(())
    }

    /// A published model's signed manifest and blob; `None` = latest.
    pub fn model(&self, task: &str, version: Option<u64>) -> Result<(SignedManifest, Vec<u8>)> {
        let (manifest, sha, blobs) = self.model_ref(task, version)?;
        Ok((manifest, blobs.get(&sha)?))
    }

    /// A published model's signed manifest, its blob's digest and the store to read it from:
    /// for the server, which reads and hashes large blobs outside the engine's lock.
    pub fn model_ref(
        &self,
        task: &str,
        version: Option<u64>,
    ) -> Result<(SignedManifest, Sha256, BlobStore)> {
        let m = self
            .store
            .model(task, version)?
            .ok_or_else(|| match version {
                Some(v) => EngineError::NotFound(format!("task {task} has no model version {v}")),
                None => EngineError::NotFound(format!("task {task} has no published model yet")),
            })?;
        let sig: [u8; 64] = m
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::Invalid("bad stored signature".into()))?;
        let manifest = SignedManifest {
            bytes: m.manifest,
            signature: Signature::from_bytes(&sig),
        };
        Ok((manifest, m.blob_sha256, self.blobs.clone()))
    }

    /// The largest blob a task's spec allows (for capping uploads before reading them).
    pub fn max_blob_bytes(&self, task: &str) -> Result<u64> {
        Ok(shared_model::model::max_update_blob_bytes(
            &self.task(task)?.1,
        ))
    }

    /// A stored model of a task (`None` = latest): its blob's sha256 and the decoded model, or
    /// `None` if there is none. The last one decoded is kept, so the uploads of a round do not
    /// each read, hash and decode their base model again.
    fn stored_model(
        &mut self,
        task: &str,
        spec: &ModelSpec,
        version: Option<u64>,
    ) -> Result<Option<(Sha256, Arc<Model>)>> {
        let Some(row) = self.store.model(task, version)? else {
            return Ok(None);
        };
        let sha = row.blob_sha256;
        if let Some((cached, model)) = &self.model_cache
            && *cached == sha
        {
            return Ok(Some((sha, model.clone())));
        }
        let role = if row.version.0 == 0 {
            BlobRole::Initial
        } else {
            BlobRole::Merged
        };
        // Decoded once and shared: every upload of a round checks against its base.
        let model = Model::decode(&self.blobs.get(&sha)?, spec, role).map_err(|e| {
            EngineError::Invalid(format!("task {task}: stored model {}: {e}", row.version))
        })?;
        let model = Arc::new(model);
        self.model_cache = Some((sha, model.clone()));
        Ok(Some((sha, model)))
    }

    /// A round's base model: its blob's sha256 and the decoded model.
    fn base_model(&mut self, spec: &ModelSpec, r: &RoundRecord) -> Result<(Sha256, Arc<Model>)> {
        let version = r.base_version.map_or(0, |v| v.0);
        self.stored_model(r.task.as_str(), spec, Some(version))?
            .ok_or_else(|| {
                EngineError::NotFound(format!(
                    "task {}: base model version {version} of round {} is missing",
                    r.task, r.round
                ))
            })
    }

    /// Records a party's evaluation of a published version.
    pub fn report_evaluation(
        &mut self,
        party: &str,
        assignment: &str,
        stats: &MetricStats,
    ) -> Result<()> {
        let at = self.store.version()?;
        let id = parse_id(assignment)?;
        let (t, spec) = self.task(id.task.as_str())?;
        stats.validate(spec.task.kind).map_err(|e| {
            EngineError::Invalid(format!("evaluation of {party} for {assignment}: {e}"))
        })?;
        let exists = match id.kind {
            AssignmentKind::Evaluate(v) => self.store.model(id.task.as_str(), Some(v.0))?.is_some(),
            _ => false,
        };
        let json = serde_json::to_string(stats).expect("stats serialise");
        let decision = decide::record_evaluation(&id, &party_id(party)?, &t, exists, json)?;
        self.commit(at, 0, &decision).map(drop)
    }

    /// Records that a party declined an assignment (see `yosegi_round::decide::decline`).
    pub fn decline(&mut self, party: &str, assignment: &str, reason: &str, now: i64) -> Result<()> {
        let at = self.store.version()?;
        let id = parse_id(assignment)?;
        let party = party_id(party)?;
        let (t, _) = self.task(id.task.as_str())?;
        let task = id.task.as_str();
        let (round, state, version_exists) = match id.kind {
            AssignmentKind::Train(n) => (
                self.store.round(task, n)?,
                self.store
                    .round_party(task, n.0, party.as_str())?
                    .map(|p| p.state),
                false,
            ),
            AssignmentKind::Evaluate(v) => {
                (None, None, self.store.model(task, Some(v.0))?.is_some())
            }
            AssignmentKind::Stats => (None, None, false),
        };
        let ctx = DeclineContext {
            task: &t,
            round: round.as_ref(),
            state: state.as_ref(),
            version_exists,
        };
        let decision = decide::decline(&id, &party, reason, &ctx)?;
        let applied = self.commit(at, now, &decision)?;
        if applied == Applied::Done && !matches!(id.kind, AssignmentKind::Train(_)) {
            tracing::info!(%task, %party, assignment = %id, %reason, "party declined work");
        }
        Ok(())
    }
}
