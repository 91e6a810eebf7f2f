//! A site's local data: loading its CSV by column name as the spec says, with errors that name
//! the file, line and column; and deterministic, stratified train/validation/holdout splits.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::spec::{ModelSpec, TaskKind};

/// Errors from reading a CSV. Each names the file and, where it applies, the line and column.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No header row.
    #[error("{path}: the file is empty; expected a header row naming the columns")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A header but no data rows.
    #[error("{path}: the file has a header but no data rows")]
    NoRows {
        /// The file.
        path: PathBuf,
    },
    /// A column the spec needs is not in the header.
    #[error(
        "{path}: line 1: column {column:?} is missing from the header (the header has: {header}){hint}"
    )]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// The header's columns, comma-separated (first 20).
        header: String,
        /// Why, when it can be told: a file separated by another character ([`delimiter_hint`]).
        hint: String,
    },
    /// A column name appears twice in the header.
    #[error("{path}: line 1: column {column:?} appears more than once in the header")]
    DuplicateColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
    },
    /// A row has another number of fields than the header.
    #[error("{path}: line {line}: expected {expected} fields like the header, found {found}")]
    FieldCount {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Fields in the header.
        expected: usize,
        /// Fields in this row.
        found: usize,
    },
    /// A value is not a number.
    #[error("{path}: line {line}: column {column:?}: expected a number, found {value:?}{hint}")]
    NotNumeric {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The column.
        column: String,
        /// The text found.
        value: String,
        /// What to do about it, when it can be told (a feature column of names: declare it
        /// categorical).
        hint: String,
    },
    /// A blank (or `NA`, `NaN`, …) cell in a column whose missing-value policy is `error`.
    #[error(
        "{path}: line {line}: column {column:?}: the cell is blank (or NA/NaN) and the task has no missing-value policy for it: set `missing` (\"mean\", \"constant\", \"drop-row\") in [task.columns.{column:?}] or task.missing"
    )]
    Blank {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The column.
        column: String,
    },
    /// Every data row was left out (a blank target, or a blank in a `drop-row` column).
    #[error("{path}: all {read} data rows were left out: {why}")]
    AllLeftOut {
        /// The file.
        path: PathBuf,
        /// Data rows read.
        read: u64,
        /// What left them out ([`LoadReport`]).
        why: String,
    },
    /// A value is NaN or infinite.
    #[error("{path}: line {line}: column {column:?}: expected a finite number, found {value:?}")]
    NotFinite {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The column.
        column: String,
        /// The text found.
        value: String,
    },
    /// A label is not one of the task's classes.
    #[error(
        "{path}: line {line}: column {column:?}: label {value:?} is not a class of this task ({expected})"
    )]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The target column.
        column: String,
        /// The text found.
        value: String,
        /// Which labels are allowed.
        expected: String,
    },
    /// The CSV itself is malformed (e.g. bad quoting or invalid UTF-8).
    #[error("{path}: line {line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The parser's message.
        message: String,
    },
}

/// Rows of features and targets, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Number of features per row.
    pub width: usize,
    /// `rows × width` feature values.
    pub features: Vec<f32>,
    /// One target per row: 0/1 for binary, the class index for multiclass, the value for
    /// regression.
    pub targets: Vec<f32>,
}

impl Dataset {
    /// An empty dataset of the given width.
    pub fn empty(width: usize) -> Self {
        Self {
            width,
            features: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.width..(i + 1) * self.width]
    }

