//! Prometheus metrics of a serving coordinator, in the text exposition format (version 0.0.4) at
//! `GET /metrics` on `metrics_listen` (off unless configured), over the gRPC server's TLS (plain
//! HTTP only beside a `--plaintext` server). Counters and histograms are kept
//! in memory by the gRPC layer; round, party and task gauges are read from the database at
//! scrape time, so they survive restarts.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `yosegi_uploads_total` | counter | `outcome` (accepted, already_accepted, rejected, refused, broken, limited), `reason` (the failed check for `rejected`: signature, hash, round, …; how the stream broke for `broken`: stalled, too_long, chunk_gap, not_a_chunk, empty_chunk, malformed, broken, storage; the limit for `limited`: per_assignment, per_party, overall; too_large for `refused`) |
//! | `yosegi_uploads_in_flight` | gauge | — upload streams open now |
//! | `yosegi_connections_open` | gauge | — connections open now |
//! | `yosegi_connections_refused_total` | counter | — connections closed at accept over `max_connections` |
//! | `yosegi_protocol_refusals_total` | counter | `protocol` (as claimed, `other` above 16) — calls refused because this coordinator does not serve the caller's protocol (docs/COMPATIBILITY.md) |
//! | `yosegi_clients` | gauge | `protocol`, `release` — callers by what they spoke at their last call since this start |
//! | `yosegi_upload_bytes_total` | counter | — blob bytes received |
//! | `yosegi_download_bytes_total` | counter | — blob bytes sent to parties and operators |
//! | `yosegi_verification_seconds` | histogram | — time to verify and store one upload |
//! | `yosegi_aggregation_seconds` | histogram | — time to close a round (re-verify, merge, publish) |
//! | `yosegi_rounds` | gauge | `phase` (queued, training, published, failed) |
//! | `yosegi_parties` | gauge | `state` (enrolled, revoked) |
//! | `yosegi_parties_connected` | gauge | — parties with a call in the last 60 s |
//! | `yosegi_tasks` | gauge | — |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// The highest protocol number counted under its own label.
pub const PROTOCOL_LABELS: u32 = 16;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (c, b) in self.counts.iter_mut().zip(BUCKETS) {
            if v <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug, Default)]
struct State {
    uploads: BTreeMap<(String, String), u64>,
    upload_bytes: u64,
    download_bytes: u64,
    verification: Histogram,
    aggregation: Histogram,
    /// By the protocol claimed, up to [`PROTOCOL_LABELS`]; above it under `PROTOCOL_LABELS + 1`,
    /// shown as `other`.
    protocol_refusals: BTreeMap<u32, u64>,
}

/// The in-memory counters and histograms.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

