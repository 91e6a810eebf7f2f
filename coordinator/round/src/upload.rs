//! Uploads and declines: whether an upload may be verified, what its verification leads to,
//! and whether a party may decline the work it names.

use shared_model::ids::{PartyId, RoundNo, Sha256, StepNo, TaskId};

use crate::assignment::{AssignmentId, AssignmentKind};
use crate::decide::{MAX_REASON, Refusal, RoundRecord, TaskRecord};
use crate::state::{PartyState, RoundPhase};
use crate::transition::{AcceptedUpdate, RejectionEffect, Transition};

type Decided<T> = Result<T, Refusal>;

/// What the shell knows when an upload arrives, before it verifies anything.
#[derive(Clone, Copy, Debug)]
pub struct UploadContext<'a> {
    /// The assignment it answers.
    pub id: &'a AssignmentId,
    /// The authenticated party.
    pub party: &'a PartyId,
    /// The round the assignment names, if it exists.
    pub round: Option<&'a RoundRecord>,
    /// The party's state in it, if it was invited.
    pub state: Option<&'a PartyState>,
    /// The blob digest of the party's accepted update of the round, if any.
    pub accepted: Option<Sha256>,
    /// The digest the upload's signed header names.
    pub claimed: Sha256,
    /// Whether the party is revoked.
    pub revoked: bool,
    /// Now.
    pub now: i64,
}

/// Whether an upload may be verified.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Verify it as an update of this relay step.
    Verify {
        /// The step the signed header must name.
        step: StepNo,
    },
    /// The same update was accepted before (a retry after a lost acknowledgement).
    AlreadyAccepted,
    /// Refused; `record` is written first if given (a late upload is recorded).
    Refuse {
        /// What to record.
        record: Option<Box<Transition>>,
        /// What the party reads.
        refusal: Refusal,
    },
}

/// Decides whether an upload may be verified. Only a party still awaited in an open round
/// may upload; a rejected upload leaves it awaited.
pub fn admit_upload(c: &UploadContext<'_>) -> Admission {
    let refuse = |refusal| Admission::Refuse {
        record: None,
        refusal,
    };
    let task = &c.id.task;
    let (AssignmentKind::Train(round), Some(r)) = (c.id.kind, c.round) else {
        return refuse(Refusal::not_found(format!(
            "task {task} has no training assignment {}",
            c.id
        )));
    };
    let party = c.party;
    if let Some(sha) = c.accepted {
        if sha == c.claimed {
            return Admission::AlreadyAccepted;
        }
        return refuse(Refusal::exists(format!(
            "{party} already has an accepted update for round {round} of {task}; a different one is refused"
        )));
    }
    let Some(state) = c.state else {
        return refuse(Refusal::precondition(format!(
            "{party} is not invited to round {round} of {task}"
        )));
    };
    if c.revoked {
        return refuse(Refusal::precondition(format!(
            "{party} is revoked; its update for round {round} of {task} is refused"
        )));
    }
    if !r.is_open_at(c.now) {
        let reason = format!("late: round {round} of {task} is closed ({})", r.phase);
        return Admission::Refuse {
            record: Some(Box::new(Transition::RecordRejection {
                task: task.clone(),
                round,
                party: party.clone(),
                code: "late".into(),
                reason: reason.clone(),
                effect: RejectionEffect::Unchanged,
            })),
            refusal: Refusal::precondition(reason),
        };
    }
    if !state.is_awaited() {
        return refuse(Refusal::precondition(format!(
            "{party} can no longer upload to round {round} of {task}: it is {} ({})",
            state.name(),
            state.reason()
        )));
    }
    Admission::Verify {
        step: StepNo(r.plan.step() as u64),
    }
}

/// An admitted upload that failed verification: recorded, and the party stays awaited.
pub fn reject_upload(
    task: &TaskId,
    round: RoundNo,
    party: &PartyId,
    code: &str,
    reason: String,
) -> Transition {
    Transition::RecordRejection {
        task: task.clone(),
        round,
        party: party.clone(),
        code: code.to_string(),
        reason,
        effect: RejectionEffect::StaysAwaited,
    }
}

/// An upload whose stream broke before its blob was complete — it stalled, sent more than
/// its envelope declares, skipped bytes or sent a malformed message — is recorded like a
/// rejection with `code` when its party was invited to the round: it stays awaited when it
/// could still upload (the break may be the network's), else its state is unchanged. Nothing
/// is recorded for a party outside the round (the shell counts it in metrics only).
pub fn refuse_stream(c: &UploadContext<'_>, code: &str, reason: String) -> Option<Transition> {
    let (AssignmentKind::Train(round), Some(_), Some(_)) = (c.id.kind, c.round, c.state) else {
        return None;
    };
    let effect = match admit_upload(c) {
        Admission::Verify { .. } => RejectionEffect::StaysAwaited,
        Admission::AlreadyAccepted | Admission::Refuse { .. } => RejectionEffect::Unchanged,
    };
    let reason = if reason.chars().count() > MAX_REASON {
        reason.chars().take(MAX_REASON).chain("…".chars()).collect()
    } else {
        reason
    };
    Some(Transition::RecordRejection {
        task: c.id.task.clone(),
        round,
        party: c.party.clone(),
        code: code.to_string(),
        reason,
        effect,
    })
}

/// An admitted upload that verified, its blob stored: accepted.
pub fn accept_upload(task: &TaskId, round: RoundNo, update: AcceptedUpdate) -> Transition {
    Transition::AcceptUpdate {
        task: task.clone(),
        round,
        update,
    }
}

/// What the shell knows when a party declines.
#[derive(Clone, Copy, Debug)]
pub struct DeclineContext<'a> {
    /// The task.
    pub task: &'a TaskRecord,
    /// For a training assignment: the round, if it exists.
    pub round: Option<&'a RoundRecord>,
    /// For a training assignment: the party's state in it.
    pub state: Option<&'a PartyState>,
    /// For an evaluation: whether the version exists.
    pub version_exists: bool,
}

/// A party declines an assignment. A declined training invitation counts as an answer in its
/// round; declined statistics or evaluation work is not offered again.
pub fn decline(
    id: &AssignmentId,
    party: &PartyId,
    reason: &str,
    c: &DeclineContext<'_>,
) -> Decided<Transition> {
    if !c.task.has(party) {
        return Err(Refusal::precondition(format!(
            "{party} does not take part in task {}",
            c.task.name
        )));
    }
    let reason: String = if reason.chars().count() > MAX_REASON {
        reason.chars().take(MAX_REASON).chain("…".chars()).collect()
    } else {
        reason.to_string()
    };
    let open = match id.kind {
        AssignmentKind::Train(_) => {
            c.round.is_some_and(|r| r.phase == RoundPhase::Training)
                && c.state.is_some_and(PartyState::is_awaited)
        }
        AssignmentKind::Stats => c.task.normalization.is_none(),
        AssignmentKind::Evaluate(v) => c.version_exists && v.0 != 0,
    };
    if !open {
        return Err(Refusal::precondition(format!(
            "{party} has no open assignment {id} to decline"
        )));
    }
    let reason = match id.kind {
        AssignmentKind::Train(_) => format!("declined: {reason}"),
        _ => reason,
    };
    Ok(Transition::Decline {
        assignment: id.clone(),
        party: party.clone(),
        reason,
    })
}
