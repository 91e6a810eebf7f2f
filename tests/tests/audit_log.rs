//! The governance log of a live federation: a real round over gRPC is logged in order (enrolment,
//! task, statistics, round queued and opened, accepted updates, merge, publication), the
//! `coordinator audit verify` binary checks the chain beside the running server, and a record
//! edited in the SQLite file afterwards is named by seq.

use std::collections::BTreeSet;
use std::time::Duration;

use coordinator::audit::AuditRecord;
use coordinator::store::Store;
use yosegi_tests::sandbox::{Sandbox, wdbc_split};

fn detail(r: &AuditRecord) -> serde_json::Value {
    serde_json::from_str(&r.detail).unwrap_or_else(|e| panic!("record {}: {e}", r.seq))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_round_is_logged_in_order_and_verify_names_an_edited_record() {
    let mut sb = Sandbox::start().await;
    let (mut spec, _, slices) = wdbc_split(2);
    // One epoch: the log is under test, not the model.
    spec.training.local_epochs = 1;
    let mut op = sb.operator().await;
    let names = ["plant-a", "plant-b"];
    sb.enroll_and_start(&mut op, &names, &spec, &slices).await;
    op.create_task("wdbc", &spec.to_toml(), &[]).await.unwrap();
    op.start_round("wdbc", "fedavg", Default::default(), 2, 60_000, 1)
        .await
        .unwrap();
    sb.wait_for("wdbc", Duration::from_secs(120), |rs| {
        rs.first().is_some_and(|r| r.is_final())
    })
    .await;
    let (manifest, _, _) = op.pull("wdbc", 1, &sb.coordinator_key).await.unwrap();
    let data_dir = sb.data_dir.clone();
    let db = data_dir.join(coordinator::state::DB);

    // The records, read beside the running server.
    let all = Store::open_read_only(&db)
        .unwrap()
        .audit_records(None, None)
        .unwrap();
    // The first start records the data dir's key as the admin "operator", by nobody.
    assert_eq!(all[0].kind, "operator_added");
    assert_eq!(detail(&all[0])["operator"], "operator");
    assert_eq!(detail(&all[0])["role"], "admin");
    assert!(detail(&all[0]).get("by").is_none());
    let records = &all[1..];
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    // The round is queued while the statistics step runs; which of the two comes first depends
    // on how fast the plants report their sums.
    let statistics = ["normalization_fixed", "model_published"];
    let middle: &[&str] = if kinds.get(3) == Some(&"round_queued") {
        &["round_queued", statistics[0], statistics[1]]
    } else {
        &[statistics[0], statistics[1], "round_queued"]
    };
    let expected: Vec<&str> = ["party_enrolled", "party_enrolled", "task_created"]
        .into_iter()
        .chain(middle.iter().copied())
        .chain([
            "round_opened",
            "update_accepted",
            "update_accepted",
            "round_merged",
            "model_published",
        ])
        .collect();
    assert_eq!(kinds, expected, "{records:#?}");
    let enrolled: Vec<_> = records[..2].iter().map(|r| r.party.as_deref()).collect();
    assert_eq!(enrolled, [Some("plant-a"), Some("plant-b")]);
    // What the operator called for names it; what the coordinator did alone names nobody.
    for r in records {
        let by = detail(r)
            .get("by")
            .and_then(|b| b.as_str().map(str::to_string));
        let called = matches!(
            r.kind.as_str(),
            "party_enrolled" | "task_created" | "round_queued"
        );
        assert_eq!(
            by.as_deref(),
            called.then_some("operator"),
            "record {} ({})",
            r.seq,
            r.kind
        );
    }
    for r in &records[2..] {
        assert_eq!(r.task.as_deref(), Some("wdbc"), "record {}", r.seq);
        let initial = r.kind == "normalization_fixed" || detail(r)["version"] == 0;
        let round = if r.kind == "task_created" || initial {
            None
        } else {
            Some(1)
        };
        assert_eq!(r.round, round, "record {} ({})", r.seq, r.kind);
    }
    // The updates merged are the ones accepted, and the publication names the pulled model.
    let accepted: BTreeSet<(String, String)> = records[7..9]
        .iter()
        .map(|r| {
            (
                r.party.clone().unwrap(),
                detail(r)["blob_sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let merged: BTreeSet<(String, String)> = detail(&records[9])["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["party"].as_str().unwrap().to_string(),
                u["blob_sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(merged, accepted);
    assert_eq!(
        accepted.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        names
    );
    let published = detail(&records[10]);
    assert_eq!(published["version"], 1);
    assert_eq!(
        published["blob_sha256"].as_str(),
        Some(manifest.blob_sha256.to_string().as_str())
    );

    // The binary verifies the chain while the server runs, and lists the records.
    let dir = data_dir.to_str().unwrap().to_string();
    let (verified, shown) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            (
                yosegi_tests::run_ok("coordinator", &["audit", "verify", "--data-dir", &dir]),
                yosegi_tests::run_ok(
                    "coordinator",
                    &[
                        "audit",
                        "show",
                        "--data-dir",
                        &dir,
                        "--task",
                        "wdbc",
                        "--limit",
                        "3",
                    ],
                ),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(
        verified.trim(),
        format!("audit log OK: 12 records, head {}", records[10].hash)
    );
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three records:\n{shown}");
    assert!(
        lines[1].contains("update_accepted") && lines[3].contains("model_published"),
        "{shown}"
    );

    // Stop everything, keeping the data dir, then edit an accepted update's record.
    let kept = std::mem::replace(&mut sb.dir, tempfile::tempdir().unwrap());
    sb.stop().await;
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("DROP TRIGGER audit_log_no_update")
            .unwrap();
        let forged = records[7]
            .detail
            .replace("\"sample_count\":", "\"sample_count\":1");
        assert_ne!(forged, records[7].detail);
        let n = conn
            .execute("UPDATE audit_log SET detail = ?1 WHERE seq = 9", [&forged])
            .unwrap();
        assert_eq!(n, 1);
    }
    let out = tokio::task::spawn_blocking(move || {
        yosegi_tests::run("coordinator", &["audit", "verify", "--data-dir", &dir])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "verify passed an edited log: {stderr}"
    );
    assert!(
        stderr.contains("audit record 9 (update_accepted): hash mismatch"),
        "{stderr}"
    );
    drop(kept);
}
