//! The accepted connections: at most `max_connections` open at once (one over is closed at
//! accept), and a connection that sends nothing within `handshake_timeout_secs` is closed (with
//! TLS, tonic also bounds the whole handshake by the same time), so idle sockets that never
//! start a handshake cannot pile up.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How many connections may be open, and how soon one must start talking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// Connections open at once.
    pub max: usize,
    /// Time to the first byte (and, with TLS, to the end of the handshake).
    pub handshake: Duration,
}

impl Default for ConnectionLimit {
    fn default() -> Self {
        Self {
            max: 1024,
            handshake: Duration::from_secs(10),
        }
    }
}

/// Counts of the listener, for metrics.
#[derive(Debug)]
pub(super) struct Connections {
    limit: ConnectionLimit,
    open: Arc<Semaphore>,
    refused: AtomicU64,
}

impl Connections {
    pub(super) fn new(limit: ConnectionLimit) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Arc::new(Semaphore::new(limit.max)),
            refused: AtomicU64::new(0),
        })
    }

    /// Connections open now.
    pub(super) fn open(&self) -> u64 {
        (self.limit.max - self.open.available_permits()) as u64
    }

    /// Connections closed at accept because the limit was reached.
    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The accepted connections of `listener`, limited.
    pub(super) fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<Limited>> + use<> {
        let this = self.clone();
        TcpListenerStream::new(listener).filter_map(move |accepted| {
            let stream = match accepted {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            };
            match this.open.clone().try_acquire_owned() {
                Ok(permit) => Some(Ok(Limited {
                    inner: stream,
                    _permit: permit,
                    first_byte: Some(Box::pin(tokio::time::sleep(this.limit.handshake))),
                })),
                Err(_) => {
                    let n = this.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(
                            peer = ?stream.peer_addr().ok(),
                            refused = n,
                            "connection closed at accept: {} connections are open, the limit (max_connections)",
                            this.limit.max
                        );
                    }
                    None
                }
            }
        })
    }
}

/// An accepted connection holding its place under the limit until it is dropped.
#[derive(Debug)]
pub(super) struct Limited {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the first byte has come in.
    first_byte: Option<Pin<Box<Sleep>>>,
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(deadline) = self.first_byte.as_mut() {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_byte = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no handshake within handshake_timeout_secs",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
