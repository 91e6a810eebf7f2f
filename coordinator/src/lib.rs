//! The Yosegi coordinator: verifies signed weight blobs, merges them with the round's strategy
//! and publishes signed models; the same crate is the operator's CLI.

#![forbid(unsafe_code)]

pub mod audit;
pub mod blobs;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod experiment;
pub mod grpc;
pub mod local;
pub mod metrics;
pub mod plots;
pub mod report;
pub mod state;
pub mod store;
pub mod swarm;
pub mod tls;
pub mod views;
