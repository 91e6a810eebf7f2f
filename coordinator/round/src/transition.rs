//! Transitions: every change the coordinator makes to a federation's durable state, as data.
//! A decision in this crate returns one; the store writes it, with its governance-log records,
//! in one transaction (`coordinator/src/store/apply.rs` is the one `match` over this enum).

use shared_model::ids::{ModelVersion, OperatorId, PartyId, RoundNo, Sha256, TaskId};

use crate::assignment::AssignmentId;
use crate::limits::Limits;
use crate::operators::Role;
use crate::plan::RoundPlan;

/// A change of durable state. Each variant names everything its write needs: the store
/// decides nothing (beyond guards that refuse a stale or conflicting write).
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// A party joins the federation with its ed25519 key.
    EnrollParty {
        /// Its name.
        party: PartyId,
        /// Its raw public key.
        public_key: [u8; 32],
    },
    /// An operator key is added with a role (`operators.rs`).
    AddOperator {
        /// Its name (unique among operators and parties).
        operator: OperatorId,
        /// Its raw public key.
        public_key: [u8; 32],
        /// What it may do.
        role: Role,
    },
    /// An operator key is revoked: its calls are refused from the next one on.
    RevokeOperator {
        /// The operator.
        operator: OperatorId,
    },
    /// The coordinator's signing key is replaced: the signed rotation statement is stored (parties
    /// follow it from the key they pin) and every published manifest is signed again with the
    /// new key (`resigned`: task, version, new signature).
    RotateCoordinatorKey {
        /// The statement, signed by the old and the new key.
        rotation: shared_model::rotation::SignedRotation,
        /// Every published manifest's new signature.
        resigned: Vec<(TaskId, ModelVersion, Vec<u8>)>,
    },
    /// A party's key is replaced (its name and place in tasks kept): the old key is refused
    /// from then on, and an update it signed that is not yet merged is left out at the close.
    RotateKey {
        /// The party.
        party: PartyId,
        /// Its new raw public key.
        public_key: [u8; 32],
        /// The key it replaces.
        previous: [u8; 32],
    },
    /// A party's key is revoked; it stops being awaited in the open rounds listed (each a
    /// leave-out with `reason`).
    Revoke {
        /// The party.
        party: PartyId,
        /// Why.
        reason: String,
        /// Open rounds in which it was still awaited, by task then round.
        awaited: Vec<(TaskId, RoundNo)>,
    },
    /// A task is created from a spec over some parties.
    CreateTask {
        /// Its name.
        task: TaskId,
        /// The spec text.
        spec_toml: String,
        /// The spec's id (hex).
        spec_id: String,
        /// Its parties.
        parties: Vec<PartyId>,
        /// Its contribution limits.
        limits: Limits,
    },
    /// A party's feature sums for the statistics step (not a governance change: not logged).
    RecordSums {
        /// The task.
        task: TaskId,
        /// The party.
        party: PartyId,
        /// The sums, as JSON.
        sums_json: String,
    },
    /// The statistics step is complete: the normalisation is fixed and model v0 published.
    FixNormalization {
        /// The task.
        task: TaskId,
        /// The normalisation, as JSON.
        normalization_json: String,
        /// Parties whose sums it merges.
        reported: Vec<PartyId>,
        /// The initial model, version 0.
        initial: PublishedModel,
    },
    /// Rounds are queued after the task's last one.
    QueueRounds {
        /// The task.
        task: TaskId,
        /// One plan per round, in order.
        plans: Vec<RoundPlan>,
    },
    /// A published model's blob, damaged or lost on the coordinator's disk, was restored from a
    /// copy whose sha256 is the one recorded at publication (nothing else changes; logged).
    RestoreModel {
        /// The task.
        task: TaskId,
        /// The version restored.
        version: ModelVersion,
        /// Its blob's sha256, as published.
        blob_sha256: Sha256,
    },
    /// A queued round opens: its parties are invited until `ends_ms`.
    OpenRound {
        /// The task.
        task: TaskId,
        /// The round.
        round: RoundNo,
        /// Opening time.
        started_ms: i64,
        /// Deadline.
        ends_ms: i64,
        /// The published version it trains from.
        base_version: ModelVersion,
        /// Parties invited.
        invited: Vec<PartyId>,
    },
    /// An upload verified and its blob is stored durably: the party's update is accepted.
    AcceptUpdate {
        /// The task.
        task: TaskId,
        /// The round.
        round: RoundNo,
        /// The update.
        update: AcceptedUpdate,
    },
    /// An upload is refused and recorded.
    RecordRejection {
        /// The task.
        task: TaskId,
        /// The round.
        round: RoundNo,
        /// The party.
        party: PartyId,
        /// The failed check (`signature`, `late`, …).
        code: String,
        /// The readable reason.
        reason: String,
        /// What it does to the party's state.
        effect: RejectionEffect,
    },
    /// A party declines work.
    Decline {
        /// The assignment declined.
        assignment: AssignmentId,
        /// The party.
        party: PartyId,
        /// Its reason (already cut to length).
        reason: String,
    },
    /// A party's evaluation of a published version (not a governance change: not logged).
    RecordEvaluation {
        /// The task.
        task: TaskId,
        /// The version.
        version: ModelVersion,
        /// The party.
        party: PartyId,
        /// Its `MetricStats`, as JSON.
        stats_json: String,
    },
    /// A round closes without a merge (or a queued one cannot run).
    FailRound {
        /// The task.
        task: TaskId,
        /// The round.
        round: RoundNo,
        /// Why, for the operator.
        reason: String,
        /// Accepted updates left out before the round failed.
        left_out: Vec<LeftOut>,
        /// Parties still awaited, now late.
        late: Vec<Late>,
    },
    /// A round closes with its merged model published.
    PublishRound {
        /// The task.
        task: TaskId,
        /// The round.
        round: RoundNo,
        /// The strategy's name (for the log).
        strategy: String,
        /// Accepted updates left out of the merge.
        left_out: Vec<LeftOut>,
        /// Parties still awaited, now late.
        late: Vec<Late>,
        /// The updates merged, by party name.
        merged: Vec<Merged>,
        /// The published model.
        model: PublishedModel,
    },
}

