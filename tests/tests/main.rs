//! Yosegi's integration tests, built as one binary.

mod attacks;
mod cli;
mod experiment;
mod federation;
mod hand_run;
mod strategies;
