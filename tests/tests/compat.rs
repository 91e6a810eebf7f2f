//! Version skew (docs/COMPATIBILITY.md): what the previous release recorded — its clients'
//! messages byte for byte, its coordinator's answers, its data dir and its plants' state dirs
//! (`tests/fixtures/release-*`, written by `record-release`) — replayed against this release's
//! coordinator and daemon; and a caller of a protocol this coordinator does not serve refused
//! with both versions named.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coordinator::grpc::record::{self, WireCall};
use prost::Message as _;
use shared_model::manifest::SignedManifest;
use shared_model::{SigningKey, VerifyingKey, keys};
use yosegi_proto::v1 as pb;
use yosegi_tests::raw::RawClient;
use yosegi_tests::sandbox::Sandbox;
use yosegi_tests::server::ServerProcess;
use yosegi_tests::{Procs, run_ok};

/// The previous release's fixtures.
const PREVIOUS: &str = "release-0.1.0";

fn fixture(release: &str) -> PathBuf {
    yosegi_tests::root().join("tests/fixtures").join(release)
}

/// A copy of a release's fixtures in a temp dir, private keys made 0600 again (git keeps no
/// modes, and keys readable by others are refused).
fn unpacked(release: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(release), dir.path());
    dir
}

fn calls(release: &str) -> Vec<WireCall> {
    record::read(&fixture(release).join("wire.jsonl")).expect("the recording reads")
}

fn plant_keys(fixtures: &Path) -> HashMap<String, SigningKey> {
    let plants = fixtures.join("plants");
    std::fs::read_dir(&plants)
        .expect("plants dir")
        .map(|e| {
            let dir = e.expect("entry").path();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let key = keys::read_private(&dir.join("party.key.pem")).expect("plant key");
            (name, key)
        })
        .collect()
}

fn service(c: &WireCall) -> &str {
    c.method.rsplit('/').nth(1).unwrap_or_default()
}

fn name(c: &WireCall) -> &str {
    c.method.rsplit('/').next().unwrap_or_default()
}

/// Which party wrote the recorded call.
fn caller(c: &WireCall) -> &str {
    c.meta("x-yosegi-caller")
        .expect("every recorded call names its caller")
}

/// An assignment as it compares across runs: everything but the deadline.
fn assignment(bytes: &[u8]) -> Option<pb::Assignment> {
    let mut a = pb::NextAssignmentResponse::decode(bytes)
        .expect("an old NextAssignmentResponse decodes")
        .assignment?;
    a.deadline_unix_ms = 0;
    Some(a)
}

/// A download as it compares across runs: the manifest's fields but its times and signature
/// (another coordinator key signed it), and the blob.
fn download(messages: &[Vec<u8>]) -> (serde_json::Value, Vec<u8>) {
    let mut manifest = serde_json::Value::Null;
    let mut blob = Vec::new();
    for m in messages {
        match pb::DownloadModelResponse::decode(m.as_slice())
            .expect("a download message decodes")
            .part
        {
            Some(pb::download_model_response::Part::Manifest(s)) => {
                manifest = serde_json::from_slice(&s.canonical).expect("manifest JSON");
                let o = manifest.as_object_mut().expect("an object");
                o.remove("created_unix_ms");
                o.remove("expires_unix_ms");
            }
            Some(pb::download_model_response::Part::Chunk(c)) => blob.extend_from_slice(&c.data),
            None => panic!("an empty download message"),
        }
    }
    (manifest, blob)
}

/// Every recorded call's proof still verifies under this release's check, at the time it was
/// made: the call proof format did not change.
fn check_recorded_proofs(calls: &[WireCall], keys: &HashMap<String, VerifyingKey>) {
    for c in calls {
        let who = caller(c);
        let key = keys.get(who).unwrap_or_else(|| panic!("no key for {who}"));
        let first = c.request_bytes().into_iter().next().unwrap_or_default();
        let mut nonce = [0u8; 16];
        hex::decode_to_slice(c.meta("x-yosegi-nonce").expect("nonce"), &mut nonce)
            .expect("hex nonce");
        let timestamp_ms: i64 = c.meta("x-yosegi-timestamp").unwrap().parse().unwrap();
        let sig: [u8; 64] = hex::decode(c.meta("x-yosegi-signature-bin").unwrap())
            .unwrap()
            .try_into()
            .expect("64 bytes");
        let proof = shared_model::auth::CallProof {
            method: c.method.clone(),
            caller: who.to_string(),
            timestamp_ms,
            nonce,
            body: shared_model::auth::body_sha256(&first),
        };
        proof
            .verify(
                &ed25519_dalek::Signature::from_bytes(&sig),
                key,
                timestamp_ms,
                1,
            )
            .unwrap_or_else(|e| panic!("call {} ({}): recorded proof: {e}", c.seq, c.method));
    }
}

