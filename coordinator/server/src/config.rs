//! `coordinator serve`'s configuration: a `coordinator.toml` file (raw serde struct, unknown keys
//! refused by name, TOML errors with line and column), every key also settable by a flag (flags
//! win), validated into [`ServeSettings`]. docs/CONFIG.md documents each key;
//! `docs/examples/coordinator.toml` is loaded by the tests below.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::grpc::ServeConfig;

/// `coordinator.toml` as written; `None` = not given.
#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawServeConfig {
    /// State: database, blobs, keys.
    pub data_dir: Option<PathBuf>,
    /// gRPC address.
    pub listen: Option<SocketAddr>,
    /// Prometheus `/metrics` address (off when absent).
    pub metrics_listen: Option<SocketAddr>,
    /// Largest accepted caller clock difference, seconds.
    pub max_skew_secs: Option<u64>,
    /// Longest a long poll is held, seconds.
    pub long_poll_secs: Option<u64>,
    /// Engine tick period, milliseconds.
    pub tick_ms: Option<u64>,
    /// Time given to in-flight calls at shutdown, seconds.
    pub shutdown_grace_secs: Option<u64>,
    /// An upload stream silent this long is dropped, seconds.
    pub upload_idle_secs: Option<u64>,
    /// The slowest average rate of an upload stream, KiB/s.
    pub upload_min_kib_per_sec: Option<u64>,
    /// Validity of published manifests, days.
    pub manifest_ttl_days: Option<u64>,
    /// Upload streams open at once, over all parties.
    pub upload_streams: Option<u64>,
    /// Upload streams open at once per party.
    pub upload_streams_per_party: Option<u64>,
    /// Connections open at once (TCP, before or after the TLS handshake).
    pub max_connections: Option<u64>,
    /// Connections open at once from one IP address.
    pub max_connections_per_address: Option<u64>,
    /// A connection whose TLS handshake (or, in plaintext, first byte) has not come in this
    /// long is closed, seconds.
    pub handshake_timeout_secs: Option<u64>,
    /// Serve plain HTTP/2 instead of TLS (loudly logged; tests and private networks only).
    pub plaintext: Option<bool>,
    /// TLS certificate (PEM chain) [default: DATA_DIR/tls/server.pem].
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, mode 0600 [default: DATA_DIR/tls/server.key.pem].
    pub tls_key: Option<PathBuf>,
    /// Require client certificates chaining to this CA (mutual TLS), e.g. DATA_DIR/tls/ca.pem.
    pub client_ca: Option<PathBuf>,
}

/// Validated settings of `coordinator serve`.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// State directory.
    pub data_dir: PathBuf,
    /// gRPC address.
    pub listen: SocketAddr,
    /// Server settings (including the metrics address; TLS is loaded from `tls`).
    pub serve: ServeConfig,
    /// Where the TLS files are; `None` = plaintext, as asked.
    pub tls: Option<TlsFiles>,
}

/// The TLS files `serve` loads.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// Certificate.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Client CA for mutual TLS.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads them.
    pub fn load(&self) -> anyhow::Result<crate::tls::ServerTls> {
        crate::tls::ServerTls::load(&self.cert, &self.key, self.client_ca.as_deref())
    }
}

