//! How a CSV row becomes the network's input, as the spec declares it (data, never code): each
//! feature column is a number or a category — one-hot over a vocabulary declared in the spec,
//! plus an "other" slot for values outside it — and each says what a blank cell means.
//!
//! Missing values filled with the mean are read as NaN and counted out of the feature sums
//! ([`crate::stats::FeatureSums::present`]): the federated mean of the cells that are present
//! is the fill, and since it is also the normalisation's mean, a blank becomes 0 after
//! normalisation — the published model carries the fill in `norm.mean` and needs no other
//! tensor. A missing-value indicator is one more 0/1 input.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Cells read as missing (after trimming), unless the column declares the text as a category.
pub const MISSING_TOKENS: &[&str] = &[
    "", "NA", "N/A", "n/a", "#N/A", "NaN", "nan", "null", "NULL", "None", "?",
];

/// Most categories one column may declare.
pub const MAX_CATEGORIES: usize = 10_000;

/// Most network inputs the encoded features may make.
pub const MAX_INPUTS: usize = 100_000;

/// The name of the slot of values outside a column's vocabulary.
pub const OTHER: &str = "(other)";

/// What a blank cell of a feature column means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Missing {
    /// The file is refused at the first blank, naming line and column (the default).
    #[default]
    Error,
    /// Filled with the federated mean of the present values (for a categorical column: each
    /// category's share); a plant's own values never decide it.
    Mean,
    /// Filled with the column's `fill` (numeric columns).
    Constant,
    /// Filled with the federated median of the present values (numeric columns), within 1 %,
    /// from the histograms the plants report in the statistics step (more than a mean's sums:
    /// each plant's values counted on a 2 % grid).
    Median,
    /// The row is left out of training and evaluation, and counted.
    DropRow,
    /// Counted as the "other" category (categorical columns).
    Other,
}

impl Missing {
    /// The policy's name as written in a spec.
    pub fn name(self) -> &'static str {
        match self {
            Missing::Error => "error",
            Missing::Mean => "mean",
            Missing::Constant => "constant",
            Missing::Median => "median",
            Missing::DropRow => "drop-row",
            Missing::Other => "other",
        }
    }

    fn is_error(&self) -> bool {
        *self == Missing::Error
    }
}

/// Most slots a discovered vocabulary may have (`discover`).
pub const MAX_DISCOVER_SLOTS: usize = 1_000;

/// Default `min_count` of a discovered vocabulary: a category is kept only when at least this
/// many rows across the plants hold it.
pub const DEFAULT_MIN_COUNT: u64 = 10;

/// A vocabulary found in the statistics step instead of declared (`discover = SLOTS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Discover {
    /// One-hot slots for the categories found (the layout is fixed by the spec: the most
    /// frequent ones fill the slots, the rest and any unused slot are never hot).
    pub slots: usize,
    /// A category is kept only when at least this many rows across the plants hold it.
    pub min_count: u64,
}

/// One feature column's declared encoding, when it is not a plain number refused when blank.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Column {
    /// The vocabulary of a categorical column (one-hot over these and [`OTHER`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    /// A vocabulary found in the statistics step ([`Discover`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discover: Option<Discover>,
    /// What a blank cell means.
    #[serde(skip_serializing_if = "Missing::is_error")]
    pub missing: Missing,
    /// The fill of `missing = "constant"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill: Option<f64>,
    /// Adds a 0/1 input that is 1 where the cell was blank.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub indicator: bool,
    /// The vocabulary the statistics step found for a `discover` column, most frequent first
    /// (at most `slots`). Not part of the spec (nor its id): the task's model blobs carry it
    /// ([`crate::spec::ModelSpec::with_vocabularies`]).
    #[serde(skip)]
    pub found: Option<Vec<String>>,
    /// The median the statistics step found for a `missing = "median"` column (not part of
    /// the spec either; [`crate::spec::ModelSpec::resolved`]).
    #[serde(skip)]
    pub median: Option<f64>,
}

