//! Crash safety (issue #7). The coordinator runs as its own process; simulated parties upload
//! signed ~1 MB updates round after round (FedAvg, every party required, 10–60 ms of simulated
//! training each) while the test kills the coordinator with SIGKILL at random moments — during
//! uploads, verification, merges, publication, fsyncs — and starts it again on the same data
//! dir, at least 20 times
//! (`YOSEGI_CRASH_KILLS=N` for more; `YOSEGI_CRASH_SEED` replays the kill times it prints).
//! Parties retry through the outages and log every acknowledgement they receive. Then:
//!
//! - every acknowledged upload is in the database with the acknowledged bytes, on disk;
//! - no update is counted twice: one row per party and round, and each published manifest
//!   names exactly the round's accepted updates, once each;
//! - rounds only move forward (a monitor polls status throughout: no phase goes back, no
//!   published version changes) and every round completes;
//! - each merged model is byte-for-byte FedAvg of its round's accepted updates over its base,
//!   recomputed here without any crash;
//! - the blob dir holds exactly the referenced blobs (no orphan, no temp file), the database
//!   passes `PRAGMA integrity_check`, and the governance log's hash chain verifies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordinator::swarm::{RandomUpdate, random_update, spec_text};
use coordinator::tls::ClientTls;
use party_client::grpc::{Ack, PartyClient, Work};
use shared_model::SigningKey;
use shared_model::blob::BlobRole;
use shared_model::ids::{PartyId, Sha256, TaskId};
use shared_model::model::{Model, max_model_blob_bytes};
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use shared_model::strategy::{Contribution, StrategyConfig};
use yosegi_tests::run_ok;
use yosegi_tests::server::ServerProcess;

const PARTIES: usize = 4;
/// ~1 MB updates: verification and merging take long enough for kills to land in them.
const PARAMS: u64 = 250_000;
const TASK: &str = "crash";

mod party;
use party::{Party, Shared, party};

/// Deterministic kill times from a seed (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, found {v:?}"))
    })
}

/// What the monitor saw of each round: the highest phase rank and the published version.
type Seen = BTreeMap<u64, (u8, u64)>;

/// A refusal (the coordinator answered and said no), as opposed to an outage worth retrying.
fn rank(phase: &coordinator::views::RoundPhase) -> u8 {
    use coordinator::views::RoundPhase;
    match phase {
        RoundPhase::Queued => 0,
        RoundPhase::Training => 1,
        RoundPhase::Published | RoundPhase::Failed => 2,
    }
}

