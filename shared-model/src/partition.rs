//! Partitioners for simulation: how a pooled dataset is dealt out to N simulated parties.
//! `iid` (shuffled, equal shares), `dirichlet:α` (label skew: each class's rows divided by
//! Dirichlet(α) proportions), `quantity:α` (size skew: party sizes ~ Dirichlet(α)) and
//! `shift:FEATURE` (covariate shift: rows sorted by a feature and cut into contiguous blocks).
//! Small α means strong skew; α = 100 is nearly IID. All are deterministic for a seed.

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use crate::data::Dataset;
use crate::spec::{ModelSpec, TaskKind};

/// How rows are dealt to parties.
#[derive(Clone, Debug, PartialEq)]
pub enum Partition {
    /// Shuffled, equal shares.
    Iid,
    /// Label skew with Dirichlet concentration α (classification only).
    Dirichlet(f64),
    /// Size skew with Dirichlet concentration α.
    Quantity(f64),
    /// Covariate shift: sorted by the named feature, contiguous blocks.
    Shift(String),
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Iid => f.write_str("iid"),
            Partition::Dirichlet(a) => write!(f, "dirichlet:{a}"),
            Partition::Quantity(a) => write!(f, "quantity:{a}"),
            Partition::Shift(c) => write!(f, "shift:{c}"),
        }
    }
}

/// Errors from parsing or applying a partition.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PartitionError {
    /// The text is not a known partition.
    #[error(
        "unknown partition {0:?}: expected iid, dirichlet:ALPHA, quantity:ALPHA or shift:FEATURE"
    )]
    Unknown(String),
    /// α is not a positive number.
    #[error("partition {0:?}: ALPHA must be a number > 0")]
    BadAlpha(String),
    /// The shift feature is not a feature of the spec.
    #[error("partition shift:{0}: {0:?} is not one of the spec's feature columns")]
    UnknownFeature(String),
    /// Label skew asked for a regression task.
    #[error(
        "partition dirichlet needs class labels; this task is regression (use quantity or shift)"
    )]
    NeedsClasses,
    /// Not enough rows to give every party its minimum.
    #[error(
        "cannot give each of {parties} parties at least {min_rows} of {rows} rows with {partition}; use fewer parties, a larger ALPHA or more data"
    )]
    TooFewRows {
        /// Parties asked for.
        parties: usize,
        /// Minimum rows per party.
        min_rows: usize,
        /// Rows available.
        rows: usize,
        /// The partition.
        partition: String,
    },
}

impl FromStr for Partition {
    type Err = PartitionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let alpha = |a: &str| {
            a.parse::<f64>()
                .ok()
                .filter(|a| a.is_finite() && *a > 0.0)
                .ok_or_else(|| PartitionError::BadAlpha(s.to_string()))
        };
        match s.split_once(':') {
            None if s == "iid" => Ok(Partition::Iid),
            Some(("dirichlet", a)) => Ok(Partition::Dirichlet(alpha(a)?)),
            Some(("quantity", a)) => Ok(Partition::Quantity(alpha(a)?)),
            Some(("shift", c)) if !c.is_empty() => Ok(Partition::Shift(c.to_string())),
            _ => Err(PartitionError::Unknown(s.to_string())),
        }
    }
}

/// Deals the rows of `data` to `parties` parties; returns each party's row indices (sorted).
/// Every party gets at least `min_rows` rows; skewed draws are retried (up to 100 times) until
/// they do.
pub fn partition(
    data: &Dataset,
    spec: &ModelSpec,
    how: &Partition,
    parties: usize,
    min_rows: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    assert!(parties > 0, "at least one party");
    let n = data.len();
    let too_few = || PartitionError::TooFewRows {
        parties,
        min_rows,
        rows: n,
        partition: how.to_string(),
    };
    if n < parties * min_rows {
        return Err(too_few());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut out = match how {
        Partition::Iid => {
            order.shuffle(&mut rng);
            cut(&order, &equal_sizes(n, parties))
        }
        Partition::Shift(feature) => {
            // Rows sorted by the column's value: a number (a blank, NaN, sorts last), or for a
            // categorical column its category in declared order ("other" last) — so each party
            // gets a block of values, or of categories (a plant that makes other products).
            let key = shift_key(spec, feature)
                .ok_or_else(|| PartitionError::UnknownFeature(feature.clone()))?;
            let keys: Vec<f32> = (0..n).map(|i| key(data.row(i))).collect();
            order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]).then(a.cmp(&b)));
            cut(&order, &equal_sizes(n, parties))
        }
        Partition::Quantity(alpha) => {
            // every party gets its minimum, the rest is dealt in Dirichlet(α) proportions
            order.shuffle(&mut rng);
            let p = dirichlet(&mut rng, *alpha, parties);
            let sizes: Vec<usize> = sizes_from_proportions(&p, n - parties * min_rows)
                .into_iter()
                .map(|s| s + min_rows)
                .collect();
            cut(&order, &sizes)
        }
        Partition::Dirichlet(alpha) => {
            if spec.task.kind == TaskKind::Regression {
                return Err(PartitionError::NeedsClasses);
            }
            let classes = spec.task.kind.output_width().max(2);
            let mut by_class = vec![Vec::new(); classes];
            for (i, &t) in data.targets.iter().enumerate() {
                by_class[t as usize].push(i);
            }
            let mut found = None;
            for _ in 0..100 {
                let mut shares = vec![Vec::new(); parties];
                for rows in &mut by_class {
                    rows.shuffle(&mut rng);
                    let p = dirichlet(&mut rng, *alpha, parties);
                    for (k, part) in cut(rows, &sizes_from_proportions(&p, rows.len()))
                        .into_iter()
                        .enumerate()
                    {
                        shares[k].extend(part);
                    }
                }
                if shares.iter().all(|s| s.len() >= min_rows) {
                    found = Some(shares);
                    break;
                }
            }
            found.ok_or_else(too_few)?
        }
    };
    for part in &mut out {
        part.sort_unstable();
    }
    Ok(out)
}

