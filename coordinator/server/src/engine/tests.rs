//! Engine tests: the shell around the round rules, on a temp store and blob dir.
use super::*;
use crate::store::{RoundPhase, Store};
use shared_model::keys::generate;
use shared_model::weights::Weights;

use super::fixture::*;

#[test]
fn impossible_feature_sums_are_refused_with_the_party_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("y.db")).unwrap();
    let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
    let mut engine = Engine::new(store, blobs, generate().unwrap(), EngineConfig::default());
    let k = generate().unwrap();
    engine.enroll("plant-a", &k.verifying_key(), 0).unwrap();
    engine.create_task("t", SPEC, &[], 0).unwrap();
    let mut bad = sums();
    bad.sum[0] = f64::NAN;
    let e = engine
        .submit_sums("plant-a", "t/stats/0", &bad, 0)
        .unwrap_err();
    assert!(
        e.to_string().contains("plant-a") && e.to_string().contains("feature 0"),
        "{e}"
    );
    let mut huge = sums();
    huge.count = u64::MAX;
    assert!(
        engine
            .submit_sums("plant-a", "t/stats/0", &huge, 0)
            .is_err()
    );
    assert!(
        engine.store().sums("t").unwrap().is_empty(),
        "nothing stored"
    );
    // The statistics step is still open for a good report.
    engine
        .submit_sums("plant-a", "t/stats/0", &sums(), 0)
        .unwrap();
}

#[test]
fn a_party_revoked_mid_round_cannot_upload_and_is_not_merged() {
    let mut f = fixture(3);
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 1, 1)
        .unwrap();
    f.engine.tick(2).unwrap();
    assert_eq!(f.upload(0, 1, 3).unwrap(), UploadOutcome::Accepted);
    f.engine.revoke("plant-1", 4).unwrap();
    let e = f.upload(1, 1, 5).unwrap_err();
    assert!(e.to_string().contains("plant-1 is revoked"), "{e}");
    // plant-2 uploads; then plant-0 is revoked after its upload was accepted.
    assert_eq!(f.upload(2, 1, 6).unwrap(), UploadOutcome::Accepted);
    f.engine.revoke("plant-0", 7).unwrap();
    assert!(f.engine.tick(8).unwrap());
    let r = &f.engine.store().rounds("t").unwrap()[0];
    // Only plant-2 is left after re-verification: below the quorum of 2.
    assert_eq!(r.phase, RoundPhase::Failed);
    let failure = r.failure.clone().unwrap();
    assert!(failure.contains("1 of 2"), "{failure}");
    let parties = f.engine.store().round_parties("t", 1).unwrap();
    let p0 = parties
        .iter()
        .find(|p| p.party.as_str() == "plant-0")
        .unwrap();
    assert!(
        p0.state.reason().contains("revoked"),
        "{}",
        p0.state.reason()
    );
}

#[test]
fn too_few_feature_sums_after_declines_fail_the_round_instead_of_exposing_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = enrolled_engine(dir.path(), 3);
    engine.create_task("t", SPEC, &[], 0).unwrap();
    engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 1, 1)
        .unwrap();
    engine
        .submit_sums("plant-0", "t/stats/0", &sums(), 0)
        .unwrap();
    engine
        .decline("plant-1", "t/stats/0", "site policy", 2)
        .unwrap();
    assert!(!engine.tick(3).unwrap(), "plant-2 has not answered yet");
    engine
        .decline("plant-2", "t/stats/0", "site policy", 4)
        .unwrap();
    assert!(engine.tick(5).unwrap());
    let r = &engine.store().rounds("t").unwrap()[0];
    assert_eq!(r.phase, RoundPhase::Failed);
    let failure = r.failure.clone().unwrap();
    assert!(
        failure.contains("only 1 of 3 parties reported feature sums")
            && failure.contains("plant-1, plant-2")
            && failure.contains("quorum of 2"),
        "{failure}"
    );
    assert!(
        engine.store().model("t", Some(0)).unwrap().is_none(),
        "no initial model from one plant's sums"
    );
}

