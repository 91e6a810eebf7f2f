//! Recovering operator access with the data dir (`coordinator operator recover`, with the
//! coordinator stopped): whoever holds the data dir is the federation's root of trust, so it may
//! add an admin key and revoke operator keys without any operator's signature — the way out
//! when every admin key is lost or stolen. Each change is a governance-log record with
//! `"by": "data-dir"`, under the same rules as the online calls (the admin is added first, so
//! the old admins can then all be revoked).

use std::path::Path;

use anyhow::Context as _;
use ed25519_dalek::VerifyingKey;
use yosegi_round::Role;

use crate::engine::Engine;

/// Who the records of a recovery name.
pub const BY_DATA_DIR: &str = "data-dir";

/// What a recovery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The admin added, if one was.
    pub added: Option<String>,
    /// The operators revoked.
    pub revoked: Vec<String>,
}

/// Adds `admin` (name, key) as an admin, then revokes each of `revoke`, in the stopped
/// coordinator's data dir `dir`.
pub fn recover(
    dir: &Path,
    admin: Option<(&str, &VerifyingKey)>,
    revoke: &[String],
    now: i64,
) -> anyhow::Result<Recovered> {
    let data = crate::state::open(dir)?;
    let mut engine = Engine::new(
        data.store,
        data.blobs,
        data.key,
        crate::engine::EngineConfig::default(),
    );
    engine.seed_operator(&data.operator, now)?;
    let mut done = Recovered {
        added: None,
        revoked: Vec::new(),
    };
    engine.acting_as(BY_DATA_DIR, |e| -> anyhow::Result<()> {
        if let Some((name, key)) = admin {
            e.add_operator(name, key, Role::Admin, now)
                .with_context(|| format!("adding admin {name}"))?;
            done.added = Some(name.to_string());
        }
        for name in revoke {
            e.revoke_operator(name, now)
                .with_context(|| format!("revoking operator {name}"))?;
            done.revoked.push(name.clone());
        }
        Ok(())
    })?;
    Ok(done)
}
