//! A spec inferred from a CSV and its target column (`spec init`, and `demo`/`experiment
//! --target`), saying what it chose and why: numbers stay numbers; a column of a few names is
//! categorical (its vocabulary the names seen at least `min_count` times, rarer ones "other");
//! a column with blanks fills them (numbers with the mean and a missing indicator, categories
//! as "other"); a column of many names (an identifier) or of blanks only is left out. The
//! target's kind comes from [`crate::experiment::infer::kind`], or from its names. Whatever is
//! ambiguous — a few text cells among numbers — is refused naming the lines, never guessed.

use std::path::Path;

use anyhow::Context as _;
use shared_model::data::{ColumnProfile, profile};
use shared_model::spec::{ModelSpec, toml_str};

use crate::experiment::infer::{self, Kind};

/// The most distinct names a feature column may have to be inferred categorical.
pub const MAX_INFERRED_CATEGORIES: usize = 50;

/// The most distinct names a target column may have to be inferred as classes.
pub const MAX_INFERRED_CLASS_NAMES: usize = 100;

/// The default of `--min-count`: a category seen fewer times is "other".
pub const DEFAULT_MIN_COUNT: u64 = 5;

/// The inferred spec, its commented TOML and what was inferred, a line per decision.
#[derive(Debug)]
pub struct Inferred {
    /// The validated spec.
    pub spec: ModelSpec,
    /// The spec as TOML, with a comment block of [`Self::said`] on top.
    pub toml: String,
    /// One line per decision, with its reason.
    pub said: Vec<String>,
}

/// Infers a spec for `path` predicting `target` (`kind` forces the task kind).
pub fn infer_spec(
    path: &Path,
    target: &str,
    kind: Option<Kind>,
    min_count: u64,
    discover: bool,
) -> anyhow::Result<Inferred> {
    let p = profile(path, Some(target))?;
    let shown = path.display();
    let mut said = Vec::new();
    let mut features = Vec::new();
    let mut columns = String::new();
    for c in p.columns.iter().filter(|c| c.name != target) {
        if let Some(text) = feature(c, p.rows, min_count, discover, &mut said)
            .with_context(|| format!("{shown}: column {:?}", c.name))?
        {
            features.push(c.name.clone());
            columns += &text;
        }
    }
    anyhow::ensure!(
        !features.is_empty(),
        "{shown}: no column besides {target:?} can be a feature"
    );
    let t = p
        .columns
        .iter()
        .find(|c| c.name == target)
        .expect("profile found the target");
    anyhow::ensure!(
        t.blank < p.rows,
        "{shown}: the target {target:?} is blank on every row"
    );
    if t.blank > 0 {
        said.push(format!(
            "target {target:?}: {} of {} rows are blank: they are left out (a target is never filled in)",
            t.blank, p.rows
        ));
    }
    if t.text > 0 && t.numeric * 10 >= (t.numeric + t.text) * 9 {
        anyhow::bail!(
            "{shown}: target {target:?} is ambiguous: {} numbers and {} text cells ({}); fix those lines, or give --kind and a spec naming the classes",
            t.numeric,
            t.text,
            text_lines(t)
        );
    }
    let kind_lines = if t.text == 0 {
        let (lines, why) =
            infer::kind(target, &p.target_numbers, kind).with_context(|| format!("{shown}"))?;
        said.push(why);
        lines
    } else {
        class_names(t, kind, &mut said).with_context(|| format!("{shown}"))?
    };
    let mut kind_lines = kind_lines;
    if kind_lines.contains("\"regression\"") {
        kind_lines += "\nstandardize_target = true";
        said.push(format!(
            "target {target:?}: standardised with the federated mean and standard deviation of the training targets, undone in every prediction"
        ));
    }
    let quoted: Vec<String> = features.iter().map(|f| toml_str(f)).collect();
    let text = format!(
        "format = 1\nname = \"derived\"\n\n[task]\n{kind_lines}\ntarget = {}\nfeatures = [{}]\n{columns}\n[model]\nhidden = [16, 8]\n\n[training]\nlearning_rate = 0.01\nlocal_epochs = 2\nbatch_size = 32\nseed = 1\n",
        toml_str(target),
        quoted.join(", ")
    );
    let spec = ModelSpec::parse(&text, &format!("spec derived from {shown}"))?;
    let mut toml = format!(
        "# Inferred by `coordinator spec init` from {} ({} rows). Check each choice:\n",
        path.file_name()
            .map_or(shown.to_string(), |n| n.to_string_lossy().into_owned()),
        p.rows
    );
    for s in &said {
        toml += &format!("# - {s}\n");
    }
    toml += "# The network and training below are starting points (docs/CONFIG.md). Two local epochs\n\
             # per round: on a few hundred rows per plant, more let the model memorise its rows over\n\
             # the rounds, and each plant's membership audit then refuses its upload.\n\n";
    toml += &spec.to_toml();
    Ok(Inferred { spec, toml, said })
}

