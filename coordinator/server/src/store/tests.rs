//! Store tests: schema versions and migrations, every transition written with its
//! governance-log records in order, guards that refuse stale or conflicting writes.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::params;
use serde_json::Value;
use shared_model::ids::{ModelVersion, RoundNo};
use shared_model::strategy::StrategyConfig;
use yosegi_round::state::LATE;
use yosegi_round::transition::{Late, Merged, RejectionEffect};
use yosegi_round::{Limits, RoundPlan, Transition};

use super::*;
use crate::audit::{self, AuditRecord, ChainBreak};

#[test]
fn schema_round_trip_and_version_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("y.db");
    {
        let s = Store::create(&path).unwrap();
        let mut s = s;
        assert!(enroll(&mut s, "plant-a", [7; 32], 5).unwrap());
        assert!(!enroll(&mut s, "plant-a", [8; 32], 6).unwrap());
        assert!(revoke(&mut s, "plant-a", 6));
        assert!(!revoke(&mut s, "plant-z", 6));
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
        let mut s = Store::create(&path).unwrap();
        assert!(enroll(&mut s, "plant-a", [7; 32], 5).unwrap());
        // What a version-1 build wrote: no declines table, no governance log.
        s.conn
            .execute_batch(
                "DROP TABLE declines; DROP TABLE audit_log; ALTER TABLE updates DROP COLUMN membership_audit; ALTER TABLE tasks DROP COLUMN limits; DROP TABLE key_rotations; DROP TABLE operators",
            )
            .unwrap();
        s.conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let mut s = Store::open(&path).unwrap();
    assert_eq!(s.parties().unwrap().len(), 1, "rows survive the upgrade");
    decline(&mut s, "t/evaluate/1", "plant-a", "policy", 9);
    assert!(s.declined(&id("t/evaluate/1"), "plant-a").unwrap());
    assert!(!s.declined(&id("t/evaluate/2"), "plant-a").unwrap());
    let v: i64 = s
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}

#[test]
fn a_version_4_task_is_upgraded_with_the_default_contribution_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("y.db");
    {
        let s = lived_store(&path);
        s.conn
            .execute_batch("ALTER TABLE tasks DROP COLUMN limits; DROP TABLE key_rotations; DROP TABLE operators")
            .unwrap();
        s.conn.pragma_update(None, "user_version", 4).unwrap();
    }
    let s = Store::open(&path).unwrap();
    let t = s.task("t").unwrap().unwrap();
    assert_eq!(t.limits, Limits::default());
}

fn plan() -> RoundPlan {
    RoundPlan {
        strategy: StrategyConfig::parse("fedavg", &BTreeMap::new()).unwrap(),
        relay: None,
        min_parties: 1,
        deadline_ms: 60_000,
    }
}

fn model_row(version: u64, round: u64) -> ModelRow {
    ModelRow {
        version: ModelVersion(version),
        round: RoundNo(round),
        blob_sha256: format!("{version:064x}").parse().unwrap(),
        manifest: vec![version as u8; 8],
        signature: vec![0; 64],
    }
}

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

/// Applies a transition decided on the store's current state.
fn apply(s: &mut Store, now: i64, t: Transition) -> Result<Applied> {
    let at = s.version()?;
    s.apply(at, now, &t)
}