impl RawServeConfig {
    /// Reads a config file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))
    }

    /// Keys set in `over` replace ours.
    pub fn overlay(self, over: RawServeConfig) -> Self {
        Self {
            data_dir: over.data_dir.or(self.data_dir),
            listen: over.listen.or(self.listen),
            metrics_listen: over.metrics_listen.or(self.metrics_listen),
            max_skew_secs: over.max_skew_secs.or(self.max_skew_secs),
            long_poll_secs: over.long_poll_secs.or(self.long_poll_secs),
            tick_ms: over.tick_ms.or(self.tick_ms),
            shutdown_grace_secs: over.shutdown_grace_secs.or(self.shutdown_grace_secs),
            upload_idle_secs: over.upload_idle_secs.or(self.upload_idle_secs),
            upload_min_kib_per_sec: over.upload_min_kib_per_sec.or(self.upload_min_kib_per_sec),
            manifest_ttl_days: over.manifest_ttl_days.or(self.manifest_ttl_days),
            upload_streams: over.upload_streams.or(self.upload_streams),
            upload_streams_per_party: over
                .upload_streams_per_party
                .or(self.upload_streams_per_party),
            max_connections: over.max_connections.or(self.max_connections),
            max_connections_per_address: over
                .max_connections_per_address
                .or(self.max_connections_per_address),
            handshake_timeout_secs: over.handshake_timeout_secs.or(self.handshake_timeout_secs),
            plaintext: over.plaintext.or(self.plaintext),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            client_ca: over.client_ca.or(self.client_ca),
        }
    }

    /// Fills defaults and checks ranges, naming the key at fault.
    pub fn validate(self) -> anyhow::Result<ServeSettings> {
        let d = ServeConfig::default();
        let ranged = |key: &str, v: Option<u64>, default: u64, min: u64, max: u64| {
            let v = v.unwrap_or(default);
            anyhow::ensure!(
                (min..=max).contains(&v),
                "coordinator config: `{key}` must be between {min} and {max}, found {v}"
            );
            Ok(v)
        };
        let serve = ServeConfig {
            max_skew: Duration::from_secs(ranged(
                "max_skew_secs",
                self.max_skew_secs,
                d.max_skew.as_secs(),
                1,
                86_400,
            )?),
            max_wait: Duration::from_secs(ranged(
                "long_poll_secs",
                self.long_poll_secs,
                d.max_wait.as_secs(),
                1,
                300,
            )?),
            tick: Duration::from_millis(ranged(
                "tick_ms",
                self.tick_ms,
                d.tick.as_millis() as u64,
                10,
                60_000,
            )?),
            grace: Duration::from_secs(ranged(
                "shutdown_grace_secs",
                self.shutdown_grace_secs,
                d.grace.as_secs(),
                0,
                3_600,
            )?),
            upload_idle: Duration::from_secs(ranged(
                "upload_idle_secs",
                self.upload_idle_secs,
                d.upload_idle.as_secs(),
                1,
                3_600,
            )?),
            upload_min_rate: 1024
                * ranged(
                    "upload_min_kib_per_sec",
                    self.upload_min_kib_per_sec,
                    d.upload_min_rate / 1024,
                    1,
                    10_000_000,
                )?,
            manifest_ttl: Duration::from_secs(
                86_400
                    * ranged(
                        "manifest_ttl_days",
                        self.manifest_ttl_days,
                        d.manifest_ttl.as_secs() / 86_400,
                        1,
                        3_650,
                    )?,
            ),
            uploads: crate::grpc::UploadLimit {
                overall: ranged(
                    "upload_streams",
                    self.upload_streams,
                    d.uploads.overall as u64,
                    1,
                    100_000,
                )? as usize,
                per_party: ranged(
                    "upload_streams_per_party",
                    self.upload_streams_per_party,
                    d.uploads.per_party as u64,
                    1,
                    1_000,
                )? as usize,
            },
            connections: crate::grpc::ConnectionLimit {
                max: ranged(
                    "max_connections",
                    self.max_connections,
                    d.connections.max as u64,
                    1,
                    1_000_000,
                )? as usize,
                per_address: ranged(
                    "max_connections_per_address",
                    self.max_connections_per_address,
                    d.connections.per_address as u64,
                    1,
                    1_000_000,
                )? as usize,
                handshake: Duration::from_secs(ranged(
                    "handshake_timeout_secs",
                    self.handshake_timeout_secs,
                    d.connections.handshake.as_secs(),
                    1,
                    600,
                )?),
            },
            metrics: self.metrics_listen,
            tls: None,
            record_wire: None,
        };
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("coordinator-data"));
        let tls_dir = crate::tls::dir(&data_dir);
        let tls = if self.plaintext.unwrap_or(false) {
            anyhow::ensure!(
                self.tls_cert.is_none() && self.tls_key.is_none() && self.client_ca.is_none(),
                "coordinator config: `plaintext` contradicts `tls_cert`/`tls_key`/`client_ca`"
            );
            None
        } else {
            Some(TlsFiles {
                cert: self
                    .tls_cert
                    .unwrap_or_else(|| tls_dir.join(crate::tls::SERVER_CERT)),
                key: self
                    .tls_key
                    .unwrap_or_else(|| tls_dir.join(crate::tls::SERVER_KEY)),
                client_ca: self.client_ca,
            })
        };
        Ok(ServeSettings {
            tls,
            data_dir,
            listen: self
                .listen
                .unwrap_or_else(|| "127.0.0.1:50051".parse().expect("valid address")),
            serve,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../docs/examples/coordinator.toml");

    #[test]
    fn the_documented_example_loads_and_flags_win() {
        let raw = RawServeConfig::parse(EXAMPLE, "docs/examples/coordinator.toml").unwrap();
        assert_eq!(raw.listen, Some("0.0.0.0:50051".parse().unwrap()));
        let s = raw
            .clone()
            .overlay(RawServeConfig {
                listen: Some("127.0.0.1:7000".parse().unwrap()),
                ..Default::default()
            })
            .validate()
            .unwrap();
        assert_eq!(s.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(s.serve.metrics, Some("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(s.serve.max_skew, Duration::from_secs(120));
        assert_eq!(s.serve.manifest_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/yosegi"));
    }

    #[test]
    fn defaults_without_a_file_and_errors_that_name_the_key() {
        let s = RawServeConfig::default().validate().unwrap();
        assert_eq!(s.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(s.serve.metrics, None);
        let e =
            RawServeConfig::parse("listen = \"127.0.0.1:1\"\nport = 5\n", "c.toml").unwrap_err();
        assert!(
            e.to_string().contains("c.toml") && e.to_string().contains("port"),
            "{e}"
        );
        let e = RawServeConfig::parse("tick_ms = 1\n", "c.toml")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("`tick_ms` must be between 10"),
            "{e}"
        );
        let e = RawServeConfig::parse("listen = \"nowhere\"\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
