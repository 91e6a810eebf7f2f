//! The coordinator's round rules on an in-memory federation, for the experiment simulator:
//! rounds are queued, opened, admitted, closed and merged by the same `yosegi-round` decisions
//! and the same merge the live engine runs (only the storage is `yosegi_round::memory`), so
//! docs/RESULTS.md comes from the rules the server runs. `tests/tests/experiment.rs` holds a
//! live engine and this to byte-identical published blobs.

use std::collections::BTreeMap;

use anyhow::{Context as _, anyhow};
use rand::Rng;
use shared_model::blob::BlobRole;
use shared_model::ids::{ModelVersion, PartyId, RoundNo, Sha256, StepNo, TaskId};
use shared_model::model::Model;
use shared_model::spec::ModelSpec;
use shared_model::strategy::StrategyConfig;
use shared_model::update::VerifiedUpdate;
use shared_model::weights::Weights;
use yosegi_round::close::{self, Candidate, CloseDecision, Outcome};
use yosegi_round::decide::{
    self, Admission, DeclineContext, QueueContext, RoundRequest, UploadContext,
};
use yosegi_round::memory::Federation;
use yosegi_round::merge::{MergePath, Merger};
use yosegi_round::transition::{AcceptedUpdate, PublishedModel};
use yosegi_round::{AssignmentId, Limits, RoundPhase, Transition};

/// A round opened for training: who trains, from which model, at which relay step.
#[derive(Clone, Debug)]
pub struct OpenRound {
    /// The round.
    pub round: RoundNo,
    /// Its relay step (0 for a broadcast round).
    pub step: StepNo,
    /// The parties invited.
    pub invited: Vec<PartyId>,
}

/// One task's federation in memory, with its latest published model.
#[derive(Debug)]
pub struct SimFederation {
    fed: Federation,
    task: TaskId,
    spec: ModelSpec,
    model: Model,
    now: i64,
    /// Rows each party reported in the statistics step (they bound its merge weight).
    reported: BTreeMap<PartyId, u64>,
}

impl SimFederation {
    /// A task over `parties` (each with the rows it reported in the statistics step) with the
    /// contribution `limits`, whose statistics step published `initial` as version 0.
    pub fn new(
        task: &str,
        spec: &ModelSpec,
        parties: &[(String, u64)],
        limits: Limits,
        initial: Weights,
    ) -> anyhow::Result<Self> {
        let task = TaskId::new(task)?;
        let reported: BTreeMap<PartyId, u64> = parties
            .iter()
            .map(|(p, rows)| Ok((PartyId::new(p)?, *rows)))
            .collect::<Result<_, shared_model::ids::IdError>>()?;
        let parties: Vec<PartyId> = reported.keys().cloned().collect();
        let mut fed = Federation::new();
        for p in &parties {
            let t = decide::enroll(p.as_str(), [0; 32]).map_err(|e| anyhow!("{e}"))?;
            fed.apply(&t)?;
        }
        fed.apply(&Transition::CreateTask {
            task: task.clone(),
            spec_toml: String::new(),
            spec_id: spec.id().to_string(),
            parties: parties.clone(),
            limits,
        })?;
        let model = Model::Single(initial);
        let sha = Sha256::of(&model.encode(spec, BlobRole::Initial));
        fed.apply(&Transition::FixNormalization {
            task: task.clone(),
            normalization_json: String::new(),
            reported: parties,
            initial: published(0, 0, sha),
        })?;
        Ok(Self {
            fed,
            task,
            spec: spec.clone(),
            model,
            now: 0,
            reported,
        })
    }

    /// The latest published model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Queues `count` rounds of `cfg` (for a relay, `count` relays of one step per party), as
    /// `round start` does, with `min_parties` updates needed for a broadcast round's quorum
    /// (`None`: every party; never fewer than the strategy merges).
    pub fn queue(
        &mut self,
        cfg: &StrategyConfig,
        count: u32,
        min_parties: Option<u32>,
    ) -> anyhow::Result<()> {
        let entry = &self.fed.tasks[&self.task];
        let n = entry.record.parties.len() as u32;
        let options: BTreeMap<String, String> = cfg.options();
        let revoked = self.fed.revoked();
        let ctx = QueueContext {
            task: &entry.record,
            spec: &self.spec,
            revoked: &revoked,
            series_stages: 0,
            series_pending: 0,
        };
        let req = RoundRequest {
            strategy: &cfg.name,
            options: &options,
            // A quorum below what the strategy merges (Krum's 2f + 3) is raised to it, as
            // an operator must at `round start`.
            min_parties: if cfg.is_relay() {
                1
            } else {
                min_parties
                    .unwrap_or(n)
                    .max(cfg.min_updates() as u32)
                    .min(n)
            },
            deadline_ms: 3_600_000,
            count,
        };
        let t = decide::queue_rounds(&ctx, &req).map_err(|e| anyhow!("{e}"))?;
        self.fed.apply(&t)?;
        Ok(())
    }

