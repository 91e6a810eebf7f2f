//! Typed reads: rows, and the snapshots the round rules decide on.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params};
use shared_model::ids::{ModelVersion, PartyId, RoundNo, TaskId};
use yosegi_round::decide::{Invitation, PartyTask, RoundParty, RoundRecord, TaskRecord};
use yosegi_round::state::PartyStateName;
use yosegi_round::{AssignmentId, RoundPhase};

use super::rows::{self, ModelRow, PartyRow, UpdateRow};
use super::{Result, Store};
use crate::audit::{self, AuditRecord, ChainHead};

impl Store {
    /// The rotations of the coordinator's signing key, oldest first.
    pub fn key_rotations(&self) -> Result<Vec<shared_model::rotation::SignedRotation>> {
        let mut st = self.conn.prepare_cached(
            "SELECT statement, by_previous, by_new FROM key_rotations ORDER BY sequence",
        )?;
        let rows = st.query_map([], |r| {
            let sig = |i: usize| -> rusqlite::Result<[u8; 64]> {
                let b: Vec<u8> = r.get(i)?;
                b.try_into().map_err(|_| {
                    rusqlite::Error::FromSqlConversionFailure(
                        i,
                        rusqlite::types::Type::Blob,
                        "a signature is 64 bytes".into(),
                    )
                })
            };
            Ok(shared_model::rotation::SignedRotation {
                statement: r.get(0)?,
                by_previous: sig(1)?,
                by_new: sig(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every published manifest: (task, version, manifest bytes), to sign again.
    pub fn all_manifests(&self) -> Result<Vec<(TaskId, ModelVersion, Vec<u8>)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT task, version, manifest FROM models ORDER BY task, version")?;
        let rows = st.query_map([], |r| {
            let task: String = r.get(0)?;
            let version: i64 = r.get(1)?;
            Ok((task, version, r.get::<_, Vec<u8>>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (task, version, manifest) = row?;
            let task = TaskId::new(task).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
            })?;
            out.push((task, ModelVersion(version as u64), manifest));
        }
        Ok(out)
    }

    /// Records an authenticated call (not a governance change).
    pub fn touch_party(&self, name: &str, now: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE parties SET last_seen_ms = ?2 WHERE name = ?1",
            params![name, now],
        )?;
        Ok(())
    }

    /// One party, by name.
    pub fn party(&self, name: &str) -> Result<Option<PartyRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM parties WHERE name = ?1",
            rows::PARTY_COLS
        ))?;
        Ok(st.query_row([name], rows::party).optional()?)
    }

    /// Every party, by name.
    pub fn parties(&self) -> Result<Vec<PartyRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM parties ORDER BY name",
            rows::PARTY_COLS
        ))?;
        let rows = st.query_map([], rows::party)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revoked parties, by name.
    pub fn revoked(&self) -> Result<Vec<PartyId>> {
        Ok(self
            .parties()?
            .into_iter()
            .filter(|p| p.revoked)
            .map(|p| p.name)
            .collect())
    }

