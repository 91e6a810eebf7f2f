//! `shared-model`: everything the coordinator and every plant must agree on, with no tokio and
//! no tonic — the model spec, the burn network, training and evaluation, the weight-blob codec,
//! the signed-update envelope, local data loading and simulation partitioners, and the merge
//! strategies as pure functions. Everything here is tested with plain `cargo test`, no sockets.

#![forbid(unsafe_code)]

pub mod aggregate;
pub mod auth;
pub mod blob;
pub mod data;
pub mod discovery;
pub mod dp;
pub mod encoding;
pub mod eval;
pub mod ids;
pub mod keys;
pub mod manifest;
pub mod membership;
pub mod model;
pub mod network;
pub mod partition;
pub mod plantdata;
pub mod rotation;
pub mod spec;
pub mod stats;
pub mod strategy;
pub mod synthetic;
pub mod train;
pub mod update;
pub mod weights;

pub use ed25519_dalek::{SigningKey, VerifyingKey};
