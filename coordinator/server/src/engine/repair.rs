//! A published model whose blob is damaged or lost on the coordinator's disk: a round built on
//! it fails with the reason instead of stalling (at its close, or before it opens), and the
//! operator restores the blob from a copy with the published hash (`coordinator model restore`,
//! decided by `yosegi_round::decide::restore_model`).

use shared_model::ids::{ModelVersion, Sha256, TaskId};

use super::{Engine, Result};
use crate::blobs::Staged;

impl Engine {
    /// Why version `version` of `task` cannot be used as a base — its row or blob missing, or
    /// the blob no longer hashing to its name — or `None` when it is intact. Reads and hashes
    /// the blob (once per round opened or closed).
    pub(super) fn base_damage(&self, task: &TaskId, version: u64) -> Result<Option<String>> {
        let restore = format!(
            "restore it with `coordinator model restore --task {task} --version {version} --blob FILE` from a copy (`coordinator model pull` saved one, and every plant that took part keeps one), then start a new round"
        );
        let Some(row) = self.store.model(task.as_str(), Some(version))? else {
            return Ok(Some(format!(
                "the base model (version {version} of {task}) is not in the database"
            )));
        };
        match self.blobs.get(&row.blob_sha256) {
            Ok(_) => Ok(None),
            // Damage: the blob no longer hashes to its name, or is gone. Any other I/O error
            // (too many open files, a failing read) may pass: the next tick tries again.
            Err(e) if e.is_damage() => Ok(Some(format!(
                "the base model (version {version} of {task}) is unreadable on the coordinator's disk ({e}); {restore}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a published model's blob again from `copy` (received into a staged file), when
    /// the stored one is damaged or lost and the copy hashes to the published sha256.
    pub fn restore_model(
        &mut self,
        task: &str,
        version: u64,
        copy: Staged,
        now: i64,
    ) -> Result<Sha256> {
        let at = self.store.version()?;
        let (t, _) = self.task(task)?;
        let row = self.store.model(task, Some(version))?;
        let published = row.as_ref().map(|r| r.blob_sha256);
        let intact = match published.map(|sha| self.blobs.get(&sha)) {
            None => false,
            Some(Ok(_)) => true,
            Some(Err(e)) if e.is_damage() => false,
            Some(Err(e)) => return Err(e.into()),
        };
        let decision = yosegi_round::decide::restore_model(
            &t.name,
            ModelVersion(version),
            published,
            copy.sha256(),
            intact,
        )?;
        let sha = published.expect("a restore is decided only for a published version");
        self.blobs.adopt(copy, sha)?;
        if self.model_cache.as_ref().is_some_and(|(s, _)| *s == sha) {
            self.model_cache = None;
        }
        self.commit(at, now, &decision)?;
        tracing::warn!(task, version, blob = %sha, "model blob restored from a copy");
        Ok(sha)
    }
}
