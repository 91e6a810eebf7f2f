//! Faults other than crashes (issue #7), each against a coordinator process on the same data
//! dir: a restart in the middle of a round (the deadline holds, the plants' daemons reconnect
//! by themselves), a party that never answers and one that answers after the deadline, clock
//! skew within and beyond the bound, a full disk (a file-size limit) while a blob is stored,
//! a party killed in the middle of its upload, and floods and broken streams (`floods`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod floods;
mod repair;
mod uploads;

use coordinator::grpc::client::OperatorClient;
use coordinator::swarm::{RandomUpdate, random_update, spec_text};
use coordinator::views::RoundView;
use party_client::grpc::{Ack, Assignment, PartyClient, Work, digest_of, sign, upload_start};
use shared_model::SigningKey;
use shared_model::data::load_csv;
use shared_model::ids::{PartyId, TaskId};
use shared_model::model::max_model_blob_bytes;
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use shared_model::update::SignedUpdate;
use yosegi_proto::v1 as pb;
use yosegi_proto::v1::party_service_client::PartyServiceClient;
use yosegi_tests::server::ServerProcess;
use yosegi_tests::{Procs, data, now_ms, run_ok};

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// A simulated party's connection (the server is up).
async fn client(server: &ServerProcess, name: &str, key: &SigningKey) -> PartyClient {
    PartyClient::connect_with(&server.url, &server.tls(), name, key.clone())
        .await
        .expect("party connects")
}

/// Polls until an assignment matching `want` arrives (60 s at most); declines evaluations.
async fn next_work(c: &mut PartyClient, want: impl Fn(&Assignment) -> bool) -> Assignment {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Some(a) = c.next_assignment(1_000).await.expect("polls") {
            if want(&a) {
                return a;
            }
            if matches!(a.work, Work::Evaluate { .. }) {
                c.decline(&a.id, "simulated party").await.expect("declines");
            }
        }
    }
    panic!("no matching assignment within 60 s");
}

/// The statistics step of a simulated party: sums of `rows` feature rows of `width`.
async fn report_sums(c: &mut PartyClient, rows: &[f32], width: usize) {
    let a = next_work(c, |a| a.work == Work::Stats).await;
    c.submit_sums(&a.id, &FeatureSums::of_rows(rows, width))
        .await
        .expect("sums accepted");
}

/// A signed random update answering a training assignment, built on its downloaded base.
async fn update_for(
    c: &mut PartyClient,
    a: &Assignment,
    spec: &ModelSpec,
    name: &str,
    key: &SigningKey,
) -> (Vec<u8>, SignedUpdate) {
    let Work::Train { base_version, .. } = a.work else {
        panic!("not a training assignment: {a:?}")
    };
    let (_, base) = c
        .download(&a.task, base_version, max_model_blob_bytes(spec))
        .await
        .expect("downloads the base");
    random_update(&RandomUpdate {
        spec,
        base: &base,
        base_version,
        task: TaskId::new(&a.task).unwrap(),
        round: a.round,
        step: a.step,
        party: PartyId::new(name).unwrap(),
        samples: 20,
        // Distinct per party and round (identical blobs would be stored once).
        seed: a.round
            ^ name
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b))
                << 8,
        key,
    })
    .expect("builds an update")
}

/// Two simulated sites, `site-0` and `site-1`, enrolled in a FedAvg task over ~1M parameters
/// (~4 MB updates) that needs both, past its statistics step: the operator, the spec, and each
/// site's key and connection.
async fn two_sites(
    server: &ServerProcess,
    task: &str,
) -> (OperatorClient, ModelSpec, [(SigningKey, PartyClient); 2]) {
    let mut op = server.operator().await;
    let keys = [
        shared_model::keys::generate().unwrap(),
        shared_model::keys::generate().unwrap(),
    ];
    for (i, k) in keys.iter().enumerate() {
        op.enroll(&format!("site-{i}"), &k.verifying_key())
            .await
            .unwrap();
    }
    let text = spec_text(task, 1_000_000);
    let spec = ModelSpec::parse(&text, task).unwrap();
    op.create_task(task, &text, &[]).await.unwrap();
    op.start_round(task, "fedavg", HashMap::new(), 2, 120_000, 1)
        .await
        .unwrap();
    let rows: Vec<f32> = (0..16 * 8).map(|i| (i % 7) as f32).collect();
    let [k0, k1] = keys;
    let mut c0 = client(server, "site-0", &k0).await;
    let mut c1 = client(server, "site-1", &k1).await;
    report_sums(&mut c0, &rows, 16).await;
    report_sums(&mut c1, &rows, 16).await;
    (op, spec, [(k0, c0), (k1, c1)])
}

