//! A site's local data: loading its CSV by column name as the spec says, with errors that name
//! the file, line and column; and deterministic, stratified train/validation/holdout splits.

use std::collections::HashMap;
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
    #[error("{path}: line {line}: column {column:?}: expected a number, found {value:?}")]
    NotNumeric {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The column.
        column: String,
        /// The text found.
        value: String,
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

    /// Writes the rows as a CSV with the spec's feature columns then its target column.
    pub fn write_csv(&self, path: &Path, spec: &ModelSpec) -> std::io::Result<()> {
        let mut w = csv::Writer::from_path(path)?;
        let mut header: Vec<&str> = spec.task.features.iter().map(String::as_str).collect();
        header.push(&spec.task.target);
        w.write_record(&header)?;
        for i in 0..self.len() {
            let mut rec: Vec<String> = self.row(i).iter().map(|v| v.to_string()).collect();
            rec.push(match spec.task.kind {
                TaskKind::Regression => self.targets[i].to_string(),
                _ => (self.targets[i] as u64).to_string(),
            });
            w.write_record(&rec)?;
        }
        w.flush()
    }

    /// A deterministic split into train, validation and holdout rows. Classification tasks are
    /// stratified: each class is shuffled and cut in the same proportions.
    pub fn split(&self, kind: TaskKind, fractions: SplitFractions, seed: u64) -> Split {
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
        Split {
            train: self.subset(&train),
            validation: self.subset(&validation),
            holdout: self.subset(&holdout),
        }
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

/// Loads a site's CSV: the spec's feature columns (by name, any order in the file, extra
/// columns ignored) and its target column, validated for the task kind.
pub fn load_csv(path: &Path, spec: &ModelSpec) -> Result<Dataset, CsvError> {
    let table = read_columns(path, &spec.task.features, Some(&spec.task.target))?;
    let mut targets = Vec::with_capacity(table.targets.len());
    for (i, raw) in table.targets.iter().enumerate() {
        targets.push(
            parse_target(raw, spec.task.kind).ok_or_else(|| match spec.task.kind {
                TaskKind::Regression => CsvError::NotNumeric {
                    path: path.to_path_buf(),
                    line: table.line(i),
                    column: spec.task.target.clone(),
                    value: raw.clone(),
                },
                kind => CsvError::BadLabel {
                    path: path.to_path_buf(),
                    line: table.line(i),
                    column: spec.task.target.clone(),
                    value: raw.clone(),
                    expected: match kind {
                        TaskKind::Binary => "0 or 1".to_string(),
                        _ => format!("an integer from 0 to {}", kind.output_width() - 1),
                    },
                },
            })?,
        );
    }
    Ok(Dataset {
        width: spec.input_width(),
        features: table.features,
        targets,
    })
}

fn parse_target(raw: &str, kind: TaskKind) -> Option<f32> {
    match kind {
        TaskKind::Regression => raw.parse::<f32>().ok().filter(|v| v.is_finite()),
        kind => {
            let classes = kind.output_width().max(2) as u64;
            // accept "1" and "1.0", nothing fractional
            let v: f64 = raw.parse().ok()?;
            (v.fract() == 0.0 && v >= 0.0 && (v as u64) < classes).then_some(v as f32)
        }
    }
}

/// Feature values of a CSV plus the raw text of an optional extra column, with the line each
/// row came from.
#[derive(Debug)]
pub struct Table {
    /// `rows × features.len()` values.
    pub features: Vec<f32>,
    /// The extra column's raw text per row (empty when none was asked for).
    pub targets: Vec<String>,
    /// The byte offset each row starts at ([`Table::line`] turns it into a line number).
    pub offsets: Vec<u64>,
    path: PathBuf,
}

impl Table {
    /// The 1-based line row `i` starts on.
    pub fn line(&self, i: usize) -> u64 {
        line_of(&self.path, self.offsets[i])
    }
}

/// The 1-based line of a record starting at a byte offset (1 if the file cannot be reread).
/// In CRLF files the csv crate reports a record as starting at the `\n` that ends the line
/// before, so that byte is counted as part of the previous line.
fn line_of(path: &Path, byte: u64) -> u64 {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else {
        return 1;
    };
    let mut head = Vec::new();
    if file.take(byte + 1).read_to_end(&mut head).is_err() {
        return 1;
    }
    1 + head.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Reads named numeric feature columns and, optionally, one more column as raw text.
pub fn read_columns(
    path: &Path,
    features: &[String],
    extra: Option<&str>,
) -> Result<Table, CsvError> {
    let p = || path.to_path_buf();
    let mut reader = reader(path)?;
    let header = without_bom(reader.headers().map_err(|e| csv_error(path, e))?);
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(CsvError::Empty { path: p() });
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, name) in header.iter().enumerate() {
        if index.insert(name, i).is_some() {
            return Err(CsvError::DuplicateColumn {
                path: p(),
                column: name.to_string(),
            });
        }
    }
    let find = |column: &str| {
        index
            .get(column)
            .copied()
            .ok_or_else(|| CsvError::MissingColumn {
                path: p(),
                column: column.to_string(),
                header: header.iter().take(20).collect::<Vec<_>>().join(", "),
                hint: delimiter_hint(&header.iter().collect::<Vec<_>>()),
            })
    };
    let cols: Vec<usize> = features.iter().map(|f| find(f)).collect::<Result<_, _>>()?;
    let extra_col = extra.map(find).transpose()?;
    let mut table = Table {
        features: Vec::new(),
        targets: Vec::new(),
        offsets: Vec::new(),
        path: path.to_path_buf(),
    };
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(path, e)),
        }
        // The csv crate's own line count is off for CRLF files; count newlines before the
        // record's byte offset instead (only when an error needs it, since that rereads).
        let byte = record.position().map_or(0, |pos| pos.byte());
        let line = || line_of(path, byte);
        if record.len() != header.len() {
            return Err(CsvError::FieldCount {
                path: p(),
                line: line(),
                expected: header.len(),
                found: record.len(),
            });
        }
        for (&c, name) in cols.iter().zip(features) {
            let raw = &record[c];
            let v: f32 = raw.parse().map_err(|_| CsvError::NotNumeric {
                path: p(),
                line: line(),
                column: name.clone(),
                value: raw.to_string(),
            })?;
            if !v.is_finite() {
                return Err(CsvError::NotFinite {
                    path: p(),
                    line: line(),
                    column: name.clone(),
                    value: raw.to_string(),
                });
            }
            table.features.push(v);
        }
        if let Some(c) = extra_col {
            table.targets.push(record[c].to_string());
        }
        table.offsets.push(byte);
    }
    if table.offsets.is_empty() {
        return Err(CsvError::NoRows { path: p() });
    }
    Ok(table)
}

