//! Evaluation. Exact metrics from predictions — accuracy, precision, recall, F1, ROC-AUC and
//! log-loss for binary tasks (positive class = 1); accuracy and macro-averaged P/R/F1 for
//! multiclass; MSE, MAE and R² for regression — and the same as **mergeable sufficient
//! statistics** ([`MetricStats`]): confusion counts, loss sums, score histograms, sums of errors.
//! Sites report statistics, never rows, and the coordinator adds them up exactly. The one
//! approximation is the merged ROC-AUC, computed from score histograms with [`AUC_BINS`] bins
//! (ties within a bin count one half).

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::network::{CpuBackend, predict};
use crate::spec::{ModelSpec, TaskKind};
use crate::weights::Weights;

/// Probabilities are clamped to [EPS, 1 − EPS] for log-loss.
pub const LOG_LOSS_EPS: f64 = 1e-7;

/// Bins of the score histograms behind the merged ROC-AUC.
pub const AUC_BINS: usize = 1000;

/// Metrics of a binary classifier; positive class = 1, decision threshold 0.5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    /// Rows evaluated.
    pub count: u64,
    /// (TP + TN) / n
    pub accuracy: f64,
    /// TP / (TP + FP), 0 when nothing is predicted positive.
    pub precision: f64,
    /// TP / (TP + FN), 0 when there are no positives.
    pub recall: f64,
    /// Harmonic mean of precision and recall, 0 when both are 0.
    pub f1: f64,
    /// Area under the ROC curve (0.5 when only one class is present).
    pub roc_auc: f64,
    /// Mean binary cross-entropy of the predicted probabilities.
    pub log_loss: f64,
}

/// Metrics of a multiclass classifier (macro averages over the classes present in the labels
/// or the predictions, as scikit-learn's `average="macro"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MulticlassMetrics {
    /// Rows evaluated.
    pub count: u64,
    /// Fraction predicted correctly (arg-max).
    pub accuracy: f64,
    /// Mean over the present classes of per-class precision (0 for a class never predicted).
    pub macro_precision: f64,
    /// Mean over the present classes of per-class recall (0 for a class with no rows).
    pub macro_recall: f64,
    /// Mean over the present classes of per-class F1.
    pub macro_f1: f64,
    /// Mean cross-entropy of the true class.
    pub log_loss: f64,
}

/// Metrics of a regressor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Rows evaluated.
    pub count: u64,
    /// Mean squared error.
    pub mse: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// Coefficient of determination 1 − SSE/SST (1 or 0 when the targets are constant).
    pub r2: f64,
}

/// Metrics of any task kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metrics {
    /// Binary classification.
    Binary(BinaryMetrics),
    /// Multiclass classification.
    Multiclass(MulticlassMetrics),
    /// Regression.
    Regression(RegressionMetrics),
}

impl Metrics {
    /// The binary metrics, if this is a binary task.
    pub fn binary(&self) -> Option<&BinaryMetrics> {
        match self {
            Metrics::Binary(m) => Some(m),
            _ => None,
        }
    }

    /// The regression metrics, if this is a regression task.
    pub fn regression(&self) -> Option<&RegressionMetrics> {
        match self {
            Metrics::Regression(m) => Some(m),
            _ => None,
        }
    }

    /// The headline number of the task: F1 (binary), macro-F1 (multiclass), MSE (regression).
    pub fn headline(&self) -> (&'static str, f64) {
        match self {
            Metrics::Binary(m) => ("f1", m.f1),
            Metrics::Multiclass(m) => ("macro_f1", m.macro_f1),
            Metrics::Regression(m) => ("mse", m.mse),
        }
    }

    /// A regressor that does worse than predicting the targets' mean (R² < 0): its numbers
    /// must not pass for a result.
    pub fn worse_than_the_mean(&self) -> bool {
        matches!(self, Metrics::Regression(m) if m.r2 < 0.0)
    }

