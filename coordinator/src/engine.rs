//! The round engine: the coordinator's domain logic, synchronous and free of gRPC. It owns the
//! database and blob store; the `grpc` module calls it from blocking threads
//! (`spawn_blocking`), never from async workers, because merges and blob hashing are CPU work.
//!
//! Lifecycle of a task: *statistics* (every party reports feature sums; the coordinator fixes
//! the global normalisation and publishes the initial model as version 0), then rounds. A round
//! is *queued*, then *training* (parties invited; deadline running), then *published* (merged
//! model stored and signed) or *failed* (quorum not met, with the reason). [`Engine::tick`]
//! moves phases forward; every transition is one database transaction.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use shared_model::aggregate::FedAvg;
use shared_model::blob::{self, BlobMeta, BlobRole};
use shared_model::eval::MetricStats;
use shared_model::ids::{ModelVersion, PartyId, RoundNo, Sha256, StepNo, TaskId};
use shared_model::manifest::{Contributor, MANIFEST_FORMAT, Manifest, SignedManifest};
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use shared_model::update::{Expectations, SignedUpdate, UpdateHeader, VerifiedUpdate, verify};
use shared_model::weights::Weights;

use crate::blobs::{BlobStore, BlobStoreError};
use crate::store::{ModelRow, RoundPhase, RoundRow, Store, StoreError, TaskRow, UpdateRow};

/// Strategies this build can run.
pub const STRATEGIES: &[&str] = &["fedavg", "fedprox"];

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
    #[error("rejected: {0}")]
    Rejected(String),
    /// Database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Blob storage.
    #[error(transparent)]
    Blobs(#[from] BlobStoreError),
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

/// What a party is asked to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// Opaque id: `task/kind/number`.
    pub id: String,
    /// The task.
    pub task: String,
    /// Its spec text.
    pub spec_toml: String,
    /// Its spec id (hex).
    pub spec_id: String,
    /// Round (0 for statistics).
    pub round: u64,
    /// Step.
    pub step: u64,
    /// The work.
    pub work: Work,
    /// Deadline.
    pub deadline_ms: i64,
}

/// The kinds of work.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// Report feature sums.
    Stats,
    /// Train from a base model.
    Train {
        /// Base version.
        base_version: u64,
        /// Base blob sha256.
        base_sha256: Sha256,
        /// Strategy.
        strategy: String,
        /// FedProx μ override (0 = spec's).
        fedprox_mu: f64,
    },
    /// Evaluate a published version.
    Evaluate {
        /// The version.
        version: u64,
    },
}

/// How an accepted upload was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Newly accepted and durably stored.
    Accepted,
    /// The same update had been accepted before.
    AlreadyAccepted,
}

/// An upload as received: who sent it, with which key, for which assignment, and what.
#[derive(Clone, Copy, Debug)]
pub struct Upload<'a> {
    /// The authenticated party.
    pub party: &'a str,
    /// Its enrolled key.
    pub party_key: &'a VerifyingKey,
    /// The assignment it answers.
    pub assignment: &'a str,
    /// The signed envelope.
    pub envelope: &'a SignedUpdate,
    /// The blob bytes received.
    pub bytes: &'a [u8],
    /// Its local evaluation statistics.
    pub local_metrics: Option<&'a MetricStats>,
}

/// The envelope as stored in the database.
#[derive(Serialize, Deserialize)]
struct StoredEnvelope {
    header: UpdateHeader,
    signer: String,
    signature: String,
}

fn store_envelope(e: &SignedUpdate) -> String {
    serde_json::to_string(&StoredEnvelope {
        header: e.header.clone(),
        signer: hex_encode(e.signer.as_bytes()),
        signature: hex_encode(&e.signature.to_bytes()),
    })
    .expect("envelopes serialise")
}

