//! The gRPC server: authentication of every call, the party and operator services, health and
//! reflection, the engine ticker, and graceful shutdown. Engine calls run on blocking threads.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use ed25519_dalek::{Signature, VerifyingKey};
use shared_model::auth::{CallProof, NonceCache, OPERATOR, PROOF_VERSION};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::{Request, Status};
use yosegi_proto::v1::operator_service_server::OperatorServiceServer;
use yosegi_proto::v1::party_service_server::PartyServiceServer;
use yosegi_round::Role;

use super::convert;
use crate::engine::{Engine, EngineError};
use crate::state::{DataDir, now_ms};

/// Chunk size of streamed blobs.
pub const CHUNK: usize = 1 << 20;

/// The largest message a caller may send (a chunk and its framing fit with room to spare);
/// tonic's default is 4 MiB.
pub const MAX_MESSAGE: usize = 2 << 20;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Largest accepted difference between a caller's clock and ours.
    pub max_skew: Duration,
    /// Longest a long poll is held.
    pub max_wait: Duration,
    /// How often the engine is ticked (deadlines, phase changes).
    pub tick: Duration,
    /// How long to wait for in-flight calls at shutdown.
    pub grace: Duration,
    /// How long an upload stream may send nothing before it is dropped.
    pub upload_idle: Duration,
    /// The slowest an upload stream may send on average, bytes per second: a stream is
    /// dropped once it has taken `upload_idle` plus its declared length at this rate.
    pub upload_min_rate: u64,
    /// How long a published manifest stays valid.
    pub manifest_ttl: Duration,
    /// How many upload streams may be open at once.
    pub uploads: super::receive::UploadLimit,
    /// How many connections may be open at once, and how soon each must start its handshake.
    pub connections: super::listen::ConnectionLimit,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when `None`.
    pub metrics: Option<std::net::SocketAddr>,
    /// TLS certificate and key (and client CA for mutual TLS); `None` serves plain HTTP/2,
    /// which the serve command allows only when asked (`--plaintext`).
    pub tls: Option<crate::tls::ServerTls>,
    /// Write every call's messages to this file (compatibility fixtures only:
    /// [`super::record`]); `None` in any real federation.
    pub record_wire: Option<std::path::PathBuf>,
}

impl ServeConfig {
    /// How fast an upload stream must send.
    pub(super) fn upload_pace(&self) -> super::receive::Pace {
        super::receive::Pace {
            idle: self.upload_idle,
            min_rate: self.upload_min_rate,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_skew: Duration::from_secs(300),
            max_wait: Duration::from_secs(30),
            tick: Duration::from_millis(200),
            grace: Duration::from_secs(10),
            upload_idle: Duration::from_secs(60),
            upload_min_rate: 64 * 1024,
            manifest_ttl: Duration::from_secs(30 * 86_400),
            uploads: super::receive::UploadLimit::default(),
            connections: super::listen::ConnectionLimit::default(),
            metrics: None,
            tls: None,
            record_wire: None,
        }
    }
}

#[derive(Clone, Debug)]
pub(super) enum Caller {
    Operator(String, Role),
    Party(String),
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) engine: Arc<Mutex<Engine>>,
    pub(super) keys: RwLock<HashMap<String, (VerifyingKey, bool)>>,
    /// Operators' keys, roles and whether each is revoked (the `operators` table).
    pub(super) operators: RwLock<HashMap<String, (VerifyingKey, Role, bool)>>,
    pub(super) nonces: Mutex<NonceCache>,
    /// After an unclean stop (nonces lost): calls signed before this start (Unix ms) are
    /// refused, as they could be replays across the restart (`nonces.rs`).
    pub(super) not_before_ms: Option<i64>,
    pub(super) notify: Notify,
    pub(super) config: ServeConfig,
    pub(super) metrics: crate::metrics::Metrics,
    pub(super) uploads: Arc<super::receive::UploadSlots>,
    pub(super) faults: super::receive::FaultRecords,
    pub(super) connections: Arc<super::listen::Connections>,
    /// The protocol and release each caller spoke at its last authenticated call (since this
    /// start): `ListParties` and `yosegi_clients` show them.
    pub(super) peers: Mutex<HashMap<String, yosegi_proto::version::Peer>>,
}

/// Runs `f` on the engine on a blocking thread.
pub(super) async fn with_engine<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, Status> {
    let engine = shared.engine.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = engine.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| Status::internal(format!("engine task failed: {e}")))?
    .map_err(convert::status)
}

