//! Deterministic simulation of the real engine on a temp store (the pure rules get 10,000
//! schedules in `coordinator/round/tests/simulation/`; this runs fewer, slower ones through
//! SQLite, the blob files and the signed manifests): seeded schedules of uploads (valid,
//! invalid, late, repeated), declines, revocations, new rounds, clock jumps past deadlines and
//! restarts of the engine on its data dir, with the invariants checked after every step.
//! `YOSEGI_ENGINE_SIM_SEED=N` replays one schedule; `YOSEGI_ENGINE_SIM_SCHEDULES=N` runs more.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fixture::*;
use super::*;
use crate::store::RoundPhase;

struct Sim {
    rng: ChaCha8Rng,
    f: Fixture,
    now: i64,
    phases: BTreeMap<u64, RoundPhase>,
    accepted: BTreeMap<(u64, String), String>,
    steps: u64,
}

impl Sim {
    fn party(&mut self) -> usize {
        self.rng.random_range(0..self.f.keys.len())
    }

    fn open_round(&self) -> Option<u64> {
        let rounds = self.f.engine.store().rounds("t").unwrap();
        rounds
            .iter()
            .find(|r| r.phase == RoundPhase::Training)
            .map(|r| r.round.0)
    }

    fn step(&mut self) {
        self.steps += 1;
        let round = self.open_round();
        let last = self.f.engine.store().rounds("t").unwrap().len() as u64;
        match self.rng.random_range(0..100) {
            0..=39 => {
                let i = self.party();
                let r = match round {
                    Some(r) if self.rng.random_bool(0.9) => r,
                    _ => self.rng.random_range(1..=last.max(1)),
                };
                let outcome = if self.rng.random_bool(0.2) {
                    // Another normalisation: refused and recorded, the party stays awaited.
                    let other = FeatureSums::of_rows(&[9.0, 9.0, 1.0, 3.0], 2);
                    self.f
                        .upload_with(i, r, self.now, &other.normalization().unwrap())
                } else {
                    self.f.upload(i, r, self.now)
                };
                let _ = outcome;
            }
            40..=44 => {
                if let Some(r) = round {
                    let i = self.party();
                    let name = self.f.keys[i].0.clone();
                    let _ = self.f.engine.decline(
                        &name,
                        &format!("t/train/{r}"),
                        "site policy",
                        self.now,
                    );
                }
            }
            45..=47 => {
                let i = self.party();
                let name = self.f.keys[i].0.clone();
                let _ = self.f.engine.revoke(&name, self.now);
            }
            48..=51 => {
                let n = self.f.keys.len() as u32;
                let strategy =
                    ["fedavg", "median", "fedprox", "transfer"][self.rng.random_range(0..4)];
                let min = self.rng.random_range(1..=n);
                let deadline = self.rng.random_range(100..3_000);
                let _ = self.f.engine.start_rounds(
                    "t",
                    strategy,
                    &BTreeMap::new(),
                    min,
                    deadline,
                    1,
                    self.now,
                );
            }
            52..=54 => self.restart(),
            55..=69 => self.now += self.rng.random_range(0..2_000),
            _ => {
                self.f.engine.tick(self.now).unwrap();
                self.check(true);
                return;
            }
        }
        self.check(false);
    }

    /// Drops the engine and opens a new one on the same data dir (a restart between commits).
    fn restart(&mut self) {
        let dir = self.f._dir.path().to_path_buf();
        let placeholder = Engine::new(
            Store::create(&dir.join(format!("scratch-{}.db", self.steps))).unwrap(),
            BlobStore::open(&dir.join("scratch-blobs")).unwrap(),
            shared_model::keys::generate().unwrap(),
            EngineConfig::default(),
        );
        drop(std::mem::replace(&mut self.f.engine, placeholder));
        let store = Store::open(&dir.join("y.db")).unwrap();
        let blobs = BlobStore::open(&dir.join("blobs")).unwrap();
        self.f.engine = Engine::new(
            store,
            blobs,
            shared_model::keys::generate().unwrap(),
            EngineConfig::default(),
        );
    }

