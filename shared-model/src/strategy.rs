//! Merge strategies, selectable per round by name and options — pure functions of the parties'
//! models, with no I/O. The coordinator's engine and the offline experiment simulator call the
//! same code. Definitions (ours; see docs/STRATEGIES.md):
//!
//! - `fedavg`: sample-weighted parameter mean. `fedprox`: the same merge, parties add
//!   μ/2·‖w − w_base‖² to their local loss (option `mu`).
//! - `ensemble` (Average Ensemble): no parameter mixing; the model is the set of party models and
//!   predicts the sample-weighted mean of their outputs.
//! - `transfer` (Transfer Learning): a relay; each party fine-tunes the previous party's model;
//!   the last one is the result. Options: `order` (`fixed` by name, or `random` with `seed`),
//!   `passes` (cyclic weight transfer), `freeze` (layers kept fixed after the first party),
//!   `lr_scale` (learning-rate factor for fine-tuning).
//! - `series` (Series Network): a relay building a cascade; stage j is trained at party j on the
//!   features plus stage j−1's output, earlier stages frozen.
//! - `median` (coordinate-wise), `trimmed-mean` (option `beta`, the fraction trimmed at each
//!   end), `krum` / `multi-krum` (option `f` faulty parties assumed; multi-krum averages the
//!   `m` best-scored updates).
//! - Every broadcast strategy takes `norm_bound`: each update's distance from the network it
//!   started from (the base model, or the party's own ensemble member) is clipped to at most that
//!   L2 norm before merging. An ensemble member trained from scratch has no such reference and
//!   is not clipped.

use std::collections::BTreeMap;
use std::fmt;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::aggregate::{AggregateError, FedAvg};
use crate::data::Dataset;
use crate::model::{Member, Model, stage_dataset, stage_spec, stage_start};
use crate::spec::ModelSpec;
use crate::train::{TrainError, TrainOptions, train_observed};
use crate::weights::Weights;

mod local;
mod merge;
pub use local::{LocalUpdate, local_update, local_update_observed, relay_step};
use merge::{check_normalization, coordinate_wise, krum, median, trimmed_mean};
pub use merge::{clip, ensemble, fedavg};

/// Every strategy name a round may use.
pub const NAMES: &[&str] = &[
    "fedavg",
    "fedprox",
    "ensemble",
    "transfer",
    "series",
    "median",
    "trimmed-mean",
    "krum",
    "multi-krum",
];

/// The order of a relay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RelayOrder {
    /// By party name.
    Fixed,
    /// A permutation drawn from a seed (the same seed gives the same order).
    Random {
        /// The seed.
        seed: u64,
    },
}

/// A strategy with its options.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// Sample-weighted parameter averaging.
    FedAvg,
    /// FedAvg with a proximal term in each party's loss.
    FedProx {
        /// μ.
        mu: f64,
    },
    /// Average Ensemble.
    Ensemble,
    /// Transfer Learning relay.
    Transfer {
        /// Party order.
        order: RelayOrder,
        /// Times around the parties.
        passes: u32,
        /// Layers (input side first) frozen after the first party.
        freeze: usize,
        /// Learning-rate factor for every party after the first.
        lr_scale: f64,
    },
    /// Series Network relay.
    Series {
        /// Party order.
        order: RelayOrder,
    },
    /// Coordinate-wise median.
    Median,
    /// Coordinate-wise trimmed mean.
    TrimmedMean {
        /// Fraction trimmed at each end, in [0, 0.5).
        beta: f64,
    },
    /// Krum (m = 1) or Multi-Krum (m > 1).
    Krum {
        /// Faulty parties assumed.
        f: usize,
        /// Updates kept and averaged.
        m: usize,
    },
}

