//! The coordinator's database: an embedded SQLite file (`yosegi.db` in the data dir, WAL,
//! `synchronous = FULL`) holding parties, tasks, feature sums, rounds and each party's state in
//! them, accepted updates, rejections, published models and evaluations, and the hash-chained
//! governance log ([`crate::audit`]). Blob bytes live in the content-addressed
//! [`crate::blobs::BlobStore`]; rows refer to them by sha256.
//!
//! The store decides nothing. It answers typed reads (`reads.rs`, rows in `rows.rs`) and
//! applies a [`yosegi_round::Transition`] with its governance-log records in one transaction
//! (`apply.rs`), refusing one decided on a state that has moved on ([`Version`]).

use std::path::Path;

use rusqlite::Connection;

use crate::audit::ChainBreak;

mod apply;
mod keys;
mod operators;
mod reads;
mod rows;
mod schema;
#[cfg(test)]
mod tests;

pub use apply::Applied;
pub use rows::{ModelRow, PartyRow, UpdateRow};
pub use schema::SCHEMA_VERSION;
pub use yosegi_round::RoundPhase;
pub use yosegi_round::decide::{RoundParty, RoundRecord, TaskRecord};

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
    /// A stored row does not read back as its type.
    #[error("database: {0}")]
    Row(String),
    /// A name already taken, an update already accepted: nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// The transition was decided on a state that has moved on: nothing was written.
    #[error("stale decision: {0}")]
    Stale(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The state a decision was taken on: the governance log's head. Every governance change
/// appends to the log, so an unchanged head means nothing a decision depends on has changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64);

/// The database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Creates a new database file (fails if it exists).
    pub fn create(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        conn.execute_batch(schema::SCHEMA)?;
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
            for step in &schema::MIGRATIONS[(found - 1) as usize..] {
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

    /// The state decisions are taken on now (see [`Version`]).
    pub fn version(&self) -> Result<Version> {
        version_of(&self.conn)
    }
}

fn version_of(conn: &Connection) -> Result<Version> {
    let seq: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_log", [], |r| {
        r.get(0)
    })?;
    Ok(Version(seq as u64))
}
