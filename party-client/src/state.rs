//! The daemon's persistent state in its state dir: the highest model version accepted per task
//! (so a coordinator cannot roll a site back to an older model, even across restarts), the
//! coordinator key it followed a rotation to (if any), and a log of acknowledged uploads. `state.json` is written atomically (temp, fsync, rename, fsync dir).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The state file's format version.
const STATE_FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    accepted: BTreeMap<String, u64>,
    /// The coordinator key pinned after following a key rotation (hex); absent: the
    /// configured `coordinator_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    coordinator_key: Option<String>,
    /// The configured key the pin was followed from (hex): a different configured key (the
    /// operator handed the plant a new one out of band) drops the pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pinned_from: Option<String>,
}

/// Persistent state of one party.
#[derive(Debug)]
pub struct PartyState {
    dir: PathBuf,
    file: StateFile,
}

impl PartyState {
    /// Loads the state from `dir` (empty if none yet).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("state.json");
        let file = if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let f: StateFile = serde_json::from_str(&text)
                .with_context(|| format!("{} is corrupt", path.display()))?;
            anyhow::ensure!(
                f.format == STATE_FORMAT,
                "{}: format {} is not {STATE_FORMAT}",
                path.display(),
                f.format
            );
            f
        } else {
            StateFile {
                format: STATE_FORMAT,
                ..Default::default()
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
        })
    }

    /// The highest version of `task` accepted so far.
    pub fn accepted(&self, task: &str) -> Option<u64> {
        self.file.accepted.get(task).copied()
    }

    /// The coordinator key pinned by a rotation followed from `configured`, if any. A pin
    /// followed from another configured key no longer applies: the configured key wins.
    pub fn coordinator_key(
        &self,
        configured: &shared_model::VerifyingKey,
    ) -> anyhow::Result<Option<shared_model::VerifyingKey>> {
        let Some(hex_key) = &self.file.coordinator_key else {
            return Ok(None);
        };
        if self.file.pinned_from.as_deref() != Some(hex::encode(configured.to_bytes()).as_str()) {
            tracing::warn!(
                state_dir = %self.dir.display(),
                "the configured coordinator_key changed since a key rotation was followed: trusting the configured key, not the pinned one"
            );
            return Ok(None);
        }
        let bytes: [u8; 32] = hex::decode(hex_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| {
                format!(
                    "{}: coordinator_key is not 32 bytes of hex",
                    self.dir.display()
                )
            })?;
        Ok(Some(shared_model::VerifyingKey::from_bytes(&bytes)?))
    }

    /// Pins `key` as the coordinator's, followed from the `configured` key, and persists
    /// atomically.
    pub fn pin_coordinator_key(
        &mut self,
        key: &shared_model::VerifyingKey,
        configured: &shared_model::VerifyingKey,
    ) -> anyhow::Result<()> {
        self.file.coordinator_key = Some(hex::encode(key.to_bytes()));
        self.file.pinned_from = Some(hex::encode(configured.to_bytes()));
        self.save()
    }

    /// Records an accepted version (never lowers it) and persists atomically.
    pub fn accept(&mut self, task: &str, version: u64) -> anyhow::Result<()> {
        let v = self
            .file
            .accepted
            .entry(task.to_string())
            .or_insert(version);
        *v = (*v).max(version);
        self.save()
    }

    fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(&self.file)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Appends a line to the log of acknowledged uploads.
    pub fn log_ack(&self, line: &str) -> anyhow::Result<()> {
        let path = self.dir.join("acks.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{line}")?;
        f.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_versions_persist_and_never_go_down() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = PartyState::load(dir.path()).unwrap();
        assert_eq!(s.accepted("t"), None);
        s.accept("t", 3).unwrap();
        s.accept("t", 2).unwrap();
        let s = PartyState::load(dir.path()).unwrap();
        assert_eq!(s.accepted("t"), Some(3));
    }

    #[test]
    fn a_pinned_coordinator_key_persists_and_yields_to_a_newly_configured_one() {
        let dir = tempfile::tempdir().unwrap();
        let (configured, rotated, handed_over) = (
            shared_model::keys::generate().unwrap().verifying_key(),
            shared_model::keys::generate().unwrap().verifying_key(),
            shared_model::keys::generate().unwrap().verifying_key(),
        );
        let mut s = PartyState::load(dir.path()).unwrap();
        assert_eq!(s.coordinator_key(&configured).unwrap(), None);
        s.pin_coordinator_key(&rotated, &configured).unwrap();
        let s = PartyState::load(dir.path()).unwrap();
        assert_eq!(s.coordinator_key(&configured).unwrap(), Some(rotated));
        // The operator hands the plant another key out of band: it is trusted, not the pin.
        assert_eq!(s.coordinator_key(&handed_over).unwrap(), None);
    }
}
