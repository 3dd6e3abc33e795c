//! The upstream side: one pooled HTTP/1.1 client per configuration, streaming both ways.
//!
//! Bodies are never buffered: the client's `Incoming` body is handed to the upstream request and
//! the upstream's `Incoming` body is handed back to hyper, so memory stays flat whatever the size.
//! The only timeout here is `upstream.timeout` (until response headers); a body may take as long
//! as it takes, like Envoy's `timeout` on a route. WebSocket (and other HTTP/1.1) upgrades are
//! spliced once both sides agreed to switch protocols.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::{Upstream, UpstreamTarget};
use crate::rejection::Rejection;

/// Idle upstream connections are kept this long (below common upstream keep-alive timeouts of
/// 60-75 s would be ideal, but the pool notices closed sockets before reuse anyway).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
    timeout: Duration,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Builds the pooled client; fails when `ca_file` cannot be read or holds no certificate.
    pub fn new(upstream: &Upstream) -> Result<Self, String> {
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
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(UpstreamClient {
            client,
            timeout: upstream.timeout,
        })
    }

    /// Sends `req` (whose URI is already the upstream's) and waits for response headers.
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Rejection> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(Rejection::GatewayTimeout),
            Ok(Err(error)) => {
                tracing::warn!(error = %error_chain(&error), "upstream request failed");
                Err(Rejection::BadGateway)
            }
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// The upstream URI for a normalized path and the client's query (forwarded unchanged). The
/// path's buffer becomes the URI's (no copy).
pub fn upstream_uri(
    target: &UpstreamTarget,
    mut path: String,
    query: Option<&str>,
) -> Result<Uri, Rejection> {
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    let path_and_query = PathAndQuery::try_from(path)
        .map_err(|_| Rejection::bad_request("the request target cannot be forwarded"))?;
    Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| Rejection::bad_request("the request target cannot be forwarded"))
}

/// Prepares a request for the HTTP/1.1 pool (an HTTP/2 caller's request included).
pub fn as_upstream_request(req: &mut Request<Incoming>, uri: Uri) {
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
}

/// Splices an upgraded client connection to the upgraded upstream connection (WebSocket).
pub fn splice_upgrade(client: hyper::upgrade::OnUpgrade, upstream: &mut Response<Incoming>) {
    if upstream.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
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
