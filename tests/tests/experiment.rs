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
        discover: false,
        parties: 5,
        partition: "iid".into(),
        strategies: "fedavg,median,trimmed-mean,krum,multi-krum".into(),
        rounds: 2,
        seeds: 2,
        sweep: vec![],
        attackers,
        attack: "sign-flip:10".into(),
        synthetic_rows: 0,
        min_parties: None,
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

/// The simulator runs each plant's membership gate as a live daemon does: plants whose
/// network learns its rows by heart (labels that are noise, many epochs) withhold their
/// updates, the round fails naming the audit, and the run is still written, marked failed.
#[test]
fn the_experiment_runs_the_plants_membership_gate() {
    let dir = tempfile::tempdir().unwrap();
    // WDBC's rows with labels that have nothing to do with the features.
    let text = std::fs::read_to_string(yosegi_tests::data("wdbc.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let target = header.split(',').position(|c| c == "malignant").unwrap();
    let mut csv = format!("{header}\n");
    for (i, line) in lines.enumerate() {
        let mut cells: Vec<String> = line.split(',').map(str::to_string).collect();
        cells[target] = (((i * 2_654_435_761) >> 9) & 1).to_string();
        csv += &(cells.join(",") + "\n");
    }
    let data = dir.path().join("noise.csv");
    std::fs::write(&data, csv).unwrap();
    let spec = std::fs::read_to_string(yosegi_tests::data("wdbc.toml"))
        .unwrap()
        .replace("hidden = [16, 8]", "hidden = [64, 32]")
        .replacen("local_epochs = ", "local_epochs = 100 # ", 1);
    let spec_path = dir.path().join("noise.toml");
    std::fs::write(&spec_path, spec).unwrap();
    let mut a = args(&dir.path().join("out"), 0);
    a.data = data.to_string_lossy().into_owned();
    a.spec = Some(spec_path);
    a.parties = 3;
    a.rounds = 1;
    a.seeds = 1;
    a.strategies = "fedavg,ensemble".into();
    let records = run(&a).unwrap();
    for name in ["fedavg", "ensemble"] {
        let r = records.iter().find(|r| r.name == name).unwrap();
        let why = r
            .failed
            .as_deref()
            .unwrap_or_else(|| panic!("{name} passed the gate"));
        assert!(
            why.contains("round 1 failed") && why.contains("membership audit"),
            "{name}: {why}"
        );
    }
    let readme = std::fs::read_to_string(dir.path().join("out/README.md")).unwrap();
    assert!(readme.contains("✗ failed in 1 of 1 runs"), "{readme}");
    assert!(readme.contains("memorises its training rows"), "{readme}");
}
