//! `[training.early_stopping]`: the run stops on the validation loss and keeps the best epoch.

use std::sync::Arc;

use super::*;
use crate::spec::EarlyStopping;
use crate::spec::tests::SMALL;
use crate::stats::Normalization;

/// Rows whose labels are noise: the validation loss can only get worse once the network starts
/// learning its training rows by heart.
fn noise(n: usize, salt: usize) -> Dataset {
    let mut d = Dataset::empty(3);
    for i in 0..n {
        let j = i * 31 + salt;
        d.features.extend_from_slice(&[
            (j % 7) as f32 - 3.0,
            (j % 11) as f32 - 5.0,
            (j % 13) as f32,
        ]);
        d.targets.push(((j * 2_654_435_761) >> 7 & 1) as f32);
    }
    d
}

fn spec_with(rule: Option<EarlyStopping>) -> ModelSpec {
    let mut spec = ModelSpec::parse(SMALL, "<t>").unwrap();
    spec.model.hidden = vec![32];
    spec.training.learning_rate = 0.05;
    spec.training.early_stopping = rule;
    spec
}

#[test]
fn it_stops_when_validation_loss_stops_falling_and_keeps_the_best_epoch() {
    let rule = EarlyStopping {
        patience: 3,
        min_delta: 0.0,
    };
    let spec = spec_with(Some(rule));
    let start = Weights::initial(&spec, &Normalization::identity(3));
    let (train_rows, validation) = (noise(120, 0), noise(60, 5));
    let opts = TrainOptions {
        epochs: 200,
        validation: Some(Arc::new(validation)),
        ..TrainOptions::from_spec(&spec, 4)
    };
    let out = train(&spec, &start, &train_rows, &opts).unwrap();
    let stop = out.early_stop.clone().expect("early stopping ran");
    let trained = out.epoch_losses.len() as u32;
    assert!(trained < 200, "it stopped early ({trained} epochs)");
    assert_eq!(stop.validation_losses.len() as u32, trained);
    assert_eq!(
        trained,
        stop.best_epoch + rule.patience,
        "patience epochs after the best"
    );
    let best = stop.validation_losses[stop.best_epoch as usize - 1];
    assert!(stop.validation_losses.iter().all(|&v| v >= best));
    // The weights kept are exactly those of a plain run of `best_epoch` epochs.
    let plain = TrainOptions {
        epochs: stop.best_epoch,
        validation: None,
        ..opts.clone()
    };
    let reference = train(&spec_with(None), &start, &train_rows, &plain).unwrap();
    assert_eq!(out.weights, reference.weights);
    // Deterministic, like every run.
    assert_eq!(train(&spec, &start, &train_rows, &opts).unwrap(), out);
}

#[test]
fn without_the_rule_or_validation_rows_every_epoch_is_trained() {
    let start = Weights::initial(&spec_with(None), &Normalization::identity(3));
    let rows = noise(60, 0);
    let with_rows = TrainOptions {
        epochs: 12,
        validation: Some(Arc::new(noise(30, 1))),
        ..TrainOptions::from_spec(&spec_with(None), 4)
    };
    // No rule in the spec: validation rows are ignored.
    let out = train(&spec_with(None), &start, &rows, &with_rows).unwrap();
    assert_eq!((out.epoch_losses.len(), out.early_stop), (12, None));
    // A rule but no validation rows (a small site): every epoch, nothing kept early.
    let spec = spec_with(Some(EarlyStopping {
        patience: 1,
        min_delta: 0.0,
    }));
    for validation in [None, Some(Arc::new(Dataset::empty(3)))] {
        let opts = TrainOptions {
            validation,
            ..with_rows.clone()
        };
        let out = train(&spec, &start, &rows, &opts).unwrap();
        assert_eq!((out.epoch_losses.len(), out.early_stop), (12, None));
    }
}

#[test]
fn the_rule_is_checked_and_enters_the_spec_id_only_when_set() {
    let plain = ModelSpec::parse(SMALL, "<t>").unwrap();
    let with = SMALL.to_string() + "\n[training.early_stopping]\npatience = 5\n";
    let spec = ModelSpec::parse(&with, "<t>").unwrap();
    assert_eq!(
        spec.training.early_stopping,
        Some(EarlyStopping {
            patience: 5,
            min_delta: 0.0
        })
    );
    assert_ne!(spec.id(), plain.id());
    assert_eq!(ModelSpec::parse(&spec.to_toml(), "<t>").unwrap(), spec);
    assert_eq!(plain.training.early_stopping, None);
    for (bad, field) in [
        ("patience = 0", "training.early_stopping.patience"),
        ("min_delta = -1.0", "training.early_stopping.min_delta"),
        ("patients = 3", "patients"),
    ] {
        let text = SMALL.to_string() + "\n[training.early_stopping]\n" + bad + "\n";
        let err = ModelSpec::parse(&text, "<t>").unwrap_err().to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
}