/// Like [`with_engine`] for calls that change state: after a success, wakes the long polls so
/// parties see new work at once. Reads and empty polls do not wake anyone.
pub(super) async fn change_engine<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, Status> {
    let out = with_engine(shared, f).await;
    if out.is_ok() {
        shared.notify.notify_waiters();
    }
    out
}

/// [`change_engine`] carried out as operator `by` (the records of its changes name them).
pub(super) async fn change_engine_as<T: Send + 'static>(
    shared: &Arc<Shared>,
    by: String,
    f: impl FnOnce(&mut Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, Status> {
    change_engine(shared, move |e| e.acting_as(&by, f)).await
}

impl Shared {
    pub(super) fn reload_keys(&self, engine: &Engine) -> Result<(), EngineError> {
        let keys = engine.party_keys()?;
        let mut map = self.keys.write().unwrap_or_else(|p| p.into_inner());
        map.clear();
        for (name, key, revoked) in keys {
            map.insert(name, (key, revoked));
        }
        drop(map);
        self.reload_operators(engine)
    }

    /// Reloads the operators' keys (a handful: reloaded whole after each change).
    pub(super) fn reload_operators(&self, engine: &Engine) -> Result<(), EngineError> {
        let operators = engine.operators()?;
        let mut map = self.operators.write().unwrap_or_else(|p| p.into_inner());
        map.clear();
        for o in operators {
            if let Ok(key) = VerifyingKey::from_bytes(&o.public_key) {
                map.insert(o.name.to_string(), (key, o.role, o.revoked));
            }
        }
        Ok(())
    }

    /// Adds one newly enrolled party's key (reloading all would decode every key: O(parties)
    /// per enrolment).
    pub(super) fn add_key(&self, name: &str, key: VerifyingKey) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (key, false));
    }

    /// Marks one party revoked in the key cache.
    pub(super) fn mark_revoked(&self, name: &str) {
        // A revoked caller no longer counts among the clients served.
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(entry) = self
            .keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(name)
        {
            entry.1 = true;
        }
    }

    pub(super) fn authenticate<T>(&self, req: &Request<T>, method: &str) -> Result<Caller, Status> {
        let md = req.metadata();
        let text = |k: &str| {
            md.get(k).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                Status::unauthenticated(format!(
                    "call is not authenticated: metadata {k} is missing"
                ))
            })
        };
        // The protocol first: a client of another protocol may sign differently.
        let peer = super::protocol::caller_protocol(md, &self.metrics)?;
        match md.get("x-yosegi-proof").and_then(|v| v.to_str().ok()) {
            Some(PROOF_VERSION) => {}
            other => {
                return Err(Status::unauthenticated(format!(
                    "call proof version {} is not accepted: this coordinator needs version {PROOF_VERSION} (metadata x-yosegi-proof; the signature covers the request body, docs/PROTOCOL.md): upgrade the caller",
                    other.unwrap_or("1 (no x-yosegi-proof)")
                )));
            }
        }
        // The unary request, or a stream's first message, must have arrived whole: handlers of
        // client streams authenticate after reading it.
        let body = req
            .extensions()
            .get::<super::digest::FirstMessage>()
            .and_then(super::digest::FirstMessage::digest)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "call is not authenticated: its first message has not arrived",
                )
            })?;
        let caller = text("x-yosegi-caller")?.to_string();
        let timestamp_ms: i64 = text("x-yosegi-timestamp")?
            .parse()
            .map_err(|_| Status::unauthenticated("metadata x-yosegi-timestamp is not a number"))?;
        let nonce_hex = text("x-yosegi-nonce")?;
        let mut nonce = [0u8; 16];
        hex::decode_to_slice(nonce_hex, &mut nonce).map_err(|_| {
            Status::unauthenticated("metadata x-yosegi-nonce must be 32 hex characters")
        })?;
        let sig = md
            .get_bin("x-yosegi-signature-bin")
            .and_then(|v| v.to_bytes().ok())
            .and_then(|b| <[u8; 64]>::try_from(b.as_ref()).ok())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "metadata x-yosegi-signature-bin is missing or not 64 bytes",
                )
            })?;
        let operator = self
            .operators
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&caller)
            .copied();
        let (key, who) = if let Some((key, role, revoked)) = operator {
            if revoked {
                return Err(Status::permission_denied(format!(
                    "operator {caller} is revoked"
                )));
            }
            (key, Caller::Operator(caller.clone(), role))
        } else {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            match keys.get(&caller) {
                None => {
                    return Err(Status::unauthenticated(format!(
                        "unknown caller {caller:?}: not enrolled"
                    )));
                }
                Some((_, true)) => {
                    return Err(Status::permission_denied(format!(
                        "party {caller} is revoked"
                    )));
                }
                Some((k, false)) => (*k, Caller::Party(caller.clone())),
            }
        };
        let proof = CallProof {
            method: method.to_string(),
            caller,
            timestamp_ms,
            nonce,
            body,
        };
        let now = now_ms();
        let max = self.config.max_skew.as_millis() as i64;
        proof
            .verify(&Signature::from_bytes(&sig), &key, now, max)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        if let Some(start) = self.not_before_ms
            && timestamp_ms < start
        {
            // UNAVAILABLE, the code callers retry: an honest caller's retry is signed anew.
            return Err(Status::unavailable(format!(
                "call of {} signed at {timestamp_ms} ms, before this coordinator started at {start} ms after an unclean stop: the nonces of earlier calls were lost, so it could be a replay; sign the call again (if this repeats, the caller's clock is behind)",
                proof.caller
            )));
        }
        if !self
            .nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(nonce, timestamp_ms, now, max)
        {
            return Err(Status::unauthenticated(format!(
                "call replayed: nonce already used by {}",
                proof.caller
            )));
        }
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.get(&proof.caller) != Some(&peer) {
            peers.insert(proof.caller, peer);
        }
        Ok(who)
    }

    pub(super) fn party<T>(&self, req: &Request<T>, method: &str) -> Result<String, Status> {
        match self.authenticate(req, method)? {
            Caller::Party(p) => Ok(p),
            Caller::Operator(name, _) => Err(Status::permission_denied(format!(
                "operator {name} cannot make party calls"
            ))),
        }
    }

    /// Authenticates an operator call and checks that its caller's role allows `method`;
    /// returns the operator's name.
    pub(super) fn operator<T>(&self, req: &Request<T>, method: &str) -> Result<String, Status> {
        match self.authenticate(req, method)? {
            Caller::Operator(name, role) => {
                let bare = method.strip_prefix(OPERATOR_SVC).unwrap_or(method);
                if role.allows(bare) {
                    return Ok(name);
                }
                let needed =
                    Role::needed_for(bare).map_or("no role".into(), |r| format!("role {r}"));
                Err(Status::permission_denied(format!(
                    "operator {name} has role {role}; {bare} needs {needed}"
                )))
            }
            Caller::Party(p) => Err(Status::permission_denied(format!(
                "party {p} cannot make operator calls"
            ))),
        }
    }
}