    /// One line for people: the headline and its companions, a regressor worse than the mean
    /// flagged.
    pub fn summary(&self) -> String {
        match self {
            Metrics::Binary(m) => format!(
                "f1 {:.4}, accuracy {:.4}, AUC {:.4}",
                m.f1, m.accuracy, m.roc_auc
            ),
            Metrics::Multiclass(m) => {
                format!("macro_f1 {:.4}, accuracy {:.4}", m.macro_f1, m.accuracy)
            }
            Metrics::Regression(m) => format!(
                "mse {:.4}, R² {:.4}{}",
                m.mse,
                m.r2,
                if self.worse_than_the_mean() {
                    " — WORSE THAN PREDICTING THE MEAN"
                } else {
                    ""
                }
            ),
        }
    }
}

/// Mergeable sufficient statistics of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricStats {
    /// Binary classification.
    Binary {
        /// True positives at threshold 0.5.
        tp: u64,
        /// False positives.
        fp: u64,
        /// True negatives.
        tn: u64,
        /// False negatives.
        #[serde(rename = "fn")]
        fn_: u64,
        /// Σ log-loss.
        log_loss_sum: f64,
        /// Histogram of P(1) over [`AUC_BINS`] bins for rows whose label is 1.
        pos_hist: Vec<u64>,
        /// The same for rows whose label is 0.
        neg_hist: Vec<u64>,
    },
    /// Multiclass classification.
    Multiclass {
        /// Classes.
        classes: usize,
        /// `classes × classes` counts, row = true class, column = predicted class.
        confusion: Vec<u64>,
        /// Σ log-loss.
        log_loss_sum: f64,
    },
    /// Regression.
    Regression {
        /// Rows.
        count: u64,
        /// Σ (ŷ − y)²
        sse: f64,
        /// Σ |ŷ − y|
        sae: f64,
        /// Σ y
        sum_y: f64,
        /// Σ y²
        sum_y2: f64,
    },
}

/// Errors from merging statistics.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MergeStatsError {
    /// The two statistics are of different task kinds or sizes.
    #[error("metric statistics do not match: {0}")]
    Mismatch(String),
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 { num / den } else { 0.0 }
}

fn f1(p: f64, r: f64) -> f64 {
    if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    }
}

fn clamp_p(p: f64) -> f64 {
    p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
}

impl MetricStats {
    /// Statistics of predictions (as returned by [`predict`]) against targets.
    pub fn from_predictions(kind: TaskKind, preds: &[f32], targets: &[f32]) -> Self {
        match kind {
            TaskKind::Binary => {
                let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
                let mut log_loss_sum = 0.0;
                let mut pos_hist = vec![0u64; AUC_BINS];
                let mut neg_hist = vec![0u64; AUC_BINS];
                for (&p, &y) in preds.iter().zip(targets) {
                    let p = f64::from(p);
                    let positive = y == 1.0;
                    let bin = ((p * AUC_BINS as f64) as usize).min(AUC_BINS - 1);
                    match (positive, p >= 0.5) {
                        (true, true) => tp += 1,
                        (true, false) => fn_ += 1,
                        (false, true) => fp += 1,
                        (false, false) => tn += 1,
                    }
                    if positive {
                        pos_hist[bin] += 1;
                        log_loss_sum -= clamp_p(p).ln();
                    } else {
                        neg_hist[bin] += 1;
                        log_loss_sum -= (1.0 - clamp_p(p)).ln();
                    }
                }
                MetricStats::Binary {
                    tp,
                    fp,
                    tn,
                    fn_,
                    log_loss_sum,
                    pos_hist,
                    neg_hist,
                }
            }
            TaskKind::Multiclass { classes } => {
                let mut confusion = vec![0u64; classes * classes];
                let mut log_loss_sum = 0.0;
                for (row, &y) in preds.chunks_exact(classes).zip(targets) {
                    let y = y as usize;
                    let pred = argmax(row);
                    confusion[y * classes + pred] += 1;
                    log_loss_sum -= clamp_p(f64::from(row[y])).ln();
                }
                MetricStats::Multiclass {
                    classes,
                    confusion,
                    log_loss_sum,
                }
            }
            TaskKind::Regression => {
                let mut s = (0u64, 0.0, 0.0, 0.0, 0.0);
                for (&p, &y) in preds.iter().zip(targets) {
                    let (p, y) = (f64::from(p), f64::from(y));
                    s.0 += 1;
                    s.1 += (p - y).powi(2);
                    s.2 += (p - y).abs();
                    s.3 += y;
                    s.4 += y * y;
                }
                MetricStats::Regression {
                    count: s.0,
                    sse: s.1,
                    sae: s.2,
                    sum_y: s.3,
                    sum_y2: s.4,
                }
            }
        }
    }