impl Column {
    /// True when the column is a plain number refused when blank (left out of the spec).
    pub fn is_plain(&self) -> bool {
        *self == Self::default()
    }

    /// Named one-hot slots of a categorical column (declared categories, or a discovered
    /// vocabulary's slots); `None` for a numeric column. The "other" slot follows them.
    pub fn one_hot(&self) -> Option<usize> {
        match (&self.categories, &self.discover) {
            (Some(c), _) => Some(c.len()),
            (None, Some(d)) => Some(d.slots),
            (None, None) => None,
        }
    }

    /// True for a categorical column (declared or discovered vocabulary).
    pub fn is_categorical(&self) -> bool {
        self.one_hot().is_some()
    }

    /// The categories slot by slot: the declared ones, or those the statistics step found
    /// (none before it).
    pub fn vocabulary(&self) -> &[String] {
        self.categories
            .as_deref()
            .or(self.found.as_deref())
            .unwrap_or(&[])
    }

    /// Network inputs this column makes.
    pub fn width(&self) -> usize {
        self.one_hot().map_or(1, |c| c + 1) + usize::from(self.indicator)
    }
}

mod resolve;
pub(crate) use resolve::{RawColumn, check_found, resolve};
pub use resolve::{is_category_name, is_found_name};

/// Why one cell could not be encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum CellFault {
    /// Not a number (numeric column).
    NotNumeric(String),
    /// NaN or infinite written out (numeric column).
    NotFinite(String),
    /// Blank and the column's policy is `error`.
    Blank,
}

/// What became of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// Encoded into the output.
    Kept,
    /// Left out: a blank in a `drop-row` column (index into the features).
    Dropped(usize),
}

/// Counts of what encoding did, per feature column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Blank cells filled (mean, constant or "other"), per feature.
    pub filled: Vec<u64>,
    /// Rows dropped for a blank in this feature.
    pub dropped: Vec<u64>,
    /// Values outside a categorical column's vocabulary, counted as "other".
    pub unseen: Vec<u64>,
    /// The value of each kept row in each `discover` column (empty for other columns): what a
    /// plant counts for the statistics step ([`Self::seen_among`]).
    pub seen: Vec<Values>,
}

impl Counts {
    fn zeros(n: usize) -> Self {
        Self {
            filled: vec![0; n],
            dropped: vec![0; n],
            unseen: vec![0; n],
            seen: vec![Values::default(); n],
        }
    }

    /// Per feature, how many of the kept rows `among` (by index; all when `None`) hold each
    /// value of a `discover` column — e.g. a plant's training rows.
    pub fn seen_among(&self, among: Option<&[usize]>) -> Vec<BTreeMap<String, u64>> {
        self.seen.iter().map(|v| v.count(among)).collect()
    }
}

/// The values of one `discover` column, row by row: names at most [`MAX_CATEGORIES`], each a
/// possible category ([`is_category_name`]; a longer cell, a blank or a name first met past the
/// cap is [`Values::NONE`] and stays "other").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    /// The names, in order of first appearance.
    pub names: Vec<String>,
    /// Per kept row, the index of its name in `names`, or [`Values::NONE`].
    pub rows: Vec<u32>,
}

impl Values {
    /// A row with no counted name.
    pub const NONE: u32 = u32::MAX;

    /// Rows holding each name among `among` (row indices; all rows when `None`).
    pub fn count(&self, among: Option<&[usize]>) -> BTreeMap<String, u64> {
        if self.rows.is_empty() {
            // not a `discover` column (or no row kept)
            return BTreeMap::new();
        }
        let mut n = vec![0u64; self.names.len()];
        let mut add = |code: u32| {
            if code != Self::NONE {
                n[code as usize] += 1;
            }
        };
        match among {
            None => self.rows.iter().for_each(|&c| add(c)),
            Some(idx) => idx.iter().for_each(|&i| add(self.rows[i])),
        }
        self.names
            .iter()
            .zip(n)
            .filter(|(_, c)| *c > 0)
            .map(|(k, c)| (k.clone(), c))
            .collect()
    }
}