#[test]
fn an_update_damaged_on_disk_is_left_out_at_the_close_naming_the_mismatch() {
    let mut f = uploaded(3, 2);
    let damaged = f
        .engine
        .store()
        .update("t", 1, "plant-1")
        .unwrap()
        .unwrap()
        .blob_sha256
        .to_string();
    let path = f._dir.path().join("blobs").join(&damaged);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert!(f.engine.tick(100_000).unwrap());
    let r = &f.engine.store().rounds("t").unwrap()[0];
    assert_eq!(r.phase, RoundPhase::Published, "{r:?}");
    let p1 = f
        .engine
        .store()
        .round_party("t", 1, "plant-1")
        .unwrap()
        .unwrap();
    assert!(
        p1.state.reason().contains("update left out of the merge")
            && p1.state.reason().contains("blob sha256 is")
            && p1.state.reason().contains(&damaged),
        "{}",
        p1.state.reason()
    );
    let (signed, _) = f.engine.model("t", None).unwrap();
    let m: shared_model::manifest::Manifest = serde_json::from_slice(&signed.bytes).unwrap();
    let merged: Vec<&str> = m.contributors.iter().map(|c| c.party.as_str()).collect();
    assert_eq!(merged, ["plant-0", "plant-2"]);
}

#[test]
fn a_signed_cohort_requirement_is_enforced_at_the_merge() {
    let mut f = fixture(4);
    // plant-0 needs 3 parties in the merge, plant-1 needs 4; plant-3 never answers.
    f.min_cohort = vec![3, 4, 0, 0];
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 1, 60_000, 1, 1)
        .unwrap();
    f.engine.tick(2).unwrap();
    for i in 0..3 {
        f.upload(i, 1, 3).unwrap();
    }
    // The deadline passes: 3 updates, so plant-1 (needs 4) is left out; then only 2 remain,
    // so plant-0 (needs 3) is left out too; plant-2's update is merged alone.
    assert!(f.engine.tick(100_000).unwrap());
    let r = &f.engine.store().rounds("t").unwrap()[0];
    assert_eq!(r.phase, RoundPhase::Published, "{r:?}");
    let parties = f.engine.store().round_parties("t", 1).unwrap();
    let reason = |name: &str| {
        parties
            .iter()
            .find(|p| p.party.as_str() == name)
            .map(|p| p.state.reason().to_string())
            .unwrap()
    };
    assert!(
        reason("plant-1").contains("requires at least 4 parties in the merge")
            && reason("plant-1").contains("only 3 would be"),
        "{}",
        reason("plant-1")
    );
    assert!(
        reason("plant-0").contains("requires at least 3 parties in the merge")
            && reason("plant-0").contains("only 2 would be"),
        "{}",
        reason("plant-0")
    );
    let (signed, _) = f.engine.model("t", None).unwrap();
    let m: shared_model::manifest::Manifest = serde_json::from_slice(&signed.bytes).unwrap();
    let merged: Vec<&str> = m.contributors.iter().map(|c| c.party.as_str()).collect();
    assert_eq!(merged, ["plant-2"]);
    // FedAvg streams: the updates left out after being folded in are taken out again, so
    // the model is plant-2's update alone (initial + 0.03), not the mean of three.
    let spec = ModelSpec::parse(&f.spec, "t").unwrap();
    let (_, bytes) = f.engine.model("t", None).unwrap();
    let Model::Single(w) = Model::decode(&bytes, &spec, BlobRole::Merged).unwrap() else {
        panic!("FedAvg publishes a single network")
    };
    let want = Weights::initial(&spec, &sums().normalization().unwrap())
        .map_trainable(|t| t.data.iter().map(|v| v + 0.01 * (2.0f32 + 1.0)).collect())
        .unwrap();
    assert_eq!(w.trainable(), want.trainable());
}

#[test]
fn training_work_says_how_many_parties_the_round_combines() {
    let round_parties = |a: Assignment| match a.work {
        Work::Train { round_parties, .. } => round_parties,
        other => panic!("{other:?}"),
    };
    let mut f = fixture(3);
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 1, 60_000, 1, 1)
        .unwrap();
    f.engine.tick(2).unwrap();
    let a = f.engine.next_assignment("plant-1", 3).unwrap().unwrap();
    assert_eq!(round_parties(a), 3);
    for i in 0..3 {
        f.upload(i, 1, 4).unwrap();
    }
    assert!(f.engine.tick(5).unwrap(), "round 1 published");
    // A relay step invites one party, but its result combines the whole relay's.
    f.engine
        .start_rounds("t", "transfer", &BTreeMap::new(), 1, 60_000, 1, 6)
        .unwrap();
    f.engine.tick(7).unwrap();
    let a = f.engine.next_assignment("plant-0", 8).unwrap().unwrap();
    assert_eq!(a.step, 0);
    assert_eq!(round_parties(a), 3);
}

