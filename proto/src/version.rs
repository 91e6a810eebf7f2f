//! The protocol version: one number for the whole wire contract (the services, the signed
//! byte formats, the blob layout), raised whenever a release changes any of them.

/// The protocol this build speaks.
pub const PROTOCOL: u32 = 1;