/// The header's column names, as [`read_columns`] reads them (quoting, trimming, a UTF-8 byte
/// order mark dropped).
pub fn header(path: &Path) -> Result<Vec<String>, CsvError> {
    let header = without_bom(reader(path)?.headers().map_err(|e| csv_error(path, e))?);
    Ok(header.iter().map(str::to_string).collect())
}

/// The one way a site's CSV is opened: a header row, cells trimmed, rows of any length (the
/// loader names a row whose field count differs).
fn reader(path: &Path) -> Result<csv::Reader<std::io::BufReader<std::fs::File>>, CsvError> {
    let file = std::fs::File::open(path).map_err(|source| CsvError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(std::io::BufReader::new(file)))
}

/// A header whose first name lost the UTF-8 byte order mark a spreadsheet export may put first.
fn without_bom(header: &csv::StringRecord) -> csv::StringRecord {
    header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if i == 0 {
                name.trim_start_matches('\u{feff}').trim()
            } else {
                name
            }
        })
        .collect()
}

/// When a header read as one column holds `;`, a tab or `|`, the file is separated by that:
/// says so (Yosegi reads comma-separated files), else nothing.
pub fn delimiter_hint<S: AsRef<str>>(header: &[S]) -> String {
    let [only] = header else {
        return String::new();
    };
    [(';', "semicolons"), ('\t', "tabs"), ('|', "'|'")]
        .iter()
        .find(|(c, _)| only.as_ref().contains(*c))
        .map(|(_, name)| {
            format!(
                "; the file looks separated by {name}: Yosegi reads comma-separated values — export it with commas"
            )
        })
        .unwrap_or_default()
}

fn csv_error(path: &Path, e: csv::Error) -> CsvError {
    let line = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(source) => CsvError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => CsvError::Syntax {
            path: path.to_path_buf(),
            line,
            message: format!("{other:?}"),
        },
    }
}

#[cfg(test)]
mod tests;
