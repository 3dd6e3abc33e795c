//! Bodies stream through the proxy both ways without being buffered (SPEC §4 item 7), with the
//! built binary as a subprocess so its memory can be measured from `/proc/PID/status`:
//!
//! - a big upload (generated on the fly, never held whole) and a big download (counted, never
//!   kept), 1 GiB each, arrive byte-exact while the proxy's peak RSS (VmHWM) stays under 50 MB
//!   (`TOKENGATE_BIG_STREAM_MIB=N` changes the size, e.g. for a slow machine);
//! - the same both ways over HTTP/2 (h2c prior knowledge), and a chunked HTTP/1.1 upload;
//! - the first bytes of a response reach the client before the upstream has finished it, and the
//!   first bytes of a request body reach the upstream before the client has finished it.
//!
//! Measured numbers are printed with `eprintln!` (`cargo test --test streaming -- --nocapture`).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

use support::echo::Echo;
use support::process::Process;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The proxy's peak RSS must stay below this (SPEC §4.7: no full buffering).
const RSS_LIMIT_KB: u64 = 50 * 1024;
/// Generous bounded waits for the "not buffered" checks (slow, shared machine).
const WAIT: Duration = Duration::from_secs(30);

/// 1 GiB, or `TOKENGATE_BIG_STREAM_MIB` MiB.
fn big_size() -> u64 {
    std::env::var("TOKENGATE_BIG_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(GIB, |mib| mib * MIB)
}

/// A public catch-all route to `upstream`; a long upstream timeout since the echo answers an
/// upload only once it has read all of it.
fn proxy_config(upstream: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"http://{upstream}\"\ntimeout = \"900s\"\n\n\
         [[route]]\nid = \"all\"\npath_prefix = \"/\"\nauth = \"public\"\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// `total` bytes generated on the fly in 64 KiB chunks (one shared buffer). With `exact`, the
/// size hint is exact (HTTP/1.1 sends `Content-Length`); without, it is unknown (chunked).
struct Generated {
    left: u64,
    chunk: Bytes,
    exact: bool,
}

impl Generated {
    const CHUNK: usize = 64 * 1024;

    fn new(total: u64, exact: bool) -> Self {
        Generated {
            left: total,
            chunk: Bytes::from(vec![b'u'; Self::CHUNK]),
            exact,
        }
    }

    fn empty() -> Self {
        Generated::new(0, true)
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(Self::CHUNK as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
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

/// A body fed through a channel, chunk by chunk, for as long as the sender lives.
struct Channel(mpsc::Receiver<Bytes>);

impl Channel {
    fn new() -> (mpsc::Sender<Bytes>, Channel) {
        let (tx, rx) = mpsc::channel(16);
        (tx, Channel(rx))
    }
}

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

fn client<B>(h2: bool) -> Client<HttpConnector, B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http::<B>()
}

/// Reads a body to its end, counting bytes and keeping none.
async fn count(mut body: Incoming) -> u64 {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("response body frame");
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
        }
    }
    n
}

/// POSTs `total` generated bytes to the echo through the proxy; returns the echo's `body_len`.
async fn upload(addr: SocketAddr, h2: bool, total: u64, exact: bool) -> u64 {
    let req = Request::post(format!("http://{addr}/upload"))
        .body(Generated::new(total, exact))
        .expect("request");
    let response = client(h2).request(req).await.expect("upload request");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("upload answer")
        .to_bytes();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let echoed: Value = serde_json::from_slice(&body).expect("echo JSON");
    echoed["body_len"].as_u64().expect("body_len")
}

/// GETs `/download/TOTAL` through the proxy; returns the bytes counted.
async fn download(addr: SocketAddr, h2: bool, total: u64) -> u64 {
    let req = Request::get(format!("http://{addr}/download/{total}"))
        .body(Generated::empty())
        .expect("request");
    let response = client(h2).request(req).await.expect("download request");
    assert_eq!(response.status(), StatusCode::OK);
    if !h2 {
        assert_eq!(
            response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()),
            Some(total.to_string().as_str()),
            "the upstream's Content-Length is kept"
        );
    }
    count(response.into_body()).await
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MIB as f64 / took.as_secs_f64().max(1e-9)
}

fn report(what: &str, bytes: u64, took: Duration) {
    eprintln!(
        "{what}: {} MiB in {took:.1?} ({:.0} MiB/s)",
        bytes / MIB,
        mib_per_s(bytes, took)
    );
}

fn assert_rss(proxy: &Process, what: &str, start_kb: u64) {
    let peak = proxy.rss_peak_kb();
    let now = proxy.rss_kb();
    eprintln!(
        "{what}: proxy VmHWM {peak} kB ({:.1} MiB; {start_kb} kB after start), VmRSS now {now} kB",
        peak as f64 / 1024.0
    );
    assert!(
        peak < RSS_LIMIT_KB,
        "{what}: the proxy's peak RSS is {peak} kB, over {RSS_LIMIT_KB} kB: bodies are being buffered"
    );
}

// ---------------------------------------------------------------------------------------------
// Big transfers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_upload_and_download_over_http1_in_flat_memory() {
    let total = big_size();
    let echo = Echo::start().await;
    let (proxy, addr) = Process::serve_ready(&proxy_config(echo.addr), &[]);
    let start_kb = proxy.rss_peak_kb();

    let began = Instant::now();
    let received = upload(addr, false, total, true).await;
    report("HTTP/1.1 upload (Content-Length)", total, began.elapsed());
    assert_eq!(received, total, "the upstream received every byte");
    let seen = echo.seen();
    let last = seen.last().expect("the upstream saw the upload");
    assert_eq!(last.body_len, total);
    assert_eq!(
        last.header("content-length"),
        Some(total.to_string().as_str())
    );

    let began = Instant::now();
    let counted = download(addr, false, total).await;
    report("HTTP/1.1 download", total, began.elapsed());
    assert_eq!(counted, total, "the client received every byte");

    assert_rss(&proxy, "HTTP/1.1 upload + download", start_kb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_chunked_uploads_and_downloads_stream() {
    let total = 64 * MIB;
    let echo = Echo::start().await;
    let (proxy, addr) = Process::serve_ready(&proxy_config(echo.addr), &[]);
    let start_kb = proxy.rss_peak_kb();

    let began = Instant::now();
    assert_eq!(upload(addr, true, total, false).await, total);
    report("HTTP/2 upload (no length)", total, began.elapsed());

    let began = Instant::now();
    assert_eq!(upload(addr, true, total, true).await, total);
    report("HTTP/2 upload (content-length)", total, began.elapsed());

    let began = Instant::now();
    assert_eq!(download(addr, true, total).await, total);
    report("HTTP/2 download", total, began.elapsed());

    let began = Instant::now();
    assert_eq!(upload(addr, false, total, false).await, total);
    report("HTTP/1.1 upload (chunked)", total, began.elapsed());
    let chunked = echo.seen().pop().expect("seen");
    assert_eq!(chunked.body_len, total);

    assert_rss(&proxy, "HTTP/2 + chunked transfers", start_kb);
}

// ---------------------------------------------------------------------------------------------
// No buffering: a custom upstream that sends (or reads) a first chunk, then waits
// ---------------------------------------------------------------------------------------------

const FIRST: &[u8] = b"first chunk;";
const REST: &[u8] = b"the rest, sent once the test allows it";

/// An upstream on 127.0.0.1:0:
/// - `GET /drip` (and `/drip-length`, with a `Content-Length`): answers at once with [`FIRST`],
///   then sends [`REST`] only after [`Drip::release`];
/// - `POST /sink`: signals [`Drip::first_bytes`] when the first body bytes arrive, reads the
///   rest, answers with the byte count.
struct Drip {
    addr: SocketAddr,
    release: Arc<Notify>,
    first_bytes: mpsc::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Drip {
    fn drop(&mut self) {
        self.release.notify_waiters();
        self.task.abort();
    }
}

impl Drip {
    async fn start() -> Drip {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let release = Arc::new(Notify::new());
        let (first_tx, first_bytes) = mpsc::channel(16);
        let r = release.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (release, first_tx) = (r.clone(), first_tx.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| drip_handle(req, release.clone(), first_tx.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Drip {
            addr,
            release,
            first_bytes,
            task,
        }
    }

    fn release(&self) {
        // `notify_one` stores a permit if the sender is not waiting yet.
        self.release.notify_one();
    }
}

async fn drip_handle(
    req: Request<Incoming>,
    release: Arc<Notify>,
    first_tx: mpsc::Sender<usize>,
) -> Result<Response<Channel>, Infallible> {
    let path = req.uri().path().to_owned();
    let (tx, body) = Channel::new();
    if path == "/sink" {
        let mut incoming = req.into_body();
        let mut total = 0usize;
        let mut signalled = false;
        while let Some(frame) = incoming.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                total += data.len();
                if !signalled && total > 0 {
                    signalled = true;
                    let _ = first_tx.send(total).await;
                }
            }
        }
        let _ = tx.send(Bytes::from(total.to_string())).await;
        drop(tx);
        return Ok(Response::new(body));
    }
    let mut response = Response::new(body);
    if path == "/drip-length" {
        let length = FIRST.len() + REST.len();
        response
            .headers_mut()
            .insert("content-length", length.to_string().parse().expect("hv"));
    }
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(FIRST)).await;
        release.notified().await;
        let _ = tx.send(Bytes::from_static(REST)).await;
    });
    Ok(response)
}