/// What `shift:FEATURE` sorts an encoded row by.
type ShiftKey = Box<dyn Fn(&[f32]) -> f32>;

/// The feature's input, or the index of the hot input of a categorical feature's one-hot block.
/// `None` if FEATURE is not a feature of the spec.
fn shift_key(spec: &ModelSpec, feature: &str) -> Option<ShiftKey> {
    let mut at = 0;
    for f in &spec.task.features {
        let column = spec.task.columns.get(f);
        if f == feature {
            return Some(match column.and_then(|c| c.categories.as_ref()) {
                None => Box::new(move |row: &[f32]| row[at]),
                Some(cats) => {
                    let slots = cats.len() + 1;
                    Box::new(move |row: &[f32]| {
                        row[at..at + slots]
                            .iter()
                            .position(|&v| v == 1.0)
                            .unwrap_or(slots) as f32
                    })
                }
            });
        }
        at += column.map_or(1, |c| c.width());
    }
    None
}

fn equal_sizes(n: usize, parties: usize) -> Vec<usize> {
    (0..parties)
        .map(|k| n / parties + usize::from(k < n % parties))
        .collect()
}

fn cut(order: &[usize], sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&s| {
            let part = order[start..start + s].to_vec();
            start += s;
            part
        })
        .collect()
}

/// Integer sizes summing to `n` in the given proportions (largest remainders).
fn sizes_from_proportions(p: &[f64], n: usize) -> Vec<usize> {
    let raw: Vec<f64> = p.iter().map(|x| x * n as f64).collect();
    let mut sizes: Vec<usize> = raw.iter().map(|x| x.floor() as usize).collect();
    let mut rest = n - sizes.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..p.len()).collect();
    by_remainder.sort_by(|&a, &b| {
        (raw[b] - raw[b].floor())
            .total_cmp(&(raw[a] - raw[a].floor()))
            .then(a.cmp(&b))
    });
    for &k in by_remainder.iter().cycle() {
        if rest == 0 {
            break;
        }
        sizes[k] += 1;
        rest -= 1;
    }
    sizes
}