fn load_envelope(s: &str) -> Option<SignedUpdate> {
    let e: StoredEnvelope = serde_json::from_str(s).ok()?;
    let signer: [u8; 32] = hex_decode(&e.signer)?.try_into().ok()?;
    let sig: [u8; 64] = hex_decode(&e.signature)?.try_into().ok()?;
    Some(SignedUpdate {
        header: e.header,
        signer: VerifyingKey::from_bytes(&signer).ok()?,
        signature: Signature::from_bytes(&sig),
    })
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The round engine.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    blobs: BlobStore,
    key: SigningKey,
    config: EngineConfig,
}

impl Engine {
    /// Wraps an opened store, blob store and the coordinator's signing key.
    pub fn new(store: Store, blobs: BlobStore, key: SigningKey, config: EngineConfig) -> Self {
        Self {
            store,
            blobs,
            key,
            config,
        }
    }

    /// The database (read access for status views).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Enrolled, non-revoked parties' keys and revoked names.
    pub fn party_keys(&self) -> Result<Vec<(String, VerifyingKey, bool)>> {
        Ok(self
            .store
            .parties()?
            .into_iter()
            .filter_map(|p| {
                VerifyingKey::from_bytes(&p.public_key)
                    .ok()
                    .map(|k| (p.name, k, p.revoked))
            })
            .collect())
    }

    /// Enrolls a party.
    pub fn enroll(&self, name: &str, key: &VerifyingKey, now: i64) -> Result<()> {
        PartyId::new(name).map_err(|e| EngineError::Invalid(e.to_string()))?;
        if name == shared_model::auth::OPERATOR {
            return Err(EngineError::Invalid("\"operator\" is reserved".into()));
        }
        if !self.store.insert_party(name, key.as_bytes(), now)? {
            return Err(EngineError::Exists(format!(
                "party {name} is already enrolled"
            )));
        }
        Ok(())
    }

    /// Revokes a party; in any open round it stops counting as awaited.
    pub fn revoke(&self, name: &str, now: i64) -> Result<()> {
        if !self.store.revoke_party(name)? {
            return Err(EngineError::NotFound(format!("no party named {name}")));
        }
        for t in self.store.tasks()? {
            for r in self
                .store
                .rounds(&t.name)?
                .iter()
                .filter(|r| r.phase == RoundPhase::Training)
            {
                let reason = "revoked by the operator";
                if self
                    .store
                    .round_parties(&t.name, r.round)?
                    .iter()
                    .any(|p| p.party == name && p.state == "invited")
                {
                    self.store
                        .set_round_party(&t.name, r.round, name, "rejected", reason)?;
                    self.store.reject(&t.name, r.round, name, reason, now)?;
                }
            }
        }
        Ok(())
    }

    /// Creates a task; empty `parties` means every enrolled, non-revoked party.
    pub fn create_task(
        &self,
        name: &str,
        spec_toml: &str,
        parties: &[String],
        now: i64,
    ) -> Result<String> {
        TaskId::new(name).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let spec = ModelSpec::parse(spec_toml, &format!("task {name}"))
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let known = self.store.parties()?;
        let parties: Vec<String> = if parties.is_empty() {
            known
                .iter()
                .filter(|p| !p.revoked)
                .map(|p| p.name.clone())
                .collect()
        } else {
            for p in parties {
                match known.iter().find(|k| k.name == *p) {
                    None => return Err(EngineError::NotFound(format!("no party named {p}"))),
                    Some(k) if k.revoked => {
                        return Err(EngineError::Precondition(format!("party {p} is revoked")));
                    }
                    Some(_) => {}
                }
            }
            parties.to_vec()
        };
        if parties.is_empty() {
            return Err(EngineError::Precondition(
                "a task needs at least one enrolled party".into(),
            ));
        }
        let row = TaskRow {
            name: name.to_string(),
            spec_toml: spec_toml.to_string(),
            spec_id: spec.id().to_string(),
            parties,
            normalization: None,
            created_ms: now,
        };
        if !self.store.insert_task(&row)? {
            return Err(EngineError::Exists(format!("task {name} already exists")));
        }
        Ok(row.spec_id)
    }

    fn task(&self, name: &str) -> Result<(TaskRow, ModelSpec)> {
        let t = self
            .store
            .task(name)?
            .ok_or_else(|| EngineError::NotFound(format!("no task named {name}")))?;
        let spec = ModelSpec::parse(&t.spec_toml, &format!("task {name}"))
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        Ok((t, spec))
    }

