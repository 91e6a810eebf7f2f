//! `party-client predict` throughput on 1M rows: read the CSV (30 WDBC feature columns and a row
//! id), predict with the model, write the predictions CSV — the whole command's work, for a
//! single network and for a 3-member Average Ensemble.
//!
//! Run: `cargo bench --workspace --bench predict`. The 1M-row input (~0.2 GB) is written to a
//! temp dir once per run. Numbers are recorded in docs/BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use party_client::inference::predict_csv;
use rand::{Rng, SeedableRng};
use shared_model::data::load_csv;
use shared_model::model::{Member, Model};
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use shared_model::weights::Weights;

const ROWS: usize = 1_000_000;

fn bench_predict(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec = ModelSpec::from_file(&root.join("data/wdbc.toml")).unwrap();
    let wdbc = load_csv(&root.join("data/wdbc.csv"), &spec).unwrap();
    let width = spec.input_width();
    let norm = FeatureSums::of_rows(&wdbc.features, width)
        .normalization()
        .unwrap();

    // 1M rows: WDBC rows with ±5 % jitter, an id column first.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut text = String::with_capacity(ROWS * 220);
    text += "row_id,";
    text += &spec.task.features.join(",");
    text.push('\n');
    let n = wdbc.len();
    for i in 0..ROWS {
        let src = &wdbc.features[(i % n) * width..(i % n + 1) * width];
        let _ = write!(text, "r{i}");
        for v in src {
            let _ = write!(text, ",{:.5}", v * rng.random_range(0.95f32..1.05));
        }
        text.push('\n');
    }
    std::fs::write(&input, &text).unwrap();
    let bytes = text.len() as u64;
    drop(text);
    let out = dir.path().join("predictions.csv");

    let single = Model::Single(Weights::initial(&spec, &norm));
    let ensemble = Model::Ensemble(
        (0..3)
            .map(|k| {
                let mut s = spec.clone();
                s.training.seed += k;
                Member {
                    party: format!("plant-{k}"),
                    weight: 1.0,
                    weights: Weights::initial(&s, &norm),
                }
            })
            .collect(),
    );

    let mut g = c.benchmark_group("predict_1m_rows");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(60))
        .throughput(Throughput::Elements(ROWS as u64));
    eprintln!("input: {ROWS} rows, {:.1} MB", bytes as f64 / 1e6);
    for (name, model) in [("single", &single), ("ensemble3", &ensemble)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let rows = predict_csv(&spec, model, &input, Some("row_id"), &out).unwrap();
                assert_eq!(rows, ROWS);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_predict);
criterion_main!(benches);
