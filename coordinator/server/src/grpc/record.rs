//! The wire recorder behind the compatibility fixtures (docs/COMPATIBILITY.md): with
//! `ServeConfig::record_wire` set, every call that crosses the server is written as one JSON
//! line ([`WireCall`]) — its method, its `x-yosegi-*` metadata, each request message and each
//! response message exactly as sent (the bytes after the 5-byte gRPC prefix), the response's
//! `x-yosegi-*` metadata and its status. A release records what its clients send and what its
//! coordinator answers; later releases replay those bytes (`tests/tests/compat.rs`). Off by
//! default and never for a federation with real data: a recording holds sums and updates.

use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes};
use http_body::{Body as HttpBody, Frame};
use serde::{Deserialize, Serialize};
use tonic::body::Body;

/// One recorded call.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireCall {
    /// Order of arrival (from 0).
    pub seq: u64,
    /// When it arrived, Unix ms.
    pub at_unix_ms: i64,
    /// The full gRPC path, e.g. `/yosegi.v1.PartyService/UploadUpdate`.
    pub method: String,
    /// The request's `x-yosegi-*` metadata; binary (`-bin`) values as hex.
    pub metadata: Vec<(String, String)>,
    /// Each request message, hex.
    pub request: Vec<String>,
    /// The response's `x-yosegi-*` metadata.
    pub response_metadata: Vec<(String, String)>,
    /// Each response message, hex.
    pub response: Vec<String>,
    /// The gRPC status code (0 = OK; -1 = the answer ended without one: cut off, or failed
    /// below the services).
    pub status: i32,
    /// The status message.
    pub message: String,
}

impl WireCall {
    /// The request metadata value under `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The request messages' bytes.
    pub fn request_bytes(&self) -> Vec<Vec<u8>> {
        self.request.iter().map(|h| unhex(h)).collect()
    }

    /// The response messages' bytes.
    pub fn response_bytes(&self) -> Vec<Vec<u8>> {
        self.response.iter().map(|h| unhex(h)).collect()
    }
}

fn unhex(h: &str) -> Vec<u8> {
    hex::decode(h).unwrap_or_default()
}

/// Reads a recording: one [`WireCall`] per line, sorted by arrival.
pub fn read(path: &Path) -> anyhow::Result<Vec<WireCall>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let mut calls = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<WireCall>(l)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    calls.sort_by_key(|c| c.seq);
    Ok(calls)
}

/// The gRPC messages in `wire` (5-byte prefixes stripped); a torn last frame is dropped.
fn messages(mut wire: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while wire.len() >= 5 {
        let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
        if wire.len() < 5 + len {
            break;
        }
        out.push(hex::encode(&wire[5..5 + len]));
        wire = &wire[5 + len..];
    }
    out
}