    /// Adds another site's statistics.
    pub fn merge(&mut self, other: &Self) -> Result<(), MergeStatsError> {
        use MetricStats::*;
        match (self, other) {
            (
                Binary {
                    tp,
                    fp,
                    tn,
                    fn_,
                    log_loss_sum,
                    pos_hist,
                    neg_hist,
                },
                Binary {
                    tp: tp2,
                    fp: fp2,
                    tn: tn2,
                    fn_: fn2,
                    log_loss_sum: l2,
                    pos_hist: ph2,
                    neg_hist: nh2,
                },
            ) => {
                if pos_hist.len() != ph2.len() || neg_hist.len() != nh2.len() {
                    return Err(MergeStatsError::Mismatch("histogram sizes differ".into()));
                }
                *tp += tp2;
                *fp += fp2;
                *tn += tn2;
                *fn_ += fn2;
                *log_loss_sum += l2;
                pos_hist.iter_mut().zip(ph2).for_each(|(a, b)| *a += b);
                neg_hist.iter_mut().zip(nh2).for_each(|(a, b)| *a += b);
                Ok(())
            }
            (
                Multiclass {
                    classes,
                    confusion,
                    log_loss_sum,
                },
                Multiclass {
                    classes: c2,
                    confusion: m2,
                    log_loss_sum: l2,
                },
            ) => {
                if classes != c2 || confusion.len() != m2.len() {
                    return Err(MergeStatsError::Mismatch(format!(
                        "{classes} vs {c2} classes"
                    )));
                }
                confusion.iter_mut().zip(m2).for_each(|(a, b)| *a += b);
                *log_loss_sum += l2;
                Ok(())
            }
            (
                Regression {
                    count,
                    sse,
                    sae,
                    sum_y,
                    sum_y2,
                },
                Regression {
                    count: n2,
                    sse: e2,
                    sae: a2,
                    sum_y: s2,
                    sum_y2: q2,
                },
            ) => {
                *count += n2;
                *sse += e2;
                *sae += a2;
                *sum_y += s2;
                *sum_y2 += q2;
                Ok(())
            }
            (a, b) => Err(MergeStatsError::Mismatch(format!(
                "{} vs {}",
                a.kind_name(),
                b.kind_name()
            ))),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            MetricStats::Binary { .. } => "binary",
            MetricStats::Multiclass { .. } => "multiclass",
            MetricStats::Regression { .. } => "regression",
        }
    }

