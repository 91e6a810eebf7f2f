//! The close of a round: when it is due, which accepted updates are kept (re-verification,
//! each site's signed cohort requirement, a fixed point), whether the quorum is met, and the
//! transition that fails or publishes it. The merge itself is [`crate::merge`]; the shell
//! re-verifies the stored updates and hands the outcomes in.

use std::collections::BTreeMap;

use shared_model::eval::MetricStats;
use shared_model::ids::{PartyId, Sha256};
use shared_model::model::{MAX_PARTS, Model};

use crate::decide::{RoundParty, RoundRecord, TaskRecord};
use crate::state::PartyState;
use crate::transition::{Late, LeftOut, Merged, PublishedModel, Transition};

/// Whether a training round is due to close at `now`: every invited party has answered, or
/// the deadline has passed.
pub fn is_due(round: &RoundRecord, parties: &[RoundParty], now: i64) -> bool {
    parties.iter().all(|p| !p.state.is_awaited()) || now >= round.ends_ms.unwrap_or(i64::MAX)
}

/// The weights of updates in a sample-weighted merge (FedAvg, FedProx, the ensemble), given
/// as `(party, signed sample count)`: each claim capped by the rows its party reported in the
/// statistics step (`reported`) and by the task's contribution limits, no party above its share
/// of the total ([`crate::limits::Limits::weights`]). A party cannot take a merge over by
/// claiming rows it does not have. A streaming merge folds updates in with the weights of all
/// accepted ones; the close recomputes them over the kept ones ([`Closing::refold`]).
pub fn merge_weights(
    task: &TaskRecord,
    claims: &[(&PartyId, u64)],
    reported: &BTreeMap<PartyId, u64>,
) -> Vec<u64> {
    task.limits.weights(claims, reported)
}

/// One stored update after the shell re-verified it (in party order).
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The party.
    pub party: PartyId,
    /// The update's facts if it verified again, or why it did not.
    pub verdict: Result<Candidate, String>,
}

/// A re-verified update.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Its blob's sha256.
    pub blob_sha256: Sha256,
    /// Its signed sample count.
    pub sample_count: u64,
    /// Its weight in a sample-weighted merge ([`merge_weights`]): as folded in before the
    /// close, then as the close decided over the kept updates.
    pub weight: u64,
    /// Its signed cohort requirement (fewest updates it may be merged with).
    pub min_cohort: u32,
    /// Its local metrics, as JSON.
    pub local_metrics_json: Option<String>,
}

/// What the close decides before the merge.
#[derive(Clone, Debug, PartialEq)]
pub enum CloseDecision {
    /// Not yet: parties are awaited and the deadline has not passed.
    Wait,
    /// The round fails (the transition says why and records every leave-out with it).
    Fail(Box<Transition>),
    /// Merge the kept updates; then [`Closing::publish`] or [`Closing::fail`].
    Merge(Box<Closing>),
}

/// A close in progress: the updates to merge and what is recorded with the outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Closing {
    /// The task.
    pub task: TaskRecord,
    /// The round.
    pub round: RoundRecord,
    /// The kept updates, in party order.
    pub kept: Vec<(PartyId, Candidate)>,
    /// Accepted updates left out, in the order they were left out.
    pub left_out: Vec<LeftOut>,
    /// Parties still awaited, now late.
    pub late: Vec<Late>,
    /// True if the merge must be folded again from the kept updates with their weights: the
    /// cohort rule left out updates after they verified, or the weights changed (a left-out
    /// update changed the total the shares are taken of).
    pub refold: bool,
}

/// Decides the close of a training round from the re-verification outcomes; `reported` holds
/// the rows each party reported in the statistics step.
pub fn close(
    task: &TaskRecord,
    round: &RoundRecord,
    parties: &[RoundParty],
    outcomes: Vec<Outcome>,
    reported: &BTreeMap<PartyId, u64>,
    now: i64,
) -> CloseDecision {
    if !is_due(round, parties, now) {
        return CloseDecision::Wait;
    }
    // An update that no longer verifies (its party revoked, its blob changed on disk) is left
    // out, named; the quorum counts what is left.
    let mut left_out = Vec::new();
    let mut kept = Vec::new();
    for o in outcomes {
        match o.verdict {
            Ok(c) => kept.push((o.party, c)),
            Err(why) => left_out.push(LeftOut {
                party: o.party,
                reason: format!("update left out of the merge: {why}"),
            }),
        }
    }
    // Each party's signed cohort requirement (its site's fewest other parties + 1): an update
    // is merged only with at least that many updates in all — for a relay step, the relay's
    // parties. Leaving one out can break another's requirement: repeat until none.
    let relay_cohort = round
        .plan
        .relay
        .as_ref()
        .map(|r| r.parties.unwrap_or(task.parties.len()));
    let mut refold = false;
    loop {
        let cohort = relay_cohort.unwrap_or(kept.len());
        let (keep, short): (Vec<_>, Vec<_>) = kept
            .into_iter()
            .partition(|(_, c): &(PartyId, Candidate)| c.min_cohort as usize <= cohort);
        kept = keep;
        if short.is_empty() {
            break;
        }
        refold = true;
        for (party, c) in short {
            left_out.push(LeftOut {
                party,
                reason: format!(
                    "update left out of the merge: its site requires at least {} parties in the merge (policy.min_other_parties), only {cohort} would be",
                    c.min_cohort
                ),
            });
        }
    }
    // The weights over the updates kept (the shares are of their total).
    let claims: Vec<(&PartyId, u64)> = kept.iter().map(|(p, c)| (p, c.sample_count)).collect();
    let weights = merge_weights(task, &claims, reported);
    for ((_, c), w) in kept.iter_mut().zip(weights) {
        if c.weight != w {
            refold = true;
            c.weight = w;
        }
    }
    let late: Vec<Late> = parties
        .iter()
        .filter_map(|p| match &p.state {
            PartyState::Invited { .. } => Some(Late {
                party: p.party.clone(),
                reason: p.state.why_not_merged(),
            }),
            _ => None,
        })
        .collect();
    let closing = Closing {
        task: task.clone(),
        round: round.clone(),
        kept,
        left_out,
        late,
        refold,
    };
    if (closing.kept.len() as u32) < round.plan.min_parties {
        let reason = closing.quorum_failure(parties);
        return CloseDecision::Fail(Box::new(closing.fail(reason)));
    }
    CloseDecision::Merge(Box::new(closing))
}