/// A draw from the symmetric Dirichlet(α) over `k` parts, via normalised Gamma(α, 1) draws.
fn dirichlet(rng: &mut ChaCha8Rng, alpha: f64, k: usize) -> Vec<f64> {
    let gamma = Gamma::new(alpha, 1.0).expect("alpha > 0");
    let g: Vec<f64> = (0..k).map(|_| gamma.sample(rng)).collect();
    let sum: f64 = g.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        g.iter().map(|x| x / sum).collect()
    } else {
        // every draw underflowed (tiny α): all mass on one part, chosen at random
        let mut p = vec![0.0; k];
        p[rng.random_range(0..k)] = 1.0;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::SMALL;

    fn data(n: usize) -> (ModelSpec, Dataset) {
        let spec = ModelSpec::parse(SMALL, "<t>").unwrap();
        let ds = Dataset {
            width: 3,
            features: (0..n * 3).map(|i| ((i * 7919) % 1000) as f32).collect(),
            targets: (0..n).map(|i| (i % 2) as f32).collect(),
        };
        (spec, ds)
    }

    fn check_complete(parts: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..n).collect::<Vec<_>>(),
            "every row dealt exactly once"
        );
    }

    #[test]
    fn parses_and_displays() {
        for s in ["iid", "dirichlet:0.5", "quantity:2", "shift:a"] {
            assert_eq!(s.parse::<Partition>().unwrap().to_string(), s);
        }
        assert!(matches!(
            "dirichlet:-1".parse::<Partition>(),
            Err(PartitionError::BadAlpha(_))
        ));
        assert!(matches!(
            "zipf:1".parse::<Partition>(),
            Err(PartitionError::Unknown(_))
        ));
    }

    #[test]
    fn every_partition_deals_each_row_once_and_is_deterministic() {
        let (spec, ds) = data(300);
        for how in [
            "iid",
            "dirichlet:0.3",
            "dirichlet:100",
            "quantity:0.5",
            "shift:b",
        ] {
            let how: Partition = how.parse().unwrap();
            let a = partition(&ds, &spec, &how, 5, 10, 1).unwrap();
            check_complete(&a, 300);
            assert!(a.iter().all(|p| p.len() >= 10), "{how}");
            assert_eq!(a, partition(&ds, &spec, &how, 5, 10, 1).unwrap(), "{how}");
        }
    }

    #[test]
    fn skew_grows_as_alpha_shrinks() {
        let (spec, ds) = data(1000);
        // mean absolute deviation of each party's positive rate from the global 0.5
        let skew = |alpha: f64| {
            let parts = partition(&ds, &spec, &Partition::Dirichlet(alpha), 4, 5, 3).unwrap();
            parts
                .iter()
                .map(|p| {
                    let pos = p.iter().filter(|&&i| ds.targets[i] == 1.0).count();
                    (pos as f64 / p.len() as f64 - 0.5).abs()
                })
                .sum::<f64>()
                / 4.0
        };
        assert!(skew(100.0) < 0.1, "{}", skew(100.0));
        assert!(skew(0.1) > 0.2, "{}", skew(0.1));
    }

    #[test]
    fn shift_sorts_by_the_feature() {
        let (spec, ds) = data(100);
        let parts = partition(&ds, &spec, &Partition::Shift("a".into()), 2, 1, 0).unwrap();
        let max0 = parts[0]
            .iter()
            .map(|&i| ds.row(i)[0])
            .fold(f32::MIN, f32::max);
        let min1 = parts[1]
            .iter()
            .map(|&i| ds.row(i)[0])
            .fold(f32::MAX, f32::min);
        assert!(max0 <= min1);
        assert_eq!(
            partition(&ds, &spec, &Partition::Shift("nope".into()), 2, 1, 0),
            Err(PartitionError::UnknownFeature("nope".into()))
        );
    }

    #[test]
    fn shift_by_a_categorical_column_deals_blocks_of_categories_and_blanks_sort_last() {
        // b is categorical (p, q, r + other), c numeric with blanks filled with the mean.
        let text = SMALL
            .replacen("[model]", "[task.columns.b]\ncategories = [\"p\", \"q\", \"r\"]\n[task.columns.c]\nmissing = \"mean\"\n[model]", 1);
        let spec = ModelSpec::parse(&text, "<t>").unwrap();
        assert_eq!(spec.input_width(), 6);
        let n = 90;
        let mut ds = Dataset::empty(6);
        for i in 0..n {
            let mut hot = [0.0f32; 4];
            hot[i % 4] = 1.0; // p, q, r, other in turn
            ds.features.push(i as f32);
            ds.features.extend_from_slice(&hot);
            ds.features
                .push(if i % 5 == 0 { f32::NAN } else { i as f32 });
            ds.targets.push((i % 2) as f32);
        }
        let parts = partition(&ds, &spec, &Partition::Shift("b".into()), 2, 1, 0).unwrap();
        check_complete(&parts, n);
        let category = |i: usize| ds.row(i)[1..5].iter().position(|&v| v == 1.0).unwrap();
        let last0 = parts[0].iter().map(|&i| category(i)).max().unwrap();
        let first1 = parts[1].iter().map(|&i| category(i)).min().unwrap();
        assert!(last0 <= first1, "categories in declared order, other last");
        assert!(parts[1].iter().any(|&i| category(i) == 3));
        let parts = partition(&ds, &spec, &Partition::Shift("c".into()), 3, 1, 0).unwrap();
        check_complete(&parts, n);
        assert!(parts[2].iter().any(|&i| ds.row(i)[5].is_nan()));
        assert!(
            parts[0]
                .iter()
                .chain(&parts[1])
                .all(|&i| !ds.row(i)[5].is_nan())
        );
    }

    #[test]
    fn too_few_rows_is_an_error() {
        let (spec, ds) = data(20);
        let e = partition(&ds, &spec, &Partition::Iid, 5, 10, 0).unwrap_err();
        assert!(
            e.to_string()
                .contains("each of 5 parties at least 10 of 20 rows"),
            "{e}"
        );
    }
}
