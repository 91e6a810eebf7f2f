//! The governance log: every governance event of the coordinator (enrolment, revocation, task
//! creation, rounds queued and opened, updates accepted, rejected or left out, declines, merges,
//! publications, failed rounds) as one row of the `audit_log` table, hash-chained so that an
//! edited, inserted or deleted record is found by [`ChainVerifier`].
//!
//! A record is appended by the [`crate::store::Store`] method that makes the state change it
//! records, in the same SQLite transaction: a record exists exactly when its change was
//! committed. The record format and its hash encoding are specified in docs/AUDIT.md; this
//! module is the one implementation of both.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use shared_model::ids::Sha256;

/// `prev_hash` of the first record: 32 zero bytes.
pub const GENESIS: Sha256 = Sha256::from_bytes([0; 32]);

/// Domain separation of the record hash; bump it with any change of the encoding.
const HASH_DOMAIN: &[u8] = b"yosegi-audit-v1\n";

/// What happened. Stored as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditKind {
    /// A party was enrolled with its public key.
    PartyEnrolled,
    /// A party's key was replaced (its name and place in tasks kept).
    PartyKeyRotated,
    /// The coordinator's signing key was replaced; every manifest was signed again.
    CoordinatorKeyRotated,
    /// A party was revoked.
    PartyRevoked,
    /// A task was created from a spec.
    TaskCreated,
    /// The statistics step completed: the task's normalisation is fixed.
    NormalizationFixed,
    /// A round was queued by the operator.
    RoundQueued,
    /// A queued round opened for training; parties invited.
    RoundOpened,
    /// A party's update passed verification and was stored.
    UpdateAccepted,
    /// A party's upload was rejected (a failed check or too late), with its code.
    UpdateRejected,
    /// A party declined work (a training invitation, statistics or an evaluation).
    PartyDeclined,
    /// A party is out of a round without having declined: revoked while awaited, its accepted
    /// update no longer verifies, or no answer by the deadline.
    PartyLeftOut,
    /// A round's updates were merged by its strategy.
    RoundMerged,
    /// A model version was published (signed manifest stored).
    ModelPublished,
    /// A round closed without a merge.
    RoundFailed,
    /// A published model's damaged or lost blob was restored from a copy with its hash.
    ModelRestored,
    /// An operator key was added with a role.
    OperatorAdded,
    /// An operator key was revoked.
    OperatorRevoked,
}

impl AuditKind {
    /// Every kind.
    pub const ALL: [AuditKind; 18] = [
        Self::PartyEnrolled,
        Self::PartyKeyRotated,
        Self::CoordinatorKeyRotated,
        Self::PartyRevoked,
        Self::TaskCreated,
        Self::NormalizationFixed,
        Self::RoundQueued,
        Self::RoundOpened,
        Self::UpdateAccepted,
        Self::UpdateRejected,
        Self::PartyDeclined,
        Self::PartyLeftOut,
        Self::RoundMerged,
        Self::ModelPublished,
        Self::RoundFailed,
        Self::ModelRestored,
        Self::OperatorAdded,
        Self::OperatorRevoked,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PartyEnrolled => "party_enrolled",
            Self::PartyKeyRotated => "party_key_rotated",
            Self::CoordinatorKeyRotated => "coordinator_key_rotated",
            Self::PartyRevoked => "party_revoked",
            Self::TaskCreated => "task_created",
            Self::NormalizationFixed => "normalization_fixed",
            Self::RoundQueued => "round_queued",
            Self::RoundOpened => "round_opened",
            Self::UpdateAccepted => "update_accepted",
            Self::UpdateRejected => "update_rejected",
            Self::PartyDeclined => "party_declined",
            Self::PartyLeftOut => "party_left_out",
            Self::RoundMerged => "round_merged",
            Self::ModelPublished => "model_published",
            Self::RoundFailed => "round_failed",
            Self::ModelRestored => "model_restored",
            Self::OperatorAdded => "operator_added",
            Self::OperatorRevoked => "operator_revoked",
        }
    }
}

impl std::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event about to be appended: its kind, the task, round and party it concerns (where they
/// apply) and a JSON object with the rest.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent<'a> {
    kind: AuditKind,
    task: Option<&'a str>,
    round: Option<u64>,
    party: Option<&'a str>,
    detail: Value,
}

