//! The decisions outside a round's close: enrolment, tasks, queuing rounds, which work a party
//! gets, whether an upload is admitted, declines, the statistics step and opening a round.
//! Each takes what it needs to know (a snapshot the shell loaded) and returns a
//! [`Transition`] or a [`Refusal`] naming what is wrong.

use std::collections::BTreeMap;

use shared_model::dp;
use shared_model::ids::{ModelVersion, PartyId, RoundNo, Sha256, TaskId};
use shared_model::model::MAX_PARTS;
use shared_model::spec::ModelSpec;
use shared_model::strategy::{Strategy, StrategyConfig};

use crate::limits::Limits;
use crate::plan::{RelayStep, RoundPlan};
use crate::state::{PartyState, RoundPhase};
use crate::transition::Transition;

/// Longest decline reason kept, in characters (a longer one is cut, never stored whole).
pub const MAX_REASON: usize = 500;

/// How long statistics and evaluation work stays offered, in ms.
pub const WORK_TTL_MS: i64 = 3_600_000;

/// What kind of refusal (mapped to a gRPC code in one place, the coordinator's `grpc` module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// A bad request (bad name, unknown strategy, bad spec…).
    Invalid,
    /// Something named does not exist.
    NotFound,
    /// It exists already.
    Exists,
    /// Not allowed in the current state (a closed round, work not open…).
    Precondition,
}

/// A request the rules refuse, with a message that names what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Its kind.
    pub kind: RefusalKind,
    /// What the caller reads.
    pub message: String,
}

impl Refusal {
    fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// A bad request.
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(RefusalKind::Invalid, m)
    }
    /// Something missing.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(RefusalKind::NotFound, m)
    }
    /// Something that exists.
    pub fn exists(m: impl Into<String>) -> Self {
        Self::new(RefusalKind::Exists, m)
    }
    /// Not now.
    pub fn precondition(m: impl Into<String>) -> Self {
        Self::new(RefusalKind::Precondition, m)
    }
}

pub(crate) type Decided<T> = Result<T, Refusal>;

/// A task as the rules see it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRecord {
    /// Its name.
    pub name: TaskId,
    /// The spec text.
    pub spec_toml: String,
    /// The spec id (hex).
    pub spec_id: String,
    /// Its parties.
    pub parties: Vec<PartyId>,
    /// The normalisation (JSON) once the statistics step is complete.
    pub normalization: Option<String>,
    /// How much one party can weigh in its merges and normalisation.
    pub limits: Limits,
    /// Creation time.
    pub created_ms: i64,
}

impl TaskRecord {
    /// Whether `party` takes part.
    pub fn has(&self, party: &PartyId) -> bool {
        self.parties.contains(party)
    }

    /// The parsed spec; once the statistics step is complete, with the vocabularies it found
    /// for `discover` columns ([`ModelSpec::with_vocabularies`]): the spec every model of the
    /// task follows.
    pub fn spec(&self) -> Decided<ModelSpec> {
        let spec = ModelSpec::parse(&self.spec_toml, &format!("task {}", self.name))
            .map_err(|e| Refusal::invalid(e.to_string()))?;
        match &self.normalization {
            Some(json) if spec.finds() => {
                let norm: shared_model::stats::Normalization =
                    serde_json::from_str(json).map_err(|e| {
                        Refusal::invalid(format!("task {}: stored normalisation: {e}", self.name))
                    })?;
                spec.resolved(&norm)
                    .map_err(|e| Refusal::invalid(format!("task {}: {e}", self.name)))
            }
            _ => Ok(spec),
        }
    }
}

/// A round as the rules see it.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRecord {
    /// The task.
    pub task: TaskId,
    /// Its number.
    pub round: RoundNo,
    /// What it does.
    pub plan: RoundPlan,
    /// Where it is.
    pub phase: RoundPhase,
    /// When it opened.
    pub started_ms: Option<i64>,
    /// Its deadline.
    pub ends_ms: Option<i64>,
    /// The version it trains from.
    pub base_version: Option<ModelVersion>,
    /// The version it published.
    pub version: Option<ModelVersion>,
    /// Why it failed.
    pub failure: Option<String>,
}

impl RoundRecord {
    /// Whether uploads are still taken at `now`.
    pub fn is_open_at(&self, now: i64) -> bool {
        self.phase == RoundPhase::Training && now <= self.ends_ms.unwrap_or(i64::MAX)
    }
}

/// A party's state in a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundParty {
    /// The party.
    pub party: PartyId,
    /// Its state.
    pub state: PartyState,
}

// ---- enrolment and tasks ----------------------------------------------------------------------