/// The previous release's operator CLI and daemons, replayed byte for byte against this
/// release's coordinator: every call is accepted with the answer that release got — the same
/// enrolment fingerprints, spec id, round number, assignments, upload receipts and models, down
/// to the merged blob — and the round publishes with all three updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_previous_release_s_calls_replayed_byte_for_byte_publish_the_same_model() {
    let calls = calls(PREVIOUS);
    let fixtures = unpacked(PREVIOUS);
    let plants = plant_keys(fixtures.path());
    let recorded_operator =
        keys::read_private(&fixtures.path().join("coordinator-data/operator.key.pem"))
            .expect("operator key");
    let mut verifying: HashMap<String, VerifyingKey> = plants
        .iter()
        .map(|(n, k)| (n.clone(), k.verifying_key()))
        .collect();
    verifying.insert("operator".into(), recorded_operator.verifying_key());
    check_recorded_proofs(&calls, &verifying);

    let sb = Sandbox::start().await;
    let mut raw = RawClient::connect(&sb.url, &sb.client_tls()).await;
    // The previous release's metadata, minus its proof (each replay is signed anew).
    let extra = |c: &WireCall| -> Vec<(String, String)> {
        c.metadata
            .iter()
            .filter(|(k, _)| {
                ![
                    "x-yosegi-proof",
                    "x-yosegi-caller",
                    "x-yosegi-timestamp",
                    "x-yosegi-nonce",
                    "x-yosegi-signature-bin",
                ]
                .contains(&k.as_str())
            })
            .cloned()
            .collect()
    };
    // Per plant: its last poll that brought work, not yet replayed.
    let mut pending: HashMap<String, &WireCall> = HashMap::new();
    let mut replayed = HashMap::<&str, usize>::new();
    for c in &calls {
        let who = caller(c);
        let (key, method) = match service(c) {
            "yosegi.v1.OperatorService" => {
                // Status polls answer by timing; the changes must answer the same.
                if ["RoundStatus", "ListParties", "ListTasks"].contains(&name(c)) {
                    continue;
                }
                (sb.operator_key.clone(), c.method.as_str())
            }
            "yosegi.v1.PartyService" => {
                if name(c) == "NextAssignment" {
                    if let Some(bytes) = c.response_bytes().first()
                        && assignment(bytes).is_some()
                    {
                        pending.insert(who.to_string(), c);
                    }
                    continue;
                }
                if let Some(poll) = pending.remove(who) {
                    let want = assignment(&poll.response_bytes()[0]);
                    let until = tokio::time::Instant::now() + Duration::from_secs(120);
                    loop {
                        let got = raw
                            .call(
                                &poll.method,
                                who,
                                &plants[who],
                                poll.request_bytes(),
                                &extra(poll),
                            )
                            .await
                            .unwrap_or_else(|s| panic!("{who}: poll refused: {s:?}"));
                        let got = got.messages.first().and_then(|b| assignment(b));
                        if got.is_some() {
                            assert_eq!(got, want, "{who}: the assignment differs");
                            break;
                        }
                        assert!(
                            tokio::time::Instant::now() < until,
                            "{who} was never offered {want:?}"
                        );
                    }
                }
                (plants[who].clone(), c.method.as_str())
            }
            other => panic!("call {} to an unknown service {other}", c.seq),
        };
        let caller_name = if service(c) == "yosegi.v1.OperatorService" {
            "operator"
        } else {
            who
        };
        let got = raw
            .call(method, caller_name, &key, c.request_bytes(), &extra(c))
            .await;
        *replayed.entry(name(c)).or_default() += 1;
        match got {
            Err(s) => assert_eq!(
                s.code() as i32,
                c.status,
                "call {} {} by {who}: {s:?} (recorded: {} {})",
                c.seq,
                c.method,
                c.status,
                c.message
            ),
            Ok(reply) => {
                assert_eq!(
                    c.status, 0,
                    "call {} {}: accepted now, refused then",
                    c.seq, c.method
                );
                if name(c) == "DownloadModel" || name(c) == "PullModel" {
                    assert_eq!(
                        download(&reply.messages),
                        download(&c.response_bytes()),
                        "call {} {}: another model",
                        c.seq,
                        c.method
                    );
                } else {
                    assert_eq!(
                        reply.messages,
                        c.response_bytes(),
                        "call {} {} by {who}: another answer",
                        c.seq,
                        c.method
                    );
                }
            }
        }
    }
    for (method, at_least) in [
        ("EnrollParty", 3),
        ("CreateTask", 1),
        ("StartRound", 1),
        ("SubmitFeatureSums", 3),
        ("UploadUpdate", 3),
        ("DownloadModel", 6),
        ("ReportEvaluation", 3),
    ] {
        let n = replayed.get(method).copied().unwrap_or(0);
        assert!(n >= at_least, "{method} replayed {n} times: {replayed:?}");
    }
    let rounds = sb
        .wait_for("wdbc", Duration::from_secs(30), |rs| {
            rs.len() == 1 && rs[0].phase == "published" && rs[0].evaluated_by == 3
        })
        .await;
    assert_eq!(
        rounds[0]
            .parties
            .iter()
            .filter(|p| p.state == "accepted")
            .count(),
        3,
        "{rounds:?}"
    );
    sb.stop().await;
}

