//! The upstream side: pooled HTTP/1.1 connections per upstream origin, streaming both ways.
//!
//! Bodies are never buffered: the client's `Incoming` body is handed to the upstream request and
//! the upstream's body is handed back to hyper, so memory stays flat whatever the size.
//! The only timeout here is `upstream.timeout` (until response headers); a body may take as long
//! as it takes, like Envoy's `timeout` on a route. A WebSocket upgrade is spliced once the
//! upstream agreed to switch to `websocket`; any other `101` is a 502.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::{Route, Upstream, UpstreamTarget};
use crate::identity::UpstreamRequest;
use crate::reason::Reason;
use crate::rejection::Rejection;
use crate::scrub;

pub mod h2;
mod pool;
mod request_body;

pub use pool::UpstreamBody;
use pool::{Pool, SendError};
use request_body::{is_client_body_error, NotStarted, RequestBody};

/// One pool per distinct upstream origin, shared by the routes that use it.
pub struct UpstreamClient {
    /// Every target the configuration names (by `Arc`, so a lookup is a pointer comparison),
    /// with its origin's pool.
    pools: Vec<(Arc<UpstreamTarget>, Arc<Pool>)>,
    timeout: Duration,
    /// How long a request body may take to start (`header_read_timeout`, see `request_body`).
    body_start: Duration,
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
    /// Builds the pools; fails when `ca_file` cannot be read or holds no certificate.
    /// `body_start`: how long a request body may take to start before the request gets 408.
    pub fn new(
        upstream: &Upstream,
        routes: &[Route],
        body_start: Duration,
    ) -> Result<Self, String> {
        let connector = connector(upstream)?;
        let targets = std::iter::once(&upstream.target)
            .chain(routes.iter().filter_map(|r| r.upstream.as_ref()));
        let mut pools: Vec<(Arc<UpstreamTarget>, Arc<Pool>)> = Vec::new();
        for target in targets {
            if pools.iter().any(|(t, _)| Arc::ptr_eq(t, target)) {
                continue;
            }
            let pool = match pools.iter().find(|(t, _)| **t == **target) {
                Some((_, pool)) => Arc::clone(pool),
                None => Arc::new(Pool::new(
                    target,
                    connector.clone(),
                    upstream.max_connections,
                    upstream.connect_timeout,
                )?),
            };
            pools.push((Arc::clone(target), pool));
        }
        Ok(UpstreamClient {
            pools,
            timeout: upstream.timeout,
            body_start,
        })
    }

    /// Phase 8: sends the request and waits for response headers; an authorized WebSocket
    /// upgrade is spliced once the upstream switched to `websocket`, any other `101` is a 502.
    /// The upstream's hop-by-hop headers are not passed on.
    pub async fn send(&self, req: UpstreamRequest) -> Result<Response<UpstreamBody>, Rejection> {
        let (request, target, client_upgrade) = req.into_parts();
        let (parts, body) = request.into_parts();
        let body = match RequestBody::started(body, self.body_start).await {
            Ok(body) => body,
            Err(NotStarted::TimedOut) => return Err(Rejection::RequestTimeout),
            Err(NotStarted::Failed(error)) => {
                tracing::debug!(%error, "request body failed before it was forwarded");
                return Err(bad_body());
            }
        };
        let request = Request::from_parts(parts, body);
        let mut response = self.exchange(&target, request).await?;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        match client_upgrade {
            Some(on_upgrade) if switching && switched_to_websocket(&response) => {
                splice_upgrade(on_upgrade, &mut response)
            }
            // A switch nobody asked for, or to another protocol than the one asked for.
            _ if switching => return Err(Rejection::BadGateway),
            _ => {}
        }
        scrub::response_headers(response.headers_mut(), switching);
        Ok(response)
    }

    /// One exchange with `target`'s pool, bounded by `upstream.timeout`.
    async fn exchange(
        &self,
        target: &Arc<UpstreamTarget>,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, Rejection> {
        let Some((_, pool)) = self.pools.iter().find(|(t, _)| Arc::ptr_eq(t, target)) else {
            tracing::error!(upstream = %target.origin, "no connection pool for this upstream");
            return Err(Rejection::BadGateway);
        };
        match tokio::time::timeout(self.timeout, pool.send(req)).await {
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
                tracing::warn!(error = %error_chain(&*error), "upstream request failed");
                Err(Rejection::BadGateway)
            }
            Ok(Ok(response)) => Ok(response),
        }
    }
}

fn bad_body() -> Rejection {
    Rejection::bad_framing("the request body is malformed or ended early")
}

/// The connection pool of one upstream origin without any of the request pipeline, for the
/// benchmark's reference row (`bench/`: the bare forwarder through tokengate's own pool, to show
/// tokengate's cost over the very same hop). The proxy itself never uses it: its requests are
/// `UpstreamRequest`s, sent by [`UpstreamClient::send`].
#[doc(hidden)]
pub struct BarePool(Arc<Pool>);

impl BarePool {
    pub fn new(upstream: &Upstream) -> Result<Self, String> {
        Ok(BarePool(Arc::new(Pool::new(
            &upstream.target,
            connector(upstream)?,
            upstream.max_connections,
            upstream.connect_timeout,
        )?)))
    }

    /// Sends an origin-form request and waits for response headers.
    pub async fn send(&self, req: Request<Incoming>) -> Option<Response<UpstreamBody>> {
        let (parts, body) = req.into_parts();
        let body = RequestBody::started(body, Duration::MAX).await.ok()?;
        self.0.send(Request::from_parts(parts, body)).await.ok()
    }
}

/// Dials `http` and `https` upstreams (rustls; `ca_file` or the system's roots).
fn connector(upstream: &Upstream) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(upstream.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match &upstream.ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate found", path.display()));
            }
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(tls)
        }
        None => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| format!("loading the system's CA certificates: {e}"))?,
    };
    Ok(builder.https_or_http().enable_http1().wrap_connector(http))
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

/// Whether a `101 Switching Protocols` answer switched to WebSocket, the one protocol the client
/// may have asked for (anything else would give it a raw connection of another kind).
fn switched_to_websocket(response: &Response<UpstreamBody>) -> bool {
    let mut upgrades = response.headers().get_all(http::header::UPGRADE).iter();
    matches!(
        (upgrades.next(), upgrades.next()),
        (Some(value), None) if value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
    )
}

/// Splices an upgraded client connection to the upgraded upstream connection (WebSocket).
fn splice_upgrade(client: hyper::upgrade::OnUpgrade, upstream: &mut Response<UpstreamBody>) {
    let upstream = hyper::upgrade::on(upstream);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(
                    client_ok = c.is_ok(),
                    upstream_ok = u.is_ok(),
                    "upgrade failed"
                );
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%error, "upgraded connection ended");
        }
    });
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