/// Enrols a party (the store refuses a name already taken).
pub fn enroll(name: &str, public_key: [u8; 32]) -> Decided<Transition> {
    let party = PartyId::new(name).map_err(|e| Refusal::invalid(e.to_string()))?;
    if name == shared_model::auth::OPERATOR {
        return Err(Refusal::invalid("\"operator\" is reserved"));
    }
    Ok(Transition::EnrollParty { party, public_key })
}

/// Replaces a party's key, keeping its name and its place in every task; `known` is its
/// current key and whether it is revoked (`None`: no such party).
pub fn rotate_key(
    name: &str,
    known: Option<([u8; 32], bool)>,
    public_key: [u8; 32],
) -> Decided<Transition> {
    let party =
        PartyId::new(name).map_err(|_| Refusal::not_found(format!("no party named {name}")))?;
    match known {
        None => Err(Refusal::not_found(format!("no party named {name}"))),
        Some((_, true)) => Err(Refusal::precondition(format!(
            "party {name} is revoked: a revoked name is not given a new key (enroll the plant under a new name)"
        ))),
        Some((old, false)) if old == public_key => Err(Refusal::invalid(format!(
            "this is already the key of {name}"
        ))),
        Some((old, false)) => Ok(Transition::RotateKey {
            party,
            public_key,
            previous: old,
        }),
    }
}

/// Revokes a known party; `awaited` are the open rounds where it is still awaited.
pub fn revoke(name: &str, known: bool, awaited: Vec<(TaskId, RoundNo)>) -> Decided<Transition> {
    let party =
        PartyId::new(name).map_err(|_| Refusal::not_found(format!("no party named {name}")))?;
    if !known {
        return Err(Refusal::not_found(format!("no party named {name}")));
    }
    Ok(Transition::Revoke {
        party,
        reason: "revoked by the operator".into(),
        awaited,
    })
}

/// Creates a task; no `parties` means every enrolled party not revoked. `known` lists every
/// enrolled party and whether it is revoked. `limits_toml` is the operator's contribution
/// limits ([`Limits`]; empty = the defaults).
pub fn create_task(
    name: &str,
    spec_toml: &str,
    parties: &[String],
    limits_toml: &str,
    known: &[(PartyId, bool)],
) -> Decided<Transition> {
    let task = TaskId::new(name).map_err(|e| Refusal::invalid(e.to_string()))?;
    let spec = ModelSpec::parse(spec_toml, &format!("task {name}"))
        .map_err(|e| Refusal::invalid(e.to_string()))?;
    let parties: Vec<PartyId> = if parties.is_empty() {
        known
            .iter()
            .filter(|(_, r)| !r)
            .map(|(p, _)| p.clone())
            .collect()
    } else {
        let mut out = Vec::new();
        for p in parties {
            match known.iter().find(|(k, _)| k.as_str() == p) {
                None => return Err(Refusal::not_found(format!("no party named {p}"))),
                Some((_, true)) => {
                    return Err(Refusal::precondition(format!("party {p} is revoked")));
                }
                Some((k, false)) => out.push(k.clone()),
            }
        }
        out
    };
    if parties.is_empty() {
        return Err(Refusal::precondition(
            "a task needs at least one enrolled party",
        ));
    }
    let limits = Limits::parse(limits_toml, &spec, &parties)
        .map_err(|e| Refusal::invalid(format!("task {name}: {e}")))?;
    Ok(Transition::CreateTask {
        task,
        spec_toml: spec_toml.to_string(),
        spec_id: spec.id().to_string(),
        parties,
        limits,
    })
}

/// What `queue_rounds` needs to know beyond the request.
#[derive(Clone, Copy, Debug)]
pub struct QueueContext<'a> {
    /// The task.
    pub task: &'a TaskRecord,
    /// Its spec.
    pub spec: &'a ModelSpec,
    /// Revoked parties (of any task).
    pub revoked: &'a [PartyId],
    /// Series stages in the latest published model.
    pub series_stages: usize,
    /// Series rounds queued or training.
    pub series_pending: usize,
}

/// A request to queue rounds.
#[derive(Clone, Copy, Debug)]
pub struct RoundRequest<'a> {
    /// Strategy name.
    pub strategy: &'a str,
    /// Its options.
    pub options: &'a BTreeMap<String, String>,
    /// Quorum.
    pub min_parties: u32,
    /// How long each round runs.
    pub deadline_ms: i64,
    /// How many rounds (a relay: how many relays).
    pub count: u32,
}

