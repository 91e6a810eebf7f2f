//! The Yosegi coordinator server: verifies signed weight blobs, merges them with the round's
//! strategy and publishes signed models. The rules of a round are `yosegi-round`; this crate is
//! the shell that loads snapshots, does the effects (verify, store blobs, sign) and commits
//! transitions, plus the gRPC surface, TLS, the governance log and metrics. The operator CLI,
//! the demo and the lab tools live in the `coordinator` crate beside it.

#![forbid(unsafe_code)]

pub mod audit;
pub mod blobs;
pub mod config;
pub mod engine;
pub mod grpc;
pub mod metrics;
pub mod recover;
pub mod rotate;
pub mod state;
pub mod store;
pub mod tls;
pub mod views;
