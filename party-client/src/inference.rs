//! Using a model at the plant, with no coordinator: `predict` writes predictions for the site's
//! new rows, `evaluate` scores a model on labelled local rows. Any published model works — a
//! single network, an Average Ensemble or a Series Network — and any blob role (a published model,
//! a local update, the initial model). Feature columns are found by name and the model applies the
//! normalisation it carries, as in training. Bad rows stop the run with their line and column.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use shared_model::blob::BlobRole;
use shared_model::data::{load, read_encoded};
use shared_model::eval::Metrics;
use shared_model::manifest::{Manifest, SignedManifest};
use shared_model::model::Model;
use shared_model::network::CpuBackend;
use shared_model::spec::{ModelSpec, TaskKind};

/// Reads and strictly decodes a model blob of `spec` (any kind, any role). Returns the spec the
/// model follows — `spec` with the vocabularies its task found, when it discovers some — with it.
pub fn load_model(spec: &ModelSpec, path: &Path) -> anyhow::Result<(ModelSpec, Model)> {
    decode_model(spec, path, &read_model(spec, path)?)
}

/// Reads a model file, refusing one larger than the spec's largest model before reading it.
pub fn read_model(spec: &ModelSpec, path: &Path) -> anyhow::Result<Vec<u8>> {
    let cap = shared_model::model::max_model_blob_bytes(spec);
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= cap,
        "{}: {len} bytes, more than the largest model of spec {} ({cap} bytes)",
        path.display(),
        spec.id().0.short()
    );
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Strictly decodes model bytes read from `path` (named in errors), with the spec they follow
/// ([`load_model`]).
pub fn decode_model(
    spec: &ModelSpec,
    path: &Path,
    bytes: &[u8],
) -> anyhow::Result<(ModelSpec, Model)> {
    let spec = shared_model::blob::spec_for(bytes, spec, shared_model::model::model_limits(spec))
        .map_err(|e| {
        anyhow::anyhow!(
            "{}: not a model of spec {}: {e}",
            path.display(),
            spec.id().0.short()
        )
    })?;
    let mut first_error = None;
    for role in [BlobRole::Merged, BlobRole::Update, BlobRole::Initial] {
        match Model::decode(bytes, &spec, role) {
            Ok(m) => return Ok((spec, m)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(anyhow::anyhow!(
        "{}: not a model of spec {}: {}",
        path.display(),
        spec.id().0.short(),
        first_error.expect("three attempts")
    ))
}

/// Checks a model file against its signed manifest (as `coordinator model pull` writes it) and
/// the coordinator's public key: the signature, that the manifest is for `spec`, and that the
/// file is exactly the blob it names. Returns the manifest and the bytes it checked — decode
/// those, not a second read of the file. Expiry is the caller's to report (a kept model may be
/// old and still authentic).
pub fn verify_manifest(
    spec: &ModelSpec,
    model: &Path,
    manifest: &Path,
    coordinator_key: &Path,
) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let key = shared_model::keys::read_public(coordinator_key)?;
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let signed = SignedManifest::from_file_json(&text, &manifest.display().to_string())?;
    let m = signed.verify_signature(&key).with_context(|| {
        format!(
            "{}: not signed by the coordinator key in {}",
            manifest.display(),
            coordinator_key.display()
        )
    })?;
    anyhow::ensure!(
        m.spec_id == spec.id(),
        "{} is for spec {} (task {}), not the given spec {}",
        manifest.display(),
        m.spec_id.0.short(),
        m.task,
        spec.id().0.short()
    );
    let bytes = read_model(spec, model)?;
    m.check_blob(&bytes).with_context(|| {
        format!(
            "{} is not the model {} names",
            model.display(),
            manifest.display()
        )
    })?;
    Ok((m, bytes))
}

/// Rows predicted per batch: bounds the network's activations whatever the file's size.
const PREDICT_BATCH: usize = 65_536;

/// Predicts every row of `data` and writes `out` as CSV: the `id_column` (if given), then
/// for classification `predicted_class` (its name where the spec names classes), `probability`
/// (of the predicted class) and one `probability_<class>` per class (for binary tasks only the
/// positive class's, `probability_1` when unnamed), or `prediction` for regression. Blank cells
/// are filled as the spec declares (a `drop-row` column's with the mean: every row is
/// predicted) and values outside a column's categories count as "other"; both are said on
/// stderr. Returns the row count.
pub fn predict_csv(
    spec: &ModelSpec,
    model: &Model,
    data: &Path,
    id_column: Option<&str>,
    out: &Path,
) -> anyhow::Result<usize> {
    let (table, report) = read_encoded(data, spec, true, id_column)?;
    for line in report.lines() {
        eprintln!("warning: {}: {line}", data.display());
    }
    let rows = table.offsets.len();
    let width = spec.input_width();
    let mut preds = Vec::with_capacity(rows * spec.task.kind.output_width());
    for batch in table.features.chunks(PREDICT_BATCH * width.max(1)) {
        preds.extend(model.predict(spec, batch, CpuBackend::default()));
    }
    let mut csv = String::with_capacity(rows * 32);
    if let Some(id) = id_column {
        let _ = write!(csv, "{},", quote(id));
    }
    let k = spec.task.kind.output_width();
    let names: Vec<String> = (0..k.max(2)).map(|c| quote(&spec.class_name(c))).collect();
    match spec.task.kind {
        TaskKind::Binary => {
            let _ = writeln!(
                csv,
                "predicted_class,probability,{}",
                quote(&format!("probability_{}", spec.class_name(1)))
            );
        }
        TaskKind::Multiclass { .. } => {
            csv += "predicted_class,probability";
            for c in 0..k {
                let _ = write!(
                    csv,
                    ",{}",
                    quote(&format!("probability_{}", spec.class_name(c)))
                );
            }
            csv += "\n";
        }
        TaskKind::Regression => csv += "prediction\n",
    }
    for (i, p) in preds.chunks_exact(k).enumerate() {
        if id_column.is_some() {
            let _ = write!(csv, "{},", quote(&table.targets[i]));
        }
        match spec.task.kind {
            TaskKind::Binary => {
                let class = usize::from(p[0] >= 0.5);
                let prob = if class == 1 { p[0] } else { 1.0 - p[0] };
                let _ = writeln!(csv, "{},{prob},{}", names[class], p[0]);
            }
            TaskKind::Multiclass { .. } => {
                let (class, prob) = p
                    .iter()
                    .copied()
                    .enumerate()
                    .fold((0, f32::MIN), |b, (c, v)| if v > b.1 { (c, v) } else { b });
                let _ = write!(csv, "{},{prob}", names[class]);
                for v in p {
                    let _ = write!(csv, ",{v}");
                }
                csv += "\n";
            }
            TaskKind::Regression => {
                let _ = writeln!(csv, "{}", p[0]);
            }
        }
    }
    std::fs::write(out, csv).with_context(|| format!("writing {}", out.display()))?;
    Ok(rows)
}

/// Quotes a CSV field when it needs it.
fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The task kind's metrics of `model` on labelled rows (every row of `data`).
pub fn evaluate_csv(spec: &ModelSpec, model: &Model, data: &Path) -> anyhow::Result<Metrics> {
    let (ds, report) = load(data, spec)?;
    if !report.is_clean() {
        eprintln!("{}: {report}", data.display());
    }
    anyhow::ensure!(!ds.is_empty(), "{}: no rows to evaluate", data.display());
    Ok(model.evaluate(spec, &ds, CpuBackend::default()))
}
