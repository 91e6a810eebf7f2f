//! A published model damaged on the coordinator's disk (issue #15): the rounds on it fail with
//! the reason instead of stalling, the log does not spin, and the operator restores it from a
//! copy with the published hash.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stored_model_fails_its_rounds_with_the_reason_and_is_restored_from_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    std::fs::write(&server.config, "tick_ms = 20\n").unwrap();
    server.start();
    let (mut op, spec, key, mut c, a) = one_site(&server, "repair").await;
    let (blob, env) = update_for(&mut c, &a, &spec, "site-0", &key).await;
    c.upload(&a.id, &env, blob, None).await.unwrap();
    wait_rounds(&server, "repair", Duration::from_secs(60), |r| {
        r[0].phase == "published"
    })
    .await;
    // The operator's copy, pulled while it was good.
    let (_, copy, _) = op
        .pull(
            "repair",
            1,
            &shared_model::keys::read_public(&server.coordinator_pub()).unwrap(),
        )
        .await
        .unwrap();

    // Damaged before a round is started on it: the start is refused, naming the cure.
    damage(&server, "repair", 1);
    let e = op
        .start_round("repair", "fedavg", HashMap::new(), 1, 120_000, 1)
        .await
        .unwrap_err();
    for says in [
        "no round can start on task repair",
        "the base model (version 1 of repair) is unreadable on the coordinator's disk",
        "coordinator model restore --task repair --version 1",
    ] {
        assert!(format!("{e:#}").contains(says), "{e:#}");
    }

    // A copy that is not that model, and one of a version never published, are refused.
    let e = op
        .restore("repair", 1, b"not the model".to_vec())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("it is not that model"), "{e:#}");
    let e = op.restore("repair", 9, copy.clone()).await.unwrap_err();
    assert!(
        format!("{e:#}").contains("has no published model version 9"),
        "{e:#}"
    );
    // The good copy restores it; a second restore finds nothing to do.
    op.restore("repair", 1, copy.clone()).await.unwrap();
    let e = op.restore("repair", 1, copy.clone()).await.unwrap_err();
    assert!(format!("{e:#}").contains("is intact"), "{e:#}");
    let logged: String = server
        .db()
        .query_row(
            "SELECT detail FROM audit_log WHERE kind = 'model_restored'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(logged.contains("\"version\":1"), "{logged}");

    // Damaged while a round runs on it, with one more queued: the running round fails at
    // its deadline (not minutes later) with the reason and the party named, the queued one
    // before it opens.
    op.start_round("repair", "fedavg", HashMap::new(), 1, 3_000, 2)
        .await
        .unwrap();
    wait_rounds(&server, "repair", Duration::from_secs(20), |r| {
        r.len() == 3 && r[1].phase == "training"
    })
    .await;
    damage(&server, "repair", 1);
    let rounds = wait_rounds(&server, "repair", Duration::from_secs(20), |r| {
        r[1].phase == "failed" && r[2].phase == "failed"
    })
    .await;
    for r in &rounds[1..] {
        assert!(
            r.failure.contains("unreadable on the coordinator's disk"),
            "round {}: {}",
            r.round,
            r.failure
        );
    }
    assert_eq!(state_of(&rounds[1], "site-0").0, "late");
    let left_out: String = server
        .db()
        .query_row(
            "SELECT detail FROM audit_log WHERE kind = 'party_left_out' AND round = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(left_out.contains("unreadable"), "{left_out}");
    assert!(rounds[2].parties.is_empty(), "round 3 never opened");
    // Each failure is logged once; the log does not spin.
    let log = server.log_tail();
    assert_eq!(log.matches("task cannot move forward").count(), 0, "{log}");

    // Restored again, the next round publishes on it.
    op.restore("repair", 1, copy).await.unwrap();
    op.start_round("repair", "fedavg", HashMap::new(), 1, 120_000, 1)
        .await
        .unwrap();
    let a = next_work(&mut c, |a| {
        matches!(a.work, Work::Train { .. }) && a.round == 4
    })
    .await;
    let (blob, env) = update_for(&mut c, &a, &spec, "site-0", &key).await;
    c.upload(&a.id, &env, blob, None).await.unwrap();
    let rounds = wait_rounds(&server, "repair", Duration::from_secs(60), |r| {
        r[3].phase == "published"
    })
    .await;
    assert_eq!(rounds[3].version, 2);
    server.terminate();
}
