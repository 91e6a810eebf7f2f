//! Live federation rounds over real gRPC on loopback: a coordinator and party daemons with
//! real keys, SQLite on disk and burn training.

use std::time::Duration;

use shared_model::blob::{self, BlobRole};
use shared_model::eval::evaluate;
use shared_model::network::CpuBackend;
use yosegi_tests::sandbox::{Sandbox, wdbc_split};

fn spec_text() -> String {
    std::fs::read_to_string(yosegi_tests::data("wdbc.toml")).unwrap()
}

/// Three plants, WDBC split three ways, three FedAvg rounds: the merged model beats F1 0.93 on
/// rows no party trained on, every plant holds the same verified version, the manifest
/// verifies, and the database has three accepted updates per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_parties_three_fedavg_rounds() {
    let (mut sb, metrics) = Sandbox::start_with_metrics().await;
    let (spec, holdout, slices) = wdbc_split(3);
    let mut op = sb.operator().await;
    let names = ["plant-a", "plant-b", "plant-c"];
    let files = sb.enroll_and_start(&mut op, &names, &spec, &slices).await;
    op.create_task("wdbc", &spec_text(), &[]).await.unwrap();
    let first = op
        .start_round("wdbc", "fedavg", Default::default(), 3, 120_000, 3)
        .await
        .unwrap();
    assert_eq!(first, 1);
    let rounds = sb
        .wait_for("wdbc", Duration::from_secs(240), |rs| {
            rs.len() == 3 && rs.iter().all(|r| r.phase == "published") && rs[2].metrics.is_some()
        })
        .await;
    for r in &rounds {
        assert_eq!(
            r.version, r.round,
            "round {} published version {}",
            r.round, r.version
        );
        assert_eq!(
            r.parties.iter().filter(|p| p.state == "accepted").count(),
            3,
            "{r:?}"
        );
    }

    // The published model, pulled and verified with the coordinator key, evaluated on rows no
    // party ever trained on.
    let (manifest, bytes, _) = op.pull("wdbc", 0, &sb.coordinator_key).await.unwrap();
    assert_eq!(manifest.version.0, 3);
    assert_eq!(manifest.contributors.len(), 3);
    assert_eq!(manifest.strategy, "fedavg");
    let weights = blob::decode(&bytes, &spec, BlobRole::Merged).unwrap();
    let m = evaluate(&spec, &weights, &holdout, CpuBackend::default());
    let f1 = m.binary().unwrap().f1;
    assert!(
        f1 >= 0.93,
        "merged model F1 {f1} on the held-back rows: {m:?}"
    );

    // Every plant evaluated and accepted version 3 (persisted in its state dir).
    sb.wait_for("wdbc", Duration::from_secs(60), |_| {
        files.iter().all(|f| {
            std::fs::read_to_string(f.state_dir.join("state.json"))
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .is_some_and(|v| v["accepted"]["wdbc"] == 3)
        })
    })
    .await;
    for f in &files {
        let acks = std::fs::read_to_string(f.state_dir.join("acks.log")).unwrap();
        assert_eq!(acks.lines().count(), 3, "{}: {acks}", f.name);
    }

    // The database lists three accepted updates per round.
    let store = coordinator::store::Store::open(&sb.data_dir.join(coordinator::state::DB)).unwrap();
    for round in 1..=3 {
        assert_eq!(
            store.updates("wdbc", round).unwrap().len(),
            3,
            "round {round}"
        );
    }
    drop(store);

    // The Prometheus endpoint counts what happened (over TLS, the CA pinned, as gRPC).
    let ca = sb.data_dir.join("tls/ca.pem");
    let (status, body) = tokio::task::spawn_blocking(move || {
        yosegi_tests::sandbox::https_get(metrics, "/metrics", &ca)
    })
    .await
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "yosegi_uploads_total{outcome=\"accepted\",reason=\"\"} 9",
        "yosegi_rounds{phase=\"published\"} 3",
        "yosegi_parties{state=\"enrolled\"} 3",
        "yosegi_tasks 1",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    // Every upload handled is timed once (a retried upload is answered ALREADY_ACCEPTED and
    // counted too).
    let uploads: u64 = body
        .lines()
        .filter(|l| l.starts_with("yosegi_uploads_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    let timed: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("yosegi_verification_seconds_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        uploads >= 9 && timed == uploads,
        "{uploads} uploads, {timed} timed"
    );
    let merges: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("yosegi_aggregation_seconds_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(merges >= 3, "{merges} merges timed");
    let ca = sb.data_dir.join("tls/ca.pem");
    let (status, _) =
        tokio::task::spawn_blocking(move || yosegi_tests::sandbox::https_get(metrics, "/", &ca))
            .await
            .unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // Plain HTTP gets no answer: beside a TLS server the endpoint speaks only TLS.
    let plain = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    })
    .await
    .unwrap();
    assert!(
        !plain.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&plain)
    );
    sb.stop().await;
}

