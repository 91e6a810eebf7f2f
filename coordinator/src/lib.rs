//! The Yosegi coordinator: the operator's CLI and, as the federation-round work lands, the
//! server that verifies, merges and publishes models.

#![forbid(unsafe_code)]

pub mod cli;
