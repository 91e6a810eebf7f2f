//! Proto ↔ domain conversions and the mapping of domain errors to gRPC status codes.

use ed25519_dalek::{Signature, VerifyingKey};
use shared_model::eval::MetricStats;
use shared_model::ids::{PartyId, RoundNo, Sha256, SpecId, StepNo, TaskId};
use shared_model::manifest::SignedManifest;
use shared_model::stats::FeatureSums;
use shared_model::update::{SignedUpdate, UpdateHeader};
use tonic::Status;
use yosegi_proto::v1 as pb;

use crate::engine::{Assignment, EngineError, Work};

/// The one mapping from engine errors to gRPC codes.
pub fn status(e: EngineError) -> Status {
    match e {
        EngineError::Invalid(m) => Status::invalid_argument(m),
        EngineError::NotFound(m) => Status::not_found(m),
        EngineError::Exists(m) => Status::already_exists(m),
        EngineError::Precondition(m) => Status::failed_precondition(m),
        e @ EngineError::Rejected { .. } => Status::invalid_argument(e.to_string()),
        EngineError::Blobs(e) => {
            tracing::error!(error = %e, "blob store failure");
            Status::unavailable(format!(
                "coordinator storage failed, nothing was stored: {e}"
            ))
        }
        EngineError::Store(e @ crate::store::StoreError::Stale(_)) => {
            // Decided on a state another writer changed first: nothing was written; retry.
            tracing::warn!(error = %e, "decision refused as stale");
            Status::aborted(format!(
                "the coordinator's state changed meanwhile, nothing was written; retry: {e}"
            ))
        }
        EngineError::Store(e) => {
            tracing::error!(error = %e, "database failure");
            Status::internal(format!("coordinator database failed: {e}"))
        }
    }
}

/// An assignment on the wire.
pub fn assignment(a: &Assignment) -> pb::Assignment {
    {
        let work = match &a.work {
            Work::Stats => pb::assignment::Work::Stats(pb::StatsWork {}),
            Work::Train {
                base_version,
                base_sha256,
                strategy,
                fedprox_mu,
                learning_rate,
                frozen_layers,
                round_parties,
            } => pb::assignment::Work::Train(pb::TrainWork {
                round_parties: *round_parties,
                base_version: *base_version,
                base_sha256: base_sha256.to_string(),
                strategy: strategy.clone(),
                overrides: Some(pb::TrainingOverrides {
                    fedprox_mu: *fedprox_mu,
                    learning_rate: *learning_rate,
                    frozen_layers: *frozen_layers,
                    local_epochs: 0,
                }),
            }),
            Work::Evaluate { version } => {
                pb::assignment::Work::Evaluate(pb::EvaluateWork { version: *version })
            }
        };
        pb::Assignment {
            assignment_id: a.id.to_string(),
            task: a.id.task.to_string(),
            spec_toml: a.spec_toml.clone(),
            spec_id: a.spec_id.clone(),
            round: a.round,
            step: a.step,
            work: Some(work),
            deadline_unix_ms: a.deadline_ms,
        }
    }
}

/// A field could not be read from the wire.
fn bad(field: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("field {field}: {e}"))
}

/// Reads an upload envelope.
pub fn envelope(e: &pb::UpdateEnvelope) -> Result<SignedUpdate, Status> {
    let signer: [u8; 32] = e
        .signer_public_key
        .as_slice()
        .try_into()
        .map_err(|_| bad("signer_public_key", "expected 32 bytes"))?;
    let sig: [u8; 64] = e
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| bad("signature", "expected 64 bytes"))?;
    Ok(SignedUpdate {
        header: UpdateHeader {
            task: TaskId::new(&e.task).map_err(|x| bad("task", x))?,
            spec_id: e.spec_id.parse::<SpecId>().map_err(|x| bad("spec_id", x))?,
            round: RoundNo(e.round),
            step: StepNo(e.step),
            base_model: e
                .base_model_sha256
                .parse::<Sha256>()
                .map_err(|x| bad("base_model_sha256", x))?,
            party: PartyId::new(&e.party).map_err(|x| bad("party", x))?,
            blob_sha256: e
                .blob_sha256
                .parse::<Sha256>()
                .map_err(|x| bad("blob_sha256", x))?,
            blob_len: e.blob_len,
            sample_count: e.sample_count,
            min_cohort: e.min_cohort,
        },
        signer: VerifyingKey::from_bytes(&signer).map_err(|x| bad("signer_public_key", x))?,
        signature: Signature::from_bytes(&sig),
    })
}

