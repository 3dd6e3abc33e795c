//! TLS to `https` upstreams: rustls with `[upstream].ca_file`, or the system's roots. One client
//! configuration serves both pools: the HTTP/1.1 connector (hyper-rustls) and the HTTP/2 pool,
//! which narrows its ALPN to `h2`.

use std::sync::Arc;

use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::Upstream;

/// The client configuration for `https` upstreams; fails when `ca_file` cannot be read or holds
/// no certificate, or the system has no usable CA certificates.
pub fn client_config(upstream: &Upstream) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
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
            builder.with_root_certificates(roots)
        }
        None => builder
            .with_native_roots()
            .map_err(|e| format!("loading the system's CA certificates: {e}"))?,
    };
    Ok(builder.with_no_client_auth())
}

/// Dials `http` and `https` upstreams for the HTTP/1.1 pool.
pub fn connector(upstream: &Upstream, tls: rustls::ClientConfig) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(upstream.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}
