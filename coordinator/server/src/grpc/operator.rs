//! `OperatorService`: the operator's calls — parties, tasks, rounds, status, model pulls and
//! restores.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use yosegi_proto::v1 as pb;
use yosegi_proto::v1::operator_service_server::OperatorService;
use yosegi_round::Role;

use super::convert;
use crate::state::now_ms;

use super::party::{read_blob, stream_model};
use super::receive::receive;
use super::server::{OPERATOR_SVC, OperatorSvc, change_engine_as, with_engine};

#[tonic::async_trait]
impl OperatorService for OperatorSvc {
    async fn enroll_party(
        &self,
        req: Request<pb::EnrollPartyRequest>,
    ) -> Result<Response<pb::EnrollPartyResponse>, Status> {
        let by = self
            .0
            .operator(&req, &format!("{OPERATOR_SVC}EnrollParty"))?;
        let r = req.into_inner();
        let key = public_key(&r.public_key)?;
        let shared = self.0.clone();
        change_engine_as(&self.0, by, move |e| {
            e.enroll(&r.name, &key, now_ms())?;
            shared.add_key(&r.name, key);
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::EnrollPartyResponse {
            fingerprint: shared_model::keys::fingerprint(&key),
        }))
    }

    async fn rotate_party_key(
        &self,
        req: Request<pb::RotatePartyKeyRequest>,
    ) -> Result<Response<pb::RotatePartyKeyResponse>, Status> {
        let by = self
            .0
            .operator(&req, &format!("{OPERATOR_SVC}RotatePartyKey"))?;
        let r = req.into_inner();
        let key = public_key(&r.public_key)?;
        let shared = self.0.clone();
        let previous = change_engine_as(&self.0, by, move |e| {
            let previous = e.rotate_key(&r.name, &key, now_ms())?;
            // The old key is refused from the next call on.
            shared.add_key(&r.name, key);
            Ok(previous)
        })
        .await?;
        Ok(Response::new(pb::RotatePartyKeyResponse {
            fingerprint: shared_model::keys::fingerprint(&key),
            previous_fingerprint: previous,
        }))
    }

