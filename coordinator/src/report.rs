//! `coordinator report --task NAME --out DIR`: the cost/benefit numbers a plant manager asks for
//! before joining, from the operator's view of a task: per round the merged metric, who took part,
//! rejections, time and bytes; per party its contribution, what it sent, how its own update scored
//! on its holdout and how the merged model scored there (the gain). Markdown, JSON and an SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;
use shared_model::eval::Metrics;

use crate::views::{PartyStateName, RoundPhase};
use crate::views::{RoundView, TaskView};

/// Per-party totals over a task's rounds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PartySummary {
    /// Party.
    pub party: String,
    /// Rounds it was invited to.
    pub invited: u32,
    /// Accepted updates.
    pub accepted: u32,
    /// Rejected, declined or late answers.
    pub refused: u32,
    /// Rows it trained on (latest accepted update).
    pub rows: u64,
    /// Update bytes it sent.
    pub bytes_sent: u64,
    /// Headline metric of its own latest update on its holdout.
    pub own_update: Option<f64>,
    /// Headline metric of the latest model it evaluated, on its holdout.
    pub merged: Option<f64>,
}

/// What the report says, also written as report.json.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The task.
    pub task: String,
    /// Headline metric name (f1, macro_f1, mse).
    pub metric: String,
    /// Rounds published.
    pub published: u32,
    /// Rounds failed.
    pub failed: u32,
    /// Blob bytes over the network: each invited party's base model down, accepted updates up,
    /// published models down for evaluation (refused uploads are not counted).
    pub bytes_moved: u64,
    /// From the first round's start to the last publication, seconds.
    pub seconds: f64,
    /// Per party.
    pub parties: Vec<PartySummary>,
    /// The rounds as the operator sees them.
    pub rounds: Vec<RoundView>,
}

fn headline(m: &Option<Metrics>) -> Option<f64> {
    m.as_ref().map(|m| m.headline().1)
}

/// Higher is better for every headline metric but MSE.
fn gain(metric: &str, own: f64, merged: f64) -> f64 {
    if metric == "mse" {
        own - merged
    } else {
        merged - own
    }
}

