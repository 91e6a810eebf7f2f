//! Local-only training: what a site can do with no coordinator at all. Load the site's CSV,
//! split it, normalise with the site's own statistics, train the declared network and evaluate
//! it on the site's holdout. This is also the federation's **local-only** baseline.

use std::path::Path;

use anyhow::Context as _;
use shared_model::blob::{self, BlobMeta, BlobRole};
use shared_model::data::{SplitFractions, load_observed};
use shared_model::eval::{Metrics, evaluate};
use shared_model::network::CpuBackend;
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use shared_model::train::{EarlyStop, TrainOptions, train_observed};
use shared_model::weights::Weights;

use crate::progress::Progress;

/// What a local run produced.
#[derive(Debug)]
pub struct LocalRun {
    /// The spec the model follows (with the vocabularies found, when it discovers some).
    pub spec: ModelSpec,
    /// The trained model.
    pub weights: Weights,
    /// Metrics on the site's holdout.
    pub holdout: Metrics,
    /// Rows trained on / validation / holdout.
    pub rows: (usize, usize, usize),
    /// Mean training loss per epoch.
    pub epoch_losses: Vec<f64>,
    /// What early stopping did, when the spec asks for it.
    pub early_stop: Option<EarlyStop>,
}

/// Trains the spec on a CSV with the site's own normalisation (and, for `discover` columns,
/// the vocabulary of the site's own rows, found by the federation's rule).
pub fn train_local(
    spec: &ModelSpec,
    data: &Path,
    epochs: Option<u32>,
    split_seed: u64,
) -> anyhow::Result<LocalRun> {
    let load = |spec: &ModelSpec| -> anyhow::Result<_> {
        let size = std::fs::metadata(data).map_or(0, |m| m.len());
        let mut progress = Progress::new(&format!("loading {}", data.display()), size, "bytes");
        let (ds, report) = load_observed(data, spec, &mut |byte| progress.set(byte, ""))?;
        progress.finish(size, &format!("{} rows", ds.len()));
        if !report.is_clean() {
            eprintln!("{}: {report}", data.display());
        }
        let [train, _, _] = ds.split_indices(spec.task.kind, SplitFractions::default(), split_seed);
        let seen = report.counts.seen_among(Some(&train));
        let split = ds.into_split(spec.task.kind, SplitFractions::default(), split_seed);
        Ok((split, seen))
    };
    let (mut split, seen) = load(spec)?;
    let norm = FeatureSums::of_dataset(spec, &split.train)
        .with_categories(spec, &seen)
        .normalization_for(spec)
        .with_context(|| format!("{}: cannot normalise the training rows", data.display()))?;
    let spec = &spec
        .resolved(&norm)
        .map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
    if spec.finds() {
        // encoded again, now that the vocabularies are known
        split = load(spec)?.0;
    }
    let start = Weights::initial(spec, &norm);
    let mut opts = TrainOptions::from_spec(spec, spec.training.seed);
    if let Some(e) = epochs {
        opts.epochs = e;
    }
    // Early stopping, when the spec asks for it, watches the validation rows.
    if spec.training.early_stopping.is_some() {
        opts.validation = Some(std::sync::Arc::new(split.validation.clone()));
    }
    let mut bar = Progress::new("training", u64::from(opts.epochs), "epochs");
    let out = train_observed(spec, &start, &split.train, &opts, &mut |epoch, loss| {
        bar.set(u64::from(epoch), &format!("loss {loss:.4}"))
    })
    .with_context(|| format!("training on {}", data.display()))?;
    bar.finish(out.epoch_losses.len() as u64, "");
    let holdout = evaluate(spec, &out.weights, &split.holdout, CpuBackend::default());
    Ok(LocalRun {
        spec: spec.clone(),
        weights: out.weights,
        holdout,
        rows: (
            split.train.len(),
            split.validation.len(),
            split.holdout.len(),
        ),
        epoch_losses: out.epoch_losses,
        early_stop: out.early_stop,
    })
}

/// Writes a model as a safetensors blob.
pub fn write_blob(path: &Path, spec: &ModelSpec, weights: &Weights) -> anyhow::Result<()> {
    let bytes = blob::encode(weights, &BlobMeta::new(spec, BlobRole::Update));
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
