//! `yosegi-round`: the rules of a round, in one pure home. Every decision the coordinator makes
//! about a task — which work a party gets, whether an upload is admitted, when the statistics
//! step is done, when a round opens, and how it closes (`Wait | Fail | Publish`) — is a function
//! here that takes a snapshot and `now` and returns a typed [`Transition`] (or a refusal).
//! The coordinator's engine is the shell around it: it loads the snapshot, does the effectful
//! work a decision names (verify, sign, store blobs) and hands the transition to the store,
//! which writes it and its governance-log records in one transaction. Nothing else decides.
//!
//! This is the split of raft-rs's `RawNode`/`Ready`: no database, no network, no file I/O and no
//! clock in this crate, so the same rules run in the live coordinator, in `coordinator
//! experiment` (through [`memory::Federation`]) and under the deterministic simulation test
//! (`tests/simulation/`).

#![forbid(unsafe_code)]

pub mod assignment;
pub mod close;
pub mod decide;
pub mod limits;
pub mod memory;
pub mod merge;
pub mod operators;
pub mod plan;
pub mod state;
pub mod transition;
pub mod upload;
pub mod work;

pub use assignment::{AssignmentId, AssignmentKind};
pub use close::{CloseDecision, Outcome};
pub use decide::{Refusal, RefusalKind};
pub use limits::Limits;
pub use operators::Role;
pub use plan::{RelayStep, RoundPlan};
pub use state::{PartyState, RoundPhase};
pub use transition::Transition;
