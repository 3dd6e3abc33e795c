//! HTTP/2 upstreams without gRPC, through the whole proxy (SPEC §3 `[upstream].protocol = "h2"`,
//! §4.7): a plain HTTP/2 API (a hyper server) reached from HTTP/1.1 and HTTP/2 clients with the
//! identity and never the token; large bodies both ways and a slow reader, with the real
//! binary's RSS bounded; an upstream resetting one stream, before or after its response headers,
//! failing that request only; and trailers both ways — HTTP/2 client to HTTP/2 upstream,
//! HTTP/1.1 chunked with `TE: trailers` to HTTP/2 upstream — with request trailers named like
//! identity headers never reaching the upstream.
//!
//! The pool itself (multiplexing, limits, GOAWAY, TLS) is `tests/h2_pool.rs`'s; gRPC with tonic
//! on both sides is `tests/grpc.rs`'s.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokengate::keygen::{self, KeygenAlg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use support::gate::Gate;
use support::h2_upstream::{
    handler, BoxError, Frames, H2Upstream, Handler, Options, RawH2, Reply, TestBody,
};
use support::issuer::MockIssuer;
use support::{wait_ready, Proxy};

const MIB: u64 = 1 << 20;
/// Liveness bound for anything that should happen: generous, never a speed assertion.
const SLACK: Duration = Duration::from_secs(30);
/// The proxy's peak RSS may grow by at most this over its size after the first request.
const RSS_GROWTH_LIMIT_KB: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// The body `data` followed by `trailers`.
impl Frames {
    fn new(data: &'static [u8], trailers: &[(&str, &str)]) -> Frames {
        let mut map = HeaderMap::new();
        for (name, value) in trailers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Frames(VecDeque::from([
            Frame::data(Bytes::from_static(data)),
            Frame::trailers(map),
        ]))
    }
}

/// `total` bytes in 64 KiB chunks, made only as they are polled and counted in `produced`;
/// `exact` gives it a length (`Content-Length` on HTTP/1.1).
struct Generated {
    left: u64,
    exact: bool,
    produced: Arc<AtomicU64>,
}

impl Generated {
    fn new(total: u64, exact: bool) -> Generated {
        Generated::counted(total, exact, Arc::default())
    }

    fn counted(total: u64, exact: bool, produced: Arc<AtomicU64>) -> Generated {
        Generated {
            left: total,
            exact,
            produced,
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
        static CHUNK: [u8; 64 * 1024] = [b'g'; 64 * 1024];
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let n = this.left.min(CHUNK.len() as u64);
        this.left -= n;
        this.produced.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.left)
        } else {
            SizeHint::default()
        }
    }
}

/// A body that yields one chunk, then fails when told to: hyper's server resets the stream.
struct FailsWhenTold {
    sent: bool,
    told: oneshot::Receiver<()>,
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

fn full(text: &'static str) -> TestBody {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

/// Reads a body to its end, counting bytes and keeping none.
async fn count<B>(mut body: B) -> u64
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            n += data.len() as u64;
        }
    }
    n
}

fn header_map_json(headers: &HeaderMap) -> Value {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in headers {
        map.entry(name.as_str())
            .or_default()
            .push(value.to_str().unwrap_or("<binary>"));
    }
    json!(map)
}

// ---------------------------------------------------------------------------------------------
// Upstream handlers
// ---------------------------------------------------------------------------------------------