/// Checks a request for rounds and plans them: one per round, or for a relay one per step,
/// each inviting one party in an order fixed now from the parties not revoked.
pub fn queue_rounds(ctx: &QueueContext<'_>, req: &RoundRequest<'_>) -> Decided<Transition> {
    let t = ctx.task;
    let n = t.parties.len();
    let cfg = StrategyConfig::parse(req.strategy, req.options)
        .and_then(|c| c.check_for(ctx.spec).map(|()| c))
        .map_err(|e| Refusal::invalid(e.to_string()))?;
    if let Some(d) = &ctx.spec.privacy.dp {
        dp::check_strategy(d.mode, req.strategy).map_err(|e| {
            Refusal::invalid(format!(
                "task {} has differential privacy ([privacy.dp]): {e}",
                t.name
            ))
        })?;
    }
    if cfg.min_updates() > n {
        return Err(Refusal::invalid(format!(
            "{cfg} merges at least {} updates; task {} has {n} parties",
            cfg.min_updates(),
            t.name
        )));
    }
    if req.min_parties == 0 || req.min_parties as usize > n {
        return Err(Refusal::invalid(format!(
            "min parties must be between 1 and the task's {n} parties, found {}",
            req.min_parties
        )));
    }
    if !cfg.is_relay() && (req.min_parties as usize) < cfg.min_updates() {
        return Err(Refusal::invalid(format!(
            "{cfg} merges at least {} updates: set --min-parties to {} or more",
            cfg.min_updates(),
            cfg.min_updates()
        )));
    }
    if req.deadline_ms <= 0 || req.count == 0 || req.count > 1000 {
        return Err(Refusal::invalid(
            "the deadline must be positive and the round count between 1 and 1000",
        ));
    }
    if matches!(cfg.strategy, Strategy::Ensemble) && n > MAX_PARTS {
        return Err(Refusal::invalid(format!(
            "an ensemble holds at most {MAX_PARTS} members; task {} has {n} parties",
            t.name
        )));
    }
    let plan = |relay: Option<RelayStep>, min_parties: u32| RoundPlan {
        strategy: cfg.clone(),
        relay,
        min_parties,
        deadline_ms: req.deadline_ms,
    };
    if !cfg.is_relay() {
        return Ok(Transition::QueueRounds {
            task: t.name.clone(),
            plans: (0..req.count)
                .map(|_| plan(None, req.min_parties))
                .collect(),
        });
    }
    let active: Vec<PartyId> = t
        .parties
        .iter()
        .filter(|p| !ctx.revoked.contains(p))
        .cloned()
        .collect();
    let names: Vec<String> = active.iter().map(|p| p.to_string()).collect();
    let order = cfg.relay_order(&names);
    if matches!(cfg.strategy, Strategy::Series { .. }) {
        let need = ctx.series_stages + ctx.series_pending + order.len() * req.count as usize;
        if need > MAX_PARTS {
            return Err(Refusal::invalid(format!(
                "a series network holds at most {MAX_PARTS} stages; {} published, {} queued and {} relay(s) over {} parties would make {need}",
                ctx.series_stages,
                ctx.series_pending,
                req.count,
                order.len()
            )));
        }
    }
    if order.is_empty() {
        return Err(Refusal::precondition(format!(
            "task {} has no party left that is not revoked; nothing to relay",
            t.name
        )));
    }
    // Steps count on across relays, so "after the first party" means the first party of the
    // first relay (Transfer Learning freezes and slows down from step 1 on).
    let steps = order.len() * req.count as usize;
    let plans = order
        .iter()
        .cycle()
        .take(steps)
        .enumerate()
        .map(|(step, party)| {
            let party = active
                .iter()
                .find(|p| p.as_str() == party)
                .expect("the order is of active parties")
                .clone();
            plan(
                Some(RelayStep {
                    party,
                    step,
                    steps: Some(steps),
                    parties: Some(active.len()),
                }),
                1,
            )
        })
        .collect();
    Ok(Transition::QueueRounds {
        task: t.name.clone(),
        plans,
    })
}

// ---- statistics -------------------------------------------------------------------------------

/// What the statistics step does next.
#[derive(Clone, Debug, PartialEq)]
pub enum StatsStep {
    /// Wait for more parties (or for nothing to do).
    Wait,
    /// The first queued round cannot run: too few parties reported.
    FailQueued(Transition),
    /// Fix the normalisation from these parties' sums; `missing` never answered.
    Fix {
        /// Parties whose sums are merged.
        reported: Vec<PartyId>,
        /// Parties that neither reported nor declined (the deadline passed).
        missing: Vec<PartyId>,
    },
}

