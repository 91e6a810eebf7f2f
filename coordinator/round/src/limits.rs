//! How much one party can weigh in a task — in its sample-weighted merges (FedAvg, FedProx, the
//! ensemble) and in the feature sums the normalisation is fixed from. The operator sets them
//! when creating the task (`coordinator task create --limits FILE`, docs/CONFIG.md); the
//! defaults let no party weigh more than half of any merge or normalisation.
//!
//! A party's weight is the least of the sample count it signed, the rows it reported in the
//! statistics step, and its `max_weight`; then no party keeps more than its `max_share` of the
//! total (the largest weights are lowered until none does). A party's feature sums count at most
//! `max_weight` rows and `max_share` of all rows, and must be possible for values in each
//! declared feature range, or they are refused, naming the feature.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shared_model::ids::PartyId;
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;

/// The default largest share of one party in a merge or the normalisation.
pub const DEFAULT_MAX_SHARE: f64 = 0.5;

/// A task's contribution limits (stored with the task as JSON; written by operators as TOML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The largest share of the total weight any one party keeps, in (0, 1]; 1 = no cap.
    #[serde(default = "default_share")]
    pub max_share: f64,
    /// The largest weight (and rows counted in the feature sums) of any one party.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u64>,
    /// Per-party limits, overriding the task's (a party declared to weigh more, or less).
    #[serde(default, rename = "party", skip_serializing_if = "BTreeMap::is_empty")]
    pub parties: BTreeMap<String, PartyLimits>,
    /// Declared feature ranges: every party's sums must be possible for values inside them.
    #[serde(
        default,
        rename = "feature",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub features: BTreeMap<String, FeatureRange>,
}

/// One party's limits in a task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyLimits {
    /// Its largest share (instead of the task's `max_share`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_share: Option<f64>,
    /// Its largest weight (instead of the task's `max_weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u64>,
}

/// The values one feature can take.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureRange {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

fn default_share() -> f64 {
    DEFAULT_MAX_SHARE
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_share: DEFAULT_MAX_SHARE,
            max_weight: None,
            parties: BTreeMap::new(),
            features: BTreeMap::new(),
        }
    }
}

impl Limits {
    /// Parses operator TOML (empty text = the defaults) and checks it against the task's spec
    /// and parties; errors name the field at fault.
    pub fn parse(text: &str, spec: &ModelSpec, parties: &[PartyId]) -> Result<Self, String> {
        let limits = Self::from_toml(text)?;
        limits.check(spec, parties)?;
        Ok(limits)
    }