/// The plain HTTP/2 API: every request is read to its end (trailers included) and described as
/// JSON — version, method, path, query, `:authority`, headers, body length, trailers — in a
/// body without a length, followed by the trailers `x-upstream-trailer: done` and
/// `x-body-len: N` (announced in a `Trailer` header). `/download/N` streams N generated bytes (counted in `produced`); `/upload`
/// counts the body as it arrives and answers the count.
fn api(produced: Arc<AtomicU64>) -> Handler {
    handler(move |req: Request<Incoming>| {
        let produced = Arc::clone(&produced);
        async move {
            let path = req.uri().path().to_owned();
            if let Some(n) = path.strip_prefix("/download/") {
                let total = n.parse().unwrap();
                return Response::new(Generated::counted(total, false, produced).boxed());
            }
            if path == "/upload" {
                let n = count(req.into_body()).await;
                return Response::new(
                    Full::new(Bytes::from(n.to_string()))
                        .map_err(|never| match never {})
                        .boxed(),
                );
            }
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("request body");
            let trailers = body.trailers().cloned().unwrap_or_default();
            let len = body.to_bytes().len();
            let description = json!({
                "version": format!("{:?}", parts.version),
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "authority": parts.uri.authority().map(|a| a.as_str()),
                "headers": header_map_json(&parts.headers),
                "body_len": len,
                "trailers": header_map_json(&trailers),
            });
            let mut out = HeaderMap::new();
            out.insert("x-upstream-trailer", "done".parse().unwrap());
            out.insert("x-body-len", len.to_string().parse().unwrap());
            let frames = Frames(VecDeque::from([
                Frame::data(Bytes::from(description.to_string())),
                Frame::trailers(out),
            ]));
            let mut response = Response::new(frames.boxed());
            let headers = response.headers_mut();
            headers.insert("content-type", "application/json".parse().unwrap());
            // Announced, as RFC 9110 §6.6.2 asks: an HTTP/1.1 recipient learns what will follow.
            headers.insert("trailer", "x-upstream-trailer, x-body-len".parse().unwrap());
            response
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------------

fn config(issuer: &MockIssuer, upstream: SocketAddr, key: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"http://{upstream}\"\nprotocol = \"h2\"\ntimeout = \"600s\"\n\n\
         {issuer_toml}\n\
         [identity]\nsigning_key = {key:?}\n[identity.headers]\nX-Auth-Subject = \"sub\"\n\n\
         [[route]]\nid = \"api\"\npath_prefix = \"/\"\n",
        issuer_toml = issuer.config_toml("mock", &["api"]),
        key = key.display().to_string(),
    )
}

/// The issuer, an identity key and the configuration for an HTTP/2 upstream at `upstream`.
struct Parts {
    issuer: MockIssuer,
    toml: String,
    _keys: tempfile::TempDir,
}

async fn parts(upstream: SocketAddr) -> Parts {
    let issuer = MockIssuer::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("identity.pem");
    keygen::run(KeygenAlg::Es256, &key, false).unwrap();
    let toml = config(&issuer, upstream, &key);
    Parts {
        issuer,
        toml,
        _keys: keys,
    }
}

impl Parts {
    fn bearer(&self) -> String {
        format!("Bearer {}", self.issuer.token("ES256", json!({})))
    }

    async fn proxy(&self) -> Proxy {
        let proxy = Proxy::start(&self.toml).await;
        wait_ready(&proxy).await;
        proxy
    }
}

/// One HTTP/2 (h2c) connection to `addr`: every request sent on it shares it.
async fn h2_connection(addr: SocketAddr) -> http2::SendRequest<TestBody> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// An HTTP/1.1 connection to `addr`.
async fn h1_connection(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

/// Either kind of client connection.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<TestBody>),
    H2(http2::SendRequest<TestBody>),
}

impl Conn {
    async fn open(addr: SocketAddr, h2: bool) -> Conn {
        if h2 {
            Conn::H2(h2_connection(addr).await)
        } else {
            Conn::H1(h1_connection(addr).await)
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Conn::H1(_) => "HTTP/1.1",
            Conn::H2(_) => "HTTP/2",
        }
    }

    async fn send(&mut self, mut req: Request<TestBody>) -> Response<Incoming> {
        match self {
            Conn::H1(sender) => {
                // Origin form: tokengate refuses absolute-form targets (SPEC §4.1).
                let target = req.uri().path_and_query().cloned().expect("a path");
                *req.uri_mut() = target.into();
                sender.ready().await.expect("ready");
                sender.send_request(req).await.expect("response")
            }
            Conn::H2(sender) => {
                sender.ready().await.expect("ready");
                sender.send_request(req).await.expect("response")
            }
        }
    }
}

/// A request to the proxy at `addr` with `authorization`.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: &str,
    body: TestBody,
) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .header("authorization", auth)
        .body(body)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// A plain HTTP/2 API
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_plain_http2_api_gets_the_identity_and_never_the_token_from_http1_and_http2_clients() {
    let upstream = H2Upstream::start(Options::default(), api(Arc::default())).await;
    let world = parts(upstream.addr).await;
    let proxy = world.proxy().await;
    for h2 in [false, true] {
        let mut conn = Conn::open(proxy.addr, h2).await;
        let mut req = request(
            proxy.addr,
            "POST",
            "/v1/items?limit=5",
            &world.bearer(),
            full("{\"name\":\"widget\"}"),
        );
        let headers = req.headers_mut();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("x-auth-subject", "mallory".parse().unwrap());
        if !h2 {
            // HTTP/1-only headers an HTTP/2 server would reset the stream for (RFC 9113 §8.2.2).
            headers.insert("connection", "keep-alive, x-hop".parse().unwrap());
            headers.insert("keep-alive", "timeout=5".parse().unwrap());
            headers.insert("x-hop", "1".parse().unwrap());
        }
        let response = conn.send(req).await;
        let what = conn.name();
        assert_eq!(response.status(), StatusCode::OK, "{what}");
        let seen: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(seen["version"], "HTTP/2.0", "{what}: {seen}");
        assert_eq!(seen["method"], "POST");
        assert_eq!(seen["path"], "/v1/items");
        assert_eq!(seen["query"], "limit=5");
        assert_eq!(
            seen["authority"],
            proxy.addr.to_string(),
            "Host became :authority"
        );
        assert_eq!(seen["body_len"], 17);
        let headers = &seen["headers"];
        assert_eq!(
            headers["x-auth-subject"],
            json!(["alice"]),
            "{what}: {seen}"
        );
        assert!(headers["x-identity-assertion"].is_array(), "{what}: {seen}");
        assert_eq!(headers["content-type"], json!(["application/json"]));
        for gone in ["authorization", "host", "connection", "keep-alive", "x-hop"] {
            assert!(
                headers.get(gone).is_none(),
                "{what}: {gone} reached the upstream: {seen}"
            );
        }
    }

    // Refusals stay plain HTTP (JSON) on a plain API.
    let mut conn = Conn::open(proxy.addr, true).await;
    let mut req = request(proxy.addr, "GET", "/v1/items", "", full(""));
    req.headers_mut().remove("authorization");
    let response = conn.send(req).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["content-type"], "application/json");
}

// ---------------------------------------------------------------------------------------------
// Large bodies and slow readers, the real binary's memory
// ---------------------------------------------------------------------------------------------

/// 128 MiB, or `TOKENGATE_H2_STREAM_MIB` MiB.
fn big_size() -> u64 {
    std::env::var("TOKENGATE_H2_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(128 * MIB, |mib| mib * MIB)
}

fn assert_rss_growth(gate: &Gate, start_kb: u64, what: &str) {
    let peak_kb = gate.process.rss_peak_kb();
    eprintln!(
        "{what}: tokengate RSS {start_kb} kB after the first request, peak {peak_kb} kB (growth {} kB)",
        peak_kb.saturating_sub(start_kb)
    );
    assert!(
        peak_kb.saturating_sub(start_kb) < RSS_GROWTH_LIMIT_KB,
        "{what}: tokengate's peak RSS grew from {start_kb} kB to {peak_kb} kB: bodies are being buffered"
    );
}

/// Starts the real binary on `world`'s configuration; returns it with its RSS after one request.
async fn gate_started(world: &Parts) -> (Gate, u64) {
    let gate = Gate::start_ready(&world.toml).await;
    let mut conn = Conn::open(gate.addr, false).await;
    let warm = conn
        .send(request(
            gate.addr,
            "GET",
            "/warm-up",
            &world.bearer(),
            full(""),
        ))
        .await;
    assert_eq!(warm.status(), StatusCode::OK);
    count(warm.into_body()).await;
    let start_kb = gate.process.rss_kb();
    (gate, start_kb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_through_an_h2_upstream_in_flat_memory() {
    let total = big_size();
    let upstream = H2Upstream::start(Options::default(), api(Arc::default())).await;
    let world = parts(upstream.addr).await;
    let (gate, start_kb) = gate_started(&world).await;

    for h2 in [false, true] {
        let mut conn = Conn::open(gate.addr, h2).await;
        let what = conn.name();
        // Uploads: with a length over HTTP/1.1, without over HTTP/2.
        let began = Instant::now();
        let body = Generated::new(total, !h2).boxed();
        let response = conn
            .send(request(gate.addr, "POST", "/upload", &world.bearer(), body))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{what} upload");
        let got = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            got,
            total.to_string(),
            "{what}: the upstream read every byte"
        );
        eprintln!(
            "{what} upload: {} MiB in {:.1?}",
            total / MIB,
            began.elapsed()
        );

        let began = Instant::now();
        let path = format!("/download/{total}");
        let response = conn
            .send(request(gate.addr, "GET", &path, &world.bearer(), full("")))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{what} download");
        assert_eq!(count(response.into_body()).await, total, "{what} download");
        eprintln!(
            "{what} download: {} MiB in {:.1?}",
            total / MIB,
            began.elapsed()
        );
    }
    assert_rss_growth(&gate, start_kb, "uploads and downloads");
}

/// How far the upstream may get ahead of a client that stopped reading: HTTP/2 windows on both
/// hops (a few MiB) plus socket buffers. A proxy that buffered would let it finish (128 MiB).
const AHEAD_LIMIT: u64 = 32 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_h2_upstream_back_through_flow_control() {
    let total = 128 * MIB;
    let produced = Arc::new(AtomicU64::new(0));
    let upstream = H2Upstream::start(Options::default(), api(Arc::clone(&produced))).await;
    let world = parts(upstream.addr).await;
    let (gate, start_kb) = gate_started(&world).await;

    for h2 in [false, true] {
        produced.store(0, Ordering::SeqCst);
        let mut conn = Conn::open(gate.addr, h2).await;
        let what = conn.name();
        let path = format!("/download/{total}");
        let response = conn
            .send(request(gate.addr, "GET", &path, &world.bearer(), full("")))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        // Read one MiB, then stop reading.
        let mut read = 0u64;
        while read < MIB {
            let frame = body.frame().await.expect("a frame").expect("data");
            read += frame.into_data().map_or(0, |d| d.len() as u64);
        }
        // Wait until the upstream stops producing (no progress for a second).
        let deadline = Instant::now() + SLACK;
        let mut last = produced.load(Ordering::SeqCst);
        let mut still = 0;
        while still < 5 {
            assert!(
                Instant::now() < deadline,
                "{what}: the upstream never stopped"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = produced.load(Ordering::SeqCst);
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        eprintln!(
            "{what}: client read {} KiB, upstream stopped after {} MiB",
            read / 1024,
            last / MIB
        );
        assert!(
            last - read < AHEAD_LIMIT,
            "{what}: the upstream got {} MiB ahead of a client that stopped reading",
            (last - read) / MIB
        );
        // Reading again lets the rest through.
        let rest = count(body).await;
        assert_eq!(read + rest, total, "{what}: every byte arrives in the end");
    }
    assert_rss_growth(&gate, start_kb, "slow readers");
}

// ---------------------------------------------------------------------------------------------
// An upstream resetting one stream
// ---------------------------------------------------------------------------------------------

/// `/held` requests wait for the gate; `/reset` sends "partial" and then resets its stream
/// once told; anything else answers "ok".
fn held_or_reset(
    arrived: Arc<AtomicUsize>,
    gate: watch::Receiver<bool>,
    told: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
) -> Handler {
    handler(move |req: Request<Incoming>| {
        let arrived = Arc::clone(&arrived);
        let mut gate = gate.clone();
        let path = req.uri().path().to_owned();
        let told = (path == "/reset")
            .then(|| told.lock().unwrap().take())
            .flatten();
        async move {
            if let Some(told) = told {
                return Response::new(FailsWhenTold { sent: false, told }.boxed());
            }
            if path == "/held" {
                arrived.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
            }
            Response::new(full("ok"))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_mid_body_fails_that_request_only() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let (open, gate) = watch::channel(false);
    let (fail, told) = oneshot::channel();
    let told = Arc::new(Mutex::new(Some(told)));
    let upstream = H2Upstream::start(
        Options::default(),
        held_or_reset(Arc::clone(&arrived), gate, told),
    )
    .await;
    let world = parts(upstream.addr).await;
    let proxy = world.proxy().await;
    // One client connection for everything: the reset must not take it down either.
    let sender = h2_connection(proxy.addr).await;
    let get = |path: &str| {
        let mut sender = sender.clone();
        let req = request(proxy.addr, "GET", path, &world.bearer(), full(""));
        async move {
            sender.ready().await.expect("ready");
            sender.send_request(req).await
        }
    };
    let held: Vec<_> = (0..3)
        .map(|_| {
            let response = get("/held");
            tokio::spawn(async move {
                let response = response.await.expect("held response");
                response
                    .into_body()
                    .collect()
                    .await
                    .expect("held body")
                    .to_bytes()
            })
        })
        .collect();
    let deadline = Instant::now() + SLACK;
    while arrived.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the held requests never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let response = get("/reset").await.expect("response headers");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(SLACK, body.frame())
        .await
        .expect("first chunk");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "partial");
    fail.send(()).unwrap();
    let next = tokio::time::timeout(SLACK, body.frame())
        .await
        .expect("the reset");
    let error = match next {
        Some(Err(error)) => error,
        other => panic!("the client sees its stream fail, not a clean end: {other:?}"),
    };
    eprintln!("reset mid-body, client error: {error:?}");
    let reason = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason);
    assert_eq!(
        reason,
        Some(h2::Reason::INTERNAL_ERROR),
        "the upstream's reset, passed on as a reset of the client's stream: {error:?}"
    );

    open.send(true).unwrap();
    for task in held {
        assert_eq!(
            task.await.unwrap(),
            "ok",
            "the other streams finish normally"
        );
    }
    let after = get("/after")
        .await
        .expect("a new request on the same connection");
    assert_eq!(after.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(upstream.accepted(), 1, "one upstream connection throughout");
}

#[tokio::test]
async fn a_stream_reset_before_headers_is_a_bad_gateway_for_that_request_only() {
    // The proxy's streams on its one upstream connection: 1, 3, 5...
    let upstream = RawH2::start(Arc::new(|_, stream| match stream {
        1 | 3 => Reply::Reset(2), // INTERNAL_ERROR: maybe processed, never repeated
        _ => Reply::Ok,
    }))
    .await;
    let world = parts(upstream.addr).await;
    let proxy = world.proxy().await;
    let mut conn = Conn::open(proxy.addr, true).await;

    let plain = conn
        .send(request(
            proxy.addr,
            "GET",
            "/first",
            &world.bearer(),
            full(""),
        ))
        .await;
    assert_eq!(plain.status(), StatusCode::BAD_GATEWAY);
    let body: Value =
        serde_json::from_slice(&plain.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"], "bad_gateway");

    let mut grpc = request(
        proxy.addr,
        "POST",
        "/test.Echo/Unary",
        &world.bearer(),
        full("\0\0\0\0\0"),
    );
    grpc.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let grpc = conn.send(grpc).await;
    assert_eq!(grpc.status(), StatusCode::OK);
    assert_eq!(grpc.headers()["grpc-status"], "14", "UNAVAILABLE");

    let ok = conn
        .send(request(
            proxy.addr,
            "GET",
            "/third",
            &world.bearer(),
            full(""),
        ))
        .await;
    assert_eq!(ok.status(), StatusCode::OK, "the next stream is fine");
    assert_eq!(
        upstream.requests(),
        [(0, 1), (0, 3), (0, 5)],
        "none sent twice"
    );
    assert_eq!(upstream.accepted(), 1);
}

// ---------------------------------------------------------------------------------------------
// Trailers both ways
// ---------------------------------------------------------------------------------------------

/// Request trailers a client must never get to the upstream, and one that passes.
const FORGED_TRAILERS: [(&str, &str); 6] = [
    ("x-auth-subject", "mallory"),
    ("x_auth_subject", "mallory"),
    ("x-identity-assertion", "forged.jws.value"),
    ("authorization", "Bearer forged"),
    ("x-forwarded-for", "203.0.113.9"),
    ("x-checksum", "sha256=abc"),
];

#[tokio::test]
async fn request_and_response_trailers_pass_between_an_h2_client_and_an_h2_upstream() {
    let upstream = H2Upstream::start(Options::default(), api(Arc::default())).await;
    let world = parts(upstream.addr).await;
    let proxy = world.proxy().await;
    let mut conn = Conn::open(proxy.addr, true).await;
    let body = Frames::new(b"hello", &FORGED_TRAILERS).boxed();
    let mut req = request(proxy.addr, "POST", "/trailers", &world.bearer(), body);
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let response = conn.send(req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.expect("body");
    let trailers = body.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["x-upstream-trailer"], "done");
    assert_eq!(trailers["x-body-len"], "5");
    let seen: Value = serde_json::from_slice(&body.to_bytes()).unwrap();
    assert_eq!(
        seen["trailers"],
        json!({"x-checksum": ["sha256=abc"]}),
        "only the harmless trailer reached the upstream"
    );
    assert_eq!(seen["headers"]["te"], json!(["trailers"]));
    assert_eq!(seen["headers"]["x-auth-subject"], json!(["alice"]));
}

/// Sends `head` + `body` on a fresh socket and reads until the proxy closes it.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(SLACK, tcp.read_to_end(&mut out))
        .await
        .expect("the proxy closes after its answer")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// A chunked HTTP/1.1 POST carrying the [`FORGED_TRAILERS`], `TE: trailers` when `te`.
fn chunked_post(addr: SocketAddr, bearer: &str, te: bool) -> Vec<u8> {
    let te = if te { "TE: trailers\r\n" } else { "" };
    let mut req = format!(
        "POST /trailers HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {bearer}\r\n{te}\
         Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
    );
    for (name, value) in FORGED_TRAILERS {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The trailer section of a chunked HTTP/1.1 answer (the lines after the last chunk).
fn trailer_section(answer: &str) -> Vec<String> {
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head");
    let (_, after) = body.rsplit_once("\r\n0\r\n").expect("a last chunk");
    after
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| l.to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn an_http1_client_asking_for_trailers_gets_the_h2_upstreams_response_trailers() {
    let upstream = H2Upstream::start(Options::default(), api(Arc::default())).await;
    let world = parts(upstream.addr).await;
    let proxy = world.proxy().await;

    let answer = raw_exchange(proxy.addr, &chunked_post(proxy.addr, &world.bearer(), true)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{answer}"
    );
    let trailers = trailer_section(&answer);
    assert!(
        trailers.contains(&"x-upstream-trailer: done".to_owned()),
        "{answer}"
    );
    assert!(trailers.contains(&"x-body-len: 5".to_owned()), "{answer}");
    // The request's own trailers, as the upstream saw them.
    let start = answer.find("{\"version\"").expect("the description");
    let end = answer[start..].find("\r\n").expect("chunk end") + start;
    let seen: Value = serde_json::from_str(&answer[start..end]).unwrap();
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["headers"]["te"], json!(["trailers"]));
    assert_eq!(
        seen["trailers"],
        json!({"x-checksum": ["sha256=abc"]}),
        "only the harmless trailer reached the upstream"
    );
    assert_eq!(seen["headers"]["x-auth-subject"], json!(["alice"]));
}

#[tokio::test]
async fn request_trailers_named_like_identity_headers_never_reach_the_upstream_without_te() {
    let upstream = H2Upstream::start(Options::default(), api(Arc::default())).await;
    let world = parts(upstream.addr).await;
    let proxy = world.proxy().await;
    let answer = raw_exchange(
        proxy.addr,
        &chunked_post(proxy.addr, &world.bearer(), false),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let start = answer.find("{\"version\"").expect("the description");
    let end = answer[start..].find("\r\n").expect("chunk end") + start;
    let seen: Value = serde_json::from_str(&answer[start..end]).unwrap();
    assert_eq!(seen["trailers"], json!({"x-checksum": ["sha256=abc"]}));
    assert!(
        seen["headers"].get("te").is_none(),
        "no TE asked, none sent"
    );
    // A client that did not ask for trailers gets none (RFC 9110 §6.5.1 lets them be dropped).
    assert!(trailer_section(&answer).is_empty(), "{answer}");
}
