//! SVG plots of experiment summaries (plotters, SVG backend: text is left to the viewer, so no
//! font files are needed): the headline metric per strategy with ±1 std error bars, per round,
//! and — for sweeps — against the number of parties and against label skew.

use std::path::Path;

use plotters::prelude::*;

use crate::results::{Point, Summary};

type Res<T> = anyhow::Result<T>;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e:?}")
}

/// Y range covering `values` with a margin.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(1e-3);
    (lo - pad, hi + pad)
}

fn headline(s: &Summary) -> (f64, f64) {
    s.values.get(&s.metric).copied().unwrap_or((f64::NAN, 0.0))
}

/// Writes every plot that fits the grid; returns the file names written.
pub fn write_all(out: &Path, summaries: &[Summary], points: &[Point]) -> Res<Vec<String>> {
    let mut written = Vec::new();
    let Some(first) = points.first() else {
        return Ok(written);
    };
    let at_first: Vec<&Summary> = summaries.iter().filter(|s| s.point == *first).collect();
    if !at_first.is_empty() {
        by_strategy(&out.join("metric-by-strategy.svg"), &at_first)?;
        written.push("metric-by-strategy.svg".to_string());
        by_round(&out.join("metric-by-round.svg"), &at_first)?;
        written.push("metric-by-round.svg".to_string());
    }
    let mut parties: Vec<usize> = points.iter().map(|p| p.parties).collect();
    parties.sort_unstable();
    parties.dedup();
    if parties.len() > 1 {
        let sel: Vec<&Summary> = summaries
            .iter()
            .filter(|s| s.point.partition == first.partition && s.point.rounds == first.rounds)
            .collect();
        let xs: Vec<(String, f64)> = parties.iter().map(|p| (p.to_string(), *p as f64)).collect();
        sweep(
            &out.join("metric-vs-parties.svg"),
            &format!("vs number of parties ({})", first.partition),
            "parties",
            &sel,
            &xs,
            |p| p.parties.to_string(),
        )?;
        written.push("metric-vs-parties.svg".to_string());
    }
    let mut partitions: Vec<String> = points.iter().map(|p| p.partition.clone()).collect();
    partitions.dedup();
    partitions.sort_by(|a, b| alpha(b).total_cmp(&alpha(a)));
    partitions.dedup();
    if partitions.len() > 1 {
        let sel: Vec<&Summary> = summaries
            .iter()
            .filter(|s| s.point.parties == first.parties && s.point.rounds == first.rounds)
            .collect();
        // Evenly spaced, from the most homogeneous (largest α) to the most skewed.
        let xs: Vec<(String, f64)> = partitions
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as f64))
            .collect();
        sweep(
            &out.join("metric-vs-heterogeneity.svg"),
            &format!(
                "vs heterogeneity ({} parties; left: homogeneous)",
                first.parties
            ),
            "partition",
            &sel,
            &xs,
            |p| p.partition.clone(),
        )?;
        written.push("metric-vs-heterogeneity.svg".to_string());
    }
    Ok(written)
}

/// The α of a `dirichlet:` / `quantity:` partition (∞ for iid).
fn alpha(p: &str) -> f64 {
    p.split_once(':')
        .and_then(|(_, a)| a.parse().ok())
        .unwrap_or(f64::INFINITY)
}

