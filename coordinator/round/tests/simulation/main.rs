//! Deterministic simulation testing of the round machine (in the style of FoundationDB's
//! simulator and TigerBeetle's VOPR): seeded random schedules of enrolments, uploads (valid,
//! invalid, late, duplicate), declines, revocations, clock jumps past deadlines and crashes
//! between a decision and its commit drive the pure rules on an in-memory federation; the
//! invariants are checked after every step. A failing seed is printed and replays alone:
//! `YOSEGI_SIM_SEED=N cargo test -p yosegi-round --test simulation`.
//! `YOSEGI_SIM_SCHEDULES=N` runs more schedules than the default 10,000.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared_model::ids::{ModelVersion, PartyId, RoundNo, Sha256, TaskId};
use shared_model::stats::FeatureSums;
use yosegi_round::close::{self, Candidate, CloseDecision, Outcome};
use yosegi_round::decide::{
    self, Admission, DeclineContext, QueueContext, RoundRequest, StatsStep, UploadContext,
};
use yosegi_round::memory::Federation;
use yosegi_round::transition::{AcceptedUpdate, PublishedModel};
use yosegi_round::{AssignmentId, PartyState, RoundPhase, Transition};

mod invariants;

const SPEC: &str = r#"
format = 1
name = "tiny"
[task]
kind = "binary"
target = "y"
features = ["a", "b"]
[model]
hidden = [3]
[training]
learning_rate = 0.1
local_epochs = 1
batch_size = 4
seed = 1
"#;

const STRATEGIES: &[&str] = &[
    "fedavg",
    "fedprox",
    "median",
    "ensemble",
    "transfer",
    "series",
    "trimmed-mean",
];

/// Counts of what the schedules did, printed at the end.
#[derive(Default, Debug)]
struct Tally {
    schedules: u64,
    steps: u64,
    published: u64,
    failed: u64,
    crashes: u64,
    accepted: u64,
    rejected: u64,
}

struct Sim {
    rng: ChaCha8Rng,
    fed: Federation,
    task: TaskId,
    parties: Vec<PartyId>,
    now: i64,
    /// Parties whose stored update blob is damaged (re-verification fails).
    damaged: BTreeSet<(RoundNo, PartyId)>,
    /// Phases seen, to check they only move forward.
    phases: BTreeMap<RoundNo, RoundPhase>,
    /// Accepted updates seen: (round, party) → blob.
    accepted: BTreeMap<(RoundNo, PartyId), Sha256>,
    tally: Tally,
}

fn apply(fed: &mut Federation, t: &Transition) -> Result<Option<RoundNo>, String> {
    fed.apply(t).map_err(|e| format!("{e} applying {t:?}"))
}

/// The fake published model of a close: its digest names exactly the updates merged.
fn model_of(version: u64, round: RoundNo, merged: &[(PartyId, Candidate)]) -> PublishedModel {
    let text: Vec<String> = merged
        .iter()
        .map(|(p, c)| format!("{p}:{}:{}", c.blob_sha256, c.sample_count))
        .collect();
    PublishedModel {
        version: ModelVersion(version),
        round,
        blob_sha256: Sha256::of(text.join(",").as_bytes()),
        manifest: vec![],
        signature: vec![],
    }
}

