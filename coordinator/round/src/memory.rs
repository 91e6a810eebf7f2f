//! A federation's durable state in memory: the same transitions the coordinator's store
//! writes, applied to plain maps with the same guards, and the same snapshots read back. The
//! experiment simulator runs its rounds on it and the deterministic simulation test checks its
//! invariants after every step; the store's own tests hold the SQLite backend to the same rules.

use std::collections::BTreeMap;

use shared_model::ids::{ModelVersion, OperatorId, PartyId, RoundNo, TaskId};

use crate::assignment::AssignmentKind;
use crate::decide::{RoundParty, RoundRecord, TaskRecord};
use crate::operators::OperatorRecord;
use crate::state::{LATE, PartyState, RoundPhase};
use crate::transition::{AcceptedUpdate, PublishedModel, RejectionEffect, Transition};

mod guards;

/// Why a transition was not applied (the store's guards).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A name already taken, an update already accepted.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The state it was decided on is gone (a round no longer in the phase it needs…).
    #[error("stale: {0}")]
    Stale(String),
}

/// A governance-log record, as the in-memory log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its kind (the stored names of `coordinator::audit::AuditKind`).
    pub kind: &'static str,
    /// The task.
    pub task: Option<TaskId>,
    /// The round.
    pub round: Option<RoundNo>,
    /// The party.
    pub party: Option<PartyId>,
    /// A readable detail.
    pub detail: String,
}

/// A round with its parties, updates and rejections.
#[derive(Clone, Debug)]
pub struct RoundEntry {
    /// The round.
    pub record: RoundRecord,
    /// Its parties, by name.
    pub parties: Vec<RoundParty>,
    /// Accepted updates, by party.
    pub updates: BTreeMap<PartyId, AcceptedUpdate>,
    /// Rejections, oldest first.
    pub rejections: Vec<(PartyId, String)>,
}

/// A task with everything recorded for it.
#[derive(Clone, Debug)]
pub struct TaskEntry {
    /// The task.
    pub record: TaskRecord,
    /// Feature sums reported, by party.
    pub sums: BTreeMap<PartyId, String>,
    /// Declined statistics/evaluation work: (assignment, party) → reason.
    pub declines: BTreeMap<(String, PartyId), String>,
    /// Rounds, in order.
    pub rounds: Vec<RoundEntry>,
    /// Published models, by version.
    pub models: Vec<PublishedModel>,
    /// Evaluations: (version, party) → stats JSON.
    pub evaluations: BTreeMap<(ModelVersion, PartyId), String>,
}

impl TaskEntry {
    /// The latest published model.
    pub fn latest(&self) -> Option<&PublishedModel> {
        self.models.last()
    }

    /// A round by number.
    pub fn round(&self, round: RoundNo) -> Option<&RoundEntry> {
        self.rounds.iter().find(|r| r.record.round == round)
    }

    fn round_mut(&mut self, round: RoundNo) -> Result<&mut RoundEntry, ApplyError> {
        self.rounds
            .iter_mut()
            .find(|r| r.record.round == round)
            .ok_or_else(|| ApplyError::Stale(format!("no round {round}")))
    }
}

/// The whole federation.
#[derive(Clone, Debug, Default)]
pub struct Federation {
    /// Parties: key and whether revoked.
    pub parties: BTreeMap<PartyId, ([u8; 32], bool)>,
    /// Operators, by name.
    pub operators: BTreeMap<OperatorId, OperatorRecord>,
    /// Tasks.
    pub tasks: BTreeMap<TaskId, TaskEntry>,
    /// The governance log.
    pub log: Vec<Record>,
}

