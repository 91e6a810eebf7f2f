//! What the statistics step finds that the spec does not hold — a `discover` column's
//! vocabulary, a `missing = "median"` column's median — and the spec with it, which every model
//! of the task follows. None of it enters the spec id, layout or TOML.

use super::*;

impl ModelSpec {
    /// True when a feature's vocabulary is found in the statistics step (`discover`): the
    /// spec's layout is fixed, but rows are encoded as the task's models say
    /// ([`Self::with_vocabularies`]).
    pub fn discovers(&self) -> bool {
        self.task.columns.values().any(|c| c.discover.is_some())
    }

    /// The vocabularies the statistics step found, by column (empty before it, and for a spec
    /// that discovers none).
    pub fn vocabularies(&self) -> BTreeMap<String, Vec<String>> {
        self.task
            .columns
            .iter()
            .filter_map(|(name, c)| c.found.clone().map(|f| (name.clone(), f)))
            .collect()
    }

    /// This spec with the vocabularies the statistics step found (one per `discover` column,
    /// each at most its slots, most frequent first). The id, layout and TOML stay the
    /// declared spec's. Refused naming the column when they do not fit.
    pub fn with_vocabularies(
        &self,
        found: &BTreeMap<String, Vec<String>>,
    ) -> Result<ModelSpec, String> {
        if let Some(name) = found.keys().find(|k| {
            self.task
                .columns
                .get(*k)
                .is_none_or(|c| c.discover.is_none())
        }) {
            return Err(format!(
                "vocabulary for column {name:?}, which the spec does not discover"
            ));
        }
        let mut out = self.clone();
        for (name, c) in out.task.columns.iter_mut() {
            let Some(d) = c.discover else { continue };
            let Some(f) = found.get(name) else {
                return Err(format!("no vocabulary for column {name:?} (`discover`)"));
            };
            encoding::check_found(name, d.slots, f)?;
            c.found = Some(f.clone());
        }
        Ok(out)
    }

    /// True when the statistics step finds something the spec does not hold — a `discover`
    /// column's vocabulary or a `missing = "median"` column's median — that the task's models
    /// then carry ([`Self::resolved`]).
    pub fn finds(&self) -> bool {
        self.discovers()
            || self
                .task
                .columns
                .values()
                .any(|c| c.missing == Missing::Median)
    }

    /// The medians the statistics step found, by column (empty before it).
    pub fn medians(&self) -> BTreeMap<String, f64> {
        self.task
            .columns
            .iter()
            .filter_map(|(name, c)| c.median.map(|m| (name.clone(), m)))
            .collect()
    }

    /// This spec with the medians the statistics step found (one per `missing = "median"`
    /// column, finite); id, layout and TOML stay the declared spec's.
    pub fn with_medians(&self, found: &BTreeMap<String, f64>) -> Result<ModelSpec, String> {
        if let Some(name) = found.keys().find(|k| {
            self.task
                .columns
                .get(*k)
                .is_none_or(|c| c.missing != Missing::Median)
        }) {
            return Err(format!(
                "median for column {name:?}, whose blanks the spec does not fill with the median"
            ));
        }
        let mut out = self.clone();
        for (name, c) in out.task.columns.iter_mut() {
            if c.missing != Missing::Median {
                continue;
            }
            match found.get(name) {
                Some(m) if m.is_finite() && m.abs() < f64::from(f32::MAX) => c.median = Some(*m),
                Some(m) => return Err(format!("column {name:?}: median {m} is not a finite f32")),
                None => {
                    return Err(format!(
                        "no median for column {name:?} (`missing = \"median\"`)"
                    ));
                }
            }
        }
        Ok(out)
    }

    /// This spec with what the statistics step found ([`Self::with_vocabularies`],
    /// [`Self::with_medians`]): the spec every model of the task follows.
    pub fn resolved(&self, norm: &crate::stats::Normalization) -> Result<ModelSpec, String> {
        self.with_vocabularies(&norm.vocabularies)?
            .with_medians(&norm.medians)
    }
}
