//! Parquet input beside CSV: the same loader rules, row by row. Each cell is turned into the
//! text a CSV export of it would hold — a null is a blank, a number its shortest exact decimal
//! form (a double 1.0 is `1`, where pandas would write `1.0`: declare categories of a
//! float-coded column accordingly), a boolean 1/0, a string itself, trimmed as CSV cells are —
//! and handed to the same [`Rows::take`] as a CSV record,
//! so declared categories, blank policies, labels and every error are the same as for CSV. An
//! error names the row as the line it would have in such an export (row n is line n + 1, the
//! header being line 1). Read through the `parquet` crate's row API (Apache Arrow's Rust
//! implementation), any codec but brotli.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::read::Table;
use super::rows::{OnExtra, Rows};
use super::{CsvError, PROGRESS_RECORDS};
use crate::encoding::Encoder;

/// Whether `path` is a Parquet file: a regular file of at least 12 bytes (magic, footer
/// length, magic) that starts and ends with the `PAR1` magic.
pub(super) fn is_parquet(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() >= 12) {
        return false;
    }
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 4];
    let mut tail = [0u8; 4];
    f.read_exact(&mut head).is_ok()
        && &head == b"PAR1"
        && f.seek(SeekFrom::End(-4)).is_ok()
        && f.read_exact(&mut tail).is_ok()
        && &tail == b"PAR1"
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> CsvError {
    CsvError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a readable Parquet file: {e}"),
        ),
    }
}

/// The text a CSV export would hold for one cell.
fn cell_text(field: &Field) -> String {
    match field {
        Field::Null => String::new(),
        Field::Bool(b) => u8::from(*b).to_string(),
        Field::Byte(v) => v.to_string(),
        Field::Short(v) => v.to_string(),
        Field::Int(v) => v.to_string(),
        Field::Long(v) => v.to_string(),
        Field::UByte(v) => v.to_string(),
        Field::UShort(v) => v.to_string(),
        Field::UInt(v) => v.to_string(),
        Field::ULong(v) => v.to_string(),
        Field::Float(v) => v.to_string(),
        Field::Double(v) => v.to_string(),
        Field::Float16(v) => f32::from(*v).to_string(),
        // Trimmed, as the CSV reader trims every cell.
        Field::Str(s) => s.trim().to_string(),
        Field::Bytes(b) => String::from_utf8_lossy(b.data()).trim().to_string(),
        other => other.to_string(),
    }
}

/// A Parquet file's column names and its rows as the text of their cells (for `spec init`'s
/// profile).
#[allow(clippy::type_complexity)]
pub(super) fn text_rows(
    path: &Path,
) -> Result<
    (
        Vec<String>,
        Box<dyn Iterator<Item = Result<Vec<String>, CsvError>>>,
    ),
    CsvError,
> {
    let (reader, names) = open(path)?;
    let path = path.to_path_buf();
    let rows = reader.into_iter().map(move |row| match row {
        Ok(row) => Ok(row.get_column_iter().map(|(_, f)| cell_text(f)).collect()),
        Err(e) => Err(parquet_error(&path, e)),
    });
    Ok((names, Box::new(rows)))
}

/// The file's reader and its (trimmed) column names; an empty schema is an empty file.
fn open(path: &Path) -> Result<(SerializedFileReader<std::fs::File>, Vec<String>), CsvError> {
    let file = std::fs::File::open(path).map_err(|source| CsvError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(|e| parquet_error(path, e))?;
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().trim().to_string())
        .collect();
    if names.is_empty() {
        return Err(CsvError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok((reader, names))
}

/// [`super::read`]'s loader loop over a Parquet file's rows.
pub(super) fn read_table(
    path: &Path,
    features: &[String],
    encoder: &mut Encoder,
    extra: Option<&str>,
    skip_blank_extra: bool,
    on_bytes: &mut dyn FnMut(u64),
    on_extra: OnExtra<'_>,
) -> Result<Table, CsvError> {
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let (reader, names) = open(path)?;
    let total = reader.metadata().file_metadata().num_rows().max(0) as u64;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut rows = Rows::new(
        path,
        &refs,
        features,
        extra,
        skip_blank_extra,
        encoder,
        on_extra,
        true,
    )?;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| parquet_error(path, e))?;
    let mut cells: Vec<String> = Vec::with_capacity(names.len());
    for row in iter {
        let row = row.map_err(|e| parquet_error(path, e))?;
        rows.table.read += 1;
        let n = rows.table.read;
        if n.is_multiple_of(PROGRESS_RECORDS) && total > 0 {
            on_bytes((u128::from(size) * u128::from(n) / u128::from(total)) as u64);
        }
        cells.clear();
        cells.extend(row.get_column_iter().map(|(_, f)| cell_text(f)));
        rows.take(|i| cells[i].as_str(), n, &|| n + 1)?;
    }
    if rows.table.read == 0 {
        return Err(CsvError::NoRows {
            path: path.to_path_buf(),
        });
    }
    Ok(rows.table)
}

#[cfg(test)]
mod tests;