    fn check(&mut self, after_tick: bool) {
        let store = self.f.engine.store();
        for r in store.rounds("t").unwrap() {
            let n = r.round.0;
            if let Some(before) = self.phases.insert(n, r.phase) {
                assert!(
                    r.phase >= before,
                    "round {n} moved back from {before} to {}",
                    r.phase
                );
            }
            let updates = store.updates("t", n).unwrap();
            for ((round, party), sha) in &self.accepted {
                if *round == n {
                    let now = updates.iter().find(|u| u.party.as_str() == party);
                    assert_eq!(
                        now.map(|u| u.blob_sha256.to_string()).as_ref(),
                        Some(sha),
                        "the accepted update of {party} in round {n} was lost or replaced"
                    );
                }
            }
            for u in &updates {
                self.accepted
                    .insert((n, u.party.to_string()), u.blob_sha256.to_string());
            }
            if r.phase == RoundPhase::Failed {
                assert!(
                    r.failure.as_deref().is_some_and(|f| !f.is_empty()),
                    "round {n} failed without a reason"
                );
            }
            if r.phase == RoundPhase::Published {
                // The manifest names exactly the updates still accepted, none left out.
                let v = r.version.unwrap();
                let m = store.model("t", Some(v.0)).unwrap().unwrap();
                let manifest: shared_model::manifest::Manifest =
                    serde_json::from_slice(&m.manifest).unwrap();
                let named: BTreeSet<String> = manifest
                    .contributors
                    .iter()
                    .map(|c| c.party.to_string())
                    .collect();
                let kept: BTreeSet<String> = store
                    .round_parties("t", n)
                    .unwrap()
                    .iter()
                    .filter(|p| p.state == yosegi_round::PartyState::Accepted)
                    .map(|p| p.party.to_string())
                    .collect();
                assert_eq!(
                    named, kept,
                    "round {n}: the manifest's contributors are the accepted updates"
                );
            }
            if after_tick && r.phase == RoundPhase::Training {
                assert!(
                    self.now < r.ends_ms.unwrap(),
                    "round {n} is still training past its deadline after a tick"
                );
            }
        }
        // The log verifies and records once what happens once.
        store.verify_audit().unwrap();
        let mut once = BTreeSet::new();
        for rec in store.audit_records(None, None).unwrap() {
            if matches!(
                rec.kind.as_str(),
                "round_opened"
                    | "round_failed"
                    | "round_merged"
                    | "update_accepted"
                    | "party_left_out"
                    | "round_queued"
            ) {
                assert!(
                    once.insert((rec.kind.clone(), rec.round, rec.party.clone())),
                    "duplicate {} record: round {:?} party {:?}",
                    rec.kind,
                    rec.round,
                    rec.party
                );
            }
        }
    }
}

/// Steps run, and rounds that ended published and failed.
fn schedule(seed: u64) -> (u64, u64, u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rng.random_range(1..=4);
    let f = fixture(n);
    let mut sim = Sim {
        rng,
        f,
        now: 10,
        phases: BTreeMap::new(),
        accepted: BTreeMap::new(),
        steps: 0,
    };
    let _ = sim
        .f
        .engine
        .start_rounds("t", "fedavg", &BTreeMap::new(), 1, 1_000, 1, 10);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..40 {
            sim.step();
        }
        // Past every deadline, ticks end every round.
        for _ in 0..20 {
            sim.now += 10_000;
            sim.f.engine.tick(sim.now).unwrap();
            sim.check(true);
        }
        let open: Vec<u64> = sim
            .f
            .engine
            .store()
            .rounds("t")
            .unwrap()
            .iter()
            .filter(|r| !r.phase.is_final())
            .map(|r| r.round.0)
            .collect();
        assert!(open.is_empty(), "rounds {open:?} never ended");
    }));
    if let Err(e) = result {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "engine simulation seed {seed} failed: {msg}\nreplay: YOSEGI_ENGINE_SIM_SEED={seed} cargo test -p yosegi-coordinator --lib engine_simulation"
        );
    }
    let rounds = sim.f.engine.store().rounds("t").unwrap();
    let count = |p: RoundPhase| rounds.iter().filter(|r| r.phase == p).count() as u64;
    (
        sim.steps,
        count(RoundPhase::Published),
        count(RoundPhase::Failed),
    )
}

#[test]
fn engine_simulation_of_random_schedules_on_a_real_store_keeps_every_invariant() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds: Vec<u64> = match env("YOSEGI_ENGINE_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env("YOSEGI_ENGINE_SIM_SCHEDULES").unwrap_or(25)).collect(),
    };
    let (mut steps, mut published, mut failed) = (0, 0, 0);
    for &seed in &seeds {
        let (s, p, f) = schedule(seed);
        (steps, published, failed) = (steps + s, published + p, failed + f);
    }
    println!(
        "engine simulation: {} schedules, {steps} steps; {published} rounds published, {failed} failed",
        seeds.len()
    );
    if seeds.len() > 1 {
        assert!(
            published > 0 && failed > 0,
            "the schedules must reach both ends of a round"
        );
    }
}