    /// Queues `count` rounds; returns the first round number.
    pub fn start_rounds(
        &mut self,
        task: &str,
        strategy: &str,
        options: &BTreeMap<String, String>,
        min_parties: u32,
        deadline_ms: i64,
        count: u32,
    ) -> Result<u64> {
        let (t, _) = self.task(task)?;
        if !STRATEGIES.contains(&strategy) {
            return Err(EngineError::Invalid(format!(
                "unknown strategy {strategy:?}; this coordinator runs: {}",
                STRATEGIES.join(", ")
            )));
        }
        for k in options.keys() {
            if !(strategy == "fedprox" && k == "mu") {
                return Err(EngineError::Invalid(format!(
                    "strategy {strategy} has no option {k:?}"
                )));
            }
        }
        if let Some(mu) = options.get("mu")
            && !mu.parse::<f64>().is_ok_and(|m| m.is_finite() && m > 0.0)
        {
            return Err(EngineError::Invalid(format!(
                "option mu must be a number > 0, found {mu:?}"
            )));
        }
        if min_parties == 0 || min_parties as usize > t.parties.len() {
            return Err(EngineError::Invalid(format!(
                "min parties must be between 1 and the task's {} parties, found {min_parties}",
                t.parties.len()
            )));
        }
        if deadline_ms <= 0 || count == 0 {
            return Err(EngineError::Invalid(
                "deadline and round count must be positive".into(),
            ));
        }
        let row = RoundRow {
            task: task.to_string(),
            round: 0,
            strategy: strategy.to_string(),
            options: serde_json::to_string(options).expect("map serialises"),
            min_parties,
            deadline_ms,
            phase: RoundPhase::Queued,
            started_ms: None,
            ends_ms: None,
            base_version: None,
            version: None,
            failure: None,
        };
        Ok(self.store.queue_rounds(&row, count)?)
    }

    /// The next piece of work for `party`, if any.
    pub fn next_assignment(&self, party: &str, now: i64) -> Result<Option<Assignment>> {
        for t in self.store.tasks()? {
            if !t.parties.iter().any(|p| p == party) {
                continue;
            }
            let base = |id: String, round: u64, work: Work, deadline_ms: i64| Assignment {
                id,
                task: t.name.clone(),
                spec_toml: t.spec_toml.clone(),
                spec_id: t.spec_id.clone(),
                round,
                step: 0,
                work,
                deadline_ms,
            };
            if t.normalization.is_none() {
                if !self.store.sums(&t.name)?.iter().any(|(p, _)| p == party) {
                    return Ok(Some(base(
                        format!("{}/stats/0", t.name),
                        0,
                        Work::Stats,
                        now + 3_600_000,
                    )));
                }
                continue;
            }
            for r in self.store.rounds(&t.name)? {
                if r.phase != RoundPhase::Training {
                    continue;
                }
                let invited = self
                    .store
                    .round_parties(&t.name, r.round)?
                    .into_iter()
                    .any(|p| p.party == party && p.state == "invited");
                if invited {
                    let bv = r.base_version.unwrap_or(0);
                    let m = self.store.model(&t.name, Some(bv))?.ok_or_else(|| {
                        EngineError::NotFound(format!(
                            "base model version {bv} of {} is missing",
                            t.name
                        ))
                    })?;
                    let options: BTreeMap<String, String> =
                        serde_json::from_str(&r.options).unwrap_or_default();
                    let work = Work::Train {
                        base_version: bv,
                        base_sha256: m.blob_sha256.parse().map_err(
                            |e: shared_model::ids::IdError| EngineError::Invalid(e.to_string()),
                        )?,
                        strategy: r.strategy.clone(),
                        fedprox_mu: options
                            .get("mu")
                            .and_then(|m| m.parse().ok())
                            .unwrap_or(0.0),
                    };
                    return Ok(Some(base(
                        format!("{}/train/{}", t.name, r.round),
                        r.round,
                        work,
                        r.ends_ms.unwrap_or(now),
                    )));
                }
            }
            if let Some(latest) = self.store.model(&t.name, None)?
                && latest.version > 0
                && !self
                    .store
                    .evaluations(&t.name, latest.version)?
                    .iter()
                    .any(|(p, _)| p == party)
            {
                return Ok(Some(base(
                    format!("{}/evaluate/{}", t.name, latest.version),
                    latest.round,
                    Work::Evaluate {
                        version: latest.version,
                    },
                    now + 3_600_000,
                )));
            }
        }
        Ok(None)
    }