/// The previous release's answers as this release's daemon reads them: every recorded
/// assignment converts, and every recorded model's manifest verifies with the coordinator key
/// the plants pinned and names the blob that came with it.
#[test]
fn this_daemon_reads_the_previous_release_s_answers() {
    let calls = calls(PREVIOUS);
    let pinned = keys::read_public(&fixture(PREVIOUS).join("coordinator-data/coordinator.pub.pem"))
        .expect("coordinator key");
    let mut models = 0;
    let mut work = 0;
    for c in calls.iter().filter(|c| c.status == 0) {
        match name(c) {
            "NextAssignment" => {
                let r = pb::NextAssignmentResponse::decode(c.response_bytes()[0].as_slice())
                    .expect("decodes");
                if let Some(a) = r.assignment {
                    party_client::grpc::assignment_of(a).expect("the daemon takes the assignment");
                    work += 1;
                }
            }
            "DownloadModel" => {
                let mut signed = None;
                let mut blob = Vec::new();
                for m in c.response_bytes() {
                    match pb::DownloadModelResponse::decode(m.as_slice())
                        .unwrap()
                        .part
                    {
                        Some(pb::download_model_response::Part::Manifest(s)) => {
                            signed = Some(SignedManifest {
                                bytes: s.canonical,
                                signature: ed25519_dalek::Signature::from_bytes(
                                    &s.signature.try_into().expect("64 bytes"),
                                ),
                            });
                        }
                        Some(pb::download_model_response::Part::Chunk(ch)) => {
                            blob.extend_from_slice(&ch.data);
                        }
                        None => {}
                    }
                }
                let m = signed
                    .expect("a manifest first")
                    .verify(&pinned, yosegi_tests::now_ms())
                    .expect("the old manifest verifies now");
                m.check_blob(&blob).expect("the blob is the one it names");
                models += 1;
            }
            _ => {}
        }
    }
    assert!(
        work >= 9 && models >= 6,
        "{work} assignments, {models} models"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
            if e.file_name().to_string_lossy().ends_with(".key.pem") {
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
    }
}

/// Upgrade in place: this release's coordinator opens the previous release's data dir (its
/// round, its governance log still verifying) and this release's daemons run on the plants'
/// old state dirs; together they run the next round, which publishes version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_s_data_dir_and_plant_state_upgrade_in_place() {
    let dir = unpacked(PREVIOUS);
    let data_dir = dir.path().join("coordinator-data");
    let mut server = ServerProcess::existing(dir.path(), &data_dir);
    server.start();
    let mut op = server.operator().await;
    let before = op.status("wdbc").await.expect("the old task's status");
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(
        before[0].phase == "published" && before[0].version == 1,
        "{before:?}"
    );

    let mut procs = Procs::default();
    let pinned = data_dir.join("coordinator.pub.pem");
    let ca = data_dir.join("tls/ca.pem");
    for plant in ["plant-a", "plant-b", "plant-c"] {
        let home = dir.path().join("plants").join(plant);
        procs.daemon(
            &server.url,
            plant,
            &home,
            &pinned,
            &ca,
            &home.join("data.csv"),
        );
    }
    let round = op
        .start_round("wdbc", "fedavg", Default::default(), 3, 120_000, 1)
        .await
        .expect("starts the next round");
    assert_eq!(round, 2);
    let until = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let rs = op.status("wdbc").await.unwrap();
        if rs.len() == 2 && rs[1].phase == "published" && rs[1].evaluated_by == 3 {
            assert_eq!(rs[1].version, 2, "{rs:?}");
            assert_eq!(
                rs[1]
                    .parties
                    .iter()
                    .filter(|p| p.state == "accepted")
                    .count(),
                3,
                "{rs:?}"
            );
            break;
        }
        procs.assert_running();
        assert!(
            tokio::time::Instant::now() < until,
            "round 2: {rs:#?}\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(op);
    procs.terminate();
    server.terminate();
    let verified = run_ok(
        "coordinator",
        &["audit", "verify", "--data-dir", data_dir.to_str().unwrap()],
    );
    assert!(verified.starts_with("audit log OK"), "{verified}");
}

/// A caller announcing a protocol this coordinator does not serve is refused at its first call
/// — before its proof is looked at — with both versions and the upgrade named, the refusal
/// carrying the coordinator's own protocol; a caller without the header is the first release
/// and is served; the operator sees both (party list, metrics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_of_another_protocol_is_refused_naming_both_versions() {
    use yosegi_proto::version::{OLDEST_CLIENT, PROTOCOL, RELEASE};
    let (sb, metrics) = Sandbox::start_with_metrics().await;
    let mut op = sb.operator().await;
    let key = keys::generate().unwrap();
    op.enroll("plant-a", &key.verifying_key()).await.unwrap();
    let mut raw = RawClient::connect(&sb.url, &sb.client_tls()).await;
    let poll = pb::NextAssignmentRequest { wait_ms: 0 }.encode_to_vec();
    let method = "/yosegi.v1.PartyService/NextAssignment";
    let newer = [
        ("x-yosegi-protocol".to_string(), "3".to_string()),
        ("x-yosegi-release".to_string(), "0.3.0".to_string()),
    ];
    let refused = raw
        .call(method, "plant-a", &key, vec![poll.clone()], &newer)
        .await
        .expect_err("a newer protocol is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    for part in [
        "protocol skew: caller plant-a speaks Yosegi protocol 3 (release 0.3.0)",
        &format!("this coordinator (release {RELEASE}, protocols {OLDEST_CLIENT} to {PROTOCOL})"),
        "upgrade the coordinator to release 0.3.0 or later",
    ] {
        assert!(
            refused.message().contains(part),
            "{:?} lacks {part:?}",
            refused.message()
        );
    }
    assert_eq!(
        refused
            .metadata()
            .get("x-yosegi-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(PROTOCOL.to_string().as_str()),
        "the refusal names the coordinator's protocol"
    );
    // Refused before the proof is read: a garbage signature gets the same answer.
    let unsigned = raw
        .call(
            method,
            "plant-a",
            &keys::generate().unwrap(),
            vec![poll.clone()],
            &newer,
        )
        .await
        .expect_err("refused");
    assert_eq!(
        unsigned.code(),
        tonic::Code::FailedPrecondition,
        "{unsigned:?}"
    );
    // A name that is no valid name is not echoed.
    let odd = raw
        .call(method, "a b=c", &key, vec![poll.clone()], &newer)
        .await
        .expect_err("refused");
    assert!(
        odd.message().contains("caller ? speaks"),
        "{:?}",
        odd.message()
    );
    let bad = raw
        .call(
            method,
            "plant-a",
            &key,
            vec![poll.clone()],
            &[("x-yosegi-protocol".to_string(), "two".to_string())],
        )
        .await
        .expect_err("not a number");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // No header: the first release's daemon, served; its answer names this coordinator.
    let served = raw
        .call(method, "plant-a", &key, vec![poll], &[])
        .await
        .expect("a protocol-1 caller is served");
    assert_eq!(
        served
            .metadata
            .get("x-yosegi-release")
            .and_then(|v| v.to_str().ok()),
        Some(RELEASE)
    );
    let parties = op.parties().await.unwrap();
    let a = parties.iter().find(|p| p.name == "plant-a").unwrap();
    assert_eq!((a.protocol, a.release.as_str()), (1, "0.1.0"), "{a:?}");
    let (_, text) = yosegi_tests::sandbox::https_get(metrics, "/metrics", &sb.ca());
    for line in [
        "yosegi_protocol_refusals_total{protocol=\"3\"} 3".to_string(),
        "yosegi_clients{protocol=\"1\",release=\"0.1.0\"} 1".to_string(),
        format!("yosegi_clients{{protocol=\"{PROTOCOL}\",release=\"{RELEASE}\"}} 1"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    drop(op);
    sb.stop().await;
}
