//! Content-addressed blob storage under `<data-dir>/blobs/`: a blob's file name is its sha256.
//! Writes are atomic and durable — temp file, fsync, rename, fsync of the directory — and
//! happen before an upload is acknowledged. Identical blobs are stored once.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256 as Sha256Hasher};
use shared_model::ids::Sha256;

/// Errors from the blob store, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    /// I/O failed.
    #[error("blob store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stored blob no longer hashes to its name.
    #[error("blob store {path}: content does not match its sha256 name (disk corruption?)")]
    Corrupt {
        /// The file.
        path: PathBuf,
    },
}

impl BlobStoreError {
    /// Whether the blob is damaged or gone (rather than unreadable for a passing reason).
    pub fn is_damage(&self) -> bool {
        match self {
            Self::Corrupt { .. } => true,
            Self::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        }
    }
}

/// The blob directory.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobStoreError + '_ {
    move |source| BlobStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl BlobStore {
    /// Opens (creating if needed) the store under `dir`, removing temp files a crash left.
    pub fn open(dir: &Path) -> Result<Self, BlobStoreError> {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
            let path = entry.map_err(io(&tmp))?.path();
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Where a blob lives.
    pub fn path(&self, sha: &Sha256) -> PathBuf {
        self.dir.join(sha.to_string())
    }

    /// Stores bytes durably; returns their sha256. A blob already present is checked: if it
    /// still hashes to its name it is made durable again (a crash may have come between rename
    /// and directory sync) and kept; if not, it is replaced with the good bytes.
    pub fn put(&self, bytes: &[u8]) -> Result<Sha256, BlobStoreError> {
        self.put_hashed(bytes, Sha256::of(bytes))
    }

    /// [`Self::put`] for bytes whose sha256 the caller has just computed or verified (an
    /// upload after `update::verify`): the bytes are not hashed again.
    pub fn put_hashed(&self, bytes: &[u8], sha: Sha256) -> Result<Sha256, BlobStoreError> {
        debug_assert_eq!(Sha256::of(bytes), sha, "put_hashed given a wrong digest");
        let dest = self.path(&sha);
        if self.keep_intact(&sha)? {
            return Ok(sha);
        }
        let mut nonce = [0u8; 8];
        getrandom_fill(&mut nonce);
        let tmp = self.dir.join("tmp").join(format!("{sha}.{}", hex(&nonce)));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            // Disk full, a file-size limit, an I/O error: leave nothing behind.
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&dest)(e));
        }
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(sha)
    }

    /// Whether a blob is already stored under `sha` and still hashes to it; if so it is made
    /// durable again (a crash may have come between its rename and the directory sync). A
    /// damaged one is reported as absent, to be replaced.
    fn keep_intact(&self, sha: &Sha256) -> Result<bool, BlobStoreError> {
        let dest = self.path(sha);
        if !dest.exists() {
            return Ok(false);
        }
        if let Err(e) = self.get(sha) {
            tracing::warn!(error = %e, "replacing a damaged blob");
            return Ok(false);
        }
        std::fs::File::open(&dest)
            .and_then(|f| f.sync_all())
            .map_err(io(&dest))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(true)
    }

    /// Starts receiving a blob into a temp file under `tmp/`, hashed as it is written, so an
    /// upload is never held in memory while it streams in. The file is removed when the
    /// [`Staged`] is dropped unless [`Self::adopt`] moved it into place.
    pub fn stage(&self) -> Result<Staged, BlobStoreError> {
        let mut nonce = [0u8; 8];
        getrandom_fill(&mut nonce);
        let path = self.dir.join("tmp").join(format!("upload.{}", hex(&nonce)));
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        Ok(Staged {
            path,
            file: Some(file),
            hasher: Sha256Hasher::new(),
            len: 0,
        })
    }

    /// Moves a fully received staged blob into place under `sha`, the digest its bytes were
    /// verified against, durably (fsync of the file, rename, fsync of the directory). A
    /// blob already stored under that name that still hashes to it is kept.
    pub fn adopt(&self, mut staged: Staged, sha: Sha256) -> Result<Sha256, BlobStoreError> {
        let dest = self.path(&sha);
        if let Some(f) = staged.file.take() {
            f.sync_all().map_err(io(&staged.path))?;
        }
        if self.keep_intact(&sha)? {
            return Ok(sha);
        }
        std::fs::rename(&staged.path, &dest).map_err(io(&dest))?;
        staged.path = PathBuf::new();
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(sha)
    }

    /// Removes every blob whose name is not in `keep` (sha256 hex); returns how many files and
    /// bytes went. Only for a store nothing else writes meanwhile (the coordinator calls it
    /// while opening its data dir, under the serve lock): a blob written but not yet committed
    /// would look unreferenced. Files that are not blobs (other names) are left alone.
    pub fn sweep(
        &self,
        keep: &std::collections::HashSet<String>,
    ) -> Result<(usize, u64), BlobStoreError> {
        let (mut files, mut bytes) = (0, 0);
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let is_blob = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_blob || keep.contains(name) || !path.is_file() {
                continue;
            }
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&path).map_err(io(&path))?;
            files += 1;
            bytes += len;
        }
        if files > 0 {
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        Ok((files, bytes))
    }

    /// Reads a blob without hashing it, for a caller that checks the bytes against a signed
    /// digest itself (`update::verify` at a round's close): one hash per update, not two.
    pub fn read_unchecked(&self, sha: &Sha256) -> Result<Vec<u8>, BlobStoreError> {
        let path = self.path(sha);
        std::fs::read(&path).map_err(io(&path))
    }

    /// Reads a blob and checks it still hashes to its name.
    pub fn get(&self, sha: &Sha256) -> Result<Vec<u8>, BlobStoreError> {
        let path = self.path(sha);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if Sha256::of(&bytes) != *sha {
            return Err(BlobStoreError::Corrupt { path });
        }
        Ok(bytes)
    }
}