/// Options that suit `strategy` for `n` parties when the operator gives none, as the demo and
/// the experiment simulator use them: FedProx μ = 0.01; the trimmed mean drops one party at each
/// end; Krum assumes the most faulty parties n > 2f + 2 allows (at least 0) and Multi-Krum keeps
/// all but f. Everything else runs with its defaults.
pub fn options_for(strategy: &str, n: usize) -> BTreeMap<String, String> {
    let f = n.saturating_sub(3) / 2;
    let pairs: Vec<(&str, String)> = match strategy {
        "fedprox" => vec![("mu", "0.01".into())],
        "trimmed-mean" => vec![(
            "beta",
            format!("{:.3}", (1.0 / n.max(1) as f64 + 0.001).min(0.49)),
        )],
        "krum" => vec![("f", f.to_string())],
        "multi-krum" => vec![("f", f.to_string()), ("m", (n - f).max(1).to_string())],
        _ => vec![],
    };
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Whether `strategy` can merge `n` parties' updates (Krum needs at least 3).
pub fn runs_with(strategy: &str, n: usize) -> bool {
    n >= 3 || !strategy.contains("krum")
}

/// A strategy and the options that apply to every strategy.
#[derive(Clone, Debug, PartialEq)]
pub struct StrategyConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// Optional clip of each update's distance from the base model.
    pub norm_bound: Option<f64>,
    /// The name it was chosen by (`krum` and `multi-krum` share a variant).
    pub name: String,
}

/// A bad strategy name or option, naming it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StrategyError {
    /// Unknown name.
    #[error("unknown strategy {0:?}; known: {names}", names = NAMES.join(", "))]
    Unknown(String),
    /// Option not known to this strategy.
    #[error("strategy {strategy} has no option {option:?}; it takes: {allowed}")]
    UnknownOption {
        /// Strategy.
        strategy: String,
        /// The option.
        option: String,
        /// What it takes.
        allowed: String,
    },
    /// Bad option value.
    #[error("strategy {strategy}: option {option} must be {expected}, found {found:?}")]
    BadValue {
        /// Strategy.
        strategy: String,
        /// The option.
        option: String,
        /// What is allowed.
        expected: String,
        /// What was given.
        found: String,
    },
}

/// One party's model as a strategy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Contribution<'a> {
    /// The party.
    pub party: &'a str,
    /// Its trained model.
    pub weights: &'a Weights,
    /// Rows it trained on (> 0).
    pub samples: u64,
}

impl fmt::Display for StrategyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        let opts = self.options();
        if !opts.is_empty() {
            let list: Vec<String> = opts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, " ({})", list.join(", "))?;
        }
        Ok(())
    }
}

fn allowed(name: &str) -> &'static [&'static str] {
    match name {
        "fedavg" | "median" | "ensemble" => &["norm_bound"],
        "fedprox" => &["mu", "norm_bound"],
        "transfer" => &["order", "seed", "passes", "freeze", "lr_scale"],
        "series" => &["order", "seed"],
        "trimmed-mean" => &["beta", "norm_bound"],
        "krum" => &["f", "norm_bound"],
        "multi-krum" => &["f", "m", "norm_bound"],
        _ => &[],
    }
}

