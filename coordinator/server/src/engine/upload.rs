//! Uploads: the shell around `yosegi_round::decide::admit_upload`. It loads what the decision
//! needs, verifies an admitted upload against the round's base model (signature, shapes,
//! normalisation, central DP's clip), stores the blob durably and commits the acceptance or
//! the rejection. Also the stored form of a signed envelope.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use shared_model::eval::MetricStats;
use shared_model::ids::Sha256;
use shared_model::membership::MembershipAudit;
use shared_model::model::Model;
use shared_model::spec::{DpMode, ModelSpec};
use shared_model::update::{Expectations, SignedUpdate, UpdateHeader, verify};
use yosegi_round::AssignmentKind;
use yosegi_round::decide::{self, Admission};
use yosegi_round::transition::AcceptedUpdate;

use super::{Engine, EngineError, Result, parse_id, party_id};
use crate::blobs::Staged;

/// How an accepted upload was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Newly accepted and durably stored.
    Accepted,
    /// The same update had been accepted before.
    AlreadyAccepted,
}

/// An upload as received: who sent it, with which key, for which assignment, and what.
#[derive(Clone, Copy, Debug)]
pub struct Upload<'a> {
    /// The authenticated party.
    pub party: &'a str,
    /// Its enrolled key.
    pub party_key: &'a VerifyingKey,
    /// The assignment it answers.
    pub assignment: &'a str,
    /// The signed envelope.
    pub envelope: &'a SignedUpdate,
    /// The blob bytes received.
    pub bytes: &'a [u8],
    /// Its local evaluation statistics.
    pub local_metrics: Option<&'a MetricStats>,
    /// The party's membership audit of the update.
    pub membership_audit: Option<&'a MembershipAudit>,
}

/// The envelope as stored in the database.
#[derive(Serialize, Deserialize)]
struct StoredEnvelope {
    header: UpdateHeader,
    signer: String,
    signature: String,
}

pub(super) fn store_envelope(e: &SignedUpdate) -> String {
    serde_json::to_string(&StoredEnvelope {
        header: e.header.clone(),
        signer: hex::encode(e.signer.as_bytes()),
        signature: hex::encode(e.signature.to_bytes()),
    })
    .expect("envelopes serialise")
}

pub(super) fn load_envelope(s: &str) -> Option<SignedUpdate> {
    let e: StoredEnvelope = serde_json::from_str(s).ok()?;
    let signer: [u8; 32] = hex::decode(&e.signer).ok()?.try_into().ok()?;
    let sig: [u8; 64] = hex::decode(&e.signature).ok()?.try_into().ok()?;
    Some(SignedUpdate {
        header: e.header,
        signer: VerifyingKey::from_bytes(&signer).ok()?,
        signature: Signature::from_bytes(&sig),
    })
}

/// What an upload's admission is decided on, read at one version of the store.
struct Admitting {
    at: crate::store::Version,
    id: yosegi_round::AssignmentId,
    party: shared_model::ids::PartyId,
    spec: ModelSpec,
    round: Option<decide::RoundRecord>,
    state: Option<yosegi_round::PartyState>,
    accepted: Option<Sha256>,
    revoked: bool,
}

impl Admitting {
    fn context(&self, claimed: Sha256, now: i64) -> decide::UploadContext<'_> {
        decide::UploadContext {
            id: &self.id,
            party: &self.party,
            round: self.round.as_ref(),
            state: self.state.as_ref(),
            accepted: self.accepted,
            claimed,
            revoked: self.revoked,
            now,
        }
    }
}

impl Engine {
    fn admitting(&self, party: &str, assignment: &str) -> Result<Admitting> {
        let at = self.store.version()?;
        let id = parse_id(assignment)?;
        let party = party_id(party)?;
        let (_, spec) = self.task(id.task.as_str())?;
        let task = id.task.as_str();
        let round = match id.kind {
            AssignmentKind::Train(n) => self.store.round(task, n)?,
            _ => None,
        };
        let n = round.as_ref().map_or(0, |r| r.round.0);
        let state = self
            .store
            .round_party(task, n, party.as_str())?
            .map(|p| p.state);
        let accepted = self
            .store
            .update(task, n, party.as_str())?
            .map(|u| u.blob_sha256);
        let revoked = self.store.party(party.as_str())?.is_some_and(|p| p.revoked);
        Ok(Admitting {
            at,
            id,
            party,
            spec,
            round,
            state,
            accepted,
            revoked,
        })
    }

    /// Decides whether an upload announced by its envelope may send its bytes, before they
    /// are received: `Some(AlreadyAccepted)` when the same update was accepted before (no
    /// bytes needed), `None` to receive them, an error (recorded where the rules say so) when
    /// it is refused. [`Self::accept_upload`] decides again once the bytes are in.
    pub fn admit_upload(
        &mut self,
        party: &str,
        assignment: &str,
        envelope: &SignedUpdate,
        now: i64,
    ) -> Result<Option<UploadOutcome>> {
        let a = self.admitting(party, assignment)?;
        match decide::admit_upload(&a.context(envelope.header.blob_sha256, now)) {
            Admission::AlreadyAccepted => Ok(Some(UploadOutcome::AlreadyAccepted)),
            Admission::Verify { .. } => Ok(None),
            Admission::Refuse { record, refusal } => {
                if let Some(t) = record {
                    self.commit(a.at, now, &t)?;
                }
                Err(refusal.into())
            }
        }
    }

