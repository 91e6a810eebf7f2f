//! Which work a party gets next, and the two reports it sends back outside a round
//! (feature sums, evaluations).

use shared_model::ids::{ModelVersion, PartyId, RoundNo, Sha256};
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;

use crate::assignment::{AssignmentId, AssignmentKind};
use crate::decide::{MAX_REASON, Refusal, RoundRecord, TaskRecord, WORK_TTL_MS};
use crate::transition::Transition;

type Decided<T> = Result<T, Refusal>;

/// A training round a party is invited to and has not answered.
#[derive(Clone, Debug)]
pub struct Invitation {
    /// The round.
    pub round: RoundRecord,
    /// Its base model's blob digest.
    pub base_sha256: Sha256,
    /// How many parties the round invited.
    pub invited: usize,
}

/// One of a party's tasks, as the work decision needs it.
#[derive(Clone, Debug)]
pub struct PartyTask {
    /// The task.
    pub task: TaskRecord,
    /// Whether the party reported its feature sums.
    pub reported_sums: bool,
    /// Whether it declined the statistics step.
    pub declined_stats: bool,
    /// Training rounds it is awaited in, oldest first.
    pub invitations: Vec<Invitation>,
    /// The latest published version and its round.
    pub latest: Option<(ModelVersion, RoundNo)>,
    /// Whether it evaluated or declined to evaluate the latest version.
    pub done_latest: bool,
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

/// What a party is asked to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// The assignment.
    pub id: AssignmentId,
    /// The task's spec text.
    pub spec_toml: String,
    /// Its spec id (hex).
    pub spec_id: String,
    /// Round (0 for statistics).
    pub round: u64,
    /// Relay step (0 otherwise).
    pub step: u64,
    /// The work.
    pub work: Work,
    /// Deadline.
    pub deadline_ms: i64,
}

/// The next piece of work for a party: statistics and training of every task come before
/// evaluations, so evaluating one task's model never delays another task's round. Work the
/// party declined is not offered again.
pub fn next_work(tasks: &[PartyTask], now: i64) -> Decided<Option<Assignment>> {
    let offer = |t: &TaskRecord, id, round, step, work, deadline_ms| Assignment {
        id,
        spec_toml: t.spec_toml.clone(),
        spec_id: t.spec_id.clone(),
        round,
        step,
        work,
        deadline_ms,
    };
    for pt in tasks {
        let t = &pt.task;
        if t.normalization.is_none() {
            if !pt.reported_sums && !pt.declined_stats {
                let id = AssignmentId::stats(&t.name);
                return Ok(Some(offer(t, id, 0, 0, Work::Stats, now + WORK_TTL_MS)));
            }
            continue;
        }
        if let Some(inv) = pt.invitations.first() {
            let r = &inv.round;
            let spec = t.spec()?;
            let step = r.plan.step();
            let o = r.plan.strategy.train_options(&spec, step, 0);
            let round_parties = match &r.plan.relay {
                Some(relay) => relay.parties.unwrap_or(t.parties.len()),
                None => inv.invited,
            };
            let work = Work::Train {
                base_version: r.base_version.map_or(0, |v| v.0),
                base_sha256: inv.base_sha256,
                strategy: r.plan.strategy_name().to_string(),
                fedprox_mu: o.fedprox_mu.unwrap_or(0.0),
                learning_rate: if o.learning_rate == spec.training.learning_rate {
                    0.0
                } else {
                    o.learning_rate
                },
                frozen_layers: o.frozen_layers as u32,
                round_parties: u32::try_from(round_parties).unwrap_or(u32::MAX),
            };
            let id = AssignmentId::train(&t.name, r.round);
            let deadline = r.ends_ms.unwrap_or(now);
            return Ok(Some(offer(t, id, r.round.0, step as u64, work, deadline)));
        }
    }
    for pt in tasks {
        let t = &pt.task;
        if t.normalization.is_none() || pt.done_latest {
            continue;
        }
        if let Some((version, round)) = pt.latest
            && version.0 > 0
        {
            let id = AssignmentId::evaluate(&t.name, version);
            let work = Work::Evaluate { version: version.0 };
            return Ok(Some(offer(t, id, round.0, 0, work, now + WORK_TTL_MS)));
        }
    }
    Ok(None)
}

/// Takes a party's feature sums for a task's statistics step.
pub fn record_sums(
    id: &AssignmentId,
    party: &PartyId,
    task: &TaskRecord,
    spec: &ModelSpec,
    sums: &FeatureSums,
) -> Decided<Transition> {
    if id.kind != AssignmentKind::Stats || !task.has(party) {
        return Err(Refusal::precondition(format!(
            "{party} has no statistics assignment {id}"
        )));
    }
    if task.normalization.is_some() {
        return Err(Refusal::precondition(format!(
            "the statistics step of {} is already complete",
            task.name
        )));
    }
    sums.validate(spec.stats_width())
        .map_err(|e| e.to_string())
        .and_then(|()| {
            // a value may be missing only where the spec fills blanks with the mean
            match spec
                .may_be_missing()
                .iter()
                .enumerate()
                .find(|&(j, &may)| !may && sums.present(j) != sums.count)
            {
                None => Ok(()),
                Some((j, _)) => Err(format!(
                    "input {j} ({}) reports {} of {} rows present, but the spec fills no blank of it with the mean",
                    spec.input_names().get(j).map_or("the target", String::as_str),
                    sums.present(j),
                    sums.count
                )),
            }
        })
        .and_then(|()| sums.validate_found(spec).map_err(|e| e.to_string()))
        .and_then(|()| task.limits.check_sums(spec, sums))
        .map_err(|e| {
            Refusal::invalid(format!(
                "feature sums of {party} for task {}: {e}",
                task.name
            ))
        })?;
    Ok(Transition::RecordSums {
        task: task.name.clone(),
        party: party.clone(),
        sums_json: serde_json::to_string(sums).expect("sums serialise"),
    })
}

/// Feature sums refused as invalid (impossible, or outside the declared feature ranges) are
/// recorded as the party declining the statistics step with the refusal, so the operator sees
/// the plant's problem. Sums it sends later that pass still count if they arrive before the
/// step completes — which, the refused plant counting as answered, can be as soon as every
/// other party has reported.
pub fn refuse_sums(id: &AssignmentId, party: &PartyId, refusal: &Refusal) -> Transition {
    let reason = format!("its feature sums were refused: {}", refusal.message);
    Transition::Decline {
        assignment: id.clone(),
        party: party.clone(),
        reason: if reason.chars().count() > MAX_REASON {
            reason.chars().take(MAX_REASON).chain("…".chars()).collect()
        } else {
            reason
        },
    }
}

/// A party's evaluation of a published version.
pub fn record_evaluation(
    id: &AssignmentId,
    party: &PartyId,
    task: &TaskRecord,
    version_exists: bool,
    stats_json: String,
) -> Decided<Transition> {
    let AssignmentKind::Evaluate(version) = id.kind else {
        return Err(Refusal::invalid(format!(
            "{id} is not an evaluation assignment"
        )));
    };
    if !task.has(party) {
        return Err(Refusal::precondition(format!(
            "{party} does not take part in task {}",
            task.name
        )));
    }
    if !version_exists {
        return Err(Refusal::not_found(format!(
            "task {} has no model version {}",
            task.name, version.0
        )));
    }
    Ok(Transition::RecordEvaluation {
        task: task.name.clone(),
        version,
        party: party.clone(),
        stats_json,
    })
}