/// Polls round status through the outages; panics on a round going back or a published
/// version changing; sets `done` when the last round is published.
async fn monitor(
    server: ServerProcessView,
    shared: Arc<Shared>,
    last: u64,
    seen: Arc<Mutex<Seen>>,
) {
    let mut op = None;
    loop {
        if op.is_none() {
            op = coordinator::grpc::client::OperatorClient::connect_with(
                &server.url,
                &server.tls,
                server.key.clone(),
            )
            .await
            .ok();
        }
        let Some(c) = op.as_mut() else {
            tokio::time::sleep(Duration::from_millis(25)).await;
            continue;
        };
        let Ok(rounds) = c.status(TASK).await else {
            op = None;
            continue;
        };
        {
            let mut s = seen.lock().unwrap();
            for r in &rounds {
                let now = (rank(&r.phase), r.version);
                assert_ne!(r.phase, "failed", "round {} failed: {}", r.round, r.failure);
                if let Some(before) = s.get(&r.round) {
                    assert!(
                        now.0 >= before.0,
                        "round {} went back from rank {} to {} ({})",
                        r.round,
                        before.0,
                        now.0,
                        r.phase
                    );
                    assert!(
                        before.1 == 0 || before.1 == now.1,
                        "round {}: published version changed from {} to {}",
                        r.round,
                        before.1,
                        now.1
                    );
                }
                s.insert(r.round, now);
            }
        }
        if rounds
            .iter()
            .any(|r| r.round == last && r.phase == "published")
        {
            shared.done.store(true, Ordering::SeqCst);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Clone)]
struct ServerProcessView {
    url: String,
    tls: ClientTls,
    key: SigningKey,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_uploads_and_merges_loses_nothing_and_counts_nothing_twice() {
    let kills = env_u64("YOSEGI_CRASH_KILLS").unwrap_or(20).max(1);
    // A fixed default seed: the same kill schedule in every run (YOSEGI_CRASH_SEED explores).
    let seed = env_u64("YOSEGI_CRASH_SEED").unwrap_or(0x5eed_c0de) | 1;
    let rounds = (3 * kills).max(40);
    eprintln!("crash test: {kills} kills over {rounds} rounds; YOSEGI_CRASH_SEED={seed} replays");
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(dir.path());
    server.start();
    let mut op = server.operator().await;
    let parties: Vec<Party> = (0..PARTIES)
        .map(|i| Party {
            name: format!("site-{i}"),
            key: shared_model::keys::generate().unwrap(),
            index: i as u64,
        })
        .collect();
    for p in &parties {
        op.enroll(&p.name, &p.key.verifying_key()).await.unwrap();
    }
    let spec_toml = spec_text(TASK, PARAMS);
    let spec = ModelSpec::parse(&spec_toml, "<crash>").unwrap();
    let names: Vec<String> = parties.iter().map(|p| p.name.clone()).collect();
    op.create_task(TASK, &spec_toml, &names).await.unwrap();
    let first = op
        .start_round(
            TASK,
            "fedavg",
            HashMap::new(),
            PARTIES as u32,
            600_000,
            u32::try_from(rounds).unwrap(),
        )
        .await
        .unwrap();
    let last = first + rounds - 1;
    let shared = Arc::new(Shared {
        url: server.url.clone(),
        tls: server.tls(),
        spec: spec.clone(),
        done: AtomicBool::new(false),
        acks: Mutex::new(Vec::new()),
    });
    let mut workers = tokio::task::JoinSet::new();
    for p in parties {
        workers.spawn(party(shared.clone(), p));
    }
    let seen = Arc::new(Mutex::new(Seen::new()));
    let view = ServerProcessView {
        url: server.url.clone(),
        tls: server.tls(),
        key: server.operator_key(),
    };
    let watcher = tokio::spawn(monitor(view, shared.clone(), last, seen.clone()));

    // The kills: a random 20–400 ms of service, then SIGKILL, then a restart.
    let mut rng = Rng(seed);
    let mut at_kill = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(20 + rng.next() % 380)).await;
        tokio::task::block_in_place(|| server.kill());
        let open = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(_, (rank, _))| *rank == 1)
            .map(|(r, _)| *r);
        at_kill.push(open);
        tokio::task::block_in_place(|| server.start());
    }
    let published_by_then = seen
        .lock()
        .unwrap()
        .values()
        .filter(|(r, _)| *r == 2)
        .count();
    let started = Instant::now();
    while !shared.done.load(Ordering::SeqCst) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the rounds did not complete after the kills:\n{}",
            server.log_tail()
        );
        assert!(!watcher.is_finished() || shared.done.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher
        .await
        .expect("the monitor saw rounds only move forward");
    while let Some(r) = workers.join_next().await {
        r.expect("a party saw nothing wrong");
    }
    let acks = shared.acks.lock().unwrap().clone();
    let mid_round = at_kill.iter().filter(|r| r.is_some()).count();
    let again = acks.iter().filter(|a| a.again).count();
    eprintln!(
        "crash test: {kills} kills ({mid_round} with a round open; {published_by_then} of {rounds} rounds published when the kills ended), {} acks ({again} AlreadyAccepted after a lost answer)",
        acks.len()
    );
    assert!(
        mid_round * 2 >= kills as usize,
        "only {mid_round} of {kills} kills landed in an open round"
    );
    server.terminate();

    // ---- the invariants, read from the data dir -------------------------------------------
    let db = server.db();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let mut updates: BTreeMap<u64, Vec<(String, String, u64)>> = BTreeMap::new();
    {
        let mut q = db
            .prepare("SELECT round, party, blob_sha256, sample_count FROM updates WHERE task = ?1 ORDER BY round, party")
            .unwrap();
        let rows = q
            .query_map([TASK], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .unwrap();
        for row in rows {
            let (round, party, blob, samples) = row.unwrap();
            updates
                .entry(round)
                .or_default()
                .push((party, blob, samples));
        }
    }
    // Every acknowledged upload is there, with the acknowledged bytes.
    for a in &acks {
        let stored = updates
            .get(&a.round)
            .and_then(|us| us.iter().find(|(p, _, _)| *p == a.party))
            .unwrap_or_else(|| {
                panic!(
                    "{} was acknowledged for round {} but the update is gone",
                    a.party, a.round
                )
            });
        assert_eq!(stored.1, a.blob.to_string(), "{a:?}");
    }
    // Models by version, rounds by number.
    let mut models: BTreeMap<u64, (u64, String, serde_json::Value)> = BTreeMap::new();
    {
        let mut q = db
            .prepare("SELECT version, round, blob_sha256, manifest FROM models WHERE task = ?1")
            .unwrap();
        let rows = q
            .query_map([TASK], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (version, round, blob, manifest) = row.unwrap();
            let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
            assert!(
                models.insert(version, (round, blob, manifest)).is_none(),
                "version {version} twice"
            );
        }
    }
    let phases: BTreeMap<u64, (String, Option<u64>)> = {
        let mut q = db
            .prepare("SELECT round, phase, base_version FROM rounds WHERE task = ?1")
            .unwrap();
        q.query_map([TASK], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                (
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                ),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    assert_eq!(phases.len() as u64, rounds);
    let fedavg = StrategyConfig::parse("fedavg", &BTreeMap::new()).unwrap();
    let blobs_dir = server.data_dir.join("blobs");
    let read_blob = |sha: &str| {
        let bytes = std::fs::read(blobs_dir.join(sha)).unwrap();
        assert_eq!(Sha256::of(&bytes).to_string(), sha, "blob {sha} on disk");
        bytes
    };
    let mut previous_version = 0;
    for round in first..=last {
        let (phase, base_version) = &phases[&round];
        assert_eq!(phase, "published", "round {round}");
        let (version, (_, blob, manifest)) = models
            .iter()
            .find(|(_, (r, _, _))| *r == round)
            .unwrap_or_else(|| panic!("round {round} has no model"));
        assert!(*version > previous_version, "versions move forward");
        previous_version = *version;
        // Each accepted update once, and the manifest names exactly those.
        let ups = &updates[&round];
        assert_eq!(ups.len(), PARTIES, "round {round}: {ups:?}");
        let named: Vec<(String, String, u64)> = manifest["contributors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["party"].as_str().unwrap().to_string(),
                    c["update_sha256"].as_str().unwrap().to_string(),
                    c["sample_count"].as_u64().unwrap(),
                )
            })
            .collect();
        let mut sorted = named.clone();
        sorted.sort();
        assert_eq!(&sorted, ups, "round {round}: manifest vs accepted updates");
        assert_eq!(
            named.iter().map(|n| &n.0).collect::<HashSet<_>>().len(),
            named.len()
        );
        // The merge, recomputed without crashes from the accepted set, is byte-identical.
        let base_version = base_version.expect("an open round has a base");
        let (_, base_blob, _) = &models[&base_version];
        let role = if base_version == 0 {
            BlobRole::Initial
        } else {
            BlobRole::Merged
        };
        let base = Model::decode(&read_blob(base_blob), &spec, role).unwrap();
        let weights: Vec<(String, shared_model::weights::Weights, u64)> = ups
            .iter()
            .map(|(party, sha, samples)| {
                let Model::Single(w) =
                    Model::decode(&read_blob(sha), &spec, BlobRole::Update).unwrap()
                else {
                    panic!("updates are single networks")
                };
                (party.clone(), w, *samples)
            })
            .collect();
        let contributions: Vec<Contribution<'_>> = weights
            .iter()
            .map(|(party, w, samples)| Contribution {
                party,
                weights: w,
                samples: *samples,
            })
            .collect();
        let merged = fedavg.merge(&base, &contributions).unwrap();
        assert_eq!(
            Sha256::of(&merged.encode(&spec, BlobRole::Merged)).to_string(),
            *blob,
            "round {round}: the published model is not FedAvg of its accepted updates"
        );
    }
    // The disk holds what the rows refer to, and nothing else.
    let referenced: HashSet<String> = updates
        .values()
        .flatten()
        .map(|(_, sha, _)| sha.clone())
        .chain(models.values().map(|(_, sha, _)| sha.clone()))
        .collect();
    let on_disk: HashSet<String> = std::fs::read_dir(&blobs_dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, referenced, "blob files vs rows");
    assert_eq!(
        std::fs::read_dir(blobs_dir.join("tmp")).unwrap().count(),
        0,
        "temp files left"
    );
    let audit = run_ok(
        "coordinator",
        &[
            "audit",
            "verify",
            "--data-dir",
            server.data_dir.to_str().unwrap(),
        ],
    );
    assert!(audit.contains("audit log OK"), "{audit}");
    assert_eq!(
        u64::from(server.starts),
        kills + 1,
        "one start, then one restart after every kill"
    );
}
