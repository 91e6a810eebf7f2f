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
use shared_model::blob::BlobRole;
use shared_model::dp;
use shared_model::eval::MetricStats;
use shared_model::ids::{ModelVersion, PartyId, RoundNo, Sha256, StepNo, TaskId};
use shared_model::manifest::{Contributor, MANIFEST_FORMAT, Manifest, SignedManifest};
use shared_model::membership::MembershipAudit;
use shared_model::model::{MAX_PARTS, Model};
use shared_model::spec::{DpMode, DpSpec, ModelSpec};
use shared_model::stats::FeatureSums;
use shared_model::strategy::{Contribution, Strategy, StrategyConfig, relay_step};
use shared_model::update::{Expectations, SignedUpdate, UpdateHeader, VerifiedUpdate, verify};
use shared_model::weights::Weights;

use crate::blobs::{BlobStore, BlobStoreError};
use crate::store::{ModelRow, RoundPhase, RoundRow, Store, StoreError, TaskRow, UpdateRow};

/// Strategies this build can run.
pub const STRATEGIES: &[&str] = shared_model::strategy::NAMES;

/// Longest decline reason stored, in characters.
const MAX_REASON: usize = 500;

/// Option keys the engine adds to each step of a relay (not strategy options).
const RELAY_KEYS: [&str; 4] = ["party", "step", "steps", "parties"];

/// A stored round's strategy, and for a relay step, the party and step index.
fn round_config(r: &RoundRow) -> Result<(StrategyConfig, Option<(String, usize)>)> {
    let mut options: BTreeMap<String, String> = serde_json::from_str(&r.options).map_err(|e| {
        EngineError::Invalid(format!(
            "task {} round {}: stored options: {e}",
            r.task, r.round
        ))
    })?;
    let party = options.remove(RELAY_KEYS[0]);
    let step = options.remove(RELAY_KEYS[1]).and_then(|s| s.parse().ok());
    options.remove(RELAY_KEYS[2]);
    options.remove(RELAY_KEYS[3]);
    let cfg = StrategyConfig::parse(&r.strategy, &options)
        .map_err(|e| EngineError::Invalid(format!("task {} round {}: {e}", r.task, r.round)))?;
    Ok((cfg, party.zip(step)))
}

/// The number of parties a relay step's relay runs over (relays queued before this was recorded
/// have none: the caller falls back to the task's parties).
fn relay_parties(r: &RoundRow) -> Option<usize> {
    let options: BTreeMap<String, String> = serde_json::from_str(&r.options).ok()?;
    options.get(RELAY_KEYS[3])?.parse().ok()
}

/// In central DP mode, checks that an update's delta from the (single-network) base is within
/// the clip; a reason naming the norm otherwise. Local mode has no such check: the party's
/// noise makes the norm large by design.
fn check_dp_clip(
    spec: &ModelSpec,
    base: &Model,
    update: &Weights,
) -> std::result::Result<(), String> {
    let Some(d) = spec
        .privacy
        .dp
        .as_ref()
        .filter(|d| d.mode == DpMode::Central)
    else {
        return Ok(());
    };
    let Model::Single(b) = base else {
        return Err(format!(
            "differential privacy needs a single-network base, the round's is a {}",
            base.kind()
        ));
    };
    dp::check_clip(d, b, update).map_err(|norm| {
        format!(
            "its delta from the base model has L2 norm {norm:.6}, above the task's DP clip {} (central mode)",
            d.clip
        )
    })
}

/// The privacy a task with DP has spent once round `round` is published.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpSpent {
    /// Published rounds up to and including this one (every one ran with DP).
    pub rounds: u64,
    /// ε of (ε, δ)-DP (`shared_model::dp::epsilon`).
    pub epsilon: f64,
    /// δ, from the spec.
    pub delta: f64,
}

/// (ε, δ) after the published rounds of `rounds` numbered up to `round`. The spec is fixed at
/// task creation, so every published round of a DP task ran with DP; counting every published
/// round is an upper bound on the rounds any one party took part in.
pub fn dp_spent(d: &DpSpec, rounds: &[RoundRow], round: u64) -> DpSpent {
    // Central mode releases only the noised sum of a published round. Local mode releases each
    // noised upload as it is sent, so a round that failed after uploads spent budget too: count
    // every round that closed (an upper bound on any one party's uploads).
    let spent = |r: &&RoundRow| match d.mode {
        shared_model::spec::DpMode::Central => r.phase == RoundPhase::Published,
        shared_model::spec::DpMode::Local => {
            matches!(r.phase, RoundPhase::Published | RoundPhase::Failed)
        }
    };
    let n = rounds
        .iter()
        .filter(|r| r.round <= round)
        .filter(spent)
        .count() as u64;
    DpSpent {
        rounds: n,
        epsilon: dp::epsilon(n, d.noise_multiplier, d.delta),
        delta: d.delta,
    }
}

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
        /// Learning-rate override (0 = spec's).
        learning_rate: f64,
        /// Layers to keep frozen.
        frozen_layers: u32,
        /// Parties whose data the round's result combines (all of a relay's parties).
        round_parties: u32,
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
    /// The party's membership audit of the update.
    pub membership_audit: Option<&'a MembershipAudit>,
}

/// The envelope as stored in the database.
#[derive(Serialize, Deserialize)]
struct StoredEnvelope {
    header: UpdateHeader,
    signer: String,
    signature: String,
}

/// An update kept for a round's merge: what the manifest names, and the verified update
/// itself unless it was already folded into a streaming FedAvg.
struct Kept {
    party: PartyId,
    sha: Sha256,
    samples: u64,
    min_cohort: u32,
    local: Option<String>,
    update: Option<VerifiedUpdate>,
}

impl Kept {
    fn new(v: VerifiedUpdate, sha: Sha256, local: Option<String>, folded: bool) -> Self {
        Self {
            party: v.party().clone(),
            sha,
            samples: v.sample_count(),
            min_cohort: v.header().min_cohort,
            local,
            update: (!folded).then_some(v),
        }
    }
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
    /// Seconds each merge took (re-verification, strategy, publication) since last taken.
    merge_seconds: Vec<f64>,
    /// The last stored model decoded, by blob sha256 (blobs are immutable, so it never goes stale).
    model_cache: Option<(Sha256, std::sync::Arc<Model>)>,
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

