//! The text inputs' fuzz targets: a site's CSV (an accepted one is well-formed) and a model
//! spec (an accepted one survives its own `to_toml`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shared_model::blob::{self, BlobMeta, BlobRole};
use shared_model::data::load_csv;
use shared_model::spec::{MAX_PARAMETERS, ModelSpec, TaskKind};
use shared_model::stats::Normalization;
use shared_model::weights::Weights;

use crate::fixtures;
use crate::mutate::{mutate_bytes, random_bytes};
use crate::run;

#[test]
fn fuzz_site_csvs() {
    let specs: Vec<ModelSpec> = fixtures::spec_texts()[..3]
        .iter()
        .map(|t| ModelSpec::parse(t, "<fuzz>").unwrap())
        .collect();
    let corpus: Vec<Vec<u8>> = fixtures::csv_texts()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.csv");
    run(
        "csv",
        |rng| {
            let kind = rng.random_range(0..specs.len());
            if rng.random_bool(0.1) {
                return (random_bytes(rng, 256), kind);
            }
            let mut v = corpus[rng.random_range(0..corpus.len())].clone();
            mutate_bytes(rng, &mut v, &corpus);
            (v, kind)
        },
        |bytes, &kind| {
            let spec = &specs[kind];
            std::fs::write(&path, bytes).unwrap();
            match load_csv(&path, spec) {
                Ok(ds) => {
                    let ok_targets = ds.targets.iter().all(|&t| match spec.task.kind {
                        TaskKind::Binary => t == 0.0 || t == 1.0,
                        TaskKind::Multiclass { classes } => {
                            t.fract() == 0.0 && t >= 0.0 && (t as usize) < classes
                        }
                        TaskKind::Regression => t.is_finite(),
                    });
                    if ds.is_empty()
                        || ds.width != 3
                        || ds.features.len() != 3 * ds.len()
                        || ds.features.iter().any(|v| !v.is_finite())
                        || !ok_targets
                    {
                        return Err(format!("accepted a malformed dataset {ds:?}"));
                    }
                    Ok(())
                }
                Err(e) => {
                    let msg = e.to_string();
                    if !msg.starts_with(&path.display().to_string()) {
                        return Err(format!("error does not name the file: {msg}"));
                    }
                    let lines = 1 + bytes.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
                    if let Some(rest) = msg.split(": line ").nth(1) {
                        let n: usize = rest
                            .split(':')
                            .next()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| format!("unreadable line number in {msg}"))?;
                        if n == 0 || n > lines {
                            return Err(format!("line {n} of a {lines}-line file: {msg}"));
                        }
                    }
                    Ok(())
                }
            }
        },
    );
}

/// Replaces one number in a spec text with an odd one.
fn mutate_number(rng: &mut ChaCha8Rng, text: &[u8]) -> Vec<u8> {
    let starts: Vec<usize> = (0..text.len())
        .filter(|&i| text[i].is_ascii_digit() && (i == 0 || !text[i - 1].is_ascii_alphanumeric()))
        .collect();
    if starts.is_empty() {
        return text.to_vec();
    }
    let a = starts[rng.random_range(0..starts.len())];
    let b = a + text[a..]
        .iter()
        .take_while(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'-' | b'_'))
        .count();
    let odd = [
        "0",
        "1",
        "-1",
        "3",
        "2",
        "10000",
        "10001",
        "1048576",
        "1048577",
        "100000",
        "0.999999",
        "1e-300",
        "5e-324",
        "1e308",
        "nan",
        "inf",
        "-0.0",
        "9223372036854775807",
        "18446744073709551615",
        "1.0",
    ];
    let mut out = text[..a].to_vec();
    out.extend_from_slice(odd[rng.random_range(0..odd.len())].as_bytes());
    out.extend_from_slice(&text[b..]);
    out
}

#[test]
fn fuzz_model_specs() {
    let corpus: Vec<Vec<u8>> = fixtures::spec_texts()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    run(
        "spec",
        |rng| {
            let source = &corpus[rng.random_range(0..corpus.len())];
            let v = match rng.random_range(0..10) {
                0 => random_bytes(rng, 512),
                1..=4 => {
                    let mut v = mutate_number(rng, source);
                    if rng.random_bool(0.3) {
                        v = mutate_number(rng, &v);
                    }
                    v
                }
                _ => {
                    let mut v = source.clone();
                    mutate_bytes(rng, &mut v, &corpus);
                    v
                }
            };
            (v, ())
        },
        |bytes, ()| {
            let text = String::from_utf8_lossy(bytes);
            let Ok(spec) = ModelSpec::parse(&text, "<fuzz>") else {
                return Ok(());
            };
            let _ = (
                spec.to_string(),
                spec.max_blob_bytes(),
                spec.max_header_bytes(),
            );
            if spec.parameter_count() > MAX_PARAMETERS {
                return Err(format!("accepted {} parameters", spec.parameter_count()));
            }
            match ModelSpec::parse(&spec.to_toml(), "<to_toml>") {
                Ok(back) if back == spec && back.id() == spec.id() => {}
                Ok(back) => return Err(format!("to_toml changed the spec: {back:?}")),
                Err(e) => return Err(format!("to_toml does not parse back: {e}")),
            }
            let d = spec.input_width();
            if spec.parameter_count() <= 20_000 && d <= 1_000 {
                let w = Weights::initial(&spec, &Normalization::identity(d));
                let meta = BlobMeta::new(&spec, BlobRole::Initial);
                if blob::decode(&blob::encode(&w, &meta), &spec, BlobRole::Initial) != Ok(w) {
                    return Err("the initial model does not round-trip its blob".into());
                }
            }
            Ok(())
        },
    );
}