    /// The metrics these statistics imply (ROC-AUC from the histograms).
    pub fn metrics(&self) -> Metrics {
        match self {
            MetricStats::Binary {
                tp,
                fp,
                tn,
                fn_,
                log_loss_sum,
                pos_hist,
                neg_hist,
            } => {
                let n = (tp + fp + tn + fn_) as f64;
                let precision = ratio(*tp as f64, (tp + fp) as f64);
                let recall = ratio(*tp as f64, (tp + fn_) as f64);
                Metrics::Binary(BinaryMetrics {
                    count: n as u64,
                    accuracy: ratio((tp + tn) as f64, n),
                    precision,
                    recall,
                    f1: f1(precision, recall),
                    roc_auc: histogram_auc(pos_hist, neg_hist),
                    log_loss: ratio(*log_loss_sum, n),
                })
            }
            MetricStats::Multiclass {
                classes,
                confusion,
                log_loss_sum,
            } => {
                let k = *classes;
                let n: u64 = confusion.iter().sum();
                let correct: u64 = (0..k).map(|c| confusion[c * k + c]).sum();
                // Macro averages over the classes present in the labels or the predictions, as
                // scikit-learn's (a declared class no row has or got does not count; a 0/0
                // precision or recall is 0): a holdout without some class is not penalised.
                let (mut sp, mut sr, mut sf, mut present) = (0.0, 0.0, 0.0, 0u64);
                for c in 0..k {
                    let tp = confusion[c * k + c] as f64;
                    let predicted: u64 = (0..k).map(|t| confusion[t * k + c]).sum();
                    let actual: u64 = confusion[c * k..(c + 1) * k].iter().sum();
                    if predicted == 0 && actual == 0 {
                        continue;
                    }
                    present += 1;
                    let p = ratio(tp, predicted as f64);
                    let r = ratio(tp, actual as f64);
                    sp += p;
                    sr += r;
                    sf += f1(p, r);
                }
                let present = present as f64;
                Metrics::Multiclass(MulticlassMetrics {
                    count: n,
                    accuracy: ratio(correct as f64, n as f64),
                    macro_precision: ratio(sp, present),
                    macro_recall: ratio(sr, present),
                    macro_f1: ratio(sf, present),
                    log_loss: ratio(*log_loss_sum, n as f64),
                })
            }
            MetricStats::Regression {
                count,
                sse,
                sae,
                sum_y,
                sum_y2,
            } => {
                let n = *count as f64;
                let sst = sum_y2 - sum_y * sum_y / n.max(1.0);
                let r2 = if sst > 1e-12 * sum_y2.max(1.0) {
                    1.0 - sse / sst
                } else if *sse == 0.0 {
                    1.0
                } else {
                    0.0
                };
                Metrics::Regression(RegressionMetrics {
                    count: *count,
                    mse: ratio(*sse, n),
                    mae: ratio(*sae, n),
                    r2,
                })
            }
        }
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// ROC-AUC from score histograms: P(score of a positive > score of a negative), ties ½.
fn histogram_auc(pos: &[u64], neg: &[u64]) -> f64 {
    let p: u64 = pos.iter().sum();
    let n: u64 = neg.iter().sum();
    if p == 0 || n == 0 {
        return 0.5;
    }
    let mut neg_below = 0u64;
    let mut acc = 0.0;
    for (&pb, &nb) in pos.iter().zip(neg) {
        acc += pb as f64 * (neg_below as f64 + 0.5 * nb as f64);
        neg_below += nb;
    }
    acc / (p as f64 * n as f64)
}

/// Exact ROC-AUC by ranks (Mann–Whitney U), ties ½.
pub fn exact_auc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum_pos, mut p, mut i) = (0.0, 0u64, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] == 1.0 {
                rank_sum_pos += avg_rank;
                p += 1;
            }
        }
        i = j + 1;
    }
    let n = scores.len() as u64 - p;
    if p == 0 || n == 0 {
        return 0.5;
    }
    (rank_sum_pos - (p * (p + 1)) as f64 / 2.0) / (p as f64 * n as f64)
}

/// Exact metrics of predictions against targets (ROC-AUC by ranks).
pub fn metrics_from_predictions(kind: TaskKind, preds: &[f32], targets: &[f32]) -> Metrics {
    let mut m = MetricStats::from_predictions(kind, preds, targets).metrics();
    if let Metrics::Binary(b) = &mut m {
        b.roc_auc = exact_auc(preds, targets);
    }
    m
}

/// Evaluates a model on labelled rows: exact metrics.
pub fn evaluate(
    spec: &ModelSpec,
    weights: &Weights,
    data: &Dataset,
    backend: CpuBackend,
) -> Metrics {
    let preds = predict(spec, weights, &data.features, backend);
    metrics_from_predictions(spec.task.kind, &preds, &data.targets)
}

/// Evaluates a model on labelled rows: mergeable statistics.
pub fn evaluate_stats(
    spec: &ModelSpec,
    weights: &Weights,
    data: &Dataset,
    backend: CpuBackend,
) -> MetricStats {
    let preds = predict(spec, weights, &data.features, backend);
    MetricStats::from_predictions(spec.task.kind, &preds, &data.targets)
}

mod check;

#[cfg(test)]
mod sklearn_tests;
#[cfg(test)]
mod tests;
