//! Differential privacy of updates (`[privacy.dp]` of a spec, docs/PRIVACY.md): clipping a
//! party's update to an L2 bound around the base model, Gaussian noise, the central merge (the
//! unweighted mean of clipped deltas plus noise) and the privacy accountant (zCDP → (ε, δ)).
//! Pure functions; the randomness is an argument, so tests seed it and production draws the
//! seed from the operating system ([`os_rng`]).
//!
//! Only strategies whose upload is a whole network trained from the base model can be made
//! private this way: the delta from the base is what is clipped. Central mode is limited to the
//! mean merges (FedAvg, FedProx): its noise is calibrated to the sensitivity of a *sum* of
//! clipped deltas, which a median, trimmed mean or Krum selection does not have.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};

use crate::model::Model;
use crate::spec::{DpMode, DpSpec};
use crate::strategy::LocalUpdate;
use crate::weights::{Weights, WeightsError};

/// Relative slack the coordinator allows over the clip bound in central mode: the party clips
/// in f32, so the norm it achieves can exceed C by rounding.
pub const CLIP_TOLERANCE: f64 = 1e-4;

/// Why differential privacy cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DpError {
    /// The strategy's upload or merge does not fit the mechanism.
    #[error(
        "strategy {strategy} cannot run with differential privacy in {mode} mode: {why}",
        mode = mode_name(*mode)
    )]
    Unsupported {
        /// The strategy's name.
        strategy: String,
        /// The task's mode.
        mode: DpMode,
        /// Why.
        why: &'static str,
    },
    /// The base model is not a single network, so there is no delta to clip.
    #[error("differential privacy needs a single-network base model, found a {0}")]
    Base(&'static str),
    /// Nothing to merge.
    #[error("no updates to merge")]
    Empty,
    /// The noised values are not finite.
    #[error("noised model is not finite: {0}")]
    Weights(#[from] WeightsError),
    /// The trained update is not finite (training diverged): there is nothing to clip.
    #[error("the trained update is not finite (training diverged); nothing to clip or upload")]
    Diverged,
}

/// `local` or `central`, as the spec spells it.
pub fn mode_name(mode: DpMode) -> &'static str {
    match mode {
        DpMode::Local => "local",
        DpMode::Central => "central",
    }
}

/// Whether rounds of `strategy` (its name) can run on a task with differential privacy in
/// `mode`. Ensemble and Series uploads are not deltas from the base model (a new member or
/// stage, possibly trained from scratch), so there is nothing to clip. Central mode adds noise
/// calibrated to a sum of clipped deltas, which only the mean merges (FedAvg, FedProx) compute.
pub fn check_strategy(mode: DpMode, strategy: &str) -> Result<(), DpError> {
    let unsupported = |why| {
        Err(DpError::Unsupported {
            strategy: strategy.to_string(),
            mode,
            why,
        })
    };
    match (strategy, mode) {
        ("ensemble" | "series", _) => unsupported(
            "its upload is a new network, not a delta from the base model, so it cannot be clipped",
        ),
        ("fedavg" | "fedprox", _) => Ok(()),
        (_, DpMode::Central) => unsupported(
            "central noise is calibrated to the unweighted mean of clipped deltas; use fedavg or fedprox, or local mode",
        ),
        (_, DpMode::Local) => Ok(()),
    }
}

/// The L2 norm of `update − base` over the trainable tensors (the normalisation is not trained).
pub fn delta_norm(base: &Weights, update: &Weights) -> f64 {
    base.l2_distance(update)
}

/// `update`'s delta from `base` over every trainable tensor, L2-clipped to norm `clip`, returned
/// as base + clipped delta, together with the delta's original norm. An update already within
/// the bound is returned unchanged; the normalisation tensors are taken from `base`.
pub fn clip_delta(base: &Weights, update: &Weights, clip: f64) -> Result<(Weights, f64), DpError> {
    let norm = delta_norm(base, update);
    if !norm.is_finite() {
        return Err(DpError::Diverged);
    }
    let scale = if norm > clip { clip / norm } else { 1.0 };
    let mut i = 0;
    let clipped = base
        .map_trainable(|b| {
            let u = &update.trainable()[i];
            i += 1;
            b.data
                .iter()
                .zip(&u.data)
                .map(|(&b, &u)| (f64::from(b) + (f64::from(u) - f64::from(b)) * scale) as f32)
                .collect()
        })
        .map_err(|_| DpError::Diverged)?;
    Ok((clipped, norm))
}

