//! The coordinator's gRPC surface — the only code that touches `yosegi_proto`. `server` serves
//! `PartyService` and `OperatorService` (plus health and reflection); `client` is the operator
//! CLI's client; `convert` holds every proto ↔ domain conversion and the one mapping from
//! domain errors to `tonic::Status`.

pub mod client;
pub mod convert;
mod digest;
mod listen;
mod nonces;
mod operator;
mod party;
mod protocol;
mod receive;
pub mod record;
pub mod server;

pub use listen::ConnectionLimit;
pub use receive::UploadLimit;
pub use server::{ServeConfig, serve};
