//! The accepted connections: at most `max_connections` open at once and
//! `max_connections_per_address` from one IP address (one over is closed at accept), and a
//! connection that has not made its first call within `handshake_timeout_secs`
//! is closed (with TLS, tonic also bounds the TLS handshake by the same time), so idle sockets
//! — silent, or stopped after a handshake — cannot pile up. The first call is seen by the
//! digest layer, which sets the connection's [`Started`] flag.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::Connected;

/// How many connections may be open, and how soon one must start talking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// Connections open at once.
    pub max: usize,
    /// Connections open at once from one IP address.
    pub per_address: usize,
    /// Time to the first byte (and, with TLS, to the end of the handshake).
    pub handshake: Duration,
}

impl Default for ConnectionLimit {
    fn default() -> Self {
        Self {
            max: 1024,
            per_address: 128,
            handshake: Duration::from_secs(10),
        }
    }
}

/// Counts of the listener, for metrics.
#[derive(Debug)]
pub(super) struct Connections {
    limit: ConnectionLimit,
    open: Arc<Semaphore>,
    /// Open connections per peer address (entries removed at zero).
    by_address: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
}

impl Connections {
    pub(super) fn new(limit: ConnectionLimit) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Arc::new(Semaphore::new(limit.max)),
            by_address: Mutex::new(HashMap::new()),
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
            let address = match stream.peer_addr() {
                Ok(a) => match AddressSlot::take(&this, network_of(a.ip())) {
                    Some(slot) => Some(slot),
                    None => {
                        this.refuse(
                            &stream,
                            "from this address (max_connections_per_address)",
                            this.limit.per_address,
                        );
                        return None;
                    }
                },
                Err(_) => None,
            };
            match this.open.clone().try_acquire_owned() {
                Ok(permit) => Some(Ok(Limited {
                    inner: stream,
                    _permit: permit,
                    _address: address,
                    started: Started::default(),
                    first_call: Some(Box::pin(tokio::time::sleep(this.limit.handshake))),
                })),
                Err(_) => {
                    this.refuse(&stream, "(max_connections)", this.limit.max);
                    None
                }
            }
        })
    }

    /// Counts a connection closed at accept, logging the first and then every power of two.
    fn refuse(&self, stream: &TcpStream, which: &str, limit: usize) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                peer = ?stream.peer_addr().ok(),
                refused = n,
                "connection closed at accept: {limit} connections are open {which}, the limit"
            );
        }
    }
}

/// The address a connection counts against: an IPv4 address itself, an IPv6 address by its
/// /64 (one site or host holds a whole /64), an IPv4-mapped IPv6 address as IPv4.
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A connection's place among those of its peer address; given back when dropped.
#[derive(Debug)]
pub(super) struct AddressSlot {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(connections: &Arc<Connections>, ip: IpAddr) -> Option<Self> {
        let mut by = connections
            .by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = by.entry(ip).or_insert(0);
        if *n >= connections.limit.per_address {
            return None;
        }
        *n += 1;
        Some(Self {
            connections: connections.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut by = self
            .connections
            .by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by.remove(&self.ip);
            }
        }
    }
}

/// Set once a connection has made its first call (its deadline then no longer applies).
#[derive(Clone, Debug, Default)]
pub(super) struct Started(Arc<AtomicBool>);

impl Started {
    /// Marks the connection as having made a call.
    pub(super) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a request learns of its connection: its [`Started`] flag.
#[derive(Clone, Debug)]
pub(super) struct ConnInfo {
    /// The connection's first-call flag.
    pub(super) started: Started,
}

/// An accepted connection holding its place under the limit until it is dropped.
#[derive(Debug)]
pub(super) struct Limited {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    _address: Option<AddressSlot>,
    started: Started,
    /// Until the first call has come in.
    first_call: Option<Pin<Box<Sleep>>>,
}

impl Connected for Limited {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            started: self.started.clone(),
        }
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.first_call.is_some() && self.started.is_set() {
            self.first_call = None;
        }
        if let Some(deadline) = self.first_call.as_mut()
            && read.is_pending()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no call within handshake_timeout_secs",
            )));
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