/// GET `path` through the proxy: the first chunk must arrive while the upstream is still holding
/// back the rest; then the whole body is complete.
async fn first_response_bytes_arrive_early(addr: SocketAddr, drip: &Drip, h2: bool, path: &str) {
    let what = format!("{} {path}", if h2 { "HTTP/2" } else { "HTTP/1.1" });
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Generated::empty())
        .expect("request");
    let response = tokio::time::timeout(WAIT, client(h2).request(req))
        .await
        .unwrap_or_else(|_| panic!("{what}: no response head within {WAIT:?}"))
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK, "{what}");
    let mut body = response.into_body();
    let mut got = Vec::new();
    let early = tokio::time::timeout(WAIT, async {
        while got.len() < FIRST.len() {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        got.extend_from_slice(data);
                    }
                }
                other => panic!("{what}: body ended early: {other:?}"),
            }
        }
    })
    .await;
    // Let the upstream finish either way, so a failure below does not hang.
    drip.release();
    assert!(
        early.is_ok(),
        "{what}: the first chunk did not reach the client within {WAIT:?} while the upstream \
         held back the rest: the response is buffered"
    );
    assert_eq!(got, FIRST, "{what}");
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap_or_else(|_| panic!("{what}: the rest never came"))
        .expect("body")
        .to_bytes();
    assert_eq!(rest, REST, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_response_byte_reaches_the_client_before_the_upstream_finishes() {
    let drip = Drip::start().await;
    let (_proxy, addr) = Process::serve_ready(&proxy_config(drip.addr), &[]);
    for h2 in [false, true] {
        for path in ["/drip", "/drip-length"] {
            first_response_bytes_arrive_early(addr, &drip, h2, path).await;
        }
    }
}

/// POST a body through the proxy: its first chunk must reach the upstream while the client is
/// still holding back the rest.
async fn first_request_bytes_arrive_early(
    addr: SocketAddr,
    drip: &mut Drip,
    h2: bool,
    with_length: bool,
) {
    let what = format!(
        "{} upload{}",
        if h2 { "HTTP/2" } else { "HTTP/1.1" },
        if with_length {
            " with Content-Length"
        } else {
            ""
        }
    );
    let (tx, body) = Channel::new();
    let mut req = Request::post(format!("http://{addr}/sink"));
    if with_length {
        req = req.header("content-length", FIRST.len() + REST.len());
    }
    let req = req.body(body).expect("request");
    let answer = tokio::spawn(async move {
        let response = client(h2).request(req).await.expect("request");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    });
    tx.send(Bytes::from_static(FIRST)).await.expect("send");
    let first = tokio::time::timeout(WAIT, drip.first_bytes.recv()).await;
    // Finish the body either way, so a failure below does not hang.
    tx.send(Bytes::from_static(REST)).await.expect("send");
    drop(tx);
    let first = first.unwrap_or_else(|_| {
        panic!(
            "{what}: the upstream saw no body bytes within {WAIT:?} while the client held back \
             the rest: the request body is buffered"
        )
    });
    assert!(first.is_some_and(|n| n > 0), "{what}");
    let (status, body) = tokio::time::timeout(WAIT, answer)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer"))
        .expect("task");
    assert_eq!(status, StatusCode::OK, "{what}");
    assert_eq!(
        body,
        (FIRST.len() + REST.len()).to_string(),
        "{what}: the upstream received the whole body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_bytes_reach_the_upstream_before_the_client_finishes() {
    let mut drip = Drip::start().await;
    let (_proxy, addr) = Process::serve_ready(&proxy_config(drip.addr), &[]);
    for h2 in [false, true] {
        for with_length in [false, true] {
            first_request_bytes_arrive_early(addr, &mut drip, h2, with_length).await;
        }
    }
}
