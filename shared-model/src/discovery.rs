//! Vocabularies found in the statistics step, for simulations that hold every plant's rows in
//! one process (`coordinator demo` baselines, `coordinator experiment`). A live plant encodes
//! its file twice — once before the vocabularies are known (every value of a `discover`
//! column counts as "other" and is counted by name), once with the vocabularies the task's
//! model carries. A simulation loads the whole file once with a *wide* spec instead, whose
//! `discover` columns have one slot per value the file holds, so any subset of rows (a plant,
//! its training split) can be counted by name and re-encoded as any vocabulary says, exactly
//! as that plant would encode its own file.

use std::collections::BTreeMap;

use crate::data::Dataset;
use crate::encoding::Column;
use crate::spec::ModelSpec;
use crate::stats::FeatureSums;

/// `spec` with every `discover` column widened to one slot per value `seen` holds (by
/// feature index, as [`crate::encoding::Counts::seen`]), named in sorted order. Only for
/// encoding rows in memory: the layout is not the task's. A spec that discovers nothing is
/// returned as it is.
pub fn wide_spec(spec: &ModelSpec, seen: &[BTreeMap<String, u64>]) -> ModelSpec {
    let mut wide = spec.clone();
    for (f, names) in spec.task.features.iter().zip(seen) {
        if let Some(c) = wide.task.columns.get_mut(f)
            && let Some(d) = &mut c.discover
        {
            let all: Vec<String> = names.keys().cloned().collect();
            d.slots = all.len().max(1);
            c.found = Some(all);
        }
    }
    wide
}

/// Rows holding each value of each `discover` column among `rows` (encoded with a
/// [`wide_spec`]), as a plant reports them in the statistics step. Blanks are not counted.
pub fn counts(wide: &ModelSpec, rows: &[&Dataset]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for (f, at, c) in blocks(wide) {
        let Some(d) = c.discover else { continue };
        let names = c.vocabulary();
        let mut n = vec![0u64; d.slots];
        for ds in rows {
            for i in 0..ds.len() {
                let row = ds.row(i);
                if let Some(k) = (0..names.len()).find(|&k| row[at + k] == 1.0) {
                    n[k] += 1;
                }
            }
        }
        let m: BTreeMap<String, u64> = names
            .iter()
            .zip(n)
            .filter(|(_, c)| *c > 0)
            .map(|(k, c)| (k.clone(), c))
            .collect();
        out.insert(f.to_string(), m);
    }
    out
}

/// Rows encoded with a [`wide_spec`] of `target`'s declared spec, re-encoded as `target` says:
/// a `discover` column's value goes to its slot in `target`'s vocabulary, or to "other"
/// (every value, before the vocabularies are found); a blank stays blank, except that of a
/// `missing = "median"` column once `target` holds its median. Every other input is copied. Bit-identical to loading the same rows with `target`.
pub fn recode(wide: &ModelSpec, target: &ModelSpec, ds: &Dataset) -> Dataset {
    if !wide.discovers() && target.medians().is_empty() {
        return ds.clone();
    }
    let from: Vec<(usize, usize, Column)> = blocks(wide)
        .map(|(_, at, c)| (at, c.width(), c.clone()))
        .collect();
    let to: Vec<Column> = blocks(target).map(|(_, _, c)| c.clone()).collect();
    let width = target.input_width();
    let mut features = Vec::with_capacity(ds.len() * width);
    for i in 0..ds.len() {
        let row = ds.row(i);
        for ((at, w, src), dst) in from.iter().zip(&to) {
            let block = &row[*at..at + w];
            let (Some(d), Some(slots)) = (src.discover, dst.one_hot()) else {
                features.extend_from_slice(block);
                // a blank to fill with the median the statistics step found
                if let Some(m) = dst.median
                    && block[0].is_nan()
                {
                    let at = features.len() - block.len();
                    features[at] = m as f32;
                }
                continue;
            };
            let named = src.vocabulary();
            let cells = &block[..=d.slots];
            if cells[0].is_nan() {
                features.extend(std::iter::repeat_n(f32::NAN, slots + 1));
            } else {
                let slot = (0..named.len())
                    .find(|&k| cells[k] == 1.0)
                    .and_then(|k| dst.vocabulary().iter().position(|v| *v == named[k]))
                    .unwrap_or(slots);
                features.extend((0..=slots).map(|k| if k == slot { 1.0 } else { 0.0 }));
            }
            // the missing-value indicator, when declared
            features.extend_from_slice(&block[d.slots + 1..]);
        }
    }
    Dataset {
        width,
        features,
        targets: ds.targets.clone(),
    }
}

/// A simulated plant's statistics-step sums: its training rows as it encodes them before
/// the vocabularies are known, with their counts of each value when the spec discovers
/// vocabularies.
pub fn plant_sums(wide: &ModelSpec, declared: &ModelSpec, train: &Dataset) -> FeatureSums {
    let mut sums = FeatureSums::of_dataset(declared, &recode(wide, declared, train));
    sums.categories = counts(wide, &[train]);
    sums
}

/// What one site fixes alone (a local-only or data-sharing baseline): the normalisation and
/// vocabularies of `train` (rows of a [`wide_spec`]), and the declared spec with them, which
/// `train` and the rest are then [`recode`]d to.
pub fn fix_alone(
    wide: &ModelSpec,
    declared: &ModelSpec,
    train: &Dataset,
) -> Result<(ModelSpec, crate::stats::Normalization), String> {
    let norm = plant_sums(wide, declared, train)
        .normalization_for(declared)
        .map_err(|e| e.to_string())?;
    let spec = declared.resolved(&norm)?;
    Ok((spec, norm))
}

/// Each feature's name, first input and column encoding, in order.
fn blocks(spec: &ModelSpec) -> impl Iterator<Item = (&str, usize, &Column)> {
    static PLAIN: std::sync::OnceLock<Column> = std::sync::OnceLock::new();
    let plain = PLAIN.get_or_init(Column::default);
    let mut at = 0;
    spec.task.features.iter().map(move |f| {
        let c = spec.task.columns.get(f).unwrap_or(plain);
        let start = at;
        at += c.width();
        (f.as_str(), start, c)
    })
}

#[cfg(test)]
mod tests;