#[derive(Debug)]
enum Kind {
    Numeric,
    Categorical(HashMap<String, usize>, usize),
}

/// Turns rows of raw cells into network inputs, as a spec's columns declare.
#[derive(Debug)]
pub struct Encoder {
    columns: Vec<(Kind, Column)>,
    /// When true (prediction), a `drop-row` blank is filled with the mean instead: a row to
    /// predict cannot be left out.
    predicting: bool,
    counts: Counts,
    /// This row's fills (`true`) and unseen categories (`false`) by feature, committed to
    /// `counts` only when the row is kept.
    staged: Vec<(usize, bool)>,
    /// Features whose values are counted (`discover` columns), counted when the row is kept,
    /// and each one's name → index in [`Values::names`].
    discovered: Vec<usize>,
    lookup: Vec<HashMap<String, u32>>,
    /// `discover` columns with no vocabulary yet (the statistics step): their values are not
    /// "unseen", there is nothing to see them in.
    undiscovered: Vec<bool>,
}

impl Encoder {
    /// The encoder of a task's features (`columns` as resolved by the spec).
    pub fn new(features: &[String], columns: &BTreeMap<String, Column>, predicting: bool) -> Self {
        let columns: Vec<(Kind, Column)> = features
            .iter()
            .map(|f| {
                let c = columns.get(f).cloned().unwrap_or_default();
                let kind = match c.one_hot() {
                    None => Kind::Numeric,
                    Some(slots) => Kind::Categorical(
                        c.vocabulary()
                            .iter()
                            .enumerate()
                            .map(|(i, c)| (c.clone(), i))
                            .collect(),
                        slots,
                    ),
                };
                (kind, c)
            })
            .collect();
        let n = columns.len();
        let discovered: Vec<usize> = (0..n)
            .filter(|&j| columns[j].1.discover.is_some())
            .collect();
        let undiscovered = columns
            .iter()
            .map(|(_, c)| c.discover.is_some() && c.found.is_none())
            .collect();
        Self {
            columns,
            predicting,
            staged: Vec::new(),
            lookup: vec![HashMap::new(); discovered.len()],
            discovered,
            undiscovered,
            counts: Counts::zeros(n),
        }
    }

    /// Encodes one row's cells (one per feature, in order) onto `out`; on a fault nothing is
    /// appended and the first fault's feature index is returned with it. A fault anywhere in
    /// the row refuses it even when a `drop-row` blank would leave it out (whatever the column
    /// order); counts are of rows kept only (a dropped row counts once, in its first
    /// `drop-row` column).
    pub fn encode(
        &mut self,
        cells: &[&str],
        out: &mut Vec<f32>,
    ) -> Result<Row, (usize, CellFault)> {
        self.encode_with(|j| cells[j], out)
    }

