//! Every merge strategy in a live federation round over real gRPC: broadcast strategies merge
//! all three plants' updates, relays (Transfer Learning, Series Network) pass the model from
//! plant to plant one step per round, and each published model — single network, ensemble or
//! series — is verified and evaluated by every plant and scores on rows no plant trained on.

use std::collections::HashMap;
use std::time::Duration;

use shared_model::blob::BlobRole;
use shared_model::model::Model;
use shared_model::network::CpuBackend;
use shared_model::strategy::{NAMES, StrategyConfig};
use yosegi_tests::sandbox::{Sandbox, wdbc_split};

fn options(strategy: &str) -> HashMap<String, String> {
    let pairs: &[(&str, &str)] = match strategy {
        // Three plants: Krum needs n > 2f + 2, so f = 0; the trimmed mean drops one each end.
        "krum" => &[("f", "0")],
        "multi-krum" => &[("f", "0"), ("m", "2")],
        "trimmed-mean" => &[("beta", "0.34")],
        "fedprox" => &[("mu", "0.05")],
        "transfer" => &[("freeze", "1"), ("lr_scale", "0.5")],
        "median" => &[("norm_bound", "50")],
        _ => &[],
    };
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_strategy_runs_live_and_its_model_evaluates_at_every_plant() {
    let mut sb = Sandbox::start().await;
    let (spec, holdout, slices) = wdbc_split(3);
    let mut op = sb.operator().await;
    let names = ["plant-a", "plant-b", "plant-c"];
    let files = sb.enroll_and_start(&mut op, &names, &spec, &slices).await;
    let spec_text = spec.to_toml();
    for strategy in NAMES {
        let task = format!("wdbc-{strategy}");
        op.create_task(&task, &spec_text, &[]).await.unwrap();
        let opts = options(strategy);
        let cfg = StrategyConfig::parse(strategy, &opts.clone().into_iter().collect()).unwrap();
        // Two rounds of a broadcast strategy; one relay (one round per plant) of a relay.
        let (count, expected) = if cfg.is_relay() { (1, 3) } else { (2, 2) };
        op.start_round(&task, strategy, opts, 3, 120_000, count)
            .await
            .unwrap();
        let rounds = sb
            .wait_for(&task, Duration::from_secs(240), |rs| {
                rs.len() == expected && rs.iter().all(|r| r.is_final())
            })
            .await;
        for r in &rounds {
            assert_eq!(r.phase, "published", "{strategy}: {r:?}");
            let accepted: Vec<&str> = r
                .parties
                .iter()
                .filter(|p| p.state == "accepted")
                .map(|p| p.party.as_str())
                .collect();
            if cfg.is_relay() {
                // Plants take turns in name order.
                assert_eq!(
                    accepted,
                    [names[(r.round - 1) as usize]],
                    "{strategy}: {r:?}"
                );
            } else {
                assert_eq!(accepted.len(), 3, "{strategy}: {r:?}");
            }
        }
        let last = rounds.last().unwrap().version;

        let (manifest, bytes, _) = op.pull(&task, 0, &sb.coordinator_key).await.unwrap();
        assert_eq!(manifest.version.0, last);
        assert_eq!(manifest.strategy, *strategy);
        let model = Model::decode(&bytes, &spec, BlobRole::Merged).unwrap();
        let kind = match *strategy {
            "ensemble" => "ensemble",
            "series" => "series",
            _ => "single",
        };
        assert_eq!(model.kind(), kind, "{strategy}");
        match &model {
            Model::Ensemble(m) => assert_eq!(m.len(), 3),
            Model::Series(s) => assert_eq!(s.len(), 3, "one stage per plant"),
            Model::Single(_) => {}
        }
        let m = model.evaluate(&spec, &holdout, CpuBackend::default());
        let f1 = m.binary().unwrap().f1;
        assert!(f1 >= 0.85, "{strategy}: F1 {f1} on held-back rows: {m:?}");

        // Every plant verified and evaluated the last published model.
        sb.wait_for(&task, Duration::from_secs(60), |rs| {
            rs.last().is_some_and(|r| r.metrics.is_some())
                && files.iter().all(|f| {
                    std::fs::read_to_string(f.state_dir.join("state.json"))
                        .ok()
                        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                        .is_some_and(|v| v["accepted"][task.as_str()] == last)
                })
        })
        .await;
    }
    let store = coordinator::store::Store::open(&sb.data_dir.join(coordinator::state::DB)).unwrap();
    for strategy in NAMES {
        let task = format!("wdbc-{strategy}");
        let last = store.model(&task, None).unwrap().unwrap().version;
        assert_eq!(
            store.evaluations(&task, last.0).unwrap().len(),
            3,
            "{strategy}: every plant reported its evaluation"
        );
    }
    drop(store);
    sb.stop().await;
}