impl<'a> AuditEvent<'a> {
    /// An event of `kind` with `detail` (a JSON object) concerning nothing in particular yet.
    pub fn new(kind: AuditKind, detail: Value) -> Self {
        Self {
            kind,
            task: None,
            round: None,
            party: None,
            detail,
        }
    }

    /// The same event, concerning `task`.
    pub fn task(self, task: &'a str) -> Self {
        Self {
            task: Some(task),
            ..self
        }
    }

    /// The same event, concerning round `round`.
    pub fn round(self, round: u64) -> Self {
        Self {
            round: Some(round),
            ..self
        }
    }

    /// The same event, with the operator who called for it (`"by"` in the detail), if one did.
    pub fn by(mut self, operator: Option<&str>) -> Self {
        if let (Some(by), Value::Object(detail)) = (operator, &mut self.detail) {
            detail.insert("by".into(), Value::String(by.into()));
        }
        self
    }

    /// The same event, concerning `party`.
    pub fn party(self, party: &'a str) -> Self {
        Self {
            party: Some(party),
            ..self
        }
    }
}

/// A stored record, as read back (not trusted: [`ChainVerifier`] checks it).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    /// Position in the log: 1, 2, 3… without gaps.
    pub seq: u64,
    /// When the event happened (Unix ms, the coordinator's clock).
    pub time_ms: i64,
    /// What happened ([`AuditKind`] name).
    pub kind: String,
    /// The task concerned.
    pub task: Option<String>,
    /// The round concerned.
    pub round: Option<u64>,
    /// The party concerned.
    pub party: Option<String>,
    /// The rest, a JSON object (hashed as the stored text).
    pub detail: String,
    /// The previous record's hash (hex; [`GENESIS`] for record 1).
    pub prev_hash: String,
    /// sha256 of this record's canonical encoding (hex).
    pub hash: String,
}

impl AuditRecord {
    /// The columns, in the order [`AuditRecord::from_row`] reads them.
    pub const COLUMNS: &'static str =
        "seq, time_ms, kind, task, round, party, detail, prev_hash, hash";

    /// Reads a row selected with [`AuditRecord::COLUMNS`].
    pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            seq: r.get::<_, i64>(0)? as u64,
            time_ms: r.get(1)?,
            kind: r.get(2)?,
            task: r.get(3)?,
            round: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
            party: r.get(5)?,
            detail: r.get(6)?,
            prev_hash: r.get(7)?,
            hash: r.get(8)?,
        })
    }

    /// The hash this record's fields and `prev` give (the canonical encoding of docs/AUDIT.md):
    /// the domain tag, `seq` (u64) and `time_ms` (i64) big-endian, then `kind`, `task`,
    /// `round`, `party`, `detail` — a text as its u64 big-endian byte length and UTF-8 bytes, an
    /// optional field as one byte 0 (absent) or 1 followed by the field, the round as u64
    /// big-endian — and last the 32 bytes of `prev`.
    pub fn computed_hash(&self, prev: &Sha256) -> Sha256 {
        fn text(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u64).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        fn optional<T: ?Sized>(out: &mut Vec<u8>, v: Option<&T>, put: impl Fn(&mut Vec<u8>, &T)) {
            match v {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    put(out, v);
                }
            }
        }
        let mut out = Vec::with_capacity(128 + self.detail.len());
        out.extend_from_slice(HASH_DOMAIN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        text(&mut out, &self.kind);
        optional(&mut out, self.task.as_deref(), text);
        optional(&mut out, self.round.as_ref(), |o, r| {
            o.extend_from_slice(&r.to_be_bytes())
        });
        optional(&mut out, self.party.as_deref(), text);
        text(&mut out, &self.detail);
        out.extend_from_slice(prev.as_bytes());
        Sha256::of(&out)
    }
}

