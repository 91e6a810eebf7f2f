//! The invariants the simulation checks after every step: phases only move forward, an accepted
//! update is never lost or replaced, a published model is exactly the merge of the accepted,
//! non-left-out updates, every accepted update is merged or left out, a failed round names
//! why, no round trains past its deadline after a tick, and the log has no duplicate record.

use std::collections::BTreeSet;

use shared_model::ids::PartyId;
use yosegi_round::close::Candidate;
use yosegi_round::{PartyState, RoundPhase};

use super::{Sim, model_of};

impl Sim {
    /// The invariants, after every step.
    pub(super) fn check(&mut self, after_clean_tick: bool) -> Result<(), String> {
        let e = self.entry().clone();
        for r in &e.rounds {
            let n = r.record.round;
            let phase = r.record.phase;
            if let Some(before) = self.phases.insert(n, phase)
                && phase < before
            {
                return Err(format!("round {n} moved back from {before} to {phase}"));
            }
            // An accepted update is never lost (nor replaced).
            for ((round, party), sha) in &self.accepted {
                if *round == n && r.updates.get(party).map(|u| u.blob_sha256) != Some(*sha) {
                    return Err(format!(
                        "the accepted update of {party} in round {n} was lost"
                    ));
                }
            }
            for (p, u) in &r.updates {
                self.accepted.insert((n, p.clone()), u.blob_sha256);
            }
            if phase == RoundPhase::Failed && r.record.failure.as_deref().is_none_or(str::is_empty)
            {
                return Err(format!("round {n} failed without a reason"));
            }
            if phase == RoundPhase::Published {
                // The published model is exactly the merge of the accepted, non-left-out updates.
                let kept: Vec<(PartyId, Candidate)> = r
                    .parties
                    .iter()
                    .filter(|p| p.state == PartyState::Accepted)
                    .map(|p| {
                        let u = &r.updates[&p.party];
                        (
                            p.party.clone(),
                            Candidate {
                                blob_sha256: u.blob_sha256,
                                sample_count: u.sample_count,
                                weight: u.sample_count,
                                min_cohort: 0,
                                local_metrics_json: None,
                            },
                        )
                    })
                    .collect();
                let v = r
                    .record
                    .version
                    .ok_or("a published round without a version")?;
                let m = e
                    .models
                    .iter()
                    .find(|m| m.version == v)
                    .ok_or("published version missing")?;
                if m.blob_sha256 != model_of(v.0, n, &kept).blob_sha256 {
                    return Err(format!(
                        "round {n} published a merge of other updates than it kept"
                    ));
                }
                // Every accepted update is merged or left out, never both, never neither.
                for p in r.updates.keys() {
                    let state = &r
                        .parties
                        .iter()
                        .find(|x| x.party == *p)
                        .ok_or("an update of a stranger")?
                        .state;
                    if !matches!(state, PartyState::Accepted | PartyState::Rejected { .. }) {
                        return Err(format!(
                            "the update of {p} in round {n} is neither merged nor left out: {state:?}"
                        ));
                    }
                }
            }
            if after_clean_tick
                && phase == RoundPhase::Training
                && self.now >= r.record.ends_ms.unwrap_or(i64::MAX)
            {
                return Err(format!(
                    "round {n} is still training past its deadline after a tick"
                ));
            }
        }
        // No duplicate records of what happens once.
        let mut once = BTreeSet::new();
        for rec in &self.fed.log {
            if matches!(
                rec.kind,
                "round_opened"
                    | "round_failed"
                    | "round_merged"
                    | "update_accepted"
                    | "party_left_out"
                    | "round_queued"
                    | "normalization_fixed"
            ) && !once.insert((rec.kind, rec.round, rec.party.clone()))
            {
                return Err(format!(
                    "duplicate {} record for round {:?} party {:?}",
                    rec.kind, rec.round, rec.party
                ));
            }
        }
        Ok(())
    }
}
