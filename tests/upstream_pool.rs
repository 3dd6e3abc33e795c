//! The upstream connection pool (`src/forward/pool.rs`), black-box: requests go in over loopback
//! and the tests look at what the client got back and at how many connections the upstream
//! accepted. The pool must never serve a wrong answer (a leftover of another response, a closed
//! connection) and must keep working: HTTPS upstreams trusted through `ca_file`, abandoned
//! downloads, concurrency, idle connections the upstream closed, upstreams that answer before the
//! upload ends, and HTTP/1.0 requests without `Host`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use support::echo::Echo;
use support::{get, raw, raw_status, Answer, Channel, Proxy};

/// Liveness bound for anything that should happen: generous, never a speed assertion.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A public catch-all route to `url`, with `upstream_extra` lines in `[upstream]`.
fn catch_all(url: &str, upstream_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"{url}\"\ntimeout = \"10s\"\n{upstream_extra}\n\n\
         [[route]]\nid = \"all\"\npath_prefix = \"/\"\nauth = \"public\"\n"
    )
}

/// GET through the proxy, bounded by [`WAIT`].
async fn get_within(proxy: &Proxy, path: &str) -> Answer {
    tokio::time::timeout(WAIT, get(&proxy.url(path), &[]))
        .await
        .unwrap_or_else(|_| panic!("GET {path} through the proxy got no answer within {WAIT:?}"))
}

/// The echo's `target` for an answer that must be the echo's JSON for `path`.
fn assert_echoed(answer: &Answer, path: &str) {
    let text = String::from_utf8_lossy(&answer.body);
    assert_eq!(
        answer.status, 200,
        "GET {path}: status {}: {text}",
        answer.status
    );
    assert_eq!(
        answer.json()["target"],
        path,
        "GET {path} got the answer to another request: {text}"
    );
}