    /// Opens the next queued round, if any.
    pub fn open_next(&mut self) -> anyhow::Result<Option<OpenRound>> {
        self.now += 1;
        let entry = &self.fed.tasks[&self.task];
        let Some(r) = entry
            .rounds
            .iter()
            .find(|r| r.record.phase == RoundPhase::Queued)
        else {
            return Ok(None);
        };
        let latest = entry.latest().map_or(ModelVersion(0), |m| m.version);
        let t = decide::open_round(
            &entry.record,
            &r.record,
            &self.fed.revoked(),
            latest,
            self.now,
        );
        let Transition::OpenRound { round, invited, .. } = &t else {
            unreachable!("open_round decides an OpenRound")
        };
        let open = OpenRound {
            round: *round,
            step: StepNo(r.record.plan.step() as u64),
            invited: invited.clone(),
        };
        self.fed.apply(&t)?;
        Ok(Some(open))
    }

    /// Takes a verified update of `round` whose blob hashes to `sha`, as the engine admits one.
    pub fn accept(
        &mut self,
        round: RoundNo,
        v: &VerifiedUpdate,
        sha: Sha256,
    ) -> anyhow::Result<()> {
        let entry = &self.fed.tasks[&self.task];
        let r = entry.round(round).context("no such round")?;
        let party = v.party().clone();
        let id = AssignmentId::train(&self.task, round);
        let ctx = UploadContext {
            id: &id,
            party: &party,
            round: Some(&r.record),
            state: r
                .parties
                .iter()
                .find(|p| p.party == party)
                .map(|p| &p.state),
            accepted: r.updates.get(&party).map(|u| u.blob_sha256),
            claimed: sha,
            revoked: false,
            now: self.now,
        };
        match decide::admit_upload(&ctx) {
            Admission::Verify { step } if step == v.header().step => {}
            Admission::Verify { step } => return Err(anyhow!("{party}: expected step {step}")),
            Admission::AlreadyAccepted => return Ok(()),
            Admission::Refuse { refusal, .. } => return Err(anyhow!("{refusal}")),
        }
        let update = AcceptedUpdate {
            party,
            blob_sha256: sha,
            envelope_json: String::new(),
            sample_count: v.sample_count(),
            local_metrics_json: None,
            membership_audit_json: None,
        };
        self.fed
            .apply(&decide::accept_upload(&self.task, round, update))?;
        Ok(())
    }

    /// `party` declines its invitation to `round` with `reason`, as a live plant does (e.g. its
    /// membership audit withheld the update): it has answered, and sent nothing.
    pub fn decline(&mut self, round: RoundNo, party: &PartyId, reason: &str) -> anyhow::Result<()> {
        let entry = &self.fed.tasks[&self.task];
        let r = entry.round(round).context("no such round")?;
        let ctx = DeclineContext {
            task: &entry.record,
            round: Some(&r.record),
            state: r
                .parties
                .iter()
                .find(|p| &p.party == party)
                .map(|p| &p.state),
            version_exists: false,
        };
        let id = AssignmentId::train(&self.task, round);
        let t = decide::decline(&id, party, reason, &ctx).map_err(|e| anyhow!("{e}"))?;
        self.fed.apply(&t)?;
        Ok(())
    }