/// Reads feature sums; category counts must pair each name with a count, a column and a
/// name at most once.
pub fn sums(s: &pb::FeatureSums) -> Result<FeatureSums, String> {
    let mut categories = std::collections::BTreeMap::new();
    for c in &s.categories {
        if c.names.len() != c.counts.len() {
            return Err(format!(
                "categories of column {:?}: {} names but {} counts",
                c.column,
                c.names.len(),
                c.counts.len()
            ));
        }
        let mut counts = std::collections::BTreeMap::new();
        for (name, &n) in c.names.iter().zip(&c.counts) {
            if counts.insert(name.clone(), n).is_some() {
                return Err(format!(
                    "categories of column {:?}: {name:?} is listed twice",
                    c.column
                ));
            }
        }
        if categories.insert(c.column.clone(), counts).is_some() {
            return Err(format!(
                "categories of column {:?} are listed twice",
                c.column
            ));
        }
    }
    let mut histograms = std::collections::BTreeMap::new();
    for h in &s.histograms {
        if h.buckets.len() != h.counts.len() {
            return Err(format!(
                "histogram of column {:?}: {} buckets but {} counts",
                h.column,
                h.buckets.len(),
                h.counts.len()
            ));
        }
        let mut counts = std::collections::BTreeMap::new();
        for (&k, &n) in h.buckets.iter().zip(&h.counts) {
            if counts.insert(k, n).is_some() {
                return Err(format!(
                    "histogram of column {:?}: bucket {k} is listed twice",
                    h.column
                ));
            }
        }
        if histograms.insert(h.column.clone(), counts).is_some() {
            return Err(format!(
                "histogram of column {:?} is listed twice",
                h.column
            ));
        }
    }
    Ok(FeatureSums {
        count: s.count,
        sum: s.sum.clone(),
        sum_sq: s.sum_sq.clone(),
        present: s.present.clone(),
        categories,
        histograms,
    })
}

/// Writes a signed manifest.
pub fn manifest(m: &SignedManifest) -> pb::SignedManifest {
    pb::SignedManifest {
        canonical: m.bytes.clone(),
        signature: m.signature.to_bytes().to_vec(),
    }
}

/// Reads a signed manifest.
pub fn signed_manifest(m: &pb::SignedManifest) -> Result<SignedManifest, Status> {
    let sig: [u8; 64] = m
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| bad("signature", "expected 64 bytes"))?;
    Ok(SignedManifest {
        bytes: m.canonical.clone(),
        signature: Signature::from_bytes(&sig),
    })
}

