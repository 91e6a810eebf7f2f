//! A plant's export as it comes from its MES — text columns, sensor blanks, an identifier and
//! a target of names — from `spec init` through a federation of real daemons to predictions
//! that name the classes.

use yosegi_tests::{run, run_ok};

#[test]
fn a_plant_export_runs_from_spec_init_through_a_federation_to_named_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let csv = p("plant.csv");
    run_ok(
        "coordinator",
        &[
            "data", "synth", "--kind", "plant", "--target", "grade", "--out", &csv,
        ],
    );
    let spec_path = p("plant.toml");
    let init_args = [
        "spec", "init", "--data", &csv, "--target", "grade", "--out", &spec_path,
    ];
    let init = run("coordinator", &init_args);
    assert!(init.status.success());
    let said = String::from_utf8_lossy(&init.stderr);
    for want in [
        "\"batch_id\": more than 50 distinct names, like an identifier → left out",
        "\"line\": 4 names → categorical",
        "\"temp_c\": numbers, ",
        "3 names → multiclass with classes [\"ok\", \"rework\", \"scrap\"]",
    ] {
        assert!(said.contains(want), "missing {want:?} in:\n{said}");
    }
    // spec init does not overwrite
    let again = run("coordinator", &init_args);
    assert!(!again.status.success());
    let shown = run_ok("coordinator", &["spec", "show", &p("plant.toml")]);
    assert!(shown.contains("classes      ok, rework, scrap"), "{shown}");

    // Three plant daemons train it over gRPC: each loads its own rows with blanks and names.
    let printed = run_ok(
        "coordinator",
        &[
            "demo",
            "--data",
            &csv,
            "--spec",
            &p("plant.toml"),
            "--strategy",
            "fedavg",
            "--parties",
            "3",
            "--rounds",
            "3",
            "--out",
            &p("report"),
        ],
    );
    assert!(printed.contains("| fedavg | 3 |"), "{printed}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("report/results.json")).unwrap()).unwrap();
    let f1 = |name: &str| {
        results
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"].as_str().unwrap().starts_with(name))
            .unwrap()["metrics"]["macro_f1"]
            .as_f64()
            .unwrap()
    };
    // three classes: chance is about 0.33; the federation learns from names and blanks, and
    // beats a plant alone
    assert!(f1("fedavg") > 0.5, "fedavg macro-F1 {}", f1("fedavg"));
    assert!(
        f1("fedavg") > f1("local-only"),
        "fedavg {} vs local-only {}",
        f1("fedavg"),
        f1("local-only")
    );
    assert!(
        f1("data-sharing") > 0.5,
        "data-sharing macro-F1 {}",
        f1("data-sharing")
    );

    // At a plant: predictions name the classes and give each one's probability.
    let model = p("local.safetensors");
    run_ok(
        "party-client",
        &[
            "train",
            "--spec",
            &p("plant.toml"),
            "--data",
            &csv,
            "--epochs",
            "3",
            "--out",
            &model,
        ],
    );
    let rows = p("new.csv");
    std::fs::write(
        &rows,
        "batch_id,line,product,supplier,shift,temp_c,pressure_bar,speed_mpm,humidity_pct\n\
         N1,L2,B-200,ACME,early,201.5,6.9,41.0,48\n\
         N2,L9,Z-999,ACME,night,,,35.0,NA\n",
    )
    .unwrap();
    let out = run(
        "party-client",
        &[
            "predict",
            "--spec",
            &p("plant.toml"),
            "--model",
            &model,
            "--data",
            &rows,
            "--id-column",
            "batch_id",
            "--out",
            &p("pred.csv"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains("values of \"line\" outside its declared categories counted as \"other\""),
        "{warned}"
    );
    let text = std::fs::read_to_string(p("pred.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            "batch_id,predicted_class,probability,probability_ok,probability_rework,probability_scrap"
        )
    );
    for l in lines {
        let cells: Vec<&str> = l.split(',').collect();
        assert!(["ok", "rework", "scrap"].contains(&cells[1]), "{l}");
        let probs: Vec<f64> = cells[3..].iter().map(|v| v.parse().unwrap()).collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{l}");
        assert!(
            probs
                .iter()
                .any(|&q| (q - cells[2].parse::<f64>().unwrap()).abs() < 1e-6)
        );
    }
}

/// A yield in kilograms (~150–330) at the demo's defaults: the inferred spec standardises the
/// target with federated sums, so every strategy predicts better than the mean — before, every
/// broadcast strategy scored R² < 0 on such a target.
#[test]
fn a_yield_far_from_unit_scale_is_learned_at_the_demo_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let printed = run_ok(
        "coordinator",
        &[
            "demo",
            "--data",
            "plant",
            "--target",
            "yield_kg",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        !printed.contains("FAILED") && !printed.contains("R² < 0"),
        "{printed}"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    for r in results.as_array().unwrap() {
        let r2 = r["metrics"]["r2"].as_f64().unwrap();
        let name = r["name"].as_str().unwrap();
        // the series is weaker on small plants (docs/RESULTS.md), but not worse than the mean
        let floor = if name.starts_with("series") { 0.0 } else { 0.4 };
        assert!(r2 > floor, "{name}: R² {r2}\n{printed}");
    }
}
