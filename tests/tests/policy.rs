//! A plant's control over what it trains: the site policy in `party.toml` declines work at the
//! plant, the operator sees why, and the round goes on with the parties that agreed; `policy
//! check` explains each refusal before a plant joins; `predict` checks a pulled model's signed
//! manifest before using it.

use std::time::Duration;

use party_client::policy::RawPolicy;
use shared_model::ids::Sha256;
use yosegi_tests::sandbox::{Sandbox, wdbc_split};
use yosegi_tests::{data, run, run_ok};

fn policy(text: &str) -> RawPolicy {
    toml::from_str(text).unwrap()
}

/// Enrolls one plant per slice and starts each daemon under its own `[policy]` text.
async fn start_plants(
    sb: &mut Sandbox,
    op: &mut coordinator::grpc::client::OperatorClient,
    names: &[&str],
    spec: &shared_model::spec::ModelSpec,
    slices: &[shared_model::data::Dataset],
    policies: &[String],
) -> Vec<yosegi_tests::sandbox::PartyFiles> {
    let mut files = Vec::new();
    for (name, rows) in names.iter().zip(slices) {
        let f = sb.party_files(name, spec, rows);
        let key = shared_model::keys::read_public(&f.public_key).unwrap();
        op.enroll(name, &key).await.unwrap();
        files.push(f);
    }
    let pinned = sb.coordinator_pub();
    for (f, p) in files.iter().zip(policies) {
        sb.start_party_with_policy(f, &pinned, policy(p));
    }
    files
}

/// Six plants: one approves the task, one approves only another spec, one allows no network
/// this large, one refuses to be in a round with fewer than seven others, one allows fewer local
/// epochs than the spec's, one refuses a column the task reads. The round publishes the approved
/// plant's update alone; each refusal is recorded with its reason, for training and for the
/// statistics step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_outside_a_site_policy_is_declined_and_reported() {
    let mut sb = Sandbox::start().await;
    let (spec, _, slices) = wdbc_split(6);
    let text = std::fs::read_to_string(data("wdbc.toml")).unwrap();
    let id = spec.id().to_string();
    let column = spec.task.features[0].clone();
    let mut op = sb.operator().await;
    let names = [
        "plant-a", "plant-b", "plant-c", "plant-d", "plant-e", "plant-f",
    ];
    let other_spec = Sha256::of(b"another task").to_string();
    let policies = [
        format!("approved_specs = [\"{id}\"]"),
        format!("approved_specs = [\"{other_spec}\"]"),
        "max_parameters = 100".to_string(),
        "min_other_parties = 7".to_string(),
        "max_local_epochs = 5".to_string(),
        format!("refused_columns = [\"{column}\"]"),
    ];
    start_plants(&mut sb, &mut op, &names, &spec, &slices, &policies).await;
    op.create_task("wdbc", &text, &[]).await.unwrap();
    op.start_round("wdbc", "fedavg", Default::default(), 1, 120_000, 1)
        .await
        .unwrap();
    let rounds = sb
        .wait_for("wdbc", Duration::from_secs(120), |rs| {
            rs.len() == 1 && rs[0].phase == "published"
        })
        .await;
    let r = &rounds[0];
    let state = |name: &str| {
        r.parties
            .iter()
            .find(|p| p.party == name)
            .unwrap_or_else(|| panic!("{name} not in {r:?}"))
    };
    assert_eq!(state("plant-a").state, "accepted", "{r:?}");
    let short = &id[..12];
    for (name, want) in [
        (
            "plant-b",
            format!("declined: site policy: spec {short}… (wdbc-mlp) is not approved"),
        ),
        (
            "plant-c",
            format!(
                "more than policy.max_parameters = 100 (the network has {} parameters",
                spec.parameter_count()
            ),
        ),
        (
            "plant-d",
            "the round combines 6 parties: 5 other(s), fewer than policy.min_other_parties = 7"
                .to_string(),
        ),
        (
            "plant-e",
            format!(
                "{} local epochs exceed policy.max_local_epochs = 5",
                spec.training.local_epochs
            ),
        ),
        (
            "plant-f",
            format!("column `{column}` is in policy.refused_columns"),
        ),
    ] {
        let p = state(name);
        assert_eq!(p.state, "declined", "{name}: {p:?}");
        let want = want.split(" (the network").next().unwrap();
        assert!(
            p.reason.contains(want),
            "{name}: {:?} lacks {want:?}",
            p.reason
        );
    }
    // Only the approving plant's update was merged.
    let (manifest, _, _) = op.pull("wdbc", 0, &sb.coordinator_key).await.unwrap();
    let contributors: Vec<&str> = manifest
        .contributors
        .iter()
        .map(|c| c.party.as_str())
        .collect();
    assert_eq!(contributors, ["plant-a"]);
    // The statistics step: plants b, c, e and f declined it (their policy refuses the spec
    // itself), and the operator sees why; d's refusal is about rounds, so it reported its sums.
    let (_, declines) = op.status_with_declines("wdbc").await.unwrap();
    let mut stats: Vec<(&str, &str)> = declines
        .iter()
        .filter(|d| d.assignment == "wdbc/stats/0")
        .map(|d| (d.party.as_str(), d.reason.as_str()))
        .collect();
    stats.sort();
    assert_eq!(stats.len(), 4, "{declines:?}");
    assert_eq!(stats[0].0, "plant-b");
    assert!(stats[0].1.contains("is not approved"), "{stats:?}");
    assert_eq!(stats[1].0, "plant-c");
    assert!(stats[1].1.contains("policy.max_parameters"), "{stats:?}");
    assert_eq!(stats[2].0, "plant-e");
    assert!(stats[2].1.contains("policy.max_local_epochs"), "{stats:?}");
    assert_eq!(stats[3].0, "plant-f");
    assert!(stats[3].1.contains("policy.refused_columns"), "{stats:?}");
    sb.stop().await;
}

