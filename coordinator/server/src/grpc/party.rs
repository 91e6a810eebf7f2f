//! `PartyService`: what a plant's daemon calls — assignments (long poll), feature sums,
//! model downloads, streamed signed uploads, evaluation reports and declines.

use std::sync::Arc;
use std::time::Duration;

use shared_model::eval::MetricStats;
use shared_model::ids::Sha256;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use yosegi_proto::v1 as pb;
use yosegi_proto::v1::party_service_server::PartyService;

use super::convert;
use crate::blobs::BlobStore;
use crate::engine::{EngineError, Upload, UploadOutcome};
use crate::state::now_ms;

use super::receive::{StreamFault, receive};
use super::server::{CHUNK, PARTY, PartySvc, change_engine, with_engine};

/// Reads a published model's blob on a blocking thread (never under the engine lock).
pub(super) async fn read_blob(blobs: BlobStore, sha: Sha256) -> Result<Arc<Vec<u8>>, Status> {
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
pub(super) fn stream_model<M: Send + 'static>(
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

impl PartySvc {
    /// Counts a broken upload stream, records it against its party (rate-limited) when it is
    /// the party's doing, and returns what the party reads.
    async fn stream_fault(
        &self,
        party: &str,
        assignment: &str,
        env: &shared_model::update::SignedUpdate,
        fault: StreamFault,
    ) -> Status {
        let code = fault.code();
        self.0.metrics.upload_unverified("broken", code, 0);
        let reason = fault.reason(party);
        if fault.is_party_fault() {
            tracing::warn!(%party, %assignment, code, "{reason}");
        } else {
            tracing::error!(%party, %assignment, "{reason}");
        }
        let record = fault.is_party_fault()
            && match self.0.faults.admit(party, std::time::Instant::now()) {
                Ok(record) => record,
                Err(limit) => {
                    tracing::warn!(%party, "more than {limit} broken uploads of {party} in a minute; the rest of this minute's are counted in metrics only");
                    false
                }
            };
        if record {
            let (p, a, e2, r) = (
                party.to_string(),
                assignment.to_string(),
                env.clone(),
                reason,
            );
            if let Err(s) = change_engine(&self.0, move |e| {
                e.refuse_stream(&p, &a, &e2, code, r, now_ms())
            })
            .await
            {
                tracing::error!(%party, error = %s.message(), "recording a broken upload failed");
            }
        }
        fault.status(party)
    }
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
        )
        .map_err(|e| Status::invalid_argument(format!("field sums: {e}")))?;
        change_engine(&self.0, move |e| {
            e.submit_sums(&party, &r.assignment_id, &sums, now_ms())
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
        // The proof covers the first message: authenticate once it is in.
        let (md, ext, mut stream) = req.into_parts();
        // (The digest layer ends a call whose first message is late.)
        let first = stream.message().await?;
        let party = self.0.party(
            &Request::from_parts(md, ext, ()),
            &format!("{PARTY}UploadUpdate"),
        )?;
        let first = first
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
        // One spelling per assignment (the per-assignment limit is keyed on it).
        let id = start
            .assignment_id
            .parse::<yosegi_round::AssignmentId>()
            .map_err(|e| Status::invalid_argument(format!("field assignment_id: {e}")))?;
        let assignment = id.to_string();
        // The cap comes from the task named by the assignment (what the coordinator asked for),
        // not from the envelope, whose task must then match it.
        let task = id.task.to_string();
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
        let slot = self
            .0
            .uploads
            .admit(&party, &assignment)
            .map_err(|(status, limit)| {
                self.0.metrics.upload_unverified("limited", limit, 0);
                tracing::warn!(%party, %assignment, limit, "upload stream refused: {}", status.message());
                status
            })?;
        // Decided before a byte is received: a refused upload sends none, a retry of an
        // accepted one needs none.
        let (p, a, e2) = (party.clone(), assignment.clone(), env.clone());
        let early = change_engine(&self.0, move |e| e.admit_upload(&p, &a, &e2, now_ms()))
            .await
            .inspect_err(|s| {
                self.0.metrics.upload("refused", "", 0, 0.0);
                tracing::warn!(%party, reason = %s.message(), "upload refused");
            })?;
        let sha = env.header.blob_sha256.to_string();
        if let Some(UploadOutcome::AlreadyAccepted) = early {
            self.0.metrics.upload("already_accepted", "", 0, 0.0);
            tracing::info!(%party, blob = %sha, "upload already accepted; no bytes needed");
            return Ok(Response::new(pb::UploadUpdateResponse {
                status: pb::UploadStatus::AlreadyAccepted as i32,
                blob_sha256: sha,
            }));
        }
        // The reports beside the update must parse (the engine checks what they say).
        let reports = parse_reports(&start).map_err(|message| StreamFault::Broken {
            status: tonic::Code::InvalidArgument,
            message,
        });
        let (metrics, audit) = match reports {
            Ok(r) => r,
            Err(fault) => return Err(self.stream_fault(&party, &assignment, &env, fault).await),
        };
        let staged = with_engine(&self.0, |e| Ok(e.blobs().stage()?)).await?;
        let received = match receive(
            &mut stream,
            staged,
            env.header.blob_len,
            self.0.config.upload_pace(),
        )
        .await
        {
            Ok(staged) => staged,
            Err(fault) => return Err(self.stream_fault(&party, &assignment, &env, fault).await),
        };
        let key = self
            .0
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&party)
            .map(|(k, _)| *k)
            .ok_or_else(|| Status::unauthenticated("party vanished"))?;
        let p = party.clone();
        let bytes_in = received.len();
        let started = std::time::Instant::now();
        let outcome = change_engine(&self.0, move |e| {
            // The stream's place is held until its verification ends, even if the caller
            // hangs up meanwhile: a reset cannot queue uploads past the limits.
            let _slot = slot;
            let mut staged = received;
            // Read back under the engine lock: one upload's bytes in memory at a time.
            let bytes = staged.read()?;
            let upload = Upload {
                party: &p,
                party_key: &key,
                assignment: &assignment,
                envelope: &env,
                bytes: &bytes,
                local_metrics: metrics.as_ref(),
                membership_audit: audit.as_ref(),
            };
            Ok(e.accept_upload(&upload, Some(staged), now_ms()))
        })
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        let (label, reason) = match &outcome {
            Ok(UploadOutcome::Accepted) => ("accepted", ""),
            Ok(UploadOutcome::AlreadyAccepted) => ("already_accepted", ""),
            Err(EngineError::Rejected { code, .. }) => ("rejected", *code),
            Err(_) => ("refused", ""),
        };
        self.0.metrics.upload(label, reason, bytes_in, seconds);
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
            .map_err(|e| Status::invalid_argument(format!("field stats.json: {e}")))?;
        change_engine(&self.0, move |e| {
            e.report_evaluation(&party, &r.assignment_id, &stats)
        })
        .await?;
        Ok(Response::new(pb::ReportEvaluationResponse {}))
    }

    async fn coordinator_keys(
        &self,
        req: Request<pb::CoordinatorKeysRequest>,
    ) -> Result<Response<pb::CoordinatorKeysResponse>, Status> {
        self.0.party(&req, &format!("{PARTY}CoordinatorKeys"))?;
        let rotations = with_engine(&self.0, |e| Ok(e.store().key_rotations()?)).await?;
        Ok(Response::new(pb::CoordinatorKeysResponse {
            rotations: rotations
                .into_iter()
                .map(|r| pb::KeyRotation {
                    statement: r.statement,
                    signature_by_previous: r.by_previous.to_vec(),
                    signature_by_new: r.by_new.to_vec(),
                })
                .collect(),
        }))
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

/// The local metrics and membership audit an upload carries beside its envelope: absent
/// (an empty field), or JSON that must parse; the error names the field.
fn parse_reports(
    start: &pb::UploadStart,
) -> Result<
    (
        Option<MetricStats>,
        Option<shared_model::membership::MembershipAudit>,
    ),
    String,
> {
    let metrics = match start.local_metrics.as_ref().map(|m| m.json.as_str()) {
        None | Some("") => None,
        Some(json) => Some(
            serde_json::from_str(json)
                .map_err(|e| format!("field local_metrics.json does not parse: {e}"))?,
        ),
    };
    let audit = match start.membership_audit_json.as_str() {
        "" => None,
        json => Some(
            serde_json::from_str(json)
                .map_err(|e| format!("field membership_audit_json does not parse: {e}"))?,
        ),
    };
    Ok((metrics, audit))
}
