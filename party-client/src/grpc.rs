//! The party's gRPC client — the only code in this crate that touches `yosegi_proto`. Every
//! call is signed with the party key; results come back as domain types.

use anyhow::Context as _;
use shared_model::auth::{CallProof, PROOF_VERSION};
use shared_model::eval::MetricStats;
use shared_model::ids::Sha256;
use shared_model::manifest::SignedManifest;
use shared_model::stats::FeatureSums;
use shared_model::update::SignedUpdate;
use shared_model::{SigningKey, VerifyingKey};
use tonic::Request;
use tonic::transport::Channel;
pub use yosegi_proto::transport::ClientTls;
use yosegi_proto::v1 as pb;
use yosegi_proto::v1::party_service_client::PartyServiceClient;

/// Chunk size of uploads.
pub const CHUNK: usize = 1 << 20;

/// What the coordinator asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// Opaque id to echo.
    pub id: String,
    /// Task name.
    pub task: String,
    /// Spec text.
    pub spec_toml: String,
    /// Spec id (hex) the coordinator claims; checked against the text.
    pub spec_id: String,
    /// Round.
    pub round: u64,
    /// Step.
    pub step: u64,
    /// The work.
    pub work: Work,
}

/// Kinds of work.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// Report feature sums of the training rows.
    Stats,
    /// Train from a base version.
    Train {
        /// Base version.
        base_version: u64,
        /// Base blob digest.
        base_sha256: String,
        /// The round's strategy (decides what is trained: see `strategy::local_update`).
        strategy: String,
        /// FedProx μ from the round (0 = spec's).
        fedprox_mu: f64,
        /// Learning rate from the round (0 = spec's).
        learning_rate: f64,
        /// Layers to keep frozen.
        frozen_layers: u32,
        /// Local epochs from the round (0 = spec's).
        local_epochs: u32,
        /// Parties whose data the round's result combines (0 = not said).
        round_parties: u32,
    },
    /// Evaluate a published version.
    Evaluate {
        /// The version.
        version: u64,
    },
}

/// How an upload was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Stored durably.
    Accepted,
    /// Had been accepted before.
    AlreadyAccepted,
}

/// A signed connection to the coordinator's party service.
#[derive(Debug, Clone)]
pub struct PartyClient {
    inner: PartyServiceClient<Channel>,
    name: String,
    key: SigningKey,
}

/// The first message of an upload stream: the assignment answered and the signed envelope
/// (then the party's metrics and membership audit, if any). Chunks follow.
pub fn upload_start(
    assignment: &str,
    envelope: &SignedUpdate,
    local_metrics: Option<&MetricStats>,
    audit: Option<&shared_model::membership::MembershipAudit>,
) -> pb::UploadUpdateRequest {
    let h = &envelope.header;
    pb::UploadUpdateRequest {
        part: Some(pb::upload_update_request::Part::Start(pb::UploadStart {
            assignment_id: assignment.into(),
            envelope: Some(pb::UpdateEnvelope {
                task: h.task.to_string(),
                spec_id: h.spec_id.to_string(),
                round: h.round.0,
                step: h.step.0,
                base_model_sha256: h.base_model.to_string(),
                party: h.party.to_string(),
                blob_sha256: h.blob_sha256.to_string(),
                blob_len: h.blob_len,
                sample_count: h.sample_count,
                signer_public_key: envelope.signer.as_bytes().to_vec(),
                signature: envelope.signature.to_bytes().to_vec(),
                min_cohort: h.min_cohort,
            }),
            local_metrics: local_metrics.map(|m| pb::MetricStatsJson {
                json: serde_json::to_string(m).expect("stats serialise"),
            }),
            membership_audit_json: audit
                .map(|a| serde_json::to_string(a).expect("audits serialise"))
                .unwrap_or_default(),
        })),
    }
}

