//! The coordinator's data directory: `coordinator.key.pem` (signing key for manifests),
//! `coordinator.pub.pem` (what parties pin), `operator.key.pem` / `operator.pub.pem` (the key the
//! operator CLI signs calls with), `yosegi.db` and `blobs/`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use shared_model::keys;
use shared_model::{SigningKey, VerifyingKey};

use crate::blobs::BlobStore;
use crate::store::Store;

/// File names inside the data dir.
pub const COORDINATOR_KEY: &str = "coordinator.key.pem";
/// The coordinator's public key file.
pub const COORDINATOR_PUB: &str = "coordinator.pub.pem";
/// The operator's private key file.
pub const OPERATOR_KEY: &str = "operator.key.pem";
/// The operator's public key file.
pub const OPERATOR_PUB: &str = "operator.pub.pem";
/// The database file.
pub const DB: &str = "yosegi.db";

/// An opened data directory.
#[derive(Debug)]
pub struct DataDir {
    /// Where it is.
    pub path: PathBuf,
    /// The coordinator's signing key.
    pub key: SigningKey,
    /// The operator's public key.
    pub operator: VerifyingKey,
    /// The database.
    pub store: Store,
    /// The blobs.
    pub blobs: BlobStore,
}

/// Creates a new data directory; refuses to touch an existing one that has state.
pub fn init(dir: &Path) -> anyhow::Result<(VerifyingKey, PathBuf)> {
    if dir.join(DB).exists() || dir.join(COORDINATOR_KEY).exists() {
        anyhow::bail!(
            "{} already holds coordinator state; refusing to overwrite it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    let key = keys::generate()?;
    keys::write_private(&dir.join(COORDINATOR_KEY), &key)?;
    keys::write_public(&dir.join(COORDINATOR_PUB), &key.verifying_key())?;
    let op = keys::generate()?;
    keys::write_private(&dir.join(OPERATOR_KEY), &op)?;
    keys::write_public(&dir.join(OPERATOR_PUB), &op.verifying_key())?;
    Store::create(&dir.join(DB)).with_context(|| format!("creating {}", dir.join(DB).display()))?;
    BlobStore::open(&dir.join("blobs"))?;
    Ok((key.verifying_key(), dir.join(COORDINATOR_PUB)))
}

/// Opens an existing data directory.
pub fn open(dir: &Path) -> anyhow::Result<DataDir> {
    if !dir.join(DB).exists() {
        anyhow::bail!(
            "{} has no coordinator state; run `coordinator init --data-dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    let key = keys::read_private(&dir.join(COORDINATOR_KEY))?;
    let operator = keys::read_public(&dir.join(OPERATOR_PUB))?;
    let store = Store::open(&dir.join(DB))
        .with_context(|| format!("opening {}", dir.join(DB).display()))?;
    let blobs = BlobStore::open(&dir.join("blobs"))?;
    Ok(DataDir {
        path: dir.to_path_buf(),
        key,
        operator,
        store,
        blobs,
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