    /// Revokes a party; in any open round it stops counting as awaited (one transaction).
    pub fn revoke(&mut self, name: &str, now: i64) -> Result<()> {
        if !self
            .store
            .revoke_party(name, "revoked by the operator", now)?
        {
            return Err(EngineError::NotFound(format!("no party named {name}")));
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
        let (t, spec) = self.task(task)?;
        let cfg = StrategyConfig::parse(strategy, options)
            .and_then(|c| c.check_for(&spec).map(|()| c))
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        if let Some(d) = &spec.privacy.dp {
            dp::check_strategy(d.mode, strategy).map_err(|e| {
                EngineError::Invalid(format!(
                    "task {task} has differential privacy ([privacy.dp]): {e}"
                ))
            })?;
        }
        if cfg.min_updates() > t.parties.len() {
            return Err(EngineError::Invalid(format!(
                "{cfg} merges at least {} updates; task {task} has {} parties",
                cfg.min_updates(),
                t.parties.len()
            )));
        }
        if min_parties == 0 || min_parties as usize > t.parties.len() {
            return Err(EngineError::Invalid(format!(
                "min parties must be between 1 and the task's {} parties, found {min_parties}",
                t.parties.len()
            )));
        }
        if !cfg.is_relay() && (min_parties as usize) < cfg.min_updates() {
            return Err(EngineError::Invalid(format!(
                "{cfg} merges at least {} updates: set --min-parties to {} or more",
                cfg.min_updates(),
                cfg.min_updates()
            )));
        }
        if deadline_ms <= 0 || count == 0 || count > 1000 {
            return Err(EngineError::Invalid(
                "the deadline must be positive and the round count between 1 and 1000".into(),
            ));
        }
        let row = |options: &BTreeMap<String, String>, min_parties: u32| RoundRow {
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
        if matches!(cfg.strategy, Strategy::Ensemble) && t.parties.len() > MAX_PARTS {
            return Err(EngineError::Invalid(format!(
                "an ensemble holds at most {MAX_PARTS} members; task {task} has {} parties",
                t.parties.len()
            )));
        }
        let mut rows = Vec::new();
        if cfg.is_relay() {
            // A relay is queued as one round per step, each inviting one party: the order is
            // fixed now, from the parties not revoked.
            let revoked = self.revoked()?;
            let active: Vec<String> = t
                .parties
                .iter()
                .filter(|p| !revoked.contains(p))
                .cloned()
                .collect();
            let order = cfg.relay_order(&active);
            if matches!(cfg.strategy, Strategy::Series { .. }) {
                // Stages already published (a later relay extends the chain), plus one per step.
                let have = match self.stored_model(task, &spec, None)? {
                    Some((_, m)) => match &*m {
                        Model::Series(stages) => stages.len(),
                        _ => 0,
                    },
                    None => 0,
                };
                let queued = self
                    .store
                    .rounds(task)?
                    .iter()
                    .filter(|r| {
                        r.strategy == "series"
                            && matches!(r.phase, RoundPhase::Queued | RoundPhase::Training)
                    })
                    .count();
                let need = have + queued + order.len() * count as usize;
                if need > MAX_PARTS {
                    return Err(EngineError::Invalid(format!(
                        "a series network holds at most {MAX_PARTS} stages; {have} published, {queued} queued and {count} relay(s) over {} parties would make {need}",
                        order.len()
                    )));
                }
            }
            if order.is_empty() {
                return Err(EngineError::Precondition(format!(
                    "task {task} has no party left that is not revoked; nothing to relay"
                )));
            }
            // Steps count on across relays, so "after the first party" means the first party
            // of the first relay (Transfer Learning freezes and slows down from step 1 on).
            let steps = order.len() * count as usize;
            for (step, party) in order.iter().cycle().take(steps).enumerate() {
                let mut o = cfg.options();
                o.insert("party".into(), party.clone());
                o.insert("step".into(), step.to_string());
                o.insert("steps".into(), steps.to_string());
                o.insert("parties".into(), active.len().to_string());
                rows.push(row(&o, 1));
            }
        } else {
            rows = (0..count)
                .map(|_| row(&cfg.options(), min_parties))
                .collect();
        }
        Ok(self.store.queue_rounds(task, &rows, now)?)
    }

    fn revoked(&self) -> Result<Vec<String>> {
        Ok(self
            .store
            .parties()?
            .into_iter()
            .filter(|p| p.revoked)
            .map(|p| p.name)
            .collect())
    }

    /// The next piece of work for `party`, if any: statistics and training of every task come
    /// before evaluations, so evaluating one task's model never delays another task's round.
    /// Work the party declined is not offered again.
    pub fn next_assignment(&self, party: &str, now: i64) -> Result<Option<Assignment>> {
        let tasks: Vec<TaskRow> = self
            .store
            .tasks()?
            .into_iter()
            .filter(|t| t.parties.iter().any(|p| p == party))
            .collect();
        let base = |t: &TaskRow, id: String, round: u64, work: Work, deadline_ms: i64| Assignment {
            id,
            task: t.name.clone(),
            spec_toml: t.spec_toml.clone(),
            spec_id: t.spec_id.clone(),
            round,
            step: 0,
            work,
            deadline_ms,
        };
        for t in &tasks {
            if t.normalization.is_none() {
                let id = format!("{}/stats/0", t.name);
                if !self.store.has_sums(&t.name, party)?
                    && !self.store.declined(&t.name, &id, party)?
                {
                    return Ok(Some(base(t, id, 0, Work::Stats, now + 3_600_000)));
                }
                continue;
            }
            for r in self.store.rounds(&t.name)? {
                if r.phase != RoundPhase::Training {
                    continue;
                }
                let invited = self
                    .store
                    .round_party(&t.name, r.round, party)?
                    .is_some_and(|p| p.state == "invited");
                if invited {
                    let bv = r.base_version.unwrap_or(0);
                    let m = self.store.model(&t.name, Some(bv))?.ok_or_else(|| {
                        EngineError::NotFound(format!(
                            "base model version {bv} of {} is missing",
                            t.name
                        ))
                    })?;
                    let (cfg, relay) = round_config(&r)?;
                    let step = relay.as_ref().map_or(0, |(_, s)| *s);
                    let spec = ModelSpec::parse(&t.spec_toml, &t.name)
                        .map_err(|e| EngineError::Invalid(e.to_string()))?;
                    let o = cfg.train_options(&spec, step, 0);
                    let round_parties = if relay.is_some() {
                        relay_parties(&r).unwrap_or(t.parties.len())
                    } else {
                        self.store.round_party_count(&t.name, r.round)?
                    };
                    let work = Work::Train {
                        base_version: bv,
                        base_sha256: m.blob_sha256.parse().map_err(
                            |e: shared_model::ids::IdError| {
                                EngineError::Invalid(format!(
                                    "task {}: stored model {bv}: {e}",
                                    t.name
                                ))
                            },
                        )?,
                        strategy: r.strategy.clone(),
                        fedprox_mu: o.fedprox_mu.unwrap_or(0.0),
                        learning_rate: if o.learning_rate == spec.training.learning_rate {
                            0.0
                        } else {
                            o.learning_rate
                        },
                        frozen_layers: o.frozen_layers as u32,
                        round_parties: u32::try_from(round_parties).unwrap_or(u32::MAX),
                    };
                    let mut a = base(
                        t,
                        format!("{}/train/{}", t.name, r.round),
                        r.round,
                        work,
                        r.ends_ms.unwrap_or(now),
                    );
                    a.step = step as u64;
                    return Ok(Some(a));
                }
            }
        }
        for t in &tasks {
            if t.normalization.is_none() {
                continue;
            }
            if let Some(latest) = self.store.model(&t.name, None)?
                && latest.version > 0
            {
                let id = format!("{}/evaluate/{}", t.name, latest.version);
                let done = self
                    .store
                    .evaluations(&t.name, latest.version)?
                    .iter()
                    .any(|(p, _)| p == party);
                if !done && !self.store.declined(&t.name, &id, party)? {
                    return Ok(Some(base(
                        t,
                        id,
                        latest.round,
                        Work::Evaluate {
                            version: latest.version,
                        },
                        now + 3_600_000,
                    )));
                }
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
        sums.validate(spec.input_width()).map_err(|e| {
            EngineError::Invalid(format!("feature sums of {party} for task {task}: {e}"))
        })?;
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
            sha,
            self.blobs.clone(),
        ))
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
    ) -> Result<Option<(Sha256, std::sync::Arc<Model>)>> {
        let Some(row) = self.store.model(task, version)? else {
            return Ok(None);
        };
        let bad = |e: String| {
            EngineError::Invalid(format!("task {task}: stored model {}: {e}", row.version))
        };
        let sha: Sha256 = row
            .blob_sha256
            .parse()
            .map_err(|e: shared_model::ids::IdError| bad(e.to_string()))?;
        if let Some((cached, model)) = &self.model_cache
            && *cached == sha
        {
            return Ok(Some((sha, model.clone())));
        }
        let role = if row.version == 0 {
            BlobRole::Initial
        } else {
            BlobRole::Merged
        };
        // Decoded once and shared: every upload of a round checks against its base, and a
        // clone per upload would copy the whole model each time.
        let model = std::sync::Arc::new(
            Model::decode(&self.blobs.get(&sha)?, spec, role).map_err(|e| bad(e.to_string()))?,
        );
        self.model_cache = Some((sha, model.clone()));
        Ok(Some((sha, model)))
    }

    /// A round's base model: its blob's sha256 and the decoded model.
    fn base_model(
        &mut self,
        task: &str,
        spec: &ModelSpec,
        r: &RoundRow,
    ) -> Result<(Sha256, std::sync::Arc<Model>)> {
        let version = r.base_version.unwrap_or(0);
        self.stored_model(task, spec, Some(version))?
            .ok_or_else(|| {
                EngineError::NotFound(format!(
                    "task {task}: base model version {version} of round {} is missing",
                    r.round
                ))
            })
    }

    /// What an update of round `r` must look like: its relay step and series stage.
    fn update_shape(r: &RoundRow, base: &Model) -> Result<(StepNo, usize)> {
        let (cfg, relay) = round_config(r)?;
        let step = relay.map_or(0, |(_, s)| s as u64);
        Ok((StepNo(step), cfg.expected_stage(base)))
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
            membership_audit,
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
        if let Some(u) = self.store.update(&task, round, party)? {
            if u.blob_sha256 == envelope.header.blob_sha256.to_string() {
                return Ok(UploadOutcome::AlreadyAccepted);
            }
            return Err(EngineError::Exists(format!(
                "{party} already has an accepted update for round {round} of {task}; a different one is refused"
            )));
        }
        let Some(invited) = self.store.round_party(&task, round, party)? else {
            return Err(EngineError::Precondition(format!(
                "{party} is not invited to round {round} of {task}"
            )));
        };
        if self.store.party(party)?.is_some_and(|p| p.revoked) {
            return Err(EngineError::Precondition(format!(
                "{party} is revoked; its update for round {round} of {task} is refused"
            )));
        }
        if r.phase != RoundPhase::Training || now > r.ends_ms.unwrap_or(i64::MAX) {
            let reason = format!("late: round {round} of {task} is closed ({})", r.phase);
            self.store
                .reject(&task, round, party, "late", &reason, now)?;
            return Err(EngineError::Precondition(reason));
        }
        // Only a party still awaited may upload. A rejected upload leaves the party awaited (see
        // below); one that declined, was revoked or was left out may not upload.
        if invited.state != "invited" {
            return Err(EngineError::Precondition(format!(
                "{party} can no longer upload to round {round} of {task}: it is {} ({})",
                invited.state, invited.reason
            )));
        }
        let (base_sha, base) = self.base_model(&task, &spec, r)?;
        let (step, stage) = Self::update_shape(r, &base)?;
        let task_id = TaskId::new(&task).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let party_id = PartyId::new(party).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let expect = Expectations {
            task: &task_id,
            spec: &spec,
            round: RoundNo(round),
            step,
            base_model: base_sha,
            party: &party_id,
            stage,
        };
        let checked = verify(envelope, bytes, party_key, &expect)
            .map_err(|e| (e.code(), e.to_string()))
            .and_then(|v| {
                // The task's normalisation is fixed by the statistics step; an update keeps it.
                base.check_update_normalization(v.weights(), spec.input_width())
                    .map(|()| v)
                    .map_err(|why| ("normalisation", format!("update of {party}: {why}")))
            })
            .and_then(|v| {
                check_dp_clip(&spec, &base, v.weights())
                    .map(|()| v)
                    .map_err(|why| ("dp_clip", format!("update of {party}: {why}")))
            });
        if let Err((code, reason)) = checked {
            // The rejection is recorded, but the party stays invited: the bad upload may have
            // been damaged in transit, so it is offered the assignment again and may send a good
            // update until the deadline. A party that keeps failing is dropped at the deadline,
            // named with its last rejection.
            self.store
                .reject_upload(&task, round, party, code, &reason, now)?;
            return Err(EngineError::Rejected { code, reason });
        }
        // `verify` checked the bytes hash to the signed header's digest: no second hash.
        let sha = self.blobs.put_hashed(bytes, envelope.header.blob_sha256)?;
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
                membership_audit: membership_audit
                    .map(|a| serde_json::to_string(a).expect("audits serialise")),
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

    /// Records that a party declined an assignment. A declined training invitation counts as
    /// an answer in its round; declined statistics or evaluation work is not offered again.
    pub fn decline(&mut self, party: &str, assignment: &str, reason: &str, now: i64) -> Result<()> {
        let (task, kind, number) = Self::parse_assignment(assignment)?;
        let (t, _) = self.task(&task)?;
        self.check_member(&task, party)?;
        // A reason is for people to read; a long one is cut, never stored whole.
        let reason: String = if reason.chars().count() > MAX_REASON {
            reason.chars().take(MAX_REASON).chain("…".chars()).collect()
        } else {
            reason.to_string()
        };
        let not_yours = || {
            EngineError::Precondition(format!(
                "{party} has no open assignment {assignment} to decline"
            ))
        };
        match kind.as_str() {
            "train" => {
                // Only an open invitation can be declined.
                let open = self
                    .store
                    .rounds(&task)?
                    .iter()
                    .any(|r| r.round == number && r.phase == RoundPhase::Training);
                let invited = self
                    .store
                    .round_parties(&task, number)?
                    .iter()
                    .any(|p| p.party == party && p.state == "invited");
                if !(open && invited) {
                    return Err(not_yours());
                }
                let reason = format!("declined: {reason}");
                self.store
                    .decline_in_round(&task, number, party, &reason, now)?;
            }
            "stats" => {
                if t.normalization.is_some() || number != 0 {
                    return Err(not_yours());
                }
                self.store
                    .put_decline(&task, assignment, party, &reason, now)?;
                tracing::info!(%task, %party, %assignment, %reason, "party declined work");
            }
            "evaluate" => {
                if self.store.model(&task, Some(number))?.is_none() || number == 0 {
                    return Err(not_yours());
                }
                self.store
                    .put_decline(&task, assignment, party, &reason, now)?;
                tracing::info!(%task, %party, %assignment, %reason, "party declined work");
            }
            other => {
                return Err(EngineError::Invalid(format!(
                    "assignment {assignment} has unknown kind {other:?}"
                )));
            }
        }
        Ok(())
    }

    /// Moves every task forward; true if anything changed. A task that cannot move (a broken
    /// row, a failing merge) is logged with its name and does not hold up the others.
    pub fn tick(&mut self, now: i64) -> Result<bool> {
        let mut changed = false;
        for t in self.store.tasks()? {
            match self.tick_task(&t, now) {
                Ok(c) => changed |= c,
                Err(e) => tracing::error!(task = %t.name, error = %e, "task cannot move forward"),
            }
        }
        Ok(changed)
    }

    fn tick_task(&mut self, t: &TaskRow, now: i64) -> Result<bool> {
        let spec = ModelSpec::parse(&t.spec_toml, &t.name)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        if t.normalization.is_none() {
            let sums = self.store.sums(&t.name)?;
            // A party that declined the statistics (e.g. its site policy refuses the task) has
            // answered: the others need not wait for the deadline.
            let stats_id = format!("{}/stats/0", t.name);
            let mut declined = 0;
            for p in &t.parties {
                if !sums.iter().any(|(q, _)| q == p)
                    && self.store.declined(&t.name, &stats_id, p)?
                {
                    declined += 1;
                }
            }
            if declined > 0 && sums.len() + declined == t.parties.len() {
                // Everyone answered, some by declining. The normalisation published in model v0
                // is the reporters' pooled mean and variance: never from fewer parties than the
                // round's quorum, or it would expose the few who reported. The queued rounds
                // cannot run; each fails, naming who declined.
                let rounds = self.store.rounds(&t.name)?;
                let Some(first) = rounds.iter().find(|r| r.phase == RoundPhase::Queued) else {
                    return Ok(false);
                };
                if (sums.len() as u32) < first.min_parties.max(1) {
                    let who: Vec<&str> = t
                        .parties
                        .iter()
                        .filter(|p| !sums.iter().any(|(q, _)| q == *p))
                        .map(String::as_str)
                        .collect();
                    let reason = format!(
                        "statistics: only {} of {} parties reported feature sums ({} declined: {}), fewer than the round's quorum of {}; the normalisation is not computed from so few",
                        sums.len(),
                        t.parties.len(),
                        declined,
                        who.join(", "),
                        first.min_parties
                    );
                    tracing::warn!(task = %t.name, round = first.round, %reason, "round cannot run");
                    self.store.fail_round(&t.name, first.round, &reason, now)?;
                    return Ok(true);
                }
            }
            if sums.len() + declined < t.parties.len() {
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
                &Model::Single(initial),
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
            let started = std::time::Instant::now();
            let changed = self.tick_round(t, &spec, r, now)?;
            if changed {
                self.merge_seconds.push(started.elapsed().as_secs_f64());
            }
            return Ok(changed);
        }
        if let Some(r) = rounds.iter().find(|r| r.phase == RoundPhase::Queued) {
            let latest = self.store.model(&t.name, None)?.map_or(0, |m| m.version);
            let revoked = self.revoked()?;
            // A relay step invites its one party; a broadcast round every active party.
            let (_, relay) = round_config(r)?;
            let invited: Vec<String> = t
                .parties
                .iter()
                .filter(|p| !revoked.contains(p))
                .filter(|p| relay.as_ref().is_none_or(|(only, _)| only == *p))
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
        // Re-verify every stored update: only a VerifiedUpdate reaches the strategy, also after a
        // restart. An update that no longer verifies (its party was revoked, its blob changed on
        // disk) is rejected here, named, and left out; the quorum counts what is left.
        let keys = self.party_keys()?;
        let (base, base_model) = self.base_model(&t.name, spec, r)?;
        let (cfg, relay) = round_config(r)?;
        let (step, stage) = Self::update_shape(r, &base_model)?;
        let task_id = TaskId::new(&t.name).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let verify_row = |u: &UpdateRow| -> std::result::Result<(VerifiedUpdate, Sha256), String> {
            let env = load_envelope(&u.envelope)
                .ok_or_else(|| "its stored envelope is unreadable".to_string())?;
            let key = match keys.iter().find(|(n, _, _)| *n == u.party) {
                None => return Err("the party is no longer enrolled".into()),
                Some((_, _, true)) => return Err("the party was revoked".into()),
                Some((_, k, false)) => *k,
            };
            let sha: Sha256 = u.blob_sha256.parse().map_err(|e| format!("{e}"))?;
            // `verify` below checks the bytes hash to the signed digest (the row's name):
            // a damaged blob is left out naming the mismatch, without a second hash.
            let bytes = self.blobs.read_unchecked(&sha).map_err(|e| e.to_string())?;
            let party_id = PartyId::new(&u.party).map_err(|e| e.to_string())?;
            let expect = Expectations {
                task: &task_id,
                spec,
                round: RoundNo(r.round),
                step,
                base_model: base,
                party: &party_id,
                stage,
            };
            let v = verify(&env, &bytes, &key, &expect).map_err(|e| e.to_string())?;
            check_dp_clip(spec, &base_model, v.weights())?;
            Ok((v, sha))
        };
        // FedAvg and FedProx without a norm bound or central DP fold each update in as soon as
        // it verifies, so the round close holds one update at a time (O(model) memory, not
        // O(parties × model)); the other strategies need all updates at once.
        let central_dp = spec
            .privacy
            .dp
            .as_ref()
            .is_some_and(|d| d.mode == DpMode::Central);
        let streaming = relay.is_none()
            && cfg.norm_bound.is_none()
            && !central_dp
            && matches!(cfg.strategy, Strategy::FedAvg | Strategy::FedProx { .. });
        let rows = self.store.updates(&t.name, r.round)?;
        let mut verified_updates: Vec<Kept> = Vec::new();
        let mut acc = shared_model::aggregate::FedAvg::new();
        // The first error folding an update in: the merge fails with it, as `cfg.merge` would.
        let mut acc_error: Option<String> = None;
        let mut left_out = Vec::new();
        for u in &rows {
            match verify_row(u) {
                Ok((v, sha)) => {
                    if streaming
                        && acc_error.is_none()
                        && let Err(e) = acc.add(&v)
                    {
                        acc_error = Some(e.to_string());
                    }
                    verified_updates.push(Kept::new(v, sha, u.local_metrics.clone(), streaming));
                }
                Err(why) => left_out.push((u.party.clone(), why)),
            }
        }
        for (party, why) in left_out {
            let reason = format!("update left out of the merge: {why}");
            tracing::warn!(task = %t.name, round = r.round, %party, %reason);
            self.store
                .leave_out(&t.name, r.round, &party, &reason, now)?;
        }
        // Each party's signed cohort requirement (its site's fewest other parties + 1): an
        // update is merged only with at least that many updates in all — for a relay step, the
        // relay's parties. Leaving one out can break another's requirement: repeat until none.
        let mut cohort_changed = false;
        loop {
            let cohort = if relay.is_some() {
                relay_parties(r).unwrap_or(t.parties.len())
            } else {
                verified_updates.len()
            };
            let (keep, short): (Vec<_>, Vec<_>) = verified_updates
                .into_iter()
                .partition(|k| k.min_cohort as usize <= cohort);
            verified_updates = keep;
            if short.is_empty() {
                break;
            }
            cohort_changed = true;
            for k in short {
                let reason = format!(
                    "update left out of the merge: its site requires at least {} parties in the merge (policy.min_other_parties), only {cohort} would be",
                    k.min_cohort
                );
                tracing::warn!(task = %t.name, round = r.round, party = %k.party, %reason);
                self.store
                    .leave_out(&t.name, r.round, k.party.as_str(), &reason, now)?;
            }
        }
        if streaming && cohort_changed {
            // Rare: the sum holds updates now left out. Fold the kept ones in again (their
            // blobs are read and verified once more).
            acc = shared_model::aggregate::FedAvg::new();
            acc_error = None;
            for k in &verified_updates {
                let folded = rows
                    .iter()
                    .find(|u| u.party == k.party.as_str())
                    .ok_or_else(|| "its row vanished".to_string())
                    .and_then(&verify_row)
                    .and_then(|(v, _)| acc.add(&v).map_err(|e| e.to_string()));
                if let Err(e) = folded {
                    acc_error = Some(format!("update of {}: {e}", k.party));
                    break;
                }
            }
        }
        if (verified_updates.len() as u32) < r.min_parties {
            let parties = self.store.round_parties(&t.name, r.round)?;
            let others: Vec<String> = parties
                .iter()
                .filter(|p| {
                    p.state != "accepted"
                        || !verified_updates.iter().any(|k| k.party.as_str() == p.party)
                })
                .map(|p| match p.state.as_str() {
                    "invited" if p.reason.is_empty() => {
                        format!("{}: no answer by the deadline", p.party)
                    }
                    "invited" => format!(
                        "{}: no valid update by the deadline (last rejected: {})",
                        p.party, p.reason
                    ),
                    _ => format!("{}: {}", p.party, p.reason),
                })
                .collect();
            let mut others = others;
            if let Some((party, step)) = &relay
                && !parties.iter().any(|p| p.party == *party)
            {
                others.push(format!(
                    "{party}: revoked before relay step {step}, which is skipped"
                ));
            }
            let reason = format!(
                "quorum not met: {} of {} required updates accepted ({})",
                verified_updates.len(),
                r.min_parties,
                others.join("; ")
            );
            tracing::warn!(task = %t.name, round = r.round, %reason, "round failed");
            self.store.fail_round(&t.name, r.round, &reason, now)?;
            return Ok(true);
        }
        let mut contributors = Vec::new();
        let mut metrics: Option<MetricStats> = None;
        for k in &verified_updates {
            contributors.push(Contributor {
                party: k.party.clone(),
                update_sha256: k.sha,
                sample_count: k.samples,
            });
            if let Some(json) = &k.local
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
        let merged = if let Some((party, _)) = &relay {
            let Some(only) = verified_updates
                .iter()
                .find(|k| k.party.as_str() == party)
                .and_then(|k| k.update.as_ref())
            else {
                return Err(EngineError::Invalid(format!(
                    "task {} round {}: relay step of {party} has no update of {party}",
                    t.name, r.round
                )));
            };
            relay_step(&cfg.strategy, &base_model, only.weights())
        } else {
            let contributions: Vec<Contribution<'_>> = verified_updates
                .iter()
                .filter_map(|k| k.update.as_ref())
                .map(|v| Contribution {
                    party: v.party().as_str(),
                    weights: v.weights(),
                    samples: v.sample_count(),
                })
                .collect();
            let merged = match (&spec.privacy.dp, &*base_model) {
                _ if streaming => match acc_error {
                    Some(e) => Err(e),
                    None => acc.finish().map(Model::Single).map_err(|e| e.to_string()),
                },
                (Some(d), Model::Single(b)) if d.mode == DpMode::Central => {
                    // Central DP: the unweighted mean of the clipped deltas plus the noise.
                    let updates: Vec<&Weights> = contributions.iter().map(|c| c.weights).collect();
                    dp::central_merge(d, b, &updates, &mut dp::os_rng())
                        .map(Model::Single)
                        .map_err(|e| e.to_string())
                }
                _ => cfg
                    .merge(&base_model, &contributions)
                    .map_err(|e| e.to_string()),
            };
            match merged {
                Ok(m) => m,
                Err(e) => {
                    let reason = format!("{} merge failed: {e}", cfg.name);
                    tracing::warn!(task = %t.name, round = r.round, %reason, "round failed");
                    self.store.fail_round(&t.name, r.round, &reason, now)?;
                    return Ok(true);
                }
            }
        };
        let parts = match &merged {
            Model::Single(_) => 1,
            Model::Ensemble(m) => m.len(),
            Model::Series(s) => s.len(),
        };
        if parts > MAX_PARTS {
            let reason = format!(
                "the merged {} would hold {parts} networks; a published model holds at most {MAX_PARTS}",
                merged.kind()
            );
            tracing::warn!(task = %t.name, round = r.round, %reason, "round failed");
            self.store.fail_round(&t.name, r.round, &reason, now)?;
            return Ok(true);
        }
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
        tracing::info!(task = %t.name, round = r.round, version, updates = verified_updates.len(), "merged model published");
        if let Some(d) = &spec.privacy.dp {
            let rounds = self.store.rounds(&t.name)?;
            let spent = dp_spent(d, &rounds, r.round);
            tracing::info!(task = %t.name, round = r.round, dp_rounds = spent.rounds, epsilon = spent.epsilon, delta = spent.delta, mode = dp::mode_name(d.mode), "differential privacy spent so far");
        }
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    fn publish_row(
        &self,
        t: &TaskRow,
        spec: &ModelSpec,
        model: &Model,
        role: BlobRole,
        version: u64,
        round: u64,
        strategy: &str,
        contributors: Vec<Contributor>,
        metrics: Option<shared_model::eval::Metrics>,
        now: i64,
    ) -> Result<ModelRow> {
        let bytes = model.encode(spec.id(), role);
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

#[cfg(test)]
mod tests {
    use super::*;
    use shared_model::blob::{self, BlobMeta};
    use shared_model::keys::generate;

    const SPEC: &str = r#"
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

    struct Fixture {
        _dir: tempfile::TempDir,
        engine: Engine,
        keys: Vec<(String, SigningKey)>,
        spec: String,
        /// Signed cohort requirement of each party's uploads (0 = none).
        min_cohort: Vec<u32>,
    }

    fn sums() -> FeatureSums {
        FeatureSums::of_rows(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 2)
    }

    /// An engine with `n` enrolled parties and a task `t` past its statistics step.
    fn fixture(n: usize) -> Fixture {
        fixture_with(n, SPEC)
    }

    /// The same with another spec text for the task.
    fn fixture_with(n: usize, spec: &str) -> Fixture {
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
        engine.create_task("t", spec, &[], 0).unwrap();
        for (name, _) in &keys {
            engine.submit_sums(name, "t/stats/0", &sums()).unwrap();
        }
        assert!(engine.tick(1).unwrap(), "statistics complete");
        Fixture {
            _dir: dir,
            engine,
            keys,
            spec: spec.to_string(),
            min_cohort: Vec::new(),
        }
    }

    impl Fixture {
        /// A correctly signed update of party `i` for round `round`, trained on nothing.
        fn upload(&mut self, i: usize, round: u64, now: i64) -> Result<UploadOutcome> {
            let norm = sums().normalization().unwrap();
            self.upload_with(i, round, now, &norm)
        }

        /// The same with a chosen normalisation.
        fn upload_with(
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
        fn upload_weights(
            &mut self,
            i: usize,
            round: u64,
            now: i64,
            w: &Weights,
        ) -> Result<UploadOutcome> {
            let spec = ModelSpec::parse(&self.spec, "t").unwrap();
            let (name, key) = &self.keys[i];
            let r = self.engine.store().rounds("t").unwrap();
            let r = r.iter().find(|r| r.round == round).unwrap();
            let base = self
                .engine
                .store()
                .model("t", r.base_version)
                .unwrap()
                .unwrap();
            let bytes = blob::encode(
                w,
                &BlobMeta {
                    spec_id: spec.id(),
                    role: BlobRole::Update,
                },
            );
            let env = SignedUpdate::for_blob(
                TaskId::new("t").unwrap(),
                spec.id(),
                RoundNo(round),
                StepNo(0),
                base.blob_sha256.parse().unwrap(),
                PartyId::new(name).unwrap(),
                &bytes,
                10,
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
                now,
            )
        }
    }

    #[test]
    fn impossible_feature_sums_are_refused_with_the_party_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("y.db")).unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let engine = Engine::new(store, blobs, generate().unwrap(), EngineConfig::default());
        let k = generate().unwrap();
        engine.enroll("plant-a", &k.verifying_key(), 0).unwrap();
        engine.create_task("t", SPEC, &[], 0).unwrap();
        let mut bad = sums();
        bad.sum[0] = f64::NAN;
        let e = engine
            .submit_sums("plant-a", "t/stats/0", &bad)
            .unwrap_err();
        assert!(
            e.to_string().contains("plant-a") && e.to_string().contains("feature 0"),
            "{e}"
        );
        let mut huge = sums();
        huge.count = u64::MAX;
        assert!(engine.submit_sums("plant-a", "t/stats/0", &huge).is_err());
        assert!(
            engine.store().sums("t").unwrap().is_empty(),
            "nothing stored"
        );
        // The statistics step is still open for a good report.
        engine.submit_sums("plant-a", "t/stats/0", &sums()).unwrap();
    }

    #[test]
    fn a_party_revoked_mid_round_cannot_upload_and_is_not_merged() {
        let mut f = fixture(3);
        f.engine
            .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 1, 1)
            .unwrap();
        f.engine.tick(2).unwrap();
        assert_eq!(f.upload(0, 1, 3).unwrap(), UploadOutcome::Accepted);
        f.engine.revoke("plant-1", 4).unwrap();
        let e = f.upload(1, 1, 5).unwrap_err();
        assert!(e.to_string().contains("plant-1 is revoked"), "{e}");
        // plant-2 uploads; then plant-0 is revoked after its upload was accepted.
        assert_eq!(f.upload(2, 1, 6).unwrap(), UploadOutcome::Accepted);
        f.engine.revoke("plant-0", 7).unwrap();
        assert!(f.engine.tick(8).unwrap());
        let r = &f.engine.store().rounds("t").unwrap()[0];
        // Only plant-2 is left after re-verification: below the quorum of 2.
        assert_eq!(r.phase, RoundPhase::Failed);
        let failure = r.failure.clone().unwrap();
        assert!(failure.contains("1 of 2"), "{failure}");
        let parties = f.engine.store().round_parties("t", 1).unwrap();
        let p0 = parties.iter().find(|p| p.party == "plant-0").unwrap();
        assert!(p0.reason.contains("revoked"), "{}", p0.reason);
    }

    #[test]
    fn too_few_feature_sums_after_declines_fail_the_round_instead_of_exposing_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("y.db")).unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let mut engine = Engine::new(store, blobs, generate().unwrap(), EngineConfig::default());
        for i in 0..3 {
            let k = generate().unwrap();
            engine
                .enroll(&format!("plant-{i}"), &k.verifying_key(), 0)
                .unwrap();
        }
        engine.create_task("t", SPEC, &[], 0).unwrap();
        engine
            .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 1, 1)
            .unwrap();
        engine.submit_sums("plant-0", "t/stats/0", &sums()).unwrap();
        engine
            .decline("plant-1", "t/stats/0", "site policy", 2)
            .unwrap();
        assert!(!engine.tick(3).unwrap(), "plant-2 has not answered yet");
        engine
            .decline("plant-2", "t/stats/0", "site policy", 4)
            .unwrap();
        assert!(engine.tick(5).unwrap());
        let r = &engine.store().rounds("t").unwrap()[0];
        assert_eq!(r.phase, RoundPhase::Failed);
        let failure = r.failure.clone().unwrap();
        assert!(
            failure.contains("only 1 of 3 parties reported feature sums")
                && failure.contains("plant-1, plant-2")
                && failure.contains("quorum of 2"),
            "{failure}"
        );
        assert!(
            engine.store().model("t", Some(0)).unwrap().is_none(),
            "no initial model from one plant's sums"
        );
    }

    #[test]
    fn an_update_damaged_on_disk_is_left_out_at_the_close_naming_the_mismatch() {
        let mut f = fixture(3);
        f.engine
            .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 1, 1)
            .unwrap();
        f.engine.tick(2).unwrap();
        for i in 0..3 {
            f.upload(i, 1, 3).unwrap();
        }
        let damaged = f
            .engine
            .store()
            .update("t", 1, "plant-1")
            .unwrap()
            .unwrap()
            .blob_sha256;
        let path = f._dir.path().join("blobs").join(&damaged);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(f.engine.tick(100_000).unwrap());
        let r = &f.engine.store().rounds("t").unwrap()[0];
        assert_eq!(r.phase, RoundPhase::Published, "{r:?}");
        let p1 = f
            .engine
            .store()
            .round_party("t", 1, "plant-1")
            .unwrap()
            .unwrap();
        assert!(
            p1.reason.contains("update left out of the merge")
                && p1.reason.contains("blob sha256 is")
                && p1.reason.contains(&damaged),
            "{}",
            p1.reason
        );
        let (signed, _) = f.engine.model("t", None).unwrap();
        let m: shared_model::manifest::Manifest = serde_json::from_slice(&signed.bytes).unwrap();
        let merged: Vec<&str> = m.contributors.iter().map(|c| c.party.as_str()).collect();
        assert_eq!(merged, ["plant-0", "plant-2"]);
    }

    #[test]
    fn a_signed_cohort_requirement_is_enforced_at_the_merge() {
        let mut f = fixture(4);
        // plant-0 needs 3 parties in the merge, plant-1 needs 4; plant-3 never answers.
        f.min_cohort = vec![3, 4, 0, 0];
        f.engine
            .start_rounds("t", "fedavg", &BTreeMap::new(), 1, 60_000, 1, 1)
            .unwrap();
        f.engine.tick(2).unwrap();
        for i in 0..3 {
            f.upload(i, 1, 3).unwrap();
        }
        // The deadline passes: 3 updates, so plant-1 (needs 4) is left out; then only 2 remain,
        // so plant-0 (needs 3) is left out too; plant-2's update is merged alone.
        assert!(f.engine.tick(100_000).unwrap());
        let r = &f.engine.store().rounds("t").unwrap()[0];
        assert_eq!(r.phase, RoundPhase::Published, "{r:?}");
        let parties = f.engine.store().round_parties("t", 1).unwrap();
        let reason = |name: &str| {
            parties
                .iter()
                .find(|p| p.party == name)
                .map(|p| p.reason.clone())
                .unwrap()
        };
        assert!(
            reason("plant-1").contains("requires at least 4 parties in the merge")
                && reason("plant-1").contains("only 3 would be"),
            "{}",
            reason("plant-1")
        );
        assert!(
            reason("plant-0").contains("requires at least 3 parties in the merge")
                && reason("plant-0").contains("only 2 would be"),
            "{}",
            reason("plant-0")
        );
        let (signed, _) = f.engine.model("t", None).unwrap();
        let m: shared_model::manifest::Manifest = serde_json::from_slice(&signed.bytes).unwrap();
        let merged: Vec<&str> = m.contributors.iter().map(|c| c.party.as_str()).collect();
        assert_eq!(merged, ["plant-2"]);
        // FedAvg streams: the updates left out after being folded in are taken out again, so
        // the model is plant-2's update alone (initial + 0.03), not the mean of three.
        let spec = ModelSpec::parse(&f.spec, "t").unwrap();
        let (_, bytes) = f.engine.model("t", None).unwrap();
        let Model::Single(w) = Model::decode(&bytes, &spec, BlobRole::Merged).unwrap() else {
            panic!("FedAvg publishes a single network")
        };
        let want = Weights::initial(&spec, &sums().normalization().unwrap())
            .map_trainable(|t| t.data.iter().map(|v| v + 0.01 * (2.0f32 + 1.0)).collect())
            .unwrap();
        assert_eq!(w.trainable(), want.trainable());
    }

    #[test]
    fn training_work_says_how_many_parties_the_round_combines() {
        let round_parties = |a: Assignment| match a.work {
            Work::Train { round_parties, .. } => round_parties,
            other => panic!("{other:?}"),
        };
        let mut f = fixture(3);
        f.engine
            .start_rounds("t", "fedavg", &BTreeMap::new(), 1, 60_000, 1, 1)
            .unwrap();
        f.engine.tick(2).unwrap();
        let a = f.engine.next_assignment("plant-1", 3).unwrap().unwrap();
        assert_eq!(round_parties(a), 3);
        for i in 0..3 {
            f.upload(i, 1, 4).unwrap();
        }
        assert!(f.engine.tick(5).unwrap(), "round 1 published");
        // A relay step invites one party, but its result combines the whole relay's.
        f.engine
            .start_rounds("t", "transfer", &BTreeMap::new(), 1, 60_000, 1, 6)
            .unwrap();
        f.engine.tick(7).unwrap();
        let a = f.engine.next_assignment("plant-0", 8).unwrap().unwrap();
        assert_eq!(a.step, 0);
        assert_eq!(round_parties(a), 3);
    }

    #[test]
    fn declined_evaluations_are_not_offered_again_and_training_comes_first() {
        let mut f = fixture(2);
        f.engine
            .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 2, 1)
            .unwrap();
        f.engine.tick(2).unwrap();
        f.upload(0, 1, 3).unwrap();
        f.upload(1, 1, 3).unwrap();
        assert!(f.engine.tick(4).unwrap(), "round 1 published");
        assert!(f.engine.tick(5).unwrap(), "round 2 opened");
        // Round 2's training is offered before round 1's evaluation.
        let a = f.engine.next_assignment("plant-0", 6).unwrap().unwrap();
        assert_eq!(a.id, "t/train/2");
        f.upload(0, 2, 7).unwrap();
        let a = f.engine.next_assignment("plant-0", 8).unwrap().unwrap();
        assert_eq!(a.id, "t/evaluate/1");
        f.engine
            .decline("plant-0", &a.id, "site policy", 9)
            .unwrap();
        assert_eq!(f.engine.next_assignment("plant-0", 10).unwrap(), None);
        // The other party still gets it.
        let b = f.engine.next_assignment("plant-1", 10).unwrap().unwrap();
        assert_eq!(b.id, "t/train/2");
    }

    #[test]
    fn an_update_with_another_normalisation_is_rejected_and_named() {
        let mut f = fixture(2);
        f.engine
            .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 1, 1)
            .unwrap();
        f.engine.tick(2).unwrap();
        let mut norm = sums().normalization().unwrap();
        norm.mean[1] += 1.0;
        match f.upload_with(0, 1, 3, &norm) {
            Err(EngineError::Rejected { code, reason }) => {
                assert_eq!(code, "normalisation");
                assert!(reason.contains("plant-0") && reason.contains("differs from the task's"));
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        // The governance log names the party, the round and the failed check.
        let logged = f.engine.store().audit_records(None, Some(1)).unwrap();
        let detail: serde_json::Value = serde_json::from_str(&logged[0].detail).unwrap();
        assert_eq!(
            (
                logged[0].kind.as_str(),
                logged[0].party.as_deref(),
                logged[0].round
            ),
            ("update_rejected", Some("plant-0"), Some(1))
        );
        assert_eq!(detail["code"], "normalisation");
        // A correct upload afterwards is still taken while the round is open.
        assert_eq!(f.upload(0, 1, 4).unwrap(), UploadOutcome::Accepted);
        // An upload after the deadline is rejected as late, and logged so.
        assert!(f.upload(1, 1, 60_003).is_err());
        let logged = f.engine.store().audit_records(None, Some(1)).unwrap();
        assert_eq!(logged[0].kind, "update_rejected");
        assert!(
            logged[0].detail.contains(r#""code":"late""#),
            "{}",
            logged[0].detail
        );
    }

    #[test]
    fn only_open_work_can_be_declined_and_reasons_are_cut() {
        let mut f = fixture(2);
        // No round 7, and no version 3: nothing to decline, nothing recorded.
        assert!(f.engine.decline("plant-0", "t/train/7", "no", 1).is_err());
        assert!(
            f.engine
                .decline("plant-0", "t/evaluate/3", "no", 1)
                .is_err()
        );
        assert!(
            f.engine.decline("plant-0", "t/stats/0", "no", 1).is_err(),
            "stats closed"
        );
        assert!(f.engine.store().rejections("t", 7).unwrap().is_empty());
        f.engine
            .start_rounds("t", "fedavg", &BTreeMap::new(), 1, 60_000, 1, 1)
            .unwrap();
        f.engine.tick(2).unwrap();
        f.engine
            .decline("plant-0", "t/train/1", &"x".repeat(10_000), 3)
            .unwrap();
        let p = &f.engine.store().round_parties("t", 1).unwrap()[0];
        assert_eq!(p.state, "declined");
        assert!(p.reason.chars().count() < 600, "{} chars", p.reason.len());
        // Declining twice is refused: the invitation is answered.
        assert!(
            f.engine
                .decline("plant-0", "t/train/1", "again", 4)
                .is_err()
        );
    }

    #[test]
    fn strategies_that_cannot_run_are_refused_at_round_start() {
        let mut f = fixture(3);
        let opts = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let e = f
            .engine
            .start_rounds("t", "krum", &opts("f", "1"), 3, 60_000, 1, 1)
            .unwrap_err();
        assert!(e.to_string().contains("at least 5 updates"), "{e}");
        let e = f
            .engine
            .start_rounds("t", "krum", &opts("f", "0"), 2, 60_000, 1, 1)
            .unwrap_err();
        assert!(e.to_string().contains("--min-parties to 3"), "{e}");
        let e = f
            .engine
            .start_rounds("t", "transfer", &opts("freeze", "2"), 1, 60_000, 1, 1)
            .unwrap_err();
        assert!(e.to_string().contains("freeze"), "{e}");
        // 21 relays over 3 parties = 63 stages fit; one more relay would make 66.
        f.engine
            .start_rounds("t", "series", &BTreeMap::new(), 1, 60_000, 21, 1)
            .unwrap();
        let e = f
            .engine
            .start_rounds("t", "series", &BTreeMap::new(), 1, 60_000, 1, 1)
            .unwrap_err();
        assert!(e.to_string().contains("63 queued"), "{e}");
    }

    /// A task with central differential privacy: an update whose delta exceeds the clip is
    /// rejected as `dp_clip` with the party and its norm named; the merge is the unweighted mean
    /// of the deltas plus noise of std σ·C/n; ε is reported for the published round; strategies
    /// the mechanism cannot serve are refused at round start.
    #[test]
    fn central_dp_rejects_unclipped_updates_and_merges_the_mean_with_noise() {
        // Party i's update moves all 13 trainable values by 0.01·(i+1): delta norm
        // 0.0361·(i+1). C = 0.08 admits plant-0 and plant-1, not plant-2.
        let text = format!(
            "{SPEC}\n[privacy.dp]\nmode = \"central\"\nclip = 0.08\nnoise_multiplier = 0.5\ndelta = 1e-5\n"
        );
        let mut f = fixture_with(3, &text);
        for s in ["ensemble", "series", "median"] {
            let e = f
                .engine
                .start_rounds("t", s, &BTreeMap::new(), 1, 60_000, 1, 1)
                .unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("task t") && msg.contains(s) && msg.contains("differential privacy"),
                "{msg}"
            );
        }
        f.engine
            .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 1, 1)
            .unwrap();
        assert!(f.engine.tick(2).unwrap(), "round opens");
        assert_eq!(f.upload(0, 1, 3).unwrap(), UploadOutcome::Accepted);
        assert_eq!(f.upload(1, 1, 3).unwrap(), UploadOutcome::Accepted);
        match f.upload(2, 1, 3) {
            Err(EngineError::Rejected { code, reason }) => {
                assert_eq!(code, "dp_clip");
                assert!(
                    reason.contains("plant-2") && reason.contains("0.108"),
                    "{reason}"
                );
            }
            other => panic!("expected a dp_clip rejection, got {other:?}"),
        }
        // At the deadline the round merges plant-0 and plant-1.
        assert!(f.engine.tick(60_010).unwrap());
        let rounds = f.engine.store().rounds("t").unwrap();
        assert_eq!(rounds[0].phase, RoundPhase::Published, "{:?}", rounds[0]);
        let spec = ModelSpec::parse(&text, "t").unwrap();
        let (_, bytes) = f.engine.model("t", None).unwrap();
        let Model::Single(merged) = Model::decode(&bytes, &spec, BlobRole::Merged).unwrap() else {
            panic!("a single network");
        };
        let base = Weights::initial(&spec, &sums().normalization().unwrap());
        // Unweighted mean of deltas 0.01 and 0.02: 0.015; the rest is noise of std
        // σ·C/n = 0.5·0.08/2 = 0.02 per value.
        let noise: Vec<f64> = merged
            .trainable()
            .iter()
            .zip(base.trainable())
            .flat_map(|(m, b)| m.data.iter().zip(&b.data))
            .map(|(&m, &b)| f64::from(m) - f64::from(b) - 0.015)
            .collect();
        let rms = (noise.iter().map(|x| x * x).sum::<f64>() / noise.len() as f64).sqrt();
        assert!(
            rms > 0.005 && rms < 0.05,
            "noise rms {rms}, want about 0.02"
        );
        assert_eq!(merged.normalization(), base.normalization());
        // The privacy spent is what the accountant says for one round.
        let infos = crate::grpc::convert::round_infos(f.engine.store(), "t").unwrap();
        let want = dp::epsilon(1, 0.5, 1e-5);
        assert!((infos[0].dp_epsilon - want).abs() < 1e-12, "{infos:?}");
        assert_eq!((infos[0].dp_delta, infos[0].dp_rounds), (1e-5, 1));
    }

    #[test]
    fn local_dp_accepts_noised_updates_beyond_the_clip() {
        let text = format!(
            "{SPEC}\n[privacy.dp]\nmode = \"local\"\nclip = 0.01\nnoise_multiplier = 1.0\n"
        );
        let mut f = fixture_with(2, &text);
        let e = f
            .engine
            .start_rounds("t", "ensemble", &BTreeMap::new(), 1, 60_000, 1, 1)
            .unwrap_err();
        assert!(e.to_string().contains("ensemble"), "{e}");
        f.engine
            .start_rounds("t", "median", &BTreeMap::new(), 2, 60_000, 1, 1)
            .unwrap();
        assert!(f.engine.tick(2).unwrap());
        assert_eq!(f.upload(0, 1, 3).unwrap(), UploadOutcome::Accepted);
        assert_eq!(f.upload(1, 1, 3).unwrap(), UploadOutcome::Accepted);
        assert!(f.engine.tick(4).unwrap());
        let infos = crate::grpc::convert::round_infos(f.engine.store(), "t").unwrap();
        assert_eq!(infos[0].phase, "published");
        assert!((infos[0].dp_epsilon - dp::epsilon(1, 1.0, 1e-5)).abs() < 1e-12);
    }
}
