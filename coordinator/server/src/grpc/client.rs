//! The operator's gRPC client: every call signed with the operator key, results as views.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use shared_model::SigningKey;
use shared_model::VerifyingKey;
use shared_model::auth::{CallProof, OPERATOR, PROOF_VERSION, body_sha256};
use shared_model::ids::{ModelVersion, TaskId};
use shared_model::manifest::Manifest;
use tonic::Request;
use tonic::transport::Channel;
use yosegi_proto::v1 as pb;
use yosegi_proto::v1::operator_service_client::OperatorServiceClient;

use super::convert;
use crate::state::now_ms;
use crate::views::{DeclineView, DpView, PartyRoundView, PartyView, RoundView, TaskView};

/// A connection to a coordinator's operator service.
#[derive(Debug, Clone)]
pub struct OperatorClient {
    inner: OperatorServiceClient<Channel>,
    key: Signer,
    server: String,
}

/// Who signs the calls: an operator's name and key.
#[derive(Debug, Clone)]
struct Signer {
    name: String,
    key: SigningKey,
}

fn signed<T: prost::Message>(msg: T, method: &str, key: &Signer) -> Request<T> {
    let body = body_sha256(&msg.encode_to_vec());
    signed_stream(msg, method, key, body)
}

/// A request whose first message hashes to `body` (a stream's first message), signed.
fn signed_stream<T>(msg: T, method: &str, signer: &Signer, body: [u8; 32]) -> Request<T> {
    let proof = CallProof::new(
        &format!("/yosegi.v1.OperatorService/{method}"),
        &signer.name,
        now_ms(),
        body,
    );
    let mut req = Request::new(msg);
    let md = req.metadata_mut();
    yosegi_proto::version::announce(md);
    yosegi_proto::proof::insert(
        md,
        PROOF_VERSION,
        &signer.name,
        proof.timestamp_ms,
        &proof.nonce,
        &proof.sign(&signer.key).to_bytes(),
    );
    req
}

fn call_err(server: &str, s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable {
        anyhow::anyhow!("coordinator at {server} is unreachable: {}", s.message())
    } else {
        anyhow::anyhow!("{}", s.message())
    }
}

impl OperatorClient {
    /// Connects to an http:// URL with the operator's key (https:// needs [`Self::connect_with`]).
    pub async fn connect(server: &str, key: SigningKey) -> anyhow::Result<Self> {
        Self::connect_with(server, &crate::tls::ClientTls::default(), key).await
    }

    /// Connects with the operator's key; https:// pins `tls.ca`.
    pub async fn connect_with(
        server: &str,
        tls: &crate::tls::ClientTls,
        key: SigningKey,
    ) -> anyhow::Result<Self> {
        let channel = crate::tls::channel(server, tls).await?;
        Ok(Self {
            inner: OperatorServiceClient::new(channel),
            key: Signer {
                name: OPERATOR.into(),
                key,
            },
            server: server.to_string(),
        })
    }

    /// The same connection, signing as operator `name` (the key given at connection must be
    /// its key); [`OPERATOR`] by default.
    pub fn named(mut self, name: &str) -> anyhow::Result<Self> {
        shared_model::ids::OperatorId::new(name)?;
        self.key.name = name.into();
        Ok(self)
    }

    /// Adds operator `name` with `role`; returns its key fingerprint.
    pub async fn add_operator(
        &mut self,
        name: &str,
        key: &VerifyingKey,
        role: yosegi_round::Role,
    ) -> anyhow::Result<String> {
        let req = signed(
            pb::AddOperatorRequest {
                name: name.into(),
                public_key: key.to_bytes().to_vec(),
                role: role.to_string(),
            },
            "AddOperator",
            &self.key,
        );
        let r = self
            .inner
            .add_operator(req)
            .await
            .map_err(|s| call_err(&self.server, s))?;
        Ok(r.into_inner().fingerprint)
    }

    /// Revokes operator `name`.
    pub async fn revoke_operator(&mut self, name: &str) -> anyhow::Result<()> {
        let req = signed(
            pb::RevokeOperatorRequest { name: name.into() },
            "RevokeOperator",
            &self.key,
        );
        self.inner
            .revoke_operator(req)
            .await
            .map_err(|s| call_err(&self.server, s))?;
        Ok(())
    }

    /// Every operator: name, role, key fingerprint, whether revoked.
    pub async fn operators(&mut self) -> anyhow::Result<Vec<pb::OperatorInfo>> {
        let req = signed(pb::ListOperatorsRequest {}, "ListOperators", &self.key);
        let r = self
            .inner
            .list_operators(req)
            .await
            .map_err(|s| call_err(&self.server, s))?;
        Ok(r.into_inner().operators)
    }

    /// Enrolls a party; returns its key fingerprint.
    pub async fn enroll(&mut self, name: &str, key: &VerifyingKey) -> anyhow::Result<String> {
        let req = signed(
            pb::EnrollPartyRequest {
                name: name.into(),
                public_key: key.as_bytes().to_vec(),
            },
            "EnrollParty",
            &self.key,
        );
        let r = self
            .inner
            .enroll_party(req)
            .await
            .map_err(|s| call_err(&self.server, s))?;
        Ok(r.into_inner().fingerprint)
    }

