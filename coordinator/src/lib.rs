//! The `coordinator` binary's crate: the operator CLI over the server library
//! (`yosegi-coordinator`, re-exported here under its module names) and the lab tools that
//! must not live in the server — the demo, the experiment simulator, the swarm load tool, plots
//! and reports, and the in-process federation they run on.

#![forbid(unsafe_code)]

pub use yosegi_coordinator::{
    audit, blobs, config, engine, grpc, metrics, recover, rotate, state, store, tls, views,
};

pub mod cli;
pub mod demo;
pub mod experiment;
pub mod local;
pub mod plots;
pub mod remote;
pub mod report;
pub mod results;
pub mod simround;
pub mod specinit;
pub mod swarm;
