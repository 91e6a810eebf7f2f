//! Contribution limits in the live engine: a plant lying in its sample count and its feature
//! sums weighs at most its share, or the operator's cap; sums outside the declared feature
//! ranges are refused and shown to the operator.

use super::fixture::*;
use super::*;

/// The attacker's sums: 10^12 rows (under the 2^40 cap), every value 1000.
fn lying_sums() -> FeatureSums {
    let n = 1_000_000_000_000u64;
    FeatureSums {
        count: n,
        sum: vec![1000.0 * n as f64; 2],
        sum_sq: vec![1_000_000.0 * n as f64; 2],
        present: Vec::new(),
        categories: Default::default(),
        histograms: Default::default(),
    }
}

fn sums_for(i: usize) -> FeatureSums {
    if i == 2 { lying_sums() } else { sums() }
}

/// Runs one FedAvg round where plant-2 claims 10^12 samples for constant weights 5.0; returns
/// the initial model's feature means, the merged trainable values of the first tensor beside
/// the base's, and the weights the manifest names.
fn attacked_round(f: &mut Fixture) -> (Vec<f64>, Vec<(f32, f32)>, Vec<u64>) {
    f.claims = vec![0, 0, 1_000_000_000_000];
    let spec = ModelSpec::parse(&f.spec, "t").unwrap();
    let (_, v0) = f.engine.model("t", Some(0)).unwrap();
    let Model::Single(base) = Model::decode(&v0, &spec, BlobRole::Initial).unwrap() else {
        panic!("one network")
    };
    let norm = base.normalization();
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 3, 60_000, 1, 1)
        .unwrap();
    f.engine.tick(2).unwrap();
    f.upload_with(0, 1, 3, &norm).unwrap();
    f.upload_with(1, 1, 3, &norm).unwrap();
    let attack = base.map_trainable(|t| vec![5.0; t.data.len()]).unwrap();
    f.upload_weights(2, 1, 3, &attack).unwrap();
    assert!(f.engine.tick(4).unwrap(), "the round closes");
    let (manifest, bytes) = f.engine.model("t", None).unwrap();
    let Model::Single(merged) = Model::decode(&bytes, &spec, BlobRole::Merged).unwrap() else {
        panic!("one network")
    };
    let values = merged.trainable()[0]
        .data
        .iter()
        .zip(&base.trainable()[0].data)
        .map(|(&m, &b)| (m, b))
        .collect();
    let manifest: shared_model::manifest::Manifest =
        serde_json::from_slice(&manifest.bytes).unwrap();
    let weights = manifest
        .contributors
        .iter()
        .map(|c| c.sample_count)
        .collect();
    (
        norm.mean.iter().map(|&m| f64::from(m)).collect(),
        values,
        weights,
    )
}

fn assert_merge(values: &[(f32, f32)], w: [f32; 3]) {
    let total: f32 = w.iter().sum();
    for &(m, b) in values {
        let want = (w[0] * (b + 0.01) + w[1] * (b + 0.02) + w[2] * 5.0) / total;
        assert!(
            (m - want).abs() < 1e-4,
            "merged {m}, weights {w:?} give {want}"
        );
    }
}

#[test]
fn a_party_lying_in_its_sample_count_and_its_feature_sums_weighs_at_most_half_by_default() {
    let mut f = fixture_limited(3, SPEC, "", sums_for);
    let (mean, values, weights) = attacked_round(&mut f);
    // The honest plants reported 3 rows each: the liar counts as 6, half of the total, in the
    // normalisation (feature a: each honest plant's values 0, 2, 4) and in the merge.
    let want = (2.0 * 6.0 + 6.0 * 1000.0) / 12.0;
    assert!(
        (mean[0] - want).abs() < 1e-3,
        "normalisation mean {} (uncapped ≈ 1000), want {want}",
        mean[0]
    );
    assert_eq!(
        weights,
        [3, 3, 6],
        "the manifest names the weights the merge used"
    );
    assert_merge(&values, [3.0, 3.0, 6.0]);
}

#[test]
fn the_operator_caps_a_party_by_weight_or_share_in_the_task_limits() {
    let mut f = fixture_limited(3, SPEC, "[party.plant-2]\nmax_weight = 3\n", sums_for);
    let (mean, values, weights) = attacked_round(&mut f);
    let want = (2.0 * 6.0 + 3.0 * 1000.0) / 9.0;
    assert!((mean[0] - want).abs() < 1e-3, "{} want {want}", mean[0]);
    assert_eq!(weights, [3, 3, 3]);
    assert_merge(&values, [3.0, 3.0, 3.0]);

    let mut f = fixture_limited(3, SPEC, "max_share = 0.25\n", sums_for);
    let (_, values, weights) = attacked_round(&mut f);
    // 0.25 × 3 parties < 1: no weight set meets it, so each weighs its share — equal weights.
    assert_eq!(weights, [3, 3, 3]);
    assert_merge(&values, [3.0, 3.0, 3.0]);
}

#[test]
fn feature_sums_outside_the_declared_ranges_are_refused_and_shown_to_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = enrolled_engine(dir.path(), 3);
    let limits = "[feature.a]\nmin = 0.0\nmax = 10.0\n";
    engine
        .create_task_limited("t", SPEC, &[], limits, 0)
        .unwrap();
    engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 1, 1)
        .unwrap();
    for _ in 0..3 {
        let e = engine
            .submit_sums("plant-2", "t/stats/0", &lying_sums(), 5)
            .unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("plant-2") && e.contains("\"a\"") && e.contains("declared range [0, 10]"),
            "{e}"
        );
    }
    // Shown to the operator once, as the plant declining the statistics step with the reason.
    let declines = engine.store().declines("t").unwrap();
    assert_eq!(declines.len(), 1, "{declines:?}");
    assert!(
        declines[0].2.contains("its feature sums were refused"),
        "{declines:?}"
    );
    let logged = engine
        .store()
        .audit_records(Some("t"), None)
        .unwrap()
        .into_iter()
        .filter(|r| r.party.as_deref() == Some("plant-2"))
        .count();
    assert_eq!(logged, 1, "one governance record, not one per attempt");
    // The others' sums fit: the step completes without the refused plant.
    engine
        .submit_sums("plant-0", "t/stats/0", &sums(), 6)
        .unwrap();
    engine
        .submit_sums("plant-1", "t/stats/0", &sums(), 6)
        .unwrap();
    assert!(engine.tick(7).unwrap());
    let t = engine.store().task("t").unwrap().unwrap();
    let norm: shared_model::stats::Normalization =
        serde_json::from_str(t.normalization.as_deref().unwrap()).unwrap();
    assert!((norm.mean[0] - 2.0).abs() < 1e-6, "{:?}", norm.mean);
}
