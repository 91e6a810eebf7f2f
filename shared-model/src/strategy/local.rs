//! What a party trains in a round of each strategy: the same function for the party daemon and
//! the offline simulator.

use super::*;

/// What a party trained in a round: the network it uploads and the model it helps make.
#[derive(Clone, Debug)]
pub struct LocalUpdate {
    /// The network to upload: a whole model, or for a Series Network, the new stage.
    pub weights: Weights,
    /// The series stage index the upload is (0 when not a series).
    pub stage: usize,
    /// The model this update yields for the party's own view: its network, or for a relay the
    /// model after its step (used for local evaluation before upload).
    pub result: Model,
    /// Mean loss per epoch.
    pub epoch_losses: Vec<f64>,
    /// Rows trained on.
    pub samples: usize,
    /// What early stopping did, when the spec asks for it and the site has validation rows.
    pub early_stop: Option<crate::train::EarlyStop>,
}

/// A party's local training for a round of `strategy` (its name) from `base`: what both the
/// party daemon and the offline simulator run.
///
/// - broadcast strategies: train the base network (an ensemble's member of this party, or a
///   fresh network from the ensemble's normalisation if it has none);
/// - `transfer`: fine-tune the base network (options carry frozen layers and learning rate);
/// - `series`: train a new stage on the features plus the chain's output; earlier stages stay
///   as they are (frozen by construction).
pub fn local_update(
    spec: &ModelSpec,
    strategy: &str,
    party: &str,
    base: &Model,
    data: &Dataset,
    opts: &TrainOptions,
) -> Result<LocalUpdate, TrainError> {
    local_update_observed(spec, strategy, party, base, data, opts, &mut |_, _| {})
}

/// [`local_update`], calling `on_epoch(epoch, mean loss)` after each epoch.
pub fn local_update_observed(
    spec: &ModelSpec,
    strategy: &str,
    party: &str,
    base: &Model,
    data: &Dataset,
    opts: &TrainOptions,
    on_epoch: &mut dyn FnMut(u32, f64),
) -> Result<LocalUpdate, TrainError> {
    if strategy == "series" {
        let stages: &[Weights] = match base {
            Model::Series(s) => s,
            _ => &[],
        };
        let j = stages.len();
        let stage = stage_spec(spec, j);
        let task_norm = base.task_normalization();
        let augmented = stage_dataset(spec, stages, data, opts.backend);
        // A stage starts from the chain it extends (see `model::stage_start`).
        let base_network = match base {
            Model::Single(w) => Some(w),
            _ => None,
        };
        let start = stage_start(spec, stages, base_network, &task_norm, &augmented);
        // Early stopping watches the validation rows as this stage sees them.
        let stage_opts = TrainOptions {
            validation: opts
                .validation
                .as_ref()
                .map(|v| std::sync::Arc::new(stage_dataset(spec, stages, v, opts.backend))),
            ..opts.clone()
        };
        let out = train_observed(&stage, &start, &augmented, &stage_opts, on_epoch)?;
        let result = relay_step(
            &Strategy::Series {
                order: RelayOrder::Fixed,
            },
            base,
            &out.weights,
        );
        return Ok(LocalUpdate {
            weights: out.weights,
            stage: j,
            result,
            epoch_losses: out.epoch_losses,
            samples: out.samples,
            early_stop: out.early_stop,
        });
    }
    let start = match base.start_for(party) {
        Some(w) => w.clone(),
        None => Weights::initial(spec, &base.task_normalization()),
    };
    let out = train_observed(spec, &start, data, opts, on_epoch)?;
    Ok(LocalUpdate {
        result: Model::Single(out.weights.clone()),
        weights: out.weights,
        stage: 0,
        epoch_losses: out.epoch_losses,
        samples: out.samples,
        early_stop: out.early_stop,
    })
}

/// One relay step: the model after `party`'s turn. Transfer Learning publishes the party's
/// fine-tuned network; the Series Network appends the party's stage to the chain.
pub fn relay_step(strategy: &Strategy, before: &Model, trained: &Weights) -> Model {
    match (strategy, before) {
        (Strategy::Series { .. }, Model::Series(stages)) => {
            let mut s = stages.clone();
            s.push(trained.clone());
            Model::Series(s)
        }
        (Strategy::Series { .. }, _) => Model::Series(vec![trained.clone()]),
        _ => Model::Single(trained.clone()),
    }
}
