//! What the operator learns when a plant's data does not load for a task: the file's name, the
//! line, the column and what is wrong — never a cell's value, the file's other columns or its
//! path at the site (those stay in the plant's log). The daemon declines the work with this
//! reason, so `round status` shows the plant's problem instead of "late".

use std::path::Path;

use shared_model::data::CsvError;

/// The reason the daemon declines with when its data `file` fails to load with `e`.
pub fn reason(file: &Path, e: &anyhow::Error) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "the data file".into());
    let what = match e.downcast_ref::<CsvError>() {
        Some(CsvError::Io { .. }) => format!("{name} cannot be read"),
        Some(CsvError::Empty { .. }) => {
            format!("{name} is empty; expected a header row naming the columns")
        }
        Some(CsvError::NoRows { .. }) => format!("{name} has a header but no data rows"),
        Some(CsvError::MissingColumn { column, .. }) => {
            format!("{name}: line 1: column {column:?}, which the task reads, is missing")
        }
        Some(CsvError::DuplicateColumn { column, .. }) => {
            format!("{name}: line 1: column {column:?} appears more than once")
        }
        Some(CsvError::FieldCount {
            line,
            expected,
            found,
            ..
        }) => format!("{name}: line {line}: {found} fields, the header has {expected}"),
        Some(CsvError::NotNumeric { line, column, .. }) => {
            format!("{name}: line {line}: column {column:?}: not a number")
        }
        Some(CsvError::Blank { line, column, .. }) => format!(
            "{name}: line {line}: column {column:?}: blank, and the task declares no missing-value policy for it"
        ),
        Some(CsvError::AllLeftOut { read, why, .. }) => {
            format!("{name}: all {read} data rows were left out: {why}")
        }
        Some(CsvError::NotFinite { line, column, .. }) => {
            format!("{name}: line {line}: column {column:?}: not a finite number")
        }
        Some(CsvError::BadLabel {
            line,
            column,
            expected,
            ..
        }) => format!(
            "{name}: line {line}: column {column:?}: a label that is not a class of this task ({expected})"
        ),
        Some(CsvError::Syntax { line, .. }) => format!("{name}: line {line}: malformed CSV"),
        None => format!("{name} cannot be used for this task"),
    };
    format!("the site's data does not load: {what} (the plant's log has the details)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_learns_where_and_what_never_the_value() {
        let e = anyhow::Error::new(CsvError::NotNumeric {
            path: "/srv/plant/secret-line-3/batches.csv".into(),
            line: 7,
            column: "mean_radius".into(),
            value: "supplier ACME lot 4411".into(),
            hint: String::new(),
        });
        let r = reason(Path::new("/srv/plant/secret-line-3/batches.csv"), &e);
        assert_eq!(
            r,
            "the site's data does not load: batches.csv: line 7: column \"mean_radius\": not a number (the plant's log has the details)"
        );
        let e = anyhow::Error::new(CsvError::MissingColumn {
            path: "d.csv".into(),
            column: "yield".into(),
            header: "operator_name, salary".into(),
            hint: String::new(),
        })
        .context("loading");
        let r = reason(Path::new("d.csv"), &e);
        assert!(
            r.contains("column \"yield\", which the task reads, is missing"),
            "{r}"
        );
        assert!(!r.contains("salary"), "{r}");
    }
}