    /// Records an upload whose stream broke before its blob was complete (it stalled, sent
    /// more than declared, skipped bytes or sent a malformed message) as a rejection with
    /// `code`, when its party is in the round; returns whether anything was recorded.
    pub fn refuse_stream(
        &mut self,
        party: &str,
        assignment: &str,
        envelope: &SignedUpdate,
        code: &str,
        reason: String,
        now: i64,
    ) -> Result<bool> {
        let a = self.admitting(party, assignment)?;
        let ctx = a.context(envelope.header.blob_sha256, now);
        match decide::refuse_stream(&ctx, code, reason) {
            Some(t) => {
                self.commit(a.at, now, &t)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Verifies, stores and records an upload; a failed check is recorded as a rejection.
    /// `staged` is the temp file the bytes were received into, moved into the blob store
    /// on acceptance (else the bytes are written).
    pub fn accept_upload(
        &mut self,
        upload: &Upload<'_>,
        staged: Option<Staged>,
        now: i64,
    ) -> Result<UploadOutcome> {
        let a = self.admitting(upload.party, upload.assignment)?;
        let (at, id, party, spec) = (a.at, &a.id, &a.party, &a.spec);
        let step = match decide::admit_upload(&a.context(upload.envelope.header.blob_sha256, now)) {
            Admission::AlreadyAccepted => return Ok(UploadOutcome::AlreadyAccepted),
            Admission::Refuse { record, refusal } => {
                if let Some(t) = record {
                    self.commit(at, now, &t)?;
                }
                return Err(refusal.into());
            }
            Admission::Verify { step } => step,
        };
        let r = a.round.as_ref().expect("an admitted upload has a round");
        let (base_sha, base) = self.base_model(spec, r)?;
        let expect = Expectations {
            task: &id.task,
            spec,
            round: r.round,
            step,
            base_model: base_sha,
            party,
            stage: r.plan.strategy.expected_stage(&base),
        };
        let checked = verify(upload.envelope, upload.bytes, upload.party_key, &expect)
            .map_err(|e| (e.code(), e.to_string()))
            .and_then(|v| {
                // The task's normalisation is fixed by the statistics step; an update keeps it.
                base.check_update_normalization(v.weights(), spec.input_width())
                    .map(|()| v)
                    .map_err(|why| ("normalisation", format!("update of {party}: {why}")))
            })
            .and_then(|v| {
                check_dp_clip(spec, &base, v.weights())
                    .map(|()| v)
                    .map_err(|why| ("dp_clip", format!("update of {party}: {why}")))
            })
            .and_then(|v| {
                // The reports beside it must be possible for this task.
                if let Some(m) = upload.local_metrics {
                    m.validate(spec.task.kind).map_err(|why| {
                        ("bad_metrics", format!("local metrics of {party}: {why}"))
                    })?;
                }
                if let Some(a) = upload.membership_audit {
                    a.validate()
                        .map_err(|why| ("bad_audit", format!("update of {party}: {why}")))?;
                }
                Ok(v)
            });
        if let Err((code, reason)) = checked {
            // The party stays awaited: the bad upload may have been damaged in transit, so it
            // may send a good update until the deadline (and is named with its last rejection).
            let t = decide::reject_upload(&id.task, r.round, party, code, reason.clone());
            self.commit(at, now, &t)?;
            return Err(EngineError::Rejected { code, reason });
        }
        // `verify` checked the bytes hash to the signed header's digest: no second hash.
        let claimed = upload.envelope.header.blob_sha256;
        let sha = match staged {
            Some(s) => self.blobs.adopt(s, claimed)?,
            None => self.blobs.put_hashed(upload.bytes, claimed)?,
        };
        let update = AcceptedUpdate {
            party: party.clone(),
            blob_sha256: sha,
            envelope_json: store_envelope(upload.envelope),
            sample_count: upload.envelope.header.sample_count,
            local_metrics_json: upload
                .local_metrics
                .map(|m| serde_json::to_string(m).expect("stats serialise")),
            membership_audit_json: upload
                .membership_audit
                .map(|a| serde_json::to_string(a).expect("audits serialise")),
        };
        let (task, round) = (id.task.clone(), r.round);
        self.commit(at, now, &decide::accept_upload(&task, round, update))?;
        Ok(UploadOutcome::Accepted)
    }
}

/// In central DP mode, checks that an update's delta from the (single-network) base is within
/// the clip; a reason naming the norm otherwise. Local mode has no such check: the party's
/// noise makes the norm large by design.
pub(super) fn check_dp_clip(
    spec: &ModelSpec,
    base: &Model,
    update: &shared_model::weights::Weights,
) -> std::result::Result<(), String> {
    let Some(d) = spec
        .privacy
        .dp
        .as_ref()
        .filter(|d| d.mode == DpMode::Central)
    else {
        return Ok(());
    };
    let Model::Single(b) = base else {
        return Err(format!(
            "differential privacy needs a single-network base, the round's is a {}",
            base.kind()
        ));
    };
    shared_model::dp::check_clip(d, b, update).map_err(|norm| {
        format!(
            "its delta from the base model has L2 norm {norm:.6}, above the task's DP clip {} (central mode)",
            d.clip
        )
    })
}
