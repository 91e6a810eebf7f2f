//! Differential privacy in live rounds (`[privacy.dp]`, docs/PRIVACY.md): the plants clip their
//! updates (and in local mode noise them) before signing, the coordinator checks the clip and
//! adds the noise in central mode, and `round status` reports the (ε, δ) spent so far.

use std::collections::HashMap;
use std::time::Duration;

use coordinator::blobs::BlobStore;
use coordinator::store::Store;
use shared_model::blob::{self, BlobRole};
use shared_model::dp;
use shared_model::model::Model;
use shared_model::spec::ModelSpec;
use shared_model::weights::Weights;
use yosegi_tests::sandbox::{Sandbox, wdbc_split};

/// data/wdbc.toml with a `[privacy.dp]` section.
fn dp_spec(mode: &str, clip: f64, sigma: f64) -> String {
    let base = std::fs::read_to_string(yosegi_tests::data("wdbc.toml")).unwrap();
    format!(
        "{base}\n[privacy.dp]\nmode = \"{mode}\"\nclip = {clip:?}\nnoise_multiplier = {sigma:?}\ndelta = 1e-5\n"
    )
}

/// The L2 norms of the accepted updates of `round` from the round's base model.
fn update_norms(sb: &Sandbox, task: &str, spec: &ModelSpec, round: u64) -> Vec<f64> {
    let store = Store::open(&sb.data_dir.join(coordinator::state::DB)).unwrap();
    let blobs = BlobStore::open(&sb.data_dir.join("blobs")).unwrap();
    let r = store
        .rounds(task)
        .unwrap()
        .into_iter()
        .find(|r| r.round.0 == round)
        .unwrap();
    let row = store
        .model(task, r.base_version.map(|v| v.0))
        .unwrap()
        .unwrap();
    let role = if row.version.0 == 0 {
        BlobRole::Initial
    } else {
        BlobRole::Merged
    };
    let base_bytes = blobs.get(&row.blob_sha256).unwrap();
    let Model::Single(base) = Model::decode(&base_bytes, spec, role).unwrap() else {
        panic!("a DP task's model is a single network");
    };
    store
        .updates(task, round)
        .unwrap()
        .iter()
        .map(|u| {
            let bytes = blobs.get(&u.blob_sha256).unwrap();
            let w: Weights = blob::decode(&bytes, spec, BlobRole::Update).unwrap();
            dp::delta_norm(&base, &w)
        })
        .collect()
}

