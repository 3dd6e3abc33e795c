//! The HTTP/2 upstream pool (`src/forward/h2.rs`), black-box, against in-test HTTP/2 servers on
//! loopback: multiplexing within the server's stream limit, cold bursts, streams the server
//! refused or went away from, the connection cap, GOAWAY, hung and vanished upstreams, TLS with
//! ALPN, HTTP/1-only headers, trailers, and 50 MiB bodies both ways. Connections are counted by
//! the servers (accept counters), never inferred from timing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio::task::JoinSet;

use support::h2_upstream::{
    handler, BoxError, Frames, H2Upstream, Handler, Options, RawH2, Reply, TestBody,
};
use tokengate::config::UpstreamTarget;
use tokengate::forward::h2::{H2Body, H2Error, H2Limits, H2Pool};

/// Liveness bound for anything that should happen: generous, never a speed assertion.
const WAIT: Duration = Duration::from_secs(10);
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn target(scheme: &str, authority: &str) -> UpstreamTarget {
    UpstreamTarget {
        scheme: scheme.parse().unwrap(),
        authority: authority.parse().unwrap(),
        origin: format!("{scheme}://{authority}"),
    }
}

fn limits(max_connections: usize) -> H2Limits {
    H2Limits {
        max_connections,
        connect_timeout: WAIT,
        keep_alive_interval: Duration::from_secs(20),
        keep_alive_timeout: Duration::from_secs(10),
    }
}

fn h2c(addr: std::net::SocketAddr, limits: H2Limits) -> Arc<H2Pool> {
    Arc::new(H2Pool::new(&target("http", &addr.to_string()), None, limits).expect("pool"))
}

fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn ok() -> Handler {
    handler(|_| async { Response::new(full("ok")) })
}

fn get_request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

/// Sends within [`WAIT`].
async fn send<B>(pool: &Arc<H2Pool>, req: Request<B>) -> Result<Response<H2Body>, H2Error>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    tokio::time::timeout(WAIT, pool.send(req))
        .await
        .expect("the pool answered within WAIT")
}

async fn get(pool: &Arc<H2Pool>, path: &str) -> Result<Response<H2Body>, H2Error> {
    send(pool, get_request(path)).await
}

async fn text(response: Response<H2Body>) -> String {
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("body within WAIT")
        .expect("body");
    String::from_utf8(body.to_bytes().to_vec()).unwrap()
}

/// Waits (bounded by [`WAIT`]) until `done` holds; for facts that need a moment, never for speed.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A handler that counts arrivals at `/held/N` and holds each until the gate reaches N
/// (`/held` is `/held/1`); any other path is answered at once.
fn gated(arrived: Arc<AtomicUsize>, gate: watch::Receiver<u32>) -> Handler {
    handler(move |req| {
        let arrived = Arc::clone(&arrived);
        let mut gate = gate.clone();
        let path = req.uri().path();
        let level = match path.strip_prefix("/held") {
            Some("") => Some(1),
            Some(n) => n.strip_prefix('/').and_then(|n| n.parse::<u32>().ok()),
            None => None,
        };
        async move {
            if let Some(level) = level {
                arrived.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open >= level).await;
            }
            Response::new(full("ok"))
        }
    })
}

/// `total` bytes in 64 KiB chunks, generated as they are polled. Before each chunk it records
/// how far production is ahead of what the other side has `consumed` (the high-water mark).
struct Generated {
    left: u64,
    produced: u64,
    consumed: Arc<AtomicU64>,
    ahead: Arc<AtomicU64>,
}

