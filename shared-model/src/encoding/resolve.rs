//! A spec's `[task.columns.NAME]` tables resolved and checked: the task-wide defaults applied,
//! the policies that fit each kind of column, declared and discovered vocabularies. Errors name
//! the field.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    Column, DEFAULT_MIN_COUNT, Discover, MAX_CATEGORIES, MAX_DISCOVER_SLOTS, MAX_INPUTS, Missing,
};

/// The raw (TOML) form of a `[task.columns.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawColumn {
    categories: Option<Vec<String>>,
    discover: Option<usize>,
    min_count: Option<u64>,
    missing: Option<Missing>,
    fill: Option<f64>,
    indicator: Option<bool>,
}

/// Resolves the task's columns: the task-wide `missing` / `missing_indicator` defaults applied,
/// each column checked, and only columns that differ from a plain number kept (so a spec that
/// spells out defaults keeps its id). Errors name the field.
pub(crate) fn resolve(
    features: &[String],
    default_missing: Option<Missing>,
    default_indicator: Option<bool>,
    raw: BTreeMap<String, RawColumn>,
) -> Result<BTreeMap<String, Column>, (&'static str, String)> {
    if let Some(name) = raw.keys().find(|k| !features.contains(k)) {
        return Err((
            "task.columns",
            format!("column {name:?} is not one of the task's features"),
        ));
    }
    if default_missing == Some(Missing::Constant) {
        return Err((
            "task.missing",
            "\"constant\" needs a fill per column: set it in [task.columns.NAME] with `fill`"
                .into(),
        ));
    }
    let mut raw = raw;
    let mut out = BTreeMap::new();
    let mut inputs = 0usize;
    for name in features {
        let r = raw.remove(name);
        let categories = r.as_ref().and_then(|r| r.categories.clone());
        let discover = discover_of(name, r.as_ref(), categories.is_some())?;
        let categorical = categories.is_some() || discover.is_some();
        let explicit = r.as_ref().and_then(|r| r.missing);
        let missing = match explicit.or(default_missing).unwrap_or_default() {
            // The task-wide default means the natural thing for each kind of column.
            Missing::Other if !categorical && explicit.is_none() => Missing::Mean,
            Missing::Median if categorical && explicit.is_none() => Missing::Mean,
            m => m,
        };
        let fill = r.as_ref().and_then(|r| r.fill);
        let indicator = r
            .as_ref()
            .and_then(|r| r.indicator)
            .or(default_indicator)
            .unwrap_or(false);
        if let Some(cats) = &categories {
            check_categories(name, cats)?;
        }
        match (missing, categorical, fill) {
            (Missing::Other, false, _) => {
                return Err((
                    "task.columns.missing",
                    format!(
                        "column {name:?}: \"other\" is for categorical columns (declare `categories` or `discover`)"
                    ),
                ));
            }
            (Missing::Median, true, _) => {
                return Err((
                    "task.columns.missing",
                    format!(
                        "column {name:?}: \"median\" is for numeric columns (a categorical column fills blanks with \"other\" or \"mean\")"
                    ),
                ));
            }
            (Missing::Constant, true, _) => {
                return Err((
                    "task.columns.missing",
                    format!(
                        "column {name:?}: a categorical column fills blanks with \"other\" or \"mean\", not a constant"
                    ),
                ));
            }
            (Missing::Constant, false, None) => {
                return Err((
                    "task.columns.fill",
                    format!("column {name:?}: missing = \"constant\" needs `fill`"),
                ));
            }
            (Missing::Constant, false, Some(f)) if !f.is_finite() => {
                return Err((
                    "task.columns.fill",
                    format!("column {name:?}: expected a finite number, found {f}"),
                ));
            }
            (m, _, Some(_)) if m != Missing::Constant => {
                return Err((
                    "task.columns.fill",
                    format!("column {name:?}: `fill` is only read with missing = \"constant\""),
                ));
            }
            _ => {}
        }
        let column = Column {
            categories,
            discover,
            missing,
            fill,
            indicator,
            found: None,
            median: None,
        };
        inputs += column.width();
        if !column.is_plain() {
            out.insert(name.clone(), column);
        }
    }
    if inputs > MAX_INPUTS {
        return Err((
            "task.columns",
            format!(
                "the encoded features would make {inputs} inputs; at most {MAX_INPUTS} are allowed"
            ),
        ));
    }
    Ok(out)
}

/// A column's `discover` / `min_count` keys, checked.
fn discover_of(
    name: &str,
    raw: Option<&RawColumn>,
    declared: bool,
) -> Result<Option<Discover>, (&'static str, String)> {
    let (slots, min_count) = match raw {
        Some(r) => (r.discover, r.min_count),
        None => (None, None),
    };
    match (slots, min_count) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err((
            "task.columns.min_count",
            format!("column {name:?}: `min_count` is only read with `discover`"),
        )),
        (Some(_), _) if declared => Err((
            "task.columns.discover",
            format!(
                "column {name:?}: declare `categories` or `discover` (a vocabulary found in the statistics step), not both"
            ),
        )),
        (Some(s), _) if s == 0 || s > MAX_DISCOVER_SLOTS => Err((
            "task.columns.discover",
            format!("column {name:?}: expected 1 to {MAX_DISCOVER_SLOTS} slots, found {s}"),
        )),
        (Some(_), Some(0)) => Err((
            "task.columns.min_count",
            format!("column {name:?}: expected a count of at least 1, found 0"),
        )),
        (Some(slots), m) => Ok(Some(Discover {
            slots,
            min_count: m.unwrap_or(DEFAULT_MIN_COUNT),
        })),
    }
}

/// Checks a vocabulary the statistics step found for column `name` (`slots` at most): the
/// names as a declared vocabulary's, but it may be empty (no category was common enough).
pub(crate) fn check_found(name: &str, slots: usize, found: &[String]) -> Result<(), String> {
    if found.len() > slots {
        return Err(format!(
            "column {name:?}: {} categories found for {slots} slots",
            found.len()
        ));
    }
    if found.is_empty() {
        return Ok(());
    }
    if let Some(f) = found
        .iter()
        .find(|f| super::MISSING_TOKENS.contains(&f.as_str()))
    {
        return Err(format!(
            "column {name:?}: {f:?} marks a blank cell, it cannot be a found category"
        ));
    }
    check_categories(name, found).map_err(|(_, m)| m)
}

/// True when `name` could be a category (as [`check_categories`] requires): what a plant may
/// report in the statistics step.
pub fn is_category_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && name.trim() == name
}

/// True when a vocabulary the statistics step found may hold `name`: a category name that is
/// not a blank marker (a found name never turns another plant's blanks into a category).
pub fn is_found_name(name: &str) -> bool {
    is_category_name(name) && !super::MISSING_TOKENS.contains(&name)
}

fn check_categories(name: &str, cats: &[String]) -> Result<(), (&'static str, String)> {
    if cats.is_empty() || cats.len() > MAX_CATEGORIES {
        return Err((
            "task.columns.categories",
            format!(
                "column {name:?}: expected 1 to {MAX_CATEGORIES} categories, found {}",
                cats.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in cats.iter().enumerate() {
        if !is_category_name(c) {
            return Err((
                "task.columns.categories",
                format!(
                    "column {name:?}: category {i} must be 1 to 256 bytes with no surrounding spaces (cells are trimmed), found {c:?}"
                ),
            ));
        }
        if !seen.insert(c.as_str()) {
            return Err((
                "task.columns.categories",
                format!("column {name:?}: category {c:?} is listed twice"),
            ));
        }
    }
    Ok(())
}
