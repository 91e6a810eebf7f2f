//! A gRPC client that sends message bytes exactly as given — the compatibility tests replay a
//! previous release's recorded messages ([`coordinator::grpc::record::WireCall`]) with it, so
//! what reaches the coordinator is what that release sent, not a re-encoding by today's types.
//! Every call is a fresh call proof (the documented v2 scheme) over the recorded first message.

use std::str::FromStr as _;

use bytes::{Buf as _, BufMut as _};
use shared_model::SigningKey;
use shared_model::auth::{CallProof, PROOF_VERSION};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Bytes in, bytes out.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

/// See [`RawCodec`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// What a replayed call got back.
#[derive(Debug)]
pub struct Reply {
    /// The response's metadata (headers).
    pub metadata: MetadataMap,
    /// Each response message's bytes.
    pub messages: Vec<Vec<u8>>,
}

/// A channel to the coordinator that sends raw messages.
#[derive(Debug, Clone)]
pub struct RawClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl RawClient {
    /// Connects to `server` (https:// pins `tls.ca`).
    pub async fn connect(server: &str, tls: &coordinator::tls::ClientTls) -> Self {
        let channel = yosegi_proto::transport::channel(server, tls)
            .await
            .expect("connects to the coordinator");
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// Calls `method` with `messages` as the request stream (one message for a unary call: the
    /// wire is the same), signed anew as `caller` with `key`, carrying `extra` metadata too.
    pub async fn call(
        &mut self,
        method: &str,
        caller: &str,
        key: &SigningKey,
        messages: Vec<Vec<u8>>,
        extra: &[(String, String)],
    ) -> Result<Reply, Status> {
        let first = messages.first().cloned().unwrap_or_default();
        let proof = CallProof::new(
            method,
            caller,
            crate::now_ms(),
            shared_model::auth::body_sha256(&first),
        );
        let mut req = Request::new(tokio_stream::iter(messages));
        let md = req.metadata_mut();
        for (k, v) in extra {
            let key = tonic::metadata::AsciiMetadataKey::from_str(k).expect("metadata key");
            md.insert(
                key,
                MetadataValue::try_from(v.as_str()).expect("ASCII value"),
            );
        }
        // The proof only: a recorded call carries the metadata its release sent, in `extra`.
        yosegi_proto::proof::insert(
            md,
            PROOF_VERSION,
            caller,
            proof.timestamp_ms,
            &proof.nonce,
            &proof.sign(key).to_bytes(),
        );
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_str(method).expect("a gRPC path");
        let res = self.grpc.streaming(req, path, RawCodec).await?;
        let metadata = res.metadata().clone();
        let mut stream = res.into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream.message().await? {
            out.push(m);
        }
        Ok(Reply {
            metadata,
            messages: out,
        })
    }
}
