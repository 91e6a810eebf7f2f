//! The one way both clients (the operator's and the party daemon's) open a channel to the
//! coordinator: https:// pinned to the federation's own CA certificate (optionally with a client
//! certificate for mutual TLS), or http:// only when the URL says so, with a loud warning.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads a private key file, refusing one readable by group or others.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        anyhow::ensure!(
            mode & 0o077 == 0,
            "{}: TLS private key file has mode {:o}; it must not be readable by group or others (chmod 600 {})",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    read(path)
}

/// How a client reaches the coordinator: the pinned CA and, for mutual TLS, its certificate.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// The CA certificate file to pin (required for https://).
    pub ca: Option<PathBuf>,
    /// Client certificate and key files, for a server that requires mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Opens a channel to `server`: https:// with the pinned CA (and client certificate, if any);
/// http:// only as written, with a warning.
pub async fn channel(server: &str, tls: &ClientTls) -> anyhow::Result<tonic::transport::Channel> {
    let mut ep = tonic::transport::Endpoint::from_shared(server.to_string())
        .with_context(|| format!("bad server URL {server:?}"))?;
    if server.starts_with("https://") {
        let ca = tls.ca.as_ref().with_context(|| {
            format!("{server} is https: give the coordinator's CA certificate to pin (--ca FILE, e.g. DATA_DIR/tls/ca.pem)")
        })?;
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = &tls.identity {
            c = c.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read_secret(key)?,
            ));
        }
        ep = ep.tls_config(c).context("TLS configuration")?;
    } else if server.starts_with("http://") {
        tracing::warn!(%server, "PLAINTEXT connection: calls are signed, but everything is sent in clear; use https://");
    }
    ep.connect()
        .await
        .with_context(|| format!("coordinator at {server} is unreachable"))
}