    /// Replaces a party's key; returns the fingerprints of the new and the replaced key.
    pub async fn rotate_key(
        &mut self,
        name: &str,
        key: &VerifyingKey,
    ) -> anyhow::Result<(String, String)> {
        let req = signed(
            pb::RotatePartyKeyRequest {
                name: name.into(),
                public_key: key.to_bytes().to_vec(),
            },
            "RotatePartyKey",
            &self.key,
        );
        let r = self
            .inner
            .rotate_party_key(req)
            .await
            .map_err(|s| call_err(&self.server, s))?
            .into_inner();
        Ok((r.fingerprint, r.previous_fingerprint))
    }

    /// Revokes a party.
    pub async fn revoke(&mut self, name: &str) -> anyhow::Result<()> {
        let req = signed(
            pb::RevokePartyRequest { name: name.into() },
            "RevokeParty",
            &self.key,
        );
        self.inner
            .revoke_party(req)
            .await
            .map_err(|s| call_err(&self.server, s))?;
        Ok(())
    }

    /// Lists parties.
    pub async fn parties(&mut self) -> anyhow::Result<Vec<PartyView>> {
        let req = signed(pb::ListPartiesRequest {}, "ListParties", &self.key);
        let r = self
            .inner
            .list_parties(req)
            .await
            .map_err(|s| call_err(&self.server, s))?;
        Ok(r.into_inner()
            .parties
            .into_iter()
            .map(|p| PartyView {
                name: p.name,
                fingerprint: p.fingerprint,
                revoked: p.revoked,
                last_seen_unix_ms: p.last_seen_unix_ms,
                protocol: p.protocol,
                release: p.release,
            })
            .collect())
    }

    /// Creates a task with the default contribution limits; returns the spec id.
    pub async fn create_task(
        &mut self,
        name: &str,
        spec_toml: &str,
        parties: &[String],
    ) -> anyhow::Result<String> {
        self.create_task_limited(name, spec_toml, parties, "").await
    }

    /// Creates a task with contribution limits (`limits_toml`, empty = the defaults); returns
    /// the spec id.
    pub async fn create_task_limited(
        &mut self,
        name: &str,
        spec_toml: &str,
        parties: &[String],
        limits_toml: &str,
    ) -> anyhow::Result<String> {
        let req = signed(
            pb::CreateTaskRequest {
                name: name.into(),
                spec_toml: spec_toml.into(),
                parties: parties.to_vec(),
                limits_toml: limits_toml.into(),
            },
            "CreateTask",
            &self.key,
        );
        let r = self
            .inner
            .create_task(req)
            .await
            .map_err(|s| call_err(&self.server, s))?;
        Ok(r.into_inner().spec_id)
    }

    /// Lists tasks.
    pub async fn tasks(&mut self) -> anyhow::Result<Vec<TaskView>> {
        let req = signed(pb::ListTasksRequest {}, "ListTasks", &self.key);
        let r = self
            .inner
            .list_tasks(req)
            .await
            .map_err(|s| call_err(&self.server, s))?;
        Ok(r.into_inner()
            .tasks
            .into_iter()
            .map(|t| TaskView {
                name: t.name,
                spec_id: t.spec_id,
                spec_name: t.spec_name,
                parties: t.parties,
                latest_version: t.latest_version,
                limits_toml: t.limits_toml,
            })
            .collect())
    }

    /// Starts rounds; returns the first round number.
    pub async fn start_round(
        &mut self,
        task: &str,
        strategy: &str,
        options: HashMap<String, String>,
        min_parties: u32,
        deadline_ms: u64,
        rounds: u32,
    ) -> anyhow::Result<u64> {
        let req = signed(
            pb::StartRoundRequest {
                task: task.into(),
                strategy: strategy.into(),
                options,
                min_parties,
                deadline_ms,
                rounds,
            },
            "StartRound",
            &self.key,
        );
        let r = self
            .inner
            .start_round(req)
            .await
            .map_err(|s| call_err(&self.server, s))?;
        Ok(r.into_inner().first_round)
    }

    /// The rounds of a task.
    pub async fn status(&mut self, task: &str) -> anyhow::Result<Vec<RoundView>> {
        Ok(self.status_with_declines(task).await?.0)
    }

