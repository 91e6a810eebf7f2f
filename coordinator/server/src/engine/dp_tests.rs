//! Engine tests of differential privacy: the central clip check and noised mean, local mode.
use super::*;
use crate::store::RoundPhase;
use shared_model::dp;
use shared_model::weights::Weights;

use super::fixture::*;

#[test]
fn central_dp_rejects_unclipped_updates_and_merges_the_mean_with_noise() {
    // A network of 257 trainable values (hidden layer of 64). Party i's update moves every value
    // by 0.01·(i+1): delta norm 0.1603·(i+1). C = 0.35 admits plant-0 and plant-1, not plant-2.
    // The parties sign 10, 40 and 90 samples: central DP must not weight by them.
    let spec_text = SPEC.replace("hidden = [3]", "hidden = [64]");
    let text = format!(
        "{spec_text}\n[privacy.dp]\nmode = \"central\"\nclip = 0.35\nnoise_multiplier = 0.01\ndelta = 1e-5\n"
    );
    let mut f = fixture_with(3, &text);
    for s in ["ensemble", "series", "median"] {
        let e = f
            .engine
            .start_rounds("t", s, &BTreeMap::new(), 1, 60_000, 1, 1)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("task t") && msg.contains(s) && msg.contains("differential privacy"),
            "{msg}"
        );
    }
    f.engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 2, 60_000, 1, 1)
        .unwrap();
    assert!(f.engine.tick(2).unwrap(), "round opens");
    assert_eq!(f.upload(0, 1, 3).unwrap(), UploadOutcome::Accepted);
    assert_eq!(f.upload(1, 1, 3).unwrap(), UploadOutcome::Accepted);
    match f.upload(2, 1, 3) {
        Err(EngineError::Rejected { code, reason }) => {
            assert_eq!(code, "dp_clip");
            assert!(
                reason.contains("plant-2") && reason.contains("0.4809"),
                "{reason}"
            );
        }
        other => panic!("expected a dp_clip rejection, got {other:?}"),
    }
    // At the deadline the round merges plant-0 and plant-1.
    assert!(f.engine.tick(60_010).unwrap());
    let rounds = f.engine.store().rounds("t").unwrap();
    assert_eq!(rounds[0].phase, RoundPhase::Published, "{:?}", rounds[0]);
    let spec = ModelSpec::parse(&text, "t").unwrap();
    let (_, bytes) = f.engine.model("t", None).unwrap();
    let Model::Single(merged) = Model::decode(&bytes, &spec, BlobRole::Merged).unwrap() else {
        panic!("a single network");
    };
    let base = Weights::initial(&spec, &sums().normalization().unwrap());
    let moved: Vec<f64> = merged
        .trainable()
        .iter()
        .zip(base.trainable())
        .flat_map(|(m, b)| m.data.iter().zip(&b.data))
        .map(|(&m, &b)| f64::from(m) - f64::from(b))
        .collect();
    assert_eq!(moved.len(), 257);
    // The unweighted mean of the deltas 0.01 and 0.02 is 0.015 (weighted by 10 and 40 samples it
    // would be 0.018); the mean over 257 values of noise with std 0.00175 is within ±0.00011
    // (1 σ), so ±0.0006 tells the two apart with margin.
    let mean = moved.iter().sum::<f64>() / moved.len() as f64;
    assert!(
        (mean - 0.015).abs() < 0.0006,
        "mean move {mean}, want 0.015"
    );
    // The rest is noise of std σ·C/n = 0.01·0.35/2 = 0.00175 per value (σ·C, without the /n,
    // would be 0.0035); the rms of 257 draws is within ±20 % of it (±4.5 standard errors).
    let rms = (moved.iter().map(|x| (x - 0.015).powi(2)).sum::<f64>() / moved.len() as f64).sqrt();
    assert!(
        rms > 0.0014 && rms < 0.0021,
        "noise rms {rms}, want about 0.00175"
    );
    assert_eq!(merged.normalization(), base.normalization());
    // The privacy spent is what the accountant says for one round.
    let infos = crate::grpc::convert::round_infos(f.engine.store(), "t").unwrap();
    let want = dp::epsilon(1, 0.01, 1e-5);
    assert!(
        (infos[0].dp_epsilon - want).abs() < 1e-9 * want.max(1.0),
        "{infos:?}"
    );
    assert_eq!((infos[0].dp_delta, infos[0].dp_rounds), (1e-5, 1));
}

#[test]
fn local_dp_accepts_noised_updates_beyond_the_clip() {
    let text =
        format!("{SPEC}\n[privacy.dp]\nmode = \"local\"\nclip = 0.01\nnoise_multiplier = 1.0\n");
    let mut f = fixture_with(2, &text);
    let e = f
        .engine
        .start_rounds("t", "ensemble", &BTreeMap::new(), 1, 60_000, 1, 1)
        .unwrap_err();
    assert!(e.to_string().contains("ensemble"), "{e}");
    f.engine
        .start_rounds("t", "median", &BTreeMap::new(), 2, 60_000, 1, 1)
        .unwrap();
    assert!(f.engine.tick(2).unwrap());
    assert_eq!(f.upload(0, 1, 3).unwrap(), UploadOutcome::Accepted);
    assert_eq!(f.upload(1, 1, 3).unwrap(), UploadOutcome::Accepted);
    assert!(f.engine.tick(4).unwrap());
    let infos = crate::grpc::convert::round_infos(f.engine.store(), "t").unwrap();
    assert_eq!(infos[0].phase, "published");
    assert!((infos[0].dp_epsilon - dp::epsilon(1, 1.0, 1e-5)).abs() < 1e-12);
}
