//! The call proof's metadata (docs/PROTOCOL.md "Call authentication"), written the one way the
//! Rust clients write it: the proof version, the caller, the time, the nonce and the signature
//! the caller computed over them and its first message. The protocol announcement is the
//! caller's to add ([`crate::version::announce`]): a replay of an older release sends none.

use tonic::metadata::{BinaryMetadataValue, MetadataMap, MetadataValue};

/// Adds a signed call proof to a call's metadata. `caller` must be ASCII (names are checked
/// where they are made).
pub fn insert(
    md: &mut MetadataMap,
    proof_version: &'static str,
    caller: &str,
    timestamp_ms: i64,
    nonce: &[u8; 16],
    signature: &[u8; 64],
) {
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    md.insert("x-yosegi-proof", MetadataValue::from_static(proof_version));
    md.insert(
        "x-yosegi-caller",
        caller.parse().expect("caller names are ASCII"),
    );
    md.insert("x-yosegi-timestamp", MetadataValue::from(timestamp_ms));
    md.insert("x-yosegi-nonce", nonce.parse().expect("hex is ASCII"));
    md.insert_bin(
        "x-yosegi-signature-bin",
        BinaryMetadataValue::from_bytes(signature),
    );
}