impl StrategyConfig {
    /// Parses a name and `key=value` options, checking every option.
    pub fn parse(name: &str, options: &BTreeMap<String, String>) -> Result<Self, StrategyError> {
        if !NAMES.contains(&name) {
            return Err(StrategyError::Unknown(name.to_string()));
        }
        let ok = allowed(name);
        for k in options.keys() {
            if !ok.contains(&k.as_str()) {
                return Err(StrategyError::UnknownOption {
                    strategy: name.into(),
                    option: k.clone(),
                    allowed: if ok.is_empty() {
                        "no options".into()
                    } else {
                        ok.join(", ")
                    },
                });
            }
        }
        let bad = |option: &str, expected: &str| StrategyError::BadValue {
            strategy: name.into(),
            option: option.into(),
            expected: expected.into(),
            found: options.get(option).cloned().unwrap_or_default(),
        };
        let num =
            |option: &str, default: f64, ok: &dyn Fn(f64) -> bool, expected: &str| match options
                .get(option)
            {
                None => Ok(default),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && ok(*x))
                    .ok_or_else(|| bad(option, expected)),
            };
        let int = |option: &str, default: u64, min: u64, max: u64| match options.get(option) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|x| (min..=max).contains(x))
                .ok_or_else(|| bad(option, &format!("an integer from {min} to {max}"))),
        };
        let order = || -> Result<RelayOrder, StrategyError> {
            match options.get("order").map(String::as_str) {
                None | Some("fixed") => {
                    if options.contains_key("seed") {
                        return Err(bad("seed", "given only with order=random"));
                    }
                    Ok(RelayOrder::Fixed)
                }
                Some("random") => Ok(RelayOrder::Random {
                    seed: int("seed", 0, 0, u64::MAX)?,
                }),
                Some(_) => Err(bad("order", "fixed or random")),
            }
        };
        let strategy = match name {
            "fedavg" => Strategy::FedAvg,
            "fedprox" => Strategy::FedProx {
                mu: num("mu", 0.01, &|x| x > 0.0, "a number > 0")?,
            },
            "ensemble" => Strategy::Ensemble,
            "transfer" => Strategy::Transfer {
                order: order()?,
                passes: int("passes", 1, 1, 100)? as u32,
                freeze: int("freeze", 0, 0, 64)? as usize,
                lr_scale: num(
                    "lr_scale",
                    1.0,
                    &|x| x > 0.0 && x <= 10.0,
                    "a number in (0, 10]",
                )?,
            },
            "series" => Strategy::Series { order: order()? },
            "median" => Strategy::Median,
            "trimmed-mean" => Strategy::TrimmedMean {
                beta: num(
                    "beta",
                    0.2,
                    &|x| (0.0..0.5).contains(&x),
                    "a number in [0, 0.5)",
                )?,
            },
            "krum" => Strategy::Krum {
                f: int("f", 1, 0, 1000)? as usize,
                m: 1,
            },
            "multi-krum" => Strategy::Krum {
                f: int("f", 1, 0, 1000)? as usize,
                m: int("m", 2, 1, 1000)? as usize,
            },
            _ => unreachable!("checked against NAMES"),
        };
        let norm_bound = match options.get("norm_bound") {
            None => None,
            Some(_) => Some(num("norm_bound", 0.0, &|x| x > 0.0, "a number > 0")?),
        };
        Ok(Self {
            strategy,
            norm_bound,
            name: name.to_string(),
        })
    }

    /// The options spelled out with their defaults, as stored with a round.
    pub fn options(&self) -> BTreeMap<String, String> {
        let mut o = BTreeMap::new();
        let order = |o: &mut BTreeMap<String, String>, order: &RelayOrder| match order {
            RelayOrder::Fixed => {
                o.insert("order".into(), "fixed".into());
            }
            RelayOrder::Random { seed } => {
                o.insert("order".into(), "random".into());
                o.insert("seed".into(), seed.to_string());
            }
        };
        match &self.strategy {
            Strategy::FedAvg | Strategy::Ensemble | Strategy::Median => {}
            Strategy::FedProx { mu } => {
                o.insert("mu".into(), mu.to_string());
            }
            Strategy::Transfer {
                order: ord,
                passes,
                freeze,
                lr_scale,
            } => {
                order(&mut o, ord);
                o.insert("passes".into(), passes.to_string());
                o.insert("freeze".into(), freeze.to_string());
                o.insert("lr_scale".into(), lr_scale.to_string());
            }
            Strategy::Series { order: ord } => order(&mut o, ord),
            Strategy::TrimmedMean { beta } => {
                o.insert("beta".into(), beta.to_string());
            }
            Strategy::Krum { f, m } => {
                o.insert("f".into(), f.to_string());
                if self.name == "multi-krum" {
                    o.insert("m".into(), m.to_string());
                }
            }
        }
        if let Some(b) = self.norm_bound {
            o.insert("norm_bound".into(), b.to_string());
        }
        o
    }

    /// The series stage an update of a round starting from `base` must be: the number of stages
    /// already in the chain for `series`, 0 (a whole network) otherwise.
    pub fn expected_stage(&self, base: &Model) -> usize {
        match (&self.strategy, base) {
            (Strategy::Series { .. }, Model::Series(stages)) => stages.len(),
            _ => 0,
        }
    }

    /// Whether the round is a relay (one party at a time, each building on the previous).
    pub fn is_relay(&self) -> bool {
        matches!(
            self.strategy,
            Strategy::Transfer { .. } | Strategy::Series { .. }
        )
    }

    /// The parties of a relay, in the order they train (`parties` sorted by name first).
    pub fn relay_order(&self, parties: &[String]) -> Vec<String> {
        let mut base: Vec<String> = parties.to_vec();
        base.sort();
        let (order, passes) = match &self.strategy {
            Strategy::Transfer { order, passes, .. } => (*order, *passes),
            Strategy::Series { order } => (*order, 1),
            _ => return base,
        };
        if let RelayOrder::Random { seed } = order {
            base.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        let mut out = Vec::with_capacity(base.len() * passes as usize);
        for _ in 0..passes {
            out.extend(base.iter().cloned());
        }
        out
    }

    /// FedProx μ to use in local training, if any.
    pub fn fedprox_mu(&self) -> Option<f64> {
        match self.strategy {
            Strategy::FedProx { mu } => Some(mu),
            _ => None,
        }
    }

    /// Merges one broadcast round's contributions into the published model. `base` is the
    /// model the round started from (the reference of `norm_bound`). Relays merge one step at a
    /// time with [`relay_step`] instead.
    pub fn merge(
        &self,
        base: &Model,
        contributions: &[Contribution<'_>],
    ) -> Result<Model, AggregateError> {
        if contributions.is_empty() {
            return Err(AggregateError::Empty);
        }
        let clipped: Vec<Weights>;
        let contributions: Vec<Contribution<'_>> = match self.norm_bound {
            Some(bound) => {
                clipped = contributions
                    .iter()
                    .map(|c| match base.start_for(c.party) {
                        Some(b) => clip(b, c.weights, bound),
                        None => Ok(c.weights.clone()),
                    })
                    .collect::<Result<_, _>>()?;
                contributions
                    .iter()
                    .zip(&clipped)
                    .map(|(c, w)| Contribution { weights: w, ..*c })
                    .collect()
            }
            None => contributions.to_vec(),
        };
        let contributions = &contributions[..];
        match &self.strategy {
            Strategy::FedAvg | Strategy::FedProx { .. } => {
                Ok(Model::Single(fedavg(contributions)?))
            }
            Strategy::Ensemble => {
                check_normalization(contributions)?;
                Ok(ensemble(contributions))
            }
            Strategy::Median => Ok(Model::Single(coordinate_wise(contributions, median)?)),
            Strategy::TrimmedMean { beta } => {
                let beta = *beta;
                Ok(Model::Single(coordinate_wise(contributions, |v| {
                    trimmed_mean(v, beta)
                })?))
            }
            Strategy::Krum { f, m } => Ok(Model::Single(krum(contributions, *f, *m)?)),
            Strategy::Transfer { .. } | Strategy::Series { .. } => Err(AggregateError::Unsuitable(
                format!("{} is a relay; it merges one step at a time", self.name),
            )),
        }
    }
}

