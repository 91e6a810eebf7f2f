//! The daemon's configuration: a `party.toml` file (raw serde struct, unknown keys refused),
//! with every key also settable by a command-line flag (flags win), validated into [`Config`].

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use shared_model::ids::PartyId;
use shared_model::{SigningKey, VerifyingKey};

use crate::grpc::ClientTls;
use crate::policy::{Policy, RawPolicy};

/// `party.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Coordinator URL (http:// or https://).
    pub server: Option<String>,
    /// This party's enrolled name.
    pub name: Option<String>,
    /// This party's private key file.
    pub key: Option<PathBuf>,
    /// The coordinator's public key file (pinned).
    pub coordinator_key: Option<PathBuf>,
    /// The site's CSV.
    pub data: Option<PathBuf>,
    /// Where the daemon keeps its state.
    pub state_dir: Option<PathBuf>,
    /// The coordinator's CA certificate, pinned for an https:// server.
    pub ca: Option<PathBuf>,
    /// Client certificate, for a coordinator that requires mutual TLS.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (mode 0600).
    pub tls_key: Option<PathBuf>,
    /// The site's policy (`[policy]` table; file only, no flags).
    pub policy: Option<RawPolicy>,
}

impl RawConfig {
    /// Reads a config file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid party config", path.display()))
    }

    /// Keys set in `over` replace ours.
    pub fn overlay(self, over: RawConfig) -> Self {
        Self {
            server: over.server.or(self.server),
            name: over.name.or(self.name),
            key: over.key.or(self.key),
            coordinator_key: over.coordinator_key.or(self.coordinator_key),
            data: over.data.or(self.data),
            state_dir: over.state_dir.or(self.state_dir),
            ca: over.ca.or(self.ca),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            policy: over.policy.or(self.policy),
        }
    }

    /// Validates: loads the keys, checks the name and the data file.
    pub fn validate(self) -> anyhow::Result<Config> {
        let server: String = need(self.server, "server")?;
        anyhow::ensure!(
            server.starts_with("http://") || server.starts_with("https://"),
            "party config: `server` must be an http:// or https:// URL, found {server:?}"
        );
        let tls = if server.starts_with("https://") {
            let ca: PathBuf = self.ca.with_context(|| {
                format!("party config: `ca` is not set (flag --ca): {server} is https, and the coordinator's CA certificate (its DATA_DIR/tls/ca.pem) must be pinned")
            })?;
            anyhow::ensure!(
                ca.is_file(),
                "party config: `ca` {} is not a readable file",
                ca.display()
            );
            let identity = match (self.tls_cert, self.tls_key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    anyhow::bail!("party config: `tls_cert` and `tls_key` go together (mutual TLS)")
                }
            };
            ClientTls {
                ca: Some(ca),
                identity,
            }
        } else {
            anyhow::ensure!(
                self.ca.is_none() && self.tls_cert.is_none() && self.tls_key.is_none(),
                "party config: `ca`/`tls_cert`/`tls_key` are set but `server` {server} is plain http://"
            );
            ClientTls::default()
        };
        let name = PartyId::new(need(self.name, "name")?)?;
        let key_path: PathBuf = need(self.key, "key")?;
        let key = shared_model::keys::read_private(&key_path)?;
        let coordinator_key =
            shared_model::keys::read_public(&need(self.coordinator_key, "coordinator_key")?)?;
        let data: PathBuf = need(self.data, "data")?;
        anyhow::ensure!(
            data.is_file(),
            "party config: `data` {} is not a readable file",
            data.display()
        );
        let state_dir: PathBuf = need(self.state_dir, "state_dir")?;
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let policy = self.policy.unwrap_or_default().validate()?;
        Ok(Config {
            server,
            tls,
            name,
            key,
            coordinator_key,
            data,
            state_dir,
            policy,
        })
    }
}

fn need<T>(v: Option<T>, key: &str) -> anyhow::Result<T> {
    v.with_context(|| {
        format!(
            "party config: `{key}` is not set (flag --{})",
            key.replace('_', "-")
        )
    })
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Coordinator URL.
    pub server: String,
    /// The pinned CA (https://) and client certificate (mutual TLS).
    pub tls: ClientTls,
    /// This party.
    pub name: PartyId,
    /// Its signing key.
    pub key: SigningKey,
    /// The pinned coordinator key.
    pub coordinator_key: VerifyingKey,
    /// The site's CSV.
    pub data: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// What this site agrees to train.
    pub policy: Policy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_missing_keys_are_named() {
        let e = toml::from_str::<RawConfig>("sever = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sever"), "{e}");
        let e = RawConfig::default().validate().unwrap_err().to_string();
        assert!(e.contains("`server` is not set (flag --server)"), "{e}");
        let e = RawConfig {
            server: Some("ftp://x".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("http:// or https://"), "{e}");
    }

    #[test]
    fn the_documented_example_parses() {
        let raw: RawConfig =
            toml::from_str(include_str!("../../docs/examples/party.toml")).unwrap();
        assert_eq!(raw.name.as_deref(), Some("plant-a"));
        assert_eq!(
            raw.server.as_deref(),
            Some("https://coordinator.example.org:50051")
        );
        assert!(raw.ca.is_some());
        assert!(raw.key.is_some() && raw.coordinator_key.is_some());
        assert!(raw.data.is_some() && raw.state_dir.is_some());
        let policy = raw.policy.expect("the example has a [policy] table");
        let p = policy.validate().unwrap();
        assert_eq!(p.min_other_parties, 2);
        assert!(p.approved.as_ref().is_some_and(|a| a.len() == 1));
        assert_eq!(p.max_membership_advantage, Some(0.4));
    }

    #[test]
    fn flags_override_the_file() {
        let file = RawConfig {
            server: Some("http://a".into()),
            name: Some("plant-a".into()),
            ..Default::default()
        };
        let flags = RawConfig {
            server: Some("http://b".into()),
            ..Default::default()
        };
        let c = file.overlay(flags);
        assert_eq!(c.server.as_deref(), Some("http://b"));
        assert_eq!(c.name.as_deref(), Some("plant-a"));
    }
}