    fn parse_assignment(id: &str) -> Result<(String, String, u64)> {
        let mut it = id.splitn(3, '/');
        match (it.next(), it.next(), it.next().and_then(|n| n.parse().ok())) {
            (Some(t), Some(k), Some(n)) => Ok((t.to_string(), k.to_string(), n)),
            _ => Err(EngineError::Invalid(format!(
                "malformed assignment id {id:?}"
            ))),
        }
    }

    /// Takes a party's feature sums for a task's statistics step.
    pub fn submit_sums(&self, party: &str, assignment: &str, sums: &FeatureSums) -> Result<()> {
        let (task, kind, _) = Self::parse_assignment(assignment)?;
        let (t, spec) = self.task(&task)?;
        if kind != "stats" || !t.parties.iter().any(|p| p == party) {
            return Err(EngineError::Precondition(format!(
                "{party} has no statistics assignment {assignment}"
            )));
        }
        if t.normalization.is_some() {
            return Err(EngineError::Precondition(format!(
                "the statistics step of {task} is already complete"
            )));
        }
        if sums.sum.len() != spec.input_width()
            || sums.sum_sq.len() != spec.input_width()
            || sums.count == 0
        {
            return Err(EngineError::Invalid(format!(
                "feature sums of {party} must cover {} features and at least one row",
                spec.input_width()
            )));
        }
        self.store.put_sums(
            &task,
            party,
            &serde_json::to_string(sums).expect("sums serialise"),
        )?;
        Ok(())
    }

    /// Fails unless `party` takes part in `task` (parties see only their own tasks' models).
    pub fn check_member(&self, task: &str, party: &str) -> Result<()> {
        let (t, _) = self.task(task)?;
        if !t.parties.iter().any(|p| p == party) {
            return Err(EngineError::Precondition(format!(
                "{party} does not take part in task {task}"
            )));
        }
        Ok(())
    }