impl StrategyConfig {
    /// The local-training settings this strategy asks of the party at relay step `step` (0 for
    /// broadcast rounds), starting from the spec's: FedProx's μ; Transfer Learning's frozen
    /// layers and learning-rate factor after the first party.
    pub fn train_options(&self, spec: &ModelSpec, step: usize, seed: u64) -> TrainOptions {
        let mut o = TrainOptions::from_spec(spec, seed);
        match &self.strategy {
            Strategy::FedProx { mu } => o.fedprox_mu = Some(*mu),
            Strategy::Transfer {
                freeze, lr_scale, ..
            } if step > 0 => {
                o.frozen_layers = *freeze;
                o.learning_rate *= lr_scale;
            }
            // Otherwise the spec's own settings (including a spec-level μ) apply unchanged.
            _ => {}
        }
        o
    }

    /// The fewest updates this strategy can merge (Krum needs n > 2f + 2; Multi-Krum also
    /// n ≥ m + f).
    pub fn min_updates(&self) -> usize {
        match self.strategy {
            Strategy::Krum { f, m } => (2 * f + 3).max(m + f),
            _ => 1,
        }
    }

    /// Checks the options against the task's network: Transfer Learning must leave at least
    /// one layer trainable.
    pub fn check_for(&self, spec: &ModelSpec) -> Result<(), StrategyError> {
        let layers = spec.model.hidden.len() + 1;
        if let Strategy::Transfer { freeze, .. } = self.strategy
            && freeze >= layers
        {
            return Err(StrategyError::BadValue {
                strategy: self.name.clone(),
                option: "freeze".into(),
                expected: format!("below the network's {layers} layers"),
                found: freeze.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::CpuBackend;
    use crate::spec::tests::SMALL;
    use crate::stats::Normalization;
    use crate::train::train;
    use proptest::prelude::*;

    fn spec() -> ModelSpec {
        ModelSpec::parse(SMALL, "<t>").unwrap()
    }

    fn model(values: &[f32]) -> Weights {
        let w = Weights::initial(&spec(), &Normalization::identity(3));
        let mut it = values.iter().cycle();
        w.map_trainable(|t| t.data.iter().map(|_| *it.next().unwrap()).collect())
            .unwrap()
    }

    fn cfg(name: &str, opts: &[(&str, &str)]) -> StrategyConfig {
        let o = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        StrategyConfig::parse(name, &o).unwrap()
    }

    fn contribs<'a>(names: &'a [String], ws: &'a [Weights]) -> Vec<Contribution<'a>> {
        names
            .iter()
            .zip(ws)
            .enumerate()
            .map(|(i, (p, w))| Contribution {
                party: p,
                weights: w,
                samples: 10 + i as u64,
            })
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("plant-{i}")).collect()
    }

    fn single(m: Model) -> Weights {
        match m {
            Model::Single(w) => w,
            other => panic!("expected a single network, got {}", other.kind()),
        }
    }

    #[test]
    fn options_are_checked_and_named() {
        let o = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(matches!(
            StrategyConfig::parse("fedsgd", &BTreeMap::new()),
            Err(StrategyError::Unknown(_))
        ));
        let e = StrategyConfig::parse("median", &o("beta", "0.1")).unwrap_err();
        assert!(e.to_string().contains("no option \"beta\""), "{e}");
        let e = StrategyConfig::parse("trimmed-mean", &o("beta", "0.5")).unwrap_err();
        assert!(e.to_string().contains("[0, 0.5)"), "{e}");
        let e = StrategyConfig::parse("transfer", &o("order", "sideways")).unwrap_err();
        assert!(e.to_string().contains("fixed or random"), "{e}");
        let c = cfg(
            "transfer",
            &[("passes", "2"), ("order", "random"), ("seed", "7")],
        );
        assert_eq!(
            c.to_string(),
            "transfer (freeze=0, lr_scale=1, order=random, passes=2, seed=7)"
        );
        // Options round-trip through their stored form.
        assert_eq!(StrategyConfig::parse("transfer", &c.options()).unwrap(), c);
        for name in NAMES {
            let c = cfg(name, &[]);
            assert_eq!(&StrategyConfig::parse(name, &c.options()).unwrap(), &c);
        }
    }

    #[test]
    fn every_averaging_strategy_of_identical_models_is_that_model() {
        let w = model(&[0.3, -1.7, 2.5e-3]);
        let ws = vec![w.clone(); 5];
        let n = names(5);
        let base = Model::Single(model(&[0.0]));
        for name in [
            "fedavg",
            "fedprox",
            "median",
            "trimmed-mean",
            "krum",
            "multi-krum",
        ] {
            let got = single(cfg(name, &[]).merge(&base, &contribs(&n, &ws)).unwrap());
            assert!(got.max_abs_diff(&w) <= 1e-6, "{name}");
        }
    }

    #[test]
    fn robust_merges_ignore_one_wild_update_among_five() {
        let honest: Vec<Weights> = [0.9f32, 1.0, 1.1, 0.95]
            .iter()
            .map(|v| model(&[*v]))
            .collect();
        let mut ws = honest.clone();
        ws.insert(2, model(&[-1000.0])); // scaled and sign-flipped
        let n = names(5);
        let base = Model::Single(model(&[0.0]));
        let truth = fedavg(&contribs(&n[..4], &honest)).unwrap();
        let avg = single(cfg("fedavg", &[]).merge(&base, &contribs(&n, &ws)).unwrap());
        assert!(avg.max_abs_diff(&truth) > 100.0, "fedavg is pulled away");
        for (name, opts) in [
            ("median", vec![]),
            ("trimmed-mean", vec![("beta", "0.2")]),
            ("krum", vec![("f", "1")]),
            ("multi-krum", vec![("f", "1"), ("m", "3")]),
        ] {
            let got = single(cfg(name, &opts).merge(&base, &contribs(&n, &ws)).unwrap());
            assert!(
                got.max_abs_diff(&truth) < 0.15,
                "{name}: {}",
                got.max_abs_diff(&truth)
            );
        }
        // A norm bound tames even FedAvg.
        let bounded = single(
            cfg("fedavg", &[("norm_bound", "2")])
                .merge(&base, &contribs(&n, &ws))
                .unwrap(),
        );
        assert!(bounded.max_abs_diff(&truth) < 1.5);
    }

    #[test]
    fn hand_computed_median_trimmed_mean_and_clip() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(trimmed_mean(&mut [100.0, 1.0, 2.0, 3.0, -50.0], 0.2), 2.0);
        assert_eq!(
            trimmed_mean(&mut [1.0, 2.0], 0.4),
            1.5,
            "never trims everything"
        );
        let base = model(&[0.0]);
        let far = model(&[1.0]);
        let d = base.l2_distance(&far);
        let c = clip(&base, &far, d / 2.0).unwrap();
        assert!((base.l2_distance(&c) - d / 2.0).abs() < 1e-4);
        assert_eq!(clip(&base, &far, d * 2.0).unwrap(), far);
    }

    #[test]
    fn krum_refuses_too_few_updates() {
        let ws = vec![model(&[1.0]); 4];
        let n = names(4);
        let e = cfg("krum", &[("f", "1")])
            .merge(&Model::Single(model(&[0.0])), &contribs(&n, &ws))
            .unwrap_err();
        assert!(e.to_string().contains("more than 4 updates"), "{e}");
    }

    #[test]
    fn ensemble_keeps_every_member_and_one_member_equals_it() {
        let ws: Vec<Weights> = [0.1f32, 0.2].iter().map(|v| model(&[*v])).collect();
        let n = names(2);
        let m = cfg("ensemble", &[])
            .merge(&Model::Single(model(&[0.0])), &contribs(&n, &ws))
            .unwrap();
        let Model::Ensemble(members) = &m else {
            panic!("not an ensemble")
        };
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].weights, ws[1]);
        assert_eq!(members[1].weight, 11.0);
        let one = ensemble(&contribs(&n[..1], &ws[..1]));
        let rows = [0.3f32, 0.1, -2.0];
        let a = one.predict(&spec(), &rows, CpuBackend::default());
        let b = crate::network::predict(&spec(), &ws[0], &rows, CpuBackend::default());
        assert!((a[0] - b[0]).abs() < 1e-6);
    }