#[test]
fn declined_evaluations_are_not_offered_again_and_training_comes_first() {
    let mut f = fixture(2);
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 2, 1)
        .unwrap();
    f.engine.tick(2).unwrap();
    f.upload(0, 1, 3).unwrap();
    f.upload(1, 1, 3).unwrap();
    assert!(f.engine.tick(4).unwrap(), "round 1 published");
    assert!(f.engine.tick(5).unwrap(), "round 2 opened");
    // Round 2's training is offered before round 1's evaluation.
    let a = f.engine.next_assignment("plant-0", 6).unwrap().unwrap();
    assert_eq!(a.id.to_string(), "t/train/2");
    f.upload(0, 2, 7).unwrap();
    let a = f.engine.next_assignment("plant-0", 8).unwrap().unwrap();
    assert_eq!(a.id.to_string(), "t/evaluate/1");
    f.engine
        .decline("plant-0", &a.id.to_string(), "site policy", 9)
        .unwrap();
    assert_eq!(f.engine.next_assignment("plant-0", 10).unwrap(), None);
    // The other party still gets it.
    let b = f.engine.next_assignment("plant-1", 10).unwrap().unwrap();
    assert_eq!(b.id.to_string(), "t/train/2");
}

#[test]
fn an_update_with_another_normalisation_is_rejected_and_named() {
    let mut f = fixture(2);
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 1, 1)
        .unwrap();
    f.engine.tick(2).unwrap();
    let mut norm = sums().normalization().unwrap();
    norm.mean[1] += 1.0;
    match f.upload_with(0, 1, 3, &norm) {
        Err(EngineError::Rejected { code, reason }) => {
            assert_eq!(code, "normalisation");
            assert!(reason.contains("plant-0") && reason.contains("differs from the task's"));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // The governance log names the party, the round and the failed check.
    let logged = f.engine.store().audit_records(None, Some(1)).unwrap();
    let detail: serde_json::Value = serde_json::from_str(&logged[0].detail).unwrap();
    assert_eq!(
        (
            logged[0].kind.as_str(),
            logged[0].party.as_deref(),
            logged[0].round
        ),
        ("update_rejected", Some("plant-0"), Some(1))
    );
    assert_eq!(detail["code"], "normalisation");
    // A correct upload afterwards is still taken while the round is open.
    assert_eq!(f.upload(0, 1, 4).unwrap(), UploadOutcome::Accepted);
    // An upload after the deadline is rejected as late, and logged so.
    assert!(f.upload(1, 1, 60_003).is_err());
    let logged = f.engine.store().audit_records(None, Some(1)).unwrap();
    assert_eq!(logged[0].kind, "update_rejected");
    assert!(
        logged[0].detail.contains(r#""code":"late""#),
        "{}",
        logged[0].detail
    );
}

#[test]
fn only_open_work_can_be_declined_and_reasons_are_cut() {
    let mut f = fixture(2);
    // No round 7, and no version 3: nothing to decline, nothing recorded.
    assert!(f.engine.decline("plant-0", "t/train/7", "no", 1).is_err());
    assert!(
        f.engine
            .decline("plant-0", "t/evaluate/3", "no", 1)
            .is_err()
    );
    assert!(
        f.engine.decline("plant-0", "t/stats/0", "no", 1).is_err(),
        "stats closed"
    );
    assert!(f.engine.store().rejections("t", 7).unwrap().is_empty());
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 1, 60_000, 1, 1)
        .unwrap();
    f.engine.tick(2).unwrap();
    f.engine
        .decline("plant-0", "t/train/1", &"x".repeat(10_000), 3)
        .unwrap();
    let p = &f.engine.store().round_parties("t", 1).unwrap()[0];
    assert_eq!(p.state.name(), "declined");
    assert!(
        p.state.reason().chars().count() < 600,
        "{} chars",
        p.state.reason().len()
    );
    // Declining twice is refused: the invitation is answered.
    assert!(
        f.engine
            .decline("plant-0", "t/train/1", "again", 4)
            .is_err()
    );
}

#[test]
fn strategies_that_cannot_run_are_refused_at_round_start() {
    let mut f = fixture(3);
    let opts = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    let e = f
        .engine
        .start_rounds("t", "krum", &opts("f", "1"), 3, 60_000, 1, 1)
        .unwrap_err();
    assert!(e.to_string().contains("at least 5 updates"), "{e}");
    let e = f
        .engine
        .start_rounds("t", "krum", &opts("f", "0"), 2, 60_000, 1, 1)
        .unwrap_err();
    assert!(e.to_string().contains("--min-parties to 3"), "{e}");
    let e = f
        .engine
        .start_rounds("t", "transfer", &opts("freeze", "2"), 1, 60_000, 1, 1)
        .unwrap_err();
    assert!(e.to_string().contains("freeze"), "{e}");
    // 21 relays over 3 parties = 63 stages fit; one more relay would make 66.
    f.engine
        .start_rounds("t", "series", &BTreeMap::new(), 1, 60_000, 21, 1)
        .unwrap();
    let e = f
        .engine
        .start_rounds("t", "series", &BTreeMap::new(), 1, 60_000, 1, 1)
        .unwrap_err();
    assert!(e.to_string().contains("63 queued"), "{e}");
}

/// A task with central differential privacy: an update whose delta exceeds the clip is
/// rejected as `dp_clip` with the party and its norm named; the merge is the unweighted mean
/// of the deltas plus noise of std σ·C/n; ε is reported for the published round; strategies
/// the mechanism cannot serve are refused at round start.
#[test]
fn a_close_that_fails_at_publication_writes_nothing_and_its_retry_records_each_change_once() {
    let mut f = fixture(3);
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 1, 60_000, 1, 1)
        .unwrap();
    f.engine.tick(2).unwrap();
    // plant-0 uploads a good update, plant-1 one that is damaged on disk later, plant-2 nothing.
    for i in 0..2 {
        f.upload(i, 1, 3).unwrap();
    }
    let damaged = f
        .engine
        .store()
        .update("t", 1, "plant-1")
        .unwrap()
        .unwrap()
        .blob_sha256
        .to_string();
    let blobs = f._dir.path().join("blobs");
    let mut bytes = std::fs::read(blobs.join(&damaged)).unwrap();
    bytes[0] ^= 1;
    std::fs::write(blobs.join(&damaged), bytes).unwrap();
    // Publication cannot write its blob (the temp dir is a file now): the close fails after
    // re-verification decided the leave-out and the late party.
    let records = |f: &Fixture| f.engine.store().audit_records(None, None).unwrap();
    let before = records(&f).len();
    std::fs::remove_dir_all(blobs.join("tmp")).unwrap();
    std::fs::write(blobs.join("tmp"), b"not a directory").unwrap();
    assert!(!f.engine.tick(100_000).unwrap(), "nothing moved");
    assert_eq!(
        records(&f).len(),
        before,
        "no record of a close that did not commit"
    );
    assert!(f.engine.store().rejections("t", 1).unwrap().is_empty());
    let r = &f.engine.store().rounds("t").unwrap()[0];
    assert_eq!(r.phase, RoundPhase::Training);
    // Space is back: the next tick decides the close again and commits it once.
    std::fs::remove_file(blobs.join("tmp")).unwrap();
    std::fs::create_dir(blobs.join("tmp")).unwrap();
    assert!(f.engine.tick(100_001).unwrap());
    let r = &f.engine.store().rounds("t").unwrap()[0];
    assert_eq!(r.phase, RoundPhase::Published, "{r:?}");
    let added: Vec<(String, Option<String>)> = records(&f)[before..]
        .iter()
        .map(|r| (r.kind.clone(), r.party.clone()))
        .collect();
    let kinds: Vec<&str> = added.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "party_left_out",
            "party_left_out",
            "round_merged",
            "model_published"
        ],
        "{added:?}"
    );
    assert_eq!(added[0].1.as_deref(), Some("plant-1"), "left out: damaged");
    assert_eq!(added[1].1.as_deref(), Some("plant-2"), "left out: late");
    let rejections = f.engine.store().rejections("t", 1).unwrap();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    f.engine.store().verify_audit().unwrap();
}

