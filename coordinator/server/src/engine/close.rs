//! The engine's tick: for each task, the statistics step, opening the next queued round, or
//! closing the training one. The rules decide (`yosegi_round::decide::statistics`,
//! `open_round`, `close::close`); this shell re-verifies the stored updates, runs the merge,
//! signs and stores the published model, and commits the one transition that fails or
//! publishes the round — leave-outs and late parties included, so a close that fails half-way
//! (a full disk at publication) writes nothing and is decided again at the next tick.

use shared_model::blob::BlobRole;
use shared_model::dp;
use shared_model::ids::{ModelVersion, PartyId, RoundNo, Sha256};
use shared_model::manifest::{Contributor, MANIFEST_FORMAT, Manifest};
use shared_model::model::Model;
use shared_model::spec::{DpMode, DpSpec, ModelSpec};
use shared_model::stats::FeatureSums;
use shared_model::update::{Expectations, VerifiedUpdate, verify};
use shared_model::weights::Weights;
use yosegi_round::close::{self, Candidate, CloseDecision, Outcome};
use yosegi_round::decide::{self, StatsStep, TaskRecord};
use yosegi_round::merge::{MergePath, Merger};
use yosegi_round::transition::PublishedModel;
use yosegi_round::{RoundPhase, Transition};

use super::{Engine, EngineError, Result, check_dp_clip, load_envelope};
use crate::store::{RoundRecord, UpdateRow, Version};

/// The privacy a task with DP has spent once round `round` is published.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpSpent {
    /// Published rounds up to and including this one (every one ran with DP).
    pub rounds: u64,
    /// ε of (ε, δ)-DP (`shared_model::dp::epsilon`).
    pub epsilon: f64,
    /// δ, from the spec.
    pub delta: f64,
}

/// (ε, δ) after the rounds of `rounds` numbered up to `round`. Central mode releases only the
/// noised sum of a published round; local mode releases each noised upload as it is sent, so a
/// round that failed after uploads spent budget too: count every round that closed (an upper
/// bound on any one party's uploads).
pub fn dp_spent(d: &DpSpec, rounds: &[RoundRecord], round: u64) -> DpSpent {
    let spent = |r: &&RoundRecord| match d.mode {
        DpMode::Central => r.phase == RoundPhase::Published,
        DpMode::Local => r.phase.is_final(),
    };
    let n = rounds
        .iter()
        .filter(|r| r.round.0 <= round)
        .filter(spent)
        .count() as u64;
    DpSpent {
        rounds: n,
        epsilon: dp::epsilon(n, d.noise_multiplier, d.delta),
        delta: d.delta,
    }
}

impl Engine {
    /// Moves every task forward; true if anything changed. A task that cannot move (a broken
    /// row, a failing merge) is logged with its name and does not hold up the others.
    pub fn tick(&mut self, now: i64) -> Result<bool> {
        // The coordinator's own work: no operator's name on its records.
        self.actor = None;
        let mut changed = false;
        for t in self.store.tasks()? {
            match self.tick_task(&t, now) {
                Ok(c) => changed |= c,
                Err(e) => tracing::error!(task = %t.name, error = %e, "task cannot move forward"),
            }
        }
        Ok(changed)
    }

    fn tick_task(&mut self, t: &TaskRecord, now: i64) -> Result<bool> {
        let at = self.store.version()?;
        let spec = t.spec()?;
        let name = t.name.as_str();
        let rounds = self.store.rounds(name)?;
        if t.normalization.is_none() {
            return self.statistics(at, t, &spec, &rounds, now);
        }
        if let Some(r) = rounds.iter().find(|r| r.phase == RoundPhase::Training) {
            let started = std::time::Instant::now();
            let changed = self.close_round(at, t, &spec, r, now)?;
            if changed {
                self.merge_seconds.push(started.elapsed().as_secs_f64());
            }
            return Ok(changed);
        }
        if let Some(r) = rounds.iter().find(|r| r.phase == RoundPhase::Queued) {
            let latest = self.store.latest_version(name)?;
            // A round is never opened on a base it could not verify or merge against.
            if let Some(why) = self.base_damage(&t.name, latest.0)? {
                tracing::error!(task = %name, round = r.round.0, "round failed before opening: {why}");
                self.commit(at, now, &close::fail_without_base(r, &[], why))?;
                return Ok(true);
            }
            let revoked = self.store.revoked()?;
            let decision = decide::open_round(t, r, &revoked, latest, now);
            self.commit(at, now, &decision)?;
            tracing::info!(task = %name, round = r.round.0, strategy = %r.plan.strategy_name(), base_version = latest.0, "round opened");
            return Ok(true);
        }
        Ok(false)
    }