    #[test]
    fn relay_orders_and_steps() {
        let parties = vec!["c".to_string(), "a".into(), "b".into()];
        assert_eq!(cfg("transfer", &[]).relay_order(&parties), ["a", "b", "c"]);
        assert_eq!(
            cfg("transfer", &[("passes", "2")]).relay_order(&parties),
            ["a", "b", "c", "a", "b", "c"]
        );
        let r1 = cfg("series", &[("order", "random"), ("seed", "3")]).relay_order(&parties);
        let r2 = cfg("series", &[("order", "random"), ("seed", "3")]).relay_order(&parties);
        assert_eq!(r1, r2, "a seed fixes the order");
        let mut sorted = r1.clone();
        sorted.sort();
        assert_eq!(sorted, ["a", "b", "c"]);
        let w = model(&[0.5]);
        let s = cfg("series", &[]).strategy;
        let one = relay_step(&s, &Model::Single(model(&[0.0])), &w);
        assert_eq!(one, Model::Series(vec![w.clone()]));
        let two = relay_step(&s, &one, &w);
        assert_eq!(two, Model::Series(vec![w.clone(), w.clone()]));
        let t = cfg("transfer", &[]).strategy;
        assert_eq!(relay_step(&t, &two, &w), Model::Single(w));
    }

