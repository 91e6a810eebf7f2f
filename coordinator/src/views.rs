//! What the operator CLI shows: plain serialisable views of parties, tasks and rounds, built
//! by the gRPC client from the wire and printed as tables or JSON.

use serde::Serialize;
use shared_model::eval::Metrics;

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
}

/// One party's state in a round.
#[derive(Clone, Debug, Serialize)]
pub struct PartyRoundView {
    /// Party.
    pub party: String,
    /// invited | accepted | rejected | declined | late
    pub state: String,
    /// Why (rejected, declined, late).
    pub reason: String,
    /// Rows trained on, for accepted updates.
    pub sample_count: u64,
}

/// A round.
#[derive(Clone, Debug, Serialize)]
pub struct RoundView {
    /// Number.
    pub round: u64,
    /// Strategy.
    pub strategy: String,
    /// queued | training | published | failed
    pub phase: String,
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
}

impl RoundView {
    /// True once the round can no longer change.
    pub fn is_final(&self) -> bool {
        matches!(self.phase.as_str(), "published" | "failed")
    }
}

/// Prints rounds as a table.
pub fn print_rounds(task: &str, rounds: &[RoundView]) {
    println!("task {task}");
    if rounds.is_empty() {
        println!("  no rounds yet");
    }
    for r in rounds {
        let accepted = r.parties.iter().filter(|p| p.state == "accepted").count();
        let metric = r
            .metrics
            .as_ref()
            .map(|m| {
                let (name, v) = m.headline();
                format!("  {name} {v:.4}")
            })
            .unwrap_or_default();
        println!(
            "round {:>3}  {:<8} {:<10} {}/{} accepted (quorum {}){}{}",
            r.round,
            r.strategy,
            r.phase,
            accepted,
            r.parties.len(),
            r.min_parties,
            if r.version > 0 {
                format!("  → version {}", r.version)
            } else {
                String::new()
            },
            metric
        );
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
            println!("    {:<16} {:<9}{samples}{extra}", p.party, p.state);
        }
        if !r.failure.is_empty() {
            println!("    failed: {}", r.failure);
        }
    }
}
