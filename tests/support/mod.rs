//! Test support: an in-process echo upstream, the proxy started in-process from a TOML string,
//! and small HTTP/1.1, HTTP/2 and raw-TCP clients. Everything listens on 127.0.0.1:0 and stops
//! when its handle is dropped.
#![allow(dead_code)]

pub mod dpop;
pub mod echo;
pub mod gate;
pub mod grpc;
pub mod h2_upstream;
pub mod h2c_upstream;
pub mod h2raw;
pub mod issuer;
pub mod pki;
pub mod process;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A running in-process proxy (the same start-up path as `tokengate serve`); dropping it shuts
/// it down.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    running: Option<tokengate::app::Running>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Loads `toml` (written to a temp dir so relative paths and `check` semantics are real) and
    /// serves it. `listen` addresses should use port 0.
    pub async fn start(toml: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokengate.toml");
        std::fs::write(&path, toml).expect("write config");
        let loaded = match tokengate::config::load_file(&path) {
            Ok(l) => l,
            Err(problems) => panic!(
                "test config invalid:\n{}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let running = tokengate::app::start(loaded.config, async {
            let _ = rx.await;
        })
        .await
        .expect("start");
        Proxy {
            addr: running.addr,
            admin: running.admin,
            shutdown: Some(tx),
            running: Some(running),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers graceful shutdown and waits for the server to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(running) = self.running.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), running.wait()).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(running) = self.running.take() {
            running.abort();
        }
    }
}

/// A minimal config: `listen` on an ephemeral port, the given upstream, then `extra` TOML.
pub fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"http://{upstream}\"\ntimeout = \"2s\"\n\n{extra}"
    )
}

/// A response with its body collected.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn collect(response: Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// HTTP/1.1 client request (the `http` crate's builder; the URI must be absolute).
pub async fn send(req: Request<Full<Bytes>>) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    collect(client.request(req).await.expect("request")).await
}

/// GET with extra headers over HTTP/1.1.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(req.body(Full::new(Bytes::new())).expect("request")).await
}

/// A request over HTTP/2 with prior knowledge (h2c).
pub async fn send_h2(req: Request<Full<Bytes>>) -> Answer {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    collect(client.request(req).await.expect("request")).await
}

/// Writes raw bytes, then reads until the server closes or `wait` passes. Returns what was read
/// and whether the connection was closed by the server.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The status code of the first response in a raw HTTP/1 answer.
pub fn raw_status(answer: &str) -> Option<u16> {
    answer.split(' ').nth(1).and_then(|s| s.parse().ok())
}

/// Connects a raw h1 socket wrapped for hyper (for upgrade tests).
pub async fn connect(addr: SocketAddr) -> TokioIo<TcpStream> {
    TokioIo::new(TcpStream::connect(addr).await.expect("connect"))
}

/// Every `${NAME}` in `text` (a `$${` escape excluded).
pub fn env_vars_used(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let escaped = i > 0 && rest.as_bytes()[i - 1] == b'$';
        rest = &rest[i + 2..];
        if escaped {
            continue;
        }
        if let Some(end) = rest.find('}') {
            let name = &rest[..end];
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !names.iter().any(|n| n == name)
            {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// Polls the admin `/readyz` (bounded: 10 s) until every issuer has keys.
pub async fn wait_ready(proxy: &Proxy) {
    let url = format!(
        "http://{}/readyz",
        proxy.admin.expect("an [admin] listener")
    );
    for _ in 0..200 {
        if get(&url, &[]).await.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the proxy never became ready");
}

/// A body fed through a channel, chunk by chunk, for as long as the sender lives.
pub struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

impl Channel {
    pub fn new() -> (tokio::sync::mpsc::Sender<Bytes>, Channel) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        (tx, Channel(rx))
    }
}

impl hyper::body::Body for Channel {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

/// A new ES256 identity signing key in a temporary directory (keep the directory alive).
pub fn identity_key() -> (tempfile::TempDir, std::path::PathBuf) {
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("identity.pem");
    tokengate::keygen::run(tokengate::keygen::KeygenAlg::Es256, &key, false).expect("keygen");
    (keys, key)
}
