//! TLS for every gRPC connection: a private certificate authority made by `coordinator init`
//! (or `coordinator tls init` for an existing data dir), a server certificate for the host names
//! parties dial, and optional client certificates for mutual TLS. Parties and operators pin the
//! CA certificate (`ca.pem`); nothing depends on the system's trust store.
//!
//! Files, under `DATA_DIR/tls/`: `ca.pem` (give it to every plant and operator), `ca.key.pem`
//! (mode 0600; signs the server and client certificates), `server.pem`, `server.key.pem`
//! (mode 0600). Client certificates go wherever `coordinator tls client --out` says.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The TLS directory inside a data dir.
pub const TLS_DIR: &str = "tls";
/// The CA certificate parties and operators pin.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key.pem";
/// The server certificate.
pub const SERVER_CERT: &str = "server.pem";
/// The server's private key.
pub const SERVER_KEY: &str = "server.key.pem";

/// Host names every server certificate holds besides the ones asked for.
pub const DEFAULT_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// Certificates are valid this many years from their creation.
const VALID_YEARS: i32 = 10;

/// The CA's distinguished name: the same every time, so the CA key alone can sign again.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.distinguished_name
        .push(DnType::CommonName, "Yosegi coordinator CA");
    p.distinguished_name
        .push(DnType::OrganizationName, "Yosegi federation");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p);
    Ok(p)
}

/// Valid from yesterday (UTC; a little slack for clocks behind ours) for [`VALID_YEARS`].
fn validity(p: &mut CertificateParams) {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let (y, m, d) = civil_from_days(days - 1);
    p.not_before = rcgen::date_time_ymd(y, m, d);
    // 28 exists in every month, so the end date is always valid.
    p.not_after = rcgen::date_time_ymd(y + VALID_YEARS, m, d.min(28));
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Writes a private key file with mode 0600; refuses to overwrite.
fn write_secret(path: &Path, pem: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {} (refusing to overwrite)", path.display()))?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn write_public(path: &Path, pem: &str) -> anyhow::Result<()> {
    if path.exists() {
        anyhow::bail!("{} exists; refusing to overwrite it", path.display());
    }
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The TLS directory of a data dir.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TLS_DIR)
}

/// Creates the CA and a server certificate for `hosts` (plus [`DEFAULT_HOSTS`]) under
/// `data_dir/tls`. Refuses to overwrite. Returns the host names in the certificate.
pub fn create(data_dir: &Path, hosts: &[String]) -> anyhow::Result<Vec<String>> {
    let d = dir(data_dir);
    if d.join(CA_CERT).exists() || d.join(CA_KEY).exists() {
        anyhow::bail!(
            "{} already holds a CA; refusing to overwrite it",
            d.display()
        );
    }
    anyhow::ensure!(
        !d.exists()
            || std::fs::read_dir(&d)
                .map(|mut e| e.next().is_none())
                .unwrap_or(false),
        "{} exists and is not empty; refusing to overwrite it",
        d.display()
    );
    // Written into a scratch directory, then renamed into place: a failure part-way leaves no
    // CA key without its certificate behind.
    let scratch = data_dir.join(".tls.partial");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("removing the leftover {}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let ca_key = KeyPair::generate()?;
    let ca = ca_params()?.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let (names, server_pem, server_key_pem) = server_certificate(&issuer, hosts)?;
    write_secret(&scratch.join(CA_KEY), &issuer.key().serialize_pem())?;
    write_public(&scratch.join(CA_CERT), &ca.pem())?;
    write_secret(&scratch.join(SERVER_KEY), &server_key_pem)?;
    write_public(&scratch.join(SERVER_CERT), &server_pem)?;
    if d.exists() {
        std::fs::remove_dir(&d).with_context(|| format!("replacing the empty {}", d.display()))?;
    }
    std::fs::rename(&scratch, &d)
        .with_context(|| format!("moving {} to {}", scratch.display(), d.display()))?;
    Ok(names)
}

/// A server certificate for `hosts` (plus [`DEFAULT_HOSTS`]) with a fresh key, signed by the
/// CA: (host names, certificate PEM, key PEM).
fn server_certificate(
    issuer: &Issuer<'_, KeyPair>,
    hosts: &[String],
) -> anyhow::Result<(Vec<String>, String, String)> {
    let mut names: Vec<String> = DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
    for h in hosts {
        let h = h.trim();
        anyhow::ensure!(
            !h.is_empty() && !h.contains(['/', ':', ' ']) || h.parse::<std::net::IpAddr>().is_ok(),
            "--host {h:?} is not a host name or IP address"
        );
        if !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    let mut p = CertificateParams::new(names.clone())
        .with_context(|| format!("server certificate for {names:?}"))?;
    p.distinguished_name
        .push(DnType::CommonName, "Yosegi coordinator");
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut p);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((names, cert.pem(), key.serialize_pem()))
}

/// Replaces the server certificate and key with new ones from the same CA, for `hosts` (give
/// every name parties dial again; the defaults are always in). Plants pin the CA, so nothing
/// changes for them; the coordinator loads the new certificate when it next starts. Each file
/// is written beside its old one and renamed over it. Returns the host names.
pub fn renew(data_dir: &Path, hosts: &[String]) -> anyhow::Result<Vec<String>> {
    let d = dir(data_dir);
    let ca_key = KeyPair::from_pem(&read_secret(&d.join(CA_KEY))?)
        .with_context(|| format!("{} is not a private key", d.join(CA_KEY).display()))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let (names, cert, key) = server_certificate(&issuer, hosts)?;
    let (key_next, cert_next) = (d.join("server.key.pem.next"), d.join("server.pem.next"));
    for f in [&key_next, &cert_next] {
        let _ = std::fs::remove_file(f);
    }
    write_secret(&key_next, &key)?;
    write_public(&cert_next, &cert)?;
    // A crash between the two renames leaves the new key beside the old certificate: run
    // `tls renew` again before serving.
    std::fs::rename(&key_next, d.join(SERVER_KEY))
        .with_context(|| format!("installing {}", d.join(SERVER_KEY).display()))?;
    std::fs::rename(&cert_next, d.join(SERVER_CERT))
        .with_context(|| format!("installing {}", d.join(SERVER_CERT).display()))?;
    std::fs::File::open(&d)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", d.display()))?;
    Ok(names)
}

/// Issues a client certificate for mutual TLS, signed by the data dir's CA, to
/// `out/NAME.pem` and `out/NAME.key.pem` (mode 0600).
pub fn issue_client(data_dir: &Path, name: &str, out: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    shared_model::ids::PartyId::new(name)?;
    let d = dir(data_dir);
    let ca_key = KeyPair::from_pem(&read_secret(&d.join(CA_KEY))?)
        .with_context(|| format!("{} is not a private key", d.join(CA_KEY).display()))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut p);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (c, k) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key.pem")),
    );
    write_secret(&k, &key.serialize_pem())?;
    write_public(&c, &cert.pem())?;
    Ok((c, k))
}