    /// Closes `round` with the server's rules and merge; `updates` are the verified updates it
    /// accepted, in any order. Returns the published model, or why the round failed (as the
    /// live engine records it; the model stays the last one published).
    pub fn close(
        &mut self,
        round: RoundNo,
        updates: Vec<VerifiedUpdate>,
        rng: &mut impl Rng,
    ) -> anyhow::Result<Result<&Model, String>> {
        let entry = &self.fed.tasks[&self.task];
        let r = entry.round(round).context("no such round")?;
        let mut updates = updates;
        updates.sort_by(|a, b| a.party().cmp(b.party()));
        let outcomes: Vec<Outcome> = updates
            .iter()
            .map(|v| Outcome {
                party: v.party().clone(),
                verdict: Ok(Candidate {
                    blob_sha256: r.updates[v.party()].blob_sha256,
                    sample_count: v.sample_count(),
                    // The close decides the weights (the merge happens after it here).
                    weight: 0,
                    min_cohort: v.header().min_cohort,
                    local_metrics_json: None,
                }),
            })
            .collect();
        let reported = &self.reported;
        let t = match close::close(
            &entry.record,
            &r.record,
            &r.parties,
            outcomes,
            reported,
            self.now,
        ) {
            CloseDecision::Wait => return Err(anyhow!("round {round} is not due")),
            CloseDecision::Fail(t) => *t,
            CloseDecision::Merge(closing) => {
                let plan = r.record.plan.clone();
                let mut merger = Merger::new(MergePath::of(&plan, &self.spec));
                let weights: BTreeMap<&PartyId, u64> =
                    closing.kept.iter().map(|(p, c)| (p, c.weight)).collect();
                for v in updates
                    .into_iter()
                    .filter(|v| weights.contains_key(v.party()))
                {
                    let weight = weights[v.party()];
                    merger.add(v, weight);
                }
                match merger
                    .finish(&plan, &self.spec, &self.model, rng)
                    .and_then(|m| closing.check_merged(&m).map(|()| m))
                {
                    Ok(m) => {
                        let version = entry.latest().map_or(0, |m| m.version.0) + 1;
                        let sha = Sha256::of(&m.encode(&self.spec, BlobRole::Merged));
                        self.model = m;
                        closing.publish(published(version, round.0, sha))
                    }
                    Err(reason) => closing.fail(reason),
                }
            }
        };
        let failed = match &t {
            Transition::FailRound { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        self.fed.apply(&t)?;
        Ok(match failed {
            Some(reason) => Err(reason),
            None => Ok(&self.model),
        })
    }
}

fn published(version: u64, round: u64, sha: Sha256) -> PublishedModel {
    PublishedModel {
        version: ModelVersion(version),
        round: RoundNo(round),
        blob_sha256: sha,
        manifest: Vec::new(),
        signature: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use yosegi_round::Limits;

    use shared_model::blob::{BlobMeta, BlobRole, encode};
    use shared_model::data::load_csv;
    use shared_model::ids::{Sha256, TaskId};
    use shared_model::keys::generate;
    use shared_model::model::Model;
    use shared_model::spec::ModelSpec;
    use shared_model::stats::FeatureSums;
    use shared_model::strategy::{StrategyConfig, local_update};
    use shared_model::update::{Expectations, SignedUpdate, verify};

    use super::SimFederation;
    use crate::blobs::BlobStore;
    use crate::engine::{Engine, EngineConfig, Upload};
    use crate::store::Store;

    /// One seeded federation through the live engine (SQLite, blob files, signed manifests)
    /// and through the simulator's in-memory rounds: every published blob is the same bytes.
    fn same_blobs_live_and_simulated(strategy: &str, rounds: u32) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let spec_toml = std::fs::read_to_string(root.join("data/wdbc.toml")).unwrap();
        let spec = ModelSpec::parse(&spec_toml, "wdbc.toml").unwrap();
        let all = load_csv(&root.join("data/wdbc.csv"), &spec).unwrap();
        let names: Vec<String> = (0..3).map(|i| format!("plant-{i}")).collect();
        let data: Vec<_> = (0..3)
            .map(|i| all.subset(&(0..all.len()).filter(|r| r % 3 == i).collect::<Vec<_>>()))
            .collect();
        let keys: Vec<_> = names.iter().map(|_| generate().unwrap()).collect();

        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("y.db")).unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let mut engine = Engine::new(store, blobs, generate().unwrap(), EngineConfig::default());
        for (n, k) in names.iter().zip(&keys) {
            engine.enroll(n, &k.verifying_key(), 0).unwrap();
        }
        engine.create_task("t", &spec_toml, &[], 0).unwrap();
        for (n, d) in names.iter().zip(&data) {
            let sums = FeatureSums::of_dataset(&spec, d);
            engine.submit_sums(n, "t/stats/0", &sums, 0).unwrap();
        }
        assert!(engine.tick(1).unwrap());
        let cfg = StrategyConfig::parse(strategy, &BTreeMap::new()).unwrap();
        let min = if cfg.is_relay() { 1 } else { 3 };
        engine
            .start_rounds("t", strategy, &BTreeMap::new(), min, 60_000, rounds, 2)
            .unwrap();
        let (_, v0) = engine.model("t", Some(0)).unwrap();
        let Model::Single(initial) = Model::decode(&v0, &spec, BlobRole::Initial).unwrap() else {
            panic!("v0 is one network")
        };
        let reported: Vec<(String, u64)> = names
            .iter()
            .zip(&data)
            .map(|(n, d)| (n.clone(), d.len() as u64))
            .collect();
        let mut sim =
            SimFederation::new("t", &spec, &reported, Limits::default(), initial).unwrap();
        sim.queue(&cfg, rounds, None).unwrap();

        let task = TaskId::new("t").unwrap();
        let mut now = 10;
        let mut published = 0;
        while let Some(open) = sim.open_next().unwrap() {
            now += 10;
            assert!(
                engine.tick(now).unwrap(),
                "the live round {} opens",
                open.round
            );
            let (_, base_bytes) = engine.model("t", None).unwrap();
            let base_sha = Sha256::of(&base_bytes);
            let base = sim.model().clone();
            let mut updates = Vec::new();
            for party in &open.invited {
                let i = names.iter().position(|n| n == party.as_str()).unwrap();
                let opts = cfg.train_options(&spec, open.step.0 as usize, 7 + open.round.0);
                let out =
                    local_update(&spec, strategy, party.as_str(), &base, &data[i], &opts).unwrap();
                let meta = BlobMeta::new(&spec, BlobRole::Update);
                let bytes = encode(&out.weights, &meta);
                let env = SignedUpdate::for_blob(
                    task.clone(),
                    spec.id(),
                    open.round,
                    open.step,
                    base_sha,
                    party.clone(),
                    &bytes,
                    out.samples as u64,
                    &keys[i],
                );
                let assignment = format!("t/train/{}", open.round);
                let upload = Upload {
                    party: party.as_str(),
                    party_key: &keys[i].verifying_key(),
                    assignment: &assignment,
                    envelope: &env,
                    bytes: &bytes,
                    local_metrics: None,
                    membership_audit: None,
                };
                engine.accept_upload(&upload, None, now + 1).unwrap();
                let expect = Expectations {
                    task: &task,
                    spec: &spec,
                    round: open.round,
                    step: open.step,
                    base_model: base_sha,
                    party,
                    stage: cfg.expected_stage(&base),
                };
                let v = verify(&env, &bytes, &keys[i].verifying_key(), &expect).unwrap();
                sim.accept(open.round, &v, Sha256::of(&bytes)).unwrap();
                updates.push(v);
            }
            assert!(
                engine.tick(now + 2).unwrap(),
                "the live round {} closes",
                open.round
            );
            let simulated = sim
                .close(open.round, updates, &mut shared_model::dp::seeded_rng(1))
                .unwrap()
                .expect("the round publishes")
                .encode(&spec, BlobRole::Merged);
            let (manifest, live) = engine.model("t", None).unwrap();
            assert!(!manifest.bytes.is_empty());
            assert!(
                live == simulated,
                "{strategy} round {}: the live engine published {} (sha {}), the simulator {} (sha {})",
                open.round,
                live.len(),
                Sha256::of(&live),
                simulated.len(),
                Sha256::of(&simulated)
            );
            published += 1;
        }
        let expected = if cfg.is_relay() { 3 * rounds } else { rounds };
        assert_eq!(published, expected);
    }

    #[test]
    fn fedavg_rounds_publish_the_same_bytes_live_and_in_the_simulator() {
        same_blobs_live_and_simulated("fedavg", 2);
    }

    #[test]
    fn median_rounds_publish_the_same_bytes_live_and_in_the_simulator() {
        same_blobs_live_and_simulated("median", 1);
    }

    #[test]
    fn a_transfer_relay_publishes_the_same_bytes_live_and_in_the_simulator() {
        same_blobs_live_and_simulated("transfer", 1);
    }

    #[test]
    fn a_series_relay_publishes_the_same_bytes_live_and_in_the_simulator() {
        same_blobs_live_and_simulated("series", 1);
    }
}