/// `w` plus independent Gaussian noise N(0, std²) on every trainable coordinate (the
/// normalisation is left as it is).
pub fn add_noise(w: &Weights, std: f64, rng: &mut impl Rng) -> Result<Weights, DpError> {
    let normal = Normal::new(0.0, std).expect("a finite, non-negative standard deviation");
    Ok(w.map_trainable(|t| {
        t.data
            .iter()
            .map(|&v| (f64::from(v) + normal.sample(rng)) as f32)
            .collect()
    })?)
}

/// A party's DP step after local training for a round of `strategy`: the update's delta from the
/// base network is clipped to C; in local mode Gaussian noise of standard deviation
/// σ·C is added. The update's `result` (what the membership audit and the local evaluation see)
/// becomes the privatised network too. Shared by the party daemon and `coordinator experiment`.
pub fn privatize(
    dp: &DpSpec,
    strategy: &str,
    base: &Model,
    update: LocalUpdate,
    rng: &mut impl Rng,
) -> Result<LocalUpdate, DpError> {
    check_strategy(dp.mode, strategy)?;
    let start = match base {
        Model::Single(w) => w,
        other => return Err(DpError::Base(other.kind())),
    };
    let (clipped, _) = clip_delta(start, &update.weights, dp.clip)?;
    let weights = match dp.mode {
        DpMode::Local => add_noise(&clipped, dp.noise_multiplier * dp.clip, rng)?,
        DpMode::Central => clipped,
    };
    Ok(LocalUpdate {
        result: Model::Single(weights.clone()),
        weights,
        ..update
    })
}

/// In central mode, whether an update respects the clip: `Err(norm)` if its delta from `base`
/// exceeds C·(1 + [`CLIP_TOLERANCE`]).
pub fn check_clip(dp: &DpSpec, base: &Weights, update: &Weights) -> Result<(), f64> {
    let norm = delta_norm(base, update);
    if norm > dp.clip * (1.0 + CLIP_TOLERANCE) {
        Err(norm)
    } else {
        Ok(())
    }
}

/// The central-mode merge: base + the **unweighted** mean of the updates' deltas (each already
/// clipped to C, see [`check_clip`]) + Gaussian noise of standard deviation σ·C/n, i.e. noise
/// σ·C on the sum, whose sensitivity to one party is C. Sample-count weights would let one
/// party move the mean by more than C/n, so they are not used.
pub fn central_merge(
    dp: &DpSpec,
    base: &Weights,
    updates: &[&Weights],
    rng: &mut impl Rng,
) -> Result<Weights, DpError> {
    if updates.is_empty() {
        return Err(DpError::Empty);
    }
    let n = updates.len() as f64;
    let normal = Normal::new(0.0, dp.noise_multiplier * dp.clip / n)
        .expect("a finite, non-negative standard deviation");
    let mut i = 0;
    Ok(base.map_trainable(|b| {
        let out = (0..b.data.len())
            .map(|k| {
                let sum: f64 = updates
                    .iter()
                    .map(|u| f64::from(u.trainable()[i].data[k]) - f64::from(b.data[k]))
                    .sum();
                (f64::from(b.data[k]) + sum / n + normal.sample(rng)) as f32
            })
            .collect();
        i += 1;
        out
    })?)
}

/// The noise generator of the DP step: ChaCha20, from [`os_rng`] at a site, [`seeded_rng`] in
/// simulations.
pub type NoiseRng = ChaCha20Rng;

/// A ChaCha20 generator seeded from the operating system's random source: the noise of a real
/// federation must not be predictable.
pub fn os_rng() -> ChaCha20Rng {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the system random source works");
    ChaCha20Rng::from_seed(seed)
}

/// A ChaCha20 generator from a seed: reproducible noise for simulations and tests only.
pub fn seeded_rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// ρ of zero-concentrated DP after `rounds` Gaussian releases with noise multiplier σ:
/// R/(2σ²).
pub fn rho(rounds: u64, noise_multiplier: f64) -> f64 {
    rounds as f64 / (2.0 * noise_multiplier * noise_multiplier)
}