impl Generated {
    fn new(total: u64, consumed: Arc<AtomicU64>, ahead: Arc<AtomicU64>) -> Self {
        Generated {
            left: total,
            produced: 0,
            consumed,
            ahead,
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let ahead = this.produced - this.consumed.load(Ordering::SeqCst).min(this.produced);
        this.ahead.fetch_max(ahead, Ordering::SeqCst);
        let n = this.left.min(CHUNK.len() as u64);
        this.left -= n;
        this.produced += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Reads `body` to its end slowly (a pause after every MiB), counting into `consumed`.
async fn read_slowly<B>(mut body: B, consumed: &AtomicU64) -> u64
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            let before = total;
            total += data.len() as u64;
            consumed.store(total, Ordering::SeqCst);
            if before / MIB != total / MIB {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    total
}

/// A body that yields one chunk, then fails when told to: hyper's server resets the stream.
struct FailsWhenTold {
    sent: bool,
    told: tokio::sync::oneshot::Receiver<()>,
}

impl Body for FailsWhenTold {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !std::mem::replace(&mut this.sent, true) {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial")))));
        }
        match Pin::new(&mut this.told).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Some(Err("the handler gave up".into()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Multiplexing and the server's stream limit
// ---------------------------------------------------------------------------------------------

/// Sends `n` requests at once to a server allowing `max_streams` streams whose handler holds
/// every request until all `n` are in (so all must be in flight together); returns how many
/// connections the server accepted.
async fn burst_held_until_all_arrive(max_streams: u32, n: usize, max_connections: usize) -> usize {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let server = H2Upstream::start(
        Options {
            max_concurrent_streams: Some(max_streams),
            ..Options::default()
        },
        handler(move |_| {
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
                Response::new(full("ok"))
            }
        }),
    )
    .await;
    let pool = h2c(server.addr, limits(max_connections));
    let mut requests = JoinSet::new();
    for i in 0..n {
        let pool = Arc::clone(&pool);
        requests.spawn(async move { pool.send(get_request(&format!("/{i}"))).await });
    }
    tokio::time::timeout(WAIT * 2, async {
        while let Some(result) = requests.join_next().await {
            let response = result.unwrap().expect("every request is answered");
            assert_eq!(response.status(), StatusCode::OK);
        }
    })
    .await
    .expect("all requests in flight together, so all answered");
    server.accepted()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_share_one_connection_when_the_server_allows_100_streams() {
    assert_eq!(burst_held_until_all_arrive(100, 100, 32).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_stream_limit_opens_ceil_n_over_limit_connections() {
    assert_eq!(burst_held_until_all_arrive(10, 100, 32).await, 10);
    assert_eq!(burst_held_until_all_arrive(7, 100, 32).await, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_over_the_stream_limit_is_never_refused() {
    // Twenty uploads at once on one connection to a server allowing two streams: a client that
    // opened streams before the server's SETTINGS arrived would get REFUSED_STREAM for most,
    // and bodies already read cannot be sent again.
    let server = H2Upstream::start(
        Options {
            max_concurrent_streams: Some(2),
            ..Options::default()
        },
        handler(|req: Request<Incoming>| async move {
            let body = req.into_body().collect().await.expect("request body");
            Response::new(full(body.to_bytes().len().to_string()))
        }),
    )
    .await;
    let pool = h2c(server.addr, limits(1));
    let mut requests = JoinSet::new();
    for _ in 0..20 {
        let pool = Arc::clone(&pool);
        requests.spawn(async move {
            let req = Request::post("/upload")
                .body(Full::new(Bytes::from(vec![b'a'; 1000])))
                .unwrap();
            let response = send(&pool, req).await.expect("not refused");
            text(response).await
        });
    }
    while let Some(answer) = requests.join_next().await {
        assert_eq!(answer.unwrap(), "1000");
    }
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------------------------
// Streams the server did not process, and streams it reset
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_stream_is_sent_again() {
    let server = RawH2::start(Arc::new(|conn, stream| {
        if (conn, stream) == (0, 1) {
            Reply::Reset(7) // REFUSED_STREAM
        } else {
            Reply::Ok
        }
    }))
    .await;
    let pool = h2c(server.addr, limits(4));
    let response = get(&pool, "/")
        .await
        .expect("sent again after REFUSED_STREAM");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.requests(), [(0, 1), (0, 3)]);
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn an_upload_refused_after_its_body_was_read_is_reported_not_repeated() {
    // Bodies are never buffered, so once hyper has read from one the request cannot be rebuilt.
    let server = RawH2::start(Arc::new(|_, stream| {
        if stream == 1 {
            Reply::Reset(7) // REFUSED_STREAM
        } else {
            Reply::Ok
        }
    }))
    .await;
    let pool = h2c(server.addr, limits(4));
    let upload = Request::post("/upload")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    match send(&pool, upload).await {
        Err(H2Error::Request(_)) => {}
        other => panic!("expected the refusal to be reported, got {other:?}"),
    }
    assert_eq!(server.requests(), [(0, 1)]);
    assert_eq!(get(&pool, "/").await.unwrap().status(), StatusCode::OK);
    assert_eq!(server.requests(), [(0, 1), (0, 3)]);
}

#[tokio::test]
async fn a_stream_above_the_goaway_last_stream_id_is_sent_again_on_a_new_connection() {
    let server = RawH2::start(Arc::new(|conn, _| {
        if conn == 0 {
            Reply::GoAway { last_stream_id: 0 }
        } else {
            Reply::Ok
        }
    }))
    .await;
    let pool = h2c(server.addr, limits(4));
    let response = get(&pool, "/").await.expect("sent again after GOAWAY");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.requests(), [(0, 1), (1, 1)]);
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn a_stream_reset_for_another_reason_fails_that_request_only_and_is_not_sent_again() {
    let server = RawH2::start(Arc::new(|_, stream| {
        if stream == 1 {
            Reply::Reset(2) // INTERNAL_ERROR: maybe processed, so never repeated
        } else {
            Reply::Ok
        }
    }))
    .await;
    let pool = h2c(server.addr, limits(4));
    match get(&pool, "/first").await {
        Err(H2Error::Request(_)) => {}
        other => panic!("expected a failed request, got {other:?}"),
    }
    let response = get(&pool, "/second")
        .await
        .expect("the connection still works");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.requests(), [(0, 1), (0, 3)]);
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_reset_mid_body_fails_only_that_request() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let (open, gate) = watch::channel(0);
    let held = gated(Arc::clone(&arrived), gate);
    let (fail, told) = tokio::sync::oneshot::channel();
    let told = Arc::new(Mutex::new(Some(told)));
    let server = H2Upstream::start(
        Options::default(),
        handler(move |req| {
            let held = Arc::clone(&held);
            let reset = req.uri().path() == "/reset";
            let told = reset.then(|| told.lock().unwrap().take()).flatten();
            async move {
                match told {
                    Some(told) => Response::new(FailsWhenTold { sent: false, told }.boxed()),
                    None => held(req).await,
                }
            }
        }),
    )
    .await;
    let pool = h2c(server.addr, limits(4));
    let in_flight = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { text(get(&pool, "/held").await.expect("held request")).await }
    });
    eventually("the held request reached the server", || {
        arrived.load(Ordering::SeqCst) == 1
    })
    .await;

    let reset = get(&pool, "/reset").await.expect("response headers");
    assert_eq!(reset.status(), StatusCode::OK);
    let mut body = reset.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first chunk");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "partial");
    fail.send(()).unwrap();
    let next = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the reset");
    assert!(
        matches!(next, Some(Err(_))),
        "the reset stream's body fails: {next:?}"
    );

    open.send(1).unwrap();
    assert_eq!(in_flight.await.unwrap(), "ok");
    assert_eq!(text(get(&pool, "/after").await.unwrap()).await, "ok");
    assert_eq!(server.accepted(), 1, "all on the one connection");
}

// ---------------------------------------------------------------------------------------------
// The connection cap
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_after_connect_timeout_when_every_stream_of_every_connection_is_held() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let (open, gate) = watch::channel(0);
    let server = H2Upstream::start(
        Options {
            max_concurrent_streams: Some(2),
            ..Options::default()
        },
        gated(Arc::clone(&arrived), gate),
    )
    .await;
    let connect_timeout = Duration::from_secs(1);
    let pool = h2c(
        server.addr,
        H2Limits {
            connect_timeout,
            ..limits(1)
        },
    );
    let mut held = JoinSet::new();
    for _ in 0..2 {
        let pool = Arc::clone(&pool);
        held.spawn(async move { text(get(&pool, "/held").await.expect("held")).await });
    }
    eventually("both streams are held by the server", || {
        arrived.load(Ordering::SeqCst) == 2
    })
    .await;

    let started = tokio::time::Instant::now();
    match get(&pool, "/third").await {
        Err(H2Error::Saturated) => {}
        other => panic!("expected Saturated, got {other:?}"),
    }
    assert!(
        started.elapsed() >= connect_timeout,
        "it waited for a stream first"
    );
    assert_eq!(server.accepted(), 1, "max_connections = 1 is a hard bound");
    assert_eq!(pool.open_connections(), 1);

    open.send(1).unwrap();
    while let Some(answer) = held.join_next().await {
        assert_eq!(answer.unwrap(), "ok");
    }
    assert_eq!(text(get(&pool, "/").await.unwrap()).await, "ok");
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------------------------
// GOAWAY, hung and vanished upstreams
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_lets_in_flight_streams_finish_and_new_ones_use_a_new_connection() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let (open, gate) = watch::channel(0);
    let server = H2Upstream::start(Options::default(), gated(Arc::clone(&arrived), gate)).await;
    let pool = h2c(server.addr, limits(4));
    let mut in_flight = Vec::new();
    for level in [1, 2] {
        let pool = Arc::clone(&pool);
        in_flight.push(tokio::spawn(async move {
            text(
                get(&pool, &format!("/held/{level}"))
                    .await
                    .expect("held request"),
            )
            .await
        }));
    }
    eventually("both held requests reached the server", || {
        arrived.load(Ordering::SeqCst) == 2
    })
    .await;

    server.goaway_all().await;
    // The first stream's answer comes after the GOAWAY on the wire; the second stream keeps
    // the old connection open while the next request is sent.
    open.send(1).unwrap();
    let second = in_flight.pop().unwrap();
    assert_eq!(in_flight.pop().unwrap().await.unwrap(), "ok");

    assert_eq!(text(get(&pool, "/next").await.unwrap()).await, "ok");
    assert_eq!(
        server.accepted(),
        2,
        "the next request went to a new connection"
    );

    open.send(2).unwrap();
    assert_eq!(
        second.await.unwrap(),
        "ok",
        "the old connection's last stream finished"
    );
    assert_eq!(server.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_upstream_connection_is_found_dead_by_ping_and_replaced() {
    let server = H2Upstream::start(Options::default(), ok()).await;
    let pool = h2c(
        server.addr,
        H2Limits {
            keep_alive_interval: Duration::from_millis(300),
            keep_alive_timeout: Duration::from_secs(1),
            ..limits(4)
        },
    );
    assert_eq!(text(get(&pool, "/").await.unwrap()).await, "ok");
    assert_eq!(pool.open_connections(), 1);

    server.freeze_all();
    eventually(
        "the pool closed the connection whose peer stopped answering PINGs",
        || pool.open_connections() == 0,
    )
    .await;

    assert_eq!(text(get(&pool, "/").await.unwrap()).await, "ok");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_went_away_is_reached_on_a_new_connection_once_back() {
    let server = H2Upstream::start(Options::default(), ok()).await;
    let addr = server.addr;
    let pool = h2c(addr, limits(4));
    assert_eq!(text(get(&pool, "/").await.unwrap()).await, "ok");

    server.stop().await;
    eventually("the pool noticed the closed connection", || {
        pool.open_connections() == 0
    })
    .await;
    match get(&pool, "/").await {
        Err(H2Error::Connect(_)) => {}
        other => panic!("expected a connect error while the upstream is down, got {other:?}"),
    }

    let back = H2Upstream::start(
        Options {
            addr: Some(addr),
            ..Options::default()
        },
        ok(),
    )
    .await;
    assert_eq!(text(get(&pool, "/").await.unwrap()).await, "ok");
    assert_eq!(back.accepted(), 1);
}

// ---------------------------------------------------------------------------------------------
// TLS and ALPN
// ---------------------------------------------------------------------------------------------

struct Tls {
    client: Arc<rustls::ClientConfig>,
    server_cert: String,
    server_key: String,
}

fn private_ca() -> Tls {
    let ca = support::pki::ca("h2 upstream test CA");
    let (server_cert, server_key) = support::pki::leaf(&["localhost", "127.0.0.1"], &ca);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Tls {
        client: Arc::new(client),
        server_cert,
        server_key,
    }
}

fn server_tls(tls: &Tls, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(tls.server_cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(tls.server_key.as_bytes()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn https_pool(tls: &Tls, alpn: &[&[u8]]) -> (H2Upstream, Arc<H2Pool>) {
    let server = H2Upstream::start(
        Options {
            tls: Some(server_tls(tls, alpn)),
            ..Options::default()
        },
        handler(|req: Request<Incoming>| async move {
            Response::new(full(format!("{:?} {}", req.version(), req.uri())))
        }),
    )
    .await;
    let authority = format!("127.0.0.1:{}", server.addr.port());
    let pool = H2Pool::new(
        &target("https", &authority),
        Some(Arc::clone(&tls.client)),
        limits(4),
    )
    .expect("pool");
    (server, Arc::new(pool))
}

#[tokio::test]
async fn an_https_upstream_is_reached_over_alpn_h2() {
    let tls = private_ca();
    let (server, pool) = https_pool(&tls, &[b"h2", b"http/1.1"]).await;
    let response = get(&pool, "/tls?x=1").await.expect("https over h2");
    assert_eq!(response.version(), Version::HTTP_2);
    let authority = format!("127.0.0.1:{}", server.addr.port());
    assert_eq!(
        text(response).await,
        format!("HTTP/2.0 https://{authority}/tls?x=1")
    );
}

#[tokio::test]
async fn an_https_upstream_that_does_not_speak_h2_is_reported_as_no_h2() {
    let tls = private_ca();
    for alpn in [&[b"http/1.1".as_slice()][..], &[]] {
        let (server, pool) = https_pool(&tls, alpn).await;
        match get(&pool, "/").await {
            Err(H2Error::NoH2) => {}
            other => panic!("server ALPN {alpn:?}: expected NoH2, got {other:?}"),
        }
        assert_eq!(server.accepted(), 1);
    }
}

#[test]
fn an_https_upstream_needs_a_tls_configuration() {
    let error = H2Pool::new(&target("https", "127.0.0.1:1"), None, limits(1)).unwrap_err();
    assert!(error.contains("TLS"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// What goes over the wire
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http1_only_headers_never_reach_the_upstream_and_host_becomes_the_authority() {
    let seen: Arc<Mutex<Option<(String, HeaderMap)>>> = Arc::default();
    let server = H2Upstream::start(
        Options::default(),
        handler({
            let seen = Arc::clone(&seen);
            move |req: Request<Incoming>| {
                *seen.lock().unwrap() = Some((req.uri().to_string(), req.headers().clone()));
                async { Response::new(full("ok")) }
            }
        }),
    )
    .await;
    let pool = h2c(server.addr, limits(4));
    let req = Request::get("/h?q=1")
        .header("host", "api.example.com")
        .header("connection", "keep-alive, x-hop")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("transfer-encoding", "chunked")
        .header("upgrade", "websocket")
        .header("x-hop", "hop")
        .header("te", "trailers")
        .header("x-end-to-end", "kept")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send(&pool, req).await.unwrap().status(), StatusCode::OK);

    let (uri, headers) = seen.lock().unwrap().take().expect("the request arrived");
    assert_eq!(uri, "http://api.example.com/h?q=1");
    let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["te", "x-end-to-end"], "{headers:?}");
    assert_eq!(headers["te"], "trailers");
}

#[tokio::test]
async fn trailers_pass_both_ways() {
    let server = H2Upstream::start(
        Options::default(),
        handler(|req: Request<Incoming>| async move {
            let body = req.into_body().collect().await.expect("request body");
            let trailer = body
                .trailers()
                .and_then(|t| t.get("x-request-trailer"))
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| "missing".into());
            let data = body.to_bytes();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("x-echo", trailer.parse().unwrap());
            let frames = Frames(VecDeque::from([
                Frame::data(Bytes::from(format!("got {} bytes", data.len()))),
                Frame::trailers(trailers),
            ]));
            Response::new(frames.boxed())
        }),
    )
    .await;
    let pool = h2c(server.addr, limits(4));
    let mut request_trailers = HeaderMap::new();
    request_trailers.insert("x-request-trailer", "sent-last".parse().unwrap());
    let body = Frames(VecDeque::from([
        Frame::data(Bytes::from_static(b"hello")),
        Frame::trailers(request_trailers),
    ]));
    let req = Request::post("/grpc.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let response = send(&pool, req).await.expect("response");
    let body = response.into_body().collect().await.expect("response body");
    let trailers = body
        .trailers()
        .cloned()
        .expect("response trailers came back");
    assert_eq!(body.to_bytes(), "got 5 bytes");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        trailers["x-echo"], "sent-last",
        "the request trailers reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_stream_both_ways_without_being_buffered() {
    const TOTAL: u64 = 50 * MIB;
    // Bytes in flight are bounded by HTTP/2 flow control plus socket buffers (a few MiB); a
    // pool that buffered a body would let its producer run up to the whole 50 MiB ahead.
    const BOUND: u64 = 24 * MIB;

    let upload_consumed = Arc::new(AtomicU64::new(0));
    let download_consumed = Arc::new(AtomicU64::new(0));
    let download_ahead = Arc::new(AtomicU64::new(0));
    let server = H2Upstream::start(
        Options::default(),
        handler({
            let upload_consumed = Arc::clone(&upload_consumed);
            let download_consumed = Arc::clone(&download_consumed);
            let download_ahead = Arc::clone(&download_ahead);
            move |req: Request<Incoming>| {
                let upload_consumed = Arc::clone(&upload_consumed);
                let body = Generated::new(
                    TOTAL,
                    Arc::clone(&download_consumed),
                    Arc::clone(&download_ahead),
                );
                async move {
                    if req.uri().path() == "/upload" {
                        let n = read_slowly(req.into_body(), &upload_consumed).await;
                        Response::new(full(n.to_string()))
                    } else {
                        Response::new(body.boxed())
                    }
                }
            }
        }),
    )
    .await;
    let pool = h2c(server.addr, limits(4));

    let upload_ahead = Arc::new(AtomicU64::new(0));
    let body = Generated::new(
        TOTAL,
        Arc::clone(&upload_consumed),
        Arc::clone(&upload_ahead),
    );
    let req = Request::post("/upload").body(body).unwrap();
    let response = tokio::time::timeout(WAIT * 3, async {
        text(pool.send(req).await.expect("upload")).await
    })
    .await
    .expect("upload within bound");
    assert_eq!(response, TOTAL.to_string());

    let response = get(&pool, "/download").await.expect("download");
    let received = tokio::time::timeout(
        WAIT * 3,
        read_slowly(response.into_body(), &download_consumed),
    )
    .await
    .expect("download within bound");
    assert_eq!(received, TOTAL);

    let (up, down) = (
        upload_ahead.load(Ordering::SeqCst),
        download_ahead.load(Ordering::SeqCst),
    );
    println!(
        "most bytes in flight: upload {:.1} MiB, download {:.1} MiB",
        up as f64 / MIB as f64,
        down as f64 / MIB as f64
    );
    assert!(
        up < BOUND,
        "upload: {up} bytes produced ahead of the server"
    );
    assert!(
        down < BOUND,
        "download: {down} bytes produced ahead of the client"
    );
    assert_eq!(server.accepted(), 1);
}