/// A blob being received into a temp file: written and hashed chunk by chunk.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    file: Option<std::fs::File>,
    hasher: Sha256Hasher,
    len: u64,
}

impl Staged {
    /// Appends a chunk (blocking I/O and hashing: call it off the async workers).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), BlobStoreError> {
        let f = self
            .file
            .as_mut()
            .expect("a staged blob is open until adopted");
        f.write_all(chunk).map_err(io(&self.path))?;
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// How many bytes were written.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sha256 of what was written so far.
    pub fn sha256(&self) -> Sha256 {
        Sha256::from_bytes(self.hasher.clone().finalize().into())
    }

    /// Reads the whole staged blob back (for verification, which hashes and parses the same
    /// in-memory bytes).
    pub fn read(&mut self) -> Result<Vec<u8>, BlobStoreError> {
        if let Some(f) = self.file.as_mut() {
            f.flush().map_err(io(&self.path))?;
        }
        std::fs::read(&self.path).map_err(io(&self.path))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn getrandom_fill(buf: &mut [u8]) {
    // Only for unique temp names; a failure falls back to the process id and time.
    if getrandom::fill(buf).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0) as u64
            ^ u64::from(std::process::id());
        buf.copy_from_slice(&t.to_le_bytes()[..buf.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tmp-leftover"), b"x").unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let sha = store.put(b"hello").unwrap();
        assert_eq!(sha, Sha256::of(b"hello"));
        assert_eq!(store.put(b"hello").unwrap(), sha);
        assert_eq!(store.get(&sha).unwrap(), b"hello");
        std::fs::write(store.path(&sha), b"jello").unwrap();
        assert!(matches!(
            store.get(&sha),
            Err(BlobStoreError::Corrupt { .. })
        ));
        // Storing the same bytes again repairs the damaged copy.
        assert_eq!(store.put(b"hello").unwrap(), sha);
        assert_eq!(store.get(&sha).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn sweep_removes_only_unreferenced_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let kept = store.put(b"kept").unwrap();
        let orphan = store.put(b"orphan!").unwrap();
        std::fs::write(dir.path().join("README"), b"not a blob").unwrap();
        let keep = std::collections::HashSet::from([kept.to_string()]);
        assert_eq!(store.sweep(&keep).unwrap(), (1, 7));
        assert!(store.path(&kept).exists());
        assert!(!store.path(&orphan).exists());
        assert!(dir.path().join("README").exists());
        assert_eq!(store.sweep(&keep).unwrap(), (0, 0));
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        // The destination name is taken by a directory: the rename fails after the write.
        let sha = Sha256::of(b"blocked");
        std::fs::create_dir(store.path(&sha)).unwrap();
        std::fs::write(store.path(&sha).join("x"), b"x").unwrap();
        assert!(matches!(
            store.put(b"blocked"),
            Err(BlobStoreError::Io { .. })
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
