//! The sha256 of each call's first message exactly as it arrived (the bytes after the 5-byte
//! gRPC frame prefix: the unary request, or a stream's first message), computed by a layer
//! beneath tonic while the body passes through, so the call proof can cover the body: protobuf
//! has no canonical encoding across languages, so the proof signs the bytes sent, not a
//! re-encoding. Handlers read it from the request's extensions ([`FirstMessage`]) once the
//! first message has been decoded.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use http_body::{Body as HttpBody, Frame};
use sha2::{Digest as _, Sha256};
use tokio::time::Sleep;
use tonic::body::Body;
use tonic::transport::server::TlsConnectInfo;

use super::listen::ConnInfo;

/// The digest of the call's first message, set once its last byte has passed.
#[derive(Clone, Debug, Default)]
pub(super) struct FirstMessage(Arc<OnceLock<[u8; 32]>>);

impl FirstMessage {
    /// The digest, once the whole first message has arrived.
    pub(super) fn digest(&self) -> Option<[u8; 32]> {
        self.0.get().copied()
    }
}

/// Puts a [`FirstMessage`] in every request and hashes the body into it; a call whose first
/// message has not arrived whole within `first_message` is ended (before it is authenticated,
/// a caller must not hold a half-sent message in the coordinator's memory).
#[derive(Clone, Copy, Debug)]
pub(super) struct DigestLayer {
    pub(super) first_message: Duration,
}

impl<S> tower::Layer<S> for DigestLayer {
    type Service = DigestService<S>;
    fn layer(&self, inner: S) -> DigestService<S> {
        DigestService {
            inner,
            first_message: self.first_message,
        }
    }
}

/// See [`DigestLayer`].
#[derive(Clone, Debug)]
pub(super) struct DigestService<S> {
    inner: S,
    first_message: Duration,
}

impl<S> tower::Service<http::Request<Body>> for DigestService<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> S::Future {
        let slot = FirstMessage::default();
        let (mut parts, body) = req.into_parts();
        // The connection has made a call: its first-call deadline is met.
        if let Some(c) = parts.extensions.get::<ConnInfo>() {
            c.started.set();
        } else if let Some(c) = parts.extensions.get::<TlsConnectInfo<ConnInfo>>() {
            c.get_ref().started.set();
        }
        parts.extensions.insert(slot.clone());
        let body = Body::new(DigestBody {
            inner: body,
            state: State::Prefix {
                buf: [0; 5],
                have: 0,
            },
            slot,
            deadline: Some(Box::pin(tokio::time::sleep(self.first_message))),
            within: self.first_message,
        });
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

enum State {
    /// Reading the 5-byte prefix: compression flag, u32 big-endian length.
    Prefix { buf: [u8; 5], have: usize },
    /// Hashing the message; `left` bytes to go.
    Message { hasher: Sha256, left: u64 },
    /// The digest is set; the rest passes untouched.
    Done,
}

struct DigestBody {
    inner: Body,
    state: State,
    slot: FirstMessage,
    /// Until the first message is whole.
    deadline: Option<Pin<Box<Sleep>>>,
    within: Duration,
}

impl DigestBody {
    fn feed(&mut self, mut data: &[u8]) {
        loop {
            match &mut self.state {
                State::Done => return,
                State::Prefix { buf, have } => {
                    let n = (5 - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have < 5 {
                        return;
                    }
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                    self.state = State::Message {
                        hasher: Sha256::new(),
                        left: u64::from(len),
                    };
                }
                State::Message { hasher, left } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    hasher.update(&data[..n]);
                    *left -= n as u64;
                    if *left > 0 {
                        return;
                    }
                    let State::Message { hasher, .. } =
                        std::mem::replace(&mut self.state, State::Done)
                    else {
                        unreachable!("matched above")
                    };
                    let _ = self.slot.0.set(hasher.finalize().into());
                    return;
                }
            }
        }
    }
}

impl HttpBody for DigestBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && !matches!(self.state, State::Done)
        {
            let data = data.clone();
            self.feed(data.chunk());
        }
        if matches!(self.state, State::Done) {
            self.deadline = None;
        } else if let Some(d) = self.deadline.as_mut()
            && polled.is_pending()
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                "the call's first message did not arrive whole within {} s (handshake_timeout_secs)",
                self.within.as_secs()
            )))));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_frame_is_hashed_however_it_is_split() {
        let msg = b"hello, first message";
        let mut wire = vec![0u8];
        wire.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        wire.extend_from_slice(msg);
        wire.extend_from_slice(&[0, 0, 0, 0, 3, 1, 2, 3]);
        let want: [u8; 32] = Sha256::digest(msg).into();
        for split in 1..wire.len() {
            let mut b = DigestBody {
                inner: Body::default(),
                state: State::Prefix {
                    buf: [0; 5],
                    have: 0,
                },
                slot: FirstMessage::default(),
                deadline: None,
                within: Duration::from_secs(1),
            };
            for part in wire.chunks(split) {
                b.feed(part);
            }
            assert_eq!(b.slot.digest(), Some(want), "split {split}");
        }
    }
}