/// Reads a body to its end.
async fn text(body: Incoming) -> String {
    let bytes = body.collect().await.expect("response body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Counts accepted TCP connections; `next` returns the new connection's number, from 1.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// An HTTPS upstream with a private CA
// ---------------------------------------------------------------------------------------------

struct TlsUpstream {
    port: u16,
    ca_pem: String,
    connections: Counter,
    requests: Counter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1-over-TLS upstream on 127.0.0.1 with a certificate for `localhost` from a fresh
/// private CA; answers every request with `path=<its path>`.
async fn tls_upstream() -> TlsUpstream {
    let ca = support::pki::ca("upstream test CA");
    let (cert, key) = support::pki::leaf(&["localhost"], &ca);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("certificate")],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
        )
        .expect("server TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (connections, requests) = (Counter::default(), Counter::default());
    let (c, r) = (connections.clone(), requests.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            c.next();
            let (acceptor, r) = (acceptor.clone(), r.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    r.next();
                    let body = format!("path={}", req.uri().path());
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsUpstream {
        port,
        ca_pem: ca.pem(),
        connections,
        requests,
        task,
    }
}

#[tokio::test]
async fn https_upstream_with_its_private_ca_in_ca_file_is_reached_and_its_connection_reused() {
    let upstream = tls_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, &upstream.ca_pem).expect("write CA");
    let url = format!("https://localhost:{}", upstream.port);
    let proxy = Proxy::start(&catch_all(&url, &format!("ca_file = {ca_path:?}"))).await;

    for path in ["/one", "/two"] {
        let answer = get_within(&proxy, path).await;
        let body = String::from_utf8_lossy(&answer.body);
        assert_eq!(
            answer.status, 200,
            "GET {path} over the trusted HTTPS upstream: {body}"
        );
        assert_eq!(
            body,
            format!("path={path}"),
            "GET {path} got someone else's answer"
        );
    }
    assert_eq!(
        upstream.requests.get(),
        2,
        "the HTTPS upstream should have served both requests"
    );
    assert_eq!(
        upstream.connections.get(),
        1,
        "the second request should have reused the first TLS connection"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn https_upstream_with_an_untrusted_certificate_is_502() {
    let upstream = tls_upstream().await;
    let url = format!("https://localhost:{}", upstream.port);
    let proxy = Proxy::start(&catch_all(&url, "")).await;

    let answer = get_within(&proxy, "/x").await;
    let body = String::from_utf8_lossy(&answer.body);
    assert_eq!(
        answer.status, 502,
        "a certificate from an untrusted private CA must not be accepted: {body}"
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "the 502 should be a JSON error: {body}"
    );
    let json = answer.json();
    assert_eq!(json["error"], "bad_gateway", "wrong error code: {json}");
    assert!(
        json["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "the 502 has no error_description: {json}"
    );
    assert_eq!(
        upstream.requests.get(),
        0,
        "a request reached the upstream over an untrusted TLS connection"
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Responses abandoned midway
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_response_abandoned_midway_is_not_reused_and_the_next_response_is_intact() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&catch_all(&format!("http://{}", echo.addr), "")).await;
    const SIZE: u64 = 32 << 20;
    const READ: usize = 16 << 10;

    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(
            format!("GET /download/{SIZE} HTTP/1.1\r\nHost: tokengate.test\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write request");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head.len() < READ {
        let n = tokio::time::timeout(WAIT, client.read(&mut buf))
            .await
            .expect("the download did not start within the bound")
            .expect("read the download");
        assert!(
            n > 0,
            "the proxy closed the download after {} bytes",
            head.len()
        );
        head.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        raw_status(&String::from_utf8_lossy(&head)),
        Some(200),
        "the download did not start with a 200"
    );
    // Closing with unread data resets the connection: the proxy drops the response midway.
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let answer = get_within(&proxy, "/after").await;
    // The echo's JSON for `/after`, whole: no leftover download bytes before or in it.
    assert_echoed(&answer, "/after");
    // And the pool keeps working afterwards.
    assert_echoed(&get_within(&proxy, "/again").await, "/again");
    assert!(
        echo.connections() >= 2,
        "the abandoned connection was reused: the echo accepted only {} connection(s)",
        echo.connections()
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_requests_each_get_their_own_response() {
    const N: usize = 64;
    let echo = Echo::start().await;
    let proxy = Arc::new(Proxy::start(&catch_all(&format!("http://{}", echo.addr), "")).await);

    let mut tasks = Vec::new();
    for i in 0..N {
        let proxy = Arc::clone(&proxy);
        tasks.push(tokio::spawn(async move {
            let path = format!("/c/{i}");
            (get_within(&proxy, &path).await, path)
        }));
    }
    for task in tasks {
        let (answer, path) = task.await.expect("request task");
        assert_echoed(&answer, &path);
    }
    let after_concurrent = echo.connections();
    assert!(
        (1..=N).contains(&after_concurrent),
        "{N} concurrent requests opened {after_concurrent} upstream connections"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    for i in 0..N {
        let path = format!("/s/{i}");
        assert_echoed(&get_within(&proxy, &path).await, &path);
    }
    let total = echo.connections();
    assert!(
        total <= N,
        "connections were not pooled: {total} upstream connections for {} requests",
        2 * N
    );
    assert_eq!(
        total, after_concurrent,
        "sequential requests after the concurrent ones should all reuse idle connections"
    );
    assert_eq!(
        echo.seen().len(),
        2 * N,
        "the echo saw a wrong number of requests"
    );
    Arc::into_inner(proxy)
        .expect("every request task has finished")
        .stop()
        .await;
}

// ---------------------------------------------------------------------------------------------
// Idle connections the upstream closed
// ---------------------------------------------------------------------------------------------

/// A raw upstream: answers each connection's first request with a keep-alive 200
/// (`Content-Length`, body `answer <connection number>`), then closes the socket 20 ms later.
async fn closing_upstream() -> (SocketAddr, Counter, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Counter::default();
    let c = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let number = c.next();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("answer {number}");
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
                    body.len()
                );
                if tcp.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(tcp);
            });
        }
    });
    (addr, connections, task)
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used() {
    let (addr, connections, task) = closing_upstream().await;
    let proxy = Proxy::start(&catch_all(&format!("http://{addr}"), "")).await;

    for (i, path) in ["/first", "/second"].into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let answer = get_within(&proxy, path).await;
        let body = String::from_utf8_lossy(&answer.body);
        assert_eq!(
            answer.status, 200,
            "GET {path} after the upstream closed the idle connection: {body}"
        );
        assert_eq!(
            body,
            format!("answer {}", i + 1),
            "GET {path} was not answered on connection {}",
            i + 1
        );
    }
    assert_eq!(
        connections.get(),
        2,
        "each request should have needed its own connection"
    );
    proxy.stop().await;
    task.abort();
}

// ---------------------------------------------------------------------------------------------
// An upstream that answers before the upload ends
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 upstream that answers `POST /upload` at once (`early`), reading the body only
/// afterwards and reporting its length on the returned channel once complete; every other
/// request gets `conn=<connection number> path=<path>`.
async fn early_upstream() -> (
    SocketAddr,
    Counter,
    mpsc::UnboundedReceiver<u64>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Counter::default();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let c = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let number = c.next();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let done = done.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        if path == "/upload" {
                            let mut body = req.into_body();
                            tokio::spawn(async move {
                                let mut len = 0u64;
                                while let Some(frame) = body.frame().await {
                                    let Ok(frame) = frame else { return };
                                    len += frame.data_ref().map_or(0, |d| d.len() as u64);
                                }
                                let _ = done.send(len);
                            });
                            return Ok::<_, Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"early"),
                            )));
                        }
                        let body = format!("conn={number} path={path}");
                        Ok(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, connections, done_rx, task)
}

