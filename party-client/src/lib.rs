//! The Yosegi party client: what runs at a plant. It holds the site's key and data, trains the
//! declared network locally with burn, and talks to the coordinator through signed calls. Raw
//! data never leaves the site: only feature sums, signed weight blobs and metric statistics do.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod contribute;
pub mod daemon;
pub mod dataerror;
pub mod exit;
pub mod grpc;
pub mod inference;
pub mod local;
pub mod pinning;
pub mod policy;
pub mod progress;
pub mod state;