/// The status of every round of a task, as the operator sees it: phase, each party's state with
/// reasons, rejections, the published version and merged metrics (the parties' evaluations of
/// the published model on their holdouts, merged; else the contributors' local metrics).
pub fn round_infos(
    store: &crate::store::Store,
    task: &str,
) -> Result<Vec<pb::RoundInfo>, EngineError> {
    let Some(row) = store.task(task)? else {
        return Err(EngineError::NotFound(format!("no task named {task}")));
    };
    let dp = shared_model::spec::ModelSpec::parse(&row.spec_toml, &format!("task {task}"))
        .map_err(|e| EngineError::Invalid(e.to_string()))?
        .privacy
        .dp;
    let rounds = store.rounds(task)?;
    let mut out = Vec::new();
    for r in rounds.clone() {
        let spent = match &dp {
            Some(d) if r.phase == crate::store::RoundPhase::Published => {
                Some(crate::engine::dp_spent(d, &rounds, r.round.0))
            }
            _ => None,
        };
        let evaluations = match r.version {
            Some(v) => store.evaluations(task, v.0)?,
            None => Vec::new(),
        };
        let as_metrics = |json: &str| {
            serde_json::from_str::<MetricStats>(json)
                .ok()
                .and_then(|m| serde_json::to_string(&m.metrics()).ok())
                .unwrap_or_default()
        };
        let mut parties: Vec<pb::PartyRoundState> = store
            .round_parties(task, r.round.0)?
            .into_iter()
            .map(|p| pb::PartyRoundState {
                evaluation_json: evaluations
                    .iter()
                    .find(|(q, _)| q == p.party.as_str())
                    .map(|(_, j)| as_metrics(j))
                    .unwrap_or_default(),
                party: p.party.to_string(),
                state: p.state.name().to_string(),
                reason: p.state.reason().to_string(),
                sample_count: 0,
                update_bytes: 0,
                local_metrics_json: String::new(),
                membership_audit_json: String::new(),
            })
            .collect();
        for u in store.updates(task, r.round.0)? {
            if let Some(p) = parties.iter_mut().find(|p| p.party == u.party.as_str()) {
                p.sample_count = u.sample_count;
                p.local_metrics_json = u
                    .local_metrics_json
                    .as_deref()
                    .map(as_metrics)
                    .unwrap_or_default();
                p.membership_audit_json = u.membership_audit_json.clone().unwrap_or_default();
                p.update_bytes = serde_json::from_str::<serde_json::Value>(&u.envelope_json)
                    .ok()
                    .and_then(|e| e["header"]["blob_len"].as_u64())
                    .unwrap_or(0);
            }
        }
        let mut metrics_json = String::new();
        let mut merged: Option<MetricStats> = None;
        let mut evaluated_by = 0;
        for (_, json) in &evaluations {
            if let Ok(s) = serde_json::from_str::<MetricStats>(json) {
                let ok = match &mut merged {
                    None => {
                        merged = Some(s);
                        true
                    }
                    Some(m) => m.merge(&s).is_ok(),
                };
                evaluated_by += u32::from(ok);
            }
        }
        if let Some(m) = merged {
            metrics_json = serde_json::to_string(&m.metrics()).unwrap_or_default();
        }
        let manifest =
            |v: Option<u64>| -> Result<Option<shared_model::manifest::Manifest>, EngineError> {
                Ok(match v {
                    Some(v) => store
                        .model(task, Some(v))?
                        .and_then(|m| serde_json::from_slice(&m.manifest).ok()),
                    None => None,
                })
            };
        let (published_unix_ms, model_bytes) =
            manifest(r.version.map(|v| v.0))?.map_or((0, 0), |m| (m.created_unix_ms, m.blob_len));
        let base_model_bytes = manifest(r.base_version.map(|v| v.0))?.map_or(0, |m| m.blob_len);
        let rejections = store.rejections(task, r.round.0)?;
        let failure = r.failure.clone().unwrap_or_default();
        for (party, reason) in rejections {
            if !parties
                .iter()
                .any(|p| p.party == party && p.reason == reason)
            {
                parties.push(pb::PartyRoundState {
                    party,
                    state: yosegi_round::state::PartyStateName::Rejected.to_string(),
                    reason,
                    ..Default::default()
                });
            }
        }
        out.push(pb::RoundInfo {
            round: r.round.0,
            strategy: r.plan.strategy_name().to_string(),
            phase: r.phase.to_string(),
            min_parties: r.plan.min_parties,
            started_unix_ms: r.started_ms.unwrap_or(0),
            deadline_unix_ms: r.ends_ms.unwrap_or(0),
            parties,
            failure,
            version: r.version.map_or(0, |v| v.0),
            metrics_json,
            evaluated_by,
            options_json: r.plan.options_json(),
            published_unix_ms,
            model_bytes,
            base_model_bytes,
            dp_epsilon: spent.map_or(0.0, |s| s.epsilon),
            dp_delta: spent.map_or(0.0, |s| s.delta),
            dp_rounds: spent.map_or(0, |s| s.rounds),
        });
    }
    Ok(out)
}