    fn statistics(
        &mut self,
        at: Version,
        t: &TaskRecord,
        spec: &ModelSpec,
        rounds: &[RoundRecord],
        now: i64,
    ) -> Result<bool> {
        let name = t.name.as_str();
        let sums = self.store.sums(name)?;
        let reported: Vec<PartyId> = sums.iter().map(|(p, _)| p.clone()).collect();
        let stats = yosegi_round::AssignmentId::stats(&t.name);
        let mut declined = Vec::new();
        for p in &t.parties {
            if self.store.declined(&stats, p.as_str())? {
                declined.push(p.clone());
            }
        }
        let first = rounds.iter().find(|r| r.phase == RoundPhase::Queued);
        let (reported, missing) = match decide::statistics(t, &reported, &declined, first, now) {
            StatsStep::Wait => return Ok(false),
            StatsStep::FailQueued(decision) => {
                if let Transition::FailRound { round, reason, .. } = &decision {
                    tracing::warn!(task = %name, round = round.0, %reason, "round cannot run");
                }
                self.commit(at, now, &decision)?;
                return Ok(true);
            }
            StatsStep::Fix { reported, missing } => (reported, missing),
        };
        if !missing.is_empty() {
            tracing::warn!(task = %name, missing = ?missing, "statistics deadline passed; normalising with the parties that reported");
        }
        // Each party's sums count only as many rows as the task's limits let it weigh.
        let mut parts = Vec::new();
        for (party, json) in sums.iter().filter(|(p, _)| reported.contains(p)) {
            let s: FeatureSums = serde_json::from_str(json)
                .map_err(|e| EngineError::Invalid(format!("stored sums of {party}: {e}")))?;
            parts.push((party.clone(), s));
        }
        let norm = t
            .limits
            .pooled_sums(spec.stats_width(), &parts)
            .map_err(EngineError::Invalid)?
            .normalization_for(spec)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        // From here on the task's models follow the spec with the vocabularies just found.
        let spec = &spec.resolved(&norm).map_err(EngineError::Invalid)?;
        for (column, found) in &norm.vocabularies {
            tracing::info!(task = %name, column = %column, categories = found.len(), "vocabulary found in the statistics step");
        }
        let initial = Model::Single(Weights::initial(spec, &norm));
        let model = self.publish_model(
            t,
            spec,
            &initial,
            BlobRole::Initial,
            RoundNo(0),
            "initial",
            vec![],
            None,
            now,
        )?;
        let mut reported = reported;
        reported.sort();
        let decision = Transition::FixNormalization {
            task: t.name.clone(),
            normalization_json: serde_json::to_string(&norm).expect("norm"),
            reported,
            initial: model,
        };
        self.commit(at, now, &decision)?;
        tracing::info!(task = %name, parties = sums.len(), "statistics complete; initial model published as version 0");
        Ok(true)
    }

