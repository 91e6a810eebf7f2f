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
        warned.contains("values of \"line\" outside its categories counted as \"other\""),
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

/// Vocabularies found in the statistics step: `spec init --discover` writes no name into the
/// spec; three real daemons report how many of their rows hold each name, except one whose
/// policy withholds names; the coordinator keeps the names common enough across the plants
/// that shared them and publishes them in every model; the plants train with them, and
/// `predict` with the declared spec and the pulled model writes predictions, counting a name
/// outside the vocabulary as "other".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vocabularies_found_in_the_statistics_step_reach_every_model_and_predict() {
    use shared_model::plantdata::{PlantData, Target};
    use std::collections::BTreeMap;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let data = PlantData::default();
    let text = data.csv(Target::Grade);
    std::fs::write(p("plant.csv"), &text).unwrap();
    let init = run(
        "coordinator",
        &[
            "spec",
            "init",
            "--data",
            &p("plant.csv"),
            "--target",
            "grade",
            "--discover",
            "--out",
            &p("plant.toml"),
        ],
    );
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let inferred = std::fs::read_to_string(p("plant.toml")).unwrap();
    assert!(
        !inferred.contains("ACME") && inferred.contains("discover = "),
        "{inferred}"
    );
    // and the temperature's blanks filled with the federated median
    let mean_fill = "[task.columns.\"temp_c\"]\nmissing = \"mean\"";
    assert!(inferred.contains(mean_fill), "{inferred}");
    let spec_text = inferred.replacen(
        mean_fill,
        "[task.columns.\"temp_c\"]\nmissing = \"median\"",
        1,
    );
    std::fs::write(p("plant.toml"), &spec_text).unwrap();
    let spec = shared_model::spec::ModelSpec::parse(&spec_text, "plant.toml").unwrap();

    // Each site's rows as its export writes them; plant-a alone buys from "ONLY-A" and
    // plant-c alone from "SECRET-C", which its policy keeps to itself.
    let (header, body) = text.split_once('\n').unwrap();
    let mut sites = vec![header.to_string(); data.sites];
    for (line, (row, _)) in body.lines().zip(data.rows()) {
        let line = match row.site {
            0 if row.supplier == 0 => line.replacen(",ACME,", ",ONLY-A,", 1),
            2 if row.supplier == 0 => line.replacen(",ACME,", ",SECRET-C,", 1),
            _ => line.to_string(),
        };
        sites[row.site] += &format!("\n{line}");
    }
    assert!(sites[0].contains("ONLY-A") && sites[2].contains("SECRET-C"));
    let mut sb = yosegi_tests::sandbox::Sandbox::start().await;
    let mut op = sb.operator().await;
    let names = ["plant-a", "plant-b", "plant-c"];
    // key files and a placeholder CSV, replaced by the site's export
    let placeholder = shared_model::synthetic::spec(5).unwrap();
    let empty = shared_model::data::Dataset::empty(5);
    let pinned = sb.coordinator_pub();
    let mut files = Vec::new();
    for (name, csv) in names.iter().zip(&sites) {
        let f = sb.party_files(name, &placeholder, &empty);
        std::fs::write(&f.data, csv).unwrap();
        let key = shared_model::keys::read_public(&f.public_key).unwrap();
        op.enroll(name, &key).await.unwrap();
        files.push(f);
    }
    for (i, f) in files.iter().enumerate() {
        let policy = if i == 2 {
            "share_category_names = false"
        } else {
            ""
        };
        sb.start_party_with_policy(f, &pinned, toml::from_str(policy).unwrap());
    }
    op.create_task("plant", &spec_text, &[]).await.unwrap();
    op.start_round("plant", "fedavg", Default::default(), 3, 120_000, 2)
        .await
        .unwrap();
    let rounds = sb
        .wait_for("plant", Duration::from_secs(240), |rs| {
            rs.len() == 2 && rs.iter().all(|r| r.phase == "published")
        })
        .await;
    assert_eq!(rounds[1].version, 2);
    let (manifest, bytes, signed) = op.pull("plant", 0, &sb.coordinator_key).await.unwrap();
    assert_eq!(manifest.contributors.len(), 3, "every plant trained");
    let found: BTreeMap<String, Vec<String>> =
        shared_model::blob::read_vocabularies(&bytes, shared_model::model::model_limits(&spec))
            .unwrap()
            .expect("the model carries the vocabularies");
    let suppliers = &found["supplier"];
    assert!(suppliers.contains(&"ONLY-A".to_string()), "{found:?}");
    assert!(
        !suppliers.contains(&"SECRET-C".to_string()),
        "a withheld name is never learned: {found:?}"
    );
    assert_eq!(found["shift"].len(), 3, "{found:?}");
    let medians =
        shared_model::blob::read_medians(&bytes, shared_model::model::model_limits(&spec))
            .unwrap()
            .expect("the model carries the median");
    let mut temps: Vec<f64> = data.rows().iter().map(|(r, _)| r.temp_c).collect();
    temps.sort_by(f64::total_cmp);
    let pooled = temps[temps.len() / 2];
    // of the plants' training rows (70 %), to the grid's 1 %: close to every row's median
    assert!(
        (medians["temp_c"] - pooled).abs() < 0.03 * pooled.abs(),
        "{medians:?} vs pooled {pooled}"
    );
    std::fs::copy(&pinned, p("coordinator.pub")).unwrap();
    sb.stop().await;

    // At a plant: the declared spec and the pulled, verified model.
    std::fs::write(p("model.safetensors"), &bytes).unwrap();
    std::fs::write(p("model.manifest.json"), signed.to_file_json()).unwrap();
    std::fs::write(
        p("new.csv"),
        "batch_id,line,product,supplier,shift,temp_c,pressure_bar,speed_mpm,humidity_pct\n\
         N1,L2,B-200,ONLY-A,early,201.5,6.9,41.0,48\n\
         N2,L2,B-200,SECRET-C,night,,,35.0,NA\n",
    )
    .unwrap();
    let out = run(
        "party-client",
        &[
            "predict",
            "--spec",
            &p("plant.toml"),
            "--model",
            &p("model.safetensors"),
            "--manifest",
            &p("model.manifest.json"),
            "--coordinator-key",
            &p("coordinator.pub"),
            "--data",
            &p("new.csv"),
            "--id-column",
            "batch_id",
            "--out",
            &p("pred.csv"),
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("1 values of \"supplier\" outside its categories counted as \"other\""),
        "{said}"
    );
    let pred = std::fs::read_to_string(p("pred.csv")).unwrap();
    assert_eq!(pred.lines().count(), 3, "{pred}");
    assert!(pred.lines().skip(1).all(|l| {
        ["ok", "rework", "scrap"]
            .iter()
            .any(|c| l.split(',').nth(1) == Some(c))
    }));
}