    /// Reads operator TOML without checking it against a task (its syntax, field names and
    /// types; errors give the line and column).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text)
            .map_err(|e| format!("contribution limits: {}", e.to_string().trim_end()))
    }

    /// Reads stored limits (JSON written by [`Self::to_json`]; `{}` = the defaults).
    pub fn from_json(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| format!("stored contribution limits: {e}"))
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("limits serialise")
    }

    /// The operator's form (round-trips through [`Self::parse`]).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("limits serialise as TOML")
    }

    /// One line for `task list`: `limits: max share 0.5, max weight none, …`.
    pub fn summary(&self) -> String {
        let mut s = format!("limits: max share {}", self.max_share);
        match self.max_weight {
            Some(w) => s += &format!(", max weight {w}"),
            None => s += ", max weight none",
        }
        if !self.parties.is_empty() {
            let names: Vec<&str> = self.parties.keys().map(String::as_str).collect();
            s += &format!(", own limits for {}", names.join(","));
        }
        if !self.features.is_empty() {
            s += &format!(", {} declared feature ranges", self.features.len());
        }
        s
    }

    fn check(&self, spec: &ModelSpec, parties: &[PartyId]) -> Result<(), String> {
        let share = |field: &str, s: f64| {
            if s.is_finite() && s > 0.0 && s <= 1.0 {
                Ok(())
            } else {
                Err(format!(
                    "contribution limits: `{field}` must be a share in (0, 1] (1 = no cap), found {s}"
                ))
            }
        };
        let weight = |field: &str, w: u64| {
            if w == 0 {
                Err(format!("contribution limits: `{field}` must be at least 1"))
            } else {
                Ok(())
            }
        };
        share("max_share", self.max_share)?;
        if let Some(w) = self.max_weight {
            weight("max_weight", w)?;
        }
        for (name, p) in &self.parties {
            if !parties.iter().any(|q| q.as_str() == name) {
                return Err(format!(
                    "contribution limits: `party.{name}` does not take part in this task"
                ));
            }
            if let Some(s) = p.max_share {
                share(&format!("party.{name}.max_share"), s)?;
            }
            if let Some(w) = p.max_weight {
                weight(&format!("party.{name}.max_weight"), w)?;
            }
        }
        for (name, r) in &self.features {
            if !spec.task.features.iter().any(|f| f == name) {
                return Err(format!(
                    "contribution limits: `feature.{name}` is not a feature of the spec"
                ));
            }
            if spec.input_of(name).is_none() {
                return Err(format!(
                    "contribution limits: `feature.{name}` is a categorical column: a range is for numbers"
                ));
            }
            if !(r.min.is_finite() && r.max.is_finite() && r.min < r.max) {
                return Err(format!(
                    "contribution limits: `feature.{name}` needs finite min < max, found [{}, {}]",
                    r.min, r.max
                ));
            }
        }
        Ok(())
    }

    fn share_of(&self, party: &PartyId) -> f64 {
        self.parties
            .get(party.as_str())
            .and_then(|p| p.max_share)
            .unwrap_or(self.max_share)
    }

    fn max_weight_of(&self, party: &PartyId) -> Option<u64> {
        self.parties
            .get(party.as_str())
            .and_then(|p| p.max_weight)
            .or(self.max_weight)
    }

    /// The merge weight of each claim (`(party, signed sample count)`, in order): the claim,
    /// capped by the rows the party reported in the statistics step (a party that reported none:
    /// the most any party reported), by its `max_weight`, then by its share of the total.
    pub fn weights(
        &self,
        claims: &[(&PartyId, u64)],
        reported: &BTreeMap<PartyId, u64>,
    ) -> Vec<u64> {
        let most = reported.values().copied().max().unwrap_or(u64::MAX);
        let capped: Vec<(u64, f64)> = claims
            .iter()
            .map(|(party, claimed)| {
                let rows = reported.get(*party).copied().unwrap_or(most);
                let cap = self.max_weight_of(party).unwrap_or(u64::MAX);
                ((*claimed).min(rows).min(cap).max(1), self.share_of(party))
            })
            .collect();
        share_capped(&capped)
    }

    /// The pooled feature sums the normalisation is fixed from: each party's sums scaled down
    /// to the rows its limits let it count (its mean and spread unchanged), then added.
    pub fn pooled_sums(
        &self,
        width: usize,
        sums: &[(PartyId, FeatureSums)],
    ) -> Result<FeatureSums, String> {
        let capped: Vec<(u64, f64)> = sums
            .iter()
            .map(|(party, s)| {
                let cap = self.max_weight_of(party).unwrap_or(u64::MAX);
                (s.count.min(cap).max(1), self.share_of(party))
            })
            .collect();
        let counts = share_capped(&capped);
        let mut total = FeatureSums::zeros(width);
        for ((party, s), count) in sums.iter().zip(counts) {
            let scale = count as f64 / s.count as f64;
            // Each input's present count is scaled and rounded, and its sums by the same
            // ratio, so its mean and spread stay the party's.
            let (present, ratio): (Vec<u64>, Vec<f64>) = (0..s.sum.len())
                .map(|j| {
                    let p = s.present(j);
                    // at least one, where any value is present: a capped party's few values
                    // still count, with their own mean
                    let q = ((p as f64 * scale).round() as u64).clamp(u64::from(p > 0), count);
                    (q, if p == 0 { 0.0 } else { q as f64 / p as f64 })
                })
                .unzip();
            let scaled = FeatureSums {
                count,
                sum: s.sum.iter().zip(&ratio).map(|(x, r)| x * r).collect(),
                sum_sq: s.sum_sq.iter().zip(&ratio).map(|(x, r)| x * r).collect(),
                present: if s.present.is_empty() {
                    Vec::new()
                } else {
                    present
                },
                // a `discover` column's counts by the same ratio: a party that claims many
                // rows does not choose the vocabulary
                categories: s
                    .categories
                    .iter()
                    .map(|(f, counts)| {
                        let scaled = counts
                            .iter()
                            .map(|(k, &c)| (k.clone(), ((c as f64 * scale).round() as u64).max(1)))
                            .collect();
                        (f.clone(), scaled)
                    })
                    .collect(),
                // and each median column's histogram
                histograms: s
                    .histograms
                    .iter()
                    .map(|(f, h)| {
                        let scaled = h
                            .iter()
                            .map(|(&k, &c)| (k, ((c as f64 * scale).round() as u64).max(1)))
                            .collect();
                        (f.clone(), scaled)
                    })
                    .collect(),
            };
            total
                .merge(&scaled)
                .map_err(|e| format!("feature sums of {party}: {e}"))?;
        }
        Ok(total)
    }

    /// Checks a party's feature sums against the declared ranges: the mean of each declared
    /// feature must lie in its range, and its mean square must not exceed what values in the
    /// range allow (E[x²] ≤ (min + max)·E[x] − min·max, as E[(x − min)(x − max)] ≤ 0).
    pub fn check_sums(&self, spec: &ModelSpec, sums: &FeatureSums) -> Result<(), String> {
        for name in &spec.task.features {
            let Some(r) = self.features.get(name) else {
                continue;
            };
            let Some(j) = spec.input_of(name) else {
                continue;
            };
            // a plant without this sensor in its training rows has nothing to check
            if sums.present(j) == 0 {
                continue;
            }
            let n = sums.present(j) as f64;
            let (Some(&sum), Some(&sum_sq)) = (sums.sum.get(j), sums.sum_sq.get(j)) else {
                continue;
            };
            let (mean, mean_sq) = (sum / n, sum_sq / n);
            let tol = 1e-9 * (r.min.abs().max(r.max.abs()).powi(2) + 1.0);
            let span = 1e-9 * (r.max - r.min + r.min.abs().max(r.max.abs()) + 1.0);
            if mean < r.min - span || mean > r.max + span {
                return Err(format!(
                    "feature {name:?}: the mean of the reported values is {mean}, outside the declared range [{}, {}]",
                    r.min, r.max
                ));
            }
            let bound = (r.min + r.max) * mean - r.min * r.max;
            if mean_sq > bound + tol {
                let std = (mean_sq - mean * mean).max(0.0).sqrt();
                return Err(format!(
                    "feature {name:?}: the reported spread (std {std}) is impossible for values in the declared range [{}, {}]",
                    r.min, r.max
                ));
            }
        }
        Ok(())
    }
}

