//! Yosegi's integration tests, built as one binary.

mod attacks;
mod audit_log;
mod cli;
mod experiment;
mod federation;
mod hand_run;
mod policy;
mod strategies;