/// The headline metric per strategy, ±1 std error bars (none for single runs).
pub fn by_strategy(path: &Path, rows: &[&Summary]) -> Res<()> {
    let metric = rows[0].metric.clone();
    let (lo, hi) = range(rows.iter().flat_map(|s| {
        let (m, sd) = headline(s);
        [m - sd, m + sd]
    }));
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = rows.len();
    let labels: Vec<String> = rows.iter().map(|s| s.strategy.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            if rows.iter().all(|s| s.runs <= 1) {
                format!("{metric} per strategy")
            } else {
                format!("{metric} per strategy (mean ± 1 std over seeds)")
            },
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(150)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), lo..hi)
        .map_err(err)?;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize]
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_string()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .x_label_style(
            ("sans-serif", 13)
                .into_font()
                .transform(FontTransform::Rotate90),
        )
        .y_desc(metric.as_str())
        .disable_x_mesh()
        .draw()
        .map_err(err)?;
    for (i, s) in rows.iter().enumerate() {
        let (m, sd) = headline(s);
        let x = i as f64;
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, m - sd), (x, m + sd)],
                BLACK.stroke_width(2),
            )))
            .map_err(err)?;
        for y in [m - sd, m + sd] {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x - 0.15, y), (x + 0.15, y)],
                    BLACK.stroke_width(2),
                )))
                .map_err(err)?;
        }
        chart
            .draw_series(std::iter::once(Circle::new((x, m), 6, color.filled())))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn by_round(path: &Path, rows: &[&Summary]) -> Res<()> {
    let metric = rows[0].metric.clone();
    let rounds = rows
        .iter()
        .map(|s| s.per_round.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .map(|s| {
            // A baseline has one value: drawn flat across the rounds.
            let pts = if s.per_round.len() == 1 {
                vec![(1.0, s.per_round[0]), (rounds as f64, s.per_round[0])]
            } else {
                s.per_round
                    .iter()
                    .enumerate()
                    .map(|(r, v)| ((r + 1) as f64, *v))
                    .collect()
            };
            (
                s.strategy.split(' ').next().unwrap_or_default().to_string(),
                pts,
            )
        })
        .collect();
    lines(
        path,
        &format!("{metric} after each round (mean over seeds)"),
        "round",
        &metric,
        &series,
        false,
    )
}

fn sweep(
    path: &Path,
    title: &str,
    x_desc: &str,
    rows: &[&Summary],
    xs: &[(String, f64)],
    key: impl Fn(&Point) -> String,
) -> Res<()> {
    let metric = rows.first().map(|s| s.metric.clone()).unwrap_or_default();
    let (lo, hi) = range(rows.iter().flat_map(|s| {
        let (m, sd) = headline(s);
        [m - sd, m + sd]
    }));
    let (x0, x1) = (xs[0].1, xs[xs.len() - 1].1);
    let pad = (x1 - x0).abs().max(1.0) * 0.05;
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{metric} {title}"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x0.min(x1) - pad)..(x0.max(x1) + pad), lo..hi)
        .map_err(err)?;
    let labels: Vec<(String, f64)> = xs.to_vec();
    let fmt = move |x: &f64| {
        labels
            .iter()
            .find(|(_, v)| (v - x).abs() < 1e-6)
            .map(|(l, _)| l.clone())
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .x_labels(200)
        .x_label_formatter(&fmt)
        .x_desc(x_desc)
        .y_desc(metric.as_str())
        .disable_x_mesh()
        .draw()
        .map_err(err)?;
    // By bare name: a strategy's options may differ between points (Krum's f follows n).
    let strategies: Vec<&str> = rows.iter().map(|s| s.name.as_str()).collect();
    let mut seen = Vec::new();
    for st in strategies {
        if seen.contains(&st) {
            continue;
        }
        seen.push(st);
        let color = Palette99::pick(seen.len() - 1).to_rgba();
        let mut pts: Vec<(f64, f64)> = Vec::new();
        for (label, x) in xs {
            if let Some(s) = rows
                .iter()
                .find(|s| s.name == st && key(&s.point) == *label)
            {
                pts.push((*x, headline(s).0));
            }
        }
        let name = st.to_string();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Lines of (x, y) points, one per named series, with a legend; `first_bold` draws the first
/// series thicker (the merged model in `coordinator report`).
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    first_bold: bool,
) -> Res<()> {
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, x1) = if x0 > x1 {
        (0.0, 1.0)
    } else {
        (x0, x1.max(x0 + 1.0))
    };
    let (lo, hi) = range(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)));
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        // Integer x (rounds): one label per step, at most 20.
        .x_labels(((x1 - x0) as usize + 1).min(20))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let width = if i == 0 && first_bold { 3 } else { 2 };
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