/// Three plants, two tasks on WDBC: central DP with FedAvg and local DP with the coordinate-wise
/// median, two rounds each. Both publish; central uploads are within the clip, local ones carry
/// their noise; each published round reports ε = `dp::epsilon(rounds so far, σ, δ)`. An
/// ensemble round on a DP task is refused at start, naming the task and the strategy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dp_rounds_publish_clip_noise_and_report_epsilon() {
    let mut sb = Sandbox::start().await;
    let (spec, _holdout, slices) = wdbc_split(3);
    let mut op = sb.operator().await;
    let names = ["plant-a", "plant-b", "plant-c"];
    sb.enroll_and_start(&mut op, &names, &spec, &slices).await;

    let (clip, central_sigma, local_sigma) = (1.0, 0.8, 0.1);
    let central_text = dp_spec("central", clip, central_sigma);
    let local_text = dp_spec("local", clip, local_sigma);
    op.create_task("wdbc-central", &central_text, &[])
        .await
        .unwrap();
    op.create_task("wdbc-local", &local_text, &[])
        .await
        .unwrap();

    let e = op
        .start_round("wdbc-central", "ensemble", HashMap::new(), 3, 120_000, 1)
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("wdbc-central") && msg.contains("ensemble") && msg.contains("privacy"),
        "{msg}"
    );
    let e = op
        .start_round("wdbc-central", "median", HashMap::new(), 3, 120_000, 1)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("central mode"), "{e:#}");

    op.start_round("wdbc-central", "fedavg", HashMap::new(), 3, 120_000, 2)
        .await
        .unwrap();
    op.start_round("wdbc-local", "median", HashMap::new(), 3, 120_000, 2)
        .await
        .unwrap();

    for (task, text, sigma) in [
        ("wdbc-central", &central_text, central_sigma),
        ("wdbc-local", &local_text, local_sigma),
    ] {
        let spec = ModelSpec::parse(text, task).unwrap();
        let rounds = sb
            .wait_for(task, Duration::from_secs(240), |rs| {
                rs.len() == 2 && rs.iter().all(|r| r.is_final())
            })
            .await;
        for r in &rounds {
            assert_eq!(r.phase, "published", "{task}: {r:?}");
            let spent = r.dp.expect("a published DP round reports its privacy");
            assert_eq!(spent.rounds, r.round, "{task}: {r:?}");
            assert_eq!(spent.delta, 1e-5);
            let want = dp::epsilon(r.round, sigma, 1e-5);
            assert!(
                (spent.epsilon - want).abs() < 1e-9,
                "{task} round {}: ε {} reported, {want} expected",
                r.round,
                spent.epsilon
            );
            let norms = update_norms(&sb, task, &spec, r.round);
            assert_eq!(norms.len(), 3, "{task}: {norms:?}");
            if task == "wdbc-central" {
                // Clipped by the plants, checked by the coordinator.
                assert!(
                    norms
                        .iter()
                        .all(|&n| n <= clip * (1.0 + dp::CLIP_TOLERANCE)),
                    "{norms:?}"
                );
            } else {
                // 641 trainable values with noise of std σ·C = 0.1: a noise norm of about 2.5
                // on top of a delta of at most C.
                assert!(norms.iter().all(|&n| n > 1.5 * clip), "{norms:?}");
            }
        }
        // The second round spends more than the first.
        assert!(rounds[1].dp.unwrap().epsilon > rounds[0].dp.unwrap().epsilon);
    }
    sb.stop().await;
}

/// `coordinator experiment` runs the same DP step: with a central-mode spec FedAvg still learns
/// under light noise and is ruined by heavy noise (so the noise is there); strategies a DP task
/// refuses are skipped, not run.
#[test]
fn the_simulator_applies_dp_and_skips_refused_strategies() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, mode: &str, sigma: f64, strategies: &str| {
        let spec = dir.path().join(format!("{name}.toml"));
        std::fs::write(&spec, dp_spec(mode, 1.0, sigma)).unwrap();
        coordinator::experiment::run(&coordinator::experiment::ExperimentArgs {
            data: yosegi_tests::data("wdbc.csv")
                .to_string_lossy()
                .into_owned(),
            spec: Some(spec),
            target: None,
            kind: None,
            discover: false,
            parties: 3,
            partition: "iid".into(),
            strategies: strategies.into(),
            rounds: 2,
            seeds: 1,
            sweep: vec![],
            attackers: 0,
            attack: "sign-flip:10".into(),
            synthetic_rows: 0,
            min_parties: None,
            out: dir.path().join(name),
        })
        .unwrap()
    };
    let f1 = |records: &[coordinator::experiment::Record], name: &str| {
        records
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no record of {name}"))
            .metrics
            .binary()
            .unwrap()
            .f1
    };
    let light = run("light", "central", 0.3, "fedavg,median,ensemble");
    let heavy = run("heavy", "central", 30.0, "fedavg");
    let local = run("local", "local", 0.05, "median,ensemble");
    assert!(f1(&light, "fedavg") >= 0.9, "{light:?}");
    assert!(
        f1(&heavy, "fedavg") < f1(&light, "fedavg") - 0.1,
        "heavy noise F1 {} vs light {}",
        f1(&heavy, "fedavg"),
        f1(&light, "fedavg")
    );
    assert!(f1(&local, "median") >= 0.9, "{local:?}");
    for (records, refused) in [
        (&light, "median"),
        (&light, "ensemble"),
        (&local, "ensemble"),
    ] {
        assert!(
            records.iter().all(|r| r.name != refused),
            "{refused} ran on a DP task"
        );
    }
}
