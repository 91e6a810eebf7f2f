//! The coordinator's database: an embedded SQLite file (`yosegi.db` in the data dir, WAL,
//! `synchronous = FULL`) holding parties, tasks, feature sums, rounds and each party's state in
//! them, accepted updates, rejections, published models and evaluations. Blob bytes live in
//! the content-addressed [`crate::blobs::BlobStore`]; rows refer to them by sha256.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

/// Schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

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
}

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The `declines` table (schema 2): non-training work a party refused (statistics, evaluation).
macro_rules! declines_ddl {
    () => {
        "CREATE TABLE declines (task TEXT NOT NULL, assignment TEXT NOT NULL, party TEXT NOT NULL, reason TEXT NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY (task, assignment, party));"
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
    declines_ddl!()
);

/// Steps from each older schema version to the next: `MIGRATIONS[v - 1]` upgrades version `v`.
const MIGRATIONS: &[&str] = &[
    // 1 → 2: declines of non-training work are remembered, so refused work is not re-offered.
    declines_ddl!(),
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

    /// Opens an existing database.
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

    fn configure(conn: Connection) -> Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Self { conn })
    }

    // ---- parties ----------------------------------------------------------------------------

    /// Inserts a party; false if the name is taken.
    pub fn insert_party(&self, name: &str, key: &[u8; 32], now: i64) -> Result<bool> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO parties (name, public_key, enrolled_ms) VALUES (?1, ?2, ?3)",
            params![name, &key[..], now],
        )?;
        Ok(n == 1)
    }

    /// Marks a party revoked and, in the same transaction, rejects it in every open round where
    /// it is still awaited; false if unknown.
    pub fn revoke_party(&mut self, name: &str, reason: &str, now: i64) -> Result<bool> {
        let tx = self.conn.transaction()?;
        if tx.execute("UPDATE parties SET revoked = 1 WHERE name = ?1", [name])? != 1 {
            return Ok(false);
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

    /// All parties, by name.
    pub fn parties(&self) -> Result<Vec<PartyRow>> {
        let mut st = self.conn.prepare(
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

    /// Inserts a task; false if the name is taken.
    pub fn insert_task(&self, t: &TaskRow) -> Result<bool> {
        let parties = serde_json::to_string(&t.parties).expect("names serialise");
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO tasks (name, spec_toml, spec_id, parties, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t.name, t.spec_toml, t.spec_id, parties, t.created_ms],
        )?;
        Ok(n == 1)
    }

    /// All tasks, by name.
    pub fn tasks(&self) -> Result<Vec<TaskRow>> {
        let mut st = self.conn.prepare(
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

    /// Feature sums reported for a task, by party.
    pub fn sums(&self, task: &str) -> Result<Vec<(String, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT party, sums FROM feature_sums WHERE task = ?1 ORDER BY party")?;
        let rows = st.query_map([task], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Fixes the normalisation and publishes the initial model, atomically.
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
        insert_model(&tx, task, initial, now)?;
        tx.commit()?;
        Ok(())
    }

    // ---- rounds -----------------------------------------------------------------------------

    /// Appends queued rounds (one per row, numbered after the last) in one transaction;
    /// returns the first round number.
    pub fn queue_rounds(&mut self, task: &str, rows: &[RoundRow]) -> Result<u64> {
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
        }
        tx.commit()?;
        Ok(last as u64 + 1)
    }

    /// All rounds of a task, oldest first.
    pub fn rounds(&self, task: &str) -> Result<Vec<RoundRow>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {ROUND_COLS} FROM rounds WHERE task = ?1 ORDER BY round"
        ))?;
        let rows = st.query_map([task], round_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Opens a queued round for training and invites parties, atomically.
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
        tx.execute(
            "UPDATE rounds SET phase = 'training', started_ms = ?3, ends_ms = ?4, base_version = ?5 WHERE task = ?1 AND round = ?2 AND phase = 'queued'",
            params![task, round as i64, now, ends, base_version as i64],
        )?;
        for p in parties {
            tx.execute(
                "INSERT OR IGNORE INTO round_parties (task, round, party, state) VALUES (?1, ?2, ?3, 'invited')",
                params![task, round as i64, p],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Parties of a round and their states.
    pub fn round_parties(&self, task: &str, round: u64) -> Result<Vec<RoundPartyRow>> {
        let mut st = self.conn.prepare(
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

    /// Sets a party's state in a round (unless `accepted`) and records the rejection, atomically.
    pub fn reject_in_round(
        &mut self,
        task: &str,
        round: u64,
        party: &str,
        state: &str,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        self.mark(task, round, party, state, reason, now, false)
    }

    /// Marks an accepted update as left out of the merge (its party revoked, its blob damaged)
    /// and records why, atomically. The update row stays for the audit trail.
    pub fn leave_out(
        &mut self,
        task: &str,
        round: u64,
        party: &str,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        self.mark(task, round, party, "rejected", reason, now, true)
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
        tx.commit()?;
        Ok(())
    }

    /// Records that a party refused a non-training assignment (kept; the first reason wins).
    pub fn put_decline(
        &self,
        task: &str,
        assignment: &str,
        party: &str,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO declines (task, assignment, party, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![task, assignment, party, reason, now],
        )?;
        Ok(())
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

    /// Records a rejection.
    pub fn reject(
        &self,
        task: &str,
        round: u64,
        party: &str,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO rejections (task, round, party, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![task, round as i64, party, reason, now],
        )?;
        Ok(())
    }

    /// Rejections of a round, oldest first: (party, reason).
    pub fn rejections(&self, task: &str, round: u64) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare(
            "SELECT party, reason FROM rejections WHERE task = ?1 AND round = ?2 ORDER BY id",
        )?;
        let rows = st.query_map(params![task, round as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records an accepted update and marks the party accepted, atomically.
    pub fn accept_update(&mut self, task: &str, round: u64, u: &UpdateRow, now: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO updates (task, round, party, blob_sha256, envelope, sample_count, local_metrics, accepted_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![task, round as i64, u.party, u.blob_sha256, u.envelope, u.sample_count as i64, u.local_metrics, now],
        )?;
        tx.execute(
            "UPDATE round_parties SET state = 'accepted', reason = '' WHERE task = ?1 AND round = ?2 AND party = ?3",
            params![task, round as i64, u.party],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Accepted updates of a round, by party name.
    pub fn updates(&self, task: &str, round: u64) -> Result<Vec<UpdateRow>> {
        let mut st = self.conn.prepare(
            "SELECT party, blob_sha256, envelope, sample_count, local_metrics FROM updates WHERE task = ?1 AND round = ?2 ORDER BY party",
        )?;
        let rows = st.query_map(params![task, round as i64], |r| {
            Ok(UpdateRow {
                party: r.get(0)?,
                blob_sha256: r.get(1)?,
                envelope: r.get(2)?,
                sample_count: r.get::<_, i64>(3)? as u64,
                local_metrics: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Closes a round as failed, marking silent parties late.
    pub fn fail_round(&mut self, task: &str, round: u64, reason: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE round_parties SET state = 'late', reason = 'no answer by the deadline' WHERE task = ?1 AND round = ?2 AND state = 'invited'",
            params![task, round as i64],
        )?;
        tx.execute(
            "UPDATE rounds SET phase = 'failed', failure = ?3 WHERE task = ?1 AND round = ?2",
            params![task, round as i64, reason],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Publishes a round's merged model and closes the round, atomically.
    pub fn publish_round(
        &mut self,
        task: &str,
        round: u64,
        model: &ModelRow,
        now: i64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE round_parties SET state = 'late', reason = 'no answer by the deadline' WHERE task = ?1 AND round = ?2 AND state = 'invited'",
            params![task, round as i64],
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
        let mut st = self.conn.prepare(
            "SELECT party, stats FROM evaluations WHERE task = ?1 AND version = ?2 ORDER BY party",
        )?;
        let rows = st.query_map(params![task, version as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn insert_model(tx: &rusqlite::Transaction<'_>, task: &str, m: &ModelRow, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO models (task, version, round, blob_sha256, manifest, signature, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![task, m.version as i64, m.round as i64, m.blob_sha256, m.manifest, m.signature, now],
    )?;
    Ok(())
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
            // What a version-1 build wrote: no declines table.
            s.conn.execute_batch("DROP TABLE declines").unwrap();
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
}