/// Lowers the largest weights until no weight exceeds its share `s_i` of the total: the
/// weights `min(w_i, s_i·T)` with the largest total `T` that equals their sum. When the shares
/// cannot cover the total (Σ s_i ≤ 1), each weight is its share of the smallest such total —
/// weights in proportion to the shares. Rounded down, at least 1.
pub fn share_capped(weights: &[(u64, f64)]) -> Vec<u64> {
    if weights.iter().all(|&(_, s)| s >= 1.0) {
        return weights.iter().map(|&(w, _)| w).collect();
    }
    // No party holds more than 2^40 rows (the cap on a signed sample count), and below 2^53
    // the f64 arithmetic is exact for whole weights.
    let clamped: Vec<(u64, f64)> = weights
        .iter()
        .map(|&(w, s)| (w.min(shared_model::stats::MAX_ROWS), s))
        .collect();
    let weights = &clamped[..];
    // Breakpoints b_i = w_i / s_i: party i is capped exactly when T < b_i.
    let mut order: Vec<usize> = (0..weights.len()).collect();
    let bp = |i: usize| weights[i].0 as f64 / weights[i].1;
    order.sort_by(|&a, &b| bp(b).total_cmp(&bp(a)));
    let mut free: f64 = weights.iter().map(|&(w, _)| w as f64).sum();
    let mut shares = 0.0;
    let mut total = None;
    for k in 0..order.len() {
        // The first k (largest breakpoints) capped: T = free + shares·T on [b_{k+1}, b_k].
        let upper = if k == 0 {
            f64::INFINITY
        } else {
            bp(order[k - 1])
        };
        let lower = bp(order[k]);
        if shares < 1.0 {
            let t = free / (1.0 - shares);
            if t >= lower * (1.0 - 1e-12) && t <= upper * (1.0 + 1e-12) {
                total = Some(t);
                break;
            }
        }
        free -= weights[order[k]].0 as f64;
        shares += weights[order[k]].1;
    }
    // Every weight capped: only Σ s_i = 1 has a positive total, and then any; take the
    // smallest breakpoint, where each weight is its share.
    let t = total.unwrap_or_else(|| order.last().map_or(0.0, |&i| bp(i)));
    let mut out: Vec<u64> = weights
        .iter()
        .map(|&(w, s)| {
            let w = w as f64;
            (w.min(s * t * (1.0 + 1e-12)).floor().min(w) as u64).max(1)
        })
        .collect();
    // Rounding each weight down lowers the total, which can leave a capped weight above its
    // share of the rounded total: lower each such weight to its share of the others' total,
    // o ≤ s·(rest + o), until none is above (never below 1).
    if weights.iter().map(|&(_, s)| s).sum::<f64>() > 1.0 {
        for _ in 0..=weights.len() {
            let sum: u64 = out.iter().sum();
            let mut changed = false;
            for (o, &(_, s)) in out.iter_mut().zip(weights) {
                if s < 1.0 && *o as f64 > s * sum as f64 {
                    let rest = (sum - *o) as f64;
                    let most = ((s * rest / (1.0 - s)).floor() as u64).max(1);
                    if most < *o {
                        *o = most;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