/// Builds the report from the status of a task.
pub fn build(task: &TaskView, rounds: &[RoundView]) -> Report {
    let metric = rounds
        .iter()
        .filter_map(|r| r.metrics.as_ref())
        .chain(
            rounds
                .iter()
                .flat_map(|r| r.parties.iter().filter_map(|p| p.evaluation.as_ref())),
        )
        .map(|m| m.headline().0.to_string())
        .next()
        .unwrap_or_else(|| "metric".into());
    let mut parties: BTreeMap<String, PartySummary> = task
        .parties
        .iter()
        .map(|p| {
            (
                p.clone(),
                PartySummary {
                    party: p.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut bytes_moved = 0u64;
    for r in rounds {
        let base_bytes = r.base_model_bytes;
        let mut seen: Vec<&str> = Vec::new();
        for p in &r.parties {
            // A party appears once per round in its state and again for each earlier rejection.
            let s = parties
                .entry(p.party.clone())
                .or_insert_with(|| PartySummary {
                    party: p.party.clone(),
                    ..Default::default()
                });
            if !seen.contains(&p.party.as_str()) {
                seen.push(&p.party);
                s.invited += 1;
                bytes_moved += base_bytes;
            }
            match p.state {
                PartyStateName::Accepted => {
                    s.accepted += 1;
                    s.rows = p.sample_count;
                    s.bytes_sent += p.update_bytes;
                    bytes_moved += p.update_bytes;
                    if let Some(v) = headline(&p.local_metrics) {
                        s.own_update = Some(v);
                    }
                }
                PartyStateName::Invited => {}
                _ => s.refused += 1,
            }
            if let Some(v) = headline(&p.evaluation) {
                s.merged = Some(v);
            }
        }
        if r.version > 0 {
            bytes_moved += u64::from(r.evaluated_by) * r.model_bytes;
        }
    }
    let first = rounds
        .iter()
        .map(|r| r.started_unix_ms)
        .filter(|t| *t > 0)
        .min();
    let last = rounds.iter().map(|r| r.published_unix_ms).max();
    let seconds = match (first, last) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
        _ => 0.0,
    };
    Report {
        task: task.name.clone(),
        metric,
        published: rounds
            .iter()
            .filter(|r| r.phase == RoundPhase::Published)
            .count() as u32,
        failed: rounds
            .iter()
            .filter(|r| r.phase == RoundPhase::Failed)
            .count() as u32,
        bytes_moved,
        seconds,
        parties: parties.into_values().collect(),
        rounds: rounds.to_vec(),
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.4}"))
}

/// The Markdown text of a report.
pub fn markdown(task: &TaskView, r: &Report) -> String {
    let mut s = format!(
        "# Task {} — federation report\n\nSpec `{}` (id `{}`), parties: {}. {} round(s) published, {} failed; \
         {:.1} s from the first round's start to the last publication; about {} blob bytes over the network \
         (base models down, accepted updates up, published models down for evaluation).\n\n",
        r.task,
        task.spec_name,
        task.spec_id,
        task.parties.join(", "),
        r.published,
        r.failed,
        r.seconds,
        r.bytes_moved
    );
    let m = &r.metric;
    s += &format!(
        "## Rounds\n\n| round | strategy | phase | accepted / invited | {m} (merged, on the parties' holdouts) | evaluated by | training → publication | model bytes | failure |\n|---:|---|---|---:|---:|---:|---:|---:|---|\n"
    );
    for x in &r.rounds {
        let accepted = x
            .parties
            .iter()
            .filter(|p| p.state == PartyStateName::Accepted)
            .count();
        // A party is listed once for its state and again for each earlier rejection.
        let invited: std::collections::BTreeSet<&str> =
            x.parties.iter().map(|p| p.party.as_str()).collect();
        let step = match (x.options.get("party"), x.options.get("step")) {
            (Some(p), Some(st)) => format!(" (step {st}: {p})"),
            _ => String::new(),
        };
        let secs = if x.published_unix_ms > x.started_unix_ms && x.started_unix_ms > 0 {
            format!(
                "{:.1} s",
                (x.published_unix_ms - x.started_unix_ms) as f64 / 1000.0
            )
        } else {
            "—".into()
        };
        let _ = writeln!(
            s,
            "| {} | {}{step} | {} | {accepted} / {} | {} | {} | {secs} | {} | {} |",
            x.round,
            x.strategy,
            x.phase,
            invited.len(),
            match &x.metrics {
                Some(m) if m.worse_than_the_mean() => format!(
                    "{} (R² {:.3} < 0: worse than the mean)",
                    fmt(headline(&x.metrics)),
                    m.regression().map_or(0.0, |r| r.r2)
                ),
                _ => fmt(headline(&x.metrics)),
            },
            x.evaluated_by,
            x.model_bytes,
            x.failure.replace('|', "/")
        );
    }
    let better = if m == "mse" { "lower" } else { "higher" };
    s += &format!(
        "\n## Parties\n\n`own update` is the party's model after local training, `merged` the latest published \
         model, both on the party's own holdout; `gain` = merged − own ({better} {m} is better, sign adjusted so \
         that a positive gain means the federation helped this party).\n\n\
         | party | invited | accepted | refused | rows | bytes sent | {m} own update | {m} merged | gain |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for p in &r.parties {
        let g = match (p.own_update, p.merged) {
            (Some(o), Some(mm)) => format!("{:+.4}", gain(m, o, mm)),
            _ => "—".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {g} |",
            p.party,
            p.invited,
            p.accepted,
            p.refused,
            p.rows,
            p.bytes_sent,
            fmt(p.own_update),
            fmt(p.merged)
        );
    }
    let refused: Vec<String> = r
        .rounds
        .iter()
        .flat_map(|x| {
            x.parties
                .iter()
                .filter(|p| !matches!(p.state, PartyStateName::Accepted | PartyStateName::Invited))
                .map(move |p| {
                    format!(
                        "| {} | {} | {} | {} |",
                        x.round,
                        p.party,
                        p.state,
                        p.reason.replace('|', "/")
                    )
                })
        })
        .collect();
    s += "\n## Rejections, declines and late answers\n\n";
    if refused.is_empty() {
        s += "None.\n";
    } else {
        s += "| round | party | state | reason |\n|---:|---|---|---|\n";
        s += &refused.join("\n");
        s.push('\n');
    }
    s += "\n## Plot\n\n![metric per round](metric-by-round.svg)\n";
    s
}

/// Writes README.md, report.json and metric-by-round.svg into `out`.
pub fn write(out: &Path, task: &TaskView, r: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("README.md"), markdown(task, r))?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(r)?)?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![(
        "merged".into(),
        r.rounds
            .iter()
            .filter_map(|x| headline(&x.metrics).map(|v| (x.round as f64, v)))
            .collect(),
    )];
    for p in &r.parties {
        let pts: Vec<(f64, f64)> = r
            .rounds
            .iter()
            .filter_map(|x| {
                x.parties
                    .iter()
                    .find(|q| q.party == p.party)
                    .and_then(|q| headline(&q.evaluation))
                    .map(|v| (x.round as f64, v))
            })
            .collect();
        series.push((format!("{} (own holdout)", p.party), pts));
    }
    crate::plots::lines(
        &out.join("metric-by-round.svg"),
        &format!(
            "{} of the published model per round — task {}",
            r.metric, r.task
        ),
        "round",
        &r.metric,
        &series,
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::PartyRoundView;
    use shared_model::eval::BinaryMetrics;

    fn f1(v: f64) -> Option<Metrics> {
        Some(Metrics::Binary(BinaryMetrics {
            count: 10,
            accuracy: v,
            precision: v,
            recall: v,
            f1: v,
            roc_auc: v,
            log_loss: 0.1,
        }))
    }

    fn party(name: &str, state: &str, own: Option<f64>, merged: Option<f64>) -> PartyRoundView {
        PartyRoundView {
            party: name.into(),
            state: state.parse().unwrap(),
            reason: if state == "accepted" {
                String::new()
            } else {
                "late".into()
            },
            sample_count: 100,
            update_bytes: if state == "accepted" { 1000 } else { 0 },
            local_metrics: own.and_then(f1),
            membership_audit: None,
            evaluation: merged.and_then(f1),
        }
    }

    #[test]
    fn totals_bytes_and_gains_by_hand() {
        let task = TaskView {
            name: "t".into(),
            spec_id: "ab".into(),
            spec_name: "s".into(),
            parties: vec!["a".into(), "b".into()],
            latest_version: 2,
            limits_toml: String::new(),
        };
        let round = |n: u64, parties: Vec<PartyRoundView>, version: u64| RoundView {
            round: n,
            strategy: "fedavg".into(),
            phase: if version > 0 {
                RoundPhase::Published
            } else {
                RoundPhase::Failed
            },
            min_parties: 1,
            deadline_unix_ms: 0,
            parties,
            failure: String::new(),
            version,
            metrics: f1(0.9),
            evaluated_by: 2,
            options: BTreeMap::new(),
            started_unix_ms: 1_000 * n as i64,
            published_unix_ms: 1_000 * n as i64 + 500,
            model_bytes: 3000,
            base_model_bytes: if n == 1 { 2500 } else { 3000 },
            dp: None,
        };
        let rounds = vec![
            round(
                1,
                vec![
                    party("a", "accepted", Some(0.8), Some(0.9)),
                    party("b", "late", None, Some(0.85)),
                ],
                1,
            ),
            round(
                2,
                vec![
                    party("a", "accepted", Some(0.82), Some(0.95)),
                    party("b", "accepted", Some(0.7), Some(0.9)),
                ],
                2,
            ),
        ];
        let r = build(&task, &rounds);
        assert_eq!((r.published, r.failed), (2, 0));
        // round 1: 2 initial models of 2500 down, 1 update up, 2 evaluations of 3000; round 2:
        // 2 bases of 3000 down, 2 updates, 2 evaluations.
        assert_eq!(r.bytes_moved, 5000 + 1000 + 6000 + 6000 + 2000 + 6000);
        assert!((r.seconds - 1.5).abs() < 1e-9);
        let a = &r.parties[0];
        assert_eq!(
            (a.invited, a.accepted, a.refused, a.bytes_sent),
            (2, 2, 0, 2000)
        );
        assert_eq!((a.own_update, a.merged), (Some(0.82), Some(0.95)));
        let b = &r.parties[1];
        assert_eq!((b.accepted, b.refused), (1, 1));
        let md = markdown(&task, &r);
        assert!(
            md.contains("| a | 2 | 2 | 0 | 100 | 2000 | 0.8200 | 0.9500 | +0.1300 |"),
            "{md}"
        );
        assert!(md.contains("| 1 | b | late | late |"), "{md}");
        assert_eq!(gain("mse", 2.0, 1.5), 0.5);
    }
}
