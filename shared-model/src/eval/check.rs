//! Checks on evaluation statistics received from a party (an evaluation report or an
//! update's local metrics): the statistics must be of the task's kind, non-empty, finite and
//! possible — counts that add up, sums no set of rows could give refused, naming the field.

use super::{AUC_BINS, LOG_LOSS_EPS, MetricStats};
use crate::spec::TaskKind;
use crate::stats::MAX_ROWS;

fn rows_ok(field: &str, rows: Option<u64>) -> Result<u64, String> {
    match rows {
        None => Err(format!("`{field}`: the counts overflow")),
        Some(0) => Err(format!("`{field}`: no rows were evaluated")),
        Some(n) if n > MAX_ROWS => Err(format!(
            "`{field}`: {n} rows is more than the {MAX_ROWS} any party may hold"
        )),
        Some(n) => Ok(n),
    }
}

fn sum(counts: &[u64]) -> Option<u64> {
    counts.iter().try_fold(0u64, |a, &c| a.checked_add(c))
}

fn log_loss_ok(value: f64, rows: u64) -> Result<(), String> {
    // Each row's loss is at most −ln(LOG_LOSS_EPS) (predictions are clamped).
    let most = rows as f64 * -LOG_LOSS_EPS.ln() * (1.0 + 1e-9) + 1e-9;
    if !value.is_finite() || value < 0.0 || value > most {
        return Err(format!(
            "`log_loss_sum` is {value}, outside [0, {most:.3}] for {rows} rows"
        ));
    }
    Ok(())
}

