//! One row of any source (a CSV record, a Parquet row) becoming the network's inputs: the
//! columns a spec needs found by name, blanks and categories encoded as the spec declares, the
//! extra column (a target, an id) handed on, and every fault named with file, line and column.

use std::collections::HashMap;
use std::path::Path;

use super::CsvError;
use super::read::{Table, delimiter_hint};
use crate::encoding::{CellFault, Encoder, MISSING_TOKENS, Row};

/// What the loader does with a kept row's extra column: its text and the row's line (lazily).
pub(super) type OnExtra<'a> = &'a mut dyn FnMut(&str, &dyn Fn() -> u64) -> Result<(), CsvError>;

/// The input columns of `features` and of `extra` among a file's column `names`, each missing
/// one named with the header (and a delimiter hint).
fn columns(
    path: &Path,
    names: &[&str],
    features: &[String],
    extra: Option<&str>,
) -> Result<(Vec<usize>, Option<usize>), CsvError> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        if index.insert(name, i).is_some() {
            return Err(CsvError::DuplicateColumn {
                path: path.to_path_buf(),
                column: name.to_string(),
            });
        }
    }
    let find = |column: &str| {
        index
            .get(column)
            .copied()
            .ok_or_else(|| missing_column(path, column, names))
    };
    let cols: Vec<usize> = features.iter().map(|f| find(f)).collect::<Result<_, _>>()?;
    let extra_col = extra.map(find).transpose()?;
    Ok((cols, extra_col))
}

/// `column` is not among a file's column `names`: the error names the header (its first 20
/// names) and hints at a wrong delimiter.
pub(super) fn missing_column(path: &Path, column: &str, names: &[&str]) -> CsvError {
    CsvError::MissingColumn {
        path: path.to_path_buf(),
        column: column.to_string(),
        header: names
            .iter()
            .take(20)
            .copied()
            .collect::<Vec<_>>()
            .join(", "),
        hint: delimiter_hint(names),
    }
}

/// The rows being read: each source (CSV records, Parquet rows) hands every row to
/// [`Rows::take`], so blanks, encoding faults and their errors are the same whatever the file.
pub(super) struct Rows<'a> {
    path: &'a Path,
    features: &'a [String],
    cols: Vec<usize>,
    extra_col: Option<usize>,
    skip_blank_extra: bool,
    encoder: &'a mut Encoder,
    on_extra: OnExtra<'a>,
    /// What has been read so far.
    pub(super) table: Table,
}

impl<'a> Rows<'a> {
    /// Rows of `path` (a Parquet file when `parquet`) with the file's column `names`: the
    /// columns of `features` and `extra` are found by name.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        path: &'a Path,
        names: &[&str],
        features: &'a [String],
        extra: Option<&str>,
        skip_blank_extra: bool,
        encoder: &'a mut Encoder,
        on_extra: OnExtra<'a>,
        parquet: bool,
    ) -> Result<Self, CsvError> {
        let (cols, extra_col) = columns(path, names, features, extra)?;
        Ok(Self {
            path,
            features,
            cols,
            extra_col,
            skip_blank_extra,
            encoder,
            on_extra,
            table: Table::new(path, parquet),
        })
    }

    /// One row: `cell(i)` is the text of the file's column i, `pos` where the row starts (a
    /// byte offset in a CSV, the 1-based row number in Parquet), `line()` the line to name.
    pub(super) fn take<'r>(
        &mut self,
        cell: impl Fn(usize) -> &'r str,
        pos: u64,
        line: &dyn Fn() -> u64,
    ) -> Result<(), CsvError> {
        let p = || self.path.to_path_buf();
        if let Some(c) = self.extra_col
            && self.skip_blank_extra
            && MISSING_TOKENS.contains(&cell(c))
        {
            self.table.blank_extra += 1;
            return Ok(());
        }
        let cols = &self.cols;
        match self
            .encoder
            .encode_with(|j| cell(cols[j]), &mut self.table.features)
        {
            Ok(Row::Kept) => {}
            Ok(Row::Dropped(_)) => return Ok(()),
            Err((j, fault)) => {
                let column = self.features[j].clone();
                return Err(match fault {
                    CellFault::Blank => CsvError::Blank {
                        path: p(),
                        line: line(),
                        column,
                    },
                    CellFault::NotFinite(value) => CsvError::NotFinite {
                        path: p(),
                        line: line(),
                        column,
                        value,
                    },
                    CellFault::NotNumeric(value) => CsvError::NotNumeric {
                        path: p(),
                        line: line(),
                        hint: format!(
                            " (a column of names or codes is declared categorical: [task.columns.{column:?}] categories = [...])"
                        ),
                        column,
                        value,
                    },
                });
            }
        }
        if let Some(c) = self.extra_col {
            (self.on_extra)(cell(c), line)?;
        }
        self.table.offsets.push(pos);
        Ok(())
    }
}
