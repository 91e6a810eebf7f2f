//! A hostile or broken party against a live coordinator: a tampered blob, a wrong round, NaN
//! weights, an unenrolled key, a replayed call and a revoked party are each refused with a
//! distinct, readable reason, and the round still finishes with the honest update.

use std::time::Duration;

use party_client::grpc::{Ack, PartyClient, Work, sign};
use shared_model::blob::{self, BlobMeta, BlobRole};
use shared_model::ids::{PartyId, RoundNo, StepNo, TaskId};
use shared_model::stats::FeatureSums;
use shared_model::train::{TrainOptions, train};
use shared_model::update::SignedUpdate;
use shared_model::weights::Weights;
use yosegi_proto::v1 as pb;
use yosegi_proto::v1::party_service_client::PartyServiceClient;
use yosegi_tests::now_ms;
use yosegi_tests::sandbox::{Sandbox, wdbc_split};

async fn next_train(c: &mut PartyClient) -> party_client::grpc::Assignment {
    for _ in 0..100 {
        if let Some(a) = c.next_assignment(1_000).await.unwrap()
            && matches!(a.work, Work::Train { .. })
        {
            return a;
        }
    }
    panic!("no training assignment arrived");
}

/// WDBC cut into one slice per name, each name enrolled with its key, task `wdbc` created, and a
/// party client per name (with its key) connected to the sandbox.
async fn wdbc_parties(
    sb: &Sandbox,
    names: &[&str],
) -> (
    shared_model::spec::ModelSpec,
    Vec<shared_model::data::Dataset>,
    coordinator::grpc::client::OperatorClient,
    Vec<(PartyClient, shared_model::SigningKey)>,
) {
    let (spec, _, slices) = wdbc_split(names.len());
    let mut op = sb.operator().await;
    let mut clients = Vec::new();
    for (name, rows) in names.iter().zip(&slices) {
        let f = sb.party_files(name, &spec, rows);
        let public = shared_model::keys::read_public(&f.public_key).unwrap();
        op.enroll(&f.name, &public).await.unwrap();
        let key = shared_model::keys::read_private(&f.key).unwrap();
        let c = PartyClient::connect_with(&sb.url, &sb.client_tls(), name, key.clone())
            .await
            .unwrap();
        clients.push((c, key));
    }
    let text = std::fs::read_to_string(yosegi_tests::data("wdbc.toml")).unwrap();
    op.create_task("wdbc", &text, &[]).await.unwrap();
    (spec, slices, op, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_uploads_and_bad_callers_are_refused_and_the_round_finishes() {
    let sb = Sandbox::start().await;
    let (spec, slices, mut op, mut clients) = wdbc_parties(&sb, &["plant-a", "plant-b"]).await;
    let (mut b, _) = clients.pop().unwrap();
    let (mut a, ka) = clients.pop().unwrap();

    // statistics step, by hand
    for (c, rows) in [(&mut a, &slices[0]), (&mut b, &slices[1])] {
        let asg = c
            .next_assignment(5_000)
            .await
            .unwrap()
            .expect("a statistics assignment");
        assert_eq!(asg.work, Work::Stats);
        c.submit_sums(&asg.id, &FeatureSums::of_rows(&rows.features, 30))
            .await
            .unwrap();
    }
    op.start_round("wdbc", "fedavg", Default::default(), 1, 60_000, 1)
        .await
        .unwrap();
    let asg = next_train(&mut a).await;
    let (signed, base_bytes) = a.download("wdbc", 0, spec.max_blob_bytes()).await.unwrap();
    let base_manifest = signed.verify(&sb.coordinator_key, now_ms()).unwrap();
    let base = blob::decode(&base_bytes, &spec, BlobRole::Initial).unwrap();
    let trained = train(&spec, &base, &slices[0], &TrainOptions::from_spec(&spec, 1))
        .unwrap()
        .weights;
    let meta = BlobMeta::new(&spec, BlobRole::Update);
    let good = blob::encode(&trained, &meta);
    let envelope = |bytes: &[u8], round: u64| {
        SignedUpdate::for_blob(
            TaskId::new("wdbc").unwrap(),
            spec.id(),
            RoundNo(round),
            StepNo(0),
            base_manifest.blob_sha256,
            PartyId::new("plant-a").unwrap(),
            bytes,
            slices[0].len() as u64,
            &ka,
        )
    };

    // 1. a blob altered after signing
    let mut tampered = good.clone();
    *tampered.last_mut().unwrap() ^= 0x40;
    let e1 = a
        .upload(&asg.id, &envelope(&good, 1), tampered, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e1.contains("blob sha256 is") && e1.contains("signed header says"),
        "{e1}"
    );
    // 2. an update signed for another round
    let e2 = a
        .upload(&asg.id, &envelope(&good, 2), good.clone(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e2.contains("round is 2, expected 1"), "{e2}");
    // 3. NaN weights, correctly signed
    let mut t = trained.tensors().to_vec();
    t[2].data[5] = f32::NAN;
    let nan = blob::encode_tensors(&t, &meta);
    let e3 = a
        .upload(&asg.id, &envelope(&nan, 1), nan, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e3.contains("tensor `layers.0.weight`: value NaN at index 5 is not finite"),
        "{e3}"
    );
    // 4. a key nobody enrolled
    let stranger = shared_model::keys::generate().unwrap();
    let mut x = PartyClient::connect_with(&sb.url, &sb.client_tls(), "plant-x", stranger)
        .await
        .unwrap();
    let e4 = x.next_assignment(0).await.unwrap_err().to_string();
    assert!(
        e4.contains("Unauthenticated") && e4.contains("unknown caller \"plant-x\": not enrolled"),
        "{e4}"
    );
    // 5. a replayed call: the same signed metadata twice
    let channel = yosegi_proto::transport::channel(&sb.url, &sb.client_tls())
        .await
        .unwrap();
    let mut raw = PartyServiceClient::new(channel);
    let poll = pb::NextAssignmentRequest { wait_ms: 0 };
    let first = sign(
        tonic::Request::new(poll),
        "NextAssignment",
        "plant-a",
        &ka,
        now_ms(),
        party_client::grpc::digest_of(&poll),
    );
    let md = first.metadata().clone();
    raw.next_assignment(first).await.unwrap();
    let mut again = tonic::Request::new(pb::NextAssignmentRequest { wait_ms: 0 });
    *again.metadata_mut() = md;
    let e5 = raw.next_assignment(again).await.unwrap_err();
    assert_eq!(e5.code(), tonic::Code::Unauthenticated);
    assert!(
        e5.message()
            .contains("call replayed: nonce already used by plant-a"),
        "{}",
        e5.message()
    );
    // 6. a revoked party, mid-round
    op.revoke("plant-b").await.unwrap();
    let e6 = b.next_assignment(0).await.unwrap_err().to_string();
    assert!(
        e6.contains("PermissionDenied") && e6.contains("party plant-b is revoked"),
        "{e6}"
    );

    let reasons = [&e1, &e2, &e3, &e4, &e5.message().to_string(), &e6];
    let distinct: std::collections::HashSet<_> = reasons.iter().collect();
    assert_eq!(distinct.len(), 6);

    // The honest update is accepted, an identical re-upload is acknowledged again, the round
    // finishes, and the operator can read every rejection.
    assert_eq!(
        a.upload(&asg.id, &envelope(&good, 1), good.clone(), None)
            .await
            .unwrap(),
        Ack::Accepted
    );
    assert_eq!(
        a.upload(&asg.id, &envelope(&good, 1), good.clone(), None)
            .await
            .unwrap(),
        Ack::AlreadyAccepted
    );
    let rounds = sb
        .wait_for("wdbc", Duration::from_secs(30), |rs| {
            rs.first().is_some_and(|r| r.is_final())
        })
        .await;
    let r = &rounds[0];
    assert_eq!((r.phase.as_str(), r.version), ("published", 1), "{r:?}");
    let text = format!("{:?}", r.parties);
    for needle in [
        "signed header says",
        "round is 2, expected 1",
        "is not finite",
        "revoked by the operator",
    ] {
        assert!(text.contains(needle), "status lacks {needle:?}: {text}");
    }
    let merged: Weights = {
        let (m, bytes, _) = op.pull("wdbc", 1, &sb.coordinator_key).await.unwrap();
        assert_eq!(m.contributors.len(), 1);
        blob::decode(&bytes, &spec, BlobRole::Merged).unwrap()
    };
    assert_eq!(merged, trained, "FedAvg of one update is that update");

    // An endless (or oversized) download: the party stops reading at its cap, the spec's
    // largest blob, and says so; within the cap the same model downloads whole.
    let e = a.download("wdbc", 1, 1_000).await.unwrap_err().to_string();
    assert!(
        e.contains("model download exceeds the spec's 1000 bytes; stopped reading"),
        "{e}"
    );
    let (_, bytes) = a
        .download("wdbc", 1, shared_model::model::max_model_blob_bytes(&spec))
        .await
        .unwrap();
    assert_eq!(
        blob::decode(&bytes, &spec, BlobRole::Merged).unwrap(),
        trained
    );
    sb.stop().await;
}

/// Signs `proof` into the metadata of `req` as the operator would (`x-yosegi-proof` given).
fn operator_proof<T>(
    mut req: tonic::Request<T>,
    proof: &shared_model::auth::CallProof,
    key: &shared_model::SigningKey,
    version: Option<&str>,
) -> tonic::Request<T> {
    let md = req.metadata_mut();
    if let Some(v) = version {
        md.insert("x-yosegi-proof", v.parse().unwrap());
    }
    md.insert("x-yosegi-caller", proof.caller.parse().unwrap());
    md.insert(
        "x-yosegi-timestamp",
        proof.timestamp_ms.to_string().parse().unwrap(),
    );
    md.insert("x-yosegi-nonce", hex(&proof.nonce).parse().unwrap());
    md.insert_bin(
        "x-yosegi-signature-bin",
        tonic::metadata::BinaryMetadataValue::from_bytes(&proof.sign(key).to_bytes()),
    );
    req
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_call_whose_body_was_changed_fails_verification() {
    use prost::Message as _;
    use shared_model::auth::{CallProof, OPERATOR, body_sha256};
    use yosegi_proto::v1::operator_service_client::OperatorServiceClient;
    let sb = Sandbox::start().await;
    let op_key = sb.operator_key.clone();
    let channel = yosegi_proto::transport::channel(&sb.url, &sb.client_tls())
        .await
        .unwrap();
    let mut raw = OperatorServiceClient::new(channel);
    let meant = shared_model::keys::generate().unwrap().verifying_key();
    let swapped = shared_model::keys::generate().unwrap().verifying_key();
    let signed_for = pb::EnrollPartyRequest {
        name: "plant-x".into(),
        public_key: meant.as_bytes().to_vec(),
    };
    let method = "/yosegi.v1.OperatorService/EnrollParty";
    // An attacker on the path swaps the key: the proof was made over the other body.
    let proof = CallProof::new(
        method,
        OPERATOR,
        now_ms(),
        body_sha256(&signed_for.encode_to_vec()),
    );
    let tampered = pb::EnrollPartyRequest {
        public_key: swapped.as_bytes().to_vec(),
        ..signed_for.clone()
    };
    let req = operator_proof(tonic::Request::new(tampered), &proof, &op_key, Some("2"));
    let e = raw.enroll_party(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("signature"), "{}", e.message());
    // A proof of the previous version (no body digest) is refused naming both versions.
    let proof = CallProof::new(
        method,
        OPERATOR,
        now_ms(),
        body_sha256(&signed_for.encode_to_vec()),
    );
    let req = operator_proof(
        tonic::Request::new(signed_for.clone()),
        &proof,
        &op_key,
        None,
    );
    let e = raw.enroll_party(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("call proof version 1") && e.message().contains("needs version 2"),
        "{}",
        e.message()
    );
    // The untouched call goes through, and nobody was enrolled with the swapped key.
    let proof = CallProof::new(
        method,
        OPERATOR,
        now_ms(),
        body_sha256(&signed_for.encode_to_vec()),
    );
    let req = operator_proof(tonic::Request::new(signed_for), &proof, &op_key, Some("2"));
    raw.enroll_party(req).await.unwrap();
    let mut op = sb.operator().await;
    let parties = op.parties().await.unwrap();
    let x = parties.iter().find(|p| p.name == "plant-x").unwrap();
    assert_eq!(x.fingerprint, shared_model::keys::fingerprint(&meant));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn absurd_reports_beside_an_update_or_an_evaluation_are_refused() {
    use shared_model::eval::MetricStats;
    use shared_model::membership::MembershipAudit;
    use shared_model::spec::TaskKind;

    let sb = Sandbox::start().await;
    let (spec, slices, mut op, mut clients) = wdbc_parties(&sb, &["plant-a"]).await;
    let (mut a, ka) = clients.pop().unwrap();
    let asg = a.next_assignment(5_000).await.unwrap().unwrap();
    a.submit_sums(&asg.id, &FeatureSums::of_rows(&slices[0].features, 30))
        .await
        .unwrap();
    op.start_round("wdbc", "fedavg", Default::default(), 1, 60_000, 1)
        .await
        .unwrap();
    let asg = next_train(&mut a).await;
    let (signed, base_bytes) = a.download("wdbc", 0, spec.max_blob_bytes()).await.unwrap();
    let base_manifest = signed.verify(&sb.coordinator_key, now_ms()).unwrap();
    let base = blob::decode(&base_bytes, &spec, BlobRole::Initial).unwrap();
    let meta = BlobMeta::new(&spec, BlobRole::Update);
    let good = blob::encode(&base, &meta);
    let env = SignedUpdate::for_blob(
        TaskId::new("wdbc").unwrap(),
        spec.id(),
        RoundNo(1),
        StepNo(0),
        base_manifest.blob_sha256,
        PartyId::new("plant-a").unwrap(),
        &good,
        slices[0].len() as u64,
        &ka,
    );
    // Local metrics of another task kind, then counts that do not add up.
    let regression = MetricStats::from_predictions(TaskKind::Regression, &[0.5, 1.0], &[0.0, 1.0]);
    let e = a
        .upload(&asg.id, &env, good.clone(), Some(&regression))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "local metrics of plant-a: statistics of a regression task, this task is binary"
        ),
        "{e}"
    );
    let mut inflated = MetricStats::from_predictions(TaskKind::Binary, &[0.9, 0.1], &[1.0, 0.0]);
    if let MetricStats::Binary { tp, .. } = &mut inflated {
        *tp = 1_000_000;
    }
    let e = a
        .upload(&asg.id, &env, good.clone(), Some(&inflated))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("`pos_hist` does not match `tp` 1000000"), "{e}");
    // Audit numbers outside [0, 1].
    let audit = MembershipAudit {
        members: 100,
        non_members: 30,
        auc: 0.5,
        advantage: 7.0,
        tpr_at_1pct_fpr: 0.0,
    };
    let e = a
        .upload_with_audit(&asg.id, &env, good.clone(), None, Some(&audit))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("membership audit: `advantage` is 7"), "{e}");
    // Recorded against the party (its last rejection shows); a sound upload is still accepted.
    let status = op.status("wdbc").await.unwrap();
    let reason = &status[0].parties[0].reason;
    assert!(reason.contains("`advantage` is 7"), "{status:?}");
    let honest = MetricStats::from_predictions(TaskKind::Binary, &[0.9, 0.1], &[1.0, 0.0]);
    assert_eq!(
        a.upload(&asg.id, &env, good.clone(), Some(&honest))
            .await
            .unwrap(),
        Ack::Accepted
    );

    // An evaluation report with no rows, then a sound one.
    let eval = loop {
        let w = a.next_assignment(1_000).await.unwrap();
        if let Some(w) = w
            && matches!(w.work, Work::Evaluate { .. })
        {
            break w;
        }
    };
    let empty = MetricStats::from_predictions(TaskKind::Binary, &[], &[]);
    let e = a
        .report_evaluation(&eval.id, &empty)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("InvalidArgument") || e.contains("invalid argument"),
        "{e}"
    );
    assert!(e.contains("no rows were evaluated"), "{e}");
    a.report_evaluation(&eval.id, &honest).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_captured_before_a_graceful_restart_cannot_be_replayed_after_it() {
    let mut sb = Sandbox::start().await;
    let (_, _, _, mut clients) = wdbc_parties(&sb, &["plant-a"]).await;
    let (_, ka) = clients.pop().unwrap();
    let poll = pb::NextAssignmentRequest { wait_ms: 0 };
    let signed = |at: i64| {
        sign(
            tonic::Request::new(poll),
            "NextAssignment",
            "plant-a",
            &ka,
            at,
            party_client::grpc::digest_of(&poll),
        )
    };
    let tls = sb.client_tls();
    let raw = |url: String| {
        let tls = tls.clone();
        async move {
            let channel = yosegi_proto::transport::channel(&url, &tls).await.unwrap();
            PartyServiceClient::new(channel)
        }
    };
    let first = signed(now_ms());
    let captured = first.metadata().clone();
    raw(sb.url.clone())
        .await
        .next_assignment(first)
        .await
        .unwrap();
    // The nonce cache lives in memory; a graceful stop saves it and the next start loads it.
    sb.restart().await.unwrap();
    let mut again = tonic::Request::new(poll);
    *again.metadata_mut() = captured;
    let e = raw(sb.url.clone())
        .await
        .next_assignment(again)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(
        e.message()
            .contains("call replayed: nonce already used by plant-a"),
        "{}",
        e.message()
    );
    // A call signed now goes through.
    raw(sb.url.clone())
        .await
        .next_assignment(signed(now_ms()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_party_key_keeps_its_place_and_the_old_key_is_refused_at_once() {
    let mut sb = Sandbox::start().await;
    let (_, _, mut op, mut clients) = wdbc_parties(&sb, &["plant-a", "plant-b"]).await;
    let (mut old, old_key) = clients.remove(0);
    let before = op.parties().await.unwrap();
    let new_key = shared_model::keys::generate().unwrap();
    let (fp, previous) = op
        .rotate_key("plant-a", &new_key.verifying_key())
        .await
        .unwrap();
    assert_eq!(
        fp,
        shared_model::keys::fingerprint(&new_key.verifying_key())
    );
    assert_eq!(
        previous,
        before
            .iter()
            .find(|p| p.name == "plant-a")
            .unwrap()
            .fingerprint
    );
    // The old key, on a connection opened before the rotation, is refused at its next call.
    let e = old.next_assignment(0).await.unwrap_err().to_string();
    assert!(e.contains("Unauthenticated"), "{e}");
    // The new key has plant-a's place: its statistics assignment of the task it was in.
    let mut new = PartyClient::connect_with(&sb.url, &sb.client_tls(), "plant-a", new_key.clone())
        .await
        .unwrap();
    let a = new.next_assignment(5_000).await.unwrap().expect("work");
    assert_eq!((a.id.as_str(), &a.work), ("wdbc/stats/0", &Work::Stats));
    // Refusals name what is wrong.
    let same = op.rotate_key("plant-a", &new_key.verifying_key()).await;
    assert!(
        same.unwrap_err()
            .to_string()
            .contains("already the key of plant-a")
    );
    let nobody = op.rotate_key("plant-z", &new_key.verifying_key()).await;
    assert!(
        nobody
            .unwrap_err()
            .to_string()
            .contains("no party named plant-z")
    );
    op.revoke("plant-b").await.unwrap();
    let revoked = op.rotate_key("plant-b", &new_key.verifying_key()).await;
    assert!(
        revoked
            .unwrap_err()
            .to_string()
            .contains("plant-b is revoked")
    );
    // The rotation is durable: after a restart the new key works and the old one is refused.
    sb.restart().await.unwrap();
    let mut new = PartyClient::connect_with(&sb.url, &sb.client_tls(), "plant-a", new_key)
        .await
        .unwrap();
    new.next_assignment(0).await.unwrap();
    let mut old = PartyClient::connect_with(&sb.url, &sb.client_tls(), "plant-a", old_key)
        .await
        .unwrap();
    assert!(old.next_assignment(0).await.is_err());
}
