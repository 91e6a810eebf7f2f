//! The gRPC server: authentication of every call, the party and operator services, health and
//! reflection, the engine ticker, and graceful shutdown. Engine calls run on blocking threads.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use ed25519_dalek::{Signature, VerifyingKey};
use shared_model::auth::{CallProof, NonceCache, OPERATOR};
use shared_model::eval::MetricStats;
use shared_model::ids::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use yosegi_proto::v1 as pb;
use yosegi_proto::v1::operator_service_server::{OperatorService, OperatorServiceServer};
use yosegi_proto::v1::party_service_server::{PartyService, PartyServiceServer};

use super::convert;
use crate::blobs::BlobStore;
use crate::engine::{Engine, EngineError, Upload, UploadOutcome};
use crate::state::{DataDir, now_ms};

/// Chunk size of streamed blobs.
pub const CHUNK: usize = 1 << 20;

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
    /// How long a published manifest stays valid.
    pub manifest_ttl: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when `None`.
    pub metrics: Option<std::net::SocketAddr>,
    /// TLS certificate and key (and client CA for mutual TLS); `None` serves plain HTTP/2,
    /// which the serve command allows only when asked (`--plaintext`).
    pub tls: Option<crate::tls::ServerTls>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_skew: Duration::from_secs(300),
            max_wait: Duration::from_secs(30),
            tick: Duration::from_millis(200),
            grace: Duration::from_secs(10),
            upload_idle: Duration::from_secs(60),
            manifest_ttl: Duration::from_secs(30 * 86_400),
            metrics: None,
            tls: None,
        }
    }
}

#[derive(Clone, Debug)]
enum Caller {
    Operator,
    Party(String),
}

#[derive(Debug)]
struct Shared {
    engine: Arc<Mutex<Engine>>,
    keys: RwLock<HashMap<String, (VerifyingKey, bool)>>,
    operator: VerifyingKey,
    nonces: Mutex<NonceCache>,
    notify: Notify,
    config: ServeConfig,
    metrics: crate::metrics::Metrics,
}

/// Runs `f` on the engine on a blocking thread.
async fn with_engine<T: Send + 'static>(
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
async fn change_engine<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, Status> {
    let out = with_engine(shared, f).await;
    if out.is_ok() {
        shared.notify.notify_waiters();
    }
    out
}

impl Shared {
    fn reload_keys(&self, engine: &Engine) -> Result<(), EngineError> {
        let keys = engine.party_keys()?;
        let mut map = self.keys.write().unwrap_or_else(|p| p.into_inner());
        map.clear();
        for (name, key, revoked) in keys {
            map.insert(name, (key, revoked));
        }
        Ok(())
    }

    /// Adds one newly enrolled party's key (reloading all would decode every key: O(parties)
    /// per enrolment).
    fn add_key(&self, name: &str, key: VerifyingKey) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (key, false));
    }

    /// Marks one party revoked in the key cache.
    fn mark_revoked(&self, name: &str) {
        if let Some(entry) = self
            .keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(name)
        {
            entry.1 = true;
        }
    }

    fn authenticate<T>(&self, req: &Request<T>, method: &str) -> Result<Caller, Status> {
        let md = req.metadata();
        let text = |k: &str| {
            md.get(k).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                Status::unauthenticated(format!(
                    "call is not authenticated: metadata {k} is missing"
                ))
            })
        };
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
        let (key, who) = if caller == OPERATOR {
            (self.operator, Caller::Operator)
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
        };
        let now = now_ms();
        let max = self.config.max_skew.as_millis() as i64;
        proof
            .verify(&Signature::from_bytes(&sig), &key, now, max)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
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
        Ok(who)
    }

    fn party<T>(&self, req: &Request<T>, method: &str) -> Result<String, Status> {
        match self.authenticate(req, method)? {
            Caller::Party(p) => Ok(p),
            Caller::Operator => Err(Status::permission_denied(
                "the operator key cannot make party calls",
            )),
        }
    }

    fn operator<T>(&self, req: &Request<T>, method: &str) -> Result<(), Status> {
        match self.authenticate(req, method)? {
            Caller::Operator => Ok(()),
            Caller::Party(p) => Err(Status::permission_denied(format!(
                "party {p} cannot make operator calls"
            ))),
        }
    }
}

