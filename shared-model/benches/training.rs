//! Local training throughput: samples per second for one epoch of (a) the WDBC spec on the
//! bundled data and (b) a ~1M-parameter MLP on the same rows, on each CPU backend built in
//! (burn-ndarray always; flex with `--features flex`).
//!
//! Run: `cargo bench -p shared-model --bench training` (add `--features flex` for flex).
//! Numbers are recorded in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shared_model::data::load_csv;
use shared_model::network::CpuBackend;
use shared_model::spec::ModelSpec;
use shared_model::stats::FeatureSums;
use shared_model::train::{TrainOptions, train};
use shared_model::weights::Weights;

fn backends() -> Vec<(&'static str, CpuBackend)> {
    #[allow(unused_mut)]
    let mut v = vec![("ndarray", CpuBackend::NdArray)];
    #[cfg(feature = "flex")]
    v.push(("flex", CpuBackend::Flex));
    v
}

fn bench_epoch(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wdbc = ModelSpec::from_file(&root.join("data/wdbc.toml")).unwrap();
    let data = load_csv(&root.join("data/wdbc.csv"), &wdbc).unwrap();
    let norm = FeatureSums::of_rows(&data.features, 30)
        .normalization()
        .unwrap();
    let big_text = std::fs::read_to_string(root.join("data/wdbc.toml"))
        .unwrap()
        .replace("hidden = [16, 8]", "hidden = [1024, 896, 64]");
    let big = ModelSpec::parse(&big_text, "wdbc-1m").unwrap();
    assert!(
        big.parameter_count() >= 1_000_000,
        "{}",
        big.parameter_count()
    );

    let mut group = c.benchmark_group("train_one_epoch");
    group.sample_size(10);
    group.throughput(Throughput::Elements(data.len() as u64));
    for (spec, label) in [(&wdbc, "wdbc_1k_params"), (&big, "mlp_1m_params")] {
        let start = Weights::initial(spec, &norm);
        for (name, backend) in backends() {
            let opts = TrainOptions {
                epochs: 1,
                backend,
                ..TrainOptions::from_spec(spec, 1)
            };
            group.bench_function(format!("{label}/{name}"), |b| {
                b.iter(|| black_box(train(spec, &start, &data, &opts).unwrap()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_epoch);
criterion_main!(benches);