    /// Re-verifies a stored update: only a `VerifiedUpdate` reaches the strategy, also after a
    /// restart. Its party must still be enrolled and not revoked, its blob must hash to the
    /// signed digest (a damaged blob is named, without a second hash).
    fn reverify(
        &self,
        spec: &ModelSpec,
        r: &RoundRecord,
        base: (Sha256, &Model),
        u: &UpdateRow,
    ) -> std::result::Result<VerifiedUpdate, String> {
        let env = load_envelope(&u.envelope_json)
            .ok_or_else(|| "its stored envelope is unreadable".to_string())?;
        let key = match self
            .store
            .party(u.party.as_str())
            .map_err(|e| e.to_string())?
        {
            None => return Err("the party is no longer enrolled".into()),
            Some(p) if p.revoked => return Err("the party was revoked".into()),
            Some(p) => ed25519_dalek::VerifyingKey::from_bytes(&p.public_key)
                .map_err(|e| format!("its enrolled key: {e}"))?,
        };
        let bytes = self
            .blobs
            .read_unchecked(&u.blob_sha256)
            .map_err(|e| e.to_string())?;
        let expect = Expectations {
            task: &r.task,
            spec,
            round: r.round,
            step: shared_model::ids::StepNo(r.plan.step() as u64),
            base_model: base.0,
            party: &u.party,
            stage: r.plan.strategy.expected_stage(base.1),
        };
        let v = verify(&env, &bytes, &key, &expect).map_err(|e| e.to_string())?;
        check_dp_clip(spec, base.1, v.weights())?;
        Ok(v)
    }

    fn close_round(
        &mut self,
        at: Version,
        t: &TaskRecord,
        spec: &ModelSpec,
        r: &RoundRecord,
        now: i64,
    ) -> Result<bool> {
        let name = t.name.as_str();
        let parties = self.store.round_parties(name, r.round.0)?;
        if !close::is_due(r, &parties, now) {
            return Ok(false);
        }
        // A base damaged since the round opened fails the round with the reason (before, the
        // close failed at every tick and the round stayed open past its deadline).
        if let Some(why) = self.base_damage(&r.task, r.base_version.map_or(0, |v| v.0))? {
            tracing::error!(task = %name, round = r.round.0, "round failed: {why}");
            self.commit(at, now, &close::fail_without_base(r, &parties, why))?;
            return Ok(true);
        }
        let (base_sha, base) = self.base_model(spec, r)?;
        let rows = self.store.updates(name, r.round.0)?;
        // The rows each party reported in the statistics step bound its merge weight.
        let mut reported = std::collections::BTreeMap::new();
        for (party, json) in self.store.sums(name)? {
            let s: FeatureSums = serde_json::from_str(&json)
                .map_err(|e| EngineError::Invalid(format!("stored sums of {party}: {e}")))?;
            reported.insert(party, s.count);
        }
        // Streaming merges fold each update in as soon as it verifies, so the close holds one
        // update at a time (O(model) memory); the other paths hold all of them. Each is folded
        // in with its weight among all accepted updates; the close recomputes the weights over
        // the kept ones and asks for a second fold if they changed.
        let claims: Vec<(&PartyId, u64)> =
            rows.iter().map(|u| (&u.party, u.sample_count)).collect();
        let weights = close::merge_weights(t, &claims, &reported);
        let mut merger = Merger::new(MergePath::of(&r.plan, spec));
        let mut outcomes = Vec::with_capacity(rows.len());
        for (u, &weight) in rows.iter().zip(&weights) {
            let verdict = self.reverify(spec, r, (base_sha, &base), u).map(|v| {
                let c = Candidate {
                    blob_sha256: u.blob_sha256,
                    sample_count: v.sample_count(),
                    weight,
                    min_cohort: v.header().min_cohort,
                    local_metrics_json: u.local_metrics_json.clone(),
                };
                merger.add(v, weight);
                c
            });
            outcomes.push(Outcome {
                party: u.party.clone(),
                verdict,
            });
        }
        let closing = match close::close(t, r, &parties, outcomes, &reported, now) {
            CloseDecision::Wait => return Ok(false),
            CloseDecision::Fail(decision) => return self.fail(at, r, *decision, now),
            CloseDecision::Merge(closing) => closing,
        };
        for l in &closing.left_out {
            tracing::warn!(task = %name, round = r.round.0, party = %l.party, reason = %l.reason);
        }
        let kept: Vec<(PartyId, u64)> = closing
            .kept
            .iter()
            .map(|(p, c)| (p.clone(), c.weight))
            .collect();
        if closing.refold && !merger.retain(&kept) {
            // Rare: the streaming sum holds updates now left out, or weights that changed.
            // Fold the kept ones in again.
            for (u, (_, c)) in rows
                .iter()
                .filter(|u| kept.iter().any(|(p, _)| *p == u.party))
                .zip(&closing.kept)
            {
                match self.reverify(spec, r, (base_sha, &base), u) {
                    Ok(v) => merger.add(v, c.weight),
                    Err(e) => {
                        let why = format!(
                            "{} merge failed: update of {}: {e}",
                            r.plan.strategy_name(),
                            u.party
                        );
                        return self.fail(at, r, closing.fail(why), now);
                    }
                }
            }
        }
        let merged = match merger
            .finish(&r.plan, spec, &base, &mut dp::os_rng())
            .and_then(|m| closing.check_merged(&m).map(|()| m))
        {
            Ok(m) => m,
            Err(reason) => return self.fail(at, r, closing.fail(reason), now),
        };
        let contributors = closing
            .merged()
            .into_iter()
            .map(|m| Contributor {
                party: m.party,
                update_sha256: m.blob_sha256,
                // What the merge weighted it by: its claim, capped by the rows it reported and
                // the task's contribution limits.
                sample_count: m.weight,
            })
            .collect();
        let metrics = closing.local_metrics().map(|m| m.metrics());
        let model = self.publish_model(
            t,
            spec,
            &merged,
            BlobRole::Merged,
            r.round,
            r.plan.strategy_name(),
            contributors,
            metrics,
            now,
        )?;
        let version = model.version.0;
        let updates = closing.kept.len();
        self.commit(at, now, &closing.publish(model))?;
        tracing::info!(task = %name, round = r.round.0, version, updates, "merged model published");
        if let Some(d) = &spec.privacy.dp {
            let spent = dp_spent(d, &self.store.rounds(name)?, r.round.0);
            tracing::info!(task = %name, round = r.round.0, dp_rounds = spent.rounds, epsilon = spent.epsilon, delta = spent.delta, mode = dp::mode_name(d.mode), "differential privacy spent so far");
        }
        Ok(true)
    }

