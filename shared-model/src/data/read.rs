//! Reading a site's CSV: the columns the spec names, encoded as it declares
//! ([`crate::encoding`]), each problem named by file, line and column.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::rows::{OnExtra, Rows};
use super::{CsvError, Dataset};
use crate::encoding::{Counts, Encoder};
use crate::spec::{ModelSpec, TaskKind};

/// What loading left out or filled in, for the site's log and the operator's report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Data rows in the file.
    pub read: u64,
    /// Rows kept.
    pub kept: u64,
    /// Rows left out because the target cell was blank (a target is never imputed).
    pub blank_target: u64,
    /// Per feature column: blanks filled, rows dropped, values outside the vocabulary.
    pub counts: Counts,
    /// The feature columns, in the order of `counts`.
    pub features: Vec<String>,
    /// Where each kept row starts in the file, in row order (for [`copy_records`]).
    pub offsets: Vec<u64>,
}

impl LoadReport {
    /// True when nothing was left out or filled in (every row left out is in a line).
    pub fn is_clean(&self) -> bool {
        self.lines().is_empty()
    }

    /// One line per thing done, e.g. `12 blank cells of "temp" filled with the mean`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.blank_target > 0 {
            out.push(format!(
                "{} rows left out: the target is blank",
                self.blank_target
            ));
        }
        for (j, f) in self.features.iter().enumerate() {
            let at = |v: &Vec<u64>| v.get(j).copied().unwrap_or(0);
            if at(&self.counts.dropped) > 0 {
                out.push(format!(
                    "{} rows left out: {f:?} is blank (missing = \"drop-row\")",
                    at(&self.counts.dropped)
                ));
            }
            if at(&self.counts.filled) > 0 {
                out.push(format!(
                    "{} blank cells of {f:?} filled as the task declares",
                    at(&self.counts.filled)
                ));
            }
            if at(&self.counts.unseen) > 0 {
                out.push(format!(
                    "{} values of {f:?} outside its categories counted as \"other\"",
                    at(&self.counts.unseen)
                ));
            }
        }
        out
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} rows kept", self.kept, self.read)?;
        for l in self.lines() {
            write!(f, "; {l}")?;
        }
        Ok(())
    }
}

/// Loads a site's CSV: the spec's feature columns (by name, any order in the file, extra
/// columns ignored) encoded as declared, and its target column, validated for the task kind.
pub fn load_csv(path: &Path, spec: &ModelSpec) -> Result<Dataset, CsvError> {
    load(path, spec).map(|(d, _)| d)
}

/// How many records [`load_observed`] reads between two progress calls.
pub const PROGRESS_RECORDS: u64 = 16_384;

/// [`load_csv`], with what loading left out or filled in.
pub fn load(path: &Path, spec: &ModelSpec) -> Result<(Dataset, LoadReport), CsvError> {
    load_observed(path, spec, &mut |_| {})
}