/// Adds the call-authentication metadata to a request whose first message hashes to `body`
/// ([`digest_of`]).
pub fn sign<T>(
    mut req: Request<T>,
    method: &str,
    caller: &str,
    key: &SigningKey,
    now_ms: i64,
    body: [u8; 32],
) -> Request<T> {
    let proof = CallProof::new(
        &format!("/yosegi.v1.PartyService/{method}"),
        caller,
        now_ms,
        body,
    );
    let md = req.metadata_mut();
    yosegi_proto::version::announce(md);
    yosegi_proto::proof::insert(
        md,
        PROOF_VERSION,
        caller,
        proof.timestamp_ms,
        &proof.nonce,
        &proof.sign(key).to_bytes(),
    );
    req
}

/// What a call proof's `body` is for a message: the sha256 of its bytes as sent (prost's
/// encoding is the one tonic sends).
pub fn digest_of(msg: &impl prost::Message) -> [u8; 32] {
    shared_model::auth::body_sha256(&msg.encode_to_vec())
}

/// The daemon's view of an assignment the coordinator sent.
pub fn assignment_of(a: pb::Assignment) -> anyhow::Result<Assignment> {
    let work = match a.work.context("assignment without work")? {
        pb::assignment::Work::Stats(_) => Work::Stats,
        pb::assignment::Work::Train(t) => {
            let o = t.overrides.unwrap_or_default();
            Work::Train {
                base_version: t.base_version,
                base_sha256: t.base_sha256,
                strategy: t.strategy,
                fedprox_mu: o.fedprox_mu,
                learning_rate: o.learning_rate,
                frozen_layers: o.frozen_layers,
                local_epochs: o.local_epochs,
                round_parties: t.round_parties,
            }
        }
        pb::assignment::Work::Evaluate(e) => Work::Evaluate { version: e.version },
    };
    Ok(Assignment {
        id: a.assignment_id,
        task: a.task,
        spec_toml: a.spec_toml,
        spec_id: a.spec_id,
        round: a.round,
        step: a.step,
        work,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This daemon and the coordinator share no protocol (docs/COMPATIBILITY.md): no retry can
/// help, the daemon stops with the message, which names both versions and what to upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolSkew(pub String);

impl std::fmt::Display for ProtocolSkew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolSkew {}

/// Whether `e` is a [`ProtocolSkew`].
pub fn is_skew(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ProtocolSkew>().is_some()
}

fn status(s: tonic::Status) -> anyhow::Error {
    if yosegi_proto::version::is_skew(&s) {
        return ProtocolSkew(format!(
            "the coordinator refused this daemon: {}",
            s.message()
        ))
        .into();
    }
    anyhow::anyhow!("coordinator said {:?}: {}", s.code(), s.message())
}

impl PartyClient {
    /// Connects to an http:// `server` as `name` (https:// needs [`Self::connect_with`]).
    pub async fn connect(server: &str, name: &str, key: SigningKey) -> anyhow::Result<Self> {
        Self::connect_with(server, &ClientTls::default(), name, key).await
    }

    /// Connects to `server` as `name`; https:// pins `tls.ca`.
    pub async fn connect_with(
        server: &str,
        tls: &ClientTls,
        name: &str,
        key: SigningKey,
    ) -> anyhow::Result<Self> {
        let channel = yosegi_proto::transport::channel(server, tls).await?;
        Ok(Self {
            inner: PartyServiceClient::new(channel),
            name: name.to_string(),
            key,
        })
    }

    fn req<T: prost::Message>(&self, msg: T, method: &str) -> Request<T> {
        let body = digest_of(&msg);
        sign(
            Request::new(msg),
            method,
            &self.name,
            &self.key,
            now_ms(),
            body,
        )
    }

    /// Long-polls for work.
    pub async fn next_assignment(&mut self, wait_ms: u32) -> anyhow::Result<Option<Assignment>> {
        let req = self.req(pb::NextAssignmentRequest { wait_ms }, "NextAssignment");
        let r = self.inner.next_assignment(req).await.map_err(status)?;
        yosegi_proto::version::coordinator_of(r.metadata()).map_err(ProtocolSkew)?;
        let r = r.into_inner();
        r.assignment.map(assignment_of).transpose()
    }

    /// Reports feature sums.
    pub async fn submit_sums(
        &mut self,
        assignment: &str,
        sums: &FeatureSums,
    ) -> anyhow::Result<()> {
        let msg = pb::SubmitFeatureSumsRequest {
            assignment_id: assignment.into(),
            sums: Some(pb::FeatureSums {
                count: sums.count,
                sum: sums.sum.clone(),
                sum_sq: sums.sum_sq.clone(),
                present: sums.present.clone(),
                categories: sums
                    .categories
                    .iter()
                    .map(|(column, counts)| pb::CategoryCounts {
                        column: column.clone(),
                        names: counts.keys().cloned().collect(),
                        counts: counts.values().copied().collect(),
                    })
                    .collect(),
                histograms: sums
                    .histograms
                    .iter()
                    .map(|(column, h)| pb::ValueHistogram {
                        column: column.clone(),
                        buckets: h.keys().copied().collect(),
                        counts: h.values().copied().collect(),
                    })
                    .collect(),
            }),
        };
        let req = self.req(msg, "SubmitFeatureSums");
        self.inner.submit_feature_sums(req).await.map_err(status)?;
        Ok(())
    }

    /// Downloads a model version: its signed manifest and blob (not yet verified; the caller
    /// checks both against the pinned key before use). Stops reading past `max_bytes`.
    pub async fn download(
        &mut self,
        task: &str,
        version: u64,
        max_bytes: u64,
    ) -> anyhow::Result<(SignedManifest, Vec<u8>)> {
        let req = self.req(
            pb::DownloadModelRequest {
                task: task.into(),
                version,
            },
            "DownloadModel",
        );
        let mut stream = self
            .inner
            .download_model(req)
            .await
            .map_err(status)?
            .into_inner();
        let mut manifest = None;
        let mut blob = Vec::new();
        while let Some(msg) = stream.message().await.map_err(status)? {
            match msg.part {
                Some(pb::download_model_response::Part::Manifest(m)) => {
                    let sig: [u8; 64] = m
                        .signature
                        .as_slice()
                        .try_into()
                        .context("manifest signature is not 64 bytes")?;
                    manifest = Some(SignedManifest {
                        bytes: m.canonical,
                        signature: ed25519_dalek::Signature::from_bytes(&sig),
                    });
                }
                Some(pb::download_model_response::Part::Chunk(c)) => {
                    anyhow::ensure!(c.offset == blob.len() as u64, "model chunk out of order");
                    anyhow::ensure!(
                        blob.len() as u64 + c.data.len() as u64 <= max_bytes,
                        "model download exceeds the spec's {max_bytes} bytes; stopped reading"
                    );
                    blob.extend_from_slice(&c.data);
                }
                None => {}
            }
        }
        Ok((manifest.context("the coordinator sent no manifest")?, blob))
    }

    /// Streams a signed update.
    pub async fn upload(
        &mut self,
        assignment: &str,
        envelope: &SignedUpdate,
        blob: Vec<u8>,
        local_metrics: Option<&MetricStats>,
    ) -> anyhow::Result<Ack> {
        self.upload_with_audit(assignment, envelope, blob, local_metrics, None)
            .await
    }

    /// [`Self::upload`] with the party's membership audit of the update (its numbers only).
    pub async fn upload_with_audit(
        &mut self,
        assignment: &str,
        envelope: &SignedUpdate,
        blob: Vec<u8>,
        local_metrics: Option<&MetricStats>,
        audit: Option<&shared_model::membership::MembershipAudit>,
    ) -> anyhow::Result<Ack> {
        let start = upload_start(assignment, envelope, local_metrics, audit);
        // Chunks are copied out of the blob as the stream is polled, not all up front: the
        // upload holds about one blob, not two, and sending starts at once.
        let chunks = (0..blob.len().div_ceil(CHUNK)).map(move |i| {
            let c = &blob[i * CHUNK..blob.len().min((i + 1) * CHUNK)];
            pb::UploadUpdateRequest {
                part: Some(pb::upload_update_request::Part::Chunk(pb::BlobChunk {
                    offset: (i * CHUNK) as u64,
                    data: c.to_vec(),
                })),
            }
        });
        let body = digest_of(&start);
        let msgs = std::iter::once(start).chain(chunks);
        let req = sign(
            Request::new(tokio_stream::iter(msgs)),
            "UploadUpdate",
            &self.name,
            &self.key,
            now_ms(),
            body,
        );
        let r = self
            .inner
            .upload_update(req)
            .await
            .map_err(status)?
            .into_inner();
        match pb::UploadStatus::try_from(r.status) {
            Ok(pb::UploadStatus::Accepted) => Ok(Ack::Accepted),
            Ok(pb::UploadStatus::AlreadyAccepted) => Ok(Ack::AlreadyAccepted),
            _ => anyhow::bail!("coordinator answered the upload with status {}", r.status),
        }
    }

    /// Reports evaluation statistics.
    pub async fn report_evaluation(
        &mut self,
        assignment: &str,
        stats: &MetricStats,
    ) -> anyhow::Result<()> {
        let req = self.req(
            pb::ReportEvaluationRequest {
                assignment_id: assignment.into(),
                stats: Some(pb::MetricStatsJson {
                    json: serde_json::to_string(stats)?,
                }),
            },
            "ReportEvaluation",
        );
        self.inner.report_evaluation(req).await.map_err(status)?;
        Ok(())
    }

    /// The rotations of the coordinator's signing key, oldest first (not verified here:
    /// `shared_model::rotation::follow` does).
    pub async fn coordinator_keys(
        &mut self,
    ) -> anyhow::Result<Vec<shared_model::rotation::SignedRotation>> {
        let req = self.req(pb::CoordinatorKeysRequest {}, "CoordinatorKeys");
        let r = self.inner.coordinator_keys(req).await.map_err(status)?;
        let sig = |b: Vec<u8>| -> anyhow::Result<[u8; 64]> {
            b.try_into()
                .map_err(|_| anyhow::anyhow!("a key rotation signature is not 64 bytes"))
        };
        r.into_inner()
            .rotations
            .into_iter()
            .map(|k| {
                Ok(shared_model::rotation::SignedRotation {
                    statement: k.statement,
                    by_previous: sig(k.signature_by_previous)?,
                    by_new: sig(k.signature_by_new)?,
                })
            })
            .collect()
    }

    /// Declines an assignment.
    pub async fn decline(&mut self, assignment: &str, reason: &str) -> anyhow::Result<()> {
        let req = self.req(
            pb::DeclineAssignmentRequest {
                assignment_id: assignment.into(),
                reason: reason.into(),
            },
            "DeclineAssignment",
        );
        self.inner.decline_assignment(req).await.map_err(status)?;
        Ok(())
    }
}

/// Parses a hex digest from the wire.
pub fn digest(s: &str) -> anyhow::Result<Sha256> {
    s.parse()
        .with_context(|| format!("bad digest {s:?} from the coordinator"))
}

/// The key type parties pin, re-exported for callers.
pub type CoordinatorKey = VerifyingKey;

#[cfg(test)]
mod tests {
    use super::*;
    use yosegi_proto::version::{Peer, serve_client};

    #[test]
    fn a_protocol_refusal_is_final_and_other_refusals_are_not() {
        let first = Peer::from_values(Some("1"), None).unwrap();
        assert!(serve_client(&first, "party p").is_ok());
        let refusal =
            serve_client(&Peer::from_values(Some("0"), None).unwrap(), "party p").unwrap_err();
        let e = status(tonic::Status::failed_precondition(refusal)).context("polling for work");
        assert!(is_skew(&e), "{e:#}");
        assert!(format!("{e:#}").contains("upgrade party p"), "{e:#}");
        assert!(!is_skew(&status(tonic::Status::failed_precondition(
            "round 3 is closed"
        ))));
        assert!(!is_skew(&status(tonic::Status::unavailable("restarting"))));
    }
}
