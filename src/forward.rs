//! The upstream side (SPEC §4 item 7): pooled connections per upstream origin and protocol,
//! streaming both ways.
//!
//! - HTTP/1.1 (the default): `pool.rs`, idle connections reused newest first, one request each
//!   at a time.
//! - HTTP/2 (`protocol = "h2"`, per upstream or per route; gRPC needs it): `h2.rs`, few
//!   connections multiplexing many streams, trailers both ways.
//!
//! Bodies are never buffered whole: the client's body is handed to the upstream request once it
//! is here or its first 64 KiB are (`request_body.rs`), and the upstream's body is handed back to
//! hyper, so memory stays flat whatever the size. The only timeout here is `upstream.timeout`
//! (until response headers, shortened by a gRPC call's own `grpc-timeout`); a body may take as
//! long as it takes once it streams, like Envoy's `timeout` on a route. A WebSocket upgrade is
//! spliced once the upstream agreed to switch to `websocket` (`upgrade.rs`); any other `101` is
//! a 502.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::config::{Route, Upstream, UpstreamProtocol, UpstreamTarget};
use crate::identity::{Outgoing, UpstreamRequest};
use crate::reason::Reason;
use crate::rejection::Rejection;
use crate::scrub;

pub mod h2;
mod pool;
mod request_body;
mod tls;
mod upgrade;

use h2::{H2Body, H2Error, H2Limits, H2Pool};
use pool::{Pool, PooledBody, SendError};
use request_body::{is_client_body_error, NotReady, ReadAheadSlots, RequestBody};

pub use request_body::BodyWait;

/// The pool of one upstream origin, in the protocol its routes speak.
enum Pools {
    Http1(Arc<Pool>),
    Http2(Arc<H2Pool>),
}