#[test]
fn a_huge_claimed_sample_count_cannot_take_over_fedavg() {
    // Every plant reported 3 rows in the statistics step. plant-2 claims 10^12 samples for an
    // update of constant weights; the honest plants claim 10 and 40 (more than their rows too).
    let mut f = fixture(3);
    f.claims = vec![0, 0, 1_000_000_000_000];
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 3, 60_000, 1, 1)
        .unwrap();
    f.engine.tick(2).unwrap();
    f.upload(0, 1, 3).unwrap();
    f.upload(1, 1, 3).unwrap();
    let spec = ModelSpec::parse(&f.spec, "t").unwrap();
    let norm = sums().normalization().unwrap();
    let attack = Weights::initial(&spec, &norm)
        .map_trainable(|t| vec![5.0; t.data.len()])
        .unwrap();
    f.upload_weights(2, 1, 3, &attack).unwrap();
    assert!(
        f.engine.tick(4).unwrap(),
        "everyone answered: the round closes"
    );
    let (manifest, bytes) = f.engine.model("t", None).unwrap();
    let Model::Single(merged) = Model::decode(&bytes, &spec, BlobRole::Merged).unwrap() else {
        panic!("one network")
    };
    // Each update weighs the 3 rows its plant reported: the attacker is one plant of three.
    let base = Weights::initial(&spec, &norm);
    for (m, b) in merged.trainable().iter().zip(base.trainable()) {
        for (&mv, &bv) in m.data.iter().zip(&b.data) {
            let want = ((bv + 0.01) + (bv + 0.02) + 5.0) / 3.0;
            assert!(
                (mv - want).abs() < 1e-5,
                "merged {mv}, equal weights give {want}"
            );
        }
    }
    let manifest: shared_model::manifest::Manifest =
        serde_json::from_slice(&manifest.bytes).unwrap();
    let weights: Vec<u64> = manifest
        .contributors
        .iter()
        .map(|c| c.sample_count)
        .collect();
    assert_eq!(
        weights,
        [3, 3, 3],
        "the manifest names the weights the merge used"
    );
    let merged_record = f
        .engine
        .store()
        .audit_records(Some("t"), None)
        .unwrap()
        .into_iter()
        .find(|r| r.kind == "round_merged")
        .unwrap();
    let detail: serde_json::Value = serde_json::from_str(&merged_record.detail).unwrap();
    assert_eq!(detail["updates"][2]["sample_count"], 1_000_000_000_000u64);
    assert_eq!(detail["updates"][2]["weight"], 3, "{detail}");
}