    /// The rows at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut out = Self::empty(self.width);
        for &i in indices {
            out.features.extend_from_slice(self.row(i));
            out.targets.push(self.targets[i]);
        }
        out
    }

    /// All rows of several datasets of the same width, in order.
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a Dataset>) -> Self {
        let mut it = parts.into_iter().peekable();
        let width = it.peek().map_or(0, |d| d.width);
        let mut out = Self::empty(width);
        for d in it {
            assert_eq!(d.width, width, "concatenated datasets must have one width");
            out.features.extend_from_slice(&d.features);
            out.targets.extend_from_slice(&d.targets);
        }
        out
    }

    /// Writes the rows as a CSV with the spec's feature columns then its target column (class
    /// names where the spec names classes). Only for plain numeric features: rows of encoded
    /// categories or filled blanks cannot be written back — copy the source's records instead
    /// ([`copy_records`]).
    pub fn write_csv(&self, path: &Path, spec: &ModelSpec) -> std::io::Result<()> {
        if !spec.task.columns.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "rows of encoded categorical or missing-value columns cannot be written back as a CSV; copy the source's records",
            ));
        }
        let mut w = csv::Writer::from_path(path)?;
        let mut header: Vec<&str> = spec.task.features.iter().map(String::as_str).collect();
        header.push(&spec.task.target);
        w.write_record(&header)?;
        for i in 0..self.len() {
            let mut rec: Vec<String> = self.row(i).iter().map(|v| v.to_string()).collect();
            rec.push(match spec.task.kind {
                TaskKind::Regression => self.targets[i].to_string(),
                _ => spec.class_name(self.targets[i] as usize),
            });
            w.write_record(&rec)?;
        }
        w.flush()
    }

    /// A deterministic split into train, validation and holdout rows. Classification tasks are
    /// stratified: each class is shuffled and cut in the same proportions.
    pub fn split(&self, kind: TaskKind, fractions: SplitFractions, seed: u64) -> Split {
        let [train, validation, holdout] = self.split_indices(kind, fractions, seed);
        Split {
            train: self.subset(&train),
            validation: self.subset(&validation),
            holdout: self.subset(&holdout),
        }
    }

    /// [`Self::split`], consuming the rows: the validation and holdout rows are copied out and
    /// the training rows compacted in place, so the peak is the dataset plus its smaller parts
    /// (not twice the dataset). The same parts as `split`, bit for bit.
    pub fn into_split(mut self, kind: TaskKind, fractions: SplitFractions, seed: u64) -> Split {
        let [train, validation, holdout] = self.split_indices(kind, fractions, seed);
        let validation = self.subset(&validation);
        let holdout = self.subset(&holdout);
        let w = self.width;
        // `train` is ascending, so row `train[k]` moves to row k ≤ train[k]: never overwritten
        // before it is read.
        for (k, &i) in train.iter().enumerate() {
            if k != i {
                self.features.copy_within(i * w..(i + 1) * w, k * w);
                self.targets[k] = self.targets[i];
            }
        }
        self.features.truncate(train.len() * w);
        self.targets.truncate(train.len());
        self.features.shrink_to_fit();
        self.targets.shrink_to_fit();
        Split {
            train: self,
            validation,
            holdout,
        }
    }

    /// The rows of [`Self::split`]'s train, validation and holdout parts, each in row order.
    pub fn split_indices(
        &self,
        kind: TaskKind,
        fractions: SplitFractions,
        seed: u64,
    ) -> [Vec<usize>; 3] {
        let mut groups: Vec<Vec<usize>> = match kind {
            TaskKind::Regression => vec![(0..self.len()).collect()],
            _ => {
                let classes = kind.output_width().max(2);
                let mut g = vec![Vec::new(); classes];
                for (i, &t) in self.targets.iter().enumerate() {
                    g[t as usize].push(i);
                }
                g
            }
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut train, mut validation, mut holdout) = (Vec::new(), Vec::new(), Vec::new());
        for g in &mut groups {
            g.shuffle(&mut rng);
            let n = g.len();
            let n_hold = (n as f64 * fractions.holdout).round() as usize;
            let n_val = ((n as f64 * fractions.validation).round() as usize).min(n - n_hold);
            holdout.extend_from_slice(&g[..n_hold]);
            validation.extend_from_slice(&g[n_hold..n_hold + n_val]);
            train.extend_from_slice(&g[n_hold + n_val..]);
        }
        for part in [&mut train, &mut validation, &mut holdout] {
            part.sort_unstable();
        }
        [train, validation, holdout]
    }
}

/// Fractions of rows set aside for validation and holdout; the rest is for training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplitFractions {
    /// Fraction for validation (early stopping, membership audit's non-members).
    pub validation: f64,
    /// Fraction for the holdout (final evaluation).
    pub holdout: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        Self {
            validation: 0.15,
            holdout: 0.15,
        }
    }
}

/// The three parts of a split.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// Rows to train on.
    pub train: Dataset,
    /// Rows for validation.
    pub validation: Dataset,
    /// Rows never trained on.
    pub holdout: Dataset,
}

mod parquet;
mod profile;
mod read;
mod rows;

pub use profile::{ColumnProfile, MAX_DISTINCT, Profile, profile};

pub use read::{
    LoadReport, PROGRESS_RECORDS, Table, copy_records, delimiter_hint, header, load, load_csv,
    load_observed, read_encoded,
};

#[cfg(test)]
mod tests;
