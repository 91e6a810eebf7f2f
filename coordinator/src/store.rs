//! The coordinator's database: an embedded SQLite file (`yosegi.db` in the data dir, WAL,
//! `synchronous = FULL`) holding parties, tasks, feature sums, rounds and each party's state in
//! them, accepted updates, rejections, published models and evaluations, and the hash-chained
//! governance log ([`crate::audit`]): each method that makes a governance change appends its
//! record in the same transaction. Blob bytes live in the content-addressed
//! [`crate::blobs::BlobStore`]; rows refer to them by sha256.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use crate::audit::{self, AuditEvent, AuditKind, AuditRecord, ChainBreak, ChainHead};

/// Schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 4;

/// Errors from the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The file has another schema version.
    #[error("database schema version is {found}; this build reads version {SCHEMA_VERSION}")]
    Version {
        /// Found version.
        found: i64,
    },
    /// The governance log's hash chain is broken.
    #[error(transparent)]
    Audit(#[from] ChainBreak),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The `declines` table (schema 2): non-training work a party refused (statistics, evaluation).
macro_rules! declines_ddl {
    () => {
        "CREATE TABLE declines (task TEXT NOT NULL, assignment TEXT NOT NULL, party TEXT NOT NULL, reason TEXT NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY (task, assignment, party));"
    };
}

/// The governance log (schema 3): hash-chained records, append-only (the triggers stop an
/// accidental change; the chain shows a deliberate one). See docs/AUDIT.md.
macro_rules! audit_ddl {
    () => {
        "CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, kind TEXT NOT NULL, task TEXT, round INTEGER, party TEXT, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX audit_log_task ON audit_log (task, seq);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"
    };
}

const SCHEMA: &str = concat!(
    r#"
CREATE TABLE parties (
  name TEXT PRIMARY KEY,
  public_key BLOB NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0,
  enrolled_ms INTEGER NOT NULL,
  last_seen_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE tasks (
  name TEXT PRIMARY KEY,
  spec_toml TEXT NOT NULL,
  spec_id TEXT NOT NULL,
  parties TEXT NOT NULL,           -- JSON array of party names
  normalization TEXT,              -- JSON, NULL until the statistics step completes
  created_ms INTEGER NOT NULL
);
CREATE TABLE feature_sums (
  task TEXT NOT NULL,
  party TEXT NOT NULL,
  sums TEXT NOT NULL,              -- JSON FeatureSums
  PRIMARY KEY (task, party)
);
CREATE TABLE rounds (
  task TEXT NOT NULL,
  round INTEGER NOT NULL,
  strategy TEXT NOT NULL,
  options TEXT NOT NULL,           -- JSON object
  min_parties INTEGER NOT NULL,
  deadline_ms INTEGER NOT NULL,    -- duration allowed
  phase TEXT NOT NULL,             -- queued | training | published | failed
  started_ms INTEGER,
  ends_ms INTEGER,
  base_version INTEGER,
  version INTEGER,
  failure TEXT,
  PRIMARY KEY (task, round)
);
CREATE TABLE round_parties (
  task TEXT NOT NULL,
  round INTEGER NOT NULL,
  party TEXT NOT NULL,
  state TEXT NOT NULL,             -- invited | accepted | rejected | declined | late
  reason TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (task, round, party)
);
CREATE TABLE updates (
  task TEXT NOT NULL,
  round INTEGER NOT NULL,
  party TEXT NOT NULL,
  blob_sha256 TEXT NOT NULL,
  envelope TEXT NOT NULL,          -- JSON of the signed header, signer and signature
  sample_count INTEGER NOT NULL,
  local_metrics TEXT,              -- JSON MetricStats
  accepted_ms INTEGER NOT NULL,
  membership_audit TEXT,           -- JSON MembershipAudit the party reported (schema 4)
  PRIMARY KEY (task, round, party)
);
CREATE TABLE rejections (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  task TEXT NOT NULL,
  round INTEGER NOT NULL,
  party TEXT NOT NULL,
  reason TEXT NOT NULL,
  at_ms INTEGER NOT NULL
);
CREATE TABLE models (
  task TEXT NOT NULL,
  version INTEGER NOT NULL,
  round INTEGER NOT NULL,
  blob_sha256 TEXT NOT NULL,
  manifest BLOB NOT NULL,
  signature BLOB NOT NULL,
  created_ms INTEGER NOT NULL,
  PRIMARY KEY (task, version)
);
CREATE TABLE evaluations (
  task TEXT NOT NULL,
  version INTEGER NOT NULL,
  party TEXT NOT NULL,
  stats TEXT NOT NULL,             -- JSON MetricStats on the party's holdout
  PRIMARY KEY (task, version, party)
);
"#,
    declines_ddl!(),
    "\n",
    audit_ddl!()
);

/// Steps from each older schema version to the next: `MIGRATIONS[v - 1]` upgrades version `v`.
const MIGRATIONS: &[&str] = &[
    // 1 → 2: declines of non-training work are remembered, so refused work is not re-offered.
    declines_ddl!(),
    // 2 → 3: the governance log. It starts empty: events before the upgrade are not logged.
    audit_ddl!(),
    // 3 → 4: each accepted update keeps the membership audit its party reported.
    "ALTER TABLE updates ADD COLUMN membership_audit TEXT;",
];

/// A party row.
#[derive(Clone, Debug, PartialEq)]
pub struct PartyRow {
    /// Name.
    pub name: String,
    /// Raw ed25519 key.
    pub public_key: [u8; 32],
    /// Revoked?
    pub revoked: bool,
    /// Enrolment time.
    pub enrolled_ms: i64,
    /// Last authenticated call.
    pub last_seen_ms: i64,
}

/// A task row.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRow {
    /// Name.
    pub name: String,
    /// Spec text.
    pub spec_toml: String,
    /// Spec id (hex).
    pub spec_id: String,
    /// Parties taking part.
    pub parties: Vec<String>,
    /// Normalisation JSON once fixed.
    pub normalization: Option<String>,
    /// Creation time.
    pub created_ms: i64,
}

/// Where a round is. Persisted as its lowercase name; the database holds no other values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundPhase {
    /// Waiting for the round before it (or the statistics step) to finish.
    Queued,
    /// Parties invited; uploads accepted until the deadline.
    Training,
    /// Merged and published.
    Published,
    /// Closed without a merge (quorum not met); the reason is stored.
    Failed,
}

