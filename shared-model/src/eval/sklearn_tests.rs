//! Every metric against scikit-learn's on fixed vectors (`fixtures/sklearn_metrics.json`,
//! written once by `scripts/sklearn-metrics-fixture.sh`; the conventions both sides follow are
//! in its generator). Checked twice: the exact metrics of the predictions, and the metrics of
//! the statistics merged from three sites' shares of the rows (what a round reports) — equal
//! except ROC-AUC, which the mergeable statistics approximate by a histogram.

use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
struct Fixture {
    sklearn: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    classes: usize,
    preds: Vec<f32>,
    targets: Vec<f32>,
    metrics: std::collections::BTreeMap<String, f64>,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("fixtures/sklearn_metrics.json")).expect("the fixture reads")
}

fn kind(c: &Case) -> TaskKind {
    match c.kind.as_str() {
        "binary" => TaskKind::Binary,
        "multiclass" => TaskKind::Multiclass { classes: c.classes },
        "regression" => TaskKind::Regression,
        other => panic!("{}: kind {other}", c.name),
    }
}

/// Ours, by sklearn's names.
fn named(m: &Metrics) -> Vec<(&'static str, f64)> {
    match m {
        Metrics::Binary(b) => vec![
            ("accuracy", b.accuracy),
            ("precision", b.precision),
            ("recall", b.recall),
            ("f1", b.f1),
            ("roc_auc", b.roc_auc),
            ("log_loss", b.log_loss),
        ],
        Metrics::Multiclass(m) => vec![
            ("accuracy", m.accuracy),
            ("macro_precision", m.macro_precision),
            ("macro_recall", m.macro_recall),
            ("macro_f1", m.macro_f1),
            ("log_loss", m.log_loss),
        ],
        Metrics::Regression(r) => vec![("mse", r.mse), ("mae", r.mae), ("r2", r.r2)],
    }
}

fn check(case: &Case, ours: &Metrics, how: &str, auc_tolerance: f64) {
    let ours = named(ours);
    assert_eq!(ours.len(), case.metrics.len(), "{}: {how}", case.name);
    for (name, value) in ours {
        let want = case.metrics[name];
        // f32 inputs summed in f64 on both sides; log-loss: sklearn's rows are normalised in
        // f32 and its clip is another epsilon (no probability here is near it).
        let tolerance = match name {
            "roc_auc" => auc_tolerance,
            "log_loss" => 1e-6,
            _ => 1e-9 * want.abs().max(1.0),
        };
        assert!(
            (value - want).abs() <= tolerance,
            "{} ({how}): {name} = {value}, scikit-learn {} says {want}",
            case.name,
            fixture_version()
        );
    }
}

fn fixture_version() -> String {
    fixture().sklearn
}

#[test]
fn every_metric_equals_scikit_learn_s_on_the_fixed_vectors() {
    let f = fixture();
    assert!(f.cases.len() >= 10);
    for case in &f.cases {
        let k = kind(case);
        check(
            case,
            &metrics_from_predictions(k, &case.preds, &case.targets),
            "exact",
            1e-12,
        );
    }
}

#[test]
fn statistics_merged_from_three_sites_give_scikit_learn_s_numbers() {
    for case in &fixture().cases {
        let k = kind(case);
        let width = match k {
            TaskKind::Multiclass { classes } => classes,
            _ => 1,
        };
        let n = case.targets.len();
        let cuts = [0, n / 5, n / 2, n];
        let mut merged: Option<MetricStats> = None;
        for w in cuts.windows(2) {
            let s = MetricStats::from_predictions(
                k,
                &case.preds[w[0] * width..w[1] * width],
                &case.targets[w[0]..w[1]],
            );
            match merged.as_mut() {
                None => merged = Some(s),
                Some(m) => m.merge(&s).expect("same kind"),
            }
        }
        // The histogram's AUC counts pairs within one of its bins as ties.
        let auc_tolerance = 2.0 / AUC_BINS as f64;
        check(
            case,
            &merged.expect("three sites").metrics(),
            "merged",
            auc_tolerance,
        );
    }
}

#[test]
fn the_issue_s_example_a_perfect_holdout_without_two_classes_scores_one() {
    let f = fixture();
    let case = f
        .cases
        .iter()
        .find(|c| {
            c.name
                .starts_with("multiclass: 5 classes declared, 3 present")
        })
        .expect("the case");
    let m = metrics_from_predictions(kind(case), &case.preds, &case.targets);
    assert_eq!(
        m.headline(),
        ("macro_f1", 1.0),
        "before, the two absent classes counted as 0"
    );
}
