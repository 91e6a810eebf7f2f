//! Compiles yosegi/v1/*.proto with protox, a pure-Rust protobuf compiler, so the build needs
//! no system `protoc` (none is installed on a fresh machine, and a `protoc` binary from a crate
//! would be a platform-specific download). The descriptor set also goes to OUT_DIR for gRPC
//! reflection.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "yosegi/v1/common.proto",
        "yosegi/v1/party.proto",
        "yosegi/v1/operator.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("yosegi_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::YosegiCodec")
        .compile_fds(fds)?;
    Ok(())
}
