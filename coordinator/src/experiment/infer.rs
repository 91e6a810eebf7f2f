//! The task kind `--target` implies, said out loud: only 0 and 1 → binary; the whole numbers
//! 0..k−1, each present, k ≤ 20 → multiclass; fractional values or more than 20 distinct whole
//! numbers → regression. What fits none of them cleanly — a few fractions among whole numbers,
//! a gap in the labels (one `12` among 0–9), a negative label — is refused naming the lines,
//! not guessed: `--kind` says what the column is.

use std::collections::BTreeSet;

/// The most classes inferred without `--kind`.
const MAX_INFERRED_CLASSES: u64 = 20;

/// How many offending lines an error names.
const NAMED: usize = 5;

/// What the target column is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Labels 0 and 1.
    Binary,
    /// Labels 0..k−1.
    Multiclass,
    /// A measurement.
    Regression,
}

/// The `[task]` kind lines of the spec and why: from `values` (each with its 1-based line) of
/// column `target`, or checked against `forced`.
pub fn kind(
    target: &str,
    values: &[(u64, f64)],
    forced: Option<Kind>,
) -> anyhow::Result<(String, String)> {
    let whole = |v: f64| v.fract() == 0.0;
    let lines = |bad: &dyn Fn(f64) -> bool| {
        let hits: Vec<String> = values
            .iter()
            .filter(|(_, v)| bad(*v))
            .map(|(l, v)| format!("line {l}: {v}"))
            .collect();
        let more = hits.len().saturating_sub(NAMED);
        let mut s = hits.into_iter().take(NAMED).collect::<Vec<_>>().join(", ");
        if more > 0 {
            s += &format!(" and {more} more");
        }
        s
    };
    let classes = |n: u64| format!("kind = \"multiclass\"\nclasses = {n}");
    match forced {
        Some(Kind::Regression) => {
            return Ok((
                "kind = \"regression\"".into(),
                format!("target {target:?}: regression, as --kind says"),
            ));
        }
        Some(Kind::Binary) => {
            let odd = lines(&|v| v != 0.0 && v != 1.0);
            anyhow::ensure!(
                odd.is_empty(),
                "target {target:?}: --kind binary needs labels 0 and 1, found {odd}"
            );
            return Ok((
                "kind = \"binary\"".into(),
                format!("target {target:?}: binary, as --kind says"),
            ));
        }
        Some(Kind::Multiclass) => {
            let odd = lines(&|v| !whole(v) || v < 0.0);
            anyhow::ensure!(
                odd.is_empty(),
                "target {target:?}: --kind multiclass needs whole labels 0, 1, 2, …, found {odd}"
            );
            let n = values.iter().map(|(_, v)| *v as u64).max().unwrap_or(0) + 1;
            return Ok((
                classes(n.max(2)),
                format!(
                    "target {target:?}: multiclass with {n} classes (0 to {}), as --kind says",
                    n - 1
                ),
            ));
        }
        None => {}
    }
    let fractional = values.iter().filter(|(_, v)| !whole(*v)).count();
    if fractional > 0 {
        // A few fractions among whole numbers look like typos in labels, not measurements.
        anyhow::ensure!(
            fractional * 10 >= values.len(),
            "target {target:?} is ambiguous: {} whole numbers and {fractional} fractional ({}); give --kind regression if it is a measurement, or fix those lines",
            values.len() - fractional,
            lines(&|v| !whole(v))
        );
        return Ok((
            "kind = \"regression\"".into(),
            format!(
                "target {target:?}: fractional values → regression (--kind to choose otherwise)"
            ),
        ));
    }
    let distinct: BTreeSet<i64> = values.iter().map(|(_, v)| *v as i64).collect();
    if distinct.len() as u64 > MAX_INFERRED_CLASSES {
        return Ok((
            "kind = \"regression\"".into(),
            format!(
                "target {target:?}: {} distinct whole numbers → regression, a count or measurement (--kind multiclass to treat them as classes)",
                distinct.len()
            ),
        ));
    }
    let k = distinct.len() as i64;
    if distinct.iter().copied().eq(0..k) {
        return Ok(if k <= 2 {
            (
                "kind = \"binary\"".into(),
                format!("target {target:?}: only 0 and 1 → binary"),
            )
        } else {
            (
                classes(k as u64),
                format!(
                    "target {target:?}: the whole numbers 0 to {}, each present → multiclass with {k} classes",
                    k - 1
                ),
            )
        });
    }
    // Whole numbers that are not 0..k−1: a gap, a negative label.
    let run_end = (0..).take_while(|c| distinct.contains(c)).count() as f64;
    anyhow::bail!(
        "target {target:?} is ambiguous: its {} whole numbers are not the labels 0 to {} — {} — a class label must be 0, 1, 2, … without gaps; give --kind multiclass or --kind regression, or fix those lines",
        distinct.len(),
        k - 1,
        lines(&|v| v < 0.0 || v >= run_end)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(vs: &[f64]) -> Vec<(u64, f64)> {
        vs.iter()
            .enumerate()
            .map(|(i, v)| (i as u64 + 2, *v))
            .collect()
    }

    #[test]
    fn clear_columns_are_inferred_and_said() {
        let (k, why) = kind("m", &at(&[0.0, 1.0, 1.0]), None).unwrap();
        assert_eq!(
            (k.as_str(), why.as_str()),
            ("kind = \"binary\"", "target \"m\": only 0 and 1 → binary")
        );
        let (k, why) = kind("d", &at(&[0.0, 1.0, 2.0, 2.0]), None).unwrap();
        assert_eq!(k, "kind = \"multiclass\"\nclasses = 3");
        assert!(why.contains("multiclass with 3 classes"), "{why}");
        let (k, _) = kind("y", &at(&[25.5, 300.25, 41.0]), None).unwrap();
        assert_eq!(k, "kind = \"regression\"");
        let counts: Vec<f64> = (0..40).map(f64::from).collect();
        let (k, why) = kind("defects", &at(&counts), None).unwrap();
        assert_eq!(k, "kind = \"regression\"", "{why}");
    }

    #[test]
    fn one_odd_label_is_refused_naming_its_line() {
        let mut labels: Vec<f64> = (0..10).map(f64::from).collect();
        labels.push(12.0);
        let e = kind("digit", &at(&labels), None).unwrap_err().to_string();
        assert!(e.contains("line 12: 12") && e.contains("--kind"), "{e}");
        labels[11 - 1] = 9.0;
        labels.push(-1.0);
        let e = kind("digit", &at(&labels), None).unwrap_err().to_string();
        assert!(e.contains("line 13: -1"), "{e}");
        let mut mostly: Vec<f64> = (0..40).map(|i| f64::from(i % 10)).collect();
        mostly.push(3.5);
        let e = kind("digit", &at(&mostly), None).unwrap_err().to_string();
        assert!(
            e.contains("40 whole numbers and 1 fractional (line 42: 3.5)"),
            "{e}"
        );
    }

    #[test]
    fn kind_decides_and_is_checked() {
        let (k, _) = kind("d", &at(&[0.0, 4.0]), Some(Kind::Multiclass)).unwrap();
        assert_eq!(k, "kind = \"multiclass\"\nclasses = 5");
        assert!(kind("d", &at(&[0.0, 2.0]), Some(Kind::Binary)).is_err());
        assert!(kind("d", &at(&[0.5]), Some(Kind::Multiclass)).is_err());
        let (k, _) = kind("d", &at(&[0.0, 1.0]), Some(Kind::Regression)).unwrap();
        assert_eq!(k, "kind = \"regression\"");
    }
}
