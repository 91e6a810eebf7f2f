//! Protocol versions on the server side (docs/COMPATIBILITY.md): every answer — refusals too —
//! names the coordinator's protocol and release ([`ProtocolLayer`]), and a caller of a
//! protocol this coordinator does not serve is refused before anything else is checked
//! ([`caller_protocol`]), with both versions named and what to upgrade.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::metadata::MetadataMap;
use yosegi_proto::version::{self, Peer};

/// Adds `x-yosegi-protocol` and `x-yosegi-release` to every answer.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ProtocolLayer;

impl<S> tower::Layer<S> for ProtocolLayer {
    type Service = ProtocolService<S>;
    fn layer(&self, inner: S) -> ProtocolService<S> {
        ProtocolService { inner }
    }
}

/// See [`ProtocolLayer`].
#[derive(Clone, Debug)]
pub(super) struct ProtocolService<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for ProtocolService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            let h = res.headers_mut();
            h.insert(
                http::HeaderName::from_static(version::PROTOCOL_HEADER),
                http::HeaderValue::from(version::PROTOCOL),
            );
            h.insert(
                http::HeaderName::from_static(version::RELEASE_HEADER),
                http::HeaderValue::from_static(version::RELEASE),
            );
            Ok(res)
        })
    }
}

/// The caller's protocol from its metadata, or the refusal: `INVALID_ARGUMENT` for a value
/// that is not a number, `FAILED_PRECONDITION` (starting [`version::SKEW`]) for a protocol
/// this coordinator does not serve, counted in `metrics` and logged (the first refusal and
/// then every power of two: the caller is not authenticated yet, so it must not be able to
/// fill the log). The caller is named as it names itself if that is a valid name, else `?`;
/// whether the name is an operator's is not said.
pub(super) fn caller_protocol(
    md: &MetadataMap,
    metrics: &crate::metrics::Metrics,
) -> Result<Peer, Status> {
    let text = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
    let peer = Peer::from_values(
        text(version::PROTOCOL_HEADER),
        text(version::RELEASE_HEADER),
    )
    .map_err(Status::invalid_argument)?;
    let who = match text("x-yosegi-caller") {
        Some(n) if shared_model::ids::PartyId::new(n).is_ok() => format!("caller {n}"),
        _ => "caller ?".to_string(),
    };
    version::serve_client(&peer, &who).map_err(|m| {
        let refusals = metrics.protocol_refused(peer.protocol);
        if refusals.is_power_of_two() {
            tracing::warn!(caller = ?who, client = %peer, coordinator = %Peer::this(), refusals, "refused a client of a protocol this coordinator does not serve (logged at the 1st, 2nd, 4th, … refusal)");
        }
        Status::failed_precondition(m)
    })?;
    Ok(peer)
}