/// A party pinned to the wrong coordinator key, and a party that already accepted a newer
/// version, both refuse the round's base model and say why; the round still finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parties_refuse_foreign_manifests_and_rollbacks() {
    let mut sb = Sandbox::start().await;
    let (spec, _, slices) = wdbc_split(3);
    let mut op = sb.operator().await;
    let names = ["plant-a", "plant-b", "plant-c"];
    let mut files = Vec::new();
    for (name, rows) in names.iter().zip(&slices) {
        let f = sb.party_files(name, &spec, rows);
        op.enroll(
            name,
            &shared_model::keys::read_public(&f.public_key).unwrap(),
        )
        .await
        .unwrap();
        files.push(f);
    }
    // plant-b pins a key that is not the coordinator's
    let foreign = sb.dir.path().join("foreign.pub.pem");
    shared_model::keys::write_public(
        &foreign,
        &shared_model::keys::generate().unwrap().verifying_key(),
    )
    .unwrap();
    // plant-c already accepted version 7 of this task
    std::fs::create_dir_all(&files[2].state_dir).unwrap();
    std::fs::write(
        files[2].state_dir.join("state.json"),
        r#"{"format": 1, "accepted": {"wdbc": 7}}"#,
    )
    .unwrap();
    let pinned = sb.coordinator_pub();
    sb.start_party(&files[0], &pinned);
    sb.start_party(&files[1], &foreign);
    sb.start_party(&files[2], &pinned);

    // plant-b cannot verify anything, so it cannot report statistics problems either: the
    // statistics step does not need a manifest, so all three report sums.
    op.create_task("wdbc", &spec_text(), &[]).await.unwrap();
    op.start_round("wdbc", "fedavg", Default::default(), 1, 60_000, 1)
        .await
        .unwrap();
    let rounds = sb
        .wait_for("wdbc", Duration::from_secs(120), |rs| {
            rs.first().is_some_and(|r| r.is_final())
        })
        .await;
    let r = &rounds[0];
    assert_eq!(r.phase, "published", "{r:?}");
    let state = |name: &str| r.parties.iter().find(|p| p.party == name).unwrap().clone();
    assert_eq!(state("plant-a").state, "accepted");
    let b = state("plant-b");
    assert_eq!(b.state, "declined");
    assert!(
        b.reason
            .contains("manifest signature does not verify with the pinned coordinator key"),
        "{b:?}"
    );
    let c = state("plant-c");
    assert_eq!(c.state, "declined");
    assert!(
        c.reason.contains(
            "refusing model version 0 of task wdbc: version 7 was already accepted (rollback)"
        ),
        "{c:?}"
    );
    sb.stop().await;
}

/// A party that reports statistics and then goes silent: the round fails at its deadline with
/// a reason naming it, and its late upload is refused as late.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_party_fails_the_quorum_with_a_readable_reason() {
    use party_client::grpc::{PartyClient, Work};
    use shared_model::stats::FeatureSums;

    let mut sb = Sandbox::start().await;
    let (spec, _, slices) = wdbc_split(2);
    let mut op = sb.operator().await;
    let fa = sb.party_files("plant-a", &spec, &slices[0]);
    let fb = sb.party_files("plant-b", &spec, &slices[1]);
    for f in [&fa, &fb] {
        op.enroll(
            &f.name,
            &shared_model::keys::read_public(&f.public_key).unwrap(),
        )
        .await
        .unwrap();
    }
    op.create_task("wdbc", &spec_text(), &[]).await.unwrap();
    let kb = shared_model::keys::read_private(&fb.key).unwrap();
    let mut b = PartyClient::connect_with(&sb.url, &sb.client_tls(), "plant-b", kb.clone())
        .await
        .unwrap();
    let stats = b.next_assignment(5_000).await.unwrap().unwrap();
    assert_eq!(stats.work, Work::Stats);
    b.submit_sums(&stats.id, &FeatureSums::of_rows(&slices[1].features, 30))
        .await
        .unwrap();
    let pinned = sb.coordinator_pub();
    sb.start_party(&fa, &pinned);
    // plant-a trains WDBC in well under a second; 8 s leaves it room on a loaded machine, so the
    // exact reason below names only the silent plant.
    op.start_round("wdbc", "fedavg", Default::default(), 2, 8_000, 1)
        .await
        .unwrap();
    let rounds = sb
        .wait_for("wdbc", Duration::from_secs(60), |rs| {
            rs.first().is_some_and(|r| r.is_final())
        })
        .await;
    let r = &rounds[0];
    assert_eq!(r.phase, "failed", "{r:?}");
    assert_eq!(
        r.failure,
        "quorum not met: 1 of 2 required updates accepted (plant-b: no answer by the deadline)"
    );
    let late = r.parties.iter().find(|p| p.party == "plant-b").unwrap();
    assert_eq!(late.state, "late");
    // plant-b wakes up and uploads anyway
    let (signed, bytes) = b.download("wdbc", 0, spec.max_blob_bytes()).await.unwrap();
    let base = signed.verify(&sb.coordinator_key, i64::MAX / 2).err();
    assert!(base.is_some(), "a manifest far in the future is expired");
    let m = signed
        .verify(&sb.coordinator_key, yosegi_tests::now_ms())
        .unwrap();
    let env = shared_model::update::SignedUpdate::for_blob(
        shared_model::ids::TaskId::new("wdbc").unwrap(),
        spec.id(),
        shared_model::ids::RoundNo(1),
        shared_model::ids::StepNo(0),
        m.blob_sha256,
        shared_model::ids::PartyId::new("plant-b").unwrap(),
        &bytes,
        10,
        &kb,
    );
    let e = b
        .upload("wdbc/train/1", &env, bytes, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("late: round 1 of wdbc is closed (failed)"),
        "{e}"
    );
    sb.stop().await;
}
