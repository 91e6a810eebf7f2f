//! Nonces across restarts. The nonce cache lives in memory; at a graceful shutdown it is saved
//! to `nonces.json` in the data dir and loaded again at the next start, so a call captured before
//! the restart is still refused as a replay. A coordinator that did not shut down cleanly (its
//! `serving.marker` is still there) lost them: it then refuses every call signed before it
//! started (a caller signs again; one whose clock lags by L is refused for L).
//! A data dir served for the first time has nothing to replay. A saved file that does not
//! read (damaged, truncated, another format) counts as nonces lost: the start goes on as after
//! an unclean stop, and the file is kept aside as `nonces.json.unreadable` for a look.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use shared_model::auth::NonceCache;

const SAVED: &str = "nonces.json";
const RUNNING: &str = "serving.marker";
const FORMAT: &str = "yosegi.nonces.v1";

#[derive(Serialize, Deserialize)]
struct Saved {
    format: String,
    /// (nonce as hex, the call's timestamp in Unix ms).
    nonces: Vec<(String, i64)>,
}

/// The nonce state a start resumes from.
#[derive(Debug, Default)]
pub(super) struct Resumed {
    /// Nonces saved at the last graceful shutdown (those still inside the skew window).
    pub(super) cache: NonceCache,
    /// After an unclean stop: calls signed before this time are refused.
    pub(super) not_before_ms: Option<i64>,
}

/// Loads the nonces a graceful shutdown saved, or, if the last run did not end cleanly, sets
/// the start time as the earliest timestamp accepted; marks the data dir as being served.
pub(super) fn resume(dir: &Path, now_ms: i64, max_skew_ms: i64) -> anyhow::Result<Resumed> {
    let (saved, running) = (dir.join(SAVED), dir.join(RUNNING));
    let mut out = Resumed::default();
    // The mark is made durable before the saved nonces are consumed: a crash in between can
    // then only make the next start stricter, never let it forget that nonces were lost.
    let unclean = running.exists();
    std::fs::File::create(&running)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("creating {}", running.display()))?;
    sync_dir(dir)?;
    if unclean {
        // Still marked from the last run: it did not finish its shutdown (a saved file beside
        // the mark may be from an older stop).
        tracing::warn!(
            "the last run of this coordinator did not shut down cleanly: its nonces are lost, so calls signed before now are refused (callers sign again)"
        );
        out.not_before_ms = Some(now_ms);
    }
    if saved.exists() {
        match load(&saved, now_ms, max_skew_ms) {
            Ok(cache) => {
                out.cache = cache;
                std::fs::remove_file(&saved)
                    .with_context(|| format!("removing {}", saved.display()))?;
            }
            Err(e) => {
                let aside = dir.join(format!("{SAVED}.unreadable"));
                tracing::warn!(
                    error = %format!("{e:#}"),
                    kept_as = %aside.display(),
                    "the saved nonces do not read: treating them as lost, so calls signed before now are refused (callers sign again)"
                );
                std::fs::rename(&saved, &aside)
                    .with_context(|| format!("moving {} aside", saved.display()))?;
                out.not_before_ms = Some(now_ms);
            }
        }
        sync_dir(dir)?;
    }
    Ok(out)
}

/// The nonces in a saved file, or why it does not read.
fn load(saved: &Path, now_ms: i64, max_skew_ms: i64) -> anyhow::Result<NonceCache> {
    let text =
        std::fs::read_to_string(saved).with_context(|| format!("reading {}", saved.display()))?;
    let s: Saved = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a saved nonce list", saved.display()))?;
    anyhow::ensure!(
        s.format == FORMAT,
        "{}: format {:?}, expected {FORMAT:?}",
        saved.display(),
        s.format
    );
    let mut cache = NonceCache::default();
    for (i, (hex_nonce, ts)) in s.nonces.into_iter().enumerate() {
        let nonce: [u8; 16] = hex::decode(&hex_nonce)
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| {
                format!(
                    "{}: nonce {} is not 16 bytes of hex",
                    saved.display(),
                    i + 1
                )
            })?;
        cache.insert(nonce, ts, now_ms, max_skew_ms);
    }
    Ok(cache)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Saves the nonce cache at a graceful shutdown (atomically) and clears the running mark.
pub(super) fn save(dir: &Path, cache: &NonceCache) -> anyhow::Result<()> {
    let s = Saved {
        format: FORMAT.into(),
        nonces: cache.entries().map(|(n, t)| (hex::encode(n), t)).collect(),
    };
    let (tmp, saved) = (dir.join(format!("{SAVED}.tmp")), dir.join(SAVED));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(&s)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &saved).with_context(|| format!("replacing {}", saved.display()))?;
    sync_dir(dir)?;
    std::fs::remove_file(dir.join(RUNNING)).ok();
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_nonces_come_back_after_a_graceful_stop() {
        let dir = tempfile::tempdir().unwrap();
        let first = resume(dir.path(), 1_000, 300_000).unwrap();
        assert!(first.not_before_ms.is_none() && first.cache.is_empty());
        let mut cache = NonceCache::default();
        assert!(cache.insert([7; 16], 1_000, 1_000, 300_000));
        save(dir.path(), &cache).unwrap();
        let mut again = resume(dir.path(), 2_000, 300_000).unwrap();
        assert_eq!(again.not_before_ms, None);
        assert!(
            !again.cache.insert([7; 16], 1_000, 2_000, 300_000),
            "a replay"
        );
    }

    #[test]
    fn an_unreadable_nonce_file_counts_as_nonces_lost_and_is_kept_aside() {
        for garbage in [
            &b"{\"format\":\"yosegi.nonces.v1\",\"nonces\":[[\"zz\",1]]}"[..],
            b"{\"format\":\"yosegi.nonces.v9\",\"nonces\":[]}",
            b"{\"format\":\"yosegi.non",
            b"\x00\xff",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut cache = NonceCache::default();
            cache.insert([7; 16], 1_000, 1_000, 300_000);
            resume(dir.path(), 1_000, 300_000).unwrap();
            save(dir.path(), &cache).unwrap();
            std::fs::write(dir.path().join(SAVED), garbage).unwrap();
            let r = resume(dir.path(), 5_000, 300_000).unwrap();
            assert_eq!(r.not_before_ms, Some(5_000), "{garbage:?}");
            assert!(!dir.path().join(SAVED).exists());
            assert_eq!(
                std::fs::read(dir.path().join("nonces.json.unreadable")).unwrap(),
                garbage
            );
        }
    }
}