impl Sim {
    fn new(seed: u64) -> Result<Self, String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut fed = Federation::new();
        let n = rng.random_range(1..=6);
        let parties: Vec<PartyId> = (0..n)
            .map(|i| PartyId::new(format!("p{i}")).unwrap())
            .collect();
        for p in &parties {
            let t = decide::enroll(p.as_str(), [rng.random(); 32]).map_err(|e| e.to_string())?;
            apply(&mut fed, &t)?;
        }
        // Enrolling a name twice is a conflict, and nothing is logged for it.
        let before = fed.log.len();
        let again = decide::enroll(parties[0].as_str(), [0; 32]).map_err(|e| e.to_string())?;
        if fed.apply(&again).is_ok() || fed.log.len() != before {
            return Err("a second enrolment of one name was applied".into());
        }
        let known: Vec<(PartyId, bool)> = parties.iter().map(|p| (p.clone(), false)).collect();
        let t = decide::create_task("t", SPEC, &[], "", &known).map_err(|e| e.to_string())?;
        apply(&mut fed, &t)?;
        Ok(Self {
            rng,
            fed,
            task: TaskId::new("t").unwrap(),
            parties,
            now: 0,
            damaged: BTreeSet::new(),
            phases: BTreeMap::new(),
            accepted: BTreeMap::new(),
            tally: Tally::default(),
        })
    }

    fn entry(&self) -> &yosegi_round::memory::TaskEntry {
        &self.fed.tasks[&self.task]
    }

    fn pick_party(&mut self) -> PartyId {
        let i = self.rng.random_range(0..self.parties.len());
        self.parties[i].clone()
    }

    fn statistics(&mut self) -> Result<(), String> {
        let spec = self.entry().record.spec().map_err(|e| e.to_string())?;
        for p in self.parties.clone() {
            let id = AssignmentId::stats(&self.task);
            if self.rng.random_bool(0.9) {
                let sums = FeatureSums::of_rows(&[0.0, 1.0, 2.0, 3.0], 2);
                let t = decide::record_sums(&id, &p, &self.entry().record, &spec, &sums)
                    .map_err(|e| e.to_string())?;
                apply(&mut self.fed, &t)?;
            } else if self.rng.random_bool(0.5) {
                let c = DeclineContext {
                    task: &self.entry().record,
                    round: None,
                    state: None,
                    version_exists: false,
                };
                let t = decide::decline(&id, &p, "site policy", &c).map_err(|e| e.to_string())?;
                apply(&mut self.fed, &t)?;
            }
        }
        Ok(())
    }

    fn queue(&mut self) -> Result<(), String> {
        let spec = self.entry().record.spec().map_err(|e| e.to_string())?;
        let strategy = STRATEGIES[self.rng.random_range(0..STRATEGIES.len())];
        let n = self.parties.len() as u32;
        let options = shared_model::strategy::options_for(strategy, n as usize);
        let revoked = self.fed.revoked();
        let (min_parties, deadline_ms, count) = (
            self.rng.random_range(1..=n),
            self.rng.random_range(100..2_000),
            self.rng.random_range(1..=3),
        );
        let ctx = QueueContext {
            task: &self.entry().record,
            spec: &spec,
            revoked: &revoked,
            series_stages: 0,
            series_pending: 0,
        };
        let req = RoundRequest {
            strategy,
            options: &options,
            min_parties,
            deadline_ms,
            count,
        };
        // A refused request (too few parties for the strategy…) changes nothing.
        if let Ok(t) = decide::queue_rounds(&ctx, &req) {
            apply(&mut self.fed, &t)?;
        }
        Ok(())
    }

    /// The coordinator's tick for the task; `crash` drops the decision before its commit.
    fn tick(&mut self, crash: bool) -> Result<(), String> {
        let e = self.entry().clone();
        if e.record.normalization.is_none() {
            let reported: Vec<PartyId> = e.sums.keys().cloned().collect();
            let stats_id = AssignmentId::stats(&self.task).to_string();
            let declined: Vec<PartyId> = e
                .declines
                .keys()
                .filter(|(a, _)| *a == stats_id)
                .map(|(_, p)| p.clone())
                .collect();
            let first = e
                .rounds
                .iter()
                .find(|r| r.record.phase == RoundPhase::Queued)
                .map(|r| &r.record);
            let t = match decide::statistics(&e.record, &reported, &declined, first, self.now) {
                StatsStep::Wait => return Ok(()),
                StatsStep::FailQueued(t) => t,
                StatsStep::Fix { reported, .. } => Transition::FixNormalization {
                    task: self.task.clone(),
                    normalization_json: "{}".into(),
                    reported,
                    initial: PublishedModel {
                        version: ModelVersion(0),
                        round: RoundNo(0),
                        blob_sha256: Sha256::of(b"initial"),
                        manifest: vec![],
                        signature: vec![],
                    },
                },
            };
            return self.commit(&t, crash);
        }
        if let Some(r) = e
            .rounds
            .iter()
            .find(|r| r.record.phase == RoundPhase::Training)
        {
            let revoked = self.fed.revoked();
            let outcomes: Vec<Outcome> = r
                .updates
                .values()
                .map(|u| Outcome {
                    party: u.party.clone(),
                    verdict: if revoked.contains(&u.party) {
                        Err("the party was revoked".into())
                    } else if self.damaged.contains(&(r.record.round, u.party.clone())) {
                        Err("blob damaged".into())
                    } else {
                        Ok(Candidate {
                            blob_sha256: u.blob_sha256,
                            sample_count: u.sample_count,
                            weight: u.sample_count,
                            min_cohort: u
                                .local_metrics_json
                                .as_deref()
                                .map_or(0, |m| m.parse().unwrap_or(0)),
                            local_metrics_json: None,
                        })
                    },
                })
                .collect();
            let t = match close::close(
                &e.record,
                &r.record,
                &r.parties,
                outcomes,
                &BTreeMap::new(),
                self.now,
            ) {
                CloseDecision::Wait => return Ok(()),
                CloseDecision::Fail(t) => *t,
                CloseDecision::Merge(closing) => {
                    if self.rng.random_bool(0.05) {
                        closing.fail("fedavg merge failed: simulated".into())
                    } else {
                        let version = e.latest().map_or(0, |m| m.version.0) + 1;
                        let model = model_of(version, r.record.round, &closing.kept);
                        closing.publish(model)
                    }
                }
            };
            if let Transition::PublishRound { merged, .. } = &t {
                for m in merged {
                    if revoked.contains(&m.party) {
                        return Err(format!("revoked party {} is merged", m.party));
                    }
                }
            }
            return self.commit(&t, crash);
        }
        if let Some(r) = e
            .rounds
            .iter()
            .find(|r| r.record.phase == RoundPhase::Queued)
        {
            let latest = e.latest().map_or(ModelVersion(0), |m| m.version);
            let t = decide::open_round(&e.record, &r.record, &self.fed.revoked(), latest, self.now);
            return self.commit(&t, crash);
        }
        Ok(())
    }

    fn commit(&mut self, t: &Transition, crash: bool) -> Result<(), String> {
        if crash {
            // Crash between decision and commit: nothing of the decision is written; the next
            // tick decides again from the same state.
            self.tally.crashes += 1;
            return Ok(());
        }
        match t {
            Transition::PublishRound { .. } => self.tally.published += 1,
            Transition::FailRound { .. } => self.tally.failed += 1,
            _ => {}
        }
        apply(&mut self.fed, t).map(|_| ())
    }

    fn upload(&mut self) -> Result<(), String> {
        let party = self.pick_party();
        let e = self.entry().clone();
        // Mostly the open round; sometimes an old or future round (late or unknown).
        let round = match e
            .rounds
            .iter()
            .find(|r| r.record.phase == RoundPhase::Training)
        {
            Some(r) if self.rng.random_bool(0.85) => r.record.round,
            _ => RoundNo(self.rng.random_range(1..=e.rounds.len() as u64 + 1)),
        };
        let r = e.round(round);
        let state = r
            .and_then(|r| r.parties.iter().find(|p| p.party == party))
            .map(|p| &p.state);
        let id = AssignmentId::train(&self.task, round);
        // A duplicate resends the accepted blob; otherwise a fresh one.
        let accepted = r.and_then(|r| r.updates.get(&party)).map(|u| u.blob_sha256);
        let claimed = match accepted {
            Some(sha) if self.rng.random_bool(0.5) => sha,
            _ => Sha256::of(&self.rng.random::<[u8; 16]>()),
        };
        let revoked = self.fed.parties[&party].1;
        let c = UploadContext {
            id: &id,
            party: &party,
            round: r.map(|r| &r.record),
            state,
            accepted,
            claimed,
            revoked,
            now: self.now,
        };
        if self.rng.random_bool(0.1) {
            // A stream that broke before its blob was complete: recorded only for a party in
            // the round, and it never changes the state of one that is not awaited.
            let before = state.cloned();
            let Some(t) = decide::refuse_stream(&c, "stalled", "sent nothing".into()) else {
                if before.is_some() {
                    return Err(format!(
                        "a broken stream of {party}, in round {round}, was not recorded"
                    ));
                }
                return Ok(());
            };
            apply(&mut self.fed, &t)?;
            let after = self
                .entry()
                .round(round)
                .and_then(|r| r.parties.iter().find(|p| p.party == party))
                .map(|p| p.state.clone());
            let awaited = |s: &Option<PartyState>| s.as_ref().is_some_and(PartyState::is_awaited);
            if awaited(&before) != awaited(&after)
                || (!awaited(&before)
                    && before.as_ref().map(PartyState::name)
                        != after.as_ref().map(PartyState::name))
            {
                return Err(format!(
                    "a broken stream of {party} changed its state in round {round}: {before:?} -> {after:?}"
                ));
            }
            return Ok(());
        }
        match decide::admit_upload(&c) {
            Admission::AlreadyAccepted => {
                if accepted != Some(claimed) {
                    return Err("a different blob was taken as already accepted".into());
                }
            }
            Admission::Refuse { record, .. } => {
                if let Some(t) = record {
                    apply(&mut self.fed, &t)?;
                }
            }
            Admission::Verify { .. } => {
                let r = r.expect("admitted to a round");
                if !r.record.is_open_at(self.now)
                    || !state.is_some_and(PartyState::is_awaited)
                    || revoked
                {
                    return Err(format!(
                        "{party} admitted to round {round} while not awaited or closed"
                    ));
                }
                let t = if self.rng.random_bool(0.25) {
                    self.tally.rejected += 1;
                    decide::reject_upload(
                        &self.task,
                        round,
                        &party,
                        "signature",
                        "bad signature".into(),
                    )
                } else {
                    self.tally.accepted += 1;
                    if self.rng.random_bool(0.1) {
                        self.damaged.insert((round, party.clone()));
                    }
                    // The signed cohort requirement travels as the "metrics" of the fake update.
                    let min_cohort = if self.rng.random_bool(0.2) {
                        self.rng.random_range(0..=self.parties.len() + 1)
                    } else {
                        0
                    };
                    decide::accept_upload(
                        &self.task,
                        round,
                        AcceptedUpdate {
                            party: party.clone(),
                            blob_sha256: claimed,
                            envelope_json: String::new(),
                            sample_count: self.rng.random_range(1..1_000),
                            local_metrics_json: Some(min_cohort.to_string()),
                            membership_audit_json: None,
                        },
                    )
                };
                apply(&mut self.fed, &t)?;
            }
        }
        Ok(())
    }

    fn decline(&mut self) -> Result<(), String> {
        let party = self.pick_party();
        let e = self.entry().clone();
        let Some(r) = e
            .rounds
            .iter()
            .find(|r| r.record.phase == RoundPhase::Training)
        else {
            return Ok(());
        };
        let c = DeclineContext {
            task: &e.record,
            round: Some(&r.record),
            state: r
                .parties
                .iter()
                .find(|p| p.party == party)
                .map(|p| &p.state),
            version_exists: false,
        };
        let id = AssignmentId::train(&self.task, r.record.round);
        match decide::decline(&id, &party, "site policy", &c) {
            Ok(t) => apply(&mut self.fed, &t).map(|_| ()),
            Err(_) if !c.state.is_some_and(PartyState::is_awaited) => Ok(()),
            Err(e) => Err(format!("an awaited party could not decline: {e}")),
        }
    }

    fn revoke(&mut self) -> Result<(), String> {
        let party = self.pick_party();
        if self.fed.parties[&party].1 {
            return Ok(());
        }
        let awaited: Vec<(TaskId, RoundNo)> = self
            .entry()
            .rounds
            .iter()
            .filter(|r| r.record.phase == RoundPhase::Training)
            .filter(|r| {
                r.parties
                    .iter()
                    .any(|p| p.party == party && p.state.is_awaited())
            })
            .map(|r| (self.task.clone(), r.record.round))
            .collect();
        let t = decide::revoke(party.as_str(), true, awaited).map_err(|e| e.to_string())?;
        apply(&mut self.fed, &t).map(|_| ())
    }

    fn run(&mut self, steps: usize) -> Result<(), String> {
        self.statistics()?;
        self.queue()?;
        for _ in 0..steps {
            self.tally.steps += 1;
            let mut clean_tick = false;
            match self.rng.random_range(0..100) {
                0..=34 => self.upload()?,
                35..=39 => self.decline()?,
                40..=42 => self.revoke()?,
                43..=44 => self.queue()?,
                45..=59 => {
                    let jump = self.rng.random_range(0..1_500);
                    self.now += jump;
                }
                _ => {
                    let crash = self.rng.random_bool(0.1);
                    self.tick(crash)?;
                    clean_tick = !crash;
                }
            }
            self.check(clean_tick)?;
        }
        // Drain: past every deadline, ticks end every round (published, or failed with a reason).
        for _ in 0..200 {
            self.now += 10_000;
            self.tick(false)?;
            self.check(true)?;
        }
        let open: Vec<RoundNo> = self
            .entry()
            .rounds
            .iter()
            .filter(|r| !r.record.phase.is_final())
            .map(|r| r.record.round)
            .collect();
        // A statistics step that lacks its quorum waits for the silent parties (by design, see
        // `decide::statistics`); every other round ends.
        let e = self.entry();
        let silent = e.record.normalization.is_none()
            && e.record.parties.iter().any(|p| {
                !e.sums.contains_key(p)
                    && !e
                        .declines
                        .keys()
                        .any(|(a, q)| q == p && a.ends_with("/stats/0"))
            });
        if !open.is_empty() && !silent {
            return Err(format!("rounds {open:?} never ended"));
        }
        Ok(())
    }
}

