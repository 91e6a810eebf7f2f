//! A regression target far from unit scale, standardised with federated sums.

use crate::blob::BlobRole;
use crate::data::Dataset;
use crate::eval::{Metrics, evaluate};
use crate::model::Model;
use crate::network::CpuBackend;
use crate::spec::ModelSpec;
use crate::stats::FeatureSums;
use crate::train::{TrainOptions, train};
use crate::weights::Weights;

const SPEC: &str = r#"
format = 1
name = "yield"
[task]
kind = "regression"
target = "kg"
features = ["a", "b", "c"]
standardize_target = true
[model]
hidden = [8]
[training]
learning_rate = 0.01
local_epochs = 20
batch_size = 16
seed = 5
"#;

/// y = 180 + 60·a − 40·b·c + noise: a target around 180 kg, range ~25–350.
fn rows(n: usize, seed: u64) -> Dataset {
    let mut d = Dataset::empty(3);
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    for _ in 0..n {
        let (a, b, c) = (next(), next(), next());
        d.features.extend([a, b, c]);
        d.targets
            .push(180.0 + 60.0 * a - 40.0 * b * c + 5.0 * next());
    }
    d
}

fn r2(spec: &ModelSpec, w: &Weights, test: &Dataset) -> f64 {
    match evaluate(spec, w, test, CpuBackend::default()) {
        Metrics::Regression(m) => m.r2,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_standardised_target_is_learned_in_its_units_where_the_raw_one_is_not() {
    let scaled = ModelSpec::parse(SPEC, "<t>").unwrap();
    let raw = ModelSpec::parse(&SPEC.replace("standardize_target = true\n", ""), "<t>").unwrap();
    assert_ne!(scaled.id(), raw.id(), "the key is part of the meaning");
    assert_eq!(
        ModelSpec::parse(&scaled.to_toml(), "<again>").unwrap(),
        scaled
    );
    let names: Vec<String> = scaled.tensors().into_iter().map(|t| t.name).collect();
    assert_eq!(
        &names[..4],
        ["norm.mean", "norm.std", "target.mean", "target.std"]
    );
    assert_eq!(scaled.parameter_count(), raw.parameter_count());

    // Three plants' sums merged are the pooled target statistics.
    let plants = [rows(120, 1), rows(90, 2), rows(150, 3)];
    let mut merged = FeatureSums::zeros(scaled.stats_width());
    for p in &plants {
        merged.merge(&FeatureSums::of_dataset(&scaled, p)).unwrap();
    }
    let pooled = Dataset::concat(&plants);
    let norm = merged.normalization_for(&scaled).unwrap();
    let t = norm.target.expect("the target's scale");
    let n = pooled.len() as f64;
    let mean = pooled.targets.iter().map(|&y| f64::from(y)).sum::<f64>() / n;
    let var = pooled
        .targets
        .iter()
        .map(|&y| (f64::from(y) - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!((f64::from(t.mean) - mean).abs() < 1e-3, "{t:?} vs {mean}");
    assert!(
        (f64::from(t.std) - var.sqrt()).abs() < 1e-3,
        "{t:?} vs {}",
        var.sqrt()
    );
    // sums without the target column are refused for a spec that standardises it
    let features_only = FeatureSums::of_rows(&pooled.features, 3);
    assert!(features_only.normalization_for(&scaled).is_err());

    let test = rows(200, 9);
    let opts = TrainOptions::from_spec(&scaled, 5);
    let w = train(&scaled, &Weights::initial(&scaled, &norm), &pooled, &opts)
        .unwrap()
        .weights;
    let raw_norm = FeatureSums::of_dataset(&raw, &pooled)
        .normalization_for(&raw)
        .unwrap();
    let w_raw = train(&raw, &Weights::initial(&raw, &raw_norm), &pooled, &opts)
        .unwrap()
        .weights;
    let (good, bad) = (r2(&scaled, &w, &test), r2(&raw, &w_raw, &test));
    assert!(good > 0.8, "R² {good} with the target standardised");
    assert!(bad < good - 0.3, "R² {bad} unscaled vs {good} scaled");

    // The blob carries the scale; decoded, it predicts in kilograms.
    let bytes = Model::Single(w.clone()).encode(&scaled, BlobRole::Merged);
    let back = Model::decode(&bytes, &scaled, BlobRole::Merged).unwrap();
    let preds = back.predict(&scaled, &test.features, CpuBackend::default());
    let mean_pred = preds.iter().map(|&p| f64::from(p)).sum::<f64>() / preds.len() as f64;
    assert!(
        (120.0..240.0).contains(&mean_pred),
        "mean prediction {mean_pred} kg"
    );
    // a blob whose target scale is not positive is refused
    let mut tensors = w.tensors().to_vec();
    tensors[3].data[0] = 0.0;
    assert!(Weights::from_tensors(&scaled.tensors(), tensors).is_err());
}

#[test]
fn only_a_regression_target_is_standardised() {
    let binary = SPEC.replace("kind = \"regression\"", "kind = \"binary\"");
    let e = ModelSpec::parse(&binary, "<t>").unwrap_err().to_string();
    assert!(
        e.contains("task.standardize_target") && e.contains("only a regression"),
        "{e}"
    );
}