/// The `[task.columns]` text of one feature column, `None` to leave it out.
fn feature(
    c: &ColumnProfile,
    rows: u64,
    min_count: u64,
    discover: bool,
    said: &mut Vec<String>,
) -> anyhow::Result<Option<String>> {
    let name = &c.name;
    if c.blank == rows {
        said.push(format!("{name:?}: blank on every row → left out"));
        return Ok(None);
    }
    let blanks = if c.blank > 0 {
        format!(", {} blank cells", c.blank)
    } else {
        String::new()
    };
    if c.text == 0 {
        if c.blank == 0 {
            return Ok(Some(String::new()));
        }
        said.push(format!(
            "{name:?}: numbers{blanks} → blanks filled with the federated mean, with a missing indicator"
        ));
        return Ok(Some(format!(
            "\n[task.columns.{}]\nmissing = \"mean\"\nindicator = true\n",
            toml_str(name)
        )));
    }
    let present = rows - c.blank;
    if c.numeric * 10 >= present * 9 {
        anyhow::bail!(
            "mostly numbers, but {} cells are text ({}): fix those cells, or declare the column categorical in a spec",
            c.text,
            text_lines(c)
        );
    }
    let Some(values) = c
        .values
        .as_ref()
        .filter(|v| v.len() <= MAX_INFERRED_CATEGORIES)
    else {
        said.push(format!(
            "{name:?}: more than {MAX_INFERRED_CATEGORIES} distinct names, like an identifier → left out"
        ));
        return Ok(None);
    };
    if discover {
        let slots = (2 * values.len()).clamp(8, MAX_INFERRED_CATEGORIES * 2);
        let blank_policy = if c.blank > 0 {
            ", blanks count as \"other\""
        } else {
            ""
        };
        said.push(format!(
            "{name:?}: {} names here{blanks} → categorical, its vocabulary found in the statistics step ({slots} slots; a name is kept when {min_count} rows across the plants hold it{blank_policy}); no name is written into the spec",
            values.len()
        ));
        let mut text = format!(
            "\n[task.columns.{}]\ndiscover = {slots}\nmin_count = {min_count}\n",
            toml_str(name)
        );
        if c.blank > 0 {
            text += "missing = \"other\"\n";
        }
        return Ok(Some(text));
    }
    let mut kept: Vec<(&String, u64)> = values
        .iter()
        .filter(|(_, n)| **n >= min_count)
        .map(|(k, n)| (k, *n))
        .collect();
    if kept.is_empty() {
        said.push(format!(
            "{name:?}: no name occurs {min_count} times (--min-count) → left out"
        ));
        return Ok(None);
    }
    kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let rare = values.len() - kept.len();
    let rare = if rare > 0 {
        format!(", {rare} names seen fewer than {min_count} times count as \"other\"")
    } else {
        String::new()
    };
    let blank_policy = if c.blank > 0 {
        ", blanks count as \"other\""
    } else {
        ""
    };
    said.push(format!(
        "{name:?}: {} names{blanks} → categorical, one-hot over {}{rare}{blank_policy}",
        values.len(),
        kept.len()
    ));
    let cats: Vec<String> = kept.iter().map(|(k, _)| toml_str(k)).collect();
    let mut text = format!(
        "\n[task.columns.{}]\ncategories = [{}]\n",
        toml_str(name),
        cats.join(", ")
    );
    if c.blank > 0 {
        text += "missing = \"other\"\n";
    }
    Ok(Some(text))
}

/// The kind lines of a target column holding names.
fn class_names(
    t: &ColumnProfile,
    kind: Option<Kind>,
    said: &mut Vec<String>,
) -> anyhow::Result<String> {
    let target = &t.name;
    anyhow::ensure!(
        kind != Some(Kind::Regression),
        "target {target:?}: --kind regression needs numbers, found text ({})",
        text_lines(t)
    );
    let Some(values) = t
        .values
        .as_ref()
        .filter(|v| v.len() <= MAX_INFERRED_CLASS_NAMES)
    else {
        anyhow::bail!(
            "target {target:?}: more than {MAX_INFERRED_CLASS_NAMES} distinct names — not a class label"
        );
    };
    let mut names: Vec<&String> = values.keys().collect();
    names.sort();
    let list: Vec<String> = names.iter().map(|n| toml_str(n)).collect();
    match (names.len(), kind) {
        (1, _) => anyhow::bail!("target {target:?}: only one class, {:?}", names[0]),
        (2, None | Some(Kind::Binary)) => {
            said.push(format!(
                "target {target:?}: two names → binary, {:?} the positive class (the second in `classes`; reorder them to choose)",
                names[1]
            ));
            Ok(format!(
                "kind = \"binary\"\nclasses = [{}]",
                list.join(", ")
            ))
        }
        (n, Some(Kind::Binary)) => {
            anyhow::bail!("target {target:?}: --kind binary needs two names, found {n}")
        }
        (2, Some(Kind::Multiclass)) => {
            anyhow::bail!("target {target:?}: --kind multiclass needs 3 or more names, found 2")
        }
        (n, _) => {
            said.push(format!(
                "target {target:?}: {n} names → multiclass with classes [{}]",
                list.join(", ")
            ));
            Ok(format!(
                "kind = \"multiclass\"\nclasses = [{}]",
                list.join(", ")
            ))
        }
    }
}

/// The first text cells of a column, `line N: "text"`, comma-separated.
fn text_lines(c: &ColumnProfile) -> String {
    c.text_lines
        .iter()
        .map(|(l, v)| format!("line {l}: {v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