#[test]
fn an_update_signed_with_a_rotated_key_is_left_out_and_the_rotation_is_logged() {
    let mut f = uploaded(3, 2);
    let old = f.keys[0].1.verifying_key();
    let new = generate().unwrap().verifying_key();
    let previous = f.engine.rotate_key("plant-0", &new, 4).unwrap();
    assert_eq!(previous, shared_model::keys::fingerprint(&old));
    assert!(f.engine.tick(100_000).unwrap());
    let p0 = f
        .engine
        .store()
        .round_party("t", 1, "plant-0")
        .unwrap()
        .unwrap();
    assert!(
        p0.state.reason().contains("update left out of the merge"),
        "{}",
        p0.state.reason()
    );
    let (signed, _) = f.engine.model("t", None).unwrap();
    let m: shared_model::manifest::Manifest = serde_json::from_slice(&signed.bytes).unwrap();
    let merged: Vec<&str> = m.contributors.iter().map(|c| c.party.as_str()).collect();
    assert_eq!(merged, ["plant-1", "plant-2"]);
    let rotated = f
        .engine
        .store()
        .audit_records(None, None)
        .unwrap()
        .into_iter()
        .find(|r| r.kind == "party_key_rotated")
        .expect("logged");
    let detail: serde_json::Value = serde_json::from_str(&rotated.detail).unwrap();
    assert_eq!(
        detail["previous_fingerprint"],
        shared_model::keys::fingerprint(&old)
    );
    assert_eq!(detail["fingerprint"], shared_model::keys::fingerprint(&new));
    f.engine.store().verify_audit().unwrap();
}
