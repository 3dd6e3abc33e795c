//! An issuer behind https with a private CA (`[[issuer]] ca_file`): keys load only when the CA is
//! trusted; the system roots never trust it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use support::echo::Echo;
use support::issuer::MockIssuer;
use support::{get, Proxy};
use tokio::net::TcpListener;

/// Serves `jwks` at `/jwks` over TLS with a certificate from a fresh private CA; returns the
/// port and the CA's PEM.
async fn tls_jwks_server(jwks: String) -> (u16, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = Bytes::from(jwks);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |_req: Request<Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, ca.pem())
}

async fn proxy_for(issuer: &MockIssuer, echo: &Echo, port: u16, ca_file: Option<&str>) -> Proxy {
    let ca = ca_file.map_or(String::new(), |p| format!("ca_file = {p:?}\n"));
    Proxy::start(&support::config(
        echo.addr,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[issuer]]\nid = \"private\"\nissuer = {:?}\n\
             jwks_uri = \"https://localhost:{port}/jwks\"\naudiences = [\"api\"]\n\
             fetch_timeout = \"1s\"\njwks_min_refresh = \"1s\"\n{ca}\n\
             [identity.headers]\nX-Auth-Subject = \"sub\"\n\n\
             [[route]]\nid = \"api\"\npath_prefix = \"/\"\n",
            issuer.issuer()
        ),
    ))
    .await
}

async fn ready(proxy: &Proxy) -> bool {
    let url = format!("http://{}/readyz", proxy.admin.expect("admin"));
    for _ in 0..60 {
        if get(&url, &[]).await.status == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn issuer_keys_load_over_https_when_ca_file_trusts_the_private_ca() {
    let issuer = MockIssuer::start().await;
    let echo = Echo::start().await;
    let (port, ca_pem) = tls_jwks_server(issuer.jwks().to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("idp-ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let proxy = proxy_for(&issuer, &echo, port, ca_path.to_str()).await;
    assert!(
        ready(&proxy).await,
        "issuer never became ready with its CA trusted"
    );
    let token = issuer.token("ES256", json!({}));
    let answer = get(
        &proxy.url("/x"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(echo.seen()[0].header("x-auth-subject"), Some("alice"));
}

#[tokio::test]
async fn a_private_ca_is_not_trusted_without_ca_file() {
    let issuer = MockIssuer::start().await;
    let echo = Echo::start().await;
    let (port, _) = tls_jwks_server(issuer.jwks().to_string()).await;
    let proxy = proxy_for(&issuer, &echo, port, None).await;
    assert!(
        !ready(&proxy).await,
        "an untrusted certificate was accepted"
    );
    let token = issuer.token("ES256", json!({}));
    let answer = get(
        &proxy.url("/x"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(answer.status, 503);
    assert!(echo.seen().is_empty());
}
