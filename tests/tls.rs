//! TLS termination (SPEC §3 `[server.tls]`, §8): real rustls handshakes on loopback, ALPN h2 and
//! http/1.1, client certificates requested (not required) and checked against `client_ca`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::echo::Echo;
use support::pki::{connect, pki, Pki};
use support::Proxy;

async fn start(pki: &Pki, dir: &tempfile::TempDir, echo: &Echo) -> Proxy {
    Proxy::start(
        &support::config(
            echo.addr,
            "[[route]]\nid = \"pub\"\npath_prefix = \"/\"\nauth = \"public\"\n",
        )
        .replace(
            "[upstream]",
            &format!("{}\n[upstream]", pki.server_tls_toml(dir)),
        ),
    )
    .await
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