/// Appends `event`, which happened at `time_ms`, after the newest record. Call it inside the
/// transaction that makes the change the event records.
pub fn append(conn: &Connection, time_ms: i64, event: &AuditEvent<'_>) -> rusqlite::Result<u64> {
    let head: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match head {
        None => (1, GENESIS),
        Some((seq, hash)) => {
            // `append` wrote it; an unreadable head means the file was edited. Nothing more is
            // recorded (and so nothing more changes) until an operator has looked.
            let prev = hash.parse::<Sha256>().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    8,
                    rusqlite::types::Type::Text,
                    format!("audit record {seq}, the newest, has a damaged hash: {e}").into(),
                )
            })?;
            (seq as u64 + 1, prev)
        }
    };
    let mut record = AuditRecord {
        seq,
        time_ms,
        kind: event.kind.as_str().to_string(),
        task: event.task.map(str::to_string),
        round: event.round,
        party: event.party.map(str::to_string),
        detail: event.detail.to_string(),
        prev_hash: prev.to_string(),
        hash: String::new(),
    };
    record.hash = record.computed_hash(&prev).to_string();
    conn.execute(
        &format!(
            "INSERT INTO audit_log ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            AuditRecord::COLUMNS
        ),
        params![
            record.seq as i64,
            record.time_ms,
            record.kind,
            record.task,
            record.round.map(|r| r as i64),
            record.party,
            record.detail,
            record.prev_hash,
            record.hash,
        ],
    )?;
    Ok(seq)
}

/// The first record that breaks the chain, and how.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// A record is missing before this one (deleted), or the log does not start at 1.
    #[error(
        "audit record {seq} ({kind}): gap in seq: expected record {expected} here, found {seq} (record(s) {expected}..{seq} missing or out of order)"
    )]
    Gap {
        /// The record found.
        seq: u64,
        /// Its kind.
        kind: String,
        /// The seq expected at this place.
        expected: u64,
    },
    /// The record does not name the previous record's hash.
    #[error(
        "audit record {seq} ({kind}): prev_hash mismatch: it names {found:?}, the record before it has hash {expected}"
    )]
    PrevHash {
        /// The record.
        seq: u64,
        /// Its kind.
        kind: String,
        /// The prev_hash stored.
        found: String,
        /// The previous record's hash (or the genesis hash).
        expected: String,
    },
    /// The record's fields do not give its stored hash: it was edited.
    #[error(
        "audit record {seq} ({kind}): hash mismatch: stored {stored:?}, its fields hash to {computed}"
    )]
    Hash {
        /// The record.
        seq: u64,
        /// Its kind.
        kind: String,
        /// The hash stored.
        stored: String,
        /// The hash of its fields.
        computed: String,
    },
}

/// The end of a verified chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// Records checked.
    pub records: u64,
    /// The newest record's hash ([`GENESIS`] for an empty log).
    pub hash: Sha256,
}

/// Checks records one by one, in seq order: no gap, each names the previous record's hash,
/// and each hashes to what it stores.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    records: u64,
    prev: Sha256,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            records: 0,
            prev: GENESIS,
        }
    }
}

impl ChainVerifier {
    /// Checks the next record.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), ChainBreak> {
        let expected = self.records + 1;
        if r.seq != expected {
            return Err(ChainBreak::Gap {
                seq: r.seq,
                kind: r.kind.clone(),
                expected,
            });
        }
        if r.prev_hash != self.prev.to_string() {
            return Err(ChainBreak::PrevHash {
                seq: r.seq,
                kind: r.kind.clone(),
                found: r.prev_hash.clone(),
                expected: self.prev.to_string(),
            });
        }
        let computed = r.computed_hash(&self.prev);
        if r.hash != computed.to_string() {
            return Err(ChainBreak::Hash {
                seq: r.seq,
                kind: r.kind.clone(),
                stored: r.hash.clone(),
                computed: computed.to_string(),
            });
        }
        self.records = r.seq;
        self.prev = computed;
        Ok(())
    }

    /// The head after every record pushed.
    pub fn finish(self) -> ChainHead {
        ChainHead {
            records: self.records,
            hash: self.prev,
        }
    }
}