/// A round whose base model cannot be read (its blob damaged or lost on the coordinator's
/// disk) fails with `reason`: nothing can be verified or merged against it. Every accepted
/// update is left out and every awaited party is late, each named with the reason. For a
/// queued round (never opened: `parties` is empty) it fails before it opens.
pub fn fail_without_base(
    round: &RoundRecord,
    parties: &[RoundParty],
    reason: String,
) -> Transition {
    let mut left_out = Vec::new();
    let mut late = Vec::new();
    for p in parties {
        match &p.state {
            PartyState::Accepted => left_out.push(LeftOut {
                party: p.party.clone(),
                reason: format!("update left out of the merge: {reason}"),
            }),
            PartyState::Invited { .. } => late.push(Late {
                party: p.party.clone(),
                reason: format!("not merged: {reason}"),
            }),
            _ => {}
        }
    }
    Transition::FailRound {
        task: round.task.clone(),
        round: round.round,
        reason,
        left_out,
        late,
    }
}

impl Closing {
    /// Why the quorum is not met, naming every party that is not merged.
    fn quorum_failure(&self, parties: &[RoundParty]) -> String {
        let mut others: Vec<String> = Vec::new();
        for p in parties {
            if self.kept.iter().any(|(k, _)| *k == p.party) {
                continue;
            }
            // A party left out at this close reads as rejected with its leave-out reason.
            let why = match self.left_out.iter().rev().find(|l| l.party == p.party) {
                Some(l) => l.reason.clone(),
                None => p.state.why_not_merged(),
            };
            others.push(format!("{}: {why}", p.party));
        }
        if let Some(relay) = &self.round.plan.relay
            && !parties.iter().any(|p| p.party == relay.party)
        {
            others.push(format!(
                "{}: revoked before relay step {}, which is skipped",
                relay.party, relay.step
            ));
        }
        format!(
            "quorum not met: {} of {} required updates accepted ({})",
            self.kept.len(),
            self.round.plan.min_parties,
            others.join("; ")
        )
    }

    /// The round fails with `reason`, recording the leave-outs and late parties with it.
    pub fn fail(self, reason: String) -> Transition {
        Transition::FailRound {
            task: self.task.name,
            round: self.round.round,
            reason,
            left_out: self.left_out,
            late: self.late,
        }
    }

    /// The merged local metrics of the kept updates (the manifest's metrics).
    pub fn local_metrics(&self) -> Option<MetricStats> {
        let mut metrics: Option<MetricStats> = None;
        for (_, c) in &self.kept {
            if let Some(json) = &c.local_metrics_json
                && let Ok(s) = serde_json::from_str::<MetricStats>(json)
            {
                match &mut metrics {
                    None => metrics = Some(s),
                    Some(m) => {
                        let _ = m.merge(&s);
                    }
                }
            }
        }
        metrics
    }

    /// The updates merged, as the manifest and the log name them.
    pub fn merged(&self) -> Vec<Merged> {
        self.kept
            .iter()
            .map(|(party, c)| Merged {
                party: party.clone(),
                blob_sha256: c.blob_sha256,
                sample_count: c.sample_count,
                weight: c.weight,
            })
            .collect()
    }

    /// Checks a merged model can be published; the reason it cannot otherwise.
    pub fn check_merged(&self, merged: &Model) -> Result<(), String> {
        let parts = match merged {
            Model::Single(_) => 1,
            Model::Ensemble(m) => m.len(),
            Model::Series(s) => s.len(),
        };
        if parts > MAX_PARTS {
            return Err(format!(
                "the merged {} would hold {parts} networks; a published model holds at most {MAX_PARTS}",
                merged.kind()
            ));
        }
        Ok(())
    }

    /// The round publishes `model`, recording the leave-outs, late parties and merged updates.
    pub fn publish(self, model: PublishedModel) -> Transition {
        let merged = self.merged();
        Transition::PublishRound {
            task: self.task.name,
            round: self.round.round,
            strategy: self.round.plan.strategy_name().to_string(),
            left_out: self.left_out,
            late: self.late,
            merged,
            model,
        }
    }
}
