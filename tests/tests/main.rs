//! Yosegi's integration tests, built as one binary.

mod cli;