    fn toy_data(n: usize, shift: f32) -> Dataset {
        let mut features = Vec::new();
        let mut targets = Vec::new();
        for i in 0..n {
            let a = (i as f32 * 0.37).sin() + shift;
            let b = (i as f32 * 0.11).cos();
            features.extend([a, b, a * b]);
            targets.push(if a + 0.5 * b > shift { 1.0 } else { 0.0 });
        }
        Dataset {
            width: 3,
            features,
            targets,
        }
    }

    #[test]
    fn a_series_of_one_stage_is_plain_training_and_later_stages_see_the_chain() {
        let spec = spec();
        let initial = Weights::initial(&spec, &Normalization::identity(3));
        let data = toy_data(40, 0.0);
        let opts = TrainOptions::from_spec(&spec, 5);
        let plain = train(&spec, &initial, &data, &opts).unwrap();
        let first =
            local_update(&spec, "series", "a", &Model::Single(initial), &data, &opts).unwrap();
        assert_eq!(first.stage, 0);
        assert_eq!(first.weights, plain.weights);
        assert_eq!(first.result, Model::Series(vec![plain.weights.clone()]));
        let second = local_update(
            &spec,
            "series",
            "b",
            &first.result,
            &toy_data(40, 0.3),
            &opts,
        )
        .unwrap();
        assert_eq!(second.stage, 1);
        assert_eq!(
            second.weights.tensors()[0].shape,
            vec![4],
            "features + one output"
        );
        let Model::Series(stages) = &second.result else {
            panic!("a series")
        };
        assert_eq!(stages.len(), 2);
        assert_eq!(stages[0], plain.weights, "earlier stages are frozen");
    }

