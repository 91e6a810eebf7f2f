//! Records a release's compatibility fixtures (docs/COMPATIBILITY.md): a coordinator and three
//! WDBC plants run the statistics step, one FedAvg round and the evaluation over real gRPC
//! while the server records every call's bytes; then the coordinator's data dir, each plant's
//! key, rows and state dir, and the recording are copied to `OUT_DIR`. Later releases replay
//! them (`tests/tests/compat.rs`). Run at each release, before the wire changes:
//!
//! ```text
//! cargo run -p yosegi-tests --bin record-release -- tests/fixtures/release-X.Y.Z
//! ```
//!
//! Every key in the fixture is a throw-away test key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use coordinator::grpc::ServeConfig;
use coordinator::local::LocalFederation;
use yosegi_tests::sandbox::wdbc_split;

/// The plants, as in the compose demo.
const PLANTS: [&str; 3] = ["plant-a", "plant-b", "plant-c"];

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: record-release OUT_DIR (e.g. tests/fixtures/release-0.1.0)")?,
    );
    anyhow::ensure!(
        !out.exists(),
        "{} exists: a release's fixtures are recorded once",
        out.display()
    );
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let root = tempfile::tempdir()?;
    let config = ServeConfig {
        tick: Duration::from_millis(50),
        grace: Duration::from_secs(2),
        // Manifests that outlive the fixture: a replay years later must not find them expired.
        manifest_ttl: Duration::from_secs(100 * 365 * 86_400),
        record_wire: Some(out.join("wire.jsonl")),
        ..Default::default()
    };
    let mut fed = LocalFederation::start(root.path(), config).await?;
    let (spec, _holdout, slices) = wdbc_split(3);
    let mut op = fed.operator().await?;
    let mut files = Vec::new();
    for (name, rows) in PLANTS.iter().zip(&slices) {
        let f = fed.party_files(name, &spec, rows)?;
        op.enroll(name, &shared_model::keys::read_public(&f.public_key)?)
            .await?;
        files.push(f);
    }
    let pinned = fed.coordinator_pub();
    for f in &files {
        fed.start_party(f, &pinned)?;
    }
    let spec_toml = std::fs::read_to_string(yosegi_tests::data("wdbc.toml"))?;
    op.create_task("wdbc", &spec_toml, &[]).await?;
    op.start_round("wdbc", "fedavg", Default::default(), 3, 120_000, 1)
        .await?;
    fed.wait_for("wdbc", Duration::from_secs(300), |rs| {
        rs.len() == 1 && rs[0].phase == "published" && rs[0].evaluated_by == PLANTS.len() as u32
    })
    .await?;
    drop(op);
    fed.stop().await?;

    copy_dir(
        &root.path().join("coordinator"),
        &out.join("coordinator-data"),
    )?;
    for f in &files {
        let to = out.join("plants").join(&f.name);
        std::fs::create_dir_all(&to)?;
        for file in [&f.key, &f.public_key, &f.data] {
            std::fs::copy(file, to.join(file.file_name().context("file name")?))?;
        }
        copy_dir(&f.state_dir, &to.join("state"))?;
    }
    std::fs::write(out.join("spec.toml"), spec_toml)?;
    let calls = coordinator::grpc::record::read(&out.join("wire.jsonl"))?;
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut commit = git(&["rev-parse", "HEAD"]);
    if !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit += " with uncommitted changes";
    }
    std::fs::write(
        out.join("RECORDED.md"),
        format!(
            "# Recorded by `record-release` (tests/src/bin/record_release.rs)\n\n\
             - release {} (Yosegi protocol {}), commit {commit}\n\
             - recorded at Unix ms {}\n\
             - {} calls in `wire.jsonl`; `coordinator-data/` is the coordinator's data dir after a \
             graceful stop; `plants/NAME/` holds each plant's key, rows and state dir.\n\
             - Every key here is a throw-away test key.\n",
            env!("CARGO_PKG_VERSION"),
            yosegi_proto::version::PROTOCOL,
            coordinator::state::now_ms(),
            calls.len(),
        ),
    )?;
    println!("recorded {} calls into {}", calls.len(), out.display());
    Ok(())
}

/// Copies a directory tree, leaving out the serve lock.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == coordinator::state::LOCK {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            copy_dir(&path, &to.join(&name))?;
        } else {
            std::fs::copy(&path, to.join(&name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}