/// The server side: its certificate and key, and for mutual TLS the CA whose client
/// certificates it requires.
#[derive(Clone)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
    /// PEM CA certificate that client certificates must chain to (mutual TLS), if required.
    pub client_ca_pem: Option<String>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate and key files (the key must be mode 0600) and, for mutual TLS,
    /// the client CA.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Self> {
        let cert_pem = read(cert).with_context(|| {
            "no TLS certificate: run `coordinator tls init --data-dir DIR --host NAME` (or serve with --plaintext, which sends everything in clear)"
        })?;
        Ok(Self {
            cert_pem,
            key_pem: read_secret(key)?,
            client_ca_pem: client_ca.map(read).transpose()?,
        })
    }

    /// The data dir's own certificate and key.
    pub fn from_data_dir(data_dir: &Path, client_ca: Option<&Path>) -> anyhow::Result<Self> {
        let d = dir(data_dir);
        Self::load(&d.join(SERVER_CERT), &d.join(SERVER_KEY), client_ca)
    }

    /// The same certificate (and client CA) as a rustls configuration, for the metrics
    /// endpoint: HTTP/1.1 over TLS 1.2/1.3, ring as tonic uses it.
    pub fn rustls(&self) -> anyhow::Result<std::sync::Arc<tokio_rustls::rustls::ServerConfig>> {
        use std::sync::Arc;
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("reading the server certificate")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .context("reading the server key")?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(c.context("reading the client CA")?)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// tonic's server configuration.
    pub fn config(&self) -> tonic::transport::ServerTlsConfig {
        let mut c = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem),
        );
        if let Some(ca) = &self.client_ca_pem {
            c = c.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        c
    }
}

pub use yosegi_proto::transport::{ClientTls, channel, read_secret};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_from_day_counts() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // 2026-11-28 and the New Year's Eve that a year-length approximation got wrong.
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
        assert_eq!(civil_from_days(20_818), (2026, 12, 31));
        assert_eq!(civil_from_days(20_819), (2027, 1, 1));
    }

    #[test]
    fn init_makes_a_ca_and_server_certificate_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let names = create(d.path(), &["coordinator".into(), "10.0.0.5".into()]).unwrap();
        assert_eq!(names, ["localhost", "127.0.0.1", "coordinator", "10.0.0.5"]);
        for f in [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY] {
            assert!(dir(d.path()).join(f).is_file(), "{f}");
        }
        #[cfg(unix)]
        for f in [CA_KEY, SERVER_KEY] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir(d.path()).join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let e = create(d.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
        let tls = ServerTls::from_data_dir(d.path(), None).unwrap();
        assert!(tls.cert_pem.contains("BEGIN CERTIFICATE"));
        let e = create(tempfile::tempdir().unwrap().path(), &["a b".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a host name"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_loose_tls_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        create(d.path(), &[]).unwrap();
        let key = dir(d.path()).join(SERVER_KEY);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ServerTls::from_data_dir(d.path(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn missing_certificates_say_how_to_make_them() {
        let d = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            ServerTls::from_data_dir(d.path(), None).unwrap_err()
        );
        assert!(e.contains("coordinator tls init"), "{e}");
        assert!(e.contains("--plaintext"), "{e}");
    }
}