    /// [`Self::encode`] with the cells read through `cell(feature index)` (the loader reads
    /// them straight from its CSV record, allocating nothing per row).
    pub fn encode_with<'c>(
        &mut self,
        cell: impl Fn(usize) -> &'c str,
        out: &mut Vec<f32>,
    ) -> Result<Row, (usize, CellFault)> {
        let start = out.len();
        let mut drop: Option<usize> = None;
        self.staged.clear();
        for (j, (kind, col)) in self.columns.iter().enumerate() {
            let cell = &cell(j);
            let declared = match kind {
                Kind::Categorical(index, _) => index.get(*cell).copied(),
                Kind::Numeric => None,
            };
            let blank = declared.is_none() && MISSING_TOKENS.contains(cell);
            if blank {
                let policy = match col.missing {
                    Missing::DropRow if self.predicting => Missing::Mean,
                    m => m,
                };
                match policy {
                    Missing::Error => {
                        out.truncate(start);
                        return Err((j, CellFault::Blank));
                    }
                    Missing::DropRow => {
                        // the rest of the row is still checked; its values are discarded
                        drop.get_or_insert(j);
                        out.push(f32::NAN);
                    }
                    Missing::Mean => match kind {
                        Kind::Numeric => out.push(f32::NAN),
                        Kind::Categorical(_, n) => out.extend(std::iter::repeat_n(f32::NAN, n + 1)),
                    },
                    Missing::Constant => out.push(col.fill.unwrap_or(0.0) as f32),
                    // before the statistics step: left out of the sums, as a mean's blank
                    Missing::Median => out.push(col.median.map_or(f32::NAN, |m| m as f32)),
                    Missing::Other => {
                        if let Kind::Categorical(_, n) = kind {
                            push_one_hot(out, *n, *n);
                        }
                    }
                }
                self.staged.push((j, true));
            } else {
                match kind {
                    Kind::Numeric => {
                        let v: f32 = cell.parse().map_err(|_| {
                            out.truncate(start);
                            (j, CellFault::NotNumeric(cell.to_string()))
                        })?;
                        if !v.is_finite() {
                            out.truncate(start);
                            return Err((j, CellFault::NotFinite(cell.to_string())));
                        }
                        out.push(v);
                    }
                    Kind::Categorical(_, n) => {
                        let slot = declared.unwrap_or_else(|| {
                            if !self.undiscovered[j] {
                                self.staged.push((j, false));
                            }
                            *n
                        });
                        push_one_hot(out, slot, *n);
                    }
                }
            }
            if col.indicator {
                out.push(if blank { 1.0 } else { 0.0 });
            }
        }
        if let Some(j) = drop {
            out.truncate(start);
            self.counts.dropped[j] += 1;
            return Ok(Row::Dropped(j));
        }
        for &(j, filled) in &self.staged {
            if filled {
                self.counts.filled[j] += 1;
            } else {
                self.counts.unseen[j] += 1;
            }
        }
        for (d, &j) in self.discovered.iter().enumerate() {
            let v = cell(j);
            let declared = match &self.columns[j].0 {
                Kind::Categorical(index, _) => index.contains_key(v),
                Kind::Numeric => false,
            };
            let values = &mut self.counts.seen[j];
            let code = if !declared && MISSING_TOKENS.contains(&v) || !is_category_name(v) {
                Values::NONE
            } else if let Some(&c) = self.lookup[d].get(v) {
                c
            } else if values.names.len() < MAX_CATEGORIES {
                let c = values.names.len() as u32;
                values.names.push(v.to_string());
                self.lookup[d].insert(v.to_string(), c);
                c
            } else {
                Values::NONE
            };
            values.rows.push(code);
        }
        Ok(Row::Kept)
    }

    /// What encoding has done so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Takes the counts, leaving zeros.
    pub fn take_counts(&mut self) -> Counts {
        let n = self.columns.len();
        self.lookup.iter_mut().for_each(HashMap::clear);
        std::mem::replace(&mut self.counts, Counts::zeros(n))
    }
}

fn push_one_hot(out: &mut Vec<f32>, slot: usize, categories: usize) {
    out.extend((0..=categories).map(|i| if i == slot { 1.0 } else { 0.0 }));
}

/// The name of each network input, in order: a numeric feature's own name, `name=category`
/// for each slot of a categorical one (`name=(other)` last), `name (missing)` for an indicator.
pub fn input_names(features: &[String], columns: &BTreeMap<String, Column>) -> Vec<String> {
    let mut out = Vec::new();
    for f in features {
        let c = columns.get(f).cloned().unwrap_or_default();
        match c.one_hot() {
            None => out.push(f.clone()),
            Some(slots) => {
                let named = c.vocabulary();
                out.extend(named.iter().map(|k| format!("{f}={k}")));
                // a discovered vocabulary's slots left unused (or all, before it is found)
                out.extend((named.len()..slots).map(|i| format!("{f}=(slot {i})")));
                out.push(format!("{f}={OTHER}"));
            }
        }
        if c.indicator {
            out.push(format!("{f} (missing)"));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
