//! Feature normalisation that survives federation. Each site reports per-feature sums (count,
//! sum, sum of squares) of its training rows — never the rows — and the coordinator adds them
//! up into the global mean and standard deviation. The normalisation then travels inside every
//! model blob (`norm.mean`, `norm.std`), so published models take raw feature values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::encoding::{self, MAX_CATEGORIES, Missing};

pub mod sketch;

/// Standard deviations below this are treated as constant features (scaled by 1).
pub const MIN_STD: f64 = 1e-8;

/// The most rows one site may report (2^40, about 10^12): larger counts are refused as implausible,
/// which also keeps every count sum far from overflow.
pub const MAX_ROWS: u64 = 1 << 40;

/// Errors from combining feature sums.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StatsError {
    /// Two sums cover different numbers of features.
    #[error("feature sums disagree on width: expected {expected} features, found {found}")]
    Width {
        /// The first width seen.
        expected: usize,
        /// The other one.
        found: usize,
    },
    /// No rows at all.
    #[error("cannot normalise from zero rows")]
    Empty,
    /// A row count of zero or beyond [`MAX_ROWS`].
    #[error("reported row count {count} is not between 1 and {MAX_ROWS}")]
    Count {
        /// The count reported.
        count: u64,
    },
    /// More rows with a value present than rows.
    #[error("feature {index}: {present} rows with a value present, of {count} rows")]
    Present {
        /// Feature index.
        index: usize,
        /// Present count reported.
        present: u64,
        /// Rows reported.
        count: u64,
    },
    /// Category counts or a median histogram that no plant's rows can produce, or for a
    /// column the spec finds no vocabulary or median for.
    #[error("{0}")]
    Found(String),
    /// A reported sum is not finite or is impossible (e.g. negative sum of squares).
    #[error("feature {index}: reported sums are not valid (sum {sum}, sum of squares {sum_sq})")]
    Invalid {
        /// Feature index.
        index: usize,
        /// The sum.
        sum: f64,
        /// The sum of squares.
        sum_sq: f64,
    },
}

/// Mergeable per-feature sufficient statistics of one or more sites.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureSums {
    /// Number of rows.
    pub count: u64,
    /// Σ x per feature.
    pub sum: Vec<f64>,
    /// Σ x² per feature.
    pub sum_sq: Vec<f64>,
    /// Rows whose value is present, per feature, when some are missing (blanks to be filled
    /// with the mean are left out of the sums); empty when every row has every value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub present: Vec<u64>,
    /// Training rows holding each value, per `discover` column (blanks and cells that cannot be
    /// a category not counted): what the statistics step finds vocabularies from. Empty when the spec
    /// discovers none, or when the plant's policy shares no category names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per `missing = "median"` column, the training rows' present values counted on the
    /// [`sketch`] grid (bucket → rows): what the median fill is found from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub histograms: BTreeMap<String, BTreeMap<i32, u64>>,
}

impl FeatureSums {
    /// Zero sums over `width` features.
    pub fn zeros(width: usize) -> Self {
        Self {
            count: 0,
            sum: vec![0.0; width],
            sum_sq: vec![0.0; width],
            present: Vec::new(),
            categories: BTreeMap::new(),
            histograms: BTreeMap::new(),
        }
    }

    /// Attaches a load's counts of `discover` columns' values (`counts.seen`, by feature index).
    pub fn with_categories(
        mut self,
        spec: &crate::spec::ModelSpec,
        seen: &[BTreeMap<String, u64>],
    ) -> Self {
        for (f, counts) in spec.task.features.iter().zip(seen) {
            if spec
                .task
                .columns
                .get(f)
                .is_some_and(|c| c.discover.is_some())
            {
                self.categories.insert(f.clone(), counts.clone());
            }
        }
        self
    }