    /// All tasks, by name.
    pub fn tasks(&self) -> Result<Vec<TaskRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM tasks ORDER BY name",
            rows::TASK_COLS
        ))?;
        let rows = st.query_map([], rows::task)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One task.
    pub fn task(&self, name: &str) -> Result<Option<TaskRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM tasks WHERE name = ?1",
            rows::TASK_COLS
        ))?;
        Ok(st.query_row([name], rows::task).optional()?)
    }

    /// Whether a party reported feature sums for a task.
    pub fn has_sums(&self, task: &str, party: &str) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM feature_sums WHERE task = ?1 AND party = ?2")?;
        Ok(st.exists(params![task, party])?)
    }

    /// Every party's feature sums of a task (JSON), by party.
    pub fn sums(&self, task: &str) -> Result<Vec<(PartyId, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, sums FROM feature_sums WHERE task = ?1 ORDER BY party",
        )?;
        let rows = st.query_map([task], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|r| {
            let (p, s) = r?;
            Ok((
                p.parse()
                    .map_err(|e| super::StoreError::Row(format!("feature_sums.party: {e}")))?,
                s,
            ))
        })
        .collect()
    }

    /// Every declined statistics or evaluation assignment of a task, oldest first:
    /// (party, assignment, reason, time).
    pub fn declines(&self, task: &str) -> Result<Vec<(String, String, String, i64)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, assignment, reason, at_ms FROM declines WHERE task = ?1 ORDER BY at_ms, party",
        )?;
        let rows = st.query_map(params![task], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Whether a party refused an assignment.
    pub fn declined(&self, id: &AssignmentId, party: &str) -> Result<bool> {
        let mut st = self.conn.prepare_cached(
            "SELECT 1 FROM declines WHERE task = ?1 AND assignment = ?2 AND party = ?3",
        )?;
        Ok(st.exists(params![id.task.as_str(), id.to_string(), party])?)
    }

    /// All rounds of a task, oldest first.
    pub fn rounds(&self, task: &str) -> Result<Vec<RoundRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM rounds WHERE task = ?1 ORDER BY round",
            rows::ROUND_COLS
        ))?;
        let rows = st.query_map([task], rows::round)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One round of a task.
    pub fn round(&self, task: &str, round: RoundNo) -> Result<Option<RoundRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM rounds WHERE task = ?1 AND round = ?2",
            rows::ROUND_COLS
        ))?;
        Ok(st
            .query_row(params![task, round.0 as i64], rows::round)
            .optional()?)
    }

    /// One party's state in a round.
    pub fn round_party(&self, task: &str, round: u64, party: &str) -> Result<Option<RoundParty>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, state, reason FROM round_parties WHERE task = ?1 AND round = ?2 AND party = ?3",
        )?;
        Ok(st
            .query_row(params![task, round as i64, party], rows::round_party)
            .optional()?)
    }

    /// How many parties a round invited.
    pub fn round_party_count(&self, task: &str, round: u64) -> Result<usize> {
        let mut st = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM round_parties WHERE task = ?1 AND round = ?2")?;
        Ok(st.query_row(params![task, round as i64], |r| r.get::<_, i64>(0))? as usize)
    }

    /// Parties of a round and their states, by name.
    pub fn round_parties(&self, task: &str, round: u64) -> Result<Vec<RoundParty>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, state, reason FROM round_parties WHERE task = ?1 AND round = ?2 ORDER BY party",
        )?;
        let rows = st.query_map(params![task, round as i64], rows::round_party)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Open rounds in which `party` is still awaited, by task then round.
    pub fn awaited_rounds(&self, party: &str) -> Result<Vec<(TaskId, RoundNo)>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT rp.task, rp.round FROM round_parties rp \
             JOIN rounds r ON r.task = rp.task AND r.round = rp.round \
             WHERE rp.party = ?1 AND rp.state = '{}' AND r.phase = '{}' \
             ORDER BY rp.task, rp.round",
            PartyStateName::Invited,
            RoundPhase::Training
        ))?;
        let rows = st.query_map([party], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        rows.map(|r| {
            let (t, n) = r?;
            let t = t
                .parse()
                .map_err(|e| super::StoreError::Row(format!("round_parties.task: {e}")))?;
            Ok((t, RoundNo(n as u64)))
        })
        .collect()
    }

    /// Rejections of a round, oldest first: (party, reason).
    pub fn rejections(&self, task: &str, round: u64) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, reason FROM rejections WHERE task = ?1 AND round = ?2 ORDER BY id",
        )?;
        let rows = st.query_map(params![task, round as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every blob a row refers to (accepted updates and published models), as sha256 hex.
    pub fn blob_refs(&self) -> Result<HashSet<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT blob_sha256 FROM updates UNION SELECT blob_sha256 FROM models",
        )?;
        let refs = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(refs)
    }

    /// One party's accepted update of a round, if any (the upload path's O(1) lookup).
    pub fn update(&self, task: &str, round: u64, party: &str) -> Result<Option<UpdateRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM updates WHERE task = ?1 AND round = ?2 AND party = ?3",
            rows::UPDATE_COLS
        ))?;
        Ok(st
            .query_row(params![task, round as i64, party], rows::update)
            .optional()?)
    }

    /// Accepted updates of a round, by party name.
    pub fn updates(&self, task: &str, round: u64) -> Result<Vec<UpdateRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM updates WHERE task = ?1 AND round = ?2 ORDER BY party",
            rows::UPDATE_COLS
        ))?;
        let rows = st.query_map(params![task, round as i64], rows::update)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A published model; `None` version means the latest.
    pub fn model(&self, task: &str, version: Option<u64>) -> Result<Option<ModelRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM models WHERE task = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
            rows::MODEL_COLS
        ))?;
        Ok(st
            .query_row(params![task, version.map(|v| v as i64)], rows::model)
            .optional()?)
    }

    /// Evaluations of a version: (party, stats JSON).
    pub fn evaluations(&self, task: &str, version: u64) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, stats FROM evaluations WHERE task = ?1 AND version = ?2 ORDER BY party",
        )?;
        let rows = st.query_map(params![task, version as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// What the work decision needs about each of `party`'s tasks, by task name.
    pub fn party_tasks(&self, party: &PartyId) -> Result<Vec<PartyTask>> {
        let mut out = Vec::new();
        for task in self.tasks()?.into_iter().filter(|t| t.has(party)) {
            let name = task.name.as_str().to_string();
            let mut invitations = Vec::new();
            if task.normalization.is_some() {
                for r in self.rounds(&name)? {
                    if r.phase != RoundPhase::Training
                        || !self
                            .round_party(&name, r.round.0, party.as_str())?
                            .is_some_and(|p| p.state.is_awaited())
                    {
                        continue;
                    }
                    let bv = r.base_version.map_or(0, |v| v.0);
                    let base = self.model(&name, Some(bv))?.ok_or_else(|| {
                        super::StoreError::Row(format!(
                            "base model version {bv} of {name} is missing"
                        ))
                    })?;
                    let invited = self.round_party_count(&name, r.round.0)?;
                    invitations.push(Invitation {
                        round: r,
                        base_sha256: base.blob_sha256,
                        invited,
                    });
                }
            }
            let latest = self.model(&name, None)?;
            let done_latest = match &latest {
                Some(m) if m.version.0 > 0 => {
                    let id = AssignmentId::evaluate(&task.name, m.version);
                    self.evaluations(&name, m.version.0)?
                        .iter()
                        .any(|(p, _)| p == party.as_str())
                        || self.declined(&id, party.as_str())?
                }
                _ => true,
            };
            out.push(PartyTask {
                reported_sums: self.has_sums(&name, party.as_str())?,
                declined_stats: self.declined(&AssignmentId::stats(&task.name), party.as_str())?,
                invitations,
                latest: latest.map(|m| (m.version, m.round)),
                done_latest,
                task,
            });
        }
        Ok(out)
    }

    /// The latest published version of a task (0 when only the initial model exists or none).
    pub fn latest_version(&self, task: &str) -> Result<ModelVersion> {
        Ok(self
            .model(task, None)?
            .map_or(ModelVersion(0), |m| m.version))
    }

    /// The newest `limit` records of the governance log (all if `None`), of one task if given,
    /// oldest first.
    pub fn audit_records(
        &self,
        task: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<AuditRecord>> {
        let limit = limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT * FROM (SELECT {} FROM audit_log WHERE ?1 IS NULL OR task = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
            AuditRecord::COLUMNS
        ))?;
        let rows = st.query_map(params![task, limit], AuditRecord::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Checks the whole governance log's hash chain (one read snapshot); the head, or the first
    /// record that breaks the chain.
    pub fn verify_audit(&self) -> Result<ChainHead> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {} FROM audit_log ORDER BY seq",
            AuditRecord::COLUMNS
        ))?;
        let mut rows = st.query([])?;
        let mut chain = audit::ChainVerifier::default();
        while let Some(row) = rows.next()? {
            chain.push(&AuditRecord::from_row(row)?)?;
        }
        Ok(chain.finish())
    }
}
