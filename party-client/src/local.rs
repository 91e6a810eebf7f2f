//! Local-only training: what a site can do with no coordinator at all. Load the site's CSV,
//! split it, normalise with the site's own statistics, train the declared network and evaluate
//! it on the site's holdout. This is also the federation's **local-only** baseline.

use std::path::Path;

use anyhow::Context as _;
use shared_model::blob::{self, BlobMeta, BlobRole};
use shared_model::data::{SplitFractions, load};
use shared_model::eval::{Metrics, evaluate};
use shared_model::network::CpuBackend;
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use shared_model::train::{TrainOptions, train};
use shared_model::weights::Weights;

/// What a local run produced.
#[derive(Debug)]
pub struct LocalRun {
    /// The trained model.
    pub weights: Weights,
    /// Metrics on the site's holdout.
    pub holdout: Metrics,
    /// Rows trained on / validation / holdout.
    pub rows: (usize, usize, usize),
    /// Mean training loss per epoch.
    pub epoch_losses: Vec<f64>,
}

/// Trains the spec on a CSV with the site's own normalisation.
pub fn train_local(
    spec: &ModelSpec,
    data: &Path,
    epochs: Option<u32>,
    split_seed: u64,
) -> anyhow::Result<LocalRun> {
    let (ds, report) = load(data, spec)?;
    if !report.is_clean() {
        eprintln!("{}: {report}", data.display());
    }
    let split = ds.split(spec.task.kind, SplitFractions::default(), split_seed);
    let norm = FeatureSums::of_dataset(spec, &split.train)
        .normalization_for(spec)
        .with_context(|| format!("{}: cannot normalise the training rows", data.display()))?;
    let start = Weights::initial(spec, &norm);
    let mut opts = TrainOptions::from_spec(spec, spec.training.seed);
    if let Some(e) = epochs {
        opts.epochs = e;
    }
    let out = train(spec, &start, &split.train, &opts)
        .with_context(|| format!("training on {}", data.display()))?;
    let holdout = evaluate(spec, &out.weights, &split.holdout, CpuBackend::default());
    Ok(LocalRun {
        weights: out.weights,
        holdout,
        rows: (
            split.train.len(),
            split.validation.len(),
            split.holdout.len(),
        ),
        epoch_losses: out.epoch_losses,
    })
}

/// Writes a model as a safetensors blob.
pub fn write_blob(path: &Path, spec: &ModelSpec, weights: &Weights) -> anyhow::Result<()> {
    let bytes = blob::encode(
        weights,
        &BlobMeta {
            spec_id: spec.id(),
            role: BlobRole::Update,
        },
    );
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
