//! The SQLite schema (version [`SCHEMA_VERSION`], `PRAGMA user_version`) and the in-place
//! migrations from every older version. Stored names (phases, party states, option keys) are
//! the ones `yosegi-round` writes; the schema holds no rules.

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 7;

/// The `declines` table (schema 2): non-training work a party refused (statistics, evaluation).
macro_rules! declines_ddl {
    () => {
        "CREATE TABLE declines (task TEXT NOT NULL, assignment TEXT NOT NULL, party TEXT NOT NULL, reason TEXT NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY (task, assignment, party));"
    };
}

/// Rotations of the coordinator's signing key (schema 6), in order.
macro_rules! rotations_ddl {
    () => {
        "CREATE TABLE key_rotations (sequence INTEGER PRIMARY KEY, statement BLOB NOT NULL, by_previous BLOB NOT NULL, by_new BLOB NOT NULL, at_ms INTEGER NOT NULL);"
    };
}

/// Named operator keys with a role (schema 7); never deleted, only revoked. The data dir's
/// `operator.pub.pem` becomes the admin `operator` when the table is empty (`operators.rs`).
macro_rules! operators_ddl {
    () => {
        "CREATE TABLE operators (name TEXT PRIMARY KEY, public_key BLOB NOT NULL UNIQUE, role TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, added_ms INTEGER NOT NULL);"
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

pub(super) const SCHEMA: &str = concat!(
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
  created_ms INTEGER NOT NULL,
  limits TEXT NOT NULL DEFAULT '{}' -- JSON contribution limits (schema 5; '{}' = the defaults)
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
    audit_ddl!(),
    "\n",
    rotations_ddl!(),
    "\n",
    operators_ddl!()
);

/// Steps from each older schema version to the next: `MIGRATIONS[v - 1]` upgrades version `v`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1 → 2: declines of non-training work are remembered, so refused work is not re-offered.
    declines_ddl!(),
    // 2 → 3: the governance log. It starts empty: events before the upgrade are not logged.
    audit_ddl!(),
    // 3 → 4: each accepted update keeps the membership audit its party reported.
    "ALTER TABLE updates ADD COLUMN membership_audit TEXT;",
    // 4 → 5: each task's contribution limits; older tasks get the defaults (no party above
    // half of a merge or of the normalisation).
    "ALTER TABLE tasks ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';",
    // 5 → 6: rotations of the coordinator's signing key.
    rotations_ddl!(),
    // 6 → 7: named operator keys with roles; the data dir's operator key is added as admin
    // `operator` at the next start.
    operators_ddl!(),
];