/// What a rejection does to the party's state in the round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionEffect {
    /// The party stays awaited, carrying the reason as its last rejection (the upload may
    /// have been damaged in transit; it may send a good one until the deadline).
    StaysAwaited,
    /// Its state is left as it is (e.g. an upload after the round closed).
    Unchanged,
}

/// An accepted update as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AcceptedUpdate {
    /// The party.
    pub party: PartyId,
    /// The blob's sha256 (its name in the blob store).
    pub blob_sha256: Sha256,
    /// The signed envelope, as stored JSON.
    pub envelope_json: String,
    /// The signed sample count.
    pub sample_count: u64,
    /// The party's local metrics, as JSON.
    pub local_metrics_json: Option<String>,
    /// The party's membership audit, as JSON.
    pub membership_audit_json: Option<String>,
}

/// An accepted update left out of the merge, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    /// The party.
    pub party: PartyId,
    /// Why, for the operator (`update left out of the merge: …`).
    pub reason: String,
}

/// A party still awaited when its round closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Late {
    /// The party.
    pub party: PartyId,
    /// What the log says: no answer, or no valid update with its last rejection.
    pub reason: String,
}

/// An update merged into a published model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The party.
    pub party: PartyId,
    /// Its blob's sha256.
    pub blob_sha256: Sha256,
    /// Its signed sample count.
    pub sample_count: u64,
    /// The weight the merge gave it (`close::merge_weights`: the claim capped by reported rows and the task's limits).
    pub weight: u64,
}

/// A signed, stored model ready to publish (its blob already durable).
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedModel {
    /// Its version.
    pub version: ModelVersion,
    /// The round it closes (0 for the initial model).
    pub round: RoundNo,
    /// Its blob's sha256.
    pub blob_sha256: Sha256,
    /// The signed manifest's bytes.
    pub manifest: Vec<u8>,
    /// The manifest's signature.
    pub signature: Vec<u8>,
}

impl Transition {
    /// The task the transition changes, if it changes one.
    pub fn task(&self) -> Option<&TaskId> {
        match self {
            Self::EnrollParty { .. }
            | Self::RotateKey { .. }
            | Self::RotateCoordinatorKey { .. }
            | Self::AddOperator { .. }
            | Self::RevokeOperator { .. }
            | Self::Revoke { .. } => None,
            Self::CreateTask { task, .. }
            | Self::RecordSums { task, .. }
            | Self::FixNormalization { task, .. }
            | Self::QueueRounds { task, .. }
            | Self::OpenRound { task, .. }
            | Self::RestoreModel { task, .. }
            | Self::AcceptUpdate { task, .. }
            | Self::RecordRejection { task, .. }
            | Self::RecordEvaluation { task, .. }
            | Self::FailRound { task, .. }
            | Self::PublishRound { task, .. } => Some(task),
            Self::Decline { assignment, .. } => Some(&assignment.task),
        }
    }
}
