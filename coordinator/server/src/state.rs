//! The coordinator's data directory: `coordinator.key.pem` (signing key for manifests),
//! `coordinator.pub.pem` (what parties pin), `operator.key.pem` / `operator.pub.pem` (the key the
//! operator CLI signs calls with), `yosegi.db`, `blobs/` and `serve.lock`, which the serving
//! coordinator holds locked so that a second one cannot open the same directory.

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
/// The lock file a serving coordinator holds (an advisory `flock`, released by the kernel when
/// the process ends, however it ends).
pub const LOCK: &str = "serve.lock";

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
    /// The held `serve.lock`; the directory is ours while this lives.
    pub lock: std::fs::File,
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

/// Opens an existing data directory to serve it: takes `serve.lock` (a second coordinator on
/// the same directory is refused), opens the database, and removes blobs no row refers to —
/// what a crash between storing a blob and committing its row leaves behind. Nothing else
/// writes the directory while the lock is held, so the sweep cannot race a write.
pub fn open(dir: &Path) -> anyhow::Result<DataDir> {
    if !dir.join(DB).exists() {
        anyhow::bail!(
            "{} has no coordinator state; run `coordinator init --data-dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    let lock_path = dir.join(LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another coordinator is serving {} (it holds {}); stop it first",
            dir.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
    }
    let store = Store::open(&dir.join(DB))
        .with_context(|| format!("opening {}", dir.join(DB).display()))?;
    // A key rotation a crash interrupted is finished (or dropped) before the key is read.
    crate::rotate::recover(dir, &store)?;
    let key = keys::read_private(&dir.join(COORDINATOR_KEY))?;
    let operator = keys::read_public(&dir.join(OPERATOR_PUB))?;
    let blobs = BlobStore::open(&dir.join("blobs"))?;
    let referenced = store
        .blob_refs()
        .with_context(|| format!("reading blob references from {}", dir.join(DB).display()))?;
    let (files, bytes) = blobs.sweep(&referenced)?;
    if files > 0 {
        tracing::warn!(
            files,
            bytes,
            data_dir = %dir.display(),
            "removed blobs no row refers to (left by an upload or publication a crash interrupted before its commit)"
        );
    }
    Ok(DataDir {
        path: dir.to_path_buf(),
        key,
        operator,
        store,
        blobs,
        lock,
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_coordinator_per_data_dir_and_orphans_swept_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        init(&dir).unwrap();
        let first = open(&dir).unwrap();
        let e = open(&dir).unwrap_err().to_string();
        assert!(e.contains("another coordinator is serving"), "{e}");
        assert!(e.contains(LOCK), "{e}");
        // A blob stored without its row (a crash before the commit) is gone after a reopen.
        let orphan = first.blobs.put(b"no row refers to me").unwrap();
        assert!(first.blobs.path(&orphan).exists());
        drop(first);
        let again = open(&dir).unwrap();
        assert!(!again.blobs.path(&orphan).exists());
    }
}