impl RoundPhase {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RoundPhase::Queued => "queued",
            RoundPhase::Training => "training",
            RoundPhase::Published => "published",
            RoundPhase::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Queued, Self::Training, Self::Published, Self::Failed]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for RoundPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A round row.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRow {
    /// Task.
    pub task: String,
    /// Round number.
    pub round: u64,
    /// Strategy name.
    pub strategy: String,
    /// Options JSON.
    pub options: String,
    /// Quorum.
    pub min_parties: u32,
    /// Duration allowed.
    pub deadline_ms: i64,
    /// Phase.
    pub phase: RoundPhase,
    /// Start.
    pub started_ms: Option<i64>,
    /// End.
    pub ends_ms: Option<i64>,
    /// Base version.
    pub base_version: Option<u64>,
    /// Published version.
    pub version: Option<u64>,
    /// Why it failed.
    pub failure: Option<String>,
}

/// A party's state in a round.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPartyRow {
    /// Party.
    pub party: String,
    /// State.
    pub state: String,
    /// Reason.
    pub reason: String,
}

/// An accepted update row.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateRow {
    /// Party.
    pub party: String,
    /// Blob digest (hex).
    pub blob_sha256: String,
    /// Envelope JSON.
    pub envelope: String,
    /// Samples.
    pub sample_count: u64,
    /// Local metrics JSON.
    pub local_metrics: Option<String>,
    /// The party's membership audit JSON.
    pub membership_audit: Option<String>,
}

/// A published model row.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRow {
    /// Version.
    pub version: u64,
    /// Round.
    pub round: u64,
    /// Blob digest (hex).
    pub blob_sha256: String,
    /// Signed manifest bytes.
    pub manifest: Vec<u8>,
    /// Signature.
    pub signature: Vec<u8>,
}

/// The database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn round_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoundRow> {
    Ok(RoundRow {
        task: r.get(0)?,
        round: r.get::<_, i64>(1)? as u64,
        strategy: r.get(2)?,
        options: r.get(3)?,
        min_parties: r.get::<_, i64>(4)? as u32,
        deadline_ms: r.get(5)?,
        phase: {
            let s: String = r.get(6)?;
            RoundPhase::parse(&s).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    6,
                    rusqlite::types::Type::Text,
                    format!("unknown round phase {s:?}").into(),
                )
            })?
        },
        started_ms: r.get(7)?,
        ends_ms: r.get(8)?,
        base_version: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        version: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        failure: r.get(11)?,
    })
}

const ROUND_COLS: &str = "task, round, strategy, options, min_parties, deadline_ms, phase, started_ms, ends_ms, base_version, version, failure";

impl Store {
    /// Creates a new database file (fails if it exists).
    pub fn create(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Self::configure(conn)
    }

    /// Opens an existing database, upgrading an older schema in one transaction.
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn =
            Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if !(1..=SCHEMA_VERSION).contains(&found) {
            return Err(StoreError::Version { found });
        }
        if found < SCHEMA_VERSION {
            let tx = conn.transaction()?;
            for step in &MIGRATIONS[(found - 1) as usize..] {
                tx.execute_batch(step)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
            tracing::info!(
                from = found,
                to = SCHEMA_VERSION,
                "database schema upgraded"
            );
        }
        Self::configure(conn)
    }