impl MetricStats {
    /// Checks statistics received from a party for a task of `kind`.
    pub fn validate(&self, kind: TaskKind) -> Result<(), String> {
        match (self, kind) {
            (
                MetricStats::Binary {
                    tp,
                    fp,
                    tn,
                    fn_,
                    log_loss_sum,
                    pos_hist,
                    neg_hist,
                },
                TaskKind::Binary,
            ) => {
                let rows = rows_ok("tp + fp + tn + fn", sum(&[*tp, *fp, *tn, *fn_]))?;
                for (name, h) in [("pos_hist", pos_hist), ("neg_hist", neg_hist)] {
                    if h.len() != AUC_BINS {
                        return Err(format!(
                            "`{name}` has {} bins, expected {AUC_BINS}",
                            h.len()
                        ));
                    }
                }
                // Rows at P(1) ≥ 0.5 fall in the upper half of the bins: the counts at the
                // threshold must be the histograms' halves.
                let half = AUC_BINS / 2;
                let split = |h: &[u64]| (sum(&h[..half]), sum(&h[half..]));
                let (pos_low, pos_high) = split(pos_hist);
                let (neg_low, neg_high) = split(neg_hist);
                if pos_high != Some(*tp) || pos_low != Some(*fn_) {
                    return Err(format!(
                        "`pos_hist` does not match `tp` {tp} and `fn` {fn_} (bins ≥ {half} hold P(1) ≥ 0.5)"
                    ));
                }
                if neg_high != Some(*fp) || neg_low != Some(*tn) {
                    return Err(format!(
                        "`neg_hist` does not match `fp` {fp} and `tn` {tn} (bins ≥ {half} hold P(1) ≥ 0.5)"
                    ));
                }
                log_loss_ok(*log_loss_sum, rows)
            }
            (
                MetricStats::Multiclass {
                    classes,
                    confusion,
                    log_loss_sum,
                },
                TaskKind::Multiclass { classes: want },
            ) => {
                if *classes != want {
                    return Err(format!("`classes` is {classes}, the task has {want}"));
                }
                if confusion.len() != want * want {
                    return Err(format!(
                        "`confusion` has {} cells, expected {want} × {want}",
                        confusion.len()
                    ));
                }
                let rows = rows_ok("confusion", sum(confusion))?;
                log_loss_ok(*log_loss_sum, rows)
            }
            (
                MetricStats::Regression {
                    count,
                    sse,
                    sae,
                    sum_y,
                    sum_y2,
                },
                TaskKind::Regression,
            ) => {
                let n = rows_ok("count", Some(*count))? as f64;
                for (name, v) in [
                    ("sse", sse),
                    ("sae", sae),
                    ("sum_y", sum_y),
                    ("sum_y2", sum_y2),
                ] {
                    if !v.is_finite() {
                        return Err(format!("`{name}` is not finite"));
                    }
                }
                for (name, v) in [("sse", sse), ("sae", sae), ("sum_y2", sum_y2)] {
                    if *v < 0.0 {
                        return Err(format!("`{name}` is {v}, a sum of squares or magnitudes"));
                    }
                }
                // Cauchy–Schwarz: (Σ|e|)² ≤ n·Σe² and (Σy)² ≤ n·Σy², up to rounding.
                let possible = |s: f64, sq: f64| s * s <= n * sq * (1.0 + 1e-9) + 1e-9;
                if !possible(*sae, *sse) {
                    return Err(format!(
                        "`sae` {sae} and `sse` {sse} are impossible together for {count} rows"
                    ));
                }
                if !possible(*sum_y, *sum_y2) {
                    return Err(format!(
                        "`sum_y` {sum_y} and `sum_y2` {sum_y2} are impossible together for {count} rows"
                    ));
                }
                Ok(())
            }
            (s, kind) => Err(format!(
                "statistics of a {} task, this task is {}",
                s.kind_name(),
                kind.name()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honest_statistics_of_every_kind_pass() {
        let b = MetricStats::from_predictions(
            TaskKind::Binary,
            &[0.1, 0.5, 0.49999997, 0.9],
            &[0.0, 1.0, 1.0, 0.0],
        );
        b.validate(TaskKind::Binary).unwrap();
        let m = MetricStats::from_predictions(
            TaskKind::Multiclass { classes: 3 },
            &[0.2, 0.5, 0.3, 0.9, 0.05, 0.05],
            &[1.0, 2.0],
        );
        m.validate(TaskKind::Multiclass { classes: 3 }).unwrap();
        let r = MetricStats::from_predictions(
            TaskKind::Regression,
            &[1.0, 2.5, -3.0],
            &[1.5, 2.0, 4.0],
        );
        r.validate(TaskKind::Regression).unwrap();
    }

    #[test]
    fn empty_absurd_or_mismatched_statistics_are_refused_naming_the_field() {
        let good = MetricStats::from_predictions(TaskKind::Binary, &[0.1, 0.9], &[0.0, 1.0]);
        let with = |f: &dyn Fn(&mut MetricStats)| {
            let mut s = good.clone();
            f(&mut s);
            s.validate(TaskKind::Binary).unwrap_err()
        };
        let bin = |f: fn(&mut u64, &mut u64, &mut f64, &mut Vec<u64>)| {
            move |s: &mut MetricStats| {
                if let MetricStats::Binary {
                    tp,
                    fp,
                    log_loss_sum,
                    pos_hist,
                    ..
                } = s
                {
                    f(tp, fp, log_loss_sum, pos_hist);
                }
            }
        };
        let cases: Vec<(String, &str)> = vec![
            (
                with(&bin(|tp, _, _, _| *tp = 0)),
                "`pos_hist` does not match",
            ),
            (
                with(&bin(|tp, _, _, _| *tp = 1_000_000)),
                "`pos_hist` does not match",
            ),
            (
                with(&bin(|_, fp, _, _| *fp = 5)),
                "`neg_hist` does not match",
            ),
            (with(&bin(|_, _, l, _| *l = f64::NAN)), "`log_loss_sum`"),
            (with(&bin(|_, _, l, _| *l = 1e9)), "`log_loss_sum`"),
            (
                with(&bin(|_, _, _, h| h.truncate(10))),
                "`pos_hist` has 10 bins",
            ),
            (with(&bin(|tp, _, _, _| *tp = u64::MAX)), "overflow"),
        ];
        for (e, want) in cases {
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let empty = MetricStats::from_predictions(TaskKind::Binary, &[], &[]);
        assert!(
            empty
                .validate(TaskKind::Binary)
                .unwrap_err()
                .contains("no rows")
        );
        assert!(
            good.validate(TaskKind::Regression)
                .unwrap_err()
                .contains("binary task, this task is regression")
        );
        let m = MetricStats::from_predictions(
            TaskKind::Multiclass { classes: 3 },
            &[0.2, 0.5, 0.3],
            &[1.0],
        );
        assert!(
            m.validate(TaskKind::Multiclass { classes: 4 })
                .unwrap_err()
                .contains("`classes` is 3")
        );
        let r = MetricStats::Regression {
            count: 2,
            sse: 1.0,
            sae: 100.0,
            sum_y: 1.0,
            sum_y2: 1.0,
        };
        assert!(
            r.validate(TaskKind::Regression)
                .unwrap_err()
                .contains("`sae`")
        );
        let r = MetricStats::Regression {
            count: 2,
            sse: 1.0,
            sae: 1.0,
            sum_y: 1.0,
            sum_y2: -1.0,
        };
        assert!(
            r.validate(TaskKind::Regression)
                .unwrap_err()
                .contains("`sum_y2`")
        );
    }
}