    /// A published model's signed manifest and blob; `None` = latest.
    pub fn model(&self, task: &str, version: Option<u64>) -> Result<(SignedManifest, Vec<u8>)> {
        let m = self
            .store
            .model(task, version)?
            .ok_or_else(|| match version {
                Some(v) => EngineError::NotFound(format!("task {task} has no model version {v}")),
                None => EngineError::NotFound(format!("task {task} has no published model yet")),
            })?;
        let sha: Sha256 = m
            .blob_sha256
            .parse()
            .map_err(|e: shared_model::ids::IdError| EngineError::Invalid(e.to_string()))?;
        let sig: [u8; 64] = m
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::Invalid("bad stored signature".into()))?;
        Ok((
            SignedManifest {
                bytes: m.manifest,
                signature: Signature::from_bytes(&sig),
            },
            self.blobs.get(&sha)?,
        ))
    }

    /// The largest blob a task's spec allows (for capping uploads before reading them).
    pub fn max_blob_bytes(&self, task: &str) -> Result<u64> {
        Ok(self.task(task)?.1.max_blob_bytes())
    }

    /// Verifies, stores and records an upload; a failed check is recorded as a rejection.
    pub fn accept_upload(&mut self, upload: &Upload<'_>, now: i64) -> Result<UploadOutcome> {
        let Upload {
            party,
            party_key,
            assignment,
            envelope,
            bytes,
            local_metrics,
        } = *upload;
        let (task, kind, round) = Self::parse_assignment(assignment)?;
        let (_, spec) = self.task(&task)?;
        let rounds = self.store.rounds(&task)?;
        let r = rounds
            .iter()
            .find(|r| r.round == round && kind == "train")
            .ok_or_else(|| {
                EngineError::NotFound(format!(
                    "task {task} has no training assignment {assignment}"
                ))
            })?;
        let already = self
            .store
            .updates(&task, round)?
            .into_iter()
            .find(|u| u.party == party);
        if let Some(u) = &already {
            if u.blob_sha256 == envelope.header.blob_sha256.to_string() {
                return Ok(UploadOutcome::AlreadyAccepted);
            }
            return Err(EngineError::Exists(format!(
                "{party} already has an accepted update for round {round} of {task}; a different one is refused"
            )));
        }
        let invited = self
            .store
            .round_parties(&task, round)?
            .into_iter()
            .find(|p| p.party == party);
        if invited.is_none() {
            return Err(EngineError::Precondition(format!(
                "{party} is not invited to round {round} of {task}"
            )));
        }
        if r.phase != RoundPhase::Training || now > r.ends_ms.unwrap_or(i64::MAX) {
            let reason = format!("late: round {round} of {task} is closed ({})", r.phase);
            self.store.reject(&task, round, party, &reason, now)?;
            return Err(EngineError::Precondition(reason));
        }
        let base = self.store.model(&task, r.base_version)?.ok_or_else(|| {
            EngineError::NotFound(format!("base model of round {round} is missing"))
        })?;
        let task_id = TaskId::new(&task).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let party_id = PartyId::new(party).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let expect = Expectations {
            task: &task_id,
            spec: &spec,
            round: RoundNo(round),
            step: StepNo(0),
            base_model: base
                .blob_sha256
                .parse()
                .map_err(|e: shared_model::ids::IdError| EngineError::Invalid(e.to_string()))?,
            party: &party_id,
        };
        if let Err(e) = verify(envelope, bytes, party_key, &expect) {
            let reason = e.to_string();
            self.store.reject(&task, round, party, &reason, now)?;
            self.store
                .set_round_party(&task, round, party, "rejected", &reason)?;
            return Err(EngineError::Rejected(reason));
        }
        let sha = self.blobs.put(bytes)?;
        self.store.accept_update(
            &task,
            round,
            &UpdateRow {
                party: party.to_string(),
                blob_sha256: sha.to_string(),
                envelope: store_envelope(envelope),
                sample_count: envelope.header.sample_count,
                local_metrics: local_metrics
                    .map(|m| serde_json::to_string(m).expect("stats serialise")),
            },
            now,
        )?;
        Ok(UploadOutcome::Accepted)
    }

    /// Records a party's evaluation of a published version.
    pub fn report_evaluation(
        &self,
        party: &str,
        assignment: &str,
        stats: &MetricStats,
    ) -> Result<()> {
        let (task, kind, version) = Self::parse_assignment(assignment)?;
        if kind != "evaluate" {
            return Err(EngineError::Invalid(format!(
                "{assignment} is not an evaluation assignment"
            )));
        }
        self.check_member(&task, party)?;
        self.store.model(&task, Some(version))?.ok_or_else(|| {
            EngineError::NotFound(format!("task {task} has no model version {version}"))
        })?;
        self.store.put_evaluation(
            &task,
            version,
            party,
            &serde_json::to_string(stats).expect("stats"),
        )?;
        Ok(())
    }

    /// Records that a party declined an assignment.
    pub fn decline(&self, party: &str, assignment: &str, reason: &str, now: i64) -> Result<()> {
        let (task, kind, round) = Self::parse_assignment(assignment)?;
        self.check_member(&task, party)?;
        if kind == "train" {
            let reason = format!("declined: {reason}");
            self.store
                .set_round_party(&task, round, party, "declined", &reason)?;
            self.store.reject(&task, round, party, &reason, now)?;
        }
        Ok(())
    }

    /// Moves every task forward; true if anything changed.
    pub fn tick(&mut self, now: i64) -> Result<bool> {
        let mut changed = false;
        for t in self.store.tasks()? {
            changed |= self.tick_task(&t, now)?;
        }
        Ok(changed)
    }

    fn tick_task(&mut self, t: &TaskRow, now: i64) -> Result<bool> {
        let spec = ModelSpec::parse(&t.spec_toml, &t.name)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        if t.normalization.is_none() {
            let sums = self.store.sums(&t.name)?;
            if sums.len() < t.parties.len() {
                // A silent party must not stall the task: once the first queued round's
                // deadline has passed since the task was created, go on with the parties that
                // reported, if they are at least that round's quorum.
                let rounds = self.store.rounds(&t.name)?;
                let Some(first) = rounds.iter().find(|r| r.phase == RoundPhase::Queued) else {
                    return Ok(false);
                };
                if now < t.created_ms + first.deadline_ms || (sums.len() as u32) < first.min_parties
                {
                    return Ok(false);
                }
                let missing: Vec<&str> = t
                    .parties
                    .iter()
                    .filter(|p| !sums.iter().any(|(q, _)| q == *p))
                    .map(String::as_str)
                    .collect();
                tracing::warn!(task = %t.name, missing = ?missing, "statistics deadline passed; normalising with the parties that reported");
            }
            let mut total = FeatureSums::zeros(spec.input_width());
            for (party, json) in &sums {
                let s: FeatureSums = serde_json::from_str(json)
                    .map_err(|e| EngineError::Invalid(format!("stored sums of {party}: {e}")))?;
                total
                    .merge(&s)
                    .map_err(|e| EngineError::Invalid(format!("sums of {party}: {e}")))?;
            }
            let norm = total
                .normalization()
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
            let initial = Weights::initial(&spec, &norm);
            let model = self.publish_row(
                t,
                &spec,
                &initial,
                BlobRole::Initial,
                0,
                0,
                "initial",
                vec![],
                None,
                now,
            )?;
            self.store.fix_normalization(
                &t.name,
                &serde_json::to_string(&norm).expect("norm"),
                &model,
                now,
            )?;
            tracing::info!(task = %t.name, parties = sums.len(), "statistics complete; initial model published as version 0");
            return Ok(true);
        }
        let rounds = self.store.rounds(&t.name)?;
        if let Some(r) = rounds.iter().find(|r| r.phase == RoundPhase::Training) {
            return self.tick_round(t, &spec, r, now);
        }
        if let Some(r) = rounds.iter().find(|r| r.phase == RoundPhase::Queued) {
            let latest = self.store.model(&t.name, None)?.map_or(0, |m| m.version);
            let revoked: Vec<String> = self
                .store
                .parties()?
                .into_iter()
                .filter(|p| p.revoked)
                .map(|p| p.name)
                .collect();
            let invited: Vec<String> = t
                .parties
                .iter()
                .filter(|p| !revoked.contains(p))
                .cloned()
                .collect();
            self.store
                .open_round(&t.name, r.round, now, now + r.deadline_ms, latest, &invited)?;
            tracing::info!(task = %t.name, round = r.round, strategy = %r.strategy, base_version = latest, "round opened");
            return Ok(true);
        }
        Ok(false)
    }

    fn tick_round(
        &mut self,
        t: &TaskRow,
        spec: &ModelSpec,
        r: &RoundRow,
        now: i64,
    ) -> Result<bool> {
        let parties = self.store.round_parties(&t.name, r.round)?;
        let all_answered = parties.iter().all(|p| p.state != "invited");
        let past_deadline = now >= r.ends_ms.unwrap_or(i64::MAX);
        if !all_answered && !past_deadline {
            return Ok(false);
        }
        let updates = self.store.updates(&t.name, r.round)?;
        if (updates.len() as u32) < r.min_parties {
            let others: Vec<String> = parties
                .iter()
                .filter(|p| p.state != "accepted")
                .map(|p| match p.state.as_str() {
                    "invited" => format!("{}: no answer by the deadline", p.party),
                    _ => format!("{}: {}", p.party, p.reason),
                })
                .collect();
            let reason = format!(
                "quorum not met: {} of {} required updates accepted ({})",
                updates.len(),
                r.min_parties,
                others.join("; ")
            );
            tracing::warn!(task = %t.name, round = r.round, %reason, "round failed");
            self.store.fail_round(&t.name, r.round, &reason)?;
            return Ok(true);
        }
        // Re-verify every stored update: only VerifiedUpdate reaches the strategy, also after a restart.
        let keys = self.party_keys()?;
        let base: Sha256 = self
            .store
            .model(&t.name, r.base_version)?
            .ok_or_else(|| EngineError::NotFound("base model missing".into()))?
            .blob_sha256
            .parse()
            .map_err(|e: shared_model::ids::IdError| EngineError::Invalid(e.to_string()))?;
        let task_id = TaskId::new(&t.name).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut acc = FedAvg::new();
        let mut contributors = Vec::new();
        let mut metrics: Option<MetricStats> = None;
        for u in &updates {
            let env = load_envelope(&u.envelope).ok_or_else(|| {
                EngineError::Invalid(format!("stored envelope of {} is unreadable", u.party))
            })?;
            let key = keys
                .iter()
                .find(|(n, _, _)| *n == u.party)
                .map(|(_, k, _)| *k)
                .ok_or_else(|| EngineError::NotFound(format!("party {} vanished", u.party)))?;
            let sha: Sha256 = u
                .blob_sha256
                .parse()
                .map_err(|e: shared_model::ids::IdError| EngineError::Invalid(e.to_string()))?;
            let bytes = self.blobs.get(&sha)?;
            let party_id =
                PartyId::new(&u.party).map_err(|e| EngineError::Invalid(e.to_string()))?;
            let expect = Expectations {
                task: &task_id,
                spec,
                round: RoundNo(r.round),
                step: StepNo(0),
                base_model: base,
                party: &party_id,
            };
            let verified: VerifiedUpdate = verify(&env, &bytes, &key, &expect)
                .map_err(|e| EngineError::Rejected(e.to_string()))?;
            acc.add(&verified)
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
            contributors.push(Contributor {
                party: party_id,
                update_sha256: sha,
                sample_count: u.sample_count,
            });
            if let Some(json) = &u.local_metrics
                && let Ok(s) = serde_json::from_str::<MetricStats>(json)
            {
                match &mut metrics {
                    None => metrics = Some(s),
                    Some(m) => {
                        let _ = m.merge(&s);
                    }
                }
            }
        }
        let merged = acc
            .finish()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let version = self.store.model(&t.name, None)?.map_or(0, |m| m.version) + 1;
        let model = self.publish_row(
            t,
            spec,
            &merged,
            BlobRole::Merged,
            version,
            r.round,
            &r.strategy,
            contributors,
            metrics.map(|m| m.metrics()),
            now,
        )?;
        self.store.publish_round(&t.name, r.round, &model, now)?;
        tracing::info!(task = %t.name, round = r.round, version, updates = updates.len(), "merged model published");
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    fn publish_row(
        &self,
        t: &TaskRow,
        spec: &ModelSpec,
        weights: &Weights,
        role: BlobRole,
        version: u64,
        round: u64,
        strategy: &str,
        contributors: Vec<Contributor>,
        metrics: Option<shared_model::eval::Metrics>,
        now: i64,
    ) -> Result<ModelRow> {
        let bytes = blob::encode(
            weights,
            &BlobMeta {
                spec_id: spec.id(),
                role,
            },
        );
        let sha = self.blobs.put(&bytes)?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            task: TaskId::new(&t.name).map_err(|e| EngineError::Invalid(e.to_string()))?,
            spec_id: spec.id(),
            version: ModelVersion(version),
            round,
            strategy: strategy.to_string(),
            blob_sha256: sha,
            blob_len: bytes.len() as u64,
            contributors,
            metrics,
            created_unix_ms: now,
            expires_unix_ms: now + self.config.manifest_ttl_ms,
        };
        let signed = manifest.sign(&self.key);
        Ok(ModelRow {
            version,
            round,
            blob_sha256: sha.to_string(),
            manifest: signed.bytes,
            signature: signed.signature.to_bytes().to_vec(),
        })
    }
}
