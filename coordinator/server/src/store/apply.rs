//! `apply`: the one place a [`Transition`] is written. Each arm writes its rows and appends its
//! governance-log records in the same transaction, so "every governance change is logged with
//! it" is checked by reading this `match`. The store decides nothing here beyond guards: a
//! transition decided on an older [`Version`] is refused whole, and so is one whose rows say
//! its decision no longer holds (a round not in the phase it needs, a name taken).

use rusqlite::{Transaction, params};
use serde_json::{Value, json};
use shared_model::ids::{PartyId, RoundNo, TaskId};
use yosegi_round::assignment::AssignmentKind;
use yosegi_round::state::{LATE, PartyStateName};
use yosegi_round::transition::{Late, LeftOut, PublishedModel, RejectionEffect};
use yosegi_round::{RoundPhase, Transition};

use super::{Result, Store, StoreError, Version, version_of};
use crate::audit::{self, AuditEvent, AuditKind};

/// What an applied transition returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Written.
    Done,
    /// Written; the first of the rounds it queued.
    Queued(RoundNo),
    /// Nothing to write: it was written before (a decline already recorded).
    AlreadyRecorded,
}

pub(super) const INVITED: PartyStateName = PartyStateName::Invited;

impl Store {
    /// Applies `t`, decided on the state at `at`, with its governance-log records, in one
    /// transaction: all of it, or (on any error) none of it.
    pub fn apply(&mut self, at: Version, now: i64, t: &Transition) -> Result<Applied> {
        self.apply_by(at, now, None, t)
    }

    /// [`Self::apply`] of a change operator `by` called: its governance-log record names them
    /// (`"by"` in the detail).
    pub fn apply_by(
        &mut self,
        at: Version,
        now: i64,
        by: Option<&str>,
        t: &Transition,
    ) -> Result<Applied> {
        let tx = self.conn.transaction()?;
        let now_head = version_of(&tx)?;
        if now_head != at {
            return Err(StoreError::Stale(format!(
                "decided at log head {}, the log is at {}",
                at.0, now_head.0
            )));
        }
        let applied = write(&tx, t, now, by)?;
        tx.commit()?;
        Ok(applied)
    }
}

fn stale(what: String) -> StoreError {
    StoreError::Stale(what)
}

pub(super) fn one(n: usize, what: impl FnOnce() -> String) -> Result<()> {
    if n == 1 { Ok(()) } else { Err(stale(what())) }
}