/// Gauges read from the database at scrape time.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Gauges {
    /// Rounds per phase.
    pub rounds: BTreeMap<String, u64>,
    /// Enrolled (not revoked) parties.
    pub enrolled: u64,
    /// Revoked parties.
    pub revoked: u64,
    /// Parties seen in the last 60 s.
    pub connected: u64,
    /// Tasks.
    pub tasks: u64,
    /// Upload streams open now (set by the server, not read from the database).
    pub uploads_in_flight: u64,
    /// Connections open now (set by the server).
    pub connections_open: u64,
    /// Connections closed at accept over `max_connections` since start (set by the server).
    pub connections_refused: u64,
    /// Callers by (protocol, release) of their last call since start (set by the server).
    pub clients: BTreeMap<(u32, String), u64>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Counts an upload's outcome (`reason` empty unless rejected).
    pub fn upload(&self, outcome: &str, reason: &str, bytes: u64, seconds: f64) {
        self.with(|s| {
            *s.uploads
                .entry((outcome.to_string(), reason.to_string()))
                .or_default() += 1;
            s.upload_bytes += bytes;
            s.verification.observe(seconds);
        });
    }

    /// Counts an upload that never reached verification: its stream broke or a limit refused
    /// it (`outcome` broken or limited, `reason` how), with the bytes it sent.
    pub fn upload_unverified(&self, outcome: &str, reason: &str, bytes: u64) {
        self.with(|s| {
            *s.uploads
                .entry((outcome.to_string(), reason.to_string()))
                .or_default() += 1;
            s.upload_bytes += bytes;
        });
    }

    /// Counts blob bytes sent.
    pub fn download(&self, bytes: u64) {
        self.with(|s| s.download_bytes += bytes);
    }

    /// Counts a call refused for its protocol (claimed by an unauthenticated caller, so the
    /// label set is bounded: protocols above [`PROTOCOL_LABELS`] count as `other`); returns
    /// the refusals so far, all protocols together.
    pub fn protocol_refused(&self, protocol: u32) -> u64 {
        self.with(|s| {
            *s.protocol_refusals
                .entry(protocol.min(PROTOCOL_LABELS + 1))
                .or_default() += 1;
            s.protocol_refusals.values().sum()
        })
    }

    /// Records how long closing a round took.
    pub fn aggregation(&self, seconds: f64) {
        self.with(|s| s.aggregation.observe(seconds));
    }

    /// The exposition text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        self.with(|s| {
            out += "# HELP yosegi_uploads_total Uploads by outcome and, for rejections, the failed check.\n# TYPE yosegi_uploads_total counter\n";
            for ((outcome, reason), n) in &s.uploads {
                let _ = writeln!(
                    out,
                    "yosegi_uploads_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP yosegi_upload_bytes_total Blob bytes received from parties.\n# TYPE yosegi_upload_bytes_total counter\nyosegi_upload_bytes_total {}",
                s.upload_bytes
            );
            let _ = writeln!(
                out,
                "# HELP yosegi_download_bytes_total Blob bytes sent to parties and operators.\n# TYPE yosegi_download_bytes_total counter\nyosegi_download_bytes_total {}",
                s.download_bytes
            );
            s.verification.render(
                "yosegi_verification_seconds",
                "Time to verify and durably store one upload.",
                &mut out,
            );
            s.aggregation.render(
                "yosegi_aggregation_seconds",
                "Time to close a round: re-verify its updates, merge, publish.",
                &mut out,
            );
            out += "# HELP yosegi_protocol_refusals_total Calls refused because this coordinator does not serve the caller's protocol.\n# TYPE yosegi_protocol_refusals_total counter\n";
            for (&protocol, n) in &s.protocol_refusals {
                let protocol = if protocol > PROTOCOL_LABELS {
                    "other".to_string()
                } else {
                    protocol.to_string()
                };
                let _ = writeln!(
                    out,
                    "yosegi_protocol_refusals_total{{protocol=\"{protocol}\"}} {n}"
                );
            }
        });
        out += "# HELP yosegi_rounds Rounds by phase.\n# TYPE yosegi_rounds gauge\n";
        for phase in yosegi_round::RoundPhase::ALL.map(|p| p.as_str()) {
            let n = g.rounds.get(phase).copied().unwrap_or(0);
            let _ = writeln!(out, "yosegi_rounds{{phase=\"{phase}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP yosegi_parties Parties by state.\n# TYPE yosegi_parties gauge\nyosegi_parties{{state=\"enrolled\"}} {}\nyosegi_parties{{state=\"revoked\"}} {}",
            g.enrolled, g.revoked
        );
        let _ = writeln!(
            out,
            "# HELP yosegi_parties_connected Parties with an authenticated call in the last 60 s.\n# TYPE yosegi_parties_connected gauge\nyosegi_parties_connected {}",
            g.connected
        );
        let _ = writeln!(
            out,
            "# HELP yosegi_tasks Tasks.\n# TYPE yosegi_tasks gauge\nyosegi_tasks {}",
            g.tasks
        );
        let _ = writeln!(
            out,
            "# HELP yosegi_uploads_in_flight Upload streams open now.\n# TYPE yosegi_uploads_in_flight gauge\nyosegi_uploads_in_flight {}",
            g.uploads_in_flight
        );
        let _ = writeln!(
            out,
            "# HELP yosegi_connections_open Connections open now.\n# TYPE yosegi_connections_open gauge\nyosegi_connections_open {}",
            g.connections_open
        );
        let _ = writeln!(
            out,
            "# HELP yosegi_connections_refused_total Connections closed at accept because max_connections were open.\n# TYPE yosegi_connections_refused_total counter\nyosegi_connections_refused_total {}",
            g.connections_refused
        );
        out += "# HELP yosegi_clients Callers by the protocol and release of their last call since this start.\n# TYPE yosegi_clients gauge\n";
        for ((protocol, release), n) in &g.clients {
            let release = release.replace(['\\', '"', '\n'], "_");
            let _ = writeln!(
                out,
                "yosegi_clients{{protocol=\"{protocol}\",release=\"{release}\"}} {n}"
            );
        }
        out
    }
}

/// Reads the gauges from the database.
pub fn gauges(
    store: &crate::store::Store,
    now_ms: i64,
) -> Result<Gauges, crate::store::StoreError> {
    let mut g = Gauges::default();
    for t in store.tasks()? {
        g.tasks += 1;
        for r in store.rounds(t.name.as_str())? {
            *g.rounds.entry(r.phase.to_string()).or_default() += 1;
        }
    }
    for p in store.parties()? {
        if p.revoked {
            g.revoked += 1;
        } else {
            g.enrolled += 1;
            if now_ms - p.last_seen_ms <= 60_000 {
                g.connected += 1;
            }
        }
    }
    Ok(g)
}

/// Answers `GET /metrics` on `listener` until `stop` resolves; any other request gets 404. The
/// scrape closure renders the body (it reads the database on a blocking thread); if it fails the
/// scrape gets a 500 with the reason, never made-up zeros. With `tls`, every connection is TLS
/// (the coordinator's certificate; a client certificate too when the server requires one), and
/// a handshake not done within 5 s is dropped.
pub async fn serve_metrics<F, Fut>(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    scrape: F,
    stop: impl std::future::Future<Output = ()>,
) where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send,
{
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(stop);
    loop {
        let (sock, _) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
        };
        let scrape = scrape.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return answer(sock, scrape).await;
            };
            match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(tls)) => answer(tls, scrape).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics: TLS handshake failed"),
                Err(_) => tracing::debug!("metrics: TLS handshake timed out"),
            }
        });
    }
}