/// The statistics step of a task not yet normalised: wait, fail the first queued round, or
/// fix the normalisation. A party that declined has answered; a silent one stops holding the
/// task up once the first queued round's deadline has passed since the task was created.
/// The normalisation published in model v0 is the reporters' pooled mean and variance: never
/// from fewer parties than the round's quorum, or it would expose the few who reported.
pub fn statistics(
    task: &TaskRecord,
    reported: &[PartyId],
    declined: &[PartyId],
    first_queued: Option<&RoundRecord>,
    now: i64,
) -> StatsStep {
    let did_report = |p: &PartyId| reported.contains(p);
    let declined: Vec<&PartyId> = task
        .parties
        .iter()
        .filter(|p| !did_report(p) && declined.contains(p))
        .collect();
    let reported: Vec<PartyId> = task
        .parties
        .iter()
        .filter(|p| did_report(p))
        .cloned()
        .collect();
    let missing: Vec<PartyId> = task
        .parties
        .iter()
        .filter(|p| !did_report(p) && !declined.contains(p))
        .cloned()
        .collect();
    if !declined.is_empty() && missing.is_empty() {
        // Everyone answered, some by declining: the queued rounds cannot run with fewer
        // reporters than their quorum; each fails in turn, naming who declined.
        let Some(first) = first_queued else {
            return StatsStep::Wait;
        };
        let quorum = first.plan.min_parties;
        if (reported.len() as u32) < quorum.max(1) {
            let who: Vec<&str> = declined.iter().map(|p| p.as_str()).collect();
            let reason = format!(
                "statistics: only {} of {} parties reported feature sums ({} declined: {}), fewer than the round's quorum of {quorum}; the normalisation is not computed from so few",
                reported.len(),
                task.parties.len(),
                declined.len(),
                who.join(", "),
            );
            return StatsStep::FailQueued(Transition::FailRound {
                task: task.name.clone(),
                round: first.round,
                reason,
                left_out: vec![],
                late: vec![],
            });
        }
    }
    if !missing.is_empty() {
        // A silent party must not stall the task: once the first queued round's deadline has
        // passed since the task was created, go on with the parties that reported, if they are
        // at least that round's quorum.
        let Some(first) = first_queued else {
            return StatsStep::Wait;
        };
        if now < task.created_ms + first.plan.deadline_ms {
            return StatsStep::Wait;
        }
        if (reported.len() as u32) < first.plan.min_parties.max(1) {
            // Too few reporters to normalise from, and silent parties may still answer (a
            // daemon that was down): the step waits for them. Failing here would fail rounds
            // queued long after the task was created the moment they are queued.
            return StatsStep::Wait;
        }
    }
    if reported.is_empty() {
        return StatsStep::Wait;
    }
    StatsStep::Fix { reported, missing }
}

// ---- models ----------------------------------------------------------------------------------

/// A copy of a published model offered to restore the coordinator's damaged or lost blob: it
/// must be of a published version (`published` = its recorded sha256), hash to it (`copy`),
/// and the stored blob must be damaged or missing (`intact` false).
pub fn restore_model(
    task: &TaskId,
    version: ModelVersion,
    published: Option<Sha256>,
    copy: Sha256,
    intact: bool,
) -> Decided<Transition> {
    let Some(sha) = published else {
        return Err(Refusal::not_found(format!(
            "task {task} has no published model version {version}"
        )));
    };
    if copy != sha {
        return Err(Refusal::invalid(format!(
            "the copy hashes to {copy}, but version {version} of {task} was published as {sha}: it is not that model"
        )));
    }
    if intact {
        return Err(Refusal::precondition(format!(
            "version {version} of {task} is intact on the coordinator's disk; nothing to restore"
        )));
    }
    Ok(Transition::RestoreModel {
        task: task.clone(),
        version,
        blob_sha256: sha,
    })
}

// ---- rounds -----------------------------------------------------------------------------------

/// Opens a queued round at `now`: a relay step invites its one party, a broadcast round every
/// party of the task not revoked.
pub fn open_round(
    task: &TaskRecord,
    round: &RoundRecord,
    revoked: &[PartyId],
    latest: ModelVersion,
    now: i64,
) -> Transition {
    let invited = task
        .parties
        .iter()
        .filter(|p| !revoked.contains(p))
        .filter(|p| round.plan.relay.as_ref().is_none_or(|r| r.party == **p))
        .cloned()
        .collect();
    Transition::OpenRound {
        task: task.name.clone(),
        round: round.round,
        started_ms: now,
        ends_ms: now + round.plan.deadline_ms,
        base_version: latest,
        invited,
    }
}

pub use crate::upload::*;
pub use crate::work::*;
