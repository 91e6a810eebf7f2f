//! The load tool (issue #7) against a sandbox coordinator: 50 simulated parties with real keys
//! enroll, report statistics and upload signed random weights over TLS in one FedAvg round.

use std::time::{Duration, Instant};

use coordinator::swarm::{MemorySource, SwarmConfig, run};
use yosegi_tests::sandbox::Sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parties_publish_one_round_with_every_contributor() {
    let sb = Sandbox::start().await;
    let started = Instant::now();
    let report = run(SwarmConfig {
        server: sb.url.clone(),
        tls: sb.client_tls(),
        operator_key: sb.operator_key.clone(),
        parties: 50,
        param_count: 500,
        rounds: 1,
        deadline: Duration::from_secs(60),
        concurrency: 16,
        prefix: "swarm".into(),
        memory: MemorySource::ThisProcess,
    })
    .await
    .expect("the swarm completes");
    assert!(started.elapsed() < Duration::from_secs(60));

    // The spec has about the asked parameter count: 16 inputs, one hidden layer of 27.
    assert_eq!(report.param_count, 18 * 27 + 1);
    assert_eq!(report.rounds.len(), 1);
    let r = &report.rounds[0];
    assert_eq!((r.round, r.version, r.contributors), (1, 1, 50));
    assert!(r.update_bytes > 4 * report.param_count);
    for secs in [
        report.enroll_secs,
        report.task_statistics_secs,
        r.uploads_secs,
        r.merge_publish_secs,
    ] {
        assert!(secs > 0.0 && secs < report.total_secs, "{report:#?}");
    }
    assert!(report.coordinator_peak_kib.is_some_and(|k| k > 1024));
    let table = report.table();
    for phase in [
        "enroll",
        "task + statistics",
        "all uploads acked",
        "merge → published",
    ] {
        assert!(table.contains(phase), "{table}");
    }

    // The published manifest, verified against the coordinator key, names all 50 parties.
    let mut op = sb.operator().await;
    let (manifest, _, _) = op
        .pull(&report.task, 1, &sb.coordinator_key)
        .await
        .expect("pulls the merged model");
    assert_eq!(manifest.contributors.len(), 50);
    assert_eq!(manifest.strategy, "fedavg");
    sb.stop().await;
}