/// [`load`], calling `on_bytes(offset)` with the byte offset reached every
/// [`PROGRESS_RECORDS`] records (for progress displays).
pub fn load_observed(
    path: &Path,
    spec: &ModelSpec,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(Dataset, LoadReport), CsvError> {
    let mut encoder = spec.encoder(false);
    let names: Option<HashMap<&str, usize>> = spec
        .task
        .class_names
        .as_ref()
        .map(|n| n.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect());
    // Each kept row's target is parsed as it is read: no row's text is held.
    let mut targets = Vec::new();
    let mut parse = |raw: &str, line: &dyn Fn() -> u64| -> Result<(), CsvError> {
        let parsed = match &names {
            Some(names) => names.get(raw).map(|&i| i as f32),
            None => parse_target(raw, spec.task.kind),
        };
        let bad = || match spec.task.kind {
            TaskKind::Regression => CsvError::NotNumeric {
                path: path.to_path_buf(),
                line: line(),
                column: spec.task.target.clone(),
                value: raw.to_string(),
                hint: String::new(),
            },
            kind => CsvError::BadLabel {
                path: path.to_path_buf(),
                line: line(),
                column: spec.task.target.clone(),
                value: raw.to_string(),
                expected: match (&spec.task.class_names, kind) {
                    (Some(n), _) => format!("one of {}", quoted_list(n)),
                    (None, TaskKind::Binary) => "0 or 1".to_string(),
                    _ => format!("an integer from 0 to {}", kind.output_width() - 1),
                },
            },
        };
        targets.push(parsed.ok_or_else(bad)?);
        Ok(())
    };
    let mut table = read_table(
        path,
        &spec.task.features,
        &mut encoder,
        Some(&spec.task.target),
        true,
        on_bytes,
        &mut parse,
    )?;
    let report = LoadReport {
        read: table.read,
        kept: targets.len() as u64,
        blank_target: table.blank_extra,
        counts: encoder.take_counts(),
        features: spec.task.features.clone(),
        offsets: std::mem::take(&mut table.offsets),
    };
    if report.kept == 0 {
        return Err(CsvError::AllLeftOut {
            path: path.to_path_buf(),
            read: report.read,
            why: report.lines().join("; "),
        });
    }
    Ok((
        Dataset {
            width: spec.input_width(),
            features: table.features,
            targets,
        },
        report,
    ))
}

fn quoted_list(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(20)
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 20 {
        s += &format!(" and {} more", names.len() - 20);
    }
    s
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

/// Encoded feature values of a CSV plus the raw text of an optional extra column, with where
/// each kept row starts.
#[derive(Debug)]
pub struct Table {
    /// `rows × inputs` values (NaN where a blank is to be filled with the mean).
    pub features: Vec<f32>,
    /// The extra column's raw text per row (empty when none was asked for).
    pub targets: Vec<String>,
    /// The byte offset each row starts at ([`Table::line`] turns it into a line number).
    pub offsets: Vec<u64>,
    /// Data rows read, kept or not.
    pub read: u64,
    /// Rows left out because the extra column was blank.
    pub blank_extra: u64,
    path: PathBuf,
    /// Read from Parquet: `offsets` are row numbers, not byte offsets.
    parquet: bool,
}

impl Table {
    pub(super) fn new(path: &Path, parquet: bool) -> Self {
        Self {
            features: Vec::new(),
            targets: Vec::new(),
            offsets: Vec::new(),
            read: 0,
            blank_extra: 0,
            path: path.to_path_buf(),
            parquet,
        }
    }

    /// The 1-based line row `i` starts on (for Parquet: its row number + 1, the line it would
    /// have in a CSV export with a header).
    pub fn line(&self, i: usize) -> u64 {
        if self.parquet {
            self.offsets[i] + 1
        } else {
            line_of(&self.path, self.offsets[i])
        }
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

/// Reads a spec's feature columns encoded as it declares (`predicting`: a `drop-row` blank is
/// filled with the mean, no row is left out) and, optionally, one more column as raw text;
/// returns the counts of blanks filled and unseen categories with the table.
pub fn read_encoded(
    path: &Path,
    spec: &ModelSpec,
    predicting: bool,
    extra: Option<&str>,
) -> Result<(Table, LoadReport), CsvError> {
    let mut encoder = spec.encoder(predicting);
    let mut texts = Vec::new();
    let mut table = read_table(
        path,
        &spec.task.features,
        &mut encoder,
        extra,
        false,
        &mut |_| {},
        &mut |raw: &str, _: &dyn Fn() -> u64| {
            texts.push(raw.to_string());
            Ok(())
        },
    )?;
    table.targets = texts;
    let report = LoadReport {
        read: table.read,
        kept: table.offsets.len() as u64,
        blank_target: 0,
        counts: encoder.take_counts(),
        features: spec.task.features.clone(),
        offsets: Vec::new(),
    };
    Ok((table, report))
}

/// The loader's one loop (a Parquet file goes to [`super::parquet::read_table`], which shares
/// [`Rows::take`]). `skip_blank_extra`: a row whose extra column is blank is left out and
/// counted (a blank target), before its features are read.
fn read_table(
    path: &Path,
    features: &[String],
    encoder: &mut Encoder,
    extra: Option<&str>,
    skip_blank_extra: bool,
    on_bytes: &mut dyn FnMut(u64),
    on_extra: OnExtra<'_>,
) -> Result<Table, CsvError> {
    if super::parquet::is_parquet(path) {
        return super::parquet::read_table(
            path,
            features,
            encoder,
            extra,
            skip_blank_extra,
            on_bytes,
            on_extra,
        );
    }
    let p = || path.to_path_buf();
    let mut reader = reader(path)?;
    let header = without_bom(reader.headers().map_err(|e| csv_error(path, e))?);
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(CsvError::Empty { path: p() });
    }
    let names: Vec<&str> = header.iter().collect();
    let mut rows = Rows::new(
        path,
        &names,
        features,
        extra,
        skip_blank_extra,
        encoder,
        on_extra,
        false,
    )?;
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(path, e)),
        }
        rows.table.read += 1;
        // The csv crate's own line count is off for CRLF files; count newlines before the
        // record's byte offset instead (only when an error needs it, since that rereads).
        let byte = record.position().map_or(0, |pos| pos.byte());
        if rows.table.read.is_multiple_of(PROGRESS_RECORDS) {
            on_bytes(byte);
        }
        let line = || line_of(path, byte);
        if record.len() != header.len() {
            return Err(CsvError::FieldCount {
                path: p(),
                line: line(),
                expected: header.len(),
                found: record.len(),
            });
        }
        rows.take(|i| &record[i], byte, &line)?;
    }
    let table = rows.table;
    if table.read == 0 {
        return Err(CsvError::NoRows { path: p() });
    }
    Ok(table)
}

