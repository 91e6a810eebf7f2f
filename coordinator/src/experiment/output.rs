//! What `coordinator experiment` writes: summaries over seeds, the Markdown table, the results
//! files and plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::*;

fn named_metrics(m: &Metrics) -> Vec<(&'static str, f64)> {
    match m {
        Metrics::Binary(b) => vec![
            ("precision", b.precision),
            ("recall", b.recall),
            ("f1", b.f1),
            ("accuracy", b.accuracy),
            ("auc", b.roc_auc),
        ],
        Metrics::Multiclass(c) => vec![("accuracy", c.accuracy), ("macro_f1", c.macro_f1)],
        Metrics::Regression(r) => vec![("mse", r.mse), ("mae", r.mae), ("r2", r.r2)],
    }
}

/// Groups records by point and strategy, in first-seen order.
pub fn summarize(records: &[Record]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    let mut groups: Vec<Vec<&Record>> = Vec::new();
    for r in records {
        match out
            .iter()
            .position(|s| s.point == r.point && s.strategy == r.strategy)
        {
            Some(i) => groups[i].push(r),
            None => {
                out.push(Summary {
                    point: r.point.clone(),
                    strategy: r.strategy.clone(),
                    name: r.name.clone(),
                    metric: r.metric.clone(),
                    values: BTreeMap::new(),
                    per_round: Vec::new(),
                    runs: 0,
                    failed: 0,
                    failure: None,
                });
                groups.push(vec![r]);
            }
        }
    }
    for (s, g) in out.iter_mut().zip(&groups) {
        s.runs = g.len();
        s.failed = g.iter().filter(|r| r.failed.is_some()).count();
        s.failure = g.iter().find_map(|r| r.failed.clone());
        let names: Vec<&str> = named_metrics(&g[0].metrics)
            .iter()
            .map(|(n, _)| *n)
            .collect();
        for (k, name) in names.iter().enumerate() {
            let v: Vec<f64> = g.iter().map(|r| named_metrics(&r.metrics)[k].1).collect();
            s.values.insert(name.to_string(), mean_std(&v));
        }
        let rounds = g.iter().map(|r| r.per_round.len()).max().unwrap_or(0);
        s.per_round = (0..rounds)
            .map(|i| {
                let v: Vec<f64> = g
                    .iter()
                    .filter_map(|r| r.per_round.get(i).copied())
                    .collect();
                mean_std(&v).0
            })
            .collect();
    }
    out
}

pub(super) fn write_report(
    args: &ExperimentArgs,
    points: &[Point],
    records: &[Record],
    skipped: &[String],
    seconds: f64,
) -> anyhow::Result<()> {
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(records)?,
    )?;
    let mut csv = String::from(
        "strategy,name,seed,parties,partition,rounds,attackers,metric,value,bytes,seconds",
    );
    let metric_names: Vec<&str> = records
        .first()
        .map(|r| named_metrics(&r.metrics).iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    for n in &metric_names {
        let _ = write!(csv, ",{n}");
    }
    csv.push('\n');
    for r in records {
        let _ = write!(
            csv,
            "\"{}\",{},{},{},{},{},{},{},{},{},{:.3}",
            r.strategy,
            r.name,
            r.seed,
            r.point.parties,
            r.point.partition,
            r.point.rounds,
            r.attackers,
            r.metric,
            r.metrics.headline().1,
            r.bytes,
            r.seconds
        );
        for (_, v) in named_metrics(&r.metrics) {
            let _ = write!(csv, ",{v}");
        }
        csv.push('\n');
    }
    std::fs::write(out.join("results.csv"), csv)?;
    let summaries = summarize(records);
    let mut md = format!(
        "# Yosegi experiment\n\nCommand: `coordinator experiment {}`\n\nData `{}`, {} seed(s), {} grid point(s), attackers {} ({}); {:.0} s on this machine.\nMetrics are on rows no party trained on: mean ± std over seeds.\n\n",
        std::env::args().skip(2).collect::<Vec<_>>().join(" "),
        args.data,
        args.seeds,
        points.len(),
        args.attackers,
        args.attack,
        seconds
    );
    md += &table(&summaries);
    if !skipped.is_empty() {
        let _ = write!(
            md,
            "\nNot run (a live coordinator refuses them: Krum needs 3 parties; a published model holds at most {MAX_PARTS} networks; differential privacy: {DP_STRATEGIES}): {}.\n",
            skipped.join("; ")
        );
    }
    let plots = crate::plots::write_all(out, &summaries, points)?;
    md += "\n## Plots\n\n";
    for p in &plots {
        let _ = writeln!(md, "![{p}]({p})\n");
    }
    std::fs::write(out.join("README.md"), md)?;
    println!("{}", table(&summaries));
    println!("results written to {} ({:.0} s)", out.display(), seconds);
    Ok(())
}

/// The Markdown table of summaries: one row per point and strategy.
pub fn table(summaries: &[Summary]) -> String {
    let Some(first) = summaries.first() else {
        return "no results\n".into();
    };
    let names: Vec<&String> = first.values.keys().collect();
    let mut s = String::from("| parties | partition | rounds | strategy |");
    for n in &names {
        let _ = write!(s, " {n} |");
    }
    s += "\n|---:|---|---:|---|";
    s += &"---:|".repeat(names.len());
    s.push('\n');
    for x in summaries {
        let failed = if x.failed > 0 {
            format!(" ✗ failed in {} of {} runs", x.failed, x.runs)
        } else {
            String::new()
        };
        let _ = write!(
            s,
            "| {} | {} | {} | {}{failed} |",
            x.point.parties, x.point.partition, x.point.rounds, x.strategy
        );
        for n in &names {
            let (m, sd) = x.values.get(*n).copied().unwrap_or((f64::NAN, 0.0));
            let _ = write!(s, " {m:.4} ± {sd:.4} |");
        }
        s.push('\n');
    }
    let failures: Vec<&Summary> = summaries.iter().filter(|x| x.failed > 0).collect();
    if !failures.is_empty() {
        s += "\nA run marked ✗ had a round that failed (its metrics are of the last model it published), as a live task's round fails — e.g. when a plant's membership audit withholds its update:\n\n";
        for x in failures {
            let _ = writeln!(
                s,
                "- {} at {} parties, {}, {} rounds: {}",
                x.strategy,
                x.point.parties,
                x.point.partition,
                x.point.rounds,
                x.failure.as_deref().unwrap_or_default()
            );
        }
    }
    s
}
