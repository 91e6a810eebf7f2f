//! What the experiment simulator and the demo summarise and the plots draw: grid points,
//! per-strategy summaries over seeds, means. Shared so that neither imports the other.

use std::collections::BTreeMap;

use serde::Serialize;
use shared_model::eval::Metrics;

/// One grid point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Parties.
    pub parties: usize,
    /// Partition, e.g. `dirichlet:0.5`.
    pub partition: String,
    /// Rounds.
    pub rounds: u32,
}

/// Mean and (sample) standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Summary of one (point, strategy) over seeds.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Grid point.
    pub point: Point,
    /// Strategy label (with options).
    pub strategy: String,
    /// The bare strategy name (options can differ between grid points, e.g. Krum's f).
    pub name: String,
    /// Headline metric name.
    pub metric: String,
    /// Named metrics: mean and std over seeds.
    pub values: BTreeMap<String, (f64, f64)>,
    /// Headline metric per round, mean over seeds.
    pub per_round: Vec<f64>,
    /// Seeds.
    pub runs: usize,
    /// Of those, runs in which a round failed, with the first reason seen (the metrics of such
    /// a run are of the last model it published).
    pub failed: usize,
    /// The first failure's reason.
    pub failure: Option<String>,
}

/// The mean of several evaluations, metric by metric (the local-only baseline).
pub fn mean_metrics(ms: &[Metrics]) -> Metrics {
    let n = ms.len() as f64;
    let mut v = serde_json::to_value(&ms[0]).expect("metrics serialise");
    if let Some(obj) = v.as_object_mut() {
        for (k, val) in obj.iter_mut() {
            if k == "kind" || k == "count" {
                continue;
            }
            let sum: f64 = ms
                .iter()
                .map(|m| {
                    serde_json::to_value(m).expect("metrics")[k]
                        .as_f64()
                        .unwrap_or(0.0)
                })
                .sum();
            *val = serde_json::json!(sum / n);
        }
    }
    serde_json::from_value(v).expect("same shape")
}