/// Copies whole records of `source` (each named by the byte offset it starts at, as in
/// [`Table::offsets`]; a Parquet file's row numbers) to several CSV files, each with the
/// source's header: the cells exactly
/// as written, whatever their encoding. `parts[k]` lists the records of `dests[k]`.
pub fn copy_records(source: &Path, parts: &[Vec<u64>], dests: &[PathBuf]) -> Result<(), CsvError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CsvError::Io { path, source }
    };
    let same = |d: &Path| match (std::fs::canonicalize(source), std::fs::canonicalize(d)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if let Some(d) = dests.iter().find(|d| same(d)) {
        return Err(CsvError::Io {
            path: d.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "is the file being split: writing it would destroy the rows",
            ),
        });
    }
    let mut owner: HashMap<u64, usize> = HashMap::new();
    for (k, offsets) in parts.iter().enumerate() {
        for &o in offsets {
            owner.insert(o, k);
        }
    }
    if super::parquet::is_parquet(source) {
        // Rows by number, each cell as the text the loader reads: the CSV files load exactly
        // as the Parquet file's rows do.
        let (names, rows) = super::parquet::text_rows(source)?;
        let mut writers = Vec::with_capacity(dests.len());
        for d in dests {
            let mut w = csv::Writer::from_path(d).map_err(|e| csv_error(d, e))?;
            w.write_record(&names).map_err(|e| csv_error(d, e))?;
            writers.push(w);
        }
        for (i, row) in rows.enumerate() {
            let row = row?;
            if let Some(&k) = owner.get(&(i as u64 + 1)) {
                writers[k]
                    .write_record(&row)
                    .map_err(|e| csv_error(&dests[k], e))?;
            }
        }
        for (w, d) in writers.iter_mut().zip(dests) {
            w.flush().map_err(io(d))?;
        }
        return Ok(());
    }
    let mut reader = reader(source)?;
    let header = without_bom(reader.headers().map_err(|e| csv_error(source, e))?);
    let mut writers = Vec::with_capacity(dests.len());
    for d in dests {
        let mut w = csv::Writer::from_path(d).map_err(|e| csv_error(d, e))?;
        w.write_record(&header).map_err(|e| csv_error(d, e))?;
        writers.push(w);
    }
    let mut record = csv::StringRecord::new();
    while reader
        .read_record(&mut record)
        .map_err(|e| csv_error(source, e))?
    {
        let byte = record.position().map_or(0, |pos| pos.byte());
        if let Some(&k) = owner.get(&byte) {
            writers[k]
                .write_record(&record)
                .map_err(|e| csv_error(&dests[k], e))?;
        }
    }
    for (w, d) in writers.iter_mut().zip(dests) {
        w.flush().map_err(io(d))?;
    }
    Ok(())
}

/// The header's column names, as the loader reads them (quoting, trimming, a UTF-8 byte order
/// mark dropped).
pub fn header(path: &Path) -> Result<Vec<String>, CsvError> {
    let header = without_bom(reader(path)?.headers().map_err(|e| csv_error(path, e))?);
    Ok(header.iter().map(str::to_string).collect())
}

/// The one way a site's CSV is opened: a header row, cells trimmed, rows of any length (the
/// loader names a row whose field count differs).
pub(super) fn reader(
    path: &Path,
) -> Result<csv::Reader<std::io::BufReader<std::fs::File>>, CsvError> {
    // Loading, evaluating, predicting, spec init's profile and data split read Parquet
    // (each its own way); what reads CSV records as such does not.
    if super::parquet::is_parquet(path) {
        return Err(CsvError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a Parquet file: this command reads CSV (training, evaluation, prediction, spec init and data split read Parquet too); export it as CSV",
            ),
        });
    }
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
pub(super) fn without_bom(header: &csv::StringRecord) -> csv::StringRecord {
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

pub(super) fn csv_error(path: &Path, e: csv::Error) -> CsvError {
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
