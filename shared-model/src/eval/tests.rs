//! Metrics by hand and their mergeability (property tests).

use super::*;
use proptest::prelude::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn binary_metrics_by_hand() {
    // labels 1 1 1 0 0 0 0, P(1) .9 .6 .4 .7 .2 .1 .3 → TP 2, FN 1, FP 1, TN 3
    let p = [0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.3];
    let y = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let m = metrics_from_predictions(TaskKind::Binary, &p, &y);
    let b = m.binary().unwrap();
    assert_eq!(b.count, 7);
    assert!(close(b.accuracy, 5.0 / 7.0));
    assert!(close(b.precision, 2.0 / 3.0));
    assert!(close(b.recall, 2.0 / 3.0));
    assert!(close(b.f1, 2.0 / 3.0));
    // positive/negative pairs ranked right: .9 beats 4, .6 beats 3 (not .7), .4 beats 3 → 10/12
    assert!(close(b.roc_auc, 10.0 / 12.0), "{}", b.roc_auc);
    let ll = -(0.9f64.ln()
        + 0.6f64.ln()
        + 0.4f64.ln()
        + 0.3f64.ln()
        + 0.8f64.ln()
        + 0.9f64.ln()
        + 0.7f64.ln())
        / 7.0;
    assert!((b.log_loss - ll).abs() < 1e-6, "{} vs {ll}", b.log_loss);
    // the histogram AUC agrees when no two scores share a bin
    let stats = MetricStats::from_predictions(TaskKind::Binary, &p, &y).metrics();
    assert!(close(stats.binary().unwrap().roc_auc, 10.0 / 12.0));
}

#[test]
fn degenerate_binary_cases() {
    let m = metrics_from_predictions(TaskKind::Binary, &[0.1, 0.2], &[0.0, 0.0]);
    let b = m.binary().unwrap();
    assert_eq!(
        (b.precision, b.recall, b.f1, b.roc_auc),
        (0.0, 0.0, 0.0, 0.5)
    );
    assert!(close(exact_auc(&[0.5, 0.5], &[1.0, 0.0]), 0.5));
}

#[test]
fn multiclass_metrics_by_hand() {
    // true 0,0,1,2 ; predicted 0,1,1,2
    let p = [0.8, 0.1, 0.1, 0.3, 0.6, 0.1, 0.2, 0.7, 0.1, 0.1, 0.1, 0.8];
    let y = [0.0, 0.0, 1.0, 2.0];
    let Metrics::Multiclass(m) =
        metrics_from_predictions(TaskKind::Multiclass { classes: 3 }, &p, &y)
    else {
        panic!()
    };
    assert!(close(m.accuracy, 0.75));
    // class 0: P 1, R .5, F1 2/3; class 1: P .5, R 1, F1 2/3; class 2: 1, 1, 1
    assert!(close(m.macro_precision, (1.0 + 0.5 + 1.0) / 3.0));
    assert!(close(m.macro_recall, (0.5 + 1.0 + 1.0) / 3.0));
    assert!(close(m.macro_f1, (2.0 / 3.0 + 2.0 / 3.0 + 1.0) / 3.0));
    let ll = -(0.8f64.ln() + 0.3f64.ln() + 0.7f64.ln() + 0.8f64.ln()) / 4.0;
    assert!((m.log_loss - ll).abs() < 1e-6);
}

#[test]
fn regression_metrics_by_hand() {
    // y 1 2 3 ; ŷ 1 3 5 → errors 0 1 2: MSE 5/3, MAE 1, SST 2 → R² = 1 − 5/2
    let m = metrics_from_predictions(TaskKind::Regression, &[1.0, 3.0, 5.0], &[1.0, 2.0, 3.0]);
    let r = m.regression().unwrap();
    assert!(close(r.mse, 5.0 / 3.0));
    assert!(close(r.mae, 1.0));
    assert!(close(r.r2, -1.5));
    let perfect = metrics_from_predictions(TaskKind::Regression, &[2.0, 2.0], &[2.0, 2.0]);
    assert_eq!(perfect.regression().unwrap().r2, 1.0);
}

#[test]
fn mismatched_stats_do_not_merge() {
    let mut a = MetricStats::from_predictions(TaskKind::Regression, &[1.0], &[1.0]);
    let b = MetricStats::from_predictions(TaskKind::Binary, &[1.0], &[1.0]);
    assert!(a.merge(&b).is_err());
}

proptest! {
    /// Statistics of two sites merged equal the statistics of their pooled rows.
    #[test]
    fn merged_stats_equal_pooled_stats(
        rows in prop::collection::vec((0.0f32..1.0, 0u8..3, -50.0f32..50.0), 1..200),
        cut in 0usize..200,
    ) {
        let cut = cut.min(rows.len());
        let p: Vec<f32> = rows.iter().map(|r| r.0).collect();
        let y: Vec<f32> = rows.iter().map(|r| f32::from(r.1 == 1)).collect();
        let mut merged = MetricStats::from_predictions(TaskKind::Binary, &p[..cut], &y[..cut]);
        merged.merge(&MetricStats::from_predictions(TaskKind::Binary, &p[cut..], &y[cut..])).unwrap();
        let pooled = MetricStats::from_predictions(TaskKind::Binary, &p, &y);
        let (m, q) = (merged.metrics(), pooled.metrics());
        let (m, q) = (m.binary().unwrap(), q.binary().unwrap());
        prop_assert_eq!((m.count, m.accuracy, m.precision, m.recall, m.f1, m.roc_auc),
                        (q.count, q.accuracy, q.precision, q.recall, q.f1, q.roc_auc));
        prop_assert!((m.log_loss - q.log_loss).abs() < 1e-9);

        let k = 3;
        let probs: Vec<f32> = rows.iter().flat_map(|r| {
            let c = r.1 as usize;
            (0..k).map(move |j| if j == c { r.0.max(0.34) } else { (1.0 - r.0.max(0.34)) / 2.0 })
        }).collect();
        let cls: Vec<f32> = rows.iter().map(|r| f32::from((r.2 > 0.0) as u8 + r.1 % 2)).collect();
        let mc = TaskKind::Multiclass { classes: k };
        let mut merged = MetricStats::from_predictions(mc, &probs[..cut * k], &cls[..cut]);
        merged.merge(&MetricStats::from_predictions(mc, &probs[cut * k..], &cls[cut..])).unwrap();
        let pooled = MetricStats::from_predictions(mc, &probs, &cls).metrics();
        let (Metrics::Multiclass(a), Metrics::Multiclass(b)) = (merged.metrics(), pooled) else { unreachable!() };
        prop_assert_eq!((a.count, a.accuracy, a.macro_f1), (b.count, b.accuracy, b.macro_f1));

        let v: Vec<f32> = rows.iter().map(|r| r.2).collect();
        let mut merged = MetricStats::from_predictions(TaskKind::Regression, &p[..cut], &v[..cut]);
        merged.merge(&MetricStats::from_predictions(TaskKind::Regression, &p[cut..], &v[cut..])).unwrap();
        let a = merged.metrics();
        let b = metrics_from_predictions(TaskKind::Regression, &p, &v);
        let (a, b) = (a.regression().unwrap(), b.regression().unwrap());
        prop_assert!((a.mse - b.mse).abs() <= 1e-6 * b.mse.max(1.0));
        prop_assert!((a.r2 - b.r2).abs() <= 1e-6 * b.r2.abs().max(1.0));
    }
}