    /// Checks what a plant reported beside its sums (after [`Self::validate`]): category
    /// counts only for `discover` columns of `spec`, at most [`MAX_CATEGORIES`] names each,
    /// names a vocabulary could hold, counts from 1 to [`MAX_ROWS`] in all; a histogram for
    /// every `missing = "median"` column and no other, its buckets on the grid, counting
    /// exactly the column's present values. Errors name the column.
    pub fn validate_found(&self, spec: &crate::spec::ModelSpec) -> Result<(), StatsError> {
        if let Some(f) = self
            .histograms
            .keys()
            .find(|f| !spec.task.features.contains(f))
        {
            return Err(StatsError::Found(format!(
                "a histogram of {f:?}, which is not a feature"
            )));
        }
        for f in &spec.task.features {
            let median = spec
                .task
                .columns
                .get(f)
                .is_some_and(|c| c.missing == Missing::Median);
            match (median, self.histograms.get(f)) {
                (false, None) => {}
                (false, Some(_)) => {
                    return Err(StatsError::Found(format!(
                        "a histogram of column {f:?}, whose blanks the spec does not fill with the median"
                    )));
                }
                (true, h) => {
                    let present = spec.input_of(f).map_or(0, |j| self.present(j));
                    let h = h.cloned().unwrap_or_default();
                    if let Some(k) = h.keys().find(|k| k.abs() > sketch::MAX_KEY) {
                        return Err(StatsError::Found(format!(
                            "median histogram of column {f:?}: bucket {k} is off the grid (|key| ≤ {})",
                            sketch::MAX_KEY
                        )));
                    }
                    let total = h
                        .values()
                        .try_fold(0u64, |t, &c| (c > 0).then(|| t.checked_add(c)).flatten());
                    if total != Some(present) {
                        return Err(StatsError::Found(format!(
                            "median histogram of column {f:?}: it counts {} values, the sums {present} present",
                            total.map_or("an impossible number of".into(), |t| t.to_string())
                        )));
                    }
                }
            }
        }
        self.validate_categories(spec)
    }