/// `time_ms` as `YYYY-MM-DD HH:MM:SS.mmm` UTC.
pub fn format_utc(time_ms: i64) -> String {
    let (days, ms) = (
        time_ms.div_euclid(86_400_000),
        time_ms.rem_euclid(86_400_000),
    );
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (s, milli) = (ms / 1000, ms % 1000);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{milli:03}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Writes records as a table: seq, time (UTC), kind, task, round, party, detail, hash prefix.
pub fn write_table(out: &mut impl std::io::Write, records: &[AuditRecord]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>6}  {:<23}  {:<19}  {:<12}  {:>5}  {:<12}  {:<12}  detail",
        "seq", "time (UTC)", "kind", "task", "round", "party", "hash"
    )?;
    for r in records {
        writeln!(
            out,
            "{:>6}  {:<23}  {:<19}  {:<12}  {:>5}  {:<12}  {:<12}  {}",
            r.seq,
            format_utc(r.time_ms),
            r.kind,
            r.task.as_deref().unwrap_or("-"),
            r.round.map_or("-".to_string(), |n| n.to_string()),
            r.party.as_deref().unwrap_or("-"),
            r.hash.get(..12).unwrap_or(&r.hash),
            r.detail
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, prev: &Sha256) -> AuditRecord {
        let mut r = AuditRecord {
            seq,
            time_ms: 1_700_000_000_000 + seq as i64,
            kind: AuditKind::UpdateAccepted.as_str().into(),
            task: Some("t".into()),
            round: Some(1),
            party: Some("plant-a".into()),
            detail: r#"{"sample_count":10}"#.into(),
            prev_hash: prev.to_string(),
            hash: String::new(),
        };
        r.hash = r.computed_hash(prev).to_string();
        r
    }

    /// Existing logs are verified with this encoding: a silent change must fail here
    /// (docs/AUDIT.md specifies it).
    #[test]
    fn the_record_hash_is_pinned() {
        let first = record(1, &GENESIS);
        assert_eq!(
            first.hash,
            "52b9b066d699800fe32ca31805b9cf8f39e53671c131823d2528037f165894c6"
        );
        let mut second = record(2, &first.hash.parse().unwrap());
        second.task = None;
        second.round = None;
        second.hash = second
            .computed_hash(&first.hash.parse().unwrap())
            .to_string();
        assert_eq!(
            second.hash,
            "6680a6c5f11c6e6fc8e4352d0a3f3323021207268137eeb4014a3e7fb805e272"
        );
    }

    #[test]
    fn the_encoding_separates_fields_and_absence() {
        let a = record(1, &GENESIS);
        // Moving bytes between adjacent text fields changes the hash (lengths are encoded).
        let mut b = a.clone();
        b.task = Some("tp".into());
        b.party = Some("lant-a".into());
        assert_ne!(a.computed_hash(&GENESIS), b.computed_hash(&GENESIS));
        // An absent field differs from an empty one.
        let mut c = a.clone();
        c.task = None;
        let mut d = a.clone();
        d.task = Some(String::new());
        assert_ne!(c.computed_hash(&GENESIS), d.computed_hash(&GENESIS));
        // Every field counts, the previous hash included.
        let mut e = a.clone();
        e.round = Some(2);
        assert_ne!(a.computed_hash(&GENESIS), e.computed_hash(&GENESIS));
        assert_ne!(
            a.computed_hash(&GENESIS),
            a.computed_hash(&Sha256::of(b"x"))
        );
    }

    #[test]
    fn a_verifier_names_the_first_bad_record() {
        let r1 = record(1, &GENESIS);
        let r2 = record(2, &r1.hash.parse().unwrap());
        let mut v = ChainVerifier::default();
        v.push(&r1).unwrap();
        v.push(&r2).unwrap();
        let head = v.finish();
        assert_eq!((head.records, head.hash.to_string()), (2, r2.hash.clone()));

        let mut bad = r2.clone();
        bad.detail = r#"{"sample_count":11}"#.into();
        let mut v = ChainVerifier::default();
        v.push(&r1).unwrap();
        let e = v.push(&bad).unwrap_err();
        assert!(matches!(e, ChainBreak::Hash { seq: 2, .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("audit record 2 (update_accepted): hash mismatch")
        );

        let e = ChainVerifier::default().push(&r2).unwrap_err();
        assert_eq!(
            e,
            ChainBreak::Gap {
                seq: 2,
                kind: "update_accepted".into(),
                expected: 1
            }
        );
        let mut forged = record(1, &Sha256::of(b"elsewhere"));
        forged.seq = 1;
        let e = ChainVerifier::default().push(&forged).unwrap_err();
        assert!(matches!(e, ChainBreak::PrevHash { seq: 1, .. }), "{e}");
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_utc(951_782_400_123), "2000-02-29 00:00:00.123");
        assert_eq!(format_utc(1_767_225_599_999), "2025-12-31 23:59:59.999");
    }

    #[test]
    fn kind_names_are_distinct() {
        let names: std::collections::BTreeSet<&str> =
            AuditKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), AuditKind::ALL.len());
    }
}