/// The ε of (ε, δ)-differential privacy a party has spent after taking part in `rounds` rounds
/// with noise multiplier σ (`noise_multiplier`), for the given δ.
///
/// Accounting in zero-concentrated differential privacy (M. Bun and T. Steinke, "Concentrated
/// Differential Privacy: Simplifications, Extensions, and Lower Bounds", TCC 2016,
/// arXiv:1605.02065): the Gaussian mechanism with L2 sensitivity C and noise standard deviation
/// σ·C is ρ-zCDP with ρ = 1/(2σ²) (Proposition 1.6); zCDP composes by adding ρ, so R rounds give
/// ρ = R/(2σ²) (Lemma 1.7); ρ-zCDP implies (ε, δ)-DP with ε = ρ + 2·√(ρ·ln(1/δ)) for every
/// δ > 0 (Proposition 1.3). Zero rounds spend nothing.
pub fn epsilon(rounds: u64, noise_multiplier: f64, delta: f64) -> f64 {
    let rho = rho(rounds, noise_multiplier);
    rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ModelSpec;
    use crate::spec::tests::SMALL;
    use crate::stats::Normalization;

    fn base() -> Weights {
        let norm = Normalization {
            mean: vec![1.0, 2.0, 3.0],
            std: vec![0.5, 1.5, 2.5],
            target: None,
            vocabularies: Default::default(),
            medians: Default::default(),
        };
        Weights::initial(&ModelSpec::parse(SMALL, "<t>").unwrap(), &norm)
    }

    /// `base` moved by `step` along a fixed direction, with another normalisation.
    fn moved(step: f32) -> Weights {
        let b = base();
        let mut k = 0f32;
        let w = b
            .map_trainable(|t| {
                t.data
                    .iter()
                    .map(|v| {
                        k += 1.0;
                        v + step * (k % 7.0 - 3.0)
                    })
                    .collect()
            })
            .unwrap();
        let mut tensors = w.tensors().to_vec();
        tensors[0].data = vec![9.0; 3];
        tensors[1].data = vec![7.0; 3];
        let layout = ModelSpec::parse(SMALL, "<t>").unwrap().tensors();
        Weights::from_tensors(&layout, tensors).unwrap()
    }

    fn dp(mode: DpMode) -> DpSpec {
        DpSpec {
            mode,
            clip: 0.5,
            noise_multiplier: 1.1,
            delta: 1e-5,
        }
    }

    #[test]
    fn clipping_bounds_the_norm_keeps_the_direction_and_the_normalisation() {
        let b = base();
        let u = moved(0.3);
        let (c, norm) = clip_delta(&b, &u, 0.5).unwrap();
        assert!((norm - delta_norm(&b, &u)).abs() < 1e-12);
        assert!(norm > 0.5, "the fixture must exceed the clip: {norm}");
        let after = delta_norm(&b, &c);
        assert!(after <= 0.5 * (1.0 + 1e-6), "{after}");
        assert!(after > 0.5 * (1.0 - 1e-6), "{after}");
        // Same direction: every coordinate's delta is the original one scaled by C/norm.
        let scale = 0.5 / norm;
        for ((ct, ut), bt) in c.trainable().iter().zip(u.trainable()).zip(b.trainable()) {
            for ((&cv, &uv), &bv) in ct.data.iter().zip(&ut.data).zip(&bt.data) {
                let want = f64::from(uv - bv) * scale;
                assert!((f64::from(cv - bv) - want).abs() < 1e-6, "{cv} {uv} {bv}");
            }
        }
        assert_eq!(c.normalization(), b.normalization());
        assert_ne!(u.normalization(), b.normalization());
    }

    #[test]
    fn an_update_within_the_clip_is_unchanged() {
        let b = base();
        let u = moved(0.001);
        let (c, norm) = clip_delta(&b, &u, 0.5).unwrap();
        assert!(norm < 0.5);
        for (ct, ut) in c.trainable().iter().zip(u.trainable()) {
            assert_eq!(ct.data, ut.data);
        }
        assert_eq!(c.normalization(), b.normalization());
    }

    #[test]
    fn noise_has_mean_zero_and_standard_deviation_sigma_c() {
        let b = base();
        let std = 1.1 * 0.5;
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut noise = Vec::new();
        while noise.len() < 100_000 {
            let w = add_noise(&b, std, &mut rng).unwrap();
            assert_eq!(w.normalization(), b.normalization());
            for (wt, bt) in w.trainable().iter().zip(b.trainable()) {
                noise.extend(
                    wt.data
                        .iter()
                        .zip(&bt.data)
                        .map(|(&x, &y)| f64::from(x) - f64::from(y)),
                );
            }
        }
        let n = noise.len() as f64;
        let mean = noise.iter().sum::<f64>() / n;
        let sd = (noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        assert!((sd / std - 1.0).abs() < 0.02, "sample std {sd}, want {std}");
        let se = std / n.sqrt();
        assert!(mean.abs() < 4.0 * se, "mean {mean}, standard error {se}");
    }

    #[test]
    fn epsilon_matches_hand_computed_values() {
        // R = 10, σ = 1: ρ = 10/2 = 5; ε = 5 + 2√(5·ln 1e5) = 5 + 2√57.5646… = 20.1743…
        assert!((rho(10, 1.0) - 5.0).abs() < 1e-12);
        let want = 5.0 + 2.0 * (5.0 * 100_000f64.ln()).sqrt();
        assert!((epsilon(10, 1.0, 1e-5) - want).abs() < 1e-9);
        assert!((epsilon(10, 1.0, 1e-5) - 20.1743).abs() < 1e-3);
        // R = 1, σ = 2, δ = 1e-6: ρ = 1/8; ε = 0.125 + 2√(0.125·13.8155…) = 2.7533…
        assert!((epsilon(1, 2.0, 1e-6) - 2.75326).abs() < 1e-4);
        assert_eq!(epsilon(0, 1.0, 1e-5), 0.0);
        // More rounds spend more; more noise spends less.
        assert!(epsilon(20, 1.0, 1e-5) > epsilon(10, 1.0, 1e-5));
        assert!(epsilon(10, 2.0, 1e-5) < epsilon(10, 1.0, 1e-5));
    }

    #[test]
    fn strategies_without_a_delta_or_a_mean_are_refused() {
        for mode in [DpMode::Local, DpMode::Central] {
            for s in ["ensemble", "series"] {
                let e = check_strategy(mode, s).unwrap_err();
                assert!(e.to_string().contains(s), "{e}");
            }
            for s in ["fedavg", "fedprox"] {
                check_strategy(mode, s).unwrap();
            }
        }
        for s in ["median", "trimmed-mean", "krum", "multi-krum", "transfer"] {
            check_strategy(DpMode::Local, s).unwrap();
            let e = check_strategy(DpMode::Central, s).unwrap_err();
            assert!(e.to_string().contains("central mode"), "{e}");
        }
    }

    #[test]
    fn central_merge_is_the_unweighted_mean_of_deltas_plus_noise_over_n() {
        let b = base();
        let (u1, _) = clip_delta(&b, &moved(0.3), 0.5).unwrap();
        let (u2, _) = clip_delta(&b, &moved(-0.1), 0.5).unwrap();
        let no_noise = DpSpec {
            noise_multiplier: 0.0,
            ..dp(DpMode::Central)
        };
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let m = central_merge(&no_noise, &b, &[&u1, &u2], &mut rng).unwrap();
        for ((mt, at), ct) in m.trainable().iter().zip(u1.trainable()).zip(u2.trainable()) {
            for k in 0..mt.data.len() {
                let want = (at.data[k] + ct.data[k]) / 2.0;
                assert!((mt.data[k] - want).abs() < 1e-6, "{k}");
            }
        }
        assert_eq!(m.normalization(), b.normalization());
        // With noise: the merge differs from the mean by noise of std σ·C/n.
        let d = dp(DpMode::Central);
        let noisy = central_merge(&d, &b, &[&u1, &u2], &mut rng).unwrap();
        let per_coord = noisy.l2_distance(&m) / (b.numel() as f64 - 6.0).sqrt();
        let want = d.noise_multiplier * d.clip / 2.0;
        assert!(
            per_coord > want * 0.5 && per_coord < want * 1.5,
            "{per_coord} vs {want}"
        );
        assert_eq!(
            central_merge(&d, &b, &[], &mut rng).unwrap_err(),
            DpError::Empty
        );
    }

    #[test]
    fn the_coordinator_check_allows_rounding_but_not_more() {
        let b = base();
        let d = dp(DpMode::Central);
        let (c, _) = clip_delta(&b, &moved(0.3), d.clip).unwrap();
        check_clip(&d, &b, &c).unwrap();
        let norm = check_clip(&d, &b, &moved(0.3)).unwrap_err();
        assert!(norm > d.clip * 1.01, "{norm}");
    }

    #[test]
    fn a_diverged_update_is_an_error_not_a_panic() {
        let b = base();
        let nan = b.map_trainable(|t| vec![f32::NAN; t.data.len()]);
        // Weights refuse non-finite values on construction; a NaN distance is what divergence
        // looks like to the clip when it slips through, so check both shapes of it.
        if let Ok(u) = nan {
            assert!(matches!(clip_delta(&b, &u, 1.0), Err(DpError::Diverged)));
        }
        let huge = b.map_trainable(|t| vec![f32::MAX; t.data.len()]).unwrap();
        match clip_delta(&b, &huge, 1.0) {
            Ok((c, _)) => assert!(delta_norm(&b, &c) <= 1.0 + 1e-6),
            Err(e) => assert!(matches!(e, DpError::Diverged), "{e}"),
        }
    }
}
