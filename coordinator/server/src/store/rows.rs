//! Typed rows: the one place stored text (names, digests, phases, party states, round plans)
//! becomes domain types. A row that does not read back is an error naming the column.

use rusqlite::Row;
use rusqlite::types::Type;
use shared_model::ids::{ModelVersion, PartyId, RoundNo, Sha256, TaskId};
use yosegi_round::decide::{RoundParty, RoundRecord, TaskRecord};
use yosegi_round::transition::{AcceptedUpdate, PublishedModel};
use yosegi_round::{Limits, PartyState, RoundPlan};

/// An accepted update row.
pub type UpdateRow = AcceptedUpdate;

/// A published model row.
pub type ModelRow = PublishedModel;

/// A party row.
#[derive(Clone, Debug, PartialEq)]
pub struct PartyRow {
    /// Name.
    pub name: PartyId,
    /// Raw ed25519 key.
    pub public_key: [u8; 32],
    /// Revoked?
    pub revoked: bool,
    /// Enrolment time.
    pub enrolled_ms: i64,
    /// Last authenticated call.
    pub last_seen_ms: i64,
}

fn bad(col: usize, what: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, Type::Text, what.to_string().into())
}

fn parsed<T: std::str::FromStr>(r: &Row<'_>, col: usize) -> rusqlite::Result<T>
where
    T::Err: std::fmt::Display,
{
    let s: String = r.get(col)?;
    s.parse().map_err(|e| bad(col, e))
}

fn u64_col(r: &Row<'_>, col: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(col)?;
    u64::try_from(v).map_err(|_| bad(col, format!("negative number {v}")))
}

/// Columns of [`party`].
pub const PARTY_COLS: &str = "name, public_key, revoked, enrolled_ms, last_seen_ms";

/// A `parties` row.
pub fn party(r: &Row<'_>) -> rusqlite::Result<PartyRow> {
    let key: Vec<u8> = r.get(1)?;
    Ok(PartyRow {
        name: parsed(r, 0)?,
        public_key: key
            .try_into()
            .map_err(|_| bad(1, "a public key is 32 bytes"))?,
        revoked: r.get::<_, i64>(2)? != 0,
        enrolled_ms: r.get(3)?,
        last_seen_ms: r.get(4)?,
    })
}

/// Columns of [`task`].
pub const TASK_COLS: &str = "name, spec_toml, spec_id, parties, normalization, created_ms, limits";

/// A `tasks` row.
pub fn task(r: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let parties: String = r.get(3)?;
    let names: Vec<String> = serde_json::from_str(&parties).map_err(|e| bad(3, e))?;
    Ok(TaskRecord {
        name: parsed(r, 0)?,
        spec_toml: r.get(1)?,
        spec_id: r.get(2)?,
        parties: names
            .into_iter()
            .map(PartyId::new)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(3, e))?,
        normalization: r.get(4)?,
        limits: Limits::from_json(&r.get::<_, String>(6)?).map_err(|e| bad(6, e))?,
        created_ms: r.get(5)?,
    })
}

/// Columns of [`round`].
pub const ROUND_COLS: &str = "task, round, strategy, options, min_parties, deadline_ms, phase, started_ms, ends_ms, base_version, version, failure";

/// A `rounds` row.
pub fn round(r: &Row<'_>) -> rusqlite::Result<RoundRecord> {
    let strategy: String = r.get(2)?;
    let options: String = r.get(3)?;
    let plan = RoundPlan::from_stored(
        &strategy,
        &options,
        u32::try_from(r.get::<_, i64>(4)?).map_err(|e| bad(4, e))?,
        r.get(5)?,
    )
    .map_err(|e| bad(3, e))?;
    let version = |col| -> rusqlite::Result<Option<ModelVersion>> {
        Ok(r.get::<_, Option<i64>>(col)?
            .map(|v| ModelVersion(v as u64)))
    };
    Ok(RoundRecord {
        task: parsed::<TaskId>(r, 0)?,
        round: RoundNo(u64_col(r, 1)?),
        plan,
        phase: parsed(r, 6)?,
        started_ms: r.get(7)?,
        ends_ms: r.get(8)?,
        base_version: version(9)?,
        version: version(10)?,
        failure: r.get(11)?,
    })
}

/// A `round_parties` row of `party, state, reason`.
pub fn round_party(r: &Row<'_>) -> rusqlite::Result<RoundParty> {
    let state: String = r.get(1)?;
    let reason: String = r.get(2)?;
    Ok(RoundParty {
        party: parsed(r, 0)?,
        state: PartyState::from_stored(&state, &reason).map_err(|e| bad(1, e))?,
    })
}

/// Columns of [`update`].
pub const UPDATE_COLS: &str =
    "party, blob_sha256, envelope, sample_count, local_metrics, membership_audit";

/// An `updates` row.
pub fn update(r: &Row<'_>) -> rusqlite::Result<UpdateRow> {
    Ok(AcceptedUpdate {
        party: parsed(r, 0)?,
        blob_sha256: parsed::<Sha256>(r, 1)?,
        envelope_json: r.get(2)?,
        sample_count: u64_col(r, 3)?,
        local_metrics_json: r.get(4)?,
        membership_audit_json: r.get(5)?,
    })
}

/// Columns of [`model`].
pub const MODEL_COLS: &str = "version, round, blob_sha256, manifest, signature";

/// A `models` row.
pub fn model(r: &Row<'_>) -> rusqlite::Result<ModelRow> {
    Ok(PublishedModel {
        version: ModelVersion(u64_col(r, 0)?),
        round: RoundNo(u64_col(r, 1)?),
        blob_sha256: parsed(r, 2)?,
        manifest: r.get(3)?,
        signature: r.get(4)?,
    })
}