    async fn revoke_party(
        &self,
        req: Request<pb::RevokePartyRequest>,
    ) -> Result<Response<pb::RevokePartyResponse>, Status> {
        let by = self
            .0
            .operator(&req, &format!("{OPERATOR_SVC}RevokeParty"))?;
        let name = req.into_inner().name;
        let shared = self.0.clone();
        change_engine_as(&self.0, by, move |e| {
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
        let peers = self
            .0
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(Response::new(pb::ListPartiesResponse {
            parties: rows
                .into_iter()
                .map(|p| pb::PartyInfo {
                    protocol: peers.get(p.name.as_str()).map_or(0, |v| v.protocol),
                    release: peers
                        .get(p.name.as_str())
                        .map(|v| v.release.clone())
                        .unwrap_or_default(),
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
        let by = self
            .0
            .operator(&req, &format!("{OPERATOR_SVC}CreateTask"))?;
        let r = req.into_inner();
        let spec_id = change_engine_as(&self.0, by, move |e| {
            e.create_task_limited(&r.name, &r.spec_toml, &r.parties, &r.limits_toml, now_ms())
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
                    limits_toml: t.limits.to_toml(),
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
        let by = self
            .0
            .operator(&req, &format!("{OPERATOR_SVC}StartRound"))?;
        let r = req.into_inner();
        let options: BTreeMap<String, String> = r.options.into_iter().collect();
        let first = change_engine_as(&self.0, by, move |e| {
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

    async fn restore_model(
        &self,
        req: Request<tonic::Streaming<pb::RestoreModelRequest>>,
    ) -> Result<Response<pb::RestoreModelResponse>, Status> {
        // The proof covers the first message: authenticate once it is in.
        let (md, ext, mut stream) = req.into_parts();
        // (The digest layer ends a call whose first message is late.)
        let first = stream.message().await?;
        let by = self.0.operator(
            &Request::from_parts(md, ext, ()),
            &format!("{OPERATOR_SVC}RestoreModel"),
        )?;
        let Some(pb::restore_model_request::Part::Start(start)) = first.and_then(|m| m.part) else {
            return Err(Status::invalid_argument(
                "a restore must start with RestoreModelStart",
            ));
        };
        let task = start.task.clone();
        let cap = with_engine(&self.0, move |e| e.max_blob_bytes(&task)).await?;
        if start.blob_len > cap {
            return Err(Status::invalid_argument(format!(
                "the copy declares {} bytes; task {}'s spec allows at most {cap}",
                start.blob_len, start.task
            )));
        }
        let staged = with_engine(&self.0, |e| Ok(e.blobs().stage()?)).await?;
        let copy = receive(
            &mut stream,
            staged,
            start.blob_len,
            self.0.config.upload_pace(),
        )
        .await
        .map_err(|f| f.status("the operator"))?;
        if copy.len() != start.blob_len {
            return Err(Status::invalid_argument(format!(
                "the copy sent {} of the {} bytes it declared",
                copy.len(),
                start.blob_len
            )));
        }
        let sha = change_engine_as(&self.0, by, move |e| {
            e.restore_model(&start.task, start.version, copy, now_ms())
        })
        .await?;
        Ok(Response::new(pb::RestoreModelResponse {
            blob_sha256: sha.to_string(),
        }))
    }

    async fn add_operator(
        &self,
        req: Request<pb::AddOperatorRequest>,
    ) -> Result<Response<pb::AddOperatorResponse>, Status> {
        let by = self
            .0
            .operator(&req, &format!("{OPERATOR_SVC}AddOperator"))?;
        let r = req.into_inner();
        let key = public_key(&r.public_key)?;
        let role: Role = r
            .role
            .parse()
            .map_err(|e: String| Status::invalid_argument(format!("field role: {e}")))?;
        let shared = self.0.clone();
        change_engine_as(&self.0, by, move |e| {
            e.add_operator(&r.name, &key, role, now_ms())?;
            shared.reload_operators(e)
        })
        .await?;
        Ok(Response::new(pb::AddOperatorResponse {
            fingerprint: shared_model::keys::fingerprint(&key),
        }))
    }

    async fn revoke_operator(
        &self,
        req: Request<pb::RevokeOperatorRequest>,
    ) -> Result<Response<pb::RevokeOperatorResponse>, Status> {
        let by = self
            .0
            .operator(&req, &format!("{OPERATOR_SVC}RevokeOperator"))?;
        let name = req.into_inner().name;
        let shared = self.0.clone();
        change_engine_as(&self.0, by, move |e| {
            e.revoke_operator(&name, now_ms())?;
            // Refused from the next call on, on open connections too.
            shared.reload_operators(e)
        })
        .await?;
        Ok(Response::new(pb::RevokeOperatorResponse {}))
    }

    async fn list_operators(
        &self,
        req: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        self.0
            .operator(&req, &format!("{OPERATOR_SVC}ListOperators"))?;
        let rows = with_engine(&self.0, |e| e.operators()).await?;
        Ok(Response::new(pb::ListOperatorsResponse {
            operators: rows
                .into_iter()
                .map(|o| pb::OperatorInfo {
                    fingerprint: VerifyingKey::from_bytes(&o.public_key)
                        .map(|k| shared_model::keys::fingerprint(&k))
                        .unwrap_or_default(),
                    name: o.name.to_string(),
                    role: o.role.to_string(),
                    revoked: o.revoked,
                })
                .collect(),
        }))
    }
}

/// A raw 32-byte ed25519 public key from a request's `public_key` field.
fn public_key(bytes: &[u8]) -> Result<VerifyingKey, Status> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| Status::invalid_argument("field public_key: expected 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| Status::invalid_argument(format!("field public_key: {e}")))
}
