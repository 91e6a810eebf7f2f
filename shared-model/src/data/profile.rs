//! What a CSV's columns hold, read once without a spec: for `spec init` and `--target` to infer
//! feature types, missing-value policies and the task kind from the data, saying why.

use std::collections::HashMap;
use std::path::Path;

use super::CsvError;
use super::read::{csv_error, reader, without_bom};
use crate::encoding::MISSING_TOKENS;

/// Distinct text values remembered per column; a column with more is not a category.
pub const MAX_DISTINCT: usize = 1000;

/// One column of a CSV.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ColumnProfile {
    /// The header's name.
    pub name: String,
    /// Blank (or `NA`, `NaN`, …) cells.
    pub blank: u64,
    /// Cells that are finite numbers.
    pub numeric: u64,
    /// Cells that are text (not blank, not a number), with the line of the first few.
    pub text: u64,
    /// The first lines holding text, with the text (at most 5).
    pub text_lines: Vec<(u64, String)>,
    /// Each distinct non-blank value and how often it occurs, while there are at most
    /// [`MAX_DISTINCT`] of them (`None` beyond).
    pub values: Option<HashMap<String, u64>>,
}

/// Every column of a CSV or Parquet file, and the target column's cells.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Data rows.
    pub rows: u64,
    /// The columns, in header order.
    pub columns: Vec<ColumnProfile>,
    /// The target column's non-blank numeric cells with their lines, when asked for.
    pub target_numbers: Vec<(u64, f64)>,
}

/// Reads `path` once and profiles every column; `target`'s numeric cells are also kept with
/// their lines (the column must exist).
pub fn profile(path: &Path, target: Option<&str>) -> Result<Profile, CsvError> {
    if super::parquet::is_parquet(path) {
        let (names, rows) = super::parquet::text_rows(path)?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut p = start(path, &refs, target)?;
        let target_col = target.and_then(|t| refs.iter().position(|h| *h == t));
        for (n, row) in rows.enumerate() {
            let row = row?;
            // Row n is named as the line it would have in a CSV export with a header.
            take(
                &mut p,
                row.iter().map(String::as_str),
                n as u64 + 2,
                target_col,
            );
        }
        return finish(path, p);
    }
    let mut reader = reader(path)?;
    let header = without_bom(reader.headers().map_err(|e| csv_error(path, e))?);
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(CsvError::Empty {
            path: path.to_path_buf(),
        });
    }
    let names: Vec<&str> = header.iter().collect();
    let mut p = start(path, &names, target)?;
    let target_col = target.and_then(|t| names.iter().position(|h| *h == t));
    let mut record = csv::StringRecord::new();
    let mut lines = LineCounter::open(path)?;
    while reader
        .read_record(&mut record)
        .map_err(|e| csv_error(path, e))?
    {
        let line = lines.line_at(record.position().map_or(0, |pos| pos.byte()));
        if record.len() != header.len() {
            return Err(CsvError::FieldCount {
                path: path.to_path_buf(),
                line,
                expected: header.len(),
                found: record.len(),
            });
        }
        take(&mut p, record.iter(), line, target_col);
    }
    finish(path, p)
}

/// An empty profile of columns `names`; `target` must be one of them.
fn start(path: &Path, names: &[&str], target: Option<&str>) -> Result<Profile, CsvError> {
    if let Some(t) = target
        && !names.contains(&t)
    {
        return Err(super::rows::missing_column(path, t, names));
    }
    Ok(Profile {
        columns: names
            .iter()
            .map(|name| ColumnProfile {
                name: name.to_string(),
                values: Some(HashMap::new()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

/// One row's cells, in column order.
fn take<'c>(
    p: &mut Profile,
    cells: impl Iterator<Item = &'c str>,
    line: u64,
    target_col: Option<usize>,
) {
    p.rows += 1;
    for (j, cell) in cells.enumerate() {
        let c = &mut p.columns[j];
        if MISSING_TOKENS.contains(&cell) {
            c.blank += 1;
            continue;
        }
        match cell.parse::<f64>() {
            Ok(v) if v.is_finite() => {
                c.numeric += 1;
                if Some(j) == target_col {
                    p.target_numbers.push((line, v));
                }
            }
            _ => {
                c.text += 1;
                if c.text_lines.len() < 5 {
                    c.text_lines.push((line, cell.to_string()));
                }
            }
        }
        if let Some(values) = &mut c.values {
            if let Some(n) = values.get_mut(cell) {
                *n += 1;
            } else if values.len() < MAX_DISTINCT {
                values.insert(cell.to_string(), 1);
            } else {
                c.values = None;
            }
        }
    }
}

fn finish(path: &Path, p: Profile) -> Result<Profile, CsvError> {
    if p.rows == 0 {
        return Err(CsvError::NoRows {
            path: path.to_path_buf(),
        });
    }
    Ok(p)
}

/// Line numbers of byte offsets met in increasing order, counted in one pass beside the CSV
/// reader (as the loader's `line_of` counts them: the newlines up to and including the byte, so
/// a CRLF file's records are on their right lines).
struct LineCounter {
    file: std::io::BufReader<std::fs::File>,
    /// Bytes consumed so far.
    at: u64,
    /// Newlines among them.
    newlines: u64,
}

impl LineCounter {
    fn open(path: &Path) -> Result<Self, CsvError> {
        let file = std::fs::File::open(path).map_err(|source| CsvError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            file: std::io::BufReader::new(file),
            at: 0,
            newlines: 0,
        })
    }

    fn line_at(&mut self, byte: u64) -> u64 {
        use std::io::BufRead;
        while self.at <= byte {
            let Ok(buf) = self.file.fill_buf() else {
                break;
            };
            if buf.is_empty() {
                break;
            }
            let take = buf.len().min((byte + 1 - self.at) as usize);
            self.newlines += buf[..take].iter().filter(|&&b| b == b'\n').count() as u64;
            self.file.consume(take);
            self.at += take as u64;
        }
        1 + self.newlines
    }
}