/// One simulated site, `site-0`, enrolled in a FedAvg task over ~300k parameters that needs
/// only it, past its statistics step, with the first round's training assignment in hand.
async fn one_site(
    server: &ServerProcess,
    task: &str,
) -> (
    OperatorClient,
    ModelSpec,
    SigningKey,
    PartyClient,
    Assignment,
) {
    let mut op = server.operator().await;
    let key = shared_model::keys::generate().unwrap();
    op.enroll("site-0", &key.verifying_key()).await.unwrap();
    let text = spec_text(task, 300_000);
    let spec = ModelSpec::parse(&text, task).unwrap();
    op.create_task(task, &text, &[]).await.unwrap();
    op.start_round(task, "fedavg", HashMap::new(), 1, 120_000, 1)
        .await
        .unwrap();
    let mut c = client(server, "site-0", &key).await;
    let rows: Vec<f32> = (0..16 * 8).map(|i| (i % 3) as f32).collect();
    report_sums(&mut c, &rows, 16).await;
    let a = next_work(&mut c, |a| matches!(a.work, Work::Train { .. })).await;
    (op, spec, key, c, a)
}

/// A chunk message of an upload stream.
fn chunk(offset: usize, data: &[u8]) -> pb::UploadUpdateRequest {
    pb::UploadUpdateRequest {
        part: Some(pb::upload_update_request::Part::Chunk(pb::BlobChunk {
            offset: offset as u64,
            data: data.to_vec(),
        })),
    }
}

/// The upload call's answer, once the coordinator gives one.
type UploadCall =
    tokio::task::JoinHandle<Result<tonic::Response<pb::UploadUpdateResponse>, tonic::Status>>;

/// Opens a signed upload stream of `site-0` answering `assignment` on a connection of its own
/// and sends its `UploadStart`; the chunks are the caller's to send (or not) on the sender.
async fn open_upload(
    server: &ServerProcess,
    key: &SigningKey,
    assignment: &str,
    env: &SignedUpdate,
) -> (
    tokio::sync::mpsc::Sender<pb::UploadUpdateRequest>,
    UploadCall,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadUpdateRequest>(8);
    let start = upload_start(assignment, env, None, None);
    let body = digest_of(&start);
    tx.send(start).await.unwrap();
    let channel = yosegi_proto::transport::channel(&server.url, &server.tls())
        .await
        .unwrap();
    let key = key.clone();
    let call = tokio::spawn(async move {
        let req = sign(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            "UploadUpdate",
            "site-0",
            &key,
            now_ms(),
            body,
        );
        PartyServiceClient::new(channel).upload_update(req).await
    });
    (tx, call)
}