fn write(tx: &Transaction<'_>, t: &Transition, now: i64, by: Option<&str>) -> Result<Applied> {
    match t {
        Transition::AddOperator { .. } | Transition::RevokeOperator { .. } => {
            super::operators::write(tx, t, now, by)?;
        }
        Transition::EnrollParty { .. }
        | Transition::RotateCoordinatorKey { .. }
        | Transition::RotateKey { .. }
        | Transition::Revoke { .. } => super::keys::write(tx, t, now, by)?,
        Transition::CreateTask {
            task,
            spec_toml,
            spec_id,
            parties,
            limits,
        } => {
            let names: Vec<&str> = parties.iter().map(PartyId::as_str).collect();
            let n = tx.execute(
                "INSERT OR IGNORE INTO tasks (name, spec_toml, spec_id, parties, created_ms, limits) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![task.as_str(), spec_toml, spec_id, serde_json::to_string(&names).expect("names"), now, limits.to_json()],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict(format!("task {task} already exists")));
            }
            let limits: serde_json::Value =
                serde_json::from_str(&limits.to_json()).expect("limits are JSON");
            let detail = json!({"spec_id": spec_id, "parties": names, "limits": limits});
            let event = AuditEvent::new(AuditKind::TaskCreated, detail)
                .task(task.as_str())
                .by(by);
            audit::append(tx, now, &event)?;
        }
        Transition::RecordSums {
            task,
            party,
            sums_json,
        } => {
            tx.execute(
                "INSERT OR REPLACE INTO feature_sums (task, party, sums) VALUES (?1, ?2, ?3)",
                params![task.as_str(), party.as_str(), sums_json],
            )?;
        }
        Transition::FixNormalization {
            task,
            normalization_json,
            reported,
            initial,
            ..
        } => {
            let n = tx.execute(
                "UPDATE tasks SET normalization = ?2 WHERE name = ?1 AND normalization IS NULL",
                params![task.as_str(), normalization_json],
            )?;
            one(n, || {
                format!("the statistics step of {task} is already complete")
            })?;
            let names: Vec<&str> = reported.iter().map(PartyId::as_str).collect();
            let mut detail = json!({ "parties": names });
            // What the statistics step found, when the spec asked it to find something.
            let norm: serde_json::Value =
                serde_json::from_str(normalization_json).unwrap_or_default();
            for key in ["vocabularies", "medians"] {
                if let Some(v) = norm.get(key) {
                    detail[key] = v.clone();
                }
            }
            let event = AuditEvent::new(AuditKind::NormalizationFixed, detail).task(task.as_str());
            audit::append(tx, now, &event)?;
            insert_model(tx, task, initial, now)?;
        }
        Transition::QueueRounds { task, plans, .. } => {
            let last: i64 = tx.query_row(
                "SELECT COALESCE(MAX(round), 0) FROM rounds WHERE task = ?1",
                [task.as_str()],
                |row| row.get(0),
            )?;
            for (i, plan) in (1..).zip(plans) {
                let options = plan.options_json();
                tx.execute(
                    "INSERT INTO rounds (task, round, strategy, options, min_parties, deadline_ms, phase) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![task.as_str(), last + i, plan.strategy_name(), options, plan.min_parties, plan.deadline_ms, RoundPhase::Queued.as_str()],
                )?;
                let options: Value = serde_json::from_str(&options).expect("options are JSON");
                let detail = json!({
                    "strategy": plan.strategy_name(),
                    "options": options,
                    "min_parties": plan.min_parties,
                    "deadline_ms": plan.deadline_ms,
                });
                let event = AuditEvent::new(AuditKind::RoundQueued, detail)
                    .task(task.as_str())
                    .round((last + i) as u64)
                    .by(by);
                audit::append(tx, now, &event)?;
            }
            return Ok(Applied::Queued(RoundNo(last as u64 + 1)));
        }
        Transition::RestoreModel {
            task,
            version,
            blob_sha256,
        } => {
            let detail = json!({"version": version.0, "blob_sha256": blob_sha256.to_string()});
            let event = AuditEvent::new(AuditKind::ModelRestored, detail)
                .task(task.as_str())
                .by(by);
            audit::append(tx, now, &event)?;
        }
        Transition::OpenRound {
            task,
            round,
            started_ms,
            ends_ms,
            base_version,
            invited,
        } => {
            let n = tx.execute(
                "UPDATE rounds SET phase = ?6, started_ms = ?3, ends_ms = ?4, base_version = ?5 WHERE task = ?1 AND round = ?2 AND phase = ?7",
                params![task.as_str(), round.0 as i64, started_ms, ends_ms, base_version.0 as i64, RoundPhase::Training.as_str(), RoundPhase::Queued.as_str()],
            )?;
            one(n, || format!("round {round} of {task} is not queued"))?;
            let names: Vec<&str> = invited.iter().map(PartyId::as_str).collect();
            let detail =
                json!({"base_version": base_version.0, "ends_ms": ends_ms, "invited": names});
            let event = AuditEvent::new(AuditKind::RoundOpened, detail)
                .task(task.as_str())
                .round(round.0);
            audit::append(tx, *started_ms, &event)?;
            for p in invited {
                tx.execute(
                    "INSERT INTO round_parties (task, round, party, state) VALUES (?1, ?2, ?3, ?4)",
                    params![task.as_str(), round.0 as i64, p.as_str(), INVITED.as_str()],
                )?;
            }
        }
        Transition::AcceptUpdate {
            task,
            round,
            update: u,
            ..
        } => {
            let n = tx.execute(
                "INSERT OR IGNORE INTO updates (task, round, party, blob_sha256, envelope, sample_count, local_metrics, accepted_ms, membership_audit) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![task.as_str(), round.0 as i64, u.party.as_str(), u.blob_sha256.to_string(), u.envelope_json, u.sample_count as i64, u.local_metrics_json, now, u.membership_audit_json],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict(format!(
                    "{} already has an accepted update for round {round} of {task}",
                    u.party
                )));
            }
            let n = set_state(
                tx,
                task,
                *round,
                &u.party,
                PartyStateName::Accepted,
                "",
                INVITED,
            )?;
            one(n, || {
                format!("{} is not awaited in round {round} of {task}", u.party)
            })?;
            let detail =
                json!({"blob_sha256": u.blob_sha256.to_string(), "sample_count": u.sample_count});
            let event = AuditEvent::new(AuditKind::UpdateAccepted, detail)
                .task(task.as_str())
                .round(round.0)
                .party(u.party.as_str());
            audit::append(tx, now, &event)?;
        }
        Transition::RecordRejection {
            task,
            round,
            party,
            code,
            reason,
            effect,
            ..
        } => {
            if *effect == RejectionEffect::StaysAwaited {
                let n = set_state(tx, task, *round, party, INVITED, reason, INVITED)?;
                one(n, || {
                    format!("{party} is not awaited in round {round} of {task}")
                })?;
            }
            reject(tx, task, *round, party, reason, now)?;
            let detail = json!({"code": code, "reason": reason});
            let event = AuditEvent::new(AuditKind::UpdateRejected, detail)
                .task(task.as_str())
                .round(round.0)
                .party(party.as_str());
            audit::append(tx, now, &event)?;
        }
        Transition::Decline {
            assignment,
            party,
            reason,
            ..
        } => {
            let task = &assignment.task;
            let detail = json!({"assignment": assignment.to_string(), "reason": reason});
            let event = AuditEvent::new(AuditKind::PartyDeclined, detail)
                .task(task.as_str())
                .party(party.as_str());
            if let AssignmentKind::Train(round) = assignment.kind {
                let n = set_state(
                    tx,
                    task,
                    round,
                    party,
                    PartyStateName::Declined,
                    reason,
                    INVITED,
                )?;
                one(n, || {
                    format!("{party} is not awaited in round {round} of {task}")
                })?;
                reject(tx, task, round, party, reason, now)?;
                audit::append(tx, now, &event.round(round.0))?;
            } else {
                let n = tx.execute(
                    "INSERT OR IGNORE INTO declines (task, assignment, party, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![task.as_str(), assignment.to_string(), party.as_str(), reason, now],
                )?;
                if n != 1 {
                    // The first reason wins; a repeated decline is logged once.
                    return Ok(Applied::AlreadyRecorded);
                }
                audit::append(tx, now, &event)?;
            }
        }
        Transition::RecordEvaluation {
            task,
            version,
            party,
            stats_json,
        } => {
            tx.execute(
                "INSERT OR REPLACE INTO evaluations (task, version, party, stats) VALUES (?1, ?2, ?3, ?4)",
                params![task.as_str(), version.0 as i64, party.as_str(), stats_json],
            )?;
        }
        Transition::FailRound {
            task,
            round,
            reason,
            left_out,
            late,
            ..
        } => {
            close_parties(tx, task, *round, left_out, late, now)?;
            let n = tx.execute(
                "UPDATE rounds SET phase = ?3, failure = ?4 WHERE task = ?1 AND round = ?2 AND phase IN (?5, ?6)",
                params![task.as_str(), round.0 as i64, RoundPhase::Failed.as_str(), reason, RoundPhase::Queued.as_str(), RoundPhase::Training.as_str()],
            )?;
            one(n, || format!("round {round} of {task} is already closed"))?;
            let event = AuditEvent::new(AuditKind::RoundFailed, json!({ "reason": reason }))
                .task(task.as_str())
                .round(round.0);
            audit::append(tx, now, &event)?;
        }
        Transition::PublishRound {
            task,
            round,
            strategy,
            left_out,
            late,
            merged,
            model,
            ..
        } => {
            close_parties(tx, task, *round, left_out, late, now)?;
            let updates: Vec<Value> = merged
                .iter()
                .map(|m| {
                    json!({
                        "party": m.party.as_str(),
                        "blob_sha256": m.blob_sha256.to_string(),
                        "sample_count": m.sample_count,
                        "weight": m.weight,
                    })
                })
                .collect();
            let detail = json!({"strategy": strategy, "updates": updates});
            let event = AuditEvent::new(AuditKind::RoundMerged, detail)
                .task(task.as_str())
                .round(round.0);
            audit::append(tx, now, &event)?;
            insert_model(tx, task, model, now)?;
            let n = tx.execute(
                "UPDATE rounds SET phase = ?3, version = ?4 WHERE task = ?1 AND round = ?2 AND phase = ?5",
                params![task.as_str(), round.0 as i64, RoundPhase::Published.as_str(), model.version.0 as i64, RoundPhase::Training.as_str()],
            )?;
            one(n, || format!("round {round} of {task} is not training"))?;
        }
    }
    Ok(Applied::Done)
}