/// How long a scraper has for its TLS handshake and for its request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads one request head (at most 4 KiB, at most 5 s) and answers it.
async fn answer<S, F, Fut>(mut sock: S, scrape: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        while len < buf.len() {
            match sock.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let line = head.lines().next().unwrap_or_default();
    let (status, body) = if line.starts_with("GET /metrics ") || line == "GET /metrics" {
        match scrape().await {
            Ok(body) => ("200 OK", body),
            Err(why) => ("500 Internal Server Error", format!("{why}\n")),
        }
    } else {
        (
            "404 Not Found",
            "only GET /metrics is served here\n".to_string(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(response.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// A scrape as Prometheus makes one (`scheme: https`, `ca_file`, `server_name: localhost`):
/// `GET path` over TLS pinned to the CA certificate file `ca`, or plain HTTP without one.
/// Returns the status line and the body. For tests, benchmarks and scripts.
pub fn get(
    addr: std::net::SocketAddr,
    path: &str,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<(String, String)> {
    get_as(addr, path, ca, None)
}

/// [`get`], presenting a client certificate and its key (files, PEM) to a server that
/// requires mutual TLS.
pub fn get_as(
    addr: std::net::SocketAddr,
    path: &str,
    ca: Option<&std::path::Path>,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<(String, String)> {
    use std::io::{Read as _, Write as _};

    use anyhow::Context as _;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let sock =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    match ca {
        None => {
            let mut sock = sock;
            sock.write_all(request.as_bytes())?;
            sock.read_to_string(&mut text)?;
        }
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading {}", ca.display()))?
            {
                roots.add(c.with_context(|| format!("reading {}", ca.display()))?)?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots);
            let config = match identity {
                None => config.with_no_client_auth(),
                Some((cert, key)) => {
                    let chain = CertificateDer::pem_file_iter(cert)
                        .with_context(|| format!("reading {}", cert.display()))?
                        .collect::<Result<Vec<_>, _>>()
                        .with_context(|| format!("reading {}", cert.display()))?;
                    let key = PrivateKeyDer::from_pem_file(key)
                        .with_context(|| format!("reading {}", key.display()))?;
                    config.with_client_auth_cert(chain, key)?
                }
            };
            let name = ServerName::try_from("localhost")?;
            let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
            let mut tls = rustls::StreamOwned::new(conn, sock);
            tls.write_all(request.as_bytes())?;
            // The server closes after its answer; a close without close_notify ends it too.
            if let Err(e) = tls.read_to_string(&mut text)
                && e.kind() != std::io::ErrorKind::UnexpectedEof
            {
                return Err(e).context("reading the answer");
            }
        }
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_by_hand() {
        let m = Metrics::default();
        m.upload("accepted", "", 100, 0.003);
        m.upload("rejected", "signature", 50, 0.02);
        m.download(10);
        m.aggregation(0.2);
        let g = Gauges {
            rounds: BTreeMap::from([(yosegi_round::RoundPhase::Published.to_string(), 2)]),
            enrolled: 3,
            revoked: 1,
            connected: 2,
            tasks: 1,
            uploads_in_flight: 2,
            connections_open: 5,
            connections_refused: 1,
            clients: BTreeMap::from([((1, "0.1.0".to_string()), 2), ((2, "a\"b".to_string()), 1)]),
        };
        m.protocol_refused(3);
        m.protocol_refused(4_000_000);
        m.protocol_refused(u32::MAX);
        m.upload_unverified("broken", "stalled", 7);
        let text = m.render(&g);
        for line in [
            "yosegi_uploads_total{outcome=\"accepted\",reason=\"\"} 1",
            "yosegi_uploads_total{outcome=\"rejected\",reason=\"signature\"} 1",
            "yosegi_uploads_total{outcome=\"broken\",reason=\"stalled\"} 1",
            "yosegi_uploads_in_flight 2",
            "yosegi_connections_open 5",
            "yosegi_connections_refused_total 1",
            "yosegi_upload_bytes_total 157",
            "yosegi_download_bytes_total 10",
            "yosegi_verification_seconds_bucket{le=\"0.0025\"} 0",
            "yosegi_verification_seconds_bucket{le=\"0.005\"} 1",
            "yosegi_verification_seconds_bucket{le=\"+Inf\"} 2",
            "yosegi_verification_seconds_count 2",
            "yosegi_aggregation_seconds_bucket{le=\"0.25\"} 1",
            "yosegi_rounds{phase=\"published\"} 2",
            "yosegi_rounds{phase=\"failed\"} 0",
            "yosegi_parties{state=\"revoked\"} 1",
            "yosegi_parties_connected 2",
            "yosegi_tasks 1",
            "yosegi_protocol_refusals_total{protocol=\"3\"} 1",
            "yosegi_protocol_refusals_total{protocol=\"other\"} 2",
            "yosegi_clients{protocol=\"1\",release=\"0.1.0\"} 2",
            "yosegi_clients{protocol=\"2\",release=\"a_b\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