#[tokio::test]
async fn an_upstream_that_answers_before_the_upload_ends_does_not_stall_other_requests() {
    let (addr, connections, mut uploaded, task) = early_upstream().await;
    let proxy = Proxy::start(&catch_all(&format!("http://{addr}"), "")).await;

    // The upload: a first chunk now, the rest about a second later. The first chunk is the 64 KiB
    // the proxy reads ahead before it involves the upstream; past it, the body streams.
    const FIRST: usize = 64 * 1024;
    let (tx, body) = Channel::new();
    let client = Client::builder(TokioExecutor::new()).build_http::<Channel>();
    let req = Request::post(proxy.url("/upload"))
        .body(body)
        .expect("request");
    let started = tokio::time::Instant::now();
    tx.send(Bytes::from(vec![b'f'; FIRST]))
        .await
        .expect("send the first chunk");
    let response = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("the early answer to the upload did not arrive within the bound")
        .expect("upload request");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the upstream's early answer to the upload"
    );
    assert_eq!(
        tokio::time::timeout(WAIT, text(response.into_body()))
            .await
            .expect("the early answer's body did not end within the bound"),
        "early",
        "the upload got the wrong answer"
    );

    // While the upload is still going on, another request gets through.
    let second = get_within(&proxy, "/second").await;
    let body = String::from_utf8_lossy(&second.body);
    assert_eq!(
        second.status, 200,
        "a request during the unfinished upload: {body}"
    );
    assert!(
        body.ends_with("path=/second"),
        "the request during the upload got the wrong answer: {body}"
    );

    tokio::time::sleep_until(started + Duration::from_secs(1)).await;
    tx.send(Bytes::from_static(b"and the rest"))
        .await
        .expect("send the rest");
    drop(tx);
    let len = tokio::time::timeout(WAIT, uploaded.recv())
        .await
        .expect("the upstream did not receive the end of the upload within the bound")
        .expect("upload length");
    assert_eq!(
        len,
        FIRST as u64 + 12,
        "the upstream received a truncated upload"
    );

    let third = get_within(&proxy, "/third").await;
    let body = String::from_utf8_lossy(&third.body);
    assert_eq!(third.status, 200, "a request after the upload: {body}");
    assert!(
        body.ends_with("path=/third"),
        "the request after the upload got the wrong answer: {body}"
    );
    // The upload's connection goes back to the pool once the rest of the upload has been sent:
    // it is the newest idle connection then, so a request soon lands on it.
    let mut reused = false;
    for i in 0..100 {
        let path = format!("/later/{i}");
        let answer = get_within(&proxy, &path).await;
        let body = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, 200, "GET {path} after the upload: {body}");
        assert!(
            body.ends_with(&format!("path={path}")),
            "GET {path} after the upload got the wrong answer: {body}"
        );
        if body.starts_with("conn=1 ") {
            reused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reused,
        "the connection that answered before the upload ended never returned to the pool"
    );
    assert_eq!(
        connections.get(),
        2,
        "an upload and the requests after it should have needed only two connections"
    );
    proxy.stop().await;
    task.abort();
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.0 without Host
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_without_host_gets_the_upstreams_host() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&catch_all(&format!("http://{}", echo.addr), "")).await;

    let (answer, _closed) = raw(proxy.addr, b"GET /h HTTP/1.0\r\n\r\n", WAIT).await;
    assert_eq!(
        raw_status(&answer),
        Some(200),
        "an HTTP/1.0 request without Host: {answer}"
    );
    let seen = echo.seen();
    assert_eq!(seen.len(), 1, "the echo saw {} requests", seen.len());
    assert_eq!(seen[0].target, "/h", "the echo saw another request");
    let expected = format!("127.0.0.1:{}", echo.addr.port());
    assert_eq!(
        seen[0].all("host"),
        vec![expected.as_str()],
        "the upstream request should carry the upstream's host:port as its only Host"
    );
    proxy.stop().await;
}
