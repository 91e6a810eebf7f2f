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
        err.contains("line 1: no column named \"diagnosis\""),
        "{err}"
    );
}