fn yosegi_headers(h: &http::HeaderMap) -> Vec<(String, String)> {
    let md = tonic::metadata::MetadataMap::from_headers(h.clone());
    let mut out: Vec<(String, String)> = h
        .keys()
        .filter(|k| k.as_str().starts_with("x-yosegi-"))
        .map(|k| {
            let key = k.as_str();
            let value = if key.ends_with("-bin") {
                md.get_bin(key)
                    .and_then(|v| v.to_bytes().ok())
                    .map(hex::encode)
                    .unwrap_or_default()
            } else {
                h.get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            (key.to_string(), value)
        })
        .collect();
    out.sort();
    out
}

/// Where recordings go; shared by every call.
#[derive(Clone, Debug, Default)]
pub(super) struct RecordLayer {
    out: Option<Arc<Mutex<File>>>,
    seq: Arc<AtomicU64>,
}

impl RecordLayer {
    /// Records into `path` (created or truncated), or passes everything through when `None`.
    pub(super) fn new(path: Option<&Path>) -> anyhow::Result<Self> {
        let out = match path {
            None => None,
            Some(p) => {
                tracing::warn!(path = %p.display(), "RECORDING THE WIRE: every call's messages are written to disk (compatibility fixtures only)");
                Some(Arc::new(Mutex::new(File::create(p).map_err(|e| {
                    anyhow::anyhow!("creating the wire recording {}: {e}", p.display())
                })?)))
            }
        };
        Ok(Self {
            out,
            seq: Arc::default(),
        })
    }
}

impl<S> tower::Layer<S> for RecordLayer {
    type Service = RecordService<S>;
    fn layer(&self, inner: S) -> RecordService<S> {
        RecordService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RecordLayer`].
#[derive(Clone, Debug)]
pub(super) struct RecordService<S> {
    inner: S,
    layer: RecordLayer,
}

/// What one call has sent and received so far.
#[derive(Debug, Default)]
struct Taken {
    call: WireCall,
    request: Vec<u8>,
    response: Vec<u8>,
}

type Shared = Arc<Mutex<Taken>>;

impl<S> tower::Service<http::Request<Body>> for RecordService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(out) = self.layer.out.clone() else {
            return Box::pin(self.inner.call(req));
        };
        let taken: Shared = Arc::new(Mutex::new(Taken {
            call: WireCall {
                seq: self.layer.seq.fetch_add(1, Ordering::Relaxed),
                at_unix_ms: crate::state::now_ms(),
                method: req.uri().path().to_string(),
                metadata: yosegi_headers(req.headers()),
                status: -1,
                ..WireCall::default()
            },
            ..Taken::default()
        }));
        let (parts, body) = req.into_parts();
        let body = Body::new(Tap {
            inner: body,
            taken: taken.clone(),
            response: None,
        });
        let fut = self.inner.call(http::Request::from_parts(parts, body));
        Box::pin(async move {
            let res = match fut.await {
                Ok(res) => res,
                Err(e) => {
                    let mut t = taken.lock().unwrap_or_else(|p| p.into_inner());
                    t.call.message = "no answer: the call failed below the services".into();
                    write_record(&out, &mut t);
                    return Err(e);
                }
            };
            let (parts, body) = res.into_parts();
            {
                let mut t = taken.lock().unwrap_or_else(|p| p.into_inner());
                t.call.response_metadata = yosegi_headers(&parts.headers);
                status_from(&parts.headers, &mut t.call);
            }
            let body = Body::new(Tap {
                inner: body,
                taken,
                response: Some(out),
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

fn status_from(h: &http::HeaderMap, call: &mut WireCall) {
    if let Some(code) = h.get("grpc-status").and_then(|v| v.to_str().ok()) {
        call.status = code.parse().unwrap_or(-1);
        call.message = h
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
    }
}

/// gRPC percent-encodes status messages.
fn percent_decode(m: &str) -> String {
    let b = m.as_bytes();
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (digit(b[i + 1]), digit(b[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A body that copies what passes into the call's record; the response's tap writes the
/// record when it is dropped (the call is over, however it ended).
struct Tap {
    inner: Body,
    taken: Shared,
    /// Set on the response side: where the record goes.
    response: Option<Arc<Mutex<File>>>,
}

impl HttpBody for Tap {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let mut t = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(data) = frame.data_ref() {
                let bytes = data.chunk().to_vec();
                if self.response.is_some() {
                    t.response.extend_from_slice(&bytes);
                } else {
                    t.request.extend_from_slice(&bytes);
                }
            } else if let Some(trailers) = frame.trailers_ref()
                && self.response.is_some()
            {
                status_from(trailers, &mut t.call);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let Some(out) = self.response.take() else {
            return;
        };
        let mut t = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        write_record(&out, &mut t);
    }
}

/// Appends the call's record (its messages split out of the bytes taken) as one line.
fn write_record(out: &Mutex<File>, t: &mut Taken) {
    t.call.request = messages(&t.request);
    t.call.response = messages(&t.response);
    if let Ok(mut line) = serde_json::to_string(&t.call) {
        line.push('\n');
        let mut f = out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::error!(error = %e, "writing the wire recording failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_at_their_prefixes_and_a_torn_one_is_dropped() {
        let mut wire = vec![0, 0, 0, 0, 2, 0xaa, 0xbb, 0, 0, 0, 0, 0];
        wire.extend_from_slice(&[0, 0, 0, 0, 9, 1]);
        assert_eq!(messages(&wire), vec!["aabb".to_string(), String::new()]);
    }

    #[test]
    fn status_messages_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%3A%E2%80%94c"), "a b:—c");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