pub(super) const PARTY: &str = "/yosegi.v1.PartyService/";
pub(super) const OPERATOR_SVC: &str = "/yosegi.v1.OperatorService/";

#[derive(Clone, Debug)]
pub(super) struct PartySvc(pub(super) Arc<Shared>);

#[derive(Clone, Debug)]
pub(super) struct OperatorSvc(pub(super) Arc<Shared>);

/// Makes the data dir's operator key the admin `operator` if no operator is recorded yet, and
/// warns when the file no longer matches the recorded key (the table decides who may call).
fn seed_operators(engine: &mut Engine, file_key: &VerifyingKey) -> anyhow::Result<()> {
    if engine
        .seed_operator(file_key, now_ms())
        .context("recording the data dir's operator key")?
    {
        tracing::info!(
            fingerprint = %shared_model::keys::fingerprint(file_key),
            "the data dir's operator key is the admin \"operator\""
        );
        return Ok(());
    }
    let recorded = engine.operators().context("reading the operators")?;
    if let Some(o) = recorded.iter().find(|o| o.name.as_str() == OPERATOR)
        && o.public_key != file_key.to_bytes()
    {
        tracing::warn!(
            "the data dir's {} is not the recorded key of operator \"operator\" (the recorded one is used)",
            crate::state::OPERATOR_PUB
        );
    }
    Ok(())
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting, lets in-flight calls
/// finish (up to the grace period) and returns.
pub async fn serve(
    listener: TcpListener,
    data: DataDir,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let DataDir {
        key,
        operator,
        store,
        blobs,
        path,
        lock,
    } = data;
    // Held until serving ends: no second coordinator may open this data dir meanwhile.
    let _lock = lock;
    let resumed = super::nonces::resume(&path, now_ms(), config.max_skew.as_millis() as i64)?;
    let mut engine = Engine::new(
        store,
        blobs,
        key,
        crate::engine::EngineConfig {
            manifest_ttl_ms: config.manifest_ttl.as_millis() as i64,
        },
    );
    seed_operators(&mut engine, &operator)?;
    let shared = Arc::new(Shared {
        engine: Arc::new(Mutex::new(engine)),
        keys: RwLock::new(HashMap::new()),
        operators: RwLock::new(HashMap::new()),
        nonces: Mutex::new(resumed.cache),
        not_before_ms: resumed.not_before_ms,
        notify: Notify::new(),
        config: config.clone(),
        metrics: crate::metrics::Metrics::default(),
        uploads: super::receive::UploadSlots::new(config.uploads),
        faults: super::receive::FaultRecords::default(),
        connections: super::listen::Connections::new(config.connections),
        peers: Mutex::new(HashMap::new()),
    });
    {
        let s = shared.clone();
        with_engine(&shared, move |e| s.reload_keys(e))
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    }
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<PartyServiceServer<PartySvc>>().await;
    health
        .set_serving::<OperatorServiceServer<OperatorSvc>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(yosegi_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let ticker = {
        let shared = shared.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(shared.config.tick) => {}
                    _ = stop.changed() => return,
                }
                let r = with_engine(&shared, |e| {
                    let changed = e.tick(now_ms())?;
                    Ok((changed, e.take_merge_seconds()))
                })
                .await;
                match r {
                    Ok((changed, merges)) => {
                        for s in merges {
                            shared.metrics.aggregation(s);
                        }
                        if changed {
                            shared.notify.notify_waiters();
                        }
                    }
                    Err(s) => tracing::error!(error = %s.message(), "engine tick failed"),
                }
            }
        })
    };
    let metrics_task = match config.metrics {
        None => None,
        Some(at) => {
            let l = TcpListener::bind(at)
                .await
                .map_err(|e| anyhow::anyhow!("cannot serve metrics on {at}: {e}"))?;
            // Over the gRPC server's TLS (its certificate, its client CA); plain HTTP only
            // beside a --plaintext server.
            let tls = config
                .tls
                .as_ref()
                .map(crate::tls::ServerTls::rustls)
                .transpose()
                .context("the metrics endpoint's TLS")?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(addr = %l.local_addr()?, scheme, "Prometheus metrics at GET /metrics");
            let shared = shared.clone();
            let mut stop = stop_rx.clone();
            let scrape = move || {
                let shared = shared.clone();
                async move {
                    let mut g = with_engine(&shared, |e| {
                        Ok(crate::metrics::gauges(e.store(), now_ms())?)
                    })
                    .await
                    .map_err(|s| format!("reading the database failed: {}", s.message()))?;
                    g.uploads_in_flight = shared.uploads.in_flight() as u64;
                    g.connections_open = shared.connections.open();
                    g.connections_refused = shared.connections.refused();
                    for peer in shared
                        .peers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                    {
                        *g.clients
                            .entry((peer.protocol, peer.release.clone()))
                            .or_default() += 1;
                    }
                    Ok(shared.metrics.render(&g))
                }
            };
            Some(tokio::spawn(crate::metrics::serve_metrics(
                l,
                tls,
                scrape,
                async move {
                    let _ = stop.changed().await;
                },
            )))
        }
    };
    let addr = listener.local_addr()?;
    // Keepalive pings find dead peers of long-lived connections (a long poll holds one).
    // At most 64 calls at once per connection (tonic would lift hyper's default to unlimited).
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(64))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    match &config.tls {
        Some(tls) => {
            builder = builder
                .tls_config(tls.config().timeout(config.connections.handshake))
                .context("TLS configuration (certificate and key)")?;
            tracing::info!(%addr, data_dir = %path.display(), mutual_tls = tls.client_ca_pem.is_some(), "coordinator serving over TLS");
        }
        None => {
            tracing::warn!(%addr, data_dir = %path.display(), "coordinator serving PLAINTEXT HTTP/2: every call is signed, but updates, sums and metrics travel in clear; serve with TLS outside a test");
        }
    }
    let server = builder
        // Outermost first: the recorder sees what the protocol layer adds to each answer.
        .layer(super::record::RecordLayer::new(
            config.record_wire.as_deref(),
        )?)
        .layer(super::protocol::ProtocolLayer)
        .layer(super::digest::DigestLayer {
            first_message: config.connections.handshake,
        })
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(
            PartyServiceServer::new(PartySvc(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            OperatorServiceServer::new(OperatorSvc(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(shared.connections.incoming(listener), async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    let grace = config.grace;
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r?,
        _ = async { let _ = stop_rx.changed().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("grace period over; dropping remaining calls");
        }
    }
    let _ = ticker.await;
    if let Some(m) = metrics_task {
        let _ = m.await;
    }
    let cache = std::mem::take(&mut *shared.nonces.lock().unwrap_or_else(|p| p.into_inner()));
    super::nonces::save(&path, &cache)?;
    tracing::info!(nonces = cache.len(), "coordinator stopped");
    Ok(())
}