/// Sets a party's state in a round if it is in state `from`; the rows changed.
pub(super) fn set_state(
    tx: &Transaction<'_>,
    task: &TaskId,
    round: RoundNo,
    party: &PartyId,
    state: PartyStateName,
    reason: &str,
    from: PartyStateName,
) -> Result<usize> {
    Ok(tx.execute(
        "UPDATE round_parties SET state = ?4, reason = ?5 WHERE task = ?1 AND round = ?2 AND party = ?3 AND state = ?6",
        params![task.as_str(), round.0 as i64, party.as_str(), state.as_str(), reason, from.as_str()],
    )?)
}

/// Adds a row to a round's rejections (what `round status` lists under the party).
pub(super) fn reject(
    tx: &Transaction<'_>,
    task: &TaskId,
    round: RoundNo,
    party: &PartyId,
    reason: &str,
    now: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO rejections (task, round, party, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![task.as_str(), round.0 as i64, party.as_str(), reason, now],
    )?;
    Ok(())
}

/// A closing round's leave-outs (each accepted update left out: rejected, logged
/// `party_left_out` with cause `reverification`), then its late parties (each logged with
/// cause `deadline`).
fn close_parties(
    tx: &Transaction<'_>,
    task: &TaskId,
    round: RoundNo,
    left_out: &[LeftOut],
    late: &[Late],
    now: i64,
) -> Result<()> {
    for l in left_out {
        let n = set_state(
            tx,
            task,
            round,
            &l.party,
            PartyStateName::Rejected,
            &l.reason,
            PartyStateName::Accepted,
        )?;
        one(n, || {
            format!(
                "the update of {} in round {round} of {task} is not accepted",
                l.party
            )
        })?;
        reject(tx, task, round, &l.party, &l.reason, now)?;
        audit::append(
            tx,
            now,
            &left_out_event(task, round, &l.party, "reverification", &l.reason),
        )?;
    }
    for l in late {
        let n = set_state(
            tx,
            task,
            round,
            &l.party,
            PartyStateName::Late,
            LATE,
            INVITED,
        )?;
        one(n, || {
            format!("{} is not awaited in round {round} of {task}", l.party)
        })?;
        audit::append(
            tx,
            now,
            &left_out_event(task, round, &l.party, "deadline", &l.reason),
        )?;
    }
    Ok(())
}