/// Flips one byte of the stored blob of `version` of `task`.
fn damage(server: &ServerProcess, task: &str, version: u64) {
    let sha: String = server
        .db()
        .query_row(
            "SELECT blob_sha256 FROM models WHERE task = ?1 AND version = ?2",
            rusqlite::params![task, version as i64],
            |r| r.get(0),
        )
        .unwrap();
    let path = server.data_dir.join("blobs").join(sha);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

async fn wait_rounds(
    server: &ServerProcess,
    task: &str,
    timeout: Duration,
    done: impl Fn(&[RoundView]) -> bool,
) -> Vec<RoundView> {
    let mut op = server.operator().await;
    let until = Instant::now() + timeout;
    loop {
        let rounds = op.status(task).await.expect("status");
        if done(&rounds) {
            return rounds;
        }
        assert!(
            Instant::now() < until,
            "timed out after {timeout:?}: {rounds:#?}\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_of<'a>(r: &'a RoundView, party: &str) -> (&'a str, &'a str) {
    let p = r
        .parties
        .iter()
        .find(|p| p.party == party)
        .unwrap_or_else(|| panic!("{party} not in round {}: {r:#?}", r.round));
    (p.state.as_str(), p.reason.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_round_keeps_its_deadline_and_plants_reconnect_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut server = ServerProcess::init(d);
    server.start();
    let mut op = server.operator().await;
    let (spec_path, csv) = (data("wdbc.toml"), data("wdbc.csv"));
    let spec = ModelSpec::from_file(&spec_path).unwrap();
    let split = d.join("split");
    run_ok(
        "coordinator",
        &[
            "data",
            "split",
            "--data",
            &s(&csv),
            "--spec",
            &s(&spec_path),
            "--parties",
            "3",
            "--out",
            &s(&split),
        ],
    );
    // Three real plant daemons; plant-d reports its statistics and then never answers again;
    // plant-e takes its training assignment and uploads only after the deadline.
    let plants = ["plant-a", "plant-b", "plant-c"];
    for p in plants {
        run_ok("party-client", &["keygen", "--out", &s(&d.join(p))]);
        let key = shared_model::keys::read_public(&d.join(p).join("party.pub.pem")).unwrap();
        op.enroll(p, &key).await.unwrap();
    }
    let (kd, ke) = (
        shared_model::keys::generate().unwrap(),
        shared_model::keys::generate().unwrap(),
    );
    op.enroll("plant-d", &kd.verifying_key()).await.unwrap();
    op.enroll("plant-e", &ke.verifying_key()).await.unwrap();
    let text = std::fs::read_to_string(&spec_path).unwrap();
    op.create_task("wdbc", &text, &[]).await.unwrap();
    let mut procs = Procs::default();
    for (i, p) in plants.iter().enumerate() {
        procs.daemon(
            &server.url,
            p,
            &d.join(p),
            &server.coordinator_pub(),
            &server.data_dir.join("tls/ca.pem"),
            &split.join(format!("party-{}.csv", i + 1)),
        );
    }
    let rows = load_csv(&csv, &spec).unwrap();
    let some: Vec<usize> = (0..60).collect();
    let rows = rows.subset(&some);
    let mut cd = client(&server, "plant-d", &kd).await;
    let mut ce = client(&server, "plant-e", &ke).await;
    report_sums(&mut cd, &rows.features, rows.width).await;
    report_sums(&mut ce, &rows.features, rows.width).await;
    // Long enough that the daemons' uploads, a kill and a restart all land before it on a
    // loaded machine; the round then waits for it.
    let deadline_ms = 30_000;
    op.start_round("wdbc", "fedavg", HashMap::new(), 3, deadline_ms, 1)
        .await
        .unwrap();
    let late = next_work(&mut ce, |a| matches!(a.work, Work::Train { .. })).await;
    let (late_blob, late_env) = update_for(&mut ce, &late, &spec, "plant-e", &ke).await;

    // The daemons' updates are in; the round waits for d and e until its deadline.
    let rounds = wait_rounds(&server, "wdbc", Duration::from_secs(60), |r| {
        r.len() == 1
            && plants.iter().all(|p| {
                r[0].parties
                    .iter()
                    .any(|x| x.party == *p && x.state == "accepted")
            })
    })
    .await;
    let deadline = rounds[0].deadline_unix_ms;
    assert!(
        now_ms() + 5_000 < deadline,
        "the daemons took too long: the restart would not land before the deadline"
    );
    tokio::task::block_in_place(|| server.kill());
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::block_in_place(|| server.start());
    let mut op = server.operator().await;
    let after = op.status("wdbc").await.unwrap();
    assert_eq!(after[0].phase, "training", "{after:#?}");
    assert_eq!(after[0].deadline_unix_ms, deadline, "the deadline survives");
    for p in plants {
        assert_eq!(
            state_of(&after[0], p).0,
            "accepted",
            "acked before the crash"
        );
    }

    let rounds = wait_rounds(&server, "wdbc", Duration::from_secs(60), |r| {
        r[0].phase != "training"
    })
    .await;
    let r = &rounds[0];
    assert_eq!(r.phase, "published", "{r:#?}");
    assert!(
        r.published_unix_ms >= deadline,
        "closed at its deadline, not before: {} < {deadline}",
        r.published_unix_ms
    );
    assert_eq!(
        state_of(r, "plant-d"),
        ("late", "no answer by the deadline")
    );
    assert_eq!(state_of(r, "plant-e").0, "late");
    assert_eq!(r.version, 1);
    // plant-e answers now: refused as late, naming the round, and nothing changes.
    let e = ce
        .upload(&late.id, &late_env, late_blob, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("FailedPrecondition") && e.contains("late: round 1 of wdbc is closed"),
        "{e}"
    );
    let again = op.status("wdbc").await.unwrap();
    assert_eq!(again[0].version, 1);
    assert_eq!(state_of(&again[0], "plant-e").0, "late");

    // The daemons were never restarted: they reconnected by themselves and take part in the
    // next round, which closes as soon as all of them answered.
    procs.assert_running();
    op.revoke("plant-d").await.unwrap();
    op.revoke("plant-e").await.unwrap();
    op.start_round("wdbc", "fedavg", HashMap::new(), 3, 120_000, 1)
        .await
        .unwrap();
    let rounds = wait_rounds(&server, "wdbc", Duration::from_secs(90), |r| {
        r.len() == 2 && r[1].phase != "training" && r[1].phase != "queued"
    })
    .await;
    let r2 = &rounds[1];
    assert_eq!(r2.phase, "published", "{r2:#?}");
    assert!(r2.published_unix_ms < r2.deadline_unix_ms);
    for p in plants {
        assert_eq!(state_of(r2, p).0, "accepted");
    }
    procs.terminate();
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_inside_the_bound_is_accepted_and_beyond_it_refused_naming_the_skew() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    server.serve_args = vec!["--max-skew-secs".into(), "60".into()];
    server.start();
    let mut op = server.operator().await;
    let key = shared_model::keys::generate().unwrap();
    op.enroll("plant-a", &key.verifying_key()).await.unwrap();
    let channel = yosegi_proto::transport::channel(&server.url, &server.tls())
        .await
        .unwrap();
    let mut raw = PartyServiceClient::new(channel);
    let call = |offset_ms: i64| {
        let poll = pb::NextAssignmentRequest { wait_ms: 0 };
        sign(
            tonic::Request::new(poll),
            "NextAssignment",
            "plant-a",
            &key,
            now_ms() + offset_ms,
            digest_of(&poll),
        )
    };
    // 50 s either way: inside the 60 s bound.
    raw.next_assignment(call(50_000)).await.unwrap();
    raw.next_assignment(call(-50_000)).await.unwrap();
    // 90 s ahead, 2 minutes behind: refused, saying by how much and what is allowed.
    for (offset, direction) in [(90_000, "ahead of"), (-120_000, "behind")] {
        let e = raw.next_assignment(call(offset)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let m = e.message();
        let secs = (offset.abs() / 1000) as f64;
        let said: f64 = m
            .split("is stamped ")
            .nth(1)
            .and_then(|rest| rest.split(" s ").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no skew in {m}"));
        assert!((said - secs).abs() < 5.0, "{m}");
        assert!(
            m.contains(&format!(
                "s {direction} the coordinator's clock; at most 60 s either way is allowed"
            )) && m.contains("plant-a"),
            "{m}"
        );
    }
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_captured_before_a_crash_cannot_be_replayed_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    server.start();
    let mut op = server.operator().await;
    let key = shared_model::keys::generate().unwrap();
    op.enroll("plant-a", &key.verifying_key()).await.unwrap();
    let poll = pb::NextAssignmentRequest { wait_ms: 0 };
    let signed = |at: i64| {
        sign(
            tonic::Request::new(poll),
            "NextAssignment",
            "plant-a",
            &key,
            at,
            digest_of(&poll),
        )
    };
    let (url, tls) = (server.url.clone(), server.tls());
    let raw = || {
        let (url, tls) = (url.clone(), tls.clone());
        async move {
            let channel = yosegi_proto::transport::channel(&url, &tls).await.unwrap();
            PartyServiceClient::new(channel)
        }
    };
    let replay = |md: &tonic::metadata::MetadataMap| {
        let mut again = tonic::Request::new(poll);
        *again.metadata_mut() = md.clone();
        again
    };
    let first = signed(now_ms());
    let captured = first.metadata().clone();
    raw().await.next_assignment(first).await.unwrap();
    // SIGKILL: the nonces in memory are lost with the process.
    server.kill();
    server.start();
    let e = raw()
        .await
        .next_assignment(replay(&captured))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(
        e.message().contains("before this coordinator started")
            && e.message().contains("could be a replay"),
        "{}",
        e.message()
    );
    // Fresh calls go through; one captured now survives a graceful restart as a known nonce.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = signed(now_ms());
    let captured = second.metadata().clone();
    raw().await.next_assignment(second).await.unwrap();
    server.terminate();
    server.start();
    let e = raw()
        .await
        .next_assignment(replay(&captured))
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains("call replayed: nonce already used by plant-a"),
        "{}",
        e.message()
    );
    raw().await.next_assignment(signed(now_ms())).await.unwrap();
    server.terminate();
}
