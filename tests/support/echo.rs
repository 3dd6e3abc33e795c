//! The echo upstream: answers every request with a JSON description of what it received
//! (method, target, version, headers in order, body length), and records each one so a test can
//! assert that nothing reached it. Special paths:
//! - `/download/N` streams N bytes (generated, never buffered whole);
//! - `/slow/MS` waits MS milliseconds before answering;
//! - `/ws` answers a WebSocket-style upgrade with 101 and then echoes bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub struct Echo {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(seen.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Echo {
            addr,
            seen,
            connections,
            task,
        }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// How many TCP connections the upstream accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

type EchoBody = Either<Full<Bytes>, Download>;

async fn handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    mut req: Request<Incoming>,
) -> Result<Response<EchoBody>, Infallible> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        record(&seen, &method, &target, &headers, 0);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("upgrade", "websocket".parse().expect("hv"));
        resp.headers_mut()
            .insert("connection", "upgrade".parse().expect("hv"));
        return Ok(resp);
    }
    // Count the body without keeping it.
    let mut body = req.into_body();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_len += data.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    record(&seen, &method, &target, &headers, body_len);
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|s| s.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(n) = path
        .strip_prefix("/download/")
        .and_then(|s| s.parse::<u64>().ok())
    {
        let resp = Response::new(Either::Right(Download::new(n)));
        return Ok(resp);
    }
    let description = serde_json::json!({
        "method": method,
        "target": target,
        "headers": headers,
        "body_len": body_len,
    });
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(
        description.to_string(),
    ))));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("hv"));
    // Hop-by-hop headers an upstream might send; the proxy must not pass them on.
    resp.headers_mut()
        .insert("keep-alive", "timeout=5".parse().expect("hv"));
    resp.headers_mut()
        .insert("x-upstream-private", "1".parse().expect("hv"));
    resp.headers_mut()
        .insert("connection", "x-upstream-private".parse().expect("hv"));
    Ok(resp)
}

fn record(
    seen: &Mutex<Vec<Seen>>,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body_len: u64,
) {
    seen.lock().expect("lock").push(Seen {
        method: method.to_owned(),
        target: target.to_owned(),
        headers: headers.to_vec(),
        body_len,
    });
}

/// A body of `x` bytes in 64 KiB chunks, so the echo can serve a 1 GiB download without
/// holding it.
pub struct Download {
    left: u64,
    chunk: Bytes,
}

impl Download {
    const CHUNK: usize = 64 * 1024;

    pub fn new(total: u64) -> Self {
        Download {
            left: total,
            chunk: Bytes::from(vec![b'x'; Self::CHUNK]),
        }
    }
}

impl hyper::body::Body for Download {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(Self::CHUNK as u64) as usize;
        self.left -= n as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}