impl Federation {
    /// An empty federation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revoked parties.
    pub fn revoked(&self) -> Vec<PartyId> {
        self.parties
            .iter()
            .filter(|(_, (_, r))| *r)
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn task_mut(&mut self, task: &TaskId) -> Result<&mut TaskEntry, ApplyError> {
        self.tasks
            .get_mut(task)
            .ok_or_else(|| ApplyError::Stale(format!("no task {task}")))
    }

    fn log(
        &mut self,
        kind: &'static str,
        task: Option<&TaskId>,
        round: Option<RoundNo>,
        party: Option<&PartyId>,
        detail: String,
    ) {
        self.log.push(Record {
            kind,
            task: task.cloned(),
            round,
            party: party.cloned(),
            detail,
        });
    }

    /// Applies one transition, all of it or nothing (every guard is checked before a write).
    pub fn apply(&mut self, t: &Transition) -> Result<Option<RoundNo>, ApplyError> {
        self.check(t)?;
        let mut first_round = None;
        match t {
            Transition::EnrollParty { party, public_key } => {
                self.parties.insert(party.clone(), (*public_key, false));
                self.log("party_enrolled", None, None, Some(party), String::new());
            }
            Transition::AddOperator {
                operator,
                public_key,
                role,
            } => {
                let record = OperatorRecord {
                    name: operator.clone(),
                    public_key: *public_key,
                    role: *role,
                    revoked: false,
                };
                self.operators.insert(operator.clone(), record);
                self.log("operator_added", None, None, None, operator.to_string());
            }
            Transition::RevokeOperator { operator } => {
                self.operators.get_mut(operator).expect("checked").revoked = true;
                self.log("operator_revoked", None, None, None, operator.to_string());
            }
            Transition::RotateCoordinatorKey { .. } => {
                self.log("coordinator_key_rotated", None, None, None, String::new());
            }
            Transition::RotateKey {
                party, public_key, ..
            } => {
                self.parties.get_mut(party).expect("checked").0 = *public_key;
                self.log("party_key_rotated", None, None, Some(party), String::new());
            }
            Transition::Revoke {
                party,
                reason,
                awaited,
            } => {
                self.parties.get_mut(party).expect("checked").1 = true;
                self.log("party_revoked", None, None, Some(party), reason.clone());
                for (task, round) in awaited {
                    let r = self.task_mut(task)?.round_mut(*round)?;
                    set_state(
                        r,
                        party,
                        PartyState::Rejected {
                            reason: reason.clone(),
                        },
                    );
                    r.rejections.push((party.clone(), reason.clone()));
                    self.log(
                        "party_left_out",
                        Some(task),
                        Some(*round),
                        Some(party),
                        format!("revoked: {reason}"),
                    );
                }
            }
            Transition::CreateTask {
                task,
                spec_toml,
                spec_id,
                parties,
                limits,
            } => {
                self.tasks.insert(
                    task.clone(),
                    TaskEntry {
                        record: TaskRecord {
                            name: task.clone(),
                            spec_toml: spec_toml.clone(),
                            spec_id: spec_id.clone(),
                            parties: parties.clone(),
                            normalization: None,
                            limits: limits.clone(),
                            created_ms: 0,
                        },
                        sums: BTreeMap::new(),
                        declines: BTreeMap::new(),
                        rounds: Vec::new(),
                        models: Vec::new(),
                        evaluations: BTreeMap::new(),
                    },
                );
                self.log("task_created", Some(task), None, None, spec_id.clone());
            }
            Transition::RecordSums {
                task,
                party,
                sums_json,
            } => {
                self.task_mut(task)?
                    .sums
                    .insert(party.clone(), sums_json.clone());
            }
            Transition::FixNormalization {
                task,
                normalization_json,
                reported,
                initial,
            } => {
                let e = self.task_mut(task)?;
                e.record.normalization = Some(normalization_json.clone());
                e.models.push(initial.clone());
                self.log(
                    "normalization_fixed",
                    Some(task),
                    None,
                    None,
                    format!("{reported:?}"),
                );
                self.log(
                    "model_published",
                    Some(task),
                    None,
                    None,
                    initial.blob_sha256.to_string(),
                );
            }
            Transition::QueueRounds { task, plans } => {
                let e = self.task_mut(task)?;
                let last = e.rounds.last().map_or(0, |r| r.record.round.0);
                first_round = Some(RoundNo(last + 1));
                for (i, plan) in (1..).zip(plans) {
                    e.rounds.push(RoundEntry {
                        record: RoundRecord {
                            task: task.clone(),
                            round: RoundNo(last + i),
                            plan: plan.clone(),
                            phase: RoundPhase::Queued,
                            started_ms: None,
                            ends_ms: None,
                            base_version: None,
                            version: None,
                            failure: None,
                        },
                        parties: Vec::new(),
                        updates: BTreeMap::new(),
                        rejections: Vec::new(),
                    });
                }
                for i in 1..=plans.len() as u64 {
                    self.log(
                        "round_queued",
                        Some(task),
                        Some(RoundNo(last + i)),
                        None,
                        String::new(),
                    );
                }
            }
            Transition::RestoreModel {
                task,
                version,
                blob_sha256,
            } => {
                self.log(
                    "model_restored",
                    Some(task),
                    None,
                    None,
                    format!("version {version}: {blob_sha256}"),
                );
            }
            Transition::OpenRound {
                task,
                round,
                started_ms,
                ends_ms,
                base_version,
                invited,
            } => {
                let r = self.task_mut(task)?.round_mut(*round)?;
                r.record.phase = RoundPhase::Training;
                r.record.started_ms = Some(*started_ms);
                r.record.ends_ms = Some(*ends_ms);
                r.record.base_version = Some(*base_version);
                let mut invited = invited.clone();
                invited.sort();
                r.parties = invited
                    .into_iter()
                    .map(|party| RoundParty {
                        party,
                        state: PartyState::INVITED,
                    })
                    .collect();
                self.log(
                    "round_opened",
                    Some(task),
                    Some(*round),
                    None,
                    String::new(),
                );
            }
            Transition::AcceptUpdate {
                task,
                round,
                update,
            } => {
                let r = self.task_mut(task)?.round_mut(*round)?;
                r.updates.insert(update.party.clone(), update.clone());
                set_state(r, &update.party, PartyState::Accepted);
                self.log(
                    "update_accepted",
                    Some(task),
                    Some(*round),
                    Some(&update.party),
                    update.blob_sha256.to_string(),
                );
            }
            Transition::RecordRejection {
                task,
                round,
                party,
                code,
                reason,
                effect,
            } => {
                let r = self.task_mut(task)?.round_mut(*round)?;
                if *effect == RejectionEffect::StaysAwaited {
                    set_state(
                        r,
                        party,
                        PartyState::Invited {
                            last_rejection: Some(reason.clone()),
                        },
                    );
                }
                r.rejections.push((party.clone(), reason.clone()));
                self.log(
                    "update_rejected",
                    Some(task),
                    Some(*round),
                    Some(party),
                    format!("{code}: {reason}"),
                );
            }
            Transition::Decline {
                assignment,
                party,
                reason,
            } => {
                let task = &assignment.task;
                let e = self.task_mut(task)?;
                let round = match assignment.kind {
                    AssignmentKind::Train(round) => {
                        let r = e.round_mut(round)?;
                        set_state(
                            r,
                            party,
                            PartyState::Declined {
                                reason: reason.clone(),
                            },
                        );
                        r.rejections.push((party.clone(), reason.clone()));
                        Some(round)
                    }
                    _ => {
                        e.declines
                            .insert((assignment.to_string(), party.clone()), reason.clone());
                        None
                    }
                };
                self.log(
                    "party_declined",
                    Some(task),
                    round,
                    Some(party),
                    reason.clone(),
                );
            }
            Transition::RecordEvaluation {
                task,
                version,
                party,
                stats_json,
            } => {
                self.task_mut(task)?
                    .evaluations
                    .insert((*version, party.clone()), stats_json.clone());
            }
            Transition::FailRound {
                task,
                round,
                reason,
                left_out,
                late,
            } => {
                self.close_parties(task, *round, left_out, late)?;
                let r = self.task_mut(task)?.round_mut(*round)?;
                r.record.phase = RoundPhase::Failed;
                r.record.failure = Some(reason.clone());
                self.log(
                    "round_failed",
                    Some(task),
                    Some(*round),
                    None,
                    reason.clone(),
                );
            }
            Transition::PublishRound {
                task,
                round,
                left_out,
                late,
                merged,
                model,
                ..
            } => {
                self.close_parties(task, *round, left_out, late)?;
                self.log(
                    "round_merged",
                    Some(task),
                    Some(*round),
                    None,
                    format!("{merged:?}"),
                );
                let e = self.task_mut(task)?;
                e.models.push(model.clone());
                let r = e.round_mut(*round)?;
                r.record.phase = RoundPhase::Published;
                r.record.version = Some(model.version);
                self.log(
                    "model_published",
                    Some(task),
                    Some(*round),
                    None,
                    model.blob_sha256.to_string(),
                );
            }
        }
        Ok(first_round)
    }

    fn close_parties(
        &mut self,
        task: &TaskId,
        round: RoundNo,
        left_out: &[crate::transition::LeftOut],
        late: &[crate::transition::Late],
    ) -> Result<(), ApplyError> {
        for l in left_out {
            let r = self.task_mut(task)?.round_mut(round)?;
            set_state(
                r,
                &l.party,
                PartyState::Rejected {
                    reason: l.reason.clone(),
                },
            );
            r.rejections.push((l.party.clone(), l.reason.clone()));
            self.log(
                "party_left_out",
                Some(task),
                Some(round),
                Some(&l.party),
                l.reason.clone(),
            );
        }
        for l in late {
            let r = self.task_mut(task)?.round_mut(round)?;
            set_state(
                r,
                &l.party,
                PartyState::Late {
                    reason: LATE.into(),
                },
            );
            self.log(
                "party_left_out",
                Some(task),
                Some(round),
                Some(&l.party),
                l.reason.clone(),
            );
        }
        Ok(())
    }
}

fn set_state(r: &mut RoundEntry, party: &PartyId, state: PartyState) {
    if let Some(p) = r.parties.iter_mut().find(|p| p.party == *party) {
        p.state = state;
    }
}
