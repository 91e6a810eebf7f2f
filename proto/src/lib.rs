//! Yosegi's public wire contract: the code tonic and prost generate from `yosegi/v1/*.proto`.
//! Only the `grpc` modules of the coordinator and the party client use this crate; everything
//! else works with shared-model's domain types.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

pub mod codec;
pub mod proof;
pub mod transport;
pub mod version;

/// Package `yosegi.v1`.
pub mod v1 {
    tonic::include_proto!("yosegi.v1");
}

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("yosegi_descriptor");
