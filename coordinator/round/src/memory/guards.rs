//! The in-memory federation's guards, as the store's: a transition decided on a state that
//! has moved on (a name taken, a round no longer in its phase, a key replaced) is refused whole.

use shared_model::ids::{RoundNo, TaskId};

use super::{ApplyError, Federation, RoundEntry};
use crate::state::RoundPhase;
use crate::transition::Transition;

impl Federation {
    /// The guards: a transition decided on a state that has moved on is refused whole.
    pub(super) fn check(&self, t: &Transition) -> Result<(), ApplyError> {
        let stale = |m: String| Err(ApplyError::Stale(m));
        let task = |id: &TaskId| {
            self.tasks
                .get(id)
                .ok_or_else(|| ApplyError::Stale(format!("no task {id}")))
        };
        let round = |id: &TaskId, n: RoundNo| -> Result<&RoundEntry, ApplyError> {
            task(id)?
                .round(n)
                .ok_or_else(|| ApplyError::Stale(format!("no round {n} of {id}")))
        };
        match t {
            Transition::EnrollParty { party, .. } if self.parties.contains_key(party) => Err(
                ApplyError::Conflict(format!("party {party} is already enrolled")),
            ),
            Transition::EnrollParty { party, .. }
                if self.operators.keys().any(|o| o.as_str() == party.as_str()) =>
            {
                Err(ApplyError::Conflict(format!(
                    "{party} is the name of an operator"
                )))
            }
            Transition::AddOperator { operator, .. }
                if self.operators.contains_key(operator)
                    || self.parties.keys().any(|p| p.as_str() == operator.as_str()) =>
            {
                Err(ApplyError::Conflict(format!(
                    "the name {operator} is taken"
                )))
            }
            Transition::RevokeOperator { operator } => {
                crate::operators::revocable(operator.as_str(), self.operators.values())
                    .map(drop)
                    .map_err(|e| ApplyError::Stale(e.to_string()))
            }
            Transition::Revoke { party, .. } if !self.parties.contains_key(party) => {
                stale(format!("no party {party}"))
            }
            Transition::RotateKey {
                party, previous, ..
            } if self
                .parties
                .get(party)
                .is_none_or(|(k, revoked)| k != previous || *revoked) =>
            {
                stale(format!("the key of {party} changed"))
            }
            Transition::CreateTask { task, .. } if self.tasks.contains_key(task) => {
                Err(ApplyError::Conflict(format!("task {task} already exists")))
            }
            Transition::FixNormalization { task: id, .. } => {
                if task(id)?.record.normalization.is_some() {
                    return stale(format!("task {id} is already normalised"));
                }
                Ok(())
            }
            Transition::RestoreModel { task: id, .. } => task(id).map(drop),
            Transition::OpenRound {
                task: id, round: n, ..
            } => {
                if round(id, *n)?.record.phase != RoundPhase::Queued {
                    return stale(format!("round {n} of {id} is not queued"));
                }
                Ok(())
            }
            Transition::AcceptUpdate {
                task: id,
                round: n,
                update,
            } => {
                let r = round(id, *n)?;
                if r.updates.contains_key(&update.party) {
                    return Err(ApplyError::Conflict(format!(
                        "{} already has an accepted update in round {n} of {id}",
                        update.party
                    )));
                }
                let awaited = r
                    .parties
                    .iter()
                    .any(|p| p.party == update.party && p.state.is_awaited());
                if r.record.phase != RoundPhase::Training || !awaited {
                    return stale(format!(
                        "{} is not awaited in round {n} of {id}",
                        update.party
                    ));
                }
                Ok(())
            }
            Transition::FailRound {
                task: id, round: n, ..
            } => {
                let phase = round(id, *n)?.record.phase;
                if phase.is_final() {
                    return stale(format!("round {n} of {id} is already {phase}"));
                }
                Ok(())
            }
            Transition::PublishRound {
                task: id, round: n, ..
            } => {
                if round(id, *n)?.record.phase != RoundPhase::Training {
                    return stale(format!("round {n} of {id} is not training"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