/// `party-client policy check` passes an approved spec within the limits, and names every rule
/// a spec breaks (exit status 1) — here, changing one training setting makes a new spec id that
/// the old approval does not cover.
#[test]
fn policy_check_explains_each_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = data("wdbc.toml");
    let spec = shared_model::spec::ModelSpec::from_file(&spec_path).unwrap();
    let config = dir.path().join("party.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"plant-a\"\n[policy]\napproved_specs = [\"{}\"]\nmax_local_epochs = 20\nmin_other_parties = 2\n",
            spec.id()
        ),
    )
    .unwrap();
    let (c, s) = (config.to_str().unwrap(), spec_path.to_str().unwrap());
    let out = run_ok(
        "party-client",
        &["policy", "check", "--config", c, "--spec", s],
    );
    assert!(out.contains("PASS: plant-a would train this spec"), "{out}");
    assert!(out.contains("at least 3 parties"), "{out}");
    let r = run(
        "party-client",
        &[
            "policy",
            "check",
            "--config",
            c,
            "--spec",
            s,
            "--round-parties",
            "2",
        ],
    );
    assert!(!r.status.success());
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.contains("fewer than policy.min_other_parties = 2"),
        "{out}"
    );

    // A changed spec: more epochs and a column the site refuses.
    let changed = dir.path().join("changed.toml");
    let text = std::fs::read_to_string(&spec_path)
        .unwrap()
        .replace("local_epochs = 10 ", "local_epochs = 30 ");
    std::fs::write(&changed, &text).unwrap();
    std::fs::write(
        &config,
        format!(
            "name = \"plant-a\"\n[policy]\napproved_specs = [\"{}\"]\nmax_local_epochs = 20\nrefused_columns = [\"{}\"]\n",
            spec.id(),
            spec.task.features[2]
        ),
    )
    .unwrap();
    let r = run(
        "party-client",
        &[
            "policy",
            "check",
            "--config",
            c,
            "--spec",
            changed.to_str().unwrap(),
        ],
    );
    assert!(!r.status.success());
    let out = String::from_utf8_lossy(&r.stdout);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(out.contains("DECLINE: plant-a would refuse"), "{out}");
    assert!(out.contains("is not approved"), "{out}");
    assert!(
        out.contains("30 local epochs exceed policy.max_local_epochs = 20"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "column `{}` is in policy.refused_columns",
            spec.task.features[2]
        )),
        "{out}"
    );
    assert!(err.contains("(3 reason(s))"), "{err}");

    // A bad policy names its key and the file.
    std::fs::write(&config, "[policy]\nallowed_kinds = [\"images\"]\n").unwrap();
    let r = run(
        "party-client",
        &["policy", "check", "--config", c, "--spec", s],
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("policy.allowed_kinds"),
        "{err}"
    );
    assert!(err.contains("party.toml"), "{err}");

    // The documented example approves the shipped WDBC spec.
    let example = yosegi_tests::root().join("docs/examples/party.toml");
    let out = run_ok(
        "party-client",
        &[
            "policy",
            "check",
            "--config",
            example.to_str().unwrap(),
            "--spec",
            s,
        ],
    );
    assert!(out.contains("PASS"), "{out}");
}

