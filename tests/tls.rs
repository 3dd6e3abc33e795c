//! TLS termination (SPEC §3 `[server.tls]`, §8): real rustls handshakes on loopback, ALPN h2 and
//! http/1.1, client certificates requested (not required) and checked against `client_ca`.
mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::echo::Echo;
use support::Proxy;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Pki {
    server_ca: String,
    server_cert: String,
    server_key: String,
    client_ca: String,
    client_cert: String,
    client_key: String,
    rogue_cert: String,
    rogue_key: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(names: &[&str], issuer: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let server_ca = ca("test server CA");
    let client_ca = ca("test client CA");
    let rogue_ca = ca("rogue CA");
    let (server_cert, server_key) = leaf(&["localhost", "127.0.0.1"], &server_ca);
    let (client_cert, client_key) = leaf(&["client.test"], &client_ca);
    let (rogue_cert, rogue_key) = leaf(&["client.test"], &rogue_ca);
    Pki {
        server_ca: server_ca.pem(),
        server_cert,
        server_key,
        client_ca: client_ca.pem(),
        client_cert,
        client_key,
        rogue_cert,
        rogue_key,
    }
}

async fn start(pki: &Pki, dir: &tempfile::TempDir, echo: &Echo) -> Proxy {
    for (name, text) in [
        ("server.pem", &pki.server_cert),
        ("server.key", &pki.server_key),
        ("clients.pem", &pki.client_ca),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let d = dir.path().display();
    Proxy::start(&support::config(
        echo.addr,
        "[[route]]
id = \"pub\"
path_prefix = \"/\"
auth = \"public\"
",
    )
    .replace(
        "[upstream]",
        &format!(
            "[server.tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\nclient_ca = \"{d}/clients.pem\"\n\n[upstream]"
        ),
    ))
    .await
}

/// Connects with rustls: trusting the server CA, offering `alpn`, optionally with a client cert.
async fn connect(
    proxy: &Proxy,
    pki: &Pki,
    alpn: &[&[u8]],
    client: Option<(&str, &str)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.server_ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(proxy.addr).await?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // TLS 1.3 reports a rejected client certificate only on the first read after the handshake.
    Ok(stream)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn http1_over_tls_is_proxied_with_forwarded_proto_https() {
    let (pki, dir, echo) = (pki(), tempfile::tempdir().unwrap(), Echo::start().await);
    let proxy = start(&pki, &dir, &echo).await;
    let tls = connect(&proxy, &pki, &[b"http/1.1"], None).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(get("/hello")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["target"], "/hello");
    let forwarded = &echo.seen()[0];
    assert_eq!(forwarded.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn alpn_prefers_h2_and_http2_requests_are_served() {
    let (pki, dir, echo) = (pki(), tempfile::tempdir().unwrap(), Echo::start().await);
    let proxy = start(&pki, &dir, &echo).await;
    let tls = connect(&proxy, &pki, &[b"h2", b"http/1.1"], None)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/over-h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(echo.seen()[0].target, "/over-h2");
}

#[tokio::test]
async fn client_certificate_is_optional_but_must_chain_to_client_ca() {
    let (pki, dir, echo) = (pki(), tempfile::tempdir().unwrap(), Echo::start().await);
    let proxy = start(&pki, &dir, &echo).await;

    // A certificate from client_ca: accepted.
    let good = connect(
        &proxy,
        &pki,
        &[b"http/1.1"],
        Some((&pki.client_cert, &pki.client_key)),
    )
    .await
    .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(good))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(sender.send_request(get("/")).await.unwrap().status(), 200);

    // No certificate: requested, not required.
    let none = connect(&proxy, &pki, &[b"http/1.1"], None).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(none))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(sender.send_request(get("/")).await.unwrap().status(), 200);

    // A certificate from another CA: the handshake fails (with TLS 1.3 the client learns it on
    // its first read), and nothing reaches the upstream.
    let before = echo.seen().len();
    let rogue = connect(
        &proxy,
        &pki,
        &[b"http/1.1"],
        Some((&pki.rogue_cert, &pki.rogue_key)),
    )
    .await;
    if let Ok(stream) = rogue {
        let outcome = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender.send_request(get("/")).await
        }
        .await;
        assert!(outcome.is_err(), "a rogue client certificate was accepted");
    }
    assert_eq!(echo.seen().len(), before);
}

#[tokio::test]
async fn plain_http_to_a_tls_listener_gets_no_http_answer() {
    let (pki, dir, echo) = (pki(), tempfile::tempdir().unwrap(), Echo::start().await);
    let proxy = start(&pki, &dir, &echo).await;
    let (answer, _) = support::raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(echo.seen().is_empty());
}
