//! A mergeable histogram of a column's values for the federated median (`missing = "median"`):
//! each value goes to a bucket of a fixed logarithmic grid (relative width 2 %, as in
//! DDSketch, Masson, Rim & Lee 2019), so sites add their counts with no agreed range, and the
//! median read from the merged counts is within 1 % of a value at the median's rank.

use std::collections::BTreeMap;

/// Bucket ratio γ: a bucket holds values in (γ^(k−1), γ^k]; the value reported for it is
/// within (γ − 1)/(γ + 1) ≈ 0.99 % of any of them.
pub const GAMMA: f64 = 1.02;

/// Magnitudes below this share the zero bucket.
pub const MIN_MAGNITUDE: f64 = 1e-12;

/// Largest bucket magnitude index (covers f32's range at [`GAMMA`]).
const MAX_INDEX: i32 = 5_000;

/// The largest absolute bucket key.
pub const MAX_KEY: i32 = 2 * MAX_INDEX + 1;

/// The bucket of `x` (finite): 0 for |x| < [`MIN_MAGNITUDE`], else ±(index + offset) with the
/// sign of `x`, so keys sort as the values do.
pub fn bucket(x: f64) -> i32 {
    if x.abs() < MIN_MAGNITUDE {
        return 0;
    }
    let k = (x.abs().ln() / GAMMA.ln()).ceil() as i64;
    let k = k.clamp(-i64::from(MAX_INDEX), i64::from(MAX_INDEX)) as i32;
    let key = k + MAX_INDEX + 1;
    if x > 0.0 { key } else { -key }
}

/// The value a bucket stands for: the point of least relative error over its range.
pub fn value(key: i32) -> f64 {
    if key == 0 {
        return 0.0;
    }
    let k = key.abs() - MAX_INDEX - 1;
    let v = 2.0 * GAMMA.powi(k) / (GAMMA + 1.0);
    if key > 0 { v } else { -v }
}

/// Adds `x` to a histogram.
pub fn add(h: &mut BTreeMap<i32, u64>, x: f64) {
    *h.entry(bucket(x)).or_default() += 1;
}

/// The (lower) median of the counted values, within 1 %: the value of the bucket holding the
/// ⌈n/2⌉-th smallest. `None` for an empty histogram.
pub fn median(h: &BTreeMap<i32, u64>) -> Option<f64> {
    let n: u64 = h.values().sum();
    if n == 0 {
        return None;
    }
    let rank = n.div_ceil(2);
    let mut seen = 0u64;
    for (&key, &c) in h {
        seen += c;
        if seen >= rank {
            return Some(value(key));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_sort_as_values_and_stand_for_them_within_one_percent() {
        let xs = [
            -3e7, -250.0, -1.0, -1e-3, 0.0, 1e-13, 1e-3, 0.5, 1.0, 42.0, 6.1e9,
        ];
        let keys: Vec<i32> = xs.iter().map(|&x| bucket(x)).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{keys:?}");
        for &x in &xs {
            let v = value(bucket(x));
            if x.abs() < MIN_MAGNITUDE {
                assert_eq!(v, 0.0);
            } else {
                assert!(((v - x) / x).abs() <= 0.0100, "{x} → {v}");
            }
        }
        assert!(bucket(f64::from(f32::MAX)).abs() <= MAX_KEY);
    }

    proptest! {
        /// The merged sites' median is within 1 % of the pooled rows' exact lower median.
        #[test]
        fn federated_median_is_within_one_percent_of_the_pooled_one(
            rows in prop::collection::vec(-1.0e6f64..1.0e6, 1..400),
            cut in 0usize..400,
        ) {
            let cut = cut.min(rows.len());
            let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
            rows[..cut].iter().for_each(|&x| add(&mut a, x));
            rows[cut..].iter().for_each(|&x| add(&mut b, x));
            for (k, c) in b {
                *a.entry(k).or_default() += c;
            }
            let mut sorted = rows.clone();
            sorted.sort_by(f64::total_cmp);
            let exact = sorted[rows.len().div_ceil(2) - 1];
            let m = median(&a).unwrap();
            prop_assert!((m - exact).abs() <= 0.0100 * exact.abs() + MIN_MAGNITUDE, "{m} vs {exact}");
        }
    }
}
