//! The coordinator's signing key and server certificate rotated between rounds, with real
//! daemons that pinned the old key: no plant is re-enrolled, each follows the signed rotation,
//! pins the new key and takes part in the next round.

use std::path::Path;
use std::time::{Duration, Instant};

use yosegi_tests::server::ServerProcess;
use yosegi_tests::{Procs, data, run, run_ok};

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Waits until round `round` of `task` is published and evaluated by `n` plants.
async fn published_and_evaluated(server: &ServerProcess, task: &str, round: u64, n: u32) {
    let mut op = server.operator().await;
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let rounds = op.status(task).await.unwrap();
        if let Some(r) = rounds.iter().find(|r| r.round == round) {
            assert!(r.phase != "failed", "{r:?}");
            if r.phase == "published" && r.evaluated_by == n {
                return;
            }
        }
        assert!(Instant::now() < until, "round {round} not done: {rounds:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plants_follow_a_rotated_coordinator_key_and_a_renewed_certificate_without_re_enrolling() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut server = ServerProcess::init(&d.join("coordinator"));
    std::fs::write(&server.config, "tick_ms = 50\n").unwrap();
    server.start();
    let split = d.join("split");
    let (spec, csv) = (s(&data("wdbc.toml")), s(&data("wdbc.csv")));
    run_ok(
        "coordinator",
        &[
            "data",
            "split",
            "--data",
            &csv,
            "--spec",
            &spec,
            "--parties",
            "2",
            "--out",
            &s(&split),
        ],
    );
    let mut op = server.operator().await;
    // Each plant keeps its own copy of the key it pinned at enrolment.
    let old_pub = std::fs::read(server.coordinator_pub()).unwrap();
    let mut procs = Procs::default();
    for (i, p) in ["plant-a", "plant-b"].iter().enumerate() {
        let pdir = d.join(p);
        run_ok("party-client", &["keygen", "--out", &s(&pdir)]);
        let key = shared_model::keys::read_public(&pdir.join("party.pub.pem")).unwrap();
        op.enroll(p, &key).await.unwrap();
        std::fs::write(pdir.join("coordinator.pub.pem"), &old_pub).unwrap();
        procs.daemon(
            &server.url,
            p,
            &pdir,
            &pdir.join("coordinator.pub.pem"),
            &server.data_dir.join("tls/ca.pem"),
            &split.join(format!("party-{}.csv", i + 1)),
        );
    }
    let text = std::fs::read_to_string(data("wdbc.toml")).unwrap();
    op.create_task("wdbc", &text, &[]).await.unwrap();
    op.start_round("wdbc", "fedavg", Default::default(), 2, 120_000, 1)
        .await
        .unwrap();
    published_and_evaluated(&server, "wdbc", 1, 2).await;

    // Stopped, the coordinator gets a new signing key and a new server certificate.
    server.terminate();
    let dd = s(&server.data_dir);
    let out = run_ok("coordinator", &["key", "rotate", "--data-dir", &dd]);
    assert!(
        out.contains("rotation 1") && out.contains("manifests signed again"),
        "{out}"
    );
    let new_pub = shared_model::keys::read_public(&server.coordinator_pub()).unwrap();
    let old_key = shared_model::keys::read_public(&d.join("plant-a/coordinator.pub.pem")).unwrap();
    assert_ne!(new_pub, old_key);
    let old_cert = std::fs::read(server.data_dir.join("tls/server.pem")).unwrap();
    run_ok("coordinator", &["tls", "renew", "--data-dir", &dd]);
    assert_ne!(
        old_cert,
        std::fs::read(server.data_dir.join("tls/server.pem")).unwrap()
    );
    server.start();

    // The next round: both plants download a manifest signed by the new key, follow the
    // rotation from the key they pinned, and take part; nobody was re-enrolled.
    let mut op = server.operator().await;
    op.start_round("wdbc", "fedavg", Default::default(), 2, 120_000, 1)
        .await
        .unwrap();
    published_and_evaluated(&server, "wdbc", 2, 2).await;
    for p in ["plant-a", "plant-b"] {
        let state = std::fs::read_to_string(d.join(p).join("state/state.json")).unwrap();
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        assert_eq!(
            state["coordinator_key"],
            hex(&new_pub.to_bytes()),
            "{p} pinned the new key"
        );
        let log = std::fs::read_to_string(d.join(format!("{p}.log"))).unwrap();
        assert!(
            log.contains("the coordinator rotated its signing key"),
            "{log}"
        );
    }
    procs.assert_running();
    // Every manifest, the old ones too, is now signed by the new key and refused by the old.
    let pulled = d.join("v1.safetensors");
    let mut pull = vec!["model", "pull", "--task", "wdbc", "--version", "1", "--out"];
    let (pulled_s, new_s, ca) = (
        s(&pulled),
        s(&server.coordinator_pub()),
        s(&server.data_dir.join("tls/ca.pem")),
    );
    let op_key = s(&server.data_dir.join("operator.key.pem"));
    pull.extend([pulled_s.as_str(), "--coordinator-key", new_s.as_str()]);
    pull.extend([
        "--server",
        &server.url,
        "--ca",
        &ca,
        "--operator-key",
        &op_key,
    ]);
    assert!(run_ok("coordinator", &pull).contains("signature verified"));
    let manifest = s(&d.join("v1.safetensors.manifest.json"));
    let old_s = s(&d.join("plant-a/coordinator.pub.pem"));
    let check = |key: &str| {
        run(
            "party-client",
            &[
                "evaluate",
                "--spec",
                &spec,
                "--model",
                &pulled_s,
                "--manifest",
                &manifest,
                "--coordinator-key",
                key,
                "--data",
                &s(&split.join("holdout.csv")),
            ],
        )
    };
    assert!(check(&new_s).status.success());
    let refused = check(&old_s);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("signature"));
    // The rotation is in the governance log, whose chain still verifies.
    let shown = run_ok(
        "coordinator",
        &["audit", "show", "--data-dir", &dd, "--json"],
    );
    assert!(shown.contains("coordinator_key_rotated"), "{shown}");
    run_ok("coordinator", &["audit", "verify", "--data-dir", &dd]);
    procs.terminate();
    server.terminate();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