/// A `party_left_out` event: `cause` is `revoked`, `reverification` or `deadline`.
pub(super) fn left_out_event<'a>(
    task: &'a TaskId,
    round: RoundNo,
    party: &'a PartyId,
    cause: &str,
    reason: &str,
) -> AuditEvent<'a> {
    AuditEvent::new(
        AuditKind::PartyLeftOut,
        json!({"cause": cause, "reason": reason}),
    )
    .task(task.as_str())
    .round(round.0)
    .party(party.as_str())
}

/// Stores a published model, logged `model_published` (the initial model, version 0, belongs to
/// no round).
fn insert_model(tx: &Transaction<'_>, task: &TaskId, m: &PublishedModel, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO models (task, version, round, blob_sha256, manifest, signature, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![task.as_str(), m.version.0 as i64, m.round.0 as i64, m.blob_sha256.to_string(), m.manifest, m.signature, now],
    )?;
    let detail = json!({
        "version": m.version.0,
        "blob_sha256": m.blob_sha256.to_string(),
        "manifest_sha256": shared_model::ids::Sha256::of(&m.manifest).to_string(),
    });
    let event = AuditEvent::new(AuditKind::ModelPublished, detail).task(task.as_str());
    let event = if m.version.0 == 0 {
        event
    } else {
        event.round(m.round.0)
    };
    audit::append(tx, now, &event)?;
    Ok(())
}