/// Every (origin, protocol) the configuration names, each with its pool.
pub struct UpstreamClient {
    /// By target `Arc` (a lookup is a pointer comparison) and protocol; routes naming the same
    /// origin and protocol share one pool.
    pools: Vec<(Arc<UpstreamTarget>, UpstreamProtocol, Pools)>,
    timeout: Duration,
    /// How long a request body may take to arrive, whole or its first part (`header_read_timeout`,
    /// see `request_body`).
    body_wait: Duration,
    /// How many requests may read ahead at once.
    read_ahead: ReadAheadSlots,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("pools", &self.pools.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Builds the pools (nothing is dialled yet); fails when `ca_file` cannot be read or holds
    /// no certificate. `body_wait`: how long a request body may take to arrive (whole, or its first
    /// part) before the request gets 408.
    pub fn new(upstream: &Upstream, routes: &[Route], body_wait: Duration) -> Result<Self, String> {
        let tls = tls::client_config(upstream)?;
        let connector = tls::connector(upstream, tls.clone());
        let tls = Arc::new(tls);
        let default = (&upstream.target, upstream.protocol);
        let wanted = std::iter::once(default).chain(routes.iter().map(|r| target_of(r, upstream)));
        let mut pools: Vec<(Arc<UpstreamTarget>, UpstreamProtocol, Pools)> = Vec::new();
        for (target, protocol) in wanted {
            if pools
                .iter()
                .any(|(t, p, _)| Arc::ptr_eq(t, target) && *p == protocol)
            {
                continue;
            }
            let shared = pools
                .iter()
                .find(|(t, p, _)| **t == **target && *p == protocol)
                .map(|(_, _, pool)| pool.share());
            let pool = match (shared, protocol) {
                (Some(pool), _) => pool,
                (None, UpstreamProtocol::Http1) => Pools::Http1(Arc::new(Pool::new(
                    target,
                    connector.clone(),
                    upstream.max_connections,
                    upstream.connect_timeout,
                )?)),
                (None, UpstreamProtocol::Http2) => {
                    let https = target.scheme == Scheme::HTTPS;
                    let limits = H2Limits::new(upstream.max_connections, upstream.connect_timeout);
                    let tls = https.then(|| tls.clone());
                    Pools::Http2(Arc::new(H2Pool::new(target, tls, limits)?))
                }
            };
            pools.push((Arc::clone(target), protocol, pool));
        }
        Ok(UpstreamClient {
            pools,
            timeout: upstream.timeout,
            body_wait,
            read_ahead: ReadAheadSlots::new(request_body::READ_AHEAD_SLOTS),
        })
    }

    /// Phase 8: sends the request and waits for response headers; an authorized WebSocket
    /// upgrade is spliced once the upstream switched to `websocket`, any other `101` is a 502.
    /// The upstream's hop-by-hop headers are not passed on.
    pub async fn send(&self, req: UpstreamRequest) -> Result<Response<UpstreamBody>, Rejection> {
        let Outgoing {
            parts,
            body,
            target,
            protocol,
            upgrade: client_upgrade,
            trailer_rules,
            body_wait,
        } = req.into_outgoing();
        // An upstream connection or stream is taken only once the body is here (or its first
        // part is); gRPC calls wait less, and only an HTTP/2 upstream carries them (`request_body`).
        let wait = match protocol {
            UpstreamProtocol::Http2 => body_wait,
            UpstreamProtocol::Http1 => BodyWait::ReadAhead,
        };
        let ready = RequestBody::ready(body, wait, self.body_wait, &self.read_ahead, trailer_rules);
        let body = match ready.await {
            Ok(body) => body,
            Err(NotReady::TimedOut) => return Err(Rejection::RequestTimeout),
            Err(NotReady::Failed(error)) => {
                tracing::debug!(%error, "request body failed before it was forwarded");
                return Err(bad_body());
            }
        };
        let timeout = grpc_timeout(&parts.headers).map_or(self.timeout, |t| t.min(self.timeout));
        let request = Request::from_parts(parts, body);
        let mut response = self.exchange(&target, protocol, request, timeout).await?;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        match client_upgrade {
            Some(on_upgrade) if switching && upgrade::switched_to_websocket(&response) => {
                upgrade::splice(on_upgrade, &mut response)
            }
            // A switch nobody asked for, or to another protocol than the one asked for.
            _ if switching => return Err(Rejection::BadGateway),
            _ => {}
        }
        scrub::response_headers(response.headers_mut(), switching);
        Ok(response)
    }

    /// One exchange with the pool of `target` and `protocol`, bounded by `timeout`.
    async fn exchange(
        &self,
        target: &Arc<UpstreamTarget>,
        protocol: UpstreamProtocol,
        req: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, Rejection> {
        let pool = self
            .pools
            .iter()
            .find(|(t, p, _)| Arc::ptr_eq(t, target) && *p == protocol);
        let Some((_, _, pool)) = pool else {
            tracing::error!(upstream = %target.origin, "no connection pool for this upstream");
            return Err(Rejection::BadGateway);
        };
        let sent = match pool {
            Pools::Http1(pool) => {
                // Pinned where it is: `timeout` taking the exchange by value would copy it.
                let exchange = std::pin::pin!(pool.send(req));
                tokio::time::timeout(timeout, exchange)
                    .await
                    .map(|r| r.map(|r| r.map(UpstreamBody::Http1)))
            }
            // Boxed: the HTTP/2 exchange is a large future, and every request's future (HTTP/1
            // upstreams included) would otherwise be that large and copied as such.
            Pools::Http2(pool) => tokio::time::timeout(timeout, Box::pin(pool.send(req)))
                .await
                .map(|r| r.map(|r| r.map(UpstreamBody::Http2)).map_err(from_h2)),
        };
        match sent {
            Err(_) => Err(Rejection::GatewayTimeout),
            Ok(Err(SendError::Saturated)) => {
                tracing::warn!(upstream = %target.origin, "upstream max_connections reached; request refused");
                Err(Rejection::Unavailable {
                    reason: Reason::UpstreamSaturated,
                    description: "the upstream connection limit is reached".into(),
                    retry_after_secs: 1,
                })
            }
            Ok(Err(SendError::Failed(error))) if is_client_body_error(&*error) => {
                // The client's body broke (bad chunk framing, a hang-up mid-upload): its fault,
                // not the upstream's.
                tracing::debug!(error = %error_chain(&*error), "request body failed while forwarding");
                Err(bad_body())
            }
            Ok(Err(SendError::Failed(error))) => {
                tracing::warn!(upstream = %target.origin, error = %error_chain(&*error), "upstream request failed");
                Err(Rejection::BadGateway)
            }
            Ok(Ok(response)) => Ok(response),
        }
    }
}

impl Pools {
    fn share(&self) -> Pools {
        match self {
            Pools::Http1(pool) => Pools::Http1(Arc::clone(pool)),
            Pools::Http2(pool) => Pools::Http2(Arc::clone(pool)),
        }
    }
}

fn from_h2(error: H2Error) -> SendError {
    match error {
        H2Error::Saturated => SendError::Saturated,
        other => SendError::Failed(other.into()),
    }
}

/// Where a route's requests go, and in which protocol.
pub fn target_of<'a>(
    route: &'a Route,
    upstream: &'a Upstream,
) -> (&'a Arc<UpstreamTarget>, UpstreamProtocol) {
    (
        route.upstream.as_ref().unwrap_or(&upstream.target),
        route.upstream_protocol.unwrap_or(upstream.protocol),
    )
}

/// Whether tokengate's own errors go to this request in gRPC form (SPEC §6): its `content-type`
/// starts with `application/grpc`. Looser than [`is_grpc_call`] on purpose: a client that says
/// anything gRPC-like is better served by an answer it can read.
pub fn wants_grpc_errors(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether the request is a gRPC call for the body wait (`request_body`): exactly one
/// `content-type`, `application/grpc` alone or followed by `+subtype` or `;parameters` (not
/// `application/grpc-web`, nor a longer word that starts the same). Strict, because it lets a
/// request reach the upstream before its body.
pub fn is_grpc_call(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(http::header::CONTENT_TYPE).iter();
    let (Some(value), None) = (types.next(), types.next()) else {
        return false;
    };
    let rest = value.as_bytes().strip_prefix(b"application/grpc");
    matches!(rest, Some([] | [b'+' | b';', ..]))
}

/// A name, not a string: looking a header up by `&str` parses the name on every request.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A gRPC call's own deadline (`grpc-timeout`: up to 8 digits and a unit), when it has one.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn bad_body() -> Rejection {
    Rejection::bad_framing("the request body is malformed or ended early")
}

/// An upstream response body, streamed (trailers included) from either pool.
pub enum UpstreamBody {
    Http1(PooledBody),
    Http2(H2Body),
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamBody::Http1(_) => "UpstreamBody::Http1",
            UpstreamBody::Http2(_) => "UpstreamBody::Http2",
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Http1(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Http2(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(body) => body.is_end_stream(),
            UpstreamBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(body) => body.size_hint(),
            UpstreamBody::Http2(body) => body.size_hint(),
        }
    }
}

/// The connection pool of one upstream origin without any of the request pipeline, for the
/// benchmark's reference row (`bench/`: the bare forwarder through tokengate's own pool, to show
/// tokengate's cost over the very same hop). The proxy itself never uses it: its requests are
/// `UpstreamRequest`s, sent by [`UpstreamClient::send`].
#[doc(hidden)]
pub struct BarePool(Arc<Pool>);

impl BarePool {
    pub fn new(upstream: &Upstream) -> Result<Self, String> {
        let connector = tls::connector(upstream, tls::client_config(upstream)?);
        Ok(BarePool(Arc::new(Pool::new(
            &upstream.target,
            connector,
            upstream.max_connections,
            upstream.connect_timeout,
        )?)))
    }