    fn validate_categories(&self, spec: &crate::spec::ModelSpec) -> Result<(), StatsError> {
        for (f, counts) in &self.categories {
            // the rows holding a name are among the training rows with the column present
            let present = first_input(spec, f).map_or(0, |j| self.present(j));
            if spec
                .task
                .columns
                .get(f)
                .is_none_or(|c| c.discover.is_none())
            {
                return Err(StatsError::Found(format!(
                    "category counts: column {f:?} is not a column the spec discovers a vocabulary for"
                )));
            }
            if counts.len() > MAX_CATEGORIES {
                return Err(StatsError::Found(format!(
                    "category counts: column {f:?}: {} names, at most {MAX_CATEGORIES} are read",
                    counts.len()
                )));
            }
            let mut total = 0u64;
            for (name, &n) in counts {
                if !encoding::is_found_name(name) {
                    return Err(StatsError::Found(format!(
                        "category counts: column {f:?}: {name:?} is not a category name (1 to 256 bytes, no surrounding spaces, not a blank marker)"
                    )));
                }
                total = total.saturating_add(n);
                if n == 0 || total > present {
                    return Err(StatsError::Found(format!(
                        "category counts: column {f:?}: count {n} of {name:?} is 0 or takes the counts past the {present} training rows with the column present"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sums over the rows of a row-major matrix with `width` columns; NaN marks a missing value,
    /// left out of its feature's sums and counted out of [`Self::present`].
    pub fn of_rows(rows: &[f32], width: usize) -> Self {
        let mut s = Self::zeros(width);
        let mut missing = vec![0u64; width];
        for row in rows.chunks_exact(width) {
            s.count += 1;
            for (j, &x) in row.iter().enumerate() {
                if x.is_nan() {
                    missing[j] += 1;
                    continue;
                }
                let x = f64::from(x);
                s.sum[j] += x;
                s.sum_sq[j] += x * x;
            }
        }
        if missing.iter().any(|&m| m > 0) {
            s.present = missing.iter().map(|m| s.count - m).collect();
        }
        s
    }

    /// The statistics-step sums of a party's training rows for `spec`: each network input and,
    /// when the spec standardises it, the target last ([`ModelSpec::stats_width`]).
    pub fn of_dataset(spec: &crate::spec::ModelSpec, data: &crate::data::Dataset) -> Self {
        let mut s = Self::of_rows(&data.features, spec.input_width());
        for (f, c) in &spec.task.columns {
            if c.missing != Missing::Median {
                continue;
            }
            let Some(j) = spec.input_of(f) else { continue };
            let mut h = BTreeMap::new();
            for i in 0..data.len() {
                let x = data.row(i)[j];
                if !x.is_nan() {
                    sketch::add(&mut h, f64::from(x));
                }
            }
            s.histograms.insert(f.clone(), h);
        }
        if spec.task.standardize_target {
            let (sum, sum_sq) = data.targets.iter().fold((0.0, 0.0), |(a, b), &y| {
                let y = f64::from(y);
                (a + y, b + y * y)
            });
            s.sum.push(sum);
            s.sum_sq.push(sum_sq);
            if !s.present.is_empty() {
                s.present.push(s.count);
            }
        }
        s
    }

    /// The task's normalisation from sums of [`Self::of_dataset`]'s width: the inputs' and,
    /// when the spec standardises the target, the target's mean and standard deviation.
    pub fn normalization_for(
        &self,
        spec: &crate::spec::ModelSpec,
    ) -> Result<Normalization, StatsError> {
        let mut n = self.normalization()?;
        if spec.task.standardize_target {
            let width = spec.stats_width();
            if n.mean.len() != width {
                return Err(StatsError::Width {
                    expected: width,
                    found: n.mean.len(),
                });
            }
            let (mean, std) = (n.mean.pop(), n.std.pop());
            n.target = mean.zip(std).map(|(mean, std)| TargetScale { mean, std });
        }
        for (f, c) in &spec.task.columns {
            if c.missing == Missing::Median {
                // no value anywhere: the mean's fill (0 before normalisation, as its mean)
                let m = self
                    .histograms
                    .get(f)
                    .and_then(sketch::median)
                    .unwrap_or(0.0);
                n.medians.insert(f.clone(), m);
            }
        }
        if spec.discovers() {
            self.discover(spec, &mut n);
        }
        Ok(n)
    }

    /// The statistics step's vocabularies: per `discover` column, the names at least
    /// `min_count` rows hold across the plants, most frequent first (ties by name), at most
    /// `slots` (for a spec whose vocabularies are found already, those). Their one-hot inputs are normalised by the shares the counts give (a plant
    /// reported every row under "other", not knowing the vocabulary yet); when no plant
    /// shared names, the vocabulary is empty and every value is "other".
    fn discover(&self, spec: &crate::spec::ModelSpec, n: &mut Normalization) {
        let mut at = 0;
        for f in &spec.task.features {
            let column = spec.task.columns.get(f);
            let width = column.map_or(1, crate::encoding::Column::width);
            if let Some(d) = column.and_then(|c| c.discover) {
                let counts = self.categories.get(f);
                let count = |name: &String| counts.and_then(|c| c.get(name)).copied().unwrap_or(0);
                let ranked: Vec<(&String, u64)> = match column.and_then(|c| c.found.as_ref()) {
                    // a spec whose vocabulary is already found: that one, normalised by these counts
                    Some(found) => found.iter().map(|k| (k, count(k))).collect(),
                    None => {
                        let mut r: Vec<(&String, u64)> = counts
                            .into_iter()
                            .flatten()
                            .filter(|(_, c)| **c >= d.min_count)
                            .map(|(name, c)| (name, *c))
                            .collect();
                        r.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
                        r.truncate(d.slots);
                        r
                    }
                };
                // The rows the slots' shares are of: those with the column present (a blank
                // filled with the mean is in no slot), else every training row (a blank counted
                // as "other" is in the other slot, as is a name left uncounted).
                let total: u64 = match column.map(|c| c.missing) {
                    Some(Missing::Mean) => self.present(at),
                    _ => self.count,
                };
                let named: u64 = counts.into_iter().flatten().map(|(_, c)| *c).sum();
                if named > 0 && total > 0 {
                    let total = total as f64;
                    let kept: u64 = ranked.iter().map(|(_, c)| c).sum();
                    let share = |c: u64| c as f64 / total;
                    for i in 0..=d.slots {
                        let p = match ranked.get(i) {
                            Some((_, c)) => Some(share(*c)),
                            None if i == d.slots => Some(1.0 - share(kept)),
                            None => None,
                        };
                        let (m, s) = p.map_or((0.0, 1.0), |p| (p, (p * (1.0 - p)).max(0.0).sqrt()));
                        n.mean[at + i] = m as f32;
                        n.std[at + i] = if s < MIN_STD { 1.0 } else { s as f32 };
                    }
                }
                n.vocabularies.insert(
                    f.clone(),
                    ranked.into_iter().map(|(k, _)| k.clone()).collect(),
                );
            }
            at += width;
        }
    }

    /// Rows whose value of feature `j` is present.
    pub fn present(&self, j: usize) -> u64 {
        self.present.get(j).copied().unwrap_or(self.count)
    }

    /// Checks sums received from a site before they are stored: `width` features, at least one
    /// and at most [`MAX_ROWS`] rows, finite values, Σx² ≥ 0, and (Cauchy–Schwarz) (Σx)² ≤ n·Σx²
    /// up to rounding — sums no real set of rows can produce are refused, naming the feature.
    pub fn validate(&self, width: usize) -> Result<(), StatsError> {
        if self.sum.len() != width || self.sum_sq.len() != width {
            return Err(StatsError::Width {
                expected: width,
                found: self.sum.len().max(self.sum_sq.len()),
            });
        }
        if self.count == 0 || self.count > MAX_ROWS {
            return Err(StatsError::Count { count: self.count });
        }
        if !self.present.is_empty() && self.present.len() != width {
            return Err(StatsError::Width {
                expected: width,
                found: self.present.len(),
            });
        }
        if let Some(index) = (0..width).find(|&j| self.present(j) > self.count) {
            return Err(StatsError::Present {
                index,
                present: self.present(index),
                count: self.count,
            });
        }
        for (index, (&sum, &sum_sq)) in self.sum.iter().zip(&self.sum_sq).enumerate() {
            let n = self.present(index) as f64;
            // no value present: nothing to sum
            let impossible = sum * sum > n * sum_sq * (1.0 + 1e-9) + 1e-9
                || (n == 0.0 && (sum != 0.0 || sum_sq != 0.0));
            if !sum.is_finite() || !sum_sq.is_finite() || sum_sq < 0.0 || impossible {
                return Err(StatsError::Invalid { index, sum, sum_sq });
            }
        }
        Ok(())
    }

    /// Adds another site's sums.
    pub fn merge(&mut self, other: &Self) -> Result<(), StatsError> {
        if other.sum.len() != self.sum.len() || other.sum_sq.len() != self.sum.len() {
            return Err(StatsError::Width {
                expected: self.sum.len(),
                found: other.sum.len(),
            });
        }
        let width = self.sum.len();
        if !other.present.is_empty() && other.present.len() != width {
            return Err(StatsError::Width {
                expected: width,
                found: other.present.len(),
            });
        }
        if !self.present.is_empty() || !other.present.is_empty() {
            self.present = (0..width)
                .map(|j| self.present(j).saturating_add(other.present(j)))
                .collect();
        }
        self.count = self
            .count
            .checked_add(other.count)
            .ok_or(StatsError::Count { count: u64::MAX })?;
        for j in 0..width {
            self.sum[j] += other.sum[j];
            self.sum_sq[j] += other.sum_sq[j];
        }
        self.merge_categories(other);
        Ok(())
    }

    /// Adds another site's category counts and histograms (saturating).
    pub fn merge_categories(&mut self, other: &Self) {
        for (f, h) in &other.histograms {
            let mine = self.histograms.entry(f.clone()).or_default();
            for (&k, &n) in h {
                let c = mine.entry(k).or_default();
                *c = c.saturating_add(n);
            }
        }
        for (f, counts) in &other.categories {
            let mine = self.categories.entry(f.clone()).or_default();
            for (name, &n) in counts {
                let c = mine.entry(name.clone()).or_default();
                *c = c.saturating_add(n);
            }
        }
    }

    /// Global mean and (population) standard deviation of the present values; constant
    /// features (and features with no value present) get std 1 (mean 0 when none is present).
    pub fn normalization(&self) -> Result<Normalization, StatsError> {
        if self.count == 0 {
            return Err(StatsError::Empty);
        }
        let mut mean = Vec::with_capacity(self.sum.len());
        let mut std = Vec::with_capacity(self.sum.len());
        for (index, (&sum, &sum_sq)) in self.sum.iter().zip(&self.sum_sq).enumerate() {
            if !sum.is_finite() || !sum_sq.is_finite() || sum_sq < 0.0 {
                return Err(StatsError::Invalid { index, sum, sum_sq });
            }
            let present = self.present(index);
            if present == 0 {
                mean.push(0.0);
                std.push(1.0);
                continue;
            }
            let n = present as f64;
            let m = sum / n;
            // Sums that pass `validate` can still give a mean or spread beyond f32 (a lying
            // party's 1e39): refused here, never a non-finite model.
            let var_check = (sum_sq / n - m * m).max(0.0).sqrt();
            if !(m.abs() < f64::from(f32::MAX) / 2.0 && var_check < f64::from(f32::MAX) / 2.0) {
                return Err(StatsError::Invalid { index, sum, sum_sq });
            }
            let var = (sum_sq / n - m * m).max(0.0);
            let s = var.sqrt();
            mean.push(m as f32);
            std.push(if s < MIN_STD { 1.0 } else { s as f32 });
        }
        Ok(Normalization {
            mean,
            std,
            target: None,
            vocabularies: BTreeMap::new(),
            medians: Default::default(),
        })
    }
}

/// The first network input of feature `f` (its first one-hot slot for a categorical column).
fn first_input(spec: &crate::spec::ModelSpec, f: &str) -> Option<usize> {
    let mut at = 0;
    for g in &spec.task.features {
        if g == f {
            return Some(at);
        }
        at += spec
            .task
            .columns
            .get(g)
            .map_or(1, crate::encoding::Column::width);
    }
    None
}

/// Per-feature affine normalisation `(x − mean) / std`, and the target's when a regression
/// spec standardises it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean per feature.
    pub mean: Vec<f32>,
    /// Standard deviation per feature (> 0).
    pub std: Vec<f32>,
    /// The target's mean and standard deviation (`task.standardize_target`): the network
    /// learns `(y − mean) / std` and its output `z` is read as `z · std + mean`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetScale>,
    /// The vocabularies the statistics step found, per `discover` column (the task's models
    /// carry them: [`crate::spec::ModelSpec::with_vocabularies`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vocabularies: BTreeMap<String, Vec<String>>,
    /// The medians the statistics step found, per `missing = "median"` column (the task's
    /// models carry them: [`crate::spec::ModelSpec::resolved`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub medians: BTreeMap<String, f64>,
}

/// A regression target's standardisation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetScale {
    /// Mean of the training targets.
    pub mean: f32,
    /// Standard deviation of the training targets (> 0).
    pub std: f32,
}

impl TargetScale {
    /// No scaling.
    pub const IDENTITY: Self = Self {
        mean: 0.0,
        std: 1.0,
    };

    /// A target in its units → what the network learns.
    pub fn scale(&self, y: f32) -> f32 {
        (y - self.mean) / self.std
    }

    /// The network's output → the target's units.
    pub fn unscale(&self, z: f32) -> f32 {
        z * self.std + self.mean
    }
}

impl Normalization {
    /// Mean 0, std 1: leaves features as they are.
    pub fn identity(width: usize) -> Self {
        Self {
            mean: vec![0.0; width],
            std: vec![1.0; width],
            target: None,
            vocabularies: BTreeMap::new(),
            medians: Default::default(),
        }
    }

    /// Normalises a row-major matrix into a new one. A missing value (NaN) becomes 0: the
    /// mean, which is what a blank declared `missing = "mean"` is filled with.
    pub fn apply(&self, rows: &[f32]) -> Vec<f32> {
        let w = self.mean.len();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.chunks_exact(w) {
            out.extend(
                row.iter()
                    .zip(self.mean.iter().zip(&self.std))
                    .map(|(x, (m, s))| if x.is_nan() { 0.0 } else { (x - m) / s }),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_computed_mean_and_std() {
        // feature 0: 1, 2, 3 → mean 2, population std √(2/3); feature 1 is constant
        let s = FeatureSums::of_rows(&[1.0, 5.0, 2.0, 5.0, 3.0, 5.0], 2);
        assert_eq!(s.count, 3);
        assert_eq!(s.sum, vec![6.0, 15.0]);
        assert_eq!(s.sum_sq, vec![14.0, 75.0]);
        let n = s.normalization().unwrap();
        assert!((n.mean[0] - 2.0).abs() < 1e-6);
        assert!((n.std[0] - (2.0f32 / 3.0).sqrt()).abs() < 1e-6);
        assert_eq!(n.mean[1], 5.0);
        assert_eq!(n.std[1], 1.0);
        let z = n.apply(&[3.0, 5.0]);
        assert!((z[0] - 1.0 / (2.0f32 / 3.0).sqrt()).abs() < 1e-5);
        assert_eq!(z[1], 0.0);
    }

    #[test]
    fn errors_are_reported() {
        assert_eq!(
            FeatureSums::zeros(2).normalization(),
            Err(StatsError::Empty)
        );
        let mut a = FeatureSums::zeros(2);
        assert!(matches!(
            a.merge(&FeatureSums::zeros(3)),
            Err(StatsError::Width {
                expected: 2,
                found: 3
            })
        ));
        let bad = FeatureSums {
            count: 1,
            sum: vec![f64::NAN],
            sum_sq: vec![1.0],
            present: Vec::new(),
            categories: Default::default(),
            histograms: Default::default(),
        };
        assert!(matches!(
            bad.normalization(),
            Err(StatsError::Invalid { index: 0, .. })
        ));
    }

    proptest! {
        /// Merging the sums of any split of the rows gives the statistics of all rows.
        #[test]
        fn merged_sums_equal_pooled_sums(
            rows in prop::collection::vec(-1000.0f32..1000.0, 3..300),
            cut in 0usize..100,
        ) {
            let width = 3;
            let n = rows.len() / width * width;
            let rows = &rows[..n];
            let cut = (cut * width).min(n);
            let mut merged = FeatureSums::of_rows(&rows[..cut], width);
            merged.merge(&FeatureSums::of_rows(&rows[cut..], width)).unwrap();
            let pooled = FeatureSums::of_rows(rows, width);
            prop_assert_eq!(merged.count, pooled.count);
            for j in 0..width {
                prop_assert!((merged.sum[j] - pooled.sum[j]).abs() <= 1e-6 * (1.0 + pooled.sum[j].abs()));
                prop_assert!((merged.sum_sq[j] - pooled.sum_sq[j]).abs() <= 1e-6 * (1.0 + pooled.sum_sq[j]));
            }
        }
    }

    #[test]
    fn validate_refuses_sums_no_rows_can_produce() {
        let rows = [1.0f32, 2.0, 3.0, 4.0];
        let good = FeatureSums::of_rows(&rows, 2);
        assert_eq!(good.validate(2), Ok(()));
        assert!(matches!(good.validate(3), Err(StatsError::Width { .. })));
        let mut nan = good.clone();
        nan.sum[1] = f64::NAN;
        assert!(matches!(
            nan.validate(2),
            Err(StatsError::Invalid { index: 1, .. })
        ));
        let mut negative = good.clone();
        negative.sum_sq[0] = -1.0;
        assert!(matches!(
            negative.validate(2),
            Err(StatsError::Invalid { index: 0, .. })
        ));
        // Σx = 100 over 2 rows needs Σx² ≥ 5000.
        let mut impossible = good.clone();
        impossible.sum[0] = 100.0;
        assert!(matches!(
            impossible.validate(2),
            Err(StatsError::Invalid { index: 0, .. })
        ));
        let mut huge = good.clone();
        huge.count = u64::MAX;
        assert_eq!(huge.validate(2), Err(StatsError::Count { count: u64::MAX }));
        let mut zero = good;
        zero.count = 0;
        assert_eq!(zero.validate(2), Err(StatsError::Count { count: 0 }));
    }
}

#[cfg(test)]
mod lying_sums {
    use super::*;

    #[test]
    fn sums_beyond_f32_or_with_nothing_present_are_refused_not_a_non_finite_model() {
        let huge = FeatureSums {
            count: 1,
            sum: vec![1e39],
            sum_sq: vec![1e78],
            present: Vec::new(),
            categories: Default::default(),
            histograms: Default::default(),
        };
        assert_eq!(huge.validate(1), Ok(()), "possible as f64 sums");
        assert!(matches!(
            huge.normalization(),
            Err(StatsError::Invalid { index: 0, .. })
        ));
        let ghost = FeatureSums {
            count: 5,
            sum: vec![0.0, 3.0],
            sum_sq: vec![1e12, 9.0],
            present: vec![0, 5],
            categories: Default::default(),
            histograms: Default::default(),
        };
        assert!(matches!(
            ghost.validate(2),
            Err(StatsError::Invalid { index: 0, .. })
        ));
        let too_many = FeatureSums {
            present: vec![6, 5],
            categories: Default::default(),
            histograms: Default::default(),
            ..ghost
        };
        assert!(matches!(
            too_many.validate(2),
            Err(StatsError::Present { index: 0, .. }) | Err(StatsError::Invalid { .. })
        ));
    }
}