    /// The rounds of a task, and the statistics/evaluation work parties declined.
    pub async fn status_with_declines(
        &mut self,
        task: &str,
    ) -> anyhow::Result<(Vec<RoundView>, Vec<DeclineView>)> {
        let req = signed(
            pb::RoundStatusRequest { task: task.into() },
            "RoundStatus",
            &self.key,
        );
        let r = self
            .inner
            .round_status(req)
            .await
            .map_err(|s| call_err(&self.server, s))?;
        let r = r.into_inner();
        let declines = r
            .declines
            .into_iter()
            .map(|d| DeclineView {
                party: d.party,
                assignment: d.assignment,
                reason: d.reason,
                at_unix_ms: d.at_unix_ms,
            })
            .collect();
        let rounds = r
            .rounds
            .into_iter()
            .map(|r| -> anyhow::Result<RoundView> {
                let parties = r
                    .parties
                    .into_iter()
                    .map(|p| -> anyhow::Result<PartyRoundView> {
                        Ok(PartyRoundView {
                            state: p.state.parse().map_err(|e| {
                                anyhow::anyhow!("round {} party {}: {e}", r.round, p.party)
                            })?,
                            party: p.party,
                            reason: p.reason,
                            sample_count: p.sample_count,
                            update_bytes: p.update_bytes,
                            local_metrics: serde_json::from_str(&p.local_metrics_json).ok(),
                            membership_audit: serde_json::from_str(&p.membership_audit_json).ok(),
                            evaluation: serde_json::from_str(&p.evaluation_json).ok(),
                        })
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok(RoundView {
                    round: r.round,
                    strategy: r.strategy,
                    phase: r
                        .phase
                        .parse()
                        .map_err(|e| anyhow::anyhow!("round {}: {e}", r.round))?,
                    min_parties: r.min_parties,
                    deadline_unix_ms: r.deadline_unix_ms,
                    parties,
                    failure: r.failure,
                    version: r.version,
                    metrics: serde_json::from_str(&r.metrics_json).ok(),
                    evaluated_by: r.evaluated_by,
                    options: serde_json::from_str(&r.options_json).unwrap_or_default(),
                    started_unix_ms: r.started_unix_ms,
                    published_unix_ms: r.published_unix_ms,
                    model_bytes: r.model_bytes,
                    base_model_bytes: r.base_model_bytes,
                    dp: (r.dp_rounds > 0).then_some(DpView {
                        epsilon: r.dp_epsilon,
                        delta: r.dp_delta,
                        rounds: r.dp_rounds,
                    }),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok((rounds, declines))
    }

    /// Downloads a published model (0 = latest) and verifies it against the coordinator key:
    /// manifest signature and expiry, task, and the blob's length and sha256.
    pub async fn pull(
        &mut self,
        task: &str,
        version: u64,
        coordinator: &VerifyingKey,
    ) -> anyhow::Result<(Manifest, Vec<u8>, shared_model::manifest::SignedManifest)> {
        let req = signed(
            pb::PullModelRequest {
                task: task.into(),
                version,
            },
            "PullModel",
            &self.key,
        );
        let mut stream = self
            .inner
            .pull_model(req)
            .await
            .map_err(|s| call_err(&self.server, s))?
            .into_inner();
        let mut signed_manifest = None;
        let mut blob = Vec::new();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| call_err(&self.server, s))?
        {
            match msg.part {
                Some(pb::pull_model_response::Part::Manifest(m)) => {
                    signed_manifest = Some(
                        convert::signed_manifest(&m)
                            .map_err(|s| anyhow::anyhow!("{}", s.message()))?,
                    )
                }
                Some(pb::pull_model_response::Part::Chunk(c)) => {
                    anyhow::ensure!(c.offset == blob.len() as u64, "model chunk out of order");
                    blob.extend_from_slice(&c.data);
                }
                None => {}
            }
        }
        let signed_manifest = signed_manifest.context("the coordinator sent no manifest")?;
        let manifest = signed_manifest.verify(coordinator, now_ms())?;
        let task_id = TaskId::new(task)?;
        manifest.check_for(&task_id, manifest.spec_id, None::<ModelVersion>)?;
        manifest.check_blob(&blob)?;
        Ok((manifest, blob, signed_manifest))
    }

    /// Sends a copy of a published model to restore the coordinator's damaged or lost blob;
    /// returns the restored sha256.
    pub async fn restore(
        &mut self,
        task: &str,
        version: u64,
        blob: Vec<u8>,
    ) -> anyhow::Result<String> {
        let start = pb::RestoreModelRequest {
            part: Some(pb::restore_model_request::Part::Start(
                pb::RestoreModelStart {
                    task: task.into(),
                    version,
                    blob_len: blob.len() as u64,
                },
            )),
        };
        let chunks: Vec<pb::RestoreModelRequest> = blob
            .chunks(super::server::CHUNK)
            .enumerate()
            .map(|(i, c)| pb::RestoreModelRequest {
                part: Some(pb::restore_model_request::Part::Chunk(pb::BlobChunk {
                    offset: (i * super::server::CHUNK) as u64,
                    data: c.to_vec(),
                })),
            })
            .collect();
        let body = body_sha256(&prost::Message::encode_to_vec(&start));
        let messages = tokio_stream::iter(std::iter::once(start).chain(chunks));
        let req = signed_stream(messages, "RestoreModel", &self.key, body);
        Ok(self
            .inner
            .restore_model(req)
            .await
            .map_err(|s| call_err(&self.server, s))?
            .into_inner()
            .blob_sha256)
    }
}

/// Reads the operator key file.
pub fn operator_key(path: &Path) -> anyhow::Result<SigningKey> {
    Ok(shared_model::keys::read_private(path)?)
}
