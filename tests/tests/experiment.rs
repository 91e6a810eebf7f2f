//! `coordinator experiment`: the offline simulator runs the same training, strategies and
//! update verification as a live round, and its numbers answer questions a live demo cannot —
//! here, what one poisoning party among five does to each merge.

use coordinator::experiment::{ExperimentArgs, Record, run};
use yosegi_tests::run_ok;

fn args(out: &std::path::Path, attackers: usize) -> ExperimentArgs {
    ExperimentArgs {
        data: yosegi_tests::data("wdbc.csv")
            .to_string_lossy()
            .into_owned(),
        spec: Some(yosegi_tests::data("wdbc.toml")),
        target: None,
        kind: None,
        parties: 5,
        partition: "iid".into(),
        strategies: "fedavg,median,trimmed-mean,krum,multi-krum".into(),
        rounds: 2,
        seeds: 2,
        sweep: vec![],
        attackers,
        attack: "sign-flip:10".into(),
        synthetic_rows: 0,
        out: out.to_path_buf(),
    }
}

fn mean_f1(records: &[Record], name: &str) -> f64 {
    let v: Vec<f64> = records
        .iter()
        .filter(|r| r.name == name)
        .map(|r| r.metrics.binary().unwrap().f1)
        .collect();
    assert!(!v.is_empty(), "no records of {name}");
    v.iter().sum::<f64>() / v.len() as f64
}

/// One of five plants uploads sign-flipped, ×10 scaled updates (base − 10·(trained − base)),
/// every round. FedAvg is dragged far off; the median, the trimmed mean and (Multi-)Krum stay
/// within 0.05 F1 of the honest FedAvg result.
#[test]
fn one_poisoning_party_in_five_breaks_fedavg_but_not_the_robust_merges() {
    let dir = tempfile::tempdir().unwrap();
    let honest = run(&args(&dir.path().join("honest"), 0)).unwrap();
    let attacked = run(&args(&dir.path().join("attacked"), 1)).unwrap();
    let reference = mean_f1(&honest, "fedavg");
    assert!(reference >= 0.93, "honest FedAvg F1 {reference}");
    let poisoned = mean_f1(&attacked, "fedavg");
    assert!(
        poisoned < reference - 0.2,
        "FedAvg under attack F1 {poisoned} vs honest {reference}"
    );
    for name in ["median", "trimmed-mean", "krum", "multi-krum"] {
        let f1 = mean_f1(&attacked, name);
        assert!(
            f1 >= reference - 0.05,
            "{name} under attack F1 {f1} vs honest FedAvg {reference}"
        );
    }
    assert!(
        attacked
            .iter()
            .all(|r| r.name.ends_with("-only") || r.name == "data-sharing" || r.attackers == 1)
    );
}

/// The command writes every record, the CSV, the Markdown table and the plots of a sweep.
#[test]
fn the_experiment_command_writes_results_table_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exp");
    let printed = run_ok(
        "coordinator",
        &[
            "experiment",
            "--data",
            "synthetic",
            "--synthetic-rows",
            "600",
            "--rounds",
            "2",
            "--seeds",
            "2",
            "--strategies",
            "fedavg,ensemble,series",
            "--sweep",
            "parties=2,3",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        printed.contains("| parties | partition | rounds | strategy |"),
        "{printed}"
    );
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    // 2 grid points × 2 seeds × (3 strategies + 2 baselines)
    assert_eq!(records.len(), 20);
    for r in &records {
        assert_eq!(r["metric"], "mse");
        assert!(r["metrics"]["mse"].as_f64().unwrap().is_finite());
    }
    let series = records.iter().find(|r| r["name"] == "series").unwrap();
    assert_eq!(series["per_round"].as_array().unwrap().len(), 2);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 21);
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("± "), "{readme}");
    for plot in [
        "metric-by-strategy.svg",
        "metric-by-round.svg",
        "metric-vs-parties.svg",
    ] {
        let svg = std::fs::read_to_string(out.join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("mse"), "{plot}");
        assert!(readme.contains(plot), "{plot} linked");
    }
    // A bad axis is named.
    let bad = yosegi_tests::run(
        "coordinator",
        &["experiment", "--data", "synthetic", "--sweep", "colour=red"],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--sweep colour: unknown axis"));
}