/// `predict --manifest --coordinator-key` uses a model only when its signed manifest verifies,
/// names the spec and names exactly this file.
#[test]
fn predict_checks_the_signed_manifest_when_given_one() {
    use shared_model::manifest::{MANIFEST_FORMAT, Manifest};
    let dir = tempfile::tempdir().unwrap();
    let (spec_path, csv) = (data("wdbc.toml"), data("wdbc.csv"));
    let spec = shared_model::spec::ModelSpec::from_file(&spec_path).unwrap();
    let (spec_s, csv_s) = (spec_path.to_str().unwrap(), csv.to_str().unwrap());
    let model = dir.path().join("m.safetensors");
    run_ok(
        "party-client",
        &[
            "train",
            "--spec",
            spec_s,
            "--data",
            csv_s,
            "--epochs",
            "1",
            "--out",
            model.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(&model).unwrap();
    let key = shared_model::keys::generate().unwrap();
    let pub_path = dir.path().join("coordinator.pub.pem");
    shared_model::keys::write_public(&pub_path, &key.verifying_key()).unwrap();
    let manifest = |blob: &[u8], spec_id| Manifest {
        format: MANIFEST_FORMAT.into(),
        task: shared_model::ids::TaskId::new("wdbc").unwrap(),
        spec_id,
        version: shared_model::ids::ModelVersion(4),
        round: 4,
        strategy: "fedavg".into(),
        blob_sha256: Sha256::of(blob),
        blob_len: blob.len() as u64,
        contributors: vec![],
        metrics: None,
        created_unix_ms: 0,
        expires_unix_ms: 1,
    };
    let mpath = dir.path().join("m.safetensors.manifest.json");
    std::fs::write(
        &mpath,
        manifest(&bytes, spec.id()).sign(&key).to_file_json(),
    )
    .unwrap();
    let out = dir.path().join("p.csv");
    let args = |m: &std::path::Path| {
        vec![
            "predict".to_string(),
            "--spec".into(),
            spec_s.into(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--manifest".into(),
            m.to_str().unwrap().into(),
            "--coordinator-key".into(),
            pub_path.to_str().unwrap().into(),
            "--data".into(),
            csv_s.into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let ok = run(
        "party-client",
        &args(&mpath).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{err}");
    assert!(err.contains("verified: task wdbc version 4"), "{err}");
    assert!(
        err.contains("expired"),
        "an old manifest is reported: {err}"
    );

    let refused = |m: &std::path::Path, want: &str| {
        let r = run(
            "party-client",
            &args(m).iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(want), "{want}: {err}");
    };
    // Another model's manifest, one for another spec, one signed by another key.
    let other = dir.path().join("other.json");
    std::fs::write(
        &other,
        manifest(b"other", spec.id()).sign(&key).to_file_json(),
    )
    .unwrap();
    refused(&other, "is not the model");
    let wrong_spec = shared_model::ids::SpecId(Sha256::of(b"x"));
    std::fs::write(
        &other,
        manifest(&bytes, wrong_spec).sign(&key).to_file_json(),
    )
    .unwrap();
    refused(&other, "not the given spec");
    let stranger = shared_model::keys::generate().unwrap();
    std::fs::write(
        &other,
        manifest(&bytes, spec.id()).sign(&stranger).to_file_json(),
    )
    .unwrap();
    refused(&other, "not signed by the coordinator key");
    // A manifest without a key is a usage error.
    let r = run(
        "party-client",
        &[
            "predict",
            "--spec",
            spec_s,
            "--model",
            model.to_str().unwrap(),
            "--manifest",
            mpath.to_str().unwrap(),
            "--data",
            csv_s,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--coordinator-key"));
}

/// The membership audit before each upload: a plant whose policy insists on a stricter
/// threshold than the task's withholds its update and says why, with only the audit's numbers;
/// the others upload, and the round publishes without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plant_withholds_an_update_that_fails_its_membership_audit() {
    let mut sb = Sandbox::start().await;
    let (spec, _, slices) = wdbc_split(3);
    let text = std::fs::read_to_string(data("wdbc.toml")).unwrap();
    let mut op = sb.operator().await;
    let names = ["plant-a", "plant-b", "plant-c"];
    // plant-b insists on a threshold no trained model meets.
    let policies = ["", "max_membership_advantage = 0.01", ""].map(String::from);
    let files = start_plants(&mut sb, &mut op, &names, &spec, &slices, &policies).await;
    op.create_task("wdbc", &text, &[]).await.unwrap();
    op.start_round("wdbc", "fedavg", Default::default(), 2, 120_000, 1)
        .await
        .unwrap();
    let rounds = sb
        .wait_for("wdbc", Duration::from_secs(120), |rs| {
            rs.len() == 1 && rs[0].is_final()
        })
        .await;
    let r = &rounds[0];
    assert_eq!(r.phase, "published", "{r:?}");
    for p in &r.parties {
        if p.party == "plant-b" {
            assert_eq!(p.state, "declined", "{p:?}");
            for needle in [
                "membership audit: advantage",
                "exceeds the threshold 0.01",
                "AUC",
                "TPR@1%FPR",
                "the upload is refused",
            ] {
                assert!(
                    p.reason.contains(needle),
                    "{needle:?} not in {:?}",
                    p.reason
                );
            }
        } else {
            // The task's threshold (0.45 in data/wdbc.toml) passes an honest model, and the
            // operator sees the audit's numbers beside the accepted update.
            assert_eq!(p.state, "accepted", "{p:?}");
            let audit = p.membership_audit.expect("the audit came with the upload");
            assert!(audit.advantage <= 0.45, "{audit}");
            assert!((0.0..=1.0).contains(&audit.auc), "{audit}");
            assert_eq!(audit.members as u64, p.sample_count, "{audit}");
            assert!(audit.non_members >= 10, "{audit}");
        }
    }
    // The plants that uploaded logged their audit beside the acknowledgement.
    let acks = std::fs::read_to_string(files[0].state_dir.join("acks.log")).unwrap();
    assert!(acks.contains("audit_advantage="), "{acks}");
    assert!(!files[1].state_dir.join("acks.log").exists());
    sb.stop().await;
}

/// A plant whose CSV does not load for the task (a text cell in a feature column) declines the
/// statistics step and the round naming file, line and column — never the cell's value — so
/// the operator sees the plant's problem instead of "late"; the round goes on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plant_whose_data_does_not_load_declines_and_the_operator_sees_where() {
    let mut sb = Sandbox::start().await;
    let (spec, _, slices) = wdbc_split(2);
    let text = std::fs::read_to_string(data("wdbc.toml")).unwrap();
    let mut op = sb.operator().await;
    let mut files = Vec::new();
    for (name, rows) in ["plant-a", "plant-b"].iter().zip(&slices) {
        let f = sb.party_files(name, &spec, rows);
        let key = shared_model::keys::read_public(&f.public_key).unwrap();
        op.enroll(name, &key).await.unwrap();
        files.push(f);
    }
    // plant-b's line 7: its first column holds text.
    let csv = std::fs::read_to_string(&files[1].data).unwrap();
    let mut lines: Vec<String> = csv.lines().map(str::to_string).collect();
    let column = lines[0].split(',').next().unwrap().to_string();
    let rest = lines[6].split_once(',').unwrap().1.to_string();
    lines[6] = format!("ACME lot 4411,{rest}");
    std::fs::write(&files[1].data, lines.join("\n") + "\n").unwrap();
    let pinned = sb.coordinator_pub();
    for f in &files {
        sb.start_party(f, &pinned);
    }
    op.create_task("wdbc", &text, &[]).await.unwrap();
    op.start_round("wdbc", "fedavg", Default::default(), 1, 60_000, 1)
        .await
        .unwrap();
    let rounds = sb
        .wait_for("wdbc", Duration::from_secs(120), |rs| {
            rs.len() == 1
                && rs[0].phase == "published"
                && rs[0].parties.iter().any(|p| p.party == "plant-b")
        })
        .await;
    let want = format!("data.csv: line 7: column {column:?}: not a number");
    let b = rounds[0]
        .parties
        .iter()
        .find(|p| p.party == "plant-b")
        .unwrap();
    assert_eq!(b.state, "declined", "{:?}", rounds[0]);
    assert!(b.reason.contains(&want), "{:?} lacks {want:?}", b.reason);
    let (_, declines) = op.status_with_declines("wdbc").await.unwrap();
    let stats = declines
        .iter()
        .find(|d| d.party == "plant-b" && d.assignment == "wdbc/stats/0")
        .unwrap_or_else(|| panic!("no statistics decline: {declines:?}"));
    assert!(stats.reason.contains(&want), "{stats:?}");
    for reason in [&b.reason, &stats.reason] {
        assert!(
            !reason.contains("ACME"),
            "a cell's value reached the coordinator: {reason}"
        );
        assert!(
            !reason.contains(&*sb.dir.path().to_string_lossy()),
            "{reason}"
        );
    }
    let (manifest, _, _) = op.pull("wdbc", 0, &sb.coordinator_key).await.unwrap();
    assert_eq!(manifest.contributors.len(), 1);
    sb.stop().await;
}