    #[test]
    fn ensemble_parties_continue_their_own_member_and_transfer_fine_tunes() {
        let spec = spec();
        let initial = Weights::initial(&spec, &Normalization::identity(3));
        let mine = model(&[0.05]);
        let base = Model::Ensemble(vec![Member {
            party: "a".into(),
            weight: 1.0,
            weights: mine.clone(),
        }]);
        let mut opts = TrainOptions::from_spec(&spec, 5);
        opts.epochs = 1;
        let data = toy_data(16, 0.0);
        let a = local_update(&spec, "ensemble", "a", &base, &data, &opts).unwrap();
        assert_eq!(
            a.weights,
            train(&spec, &mine, &data, &opts).unwrap().weights
        );
        let b = local_update(&spec, "ensemble", "b", &base, &data, &opts).unwrap();
        assert_eq!(
            b.weights,
            train(&spec, &initial, &data, &opts).unwrap().weights
        );
        let t = cfg("transfer", &[("freeze", "1"), ("lr_scale", "0.5")]);
        let o0 = t.train_options(&spec, 0, 1);
        let o1 = t.train_options(&spec, 1, 1);
        assert_eq!((o0.frozen_layers, o0.learning_rate), (0, 0.01));
        assert_eq!((o1.frozen_layers, o1.learning_rate), (1, 0.005));
        let tuned = local_update(
            &spec,
            "transfer",
            "b",
            &Model::Single(mine.clone()),
            &data,
            &o1,
        )
        .unwrap();
        assert_eq!(
            tuned.weights.trainable()[..2],
            mine.trainable()[..2],
            "the frozen first layer is unchanged"
        );
        assert_ne!(tuned.weights, mine);
        assert_eq!(
            cfg("fedprox", &[("mu", "0.1")])
                .train_options(&spec, 0, 1)
                .fedprox_mu,
            Some(0.1)
        );
        assert_eq!(
            cfg("fedavg", &[]).train_options(&spec, 0, 1).fedprox_mu,
            None
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Broadcast merges do not depend on the order updates arrive in.
        #[test]
        fn merge_results_do_not_depend_on_update_order(
            vals in prop::collection::vec(-10.0f32..10.0, 5..8),
            rot in 0usize..8,
        ) {
            let ws: Vec<Weights> = vals.iter().map(|v| model(&[*v, -*v, *v * 0.5])).collect();
            let n = names(ws.len());
            let a = contribs(&n, &ws);
            let mut b = a.clone();
            b.rotate_left(rot % a.len());
            b.reverse();
            let base = Model::Single(model(&[0.0]));
            for name in ["fedavg", "median", "trimmed-mean", "krum", "multi-krum", "ensemble"] {
                let c = cfg(name, &[]);
                let x = c.merge(&base, &a).unwrap();
                let y = c.merge(&base, &b).unwrap();
                match (x, y) {
                    (Model::Single(x), Model::Single(y)) => prop_assert!(x.max_abs_diff(&y) <= 1e-5, "{}", name),
                    (x, y) => prop_assert_eq!(x, y),
                }
            }
        }
    }
}
