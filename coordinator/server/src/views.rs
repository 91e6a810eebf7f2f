//! What the operator CLI shows: plain serialisable views of parties, tasks and rounds, built
//! by the gRPC client from the wire and printed as tables or JSON.

use serde::Serialize;
use shared_model::eval::Metrics;
pub use yosegi_round::RoundPhase;
pub use yosegi_round::state::PartyStateName;

/// An enrolled party.
#[derive(Clone, Debug, Serialize)]
pub struct PartyView {
    /// Name.
    pub name: String,
    /// Key fingerprint.
    pub fingerprint: String,
    /// Revoked?
    pub revoked: bool,
    /// Last authenticated call (Unix ms, 0 = never).
    pub last_seen_unix_ms: i64,
    /// The protocol of its last call since the coordinator started (0 = none since).
    pub protocol: u32,
    /// The release that call named.
    pub release: String,
}

/// A task.
#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    /// Name.
    pub name: String,
    /// Spec id.
    pub spec_id: String,
    /// Spec name.
    pub spec_name: String,
    /// Parties.
    pub parties: Vec<String>,
    /// Latest published version.
    pub latest_version: u64,
    /// Contribution limits (TOML, every default written out).
    pub limits_toml: String,
}

/// Statistics or evaluation work a party declined (training declines are in the rounds).
#[derive(Clone, Debug, Serialize)]
pub struct DeclineView {
    /// The party.
    pub party: String,
    /// The assignment: `task/stats/0` or `task/evaluate/VERSION`.
    pub assignment: String,
    /// The party's reason.
    pub reason: String,
    /// When.
    pub at_unix_ms: i64,
}

/// Prints declined work under the round table.
pub fn print_declines(declines: &[DeclineView]) {
    if declines.is_empty() {
        return;
    }
    println!("declined work:");
    for d in declines {
        let what = match d.assignment.split('/').nth(1) {
            Some("stats") => "the statistics step".to_string(),
            Some("evaluate") => format!(
                "evaluating version {}",
                d.assignment.rsplit('/').next().unwrap_or("?")
            ),
            _ => d.assignment.clone(),
        };
        println!("  {} declined {what}: {}", d.party, d.reason);
    }
}

/// One party's state in a round.
#[derive(Clone, Debug, Serialize)]
pub struct PartyRoundView {
    /// Party.
    pub party: String,
    /// Its state (invited, accepted, rejected, declined or late).
    pub state: PartyStateName,
    /// Why (rejected, declined, late).
    pub reason: String,
    /// Rows trained on, for accepted updates.
    pub sample_count: u64,
    /// Bytes of the accepted update.
    pub update_bytes: u64,
    /// The party's metrics of its own update on its holdout.
    pub local_metrics: Option<Metrics>,
    /// The party's membership audit of its accepted update.
    pub membership_audit: Option<shared_model::membership::MembershipAudit>,
    /// The party's metrics of the round's published model on its holdout.
    pub evaluation: Option<Metrics>,
}

/// A round.
#[derive(Clone, Debug, Serialize)]
pub struct RoundView {
    /// Number.
    pub round: u64,
    /// Strategy.
    pub strategy: String,
    /// Its phase.
    pub phase: RoundPhase,
    /// Quorum.
    pub min_parties: u32,
    /// Deadline (Unix ms, 0 = not started).
    pub deadline_unix_ms: i64,
    /// Parties.
    pub parties: Vec<PartyRoundView>,
    /// Why it failed.
    pub failure: String,
    /// Published version (0 = none).
    pub version: u64,
    /// Merged metrics of the published model on the parties' holdouts.
    pub metrics: Option<Metrics>,
    /// Parties whose evaluations `metrics` merges.
    pub evaluated_by: u32,
    /// Stored options (strategy options; relay party/step/steps/parties).
    pub options: std::collections::BTreeMap<String, String>,
    /// Round start (Unix ms, 0 = not started).
    pub started_unix_ms: i64,
    /// Publication time (Unix ms, 0 = not published).
    pub published_unix_ms: i64,
    /// Published blob size.
    pub model_bytes: u64,
    /// Size of the model the round started from.
    pub base_model_bytes: u64,
    /// Differential privacy the task has spent once this round published (DP tasks only).
    pub dp: Option<DpView>,
}

/// The (ε, δ) a task with differential privacy has spent after a published round.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct DpView {
    /// ε of (ε, δ)-DP (zCDP accounting, docs/PRIVACY.md).
    pub epsilon: f64,
    /// δ, from the spec.
    pub delta: f64,
    /// Published DP rounds counted.
    pub rounds: u64,
}

impl RoundView {
    /// True once the round can no longer change.
    pub fn is_final(&self) -> bool {
        self.phase.is_final()
    }
}

/// Prints rounds as a table.
pub fn print_rounds(task: &str, rounds: &[RoundView]) {
    println!("task {task}");
    if rounds.is_empty() {
        println!("  no rounds yet");
    }
    for r in rounds {
        let accepted = r
            .parties
            .iter()
            .filter(|p| p.state == PartyStateName::Accepted)
            .count();
        // A party is listed once for its state and again for each earlier rejection.
        let invited = r
            .parties
            .iter()
            .map(|p| p.party.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let metric = r
            .metrics
            .as_ref()
            .map(|m| format!("  {} (evaluated by {})", m.summary(), r.evaluated_by))
            .unwrap_or_default();
        let strategy = match (r.options.get("step"), r.options.get("steps")) {
            (Some(step), Some(steps)) => {
                let step: u64 = step.parse().unwrap_or(0);
                format!("{} step {}/{steps}", r.strategy, step + 1)
            }
            _ => r.strategy.clone(),
        };
        println!(
            "round {:>3}  {:<20} {:<10} {}/{} accepted (quorum {}){}{}",
            r.round,
            strategy,
            r.phase,
            accepted,
            invited,
            r.min_parties,
            if r.version > 0 {
                format!("  → version {}", r.version)
            } else {
                String::new()
            },
            metric
        );
        if let Some(dp) = &r.dp {
            println!(
                "    privacy spent: ε = {:.3}, δ = {:e} after {} DP round(s)",
                dp.epsilon, dp.delta, dp.rounds
            );
        }
        for p in &r.parties {
            let extra = if p.reason.is_empty() {
                String::new()
            } else {
                format!("  {}", p.reason)
            };
            let samples = if p.sample_count > 0 {
                format!(" ({} rows)", p.sample_count)
            } else {
                String::new()
            };
            let audit = p
                .membership_audit
                .as_ref()
                .map(|a| {
                    format!(
                        "  membership audit: advantage {:.2}, AUC {:.2}",
                        a.advantage, a.auc
                    )
                })
                .unwrap_or_default();
            println!("    {:<16} {:<9}{samples}{audit}{extra}", p.party, p.state);
        }
        if !r.failure.is_empty() {
            println!("    failed: {}", r.failure);
        }
    }
}
