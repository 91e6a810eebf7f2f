//! The binaries as a user runs them.

use yosegi_tests::{data, run, run_ok};

#[test]
fn both_binaries_print_help() {
    let c = run_ok("coordinator", &["--help"]);
    assert!(c.contains("Usage: coordinator"), "{c}");
    assert!(c.contains("spec"), "{c}");
    let p = run_ok("party-client", &["--help"]);
    assert!(p.contains("Usage: party-client"), "{p}");
    assert!(p.contains("keygen") && p.contains("train"), "{p}");
}

#[test]
fn spec_id_is_stable_and_matches_the_library() {
    let path = data("wdbc.toml");
    let printed = run_ok("coordinator", &["spec", "id", path.to_str().unwrap()]);
    let spec = shared_model::spec::ModelSpec::from_file(&path).unwrap();
    assert_eq!(printed.trim(), spec.id().to_string());
    let shown = run_ok(
        "coordinator",
        &["spec", "show", "--json", path.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["parameters"], 30 * 16 + 16 + 16 * 8 + 8 + 8 + 1);
    assert_eq!(v["tensors"][2]["name"], "layers.0.weight");
}

#[test]
fn a_bad_spec_fails_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(data("wdbc.toml"))
        .unwrap()
        .replace("learning_rate = 0.005", "learning_rate = 0");
    std::fs::write(&bad, text).unwrap();
    let out = run("coordinator", &["spec", "id", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("`training.learning_rate`"),
        "{err}"
    );
}

#[test]
fn keygen_writes_a_private_key_only_the_owner_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let printed = run_ok("party-client", &["keygen", "--out", out.to_str().unwrap()]);
    assert!(printed.contains("fingerprint"), "{printed}");
    let sk = shared_model::keys::read_private(&out.join("party.key.pem")).unwrap();
    let pk = shared_model::keys::read_public(&out.join("party.pub.pem")).unwrap();
    assert_eq!(sk.verifying_key(), pk);
    // a second keygen refuses to overwrite
    let again = run("party-client", &["keygen", "--out", out.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
}

#[test]
fn local_training_on_wdbc_reports_holdout_metrics_and_writes_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("local.safetensors");
    let spec = data("wdbc.toml");
    let csv = data("wdbc.csv");
    let printed = run_ok(
        "party-client",
        &[
            "train",
            "--spec",
            spec.to_str().unwrap(),
            "--data",
            csv.to_str().unwrap(),
            "--epochs",
            "20",
            "--out",
            blob.to_str().unwrap(),
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(v["holdout"]["kind"], "binary");
    assert!(v["holdout"]["f1"].as_f64().unwrap() > 0.9, "{v}");
    let rows = &v["rows"];
    assert_eq!(
        rows["train"].as_u64().unwrap()
            + rows["validation"].as_u64().unwrap()
            + rows["holdout"].as_u64().unwrap(),
        569
    );
    let spec = shared_model::spec::ModelSpec::from_file(&spec).unwrap();
    let bytes = std::fs::read(&blob).unwrap();
    shared_model::blob::decode(&bytes, &spec, shared_model::blob::BlobRole::Update).unwrap();
}

#[test]
fn a_bad_csv_fails_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("site.csv");
    let mut text = std::fs::read_to_string(data("wdbc.csv")).unwrap();
    text = text.replacen("17.99,10.38", "17.99,ten", 1);
    std::fs::write(&csv, text).unwrap();
    let out = run(
        "party-client",
        &[
            "train",
            "--spec",
            data("wdbc.toml").to_str().unwrap(),
            "--data",
            csv.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("site.csv: line 2: column \"mean_texture\": expected a number, found \"ten\""),
        "{err}"
    );
}

#[test]
fn the_demo_runs_a_federation_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let printed = run_ok(
        "coordinator",
        &[
            "demo",
            "--parties",
            "3",
            "--rounds",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    // Every strategy's row (named with its options), then both baselines.
    for name in shared_model::strategy::NAMES {
        let row = format!("| {name}");
        assert!(printed.contains(&row), "missing {row:?} in:\n{printed}");
    }
    for row in ["| fedavg | 2 |", "| local-only", "| data-sharing"] {
        assert!(printed.contains(row), "missing {row:?} in:\n{printed}");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = results.as_array().unwrap();
    assert_eq!(rows.len(), shared_model::strategy::NAMES.len() + 2);
    let f1 = |name: &str| {
        rows.iter()
            .find(|r| r["name"].as_str().unwrap().starts_with(name))
            .unwrap()["metrics"]["f1"]
            .as_f64()
            .unwrap()
    };
    let best = shared_model::strategy::NAMES
        .iter()
        .map(|n| f1(n))
        .fold(0.0, f64::max);
    assert!(
        best >= f1("data-sharing") - 0.05,
        "best merged F1 {best} vs data-sharing {}",
        f1("data-sharing")
    );
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("| strategy |"));
    assert!(readme.contains("metric-by-strategy.svg"));
    let svg = std::fs::read_to_string(out.join("metric-by-strategy.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("f1 per strategy"));
}

/// Without a spec, a CSV and its target column are enough: the spec is derived (every other
/// column a feature; binary because the target holds 0 and 1), and a wrong column is named.
#[test]
fn experiments_derive_a_spec_from_the_target_column() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exp");
    let csv = data("wdbc.csv");
    let csv = csv.to_str().unwrap();
    let printed = run_ok(
        "coordinator",
        &[
            "experiment",
            "--data",
            csv,
            "--target",
            "malignant",
            "--strategies",
            "fedavg",
            "--rounds",
            "1",
            "--seeds",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(printed.contains("| f1 |"), "{printed}");
    // The derived spec made a binary task over the other 30 columns, and it learned.
    let records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let fedavg = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "fedavg")
        .expect("a fedavg record");
    assert_eq!(fedavg["metrics"]["kind"], "binary", "{fedavg}");
    assert_eq!(fedavg["rounds"], 1);
    let f1 = fedavg["metrics"]["f1"].as_f64().unwrap();
    assert!(f1 > 0.85, "F1 {f1} on a derived spec of WDBC");
    let bad = yosegi_tests::run(
        "coordinator",
        &[
            "experiment",
            "--data",
            csv,
            "--target",
            "diagnosis",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("line 1: column \"diagnosis\" is missing from the header"),
        "{err}"
    );
}

/// `party-client predict` writes one prediction per row, which agree with `party-client evaluate`
/// on the same labelled rows; the id column is carried over and a bad row is named by line.
#[test]
fn predict_at_the_plant_matches_its_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let (spec_path, csv) = (data("wdbc.toml"), data("wdbc.csv"));
    let (spec_s, csv_s) = (spec_path.to_str().unwrap(), csv.to_str().unwrap());
    let model = dir.path().join("local.safetensors");
    run_ok(
        "party-client",
        &[
            "train",
            "--spec",
            spec_s,
            "--data",
            csv_s,
            "--epochs",
            "3",
            "--out",
            model.to_str().unwrap(),
        ],
    );
    let out = dir.path().join("predictions.csv");
    let printed = run_ok(
        "party-client",
        &[
            "predict",
            "--spec",
            spec_s,
            "--model",
            model.to_str().unwrap(),
            "--data",
            csv_s,
            "--id-column",
            "malignant",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        printed.contains("569 rows predicted with a single model"),
        "{printed}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("malignant,predicted_class,probability,probability_1")
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 569);
    let correct = rows.iter().filter(|r| r[0] == r[1]).count();
    for r in &rows {
        assert!(
            (0.5..=1.0).contains(&r[2]),
            "probability of the predicted class: {r:?}"
        );
        assert_eq!(r[1] == 1.0, r[3] >= 0.5);
    }
    let eval: serde_json::Value = serde_json::from_str(&run_ok(
        "party-client",
        &[
            "evaluate",
            "--spec",
            spec_s,
            "--model",
            model.to_str().unwrap(),
            "--data",
            csv_s,
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(eval["count"], 569);
    let accuracy = eval["accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - correct as f64 / 569.0).abs() < 1e-12,
        "{accuracy} vs {correct}/569"
    );

    // A bad row stops the run with its line and column.
    let bad = dir.path().join("bad.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text = text.replacen("\n1", "\nx", 1);
    std::fs::write(&bad, text).unwrap();
    let r = run(
        "party-client",
        &[
            "predict",
            "--spec",
            spec_s,
            "--model",
            model.to_str().unwrap(),
            "--data",
            bad.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("bad.csv: line "), "{err}");
}

/// Ensemble and series models predict at the plant exactly as the library does.
#[test]
fn predict_works_for_ensembles_and_series() {
    use shared_model::blob::BlobRole;
    use shared_model::data::load_csv;
    use shared_model::model::{Member, Model, stage_spec};
    use shared_model::network::CpuBackend;
    use shared_model::spec::ModelSpec;
    use shared_model::stats::FeatureSums;
    use shared_model::weights::Weights;

    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::from_file(&data("wdbc.toml")).unwrap();
    let rows = load_csv(&data("wdbc.csv"), &spec).unwrap();
    let norm = FeatureSums::of_rows(&rows.features, spec.input_width())
        .normalization()
        .unwrap();
    let a = Weights::initial(&spec, &norm);
    let b = a
        .map_trainable(|t| t.data.iter().map(|v| v * 0.5 + 0.01).collect())
        .unwrap();
    let mut stage_norm = norm.clone();
    stage_norm.mean.push(0.5);
    stage_norm.std.push(0.25);
    let s1 = Weights::initial(&stage_spec(&spec, 1), &stage_norm);
    let models = [
        Model::Ensemble(vec![
            Member {
                party: "plant-a".into(),
                weight: 100.0,
                weights: a.clone(),
            },
            Member {
                party: "plant-b".into(),
                weight: 50.0,
                weights: b,
            },
        ]),
        Model::Series(vec![a, s1]),
    ];
    for m in &models {
        let path = dir.path().join(format!("{}.safetensors", m.kind()));
        std::fs::write(&path, m.encode(&spec, BlobRole::Merged)).unwrap();
        let out = dir.path().join(format!("{}.csv", m.kind()));
        let printed = run_ok(
            "party-client",
            &[
                "predict",
                "--spec",
                data("wdbc.toml").to_str().unwrap(),
                "--model",
                path.to_str().unwrap(),
                "--data",
                data("wdbc.csv").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(
            printed.contains(&format!("with a {} model", m.kind())),
            "{printed}"
        );
        let want = m.predict(&spec, &rows.features, CpuBackend::default());
        let got: Vec<f32> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(got, want, "{}", m.kind());
    }
}

/// `… | head` closes the pipe early: a command ends quietly (status 141, as a Unix tool killed
/// by SIGPIPE, or 0 if its output fitted before the close), never with a panic or an error line.
#[test]
fn a_closed_pipe_ends_commands_quietly() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("c");
    run_ok(
        "coordinator",
        &["init", "--data-dir", data_dir.to_str().unwrap()],
    );
    let spec = data("wdbc.toml");
    let cases: [&[&str]; 2] = [
        // println! into a closed pipe (the table of a spec)
        &["spec", "show", spec.to_str().unwrap()],
        // a writer's io error (the governance log table)
        &["audit", "show", "--data-dir", data_dir.to_str().unwrap()],
    ];
    for args in cases {
        let mut child = Command::new(yosegi_tests::bin("coordinator"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away at once
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 141)),
            "{args:?}: {:?}\n{stderr}",
            out.status
        );
        assert!(
            !stderr.contains("panicked")
                && !stderr.contains("Broken pipe")
                && !stderr.contains("error"),
            "{args:?}: {stderr}"
        );
    }
}