fn schedule(seed: u64, total: &mut Tally) {
    let mut sim = Sim::new(seed).unwrap_or_else(|e| panic!("simulation seed {seed}: setup: {e}"));
    let steps = 20 + (seed % 40) as usize;
    if let Err(e) = sim.run(steps) {
        panic!(
            "simulation seed {seed} failed: {e}\nreplay: YOSEGI_SIM_SEED={seed} cargo test -p yosegi-round --test simulation"
        );
    }
    total.schedules += 1;
    total.steps += sim.tally.steps;
    total.published += sim.tally.published;
    total.failed += sim.tally.failed;
    total.crashes += sim.tally.crashes;
    total.accepted += sim.tally.accepted;
    total.rejected += sim.tally.rejected;
}

#[test]
fn simulation_of_random_schedules_keeps_every_round_invariant() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let mut total = Tally::default();
    if let Some(seed) = env("YOSEGI_SIM_SEED") {
        schedule(seed, &mut total);
    } else {
        let n = env("YOSEGI_SIM_SCHEDULES").unwrap_or(10_000);
        for seed in 0..n {
            schedule(seed, &mut total);
        }
        assert_eq!(total.schedules, n);
    }
    println!(
        "simulation: {} schedules, {} steps; {} rounds published, {} failed, {} crashes before commit, {} uploads accepted, {} rejected",
        total.schedules,
        total.steps,
        total.published,
        total.failed,
        total.crashes,
        total.accepted,
        total.rejected
    );
    // The schedules must reach every outcome, or they test less than they claim.
    assert!(
        total.published > 0
            && total.failed > 0
            && total.crashes > 0
            && total.accepted > 0
            && total.rejected > 0,
        "{total:?}"
    );
}