const PARTY: &str = "/yosegi.v1.PartyService/";
const OPERATOR_SVC: &str = "/yosegi.v1.OperatorService/";

#[derive(Clone, Debug)]
struct PartySvc(Arc<Shared>);

#[derive(Clone, Debug)]
struct OperatorSvc(Arc<Shared>);

/// Reads a published model's blob on a blocking thread (never under the engine lock).
async fn read_blob(blobs: BlobStore, sha: Sha256) -> Result<Arc<Vec<u8>>, Status> {
    tokio::task::spawn_blocking(move || blobs.read_unchecked(&sha))
        .await
        .map_err(|e| Status::internal(format!("reading a model blob: {e}")))?
        .map(Arc::new)
        .map_err(|e| {
            tracing::error!(error = %e, "blob store failure");
            Status::unavailable(format!("coordinator storage failed reading a model: {e}"))
        })
}

/// Streams a signed manifest, then the blob in chunks, as messages built by `manifest` and
/// `chunk` (the download and pull responses differ only in their message type). The blob is
/// hashed on a blocking thread while the chunks go out; the last chunk is sent only once the
/// blob is known to hash to `sha` (its name), else the stream ends with DATA_LOSS.
fn stream_model<M: Send + 'static>(
    signed: pb::SignedManifest,
    blob: Arc<Vec<u8>>,
    sha: Sha256,
    manifest: fn(pb::SignedManifest) -> M,
    chunk: fn(pb::BlobChunk) -> M,
) -> ReceiverStream<Result<M, Status>> {
    let (tx, rx) = mpsc::channel(4);
    let hashed = tokio::task::spawn_blocking({
        let blob = blob.clone();
        move || Sha256::of(&blob)
    });
    tokio::spawn(async move {
        if tx.send(Ok(manifest(signed))).await.is_err() {
            return;
        }
        let n = blob.len().div_ceil(CHUNK);
        let part = |i: usize| pb::BlobChunk {
            offset: (i * CHUNK) as u64,
            data: blob[i * CHUNK..blob.len().min((i + 1) * CHUNK)].to_vec(),
        };
        for i in 0..n.saturating_sub(1) {
            if tx.send(Ok(chunk(part(i)))).await.is_err() {
                return;
            }
        }
        match hashed.await {
            Ok(found) if found == sha => {
                if n > 0 {
                    let _ = tx.send(Ok(chunk(part(n - 1)))).await;
                }
            }
            Ok(found) => {
                tracing::error!(blob = %sha, %found, "a stored model blob no longer hashes to its name");
                let _ = tx
                    .send(Err(Status::data_loss(format!(
                        "the coordinator's copy of model blob {sha} is damaged (it hashes to {found}); nothing usable was sent"
                    ))))
                    .await;
            }
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("hashing a model blob: {e}"))))
                    .await;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl PartyService for PartySvc {
    async fn next_assignment(
        &self,
        req: Request<pb::NextAssignmentRequest>,
    ) -> Result<Response<pb::NextAssignmentResponse>, Status> {
        let party = self.0.party(&req, &format!("{PARTY}NextAssignment"))?;
        let wait =
            Duration::from_millis(u64::from(req.get_ref().wait_ms)).min(self.0.config.max_wait);
        let until = tokio::time::Instant::now() + wait;
        let p = party.clone();
        with_engine(&self.0, move |e| Ok(e.store().touch_party(&p, now_ms())?)).await?;
        loop {
            let p = party.clone();
            let a = with_engine(&self.0, move |e| e.next_assignment(&p, now_ms())).await?;
            if let Some(a) = a {
                return Ok(Response::new(pb::NextAssignmentResponse {
                    assignment: Some(convert::assignment(&a)),
                }));
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return Ok(Response::new(pb::NextAssignmentResponse {
                    assignment: None,
                }));
            }
            let _ = tokio::time::timeout(
                (until - now).min(Duration::from_millis(500)),
                self.0.notify.notified(),
            )
            .await;
        }
    }

    async fn submit_feature_sums(
        &self,
        req: Request<pb::SubmitFeatureSumsRequest>,
    ) -> Result<Response<pb::SubmitFeatureSumsResponse>, Status> {
        let party = self.0.party(&req, &format!("{PARTY}SubmitFeatureSums"))?;
        let r = req.into_inner();
        let sums = convert::sums(
            &r.sums
                .ok_or_else(|| Status::invalid_argument("field sums is missing"))?,
        );
        change_engine(&self.0, move |e| {
            e.submit_sums(&party, &r.assignment_id, &sums)
        })
        .await?;
        Ok(Response::new(pb::SubmitFeatureSumsResponse {}))
    }

    type DownloadModelStream = ReceiverStream<Result<pb::DownloadModelResponse, Status>>;

    async fn download_model(
        &self,
        req: Request<pb::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let party = self.0.party(&req, &format!("{PARTY}DownloadModel"))?;
        let r = req.into_inner();
        let (m, sha, blobs) = with_engine(&self.0, move |e| {
            e.check_member(&r.task, &party)?;
            e.model_ref(&r.task, Some(r.version))
        })
        .await?;
        let blob = read_blob(blobs, sha).await?;
        self.0.metrics.download(blob.len() as u64);
        Ok(Response::new(stream_model(
            convert::manifest(&m),
            blob,
            sha,
            |m| pb::DownloadModelResponse {
                part: Some(pb::download_model_response::Part::Manifest(m)),
            },
            |c| pb::DownloadModelResponse {
                part: Some(pb::download_model_response::Part::Chunk(c)),
            },
        )))
    }

    async fn upload_update(
        &self,
        req: Request<Streaming<pb::UploadUpdateRequest>>,
    ) -> Result<Response<pb::UploadUpdateResponse>, Status> {
        let party = self.0.party(&req, &format!("{PARTY}UploadUpdate"))?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .and_then(|m| m.part)
            .ok_or_else(|| Status::invalid_argument("upload must start with the envelope"))?;
        let pb::upload_update_request::Part::Start(start) = first else {
            return Err(Status::invalid_argument(
                "upload must start with the envelope, not a chunk",
            ));
        };
        let env = convert::envelope(
            start
                .envelope
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("field envelope is missing"))?,
        )?;
        // The cap comes from the task named by the assignment (what the coordinator asked for),
        // not from the envelope, whose task must then match it.
        let task = start
            .assignment_id
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if env.header.task.as_str() != task {
            return Err(Status::invalid_argument(format!(
                "rejected: update of {party} names task {} but answers assignment {}",
                env.header.task, start.assignment_id
            )));
        }
        let cap = with_engine(&self.0, move |e| e.max_blob_bytes(&task)).await?;
        if env.header.blob_len > cap {
            self.0.metrics.upload("refused", "too_large", 0, 0.0);
            return Err(Status::invalid_argument(format!(
                "rejected: update of {party} declares {} bytes; the spec allows at most {cap}",
                env.header.blob_len
            )));
        }
        let declared = env.header.blob_len as usize;
        // Grow with what arrives rather than trusting the declared length up front.
        let mut bytes = Vec::with_capacity(declared.min(4 << 20));
        let idle = self.0.config.upload_idle;
        while let Some(msg) = tokio::time::timeout(idle, stream.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "upload of {party} sent nothing for {} s; dropped",
                    idle.as_secs()
                ))
            })??
        {
            let Some(pb::upload_update_request::Part::Chunk(c)) = msg.part else {
                return Err(Status::invalid_argument(
                    "only chunks may follow the envelope",
                ));
            };
            if c.offset != bytes.len() as u64 {
                return Err(Status::invalid_argument(format!(
                    "chunk at offset {} does not follow byte {}",
                    c.offset,
                    bytes.len()
                )));
            }
            if bytes.len() + c.data.len() > declared {
                return Err(Status::invalid_argument(format!(
                    "rejected: upload of {party} sends more than the {declared} bytes its envelope declares"
                )));
            }
            bytes.extend_from_slice(&c.data);
        }
        let metrics: Option<MetricStats> = start
            .local_metrics
            .as_ref()
            .and_then(|m| serde_json::from_str(&m.json).ok());
        let audit: Option<shared_model::membership::MembershipAudit> =
            serde_json::from_str(&start.membership_audit_json).ok();
        let key = self
            .0
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&party)
            .map(|(k, _)| *k)
            .ok_or_else(|| Status::unauthenticated("party vanished"))?;
        let sha = env.header.blob_sha256.to_string();
        let (p, assignment) = (party.clone(), start.assignment_id.clone());
        let received = bytes.len() as u64;
        let started = std::time::Instant::now();
        let outcome = change_engine(&self.0, move |e| {
            let upload = Upload {
                party: &p,
                party_key: &key,
                assignment: &assignment,
                envelope: &env,
                bytes: &bytes,
                local_metrics: metrics.as_ref(),
                membership_audit: audit.as_ref(),
            };
            Ok(e.accept_upload(&upload, now_ms()))
        })
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        let (label, reason) = match &outcome {
            Ok(UploadOutcome::Accepted) => ("accepted", ""),
            Ok(UploadOutcome::AlreadyAccepted) => ("already_accepted", ""),
            Err(EngineError::Rejected { code, .. }) => ("rejected", *code),
            Err(_) => ("refused", ""),
        };
        self.0.metrics.upload(label, reason, received, seconds);
        let outcome = outcome.map_err(convert::status);
        match &outcome {
            Ok(o) => tracing::info!(%party, outcome = ?o, blob = %sha, "upload"),
            Err(s) => tracing::warn!(%party, reason = %s.message(), "upload refused"),
        }
        let status = match outcome? {
            UploadOutcome::Accepted => pb::UploadStatus::Accepted,
            UploadOutcome::AlreadyAccepted => pb::UploadStatus::AlreadyAccepted,
        };
        Ok(Response::new(pb::UploadUpdateResponse {
            status: status as i32,
            blob_sha256: sha,
        }))
    }

    async fn report_evaluation(
        &self,
        req: Request<pb::ReportEvaluationRequest>,
    ) -> Result<Response<pb::ReportEvaluationResponse>, Status> {
        let party = self.0.party(&req, &format!("{PARTY}ReportEvaluation"))?;
        let r = req.into_inner();
        let stats: MetricStats = serde_json::from_str(&r.stats.unwrap_or_default().json)
            .map_err(|e| Status::invalid_argument(format!("field stats: {e}")))?;
        change_engine(&self.0, move |e| {
            e.report_evaluation(&party, &r.assignment_id, &stats)
        })
        .await?;
        Ok(Response::new(pb::ReportEvaluationResponse {}))
    }

    async fn decline_assignment(
        &self,
        req: Request<pb::DeclineAssignmentRequest>,
    ) -> Result<Response<pb::DeclineAssignmentResponse>, Status> {
        let party = self.0.party(&req, &format!("{PARTY}DeclineAssignment"))?;
        let r = req.into_inner();
        tracing::warn!(%party, assignment = %r.assignment_id, reason = %r.reason, "assignment declined");
        change_engine(&self.0, move |e| {
            e.decline(&party, &r.assignment_id, &r.reason, now_ms())
        })
        .await?;
        Ok(Response::new(pb::DeclineAssignmentResponse {}))
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorSvc {
    async fn enroll_party(
        &self,
        req: Request<pb::EnrollPartyRequest>,
    ) -> Result<Response<pb::EnrollPartyResponse>, Status> {
        self.0
            .operator(&req, &format!("{OPERATOR_SVC}EnrollParty"))?;
        let r = req.into_inner();
        let bytes: [u8; 32] = r
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("field public_key: expected 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| Status::invalid_argument(format!("field public_key: {e}")))?;
        let shared = self.0.clone();
        change_engine(&self.0, move |e| {
            e.enroll(&r.name, &key, now_ms())?;
            shared.add_key(&r.name, key);
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::EnrollPartyResponse {
            fingerprint: shared_model::keys::fingerprint(&key),
        }))
    }

    async fn revoke_party(
        &self,
        req: Request<pb::RevokePartyRequest>,
    ) -> Result<Response<pb::RevokePartyResponse>, Status> {
        self.0
            .operator(&req, &format!("{OPERATOR_SVC}RevokeParty"))?;
        let name = req.into_inner().name;
        let shared = self.0.clone();
        change_engine(&self.0, move |e| {
            e.revoke(&name, now_ms())?;
            shared.mark_revoked(&name);
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::RevokePartyResponse {}))
    }

    async fn list_parties(
        &self,
        req: Request<pb::ListPartiesRequest>,
    ) -> Result<Response<pb::ListPartiesResponse>, Status> {
        self.0
            .operator(&req, &format!("{OPERATOR_SVC}ListParties"))?;
        let rows = with_engine(&self.0, |e| Ok(e.store().parties()?)).await?;
        Ok(Response::new(pb::ListPartiesResponse {
            parties: rows
                .into_iter()
                .map(|p| pb::PartyInfo {
                    fingerprint: VerifyingKey::from_bytes(&p.public_key)
                        .map(|k| shared_model::keys::fingerprint(&k))
                        .unwrap_or_default(),
                    name: p.name.to_string(),
                    revoked: p.revoked,
                    enrolled_unix_ms: p.enrolled_ms,
                    last_seen_unix_ms: p.last_seen_ms,
                })
                .collect(),
        }))
    }

    async fn create_task(
        &self,
        req: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::CreateTaskResponse>, Status> {
        self.0
            .operator(&req, &format!("{OPERATOR_SVC}CreateTask"))?;
        let r = req.into_inner();
        let spec_id = change_engine(&self.0, move |e| {
            e.create_task(&r.name, &r.spec_toml, &r.parties, now_ms())
        })
        .await?;
        Ok(Response::new(pb::CreateTaskResponse { spec_id }))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.0.operator(&req, &format!("{OPERATOR_SVC}ListTasks"))?;
        let tasks = with_engine(&self.0, |e| {
            let mut out = Vec::new();
            for t in e.store().tasks()? {
                let latest = e.store().latest_version(t.name.as_str())?.0;
                let spec_name = t.spec().map(|s| s.name).unwrap_or_default();
                out.push(pb::TaskInfo {
                    name: t.name.to_string(),
                    spec_id: t.spec_id,
                    spec_name,
                    parties: t.parties.iter().map(|p| p.to_string()).collect(),
                    latest_version: latest,
                    created_unix_ms: t.created_ms,
                });
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn start_round(
        &self,
        req: Request<pb::StartRoundRequest>,
    ) -> Result<Response<pb::StartRoundResponse>, Status> {
        self.0
            .operator(&req, &format!("{OPERATOR_SVC}StartRound"))?;
        let r = req.into_inner();
        let options: BTreeMap<String, String> = r.options.into_iter().collect();
        let first = change_engine(&self.0, move |e| {
            e.start_rounds(
                &r.task,
                &r.strategy,
                &options,
                r.min_parties,
                r.deadline_ms as i64,
                r.rounds,
                now_ms(),
            )
        })
        .await?;
        Ok(Response::new(pb::StartRoundResponse { first_round: first }))
    }

    async fn round_status(
        &self,
        req: Request<pb::RoundStatusRequest>,
    ) -> Result<Response<pb::RoundStatusResponse>, Status> {
        self.0
            .operator(&req, &format!("{OPERATOR_SVC}RoundStatus"))?;
        let task = req.into_inner().task;
        let t2 = task.clone();
        let (rounds, declines) = with_engine(&self.0, move |e| {
            let rounds = convert::round_infos(e.store(), &t2)?;
            let declines = e
                .store()
                .declines(&t2)?
                .into_iter()
                .map(|(party, assignment, reason, at)| pb::DeclineInfo {
                    party,
                    assignment,
                    reason,
                    at_unix_ms: at,
                })
                .collect();
            Ok((rounds, declines))
        })
        .await?;
        Ok(Response::new(pb::RoundStatusResponse {
            task,
            rounds,
            declines,
        }))
    }

    type PullModelStream = ReceiverStream<Result<pb::PullModelResponse, Status>>;

    async fn pull_model(
        &self,
        req: Request<pb::PullModelRequest>,
    ) -> Result<Response<Self::PullModelStream>, Status> {
        self.0.operator(&req, &format!("{OPERATOR_SVC}PullModel"))?;
        let r = req.into_inner();
        let version = (r.version > 0).then_some(r.version);
        let (m, sha, blobs) = with_engine(&self.0, move |e| e.model_ref(&r.task, version)).await?;
        let blob = read_blob(blobs, sha).await?;
        self.0.metrics.download(blob.len() as u64);
        Ok(Response::new(stream_model(
            convert::manifest(&m),
            blob,
            sha,
            |m| pb::PullModelResponse {
                part: Some(pb::pull_model_response::Part::Manifest(m)),
            },
            |c| pb::PullModelResponse {
                part: Some(pb::pull_model_response::Part::Chunk(c)),
            },
        )))
    }
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
    let engine = Engine::new(
        store,
        blobs,
        key,
        crate::engine::EngineConfig {
            manifest_ttl_ms: config.manifest_ttl.as_millis() as i64,
        },
    );
    let shared = Arc::new(Shared {
        engine: Arc::new(Mutex::new(engine)),
        keys: RwLock::new(HashMap::new()),
        operator,
        nonces: Mutex::new(NonceCache::default()),
        notify: Notify::new(),
        config: config.clone(),
        metrics: crate::metrics::Metrics::default(),
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
            tracing::info!(addr = %l.local_addr()?, "Prometheus metrics at GET /metrics");
            let shared = shared.clone();
            let mut stop = stop_rx.clone();
            let scrape = move || {
                let shared = shared.clone();
                async move {
                    let g = with_engine(&shared, |e| {
                        Ok(crate::metrics::gauges(e.store(), now_ms())?)
                    })
                    .await
                    .map_err(|s| format!("reading the database failed: {}", s.message()))?;
                    Ok(shared.metrics.render(&g))
                }
            };
            Some(tokio::spawn(crate::metrics::serve_metrics(
                l,
                scrape,
                async move {
                    let _ = stop.changed().await;
                },
            )))
        }
    };
    let addr = listener.local_addr()?;
    let mut builder = tonic::transport::Server::builder();
    match &config.tls {
        Some(tls) => {
            builder = builder
                .tls_config(tls.config())
                .context("TLS configuration (certificate and key)")?;
            tracing::info!(%addr, data_dir = %path.display(), mutual_tls = tls.client_ca_pem.is_some(), "coordinator serving over TLS");
        }
        None => {
            tracing::warn!(%addr, data_dir = %path.display(), "coordinator serving PLAINTEXT HTTP/2: every call is signed, but updates, sums and metrics travel in clear; serve with TLS outside a test");
        }
    }
    let server = builder
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(PartyServiceServer::new(PartySvc(shared.clone())))
        .add_service(OperatorServiceServer::new(OperatorSvc(shared.clone())))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
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
    tracing::info!("coordinator stopped");
    Ok(())
}