    fn fail(
        &mut self,
        at: Version,
        r: &RoundRecord,
        decision: Transition,
        now: i64,
    ) -> Result<bool> {
        if let Transition::FailRound { reason, .. } = &decision {
            tracing::warn!(task = %r.task, round = r.round.0, %reason, "round failed");
        }
        self.commit(at, now, &decision)?;
        Ok(true)
    }

    /// Encodes, stores and signs a model for publication (the next version after the latest).
    #[allow(clippy::too_many_arguments)]
    fn publish_model(
        &self,
        t: &TaskRecord,
        spec: &ModelSpec,
        model: &Model,
        role: BlobRole,
        round: RoundNo,
        strategy: &str,
        contributors: Vec<Contributor>,
        metrics: Option<shared_model::eval::Metrics>,
        now: i64,
    ) -> Result<PublishedModel> {
        let version = match role {
            BlobRole::Initial => 0,
            _ => self.store.latest_version(t.name.as_str())?.0 + 1,
        };
        let bytes = model.encode(spec, role);
        let sha = self.blobs.put(&bytes)?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            task: t.name.clone(),
            spec_id: spec.id(),
            version: ModelVersion(version),
            round: round.0,
            strategy: strategy.to_string(),
            blob_sha256: sha,
            blob_len: bytes.len() as u64,
            contributors,
            metrics,
            created_unix_ms: now,
            expires_unix_ms: now + self.config.manifest_ttl_ms,
        };
        let signed = manifest.sign(&self.key);
        Ok(PublishedModel {
            version: ModelVersion(version),
            round,
            blob_sha256: sha,
            manifest: signed.bytes,
            signature: signed.signature.to_bytes().to_vec(),
        })
    }
}
