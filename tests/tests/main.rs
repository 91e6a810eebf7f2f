//! Yosegi's integration tests, built as one binary.

mod attacks;
mod audit_log;
mod cli;
mod compat;
mod crash;
mod dp;
mod experiment;
mod faults;
mod federation;
mod hand_run;
mod operators;
mod plant;
mod policy;
mod rotation;
mod strategies;
mod swarm;
mod tls;