    /// Opens an existing database for reading only (safe beside a running coordinator: WAL
    /// readers see the last committed state). Its schema must be this build's: an older file
    /// is upgraded by the coordinator, not by a reader.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found != SCHEMA_VERSION {
            return Err(StoreError::Version { found });
        }
        Ok(Self { conn })
    }

    fn configure(conn: Connection) -> Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Self { conn })
    }

    // ---- parties ----------------------------------------------------------------------------

    /// Inserts a party (logged `party_enrolled`); false if the name is taken.
    pub fn insert_party(&self, name: &str, key: &[u8; 32], now: i64) -> Result<bool> {
        let tx = self.conn.unchecked_transaction()?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO parties (name, public_key, enrolled_ms) VALUES (?1, ?2, ?3)",
            params![name, &key[..], now],
        )?;
        if n != 1 {
            return Ok(false);
        }
        let fingerprint = shared_model::ids::Sha256::of(key).to_string();
        let detail = json!({"public_key": hex::encode(key), "fingerprint": &fingerprint[..16]});
        audit::append(
            &tx,
            now,
            &AuditEvent::new(AuditKind::PartyEnrolled, detail).party(name),
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Marks a party revoked (logged `party_revoked`) and, in the same transaction, rejects it
    /// in every open round where it is still awaited (each logged `party_left_out`); false if
    /// unknown.
    pub fn revoke_party(&mut self, name: &str, reason: &str, now: i64) -> Result<bool> {
        let tx = self.conn.transaction()?;
        if tx.execute("UPDATE parties SET revoked = 1 WHERE name = ?1", [name])? != 1 {
            return Ok(false);
        }
        audit::append(
            &tx,
            now,
            &AuditEvent::new(AuditKind::PartyRevoked, json!({ "reason": reason })).party(name),
        )?;
        let awaited: Vec<(String, i64)> = tx
            .prepare(
                "SELECT rp.task, rp.round FROM round_parties rp \
                 JOIN rounds r ON r.task = rp.task AND r.round = rp.round \
                 WHERE rp.party = ?1 AND rp.state = 'invited' AND r.phase = 'training' \
                 ORDER BY rp.task, rp.round",
            )?
            .query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (task, round) in &awaited {
            audit::append(
                &tx,
                now,
                &left_out(task, *round as u64, name, "revoked", reason),
            )?;
        }
        tx.execute(
            "INSERT INTO rejections (task, round, party, reason, at_ms) \
             SELECT rp.task, rp.round, rp.party, ?2, ?3 FROM round_parties rp \
             JOIN rounds r ON r.task = rp.task AND r.round = rp.round \
             WHERE rp.party = ?1 AND rp.state = 'invited' AND r.phase = 'training'",
            params![name, reason, now],
        )?;
        tx.execute(
            "UPDATE round_parties SET state = 'rejected', reason = ?2 \
             WHERE party = ?1 AND state = 'invited' AND EXISTS (SELECT 1 FROM rounds r \
             WHERE r.task = round_parties.task AND r.round = round_parties.round AND r.phase = 'training')",
            params![name, reason],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Records an authenticated call.
    pub fn touch_party(&self, name: &str, now: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE parties SET last_seen_ms = ?2 WHERE name = ?1",
            params![name, now],
        )?;
        Ok(())
    }

    /// One party, by name.
    pub fn party(&self, name: &str) -> Result<Option<PartyRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT name, public_key, revoked, enrolled_ms, last_seen_ms FROM parties WHERE name = ?1",
        )?;
        Ok(st
            .query_row([name], |r| {
                let key: Vec<u8> = r.get(1)?;
                Ok(PartyRow {
                    name: r.get(0)?,
                    public_key: key.try_into().unwrap_or([0; 32]),
                    revoked: r.get::<_, i64>(2)? != 0,
                    enrolled_ms: r.get(3)?,
                    last_seen_ms: r.get(4)?,
                })
            })
            .optional()?)
    }

    /// Every party, by name.
    pub fn parties(&self) -> Result<Vec<PartyRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT name, public_key, revoked, enrolled_ms, last_seen_ms FROM parties ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            let key: Vec<u8> = r.get(1)?;
            Ok(PartyRow {
                name: r.get(0)?,
                public_key: key.try_into().unwrap_or([0; 32]),
                revoked: r.get::<_, i64>(2)? != 0,
                enrolled_ms: r.get(3)?,
                last_seen_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- tasks ------------------------------------------------------------------------------

    /// Inserts a task (logged `task_created`); false if the name is taken.
    pub fn insert_task(&self, t: &TaskRow) -> Result<bool> {
        let parties = serde_json::to_string(&t.parties).expect("names serialise");
        let tx = self.conn.unchecked_transaction()?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO tasks (name, spec_toml, spec_id, parties, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t.name, t.spec_toml, t.spec_id, parties, t.created_ms],
        )?;
        if n != 1 {
            return Ok(false);
        }
        let detail = json!({"spec_id": t.spec_id, "parties": t.parties});
        audit::append(
            &tx,
            t.created_ms,
            &AuditEvent::new(AuditKind::TaskCreated, detail).task(&t.name),
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// All tasks, by name.
    pub fn tasks(&self) -> Result<Vec<TaskRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT name, spec_toml, spec_id, parties, normalization, created_ms FROM tasks ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            let parties: String = r.get(3)?;
            Ok(TaskRow {
                name: r.get(0)?,
                spec_toml: r.get(1)?,
                spec_id: r.get(2)?,
                parties: serde_json::from_str(&parties).unwrap_or_default(),
                normalization: r.get(4)?,
                created_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One task.
    pub fn task(&self, name: &str) -> Result<Option<TaskRow>> {
        Ok(self.tasks()?.into_iter().find(|t| t.name == name))
    }

    /// Stores a party's feature sums (replacing earlier ones).
    pub fn put_sums(&self, task: &str, party: &str, json: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO feature_sums (task, party, sums) VALUES (?1, ?2, ?3)",
            params![task, party, json],
        )?;
        Ok(())
    }

    /// Whether a party reported feature sums for a task.
    pub fn has_sums(&self, task: &str, party: &str) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM feature_sums WHERE task = ?1 AND party = ?2")?;
        Ok(st.exists(params![task, party])?)
    }

    /// Every party's feature sums of a task (JSON), by party.
    pub fn sums(&self, task: &str) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, sums FROM feature_sums WHERE task = ?1 ORDER BY party",
        )?;
        let rows = st.query_map([task], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Fixes the normalisation and publishes the initial model, atomically (logged
    /// `normalization_fixed` with the parties whose sums it merges, and `model_published`).
    pub fn fix_normalization(
        &mut self,
        task: &str,
        norm: &str,
        initial: &ModelRow,
        now: i64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE tasks SET normalization = ?2 WHERE name = ?1 AND normalization IS NULL",
            params![task, norm],
        )?;
        let reported: Vec<String> = tx
            .prepare("SELECT party FROM feature_sums WHERE task = ?1 ORDER BY party")?
            .query_map([task], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        audit::append(
            &tx,
            now,
            &AuditEvent::new(
                AuditKind::NormalizationFixed,
                json!({ "parties": reported }),
            )
            .task(task),
        )?;
        insert_model(&tx, task, initial, now)?;
        tx.commit()?;
        Ok(())
    }

    // ---- rounds -----------------------------------------------------------------------------

    /// Appends queued rounds (one per row, numbered after the last, each logged
    /// `round_queued`) in one transaction; returns the first round number.
    pub fn queue_rounds(&mut self, task: &str, rows: &[RoundRow], now: i64) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let last: i64 = tx.query_row(
            "SELECT COALESCE(MAX(round), 0) FROM rounds WHERE task = ?1",
            [task],
            |row| row.get(0),
        )?;
        for (i, r) in (1..).zip(rows) {
            tx.execute(
                "INSERT INTO rounds (task, round, strategy, options, min_parties, deadline_ms, phase) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued')",
                params![task, last + i, r.strategy, r.options, r.min_parties, r.deadline_ms],
            )?;
            let options: Value = serde_json::from_str(&r.options)
                .unwrap_or_else(|_| Value::String(r.options.clone()));
            let detail = json!({
                "strategy": r.strategy,
                "options": options,
                "min_parties": r.min_parties,
                "deadline_ms": r.deadline_ms,
            });
            audit::append(
                &tx,
                now,
                &AuditEvent::new(AuditKind::RoundQueued, detail)
                    .task(task)
                    .round((last + i) as u64),
            )?;
        }
        tx.commit()?;
        Ok(last as u64 + 1)
    }

    /// All rounds of a task, oldest first.
    pub fn rounds(&self, task: &str) -> Result<Vec<RoundRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ROUND_COLS} FROM rounds WHERE task = ?1 ORDER BY round"
        ))?;
        let rows = st.query_map([task], round_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Opens a queued round for training and invites parties, atomically (logged
    /// `round_opened`).
    pub fn open_round(
        &mut self,
        task: &str,
        round: u64,
        now: i64,
        ends: i64,
        base_version: u64,
        parties: &[String],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let opened = tx.execute(
            "UPDATE rounds SET phase = 'training', started_ms = ?3, ends_ms = ?4, base_version = ?5 WHERE task = ?1 AND round = ?2 AND phase = 'queued'",
            params![task, round as i64, now, ends, base_version as i64],
        )?;
        if opened == 1 {
            let detail = json!({"base_version": base_version, "ends_ms": ends, "invited": parties});
            audit::append(
                &tx,
                now,
                &AuditEvent::new(AuditKind::RoundOpened, detail)
                    .task(task)
                    .round(round),
            )?;
        }
        for p in parties {
            tx.execute(
                "INSERT OR IGNORE INTO round_parties (task, round, party, state) VALUES (?1, ?2, ?3, 'invited')",
                params![task, round as i64, p],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// One party's state in a round.
    pub fn round_party(
        &self,
        task: &str,
        round: u64,
        party: &str,
    ) -> Result<Option<RoundPartyRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, state, reason FROM round_parties WHERE task = ?1 AND round = ?2 AND party = ?3",
        )?;
        Ok(st
            .query_row(params![task, round as i64, party], |r| {
                Ok(RoundPartyRow {
                    party: r.get(0)?,
                    state: r.get(1)?,
                    reason: r.get(2)?,
                })
            })
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
    pub fn round_parties(&self, task: &str, round: u64) -> Result<Vec<RoundPartyRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, state, reason FROM round_parties WHERE task = ?1 AND round = ?2 ORDER BY party",
        )?;
        let rows = st.query_map(params![task, round as i64], |r| {
            Ok(RoundPartyRow {
                party: r.get(0)?,
                state: r.get(1)?,
                reason: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a rejected upload of a party still awaited in an open round: the party stays
    /// invited (it may send a good update until the deadline) with the reason, the rejection is
    /// recorded and logged `update_rejected` with its `code`, atomically.
    pub fn reject_upload(
        &mut self,
        task: &str,
        round: u64,
        party: &str,
        code: &str,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        let event = AuditEvent::new(
            AuditKind::UpdateRejected,
            json!({"code": code, "reason": reason}),
        )
        .task(task)
        .round(round)
        .party(party);
        self.mark(task, round, party, "invited", reason, now, false, &event)
    }

    /// Records that a party declined its training invitation in an open round (logged
    /// `party_declined`), atomically; the declined invitation counts as an answer.
    pub fn decline_in_round(
        &mut self,
        task: &str,
        round: u64,
        party: &str,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        let event = AuditEvent::new(
            AuditKind::PartyDeclined,
            json!({"assignment": format!("{task}/train/{round}"), "reason": reason}),
        )
        .task(task)
        .round(round)
        .party(party);
        self.mark(task, round, party, "declined", reason, now, false, &event)
    }

    /// Marks an accepted update as left out of the merge (its party revoked, its blob damaged)
    /// and records why, atomically (logged `party_left_out`). The update row stays for the
    /// audit trail.
    pub fn leave_out(
        &mut self,
        task: &str,
        round: u64,
        party: &str,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        let event = left_out(task, round, party, "reverification", reason);
        self.mark(task, round, party, "rejected", reason, now, true, &event)
    }

    #[allow(clippy::too_many_arguments)]
    fn mark(
        &mut self,
        task: &str,
        round: u64,
        party: &str,
        state: &str,
        reason: &str,
        now: i64,
        even_accepted: bool,
        event: &AuditEvent<'_>,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE round_parties SET state = ?4, reason = ?5 WHERE task = ?1 AND round = ?2 AND party = ?3 AND (?6 OR state != 'accepted')",
            params![task, round as i64, party, state, reason, even_accepted],
        )?;
        tx.execute(
            "INSERT INTO rejections (task, round, party, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![task, round as i64, party, reason, now],
        )?;
        audit::append(&tx, now, event)?;
        tx.commit()?;
        Ok(())
    }

    /// Records that a party refused a non-training assignment (kept; the first reason wins;
    /// logged `party_declined` once).
    pub fn put_decline(
        &self,
        task: &str,
        assignment: &str,
        party: &str,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO declines (task, assignment, party, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![task, assignment, party, reason, now],
        )?;
        if n == 1 {
            let detail = json!({"assignment": assignment, "reason": reason});
            audit::append(
                &tx,
                now,
                &AuditEvent::new(AuditKind::PartyDeclined, detail)
                    .task(task)
                    .party(party),
            )?;
        }
        tx.commit()?;
        Ok(())
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
    pub fn declined(&self, task: &str, assignment: &str, party: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM declines WHERE task = ?1 AND assignment = ?2 AND party = ?3",
                params![task, assignment, party],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Records a rejection that leaves the party's state in the round as it is (e.g. an upload
    /// after the round closed), logged `update_rejected` with its `code`.
    pub fn reject(
        &self,
        task: &str,
        round: u64,
        party: &str,
        code: &str,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO rejections (task, round, party, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![task, round as i64, party, reason, now],
        )?;
        let detail = json!({"code": code, "reason": reason});
        audit::append(
            &tx,
            now,
            &AuditEvent::new(AuditKind::UpdateRejected, detail)
                .task(task)
                .round(round)
                .party(party),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Rejections of a round, oldest first: (party, reason).
    pub fn rejections(&self, task: &str, round: u64) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, reason FROM rejections WHERE task = ?1 AND round = ?2 ORDER BY id",
        )?;
        let rows = st.query_map(params![task, round as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records an accepted update and marks the party accepted, atomically (logged
    /// `update_accepted`).
    pub fn accept_update(&mut self, task: &str, round: u64, u: &UpdateRow, now: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO updates (task, round, party, blob_sha256, envelope, sample_count, local_metrics, accepted_ms, membership_audit) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![task, round as i64, u.party, u.blob_sha256, u.envelope, u.sample_count as i64, u.local_metrics, now, u.membership_audit],
        )?;
        tx.execute(
            "UPDATE round_parties SET state = 'accepted', reason = '' WHERE task = ?1 AND round = ?2 AND party = ?3",
            params![task, round as i64, u.party],
        )?;
        let detail = json!({"blob_sha256": u.blob_sha256, "sample_count": u.sample_count});
        audit::append(
            &tx,
            now,
            &AuditEvent::new(AuditKind::UpdateAccepted, detail)
                .task(task)
                .round(round)
                .party(&u.party),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every blob a row refers to (accepted updates and published models), as sha256 hex.
    pub fn blob_refs(&self) -> Result<std::collections::HashSet<String>> {
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
        let mut st = self.conn.prepare_cached(
            "SELECT party, blob_sha256, envelope, sample_count, local_metrics, membership_audit FROM updates WHERE task = ?1 AND round = ?2 AND party = ?3",
        )?;
        Ok(st
            .query_row(params![task, round as i64, party], |r| {
                Ok(UpdateRow {
                    party: r.get(0)?,
                    blob_sha256: r.get(1)?,
                    envelope: r.get(2)?,
                    sample_count: r.get::<_, i64>(3)? as u64,
                    local_metrics: r.get(4)?,
                    membership_audit: r.get(5)?,
                })
            })
            .optional()?)
    }

    /// Accepted updates of a round, by party name.
    pub fn updates(&self, task: &str, round: u64) -> Result<Vec<UpdateRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT party, blob_sha256, envelope, sample_count, local_metrics, membership_audit FROM updates WHERE task = ?1 AND round = ?2 ORDER BY party",
        )?;
        let rows = st.query_map(params![task, round as i64], |r| {
            Ok(UpdateRow {
                party: r.get(0)?,
                blob_sha256: r.get(1)?,
                envelope: r.get(2)?,
                sample_count: r.get::<_, i64>(3)? as u64,
                local_metrics: r.get(4)?,
                membership_audit: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Closes a round as failed, marking silent parties late, atomically (logged
    /// `party_left_out` for each late party, then `round_failed`).
    pub fn fail_round(&mut self, task: &str, round: u64, reason: &str, now: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        mark_late(&tx, task, round, now)?;
        tx.execute(
            "UPDATE rounds SET phase = 'failed', failure = ?3 WHERE task = ?1 AND round = ?2",
            params![task, round as i64, reason],
        )?;
        audit::append(
            &tx,
            now,
            &AuditEvent::new(AuditKind::RoundFailed, json!({ "reason": reason }))
                .task(task)
                .round(round),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Publishes a round's merged model and closes the round, atomically (logged
    /// `party_left_out` for each late party, `round_merged` with the updates merged — those
    /// still accepted —, and `model_published`).
    pub fn publish_round(
        &mut self,
        task: &str,
        round: u64,
        model: &ModelRow,
        now: i64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        mark_late(&tx, task, round, now)?;
        let (strategy, merged) = {
            let strategy: String = tx.query_row(
                "SELECT strategy FROM rounds WHERE task = ?1 AND round = ?2",
                params![task, round as i64],
                |r| r.get(0),
            )?;
            let mut st = tx.prepare(
                "SELECT u.party, u.blob_sha256, u.sample_count FROM updates u \
                 JOIN round_parties rp ON rp.task = u.task AND rp.round = u.round AND rp.party = u.party \
                 WHERE u.task = ?1 AND u.round = ?2 AND rp.state = 'accepted' ORDER BY u.party",
            )?;
            let merged: Vec<Value> = st
                .query_map(params![task, round as i64], |r| {
                    Ok(json!({
                        "party": r.get::<_, String>(0)?,
                        "blob_sha256": r.get::<_, String>(1)?,
                        "sample_count": r.get::<_, i64>(2)?,
                    }))
                })?
                .collect::<rusqlite::Result<_>>()?;
            (strategy, merged)
        };
        audit::append(
            &tx,
            now,
            &AuditEvent::new(
                AuditKind::RoundMerged,
                json!({"strategy": strategy, "updates": merged}),
            )
            .task(task)
            .round(round),
        )?;
        insert_model(&tx, task, model, now)?;
        tx.execute(
            "UPDATE rounds SET phase = 'published', version = ?3 WHERE task = ?1 AND round = ?2",
            params![task, round as i64, model.version as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    // ---- models and evaluations ---------------------------------------------------------------

    /// A published model; `None` version means the latest.
    pub fn model(&self, task: &str, version: Option<u64>) -> Result<Option<ModelRow>> {
        let sql = "SELECT version, round, blob_sha256, manifest, signature FROM models WHERE task = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1";
        Ok(self
            .conn
            .query_row(sql, params![task, version.map(|v| v as i64)], |r| {
                Ok(ModelRow {
                    version: r.get::<_, i64>(0)? as u64,
                    round: r.get::<_, i64>(1)? as u64,
                    blob_sha256: r.get(2)?,
                    manifest: r.get(3)?,
                    signature: r.get(4)?,
                })
            })
            .optional()?)
    }

    /// Stores a party's evaluation of a version (replacing an earlier one).
    pub fn put_evaluation(&self, task: &str, version: u64, party: &str, stats: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO evaluations (task, version, party, stats) VALUES (?1, ?2, ?3, ?4)",
            params![task, version as i64, party, stats],
        )?;
        Ok(())
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

    // ---- governance log -----------------------------------------------------------------------

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

/// Stores a published model, logged `model_published` (the initial model, version 0, belongs to
/// no round).
fn insert_model(tx: &rusqlite::Transaction<'_>, task: &str, m: &ModelRow, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO models (task, version, round, blob_sha256, manifest, signature, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![task, m.version as i64, m.round as i64, m.blob_sha256, m.manifest, m.signature, now],
    )?;
    let detail = json!({
        "version": m.version,
        "blob_sha256": m.blob_sha256,
        "manifest_sha256": shared_model::ids::Sha256::of(&m.manifest).to_string(),
    });
    let event = AuditEvent::new(AuditKind::ModelPublished, detail).task(task);
    let event = if m.version == 0 {
        event
    } else {
        event.round(m.round)
    };
    audit::append(tx, now, &event)?;
    Ok(())
}

/// Marks the parties still awaited in a closing round late, each logged `party_left_out`.
fn mark_late(tx: &rusqlite::Transaction<'_>, task: &str, round: u64, now: i64) -> Result<()> {
    const LATE: &str = "no answer by the deadline";
    // (party, reason of its last rejected upload, if any)
    let silent: Vec<(String, String)> = tx
        .prepare(
            "SELECT party, reason FROM round_parties WHERE task = ?1 AND round = ?2 AND state = 'invited' ORDER BY party",
        )?
        .query_map(params![task, round as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    tx.execute(
        "UPDATE round_parties SET state = 'late', reason = ?3 WHERE task = ?1 AND round = ?2 AND state = 'invited'",
        params![task, round as i64, LATE],
    )?;
    for (party, rejected) in &silent {
        let reason = if rejected.is_empty() {
            LATE.to_string()
        } else {
            format!("no valid update by the deadline (last rejected: {rejected})")
        };
        audit::append(tx, now, &left_out(task, round, party, "deadline", &reason))?;
    }
    Ok(())
}

/// A `party_left_out` event: `cause` is `revoked`, `reverification` or `deadline`.
fn left_out<'a>(
    task: &'a str,
    round: u64,
    party: &'a str,
    cause: &str,
    reason: &str,
) -> AuditEvent<'a> {
    AuditEvent::new(
        AuditKind::PartyLeftOut,
        json!({"cause": cause, "reason": reason}),
    )
    .task(task)
    .round(round)
    .party(party)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_round_trip_and_version_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.db");
        {
            let s = Store::create(&path).unwrap();
            assert!(s.insert_party("plant-a", &[7; 32], 5).unwrap());
            assert!(!s.insert_party("plant-a", &[8; 32], 6).unwrap());
            let mut s = s;
            assert!(s.revoke_party("plant-a", "revoked", 6).unwrap());
            assert!(!s.revoke_party("plant-z", "revoked", 6).unwrap());
        }
        let s = Store::open(&path).unwrap();
        let p = &s.parties().unwrap()[0];
        assert_eq!((p.public_key, p.revoked, p.enrolled_ms), ([7; 32], true, 5));
        s.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::Version { found: 99 })
        ));
    }

    #[test]
    fn a_version_1_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.db");
        {
            let s = Store::create(&path).unwrap();
            assert!(s.insert_party("plant-a", &[7; 32], 5).unwrap());
            // What a version-1 build wrote: no declines table, no governance log.
            s.conn
                .execute_batch(
                    "DROP TABLE declines; DROP TABLE audit_log; ALTER TABLE updates DROP COLUMN membership_audit",
                )
                .unwrap();
            s.conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.parties().unwrap().len(), 1, "rows survive the upgrade");
        s.put_decline("t", "t/evaluate/1", "plant-a", "policy", 9)
            .unwrap();
        assert!(s.declined("t", "t/evaluate/1", "plant-a").unwrap());
        assert!(!s.declined("t", "t/evaluate/2", "plant-a").unwrap());
        let v: i64 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    fn round_row(strategy: &str) -> RoundRow {
        RoundRow {
            task: "t".into(),
            round: 0,
            strategy: strategy.into(),
            options: "{}".into(),
            min_parties: 1,
            deadline_ms: 60_000,
            phase: RoundPhase::Queued,
            started_ms: None,
            ends_ms: None,
            base_version: None,
            version: None,
            failure: None,
        }
    }

    fn model_row(version: u64, round: u64) -> ModelRow {
        ModelRow {
            version,
            round,
            blob_sha256: format!("{version:064x}"),
            manifest: vec![version as u8; 8],
            signature: vec![0; 64],
        }
    }

    /// A store that went through one task's life: two parties, statistics, a published round
    /// (one accepted update, one rejected upload, one party late) and a failed one.
    fn lived_store(path: &Path) -> Store {
        let mut s = Store::create(path).unwrap();
        for (i, p) in ["plant-a", "plant-b"].iter().enumerate() {
            assert!(s.insert_party(p, &[i as u8; 32], 10).unwrap());
        }
        let task = TaskRow {
            name: "t".into(),
            spec_toml: "spec".into(),
            spec_id: "ab".repeat(32),
            parties: vec!["plant-a".into(), "plant-b".into()],
            normalization: None,
            created_ms: 11,
        };
        assert!(s.insert_task(&task).unwrap());
        s.put_sums("t", "plant-a", "{}").unwrap();
        s.fix_normalization("t", "{}", &model_row(0, 0), 12)
            .unwrap();
        let first = s
            .queue_rounds("t", &[round_row("fedavg"), round_row("fedavg")], 13)
            .unwrap();
        assert_eq!(first, 1);
        let both = ["plant-a".to_string(), "plant-b".to_string()];
        s.open_round("t", 1, 14, 60_014, 0, &both).unwrap();
        s.reject_upload(
            "t",
            1,
            "plant-a",
            "signature",
            "bad signature of plant-a",
            15,
        )
        .unwrap();
        let update = UpdateRow {
            party: "plant-a".into(),
            blob_sha256: "cd".repeat(32),
            envelope: "{}".into(),
            sample_count: 40,
            local_metrics: None,
            membership_audit: None,
        };
        s.accept_update("t", 1, &update, 16).unwrap();
        s.publish_round("t", 1, &model_row(1, 1), 17).unwrap();
        s.open_round("t", 2, 18, 60_018, 1, &both).unwrap();
        s.decline_in_round("t", 2, "plant-b", "declined: site policy", 19)
            .unwrap();
        s.fail_round("t", 2, "quorum not met", 20).unwrap();
        s
    }

    fn kinds(s: &Store) -> Vec<String> {
        s.audit_records(None, None)
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .collect()
    }

    #[test]
    fn governance_changes_are_logged_in_order_and_the_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let s = lived_store(&dir.path().join("y.db"));
        assert_eq!(
            kinds(&s),
            [
                "party_enrolled",
                "party_enrolled",
                "task_created",
                "normalization_fixed",
                "model_published",
                "round_queued",
                "round_queued",
                "round_opened",
                "update_rejected",
                "update_accepted",
                "party_left_out",
                "round_merged",
                "model_published",
                "round_opened",
                "party_declined",
                "party_left_out",
                "round_failed",
            ]
        );
        let records = s.audit_records(None, None).unwrap();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            let prev = if i == 0 {
                audit::GENESIS.to_string()
            } else {
                records[i - 1].hash.clone()
            };
            assert_eq!(r.prev_hash, prev, "record {}", r.seq);
        }
        let head = s.verify_audit().unwrap();
        assert_eq!(head.records, 17);
        assert_eq!(head.hash.to_string(), records[16].hash);

        // The details say what the brief of each event needs.
        let at = |seq: usize| -> (&AuditRecord, Value) {
            let r = &records[seq - 1];
            (r, serde_json::from_str(&r.detail).unwrap())
        };
        let (r, d) = at(9);
        assert_eq!((r.round, r.party.as_deref()), (Some(1), Some("plant-a")));
        assert_eq!(d["code"], "signature");
        let (_, d) = at(11);
        assert_eq!(d["cause"], "deadline", "plant-b was silent in round 1");
        let (_, d) = at(12);
        assert_eq!(d["updates"][0]["party"], "plant-a");
        assert_eq!(d["updates"].as_array().unwrap().len(), 1);
        let (r, d) = at(13);
        assert_eq!((r.round, d["version"].as_u64()), (Some(1), Some(1)));
        assert_eq!(d["blob_sha256"], format!("{:064x}", 1));
        let (r, _) = at(5);
        assert_eq!(r.round, None, "the initial model belongs to no round");

        // One task's records, and the newest ones.
        assert_eq!(s.audit_records(Some("t"), None).unwrap().len(), 15);
        assert!(s.audit_records(Some("other"), None).unwrap().is_empty());
        let last = s.audit_records(None, Some(2)).unwrap();
        assert_eq!(
            last.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [16, 17],
            "newest two, oldest first"
        );
    }

    #[test]
    fn refused_changes_are_not_logged_and_revocation_names_open_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = lived_store(&dir.path().join("y.db"));
        let before = kinds(&s).len();
        assert!(!s.insert_party("plant-a", &[9; 32], 30).unwrap());
        assert!(!s.revoke_party("plant-z", "revoked", 30).unwrap());
        s.put_decline("t", "t/evaluate/1", "plant-b", "policy", 31)
            .unwrap();
        s.put_decline("t", "t/evaluate/1", "plant-b", "again", 32)
            .unwrap();
        assert_eq!(kinds(&s).len(), before + 1, "one decline logged once");

        s.queue_rounds("t", &[round_row("fedavg")], 33).unwrap();
        s.open_round(
            "t",
            3,
            34,
            60_034,
            1,
            &["plant-a".to_string(), "plant-b".to_string()],
        )
        .unwrap();
        assert!(
            s.revoke_party("plant-b", "revoked by the operator", 35)
                .unwrap()
        );
        let records = s.audit_records(None, Some(2)).unwrap();
        assert_eq!(records[0].kind, "party_revoked");
        assert_eq!(records[0].party.as_deref(), Some("plant-b"));
        assert_eq!(records[1].kind, "party_left_out");
        assert_eq!(
            (records[1].task.as_deref(), records[1].round),
            (Some("t"), Some(3))
        );
        s.verify_audit().unwrap();
    }

    #[test]
    fn the_log_is_append_only_and_edits_past_the_triggers_are_named() {
        for (column, value) in [
            ("detail", "'{\"code\":\"none\"}'"),
            ("kind", "'update_accepted'"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let s = lived_store(&dir.path().join("y.db"));
            let edit = format!("UPDATE audit_log SET {column} = {value} WHERE seq = 9");
            let refused = s.conn.execute(&edit, []).unwrap_err();
            assert!(refused.to_string().contains("append-only"), "{refused}");
            s.conn
                .execute_batch("DROP TRIGGER audit_log_no_update")
                .unwrap();
            assert_eq!(s.conn.execute(&edit, []).unwrap(), 1);
            match s.verify_audit() {
                Err(StoreError::Audit(e @ ChainBreak::Hash { seq: 9, .. })) => {
                    assert!(e.to_string().contains("hash mismatch"), "{e}");
                }
                other => panic!("{column} edit: expected a hash mismatch at 9, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_deleted_record_is_a_gap_and_a_rewritten_one_breaks_the_next_link() {
        let dir = tempfile::tempdir().unwrap();
        let s = lived_store(&dir.path().join("y.db"));
        s.conn
            .execute_batch("DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq = 6")
            .unwrap();
        let e = s.verify_audit().unwrap_err();
        assert!(
            matches!(
                &e,
                StoreError::Audit(ChainBreak::Gap {
                    seq: 7,
                    expected: 6,
                    ..
                })
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("audit record 7 (round_queued): gap in seq"),
            "{e}"
        );

        // Rewriting a record with a hash that matches its new fields moves the break to the
        // record after it.
        let dir = tempfile::tempdir().unwrap();
        let s = lived_store(&dir.path().join("y.db"));
        let mut r = s.audit_records(None, None).unwrap().remove(9);
        r.detail = r#"{"blob_sha256":"forged","sample_count":40}"#.into();
        r.hash = r.computed_hash(&r.prev_hash.parse().unwrap()).to_string();
        s.conn
            .execute_batch("DROP TRIGGER audit_log_no_update")
            .unwrap();
        s.conn
            .execute(
                "UPDATE audit_log SET detail = ?1, hash = ?2 WHERE seq = 10",
                params![r.detail, r.hash],
            )
            .unwrap();
        let e = s.verify_audit().unwrap_err();
        assert!(
            matches!(e, StoreError::Audit(ChainBreak::PrevHash { seq: 11, .. })),
            "{e}"
        );
    }

    #[test]
    fn a_change_whose_record_cannot_be_appended_is_not_made() {
        let dir = tempfile::tempdir().unwrap();
        let s = lived_store(&dir.path().join("y.db"));
        s.conn
            .execute_batch(
                "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET hash = 'damaged' WHERE seq = 17",
            )
            .unwrap();
        let e = s.insert_party("plant-c", &[3; 32], 40).unwrap_err();
        assert!(e.to_string().contains("audit record 17"), "{e}");
        assert_eq!(s.parties().unwrap().len(), 2, "the enrolment rolled back");
        assert_eq!(kinds(&s).len(), 17);
    }

    #[test]
    fn a_version_2_database_is_upgraded_and_logs_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.db");
        {
            let s = Store::create(&path).unwrap();
            assert!(s.insert_party("plant-a", &[7; 32], 5).unwrap());
            // What a version-2 build wrote: no governance log.
            s.conn
                .execute_batch(
                    "DROP TABLE audit_log; ALTER TABLE updates DROP COLUMN membership_audit",
                )
                .unwrap();
            s.conn.pragma_update(None, "user_version", 2).unwrap();
        }
        assert!(
            matches!(
                Store::open_read_only(&path),
                Err(StoreError::Version { found: 2 })
            ),
            "a reader does not upgrade"
        );
        let s = Store::open(&path).unwrap();
        assert_eq!(s.parties().unwrap().len(), 1, "rows survive the upgrade");
        assert!(
            s.audit_records(None, None).unwrap().is_empty(),
            "earlier events are not logged"
        );
        assert!(s.insert_party("plant-b", &[8; 32], 6).unwrap());
        let records = s.audit_records(None, None).unwrap();
        assert_eq!(
            (records[0].seq, records[0].kind.as_str()),
            (1, "party_enrolled")
        );
        drop(s);
        let r = Store::open_read_only(&path).unwrap();
        assert_eq!(r.verify_audit().unwrap().records, 1);
    }

    #[test]
    fn a_version_3_database_keeps_its_updates_and_stores_audits_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.db");
        {
            let s = Store::create(&path).unwrap();
            // What a version-3 build wrote: updates without the audit column.
            s.conn
                .execute_batch("ALTER TABLE updates DROP COLUMN membership_audit")
                .unwrap();
            s.conn
                .execute(
                    "INSERT INTO updates (task, round, party, blob_sha256, envelope, sample_count, local_metrics, accepted_ms) VALUES ('t', 1, 'plant-a', 'x', '{}', 10, NULL, 5)",
                    [],
                )
                .unwrap();
            s.conn.pragma_update(None, "user_version", 3).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let old = s.updates("t", 1).unwrap();
        assert_eq!(old.len(), 1, "rows survive the upgrade");
        assert_eq!(old[0].membership_audit, None);
        let json =
            r#"{"members":10,"non_members":12,"auc":0.5,"advantage":0.1,"tpr_at_1pct_fpr":0.0}"#;
        s.conn
            .execute(
                "INSERT INTO updates (task, round, party, blob_sha256, envelope, sample_count, local_metrics, accepted_ms, membership_audit) VALUES ('t', 1, 'plant-b', ?1, '{}', 10, NULL, 6, ?2)",
                params!["cd".repeat(32), json],
            )
            .unwrap();
        let rows = s.updates("t", 1).unwrap();
        assert_eq!(rows[1].membership_audit.as_deref(), Some(json));
    }
}