    /// Sends an origin-form request and waits for response headers.
    pub async fn send(&self, req: Request<Incoming>) -> Option<Response<UpstreamBody>> {
        let (parts, body) = req.into_parts();
        let body = RequestBody::streamed(body);
        let response = self.0.send(Request::from_parts(parts, body)).await.ok()?;
        Some(response.map(UpstreamBody::Http1))
    }
}

/// The upstream request target: the normalized path and the client's query (forwarded
/// unchanged), in origin form as HTTP/1.1 sends it. The path's buffer becomes the URI's (no copy).
pub fn upstream_uri(mut path: String, query: Option<&str>) -> Result<Uri, Rejection> {
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    PathAndQuery::try_from(path)
        .map(Uri::from)
        .map_err(|_| Rejection::bad_request("the request target cannot be forwarded"))
}

/// `error: cause: cause` for the log, without the URL-bearing noise of `Debug`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of("5S"), Some(Duration::from_secs(5)));
        assert_eq!(timeout_of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout_of("100u"), Some(Duration::from_micros(100)));
        assert_eq!(
            timeout_of("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for bad in ["", "S", "1", "1s", "123456789S", "-1S", "1.5S", "xS"] {
            assert_eq!(timeout_of(bad), None, "{bad:?}");
        }
    }

    fn content_types(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(http::header::CONTENT_TYPE, v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn only_an_exact_grpc_content_type_is_a_grpc_call_but_any_grpc_like_one_gets_grpc_errors() {
        for call in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;x=y",
        ] {
            let h = content_types(&[call]);
            assert!(is_grpc_call(&h) && wants_grpc_errors(&h), "{call}");
        }
        for lookalike in ["application/grpcx", "application/grpc-web"] {
            let h = content_types(&[lookalike]);
            assert!(!is_grpc_call(&h) && wants_grpc_errors(&h), "{lookalike}");
        }
        let two = content_types(&["application/grpc", "application/json"]);
        assert!(!is_grpc_call(&two));
        assert!(!is_grpc_call(&content_types(&[])) && !wants_grpc_errors(&content_types(&[])));
    }
}