fn enroll(s: &mut Store, name: &str, key: [u8; 32], now: i64) -> Result<bool> {
    let t = Transition::EnrollParty {
        party: id(name),
        public_key: key,
    };
    match apply(s, now, t) {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn revoke(s: &mut Store, name: &str, now: i64) -> bool {
    let awaited = s.awaited_rounds(name).unwrap();
    let t = Transition::Revoke {
        party: id(name),
        reason: "revoked by the operator".into(),
        awaited,
    };
    apply(s, now, t).is_ok()
}

fn decline(s: &mut Store, assignment: &str, party: &str, reason: &str, now: i64) {
    let t = Transition::Decline {
        assignment: id(assignment),
        party: id(party),
        reason: reason.into(),
    };
    apply(s, now, t).unwrap();
}

fn late(party: &str) -> Late {
    Late {
        party: id(party),
        reason: LATE.into(),
    }
}

fn open(s: &mut Store, round: u64, now: i64, base: u64) {
    let t = Transition::OpenRound {
        task: id("t"),
        round: RoundNo(round),
        started_ms: now,
        ends_ms: now + 60_000,
        base_version: ModelVersion(base),
        invited: vec![id("plant-a"), id("plant-b")],
    };
    apply(s, now, t).unwrap();
}

/// A store that went through one task's life: two parties, statistics, a published round
/// (one accepted update, one rejected upload, one party late) and a failed one.
fn lived_store(path: &Path) -> Store {
    let mut s = Store::create(path).unwrap();
    for (i, p) in ["plant-a", "plant-b"].iter().enumerate() {
        assert!(enroll(&mut s, p, [i as u8; 32], 10).unwrap());
    }
    let task = Transition::CreateTask {
        task: id("t"),
        spec_toml: "spec".into(),
        spec_id: "ab".repeat(32),
        parties: vec![id("plant-a"), id("plant-b")],
        limits: Limits::default(),
    };
    apply(&mut s, 11, task).unwrap();
    let sums = Transition::RecordSums {
        task: id("t"),
        party: id("plant-a"),
        sums_json: "{}".into(),
    };
    apply(&mut s, 11, sums).unwrap();
    let fix = Transition::FixNormalization {
        task: id("t"),
        normalization_json: "{}".into(),
        reported: vec![id("plant-a")],
        initial: model_row(0, 0),
    };
    apply(&mut s, 12, fix).unwrap();
    let queue = Transition::QueueRounds {
        task: id("t"),
        plans: vec![plan(), plan()],
    };
    assert_eq!(
        apply(&mut s, 13, queue).unwrap(),
        Applied::Queued(RoundNo(1))
    );
    open(&mut s, 1, 14, 0);
    let reject = Transition::RecordRejection {
        task: id("t"),
        round: RoundNo(1),
        party: id("plant-a"),
        code: "signature".into(),
        reason: "bad signature of plant-a".into(),
        effect: RejectionEffect::StaysAwaited,
    };
    apply(&mut s, 15, reject).unwrap();
    let update = UpdateRow {
        party: id("plant-a"),
        blob_sha256: id(&"cd".repeat(32)),
        envelope_json: "{}".into(),
        sample_count: 40,
        local_metrics_json: None,
        membership_audit_json: None,
    };
    let accept = Transition::AcceptUpdate {
        task: id("t"),
        round: RoundNo(1),
        update: update.clone(),
    };
    apply(&mut s, 16, accept).unwrap();
    let publish = Transition::PublishRound {
        task: id("t"),
        round: RoundNo(1),
        strategy: "fedavg".into(),
        left_out: vec![],
        late: vec![late("plant-b")],
        merged: vec![Merged {
            party: id("plant-a"),
            blob_sha256: update.blob_sha256,
            sample_count: 40,
            weight: 40,
        }],
        model: model_row(1, 1),
    };
    apply(&mut s, 17, publish).unwrap();
    open(&mut s, 2, 18, 1);
    decline(&mut s, "t/train/2", "plant-b", "declined: site policy", 19);
    let fail = Transition::FailRound {
        task: id("t"),
        round: RoundNo(2),
        reason: "quorum not met".into(),
        left_out: vec![],
        late: vec![late("plant-a")],
    };
    apply(&mut s, 20, fail).unwrap();
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
    assert!(!enroll(&mut s, "plant-a", [9; 32], 30).unwrap());
    assert!(!revoke(&mut s, "plant-z", 30));
    decline(&mut s, "t/evaluate/1", "plant-b", "policy", 31);
    decline(&mut s, "t/evaluate/1", "plant-b", "again", 32);
    assert_eq!(kinds(&s).len(), before + 1, "one decline logged once");

    let queue = Transition::QueueRounds {
        task: id("t"),
        plans: vec![plan()],
    };
    apply(&mut s, 33, queue).unwrap();
    open(&mut s, 3, 34, 1);
    assert!(revoke(&mut s, "plant-b", 35));
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
    let mut s = s;
    let e = enroll(&mut s, "plant-c", [3; 32], 40).unwrap_err();
    assert!(e.to_string().contains("audit record 17"), "{e}");
    assert_eq!(s.parties().unwrap().len(), 2, "the enrolment rolled back");
    assert_eq!(kinds(&s).len(), 17);
}

#[test]
fn a_version_2_database_is_upgraded_and_logs_from_then_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("y.db");
    {
        let mut s = Store::create(&path).unwrap();
        assert!(enroll(&mut s, "plant-a", [7; 32], 5).unwrap());
        // What a version-2 build wrote: no governance log.
        s.conn
            .execute_batch(
                "DROP TABLE audit_log; ALTER TABLE updates DROP COLUMN membership_audit; ALTER TABLE tasks DROP COLUMN limits; DROP TABLE key_rotations; DROP TABLE operators",
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
    let mut s = s;
    assert!(enroll(&mut s, "plant-b", [8; 32], 6).unwrap());
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
            .execute_batch(
                "ALTER TABLE updates DROP COLUMN membership_audit; ALTER TABLE tasks DROP COLUMN limits; DROP TABLE key_rotations; DROP TABLE operators",
            )
            .unwrap();
        s.conn
            .execute(
                "INSERT INTO updates (task, round, party, blob_sha256, envelope, sample_count, local_metrics, accepted_ms) VALUES ('t', 1, 'plant-a', ?1, '{}', 10, NULL, 5)",
                ["ab".repeat(32)],
            )
            .unwrap();
        s.conn.pragma_update(None, "user_version", 3).unwrap();
    }
    let s = Store::open(&path).unwrap();
    let old = s.updates("t", 1).unwrap();
    assert_eq!(old.len(), 1, "rows survive the upgrade");
    assert_eq!(old[0].membership_audit_json, None);
    let json = r#"{"members":10,"non_members":12,"auc":0.5,"advantage":0.1,"tpr_at_1pct_fpr":0.0}"#;
    s.conn
        .execute(
            "INSERT INTO updates (task, round, party, blob_sha256, envelope, sample_count, local_metrics, accepted_ms, membership_audit) VALUES ('t', 1, 'plant-b', ?1, '{}', 10, NULL, 6, ?2)",
            params!["cd".repeat(32), json],
        )
        .unwrap();
    let rows = s.updates("t", 1).unwrap();
    assert_eq!(rows[1].membership_audit_json.as_deref(), Some(json));
}

#[test]
fn a_transition_decided_on_an_older_state_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = lived_store(&dir.path().join("y.db"));
    let queue = Transition::QueueRounds {
        task: id("t"),
        plans: vec![plan()],
    };
    apply(&mut s, 30, queue).unwrap();
    // Two decisions taken on the same state: the first commits, the second is stale.
    let at = s.version().unwrap();
    let open = Transition::OpenRound {
        task: id("t"),
        round: RoundNo(3),
        started_ms: 31,
        ends_ms: 60_031,
        base_version: ModelVersion(1),
        invited: vec![id("plant-a")],
    };
    s.apply(at, 31, &open).unwrap();
    let before = kinds(&s).len();
    let revoke = Transition::Revoke {
        party: id("plant-b"),
        reason: "revoked by the operator".into(),
        awaited: vec![],
    };
    let e = s.apply(at, 32, &revoke).unwrap_err();
    assert!(matches!(e, StoreError::Stale(_)), "{e}");
    assert_eq!(kinds(&s).len(), before, "nothing logged");
    assert!(
        !s.party("plant-b").unwrap().unwrap().revoked,
        "nothing written"
    );
    // A guard inside the transaction refuses a decision its rows no longer support: opening
    // the same round again writes nothing either.
    let e = apply(&mut s, 33, open).unwrap_err();
    assert!(matches!(e, StoreError::Stale(_)), "{e}");
    assert_eq!(kinds(&s).len(), before);
    s.verify_audit().unwrap();
}
