//! HTTP/2 at frame level for the security tests: a client on the `h2` crate that sends exactly
//! the pseudo-headers, method spelling and header names a test asks for (hyper's client would
//! normalize some of them), and records every byte the server sent so a test can look at the
//! frames themselves (a GOAWAY, a DATA frame on a HEAD stream, the server's SETTINGS).
//!
//! Also the raw pieces for sockets that must stop half-way through the protocol: the client
//! preface, SETTINGS frames, and a frame parser. HPACK is left to the `h2` crate: only frames
//! whose payload needs no header decoding are read here.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;

/// The ACK flag of SETTINGS and PING.
pub const ACK: u8 = 0x1;

/// SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2).
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// One frame as it was on the wire.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// `(identifier, value)` pairs of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                )
            })
            .collect()
    }
}

/// Parses consecutive frames from what a server sent (a server sends no preface); an incomplete
/// frame at the end is left out.
pub fn parse_frames(mut bytes: &[u8]) -> Vec<RawFrame> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes.len() < 9 + len {
            break;
        }
        frames.push(RawFrame {
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
            payload: bytes[9..9 + len].to_vec(),
        });
        bytes = &bytes[9 + len..];
    }
    frames
}

/// A short description of frames for failure messages: `TYPE(stream)[payload length]`.
pub fn describe(frames: &[RawFrame]) -> String {
    frames
        .iter()
        .map(|f| {
            let kind = match f.kind {
                DATA => "DATA".to_owned(),
                HEADERS => "HEADERS".to_owned(),
                RST_STREAM => "RST_STREAM".to_owned(),
                SETTINGS => "SETTINGS".to_owned(),
                GOAWAY => "GOAWAY".to_owned(),
                0x6 => "PING".to_owned(),
                0x8 => "WINDOW_UPDATE".to_owned(),
                other => format!("type{other:#x}"),
            };
            format!("{kind}({})[{}]", f.stream, f.payload.len())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload size");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame (not an ACK) with these parameters; `&[]` is the empty one.
pub fn settings_frame(params: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in params {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// Opens an h2c connection by hand (preface and an empty SETTINGS frame) and returns the
/// parameters of the server's first SETTINGS frame. Panics if none arrives within `wait`.
pub async fn server_settings(addr: SocketAddr, wait: Duration) -> Vec<(u16, u32)> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&settings_frame(&[]));
    tcp.write_all(&hello).await.expect("write preface");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let found = parse_frames(&received)
            .into_iter()
            .find(|f| f.kind == SETTINGS && f.flags & ACK == 0);
        if let Some(settings) = found {
            return settings.settings();
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            other => panic!(
                "no SETTINGS frame from the server ({other:?}); received {:?}",
                parse_frames(&received)
            ),
        }
    }
}

/// Bytes received from the server, shared between the connection and the test.
type Log = Arc<Mutex<Vec<u8>>>;

/// A stream that copies every byte it reads into `log`.
struct Tapped {
    inner: TcpStream,
    log: Log,
}

impl AsyncRead for Tapped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            this.log
                .lock()
                .expect("lock")
                .extend_from_slice(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Tapped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An answer on one stream, body collected.
#[derive(Debug)]
pub struct H2Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// How many DATA payloads with at least one byte arrived.
    pub data_chunks: usize,
    pub trailers: Option<HeaderMap>,
}

impl H2Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One h2c (prior knowledge) client connection.
pub struct H2Client {
    send: h2::client::SendRequest<Bytes>,
    driver: JoinHandle<Result<(), h2::Error>>,
    log: Log,
}

impl H2Client {
    /// Connects and completes the HTTP/2 handshake (the connection is driven by a task).
    pub async fn connect(addr: SocketAddr) -> H2Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let log = Log::default();
        let io = Tapped {
            inner: tcp,
            log: log.clone(),
        };
        let (send, connection) = h2::client::Builder::new()
            .handshake::<_, Bytes>(io)
            .await
            .expect("h2 handshake");
        let driver = tokio::spawn(connection);
        H2Client { send, driver, log }
    }

    /// A handle for sending requests from other tasks (concurrent streams).
    pub fn sender(&self) -> h2::client::SendRequest<Bytes> {
        self.send.clone()
    }

    /// Sends one request (`body` empty: HEADERS with END_STREAM) and collects the answer.
    pub async fn send(&self, req: Request<()>, body: Bytes) -> Result<H2Answer, String> {
        send_on(self.sender(), req, body).await
    }

    /// Every frame the server has sent so far.
    pub fn frames(&self) -> Vec<RawFrame> {
        parse_frames(&self.log.lock().expect("lock"))
    }

    /// Whether a GOAWAY has arrived.
    pub fn got_goaway(&self) -> bool {
        self.frames().iter().any(|f| f.kind == GOAWAY)
    }

    /// Whether the connection has ended (closed by the server or failed).
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }

    /// Waits (at most `within`) for the connection to end; true if it did.
    pub async fn closed_within(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_closed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

impl Drop for H2Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Sends one request on `send` and collects the answer; any stream or connection error is
/// returned as text (a test may expect one).
pub async fn send_on(
    mut send: h2::client::SendRequest<Bytes>,
    req: Request<()>,
    body: Bytes,
) -> Result<H2Answer, String> {
    send = send.ready().await.map_err(|e| format!("not ready: {e}"))?;
    let end = body.is_empty();
    let (response, mut stream) = send
        .send_request(req, end)
        .map_err(|e| format!("send_request: {e}"))?;
    if !end {
        stream
            .send_data(body, true)
            .map_err(|e| format!("send_data: {e}"))?;
    }
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    let (parts, mut recv) = response.into_parts();
    let mut collected = Vec::new();
    let mut data_chunks = 0;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(|e| format!("body: {e}"))?;
        if !chunk.is_empty() {
            data_chunks += 1;
        }
        let _ = recv.flow_control().release_capacity(chunk.len());
        collected.extend_from_slice(&chunk);
    }
    let trailers = recv
        .trailers()
        .await
        .map_err(|e| format!("trailers: {e}"))?;
    Ok(H2Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: Bytes::from(collected),
        data_chunks,
        trailers,
    })
}

/// A request exactly as given: `method` spelled as is (`delete` stays lower case), `:authority`
/// from `authority`, and `headers` added in order (names may carry `_` or upper case; HTTP/2 puts
/// them in lower case on the wire).
pub fn request(method: &str, authority: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
    let method = Method::from_bytes(method.as_bytes()).expect("method token");
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request")
}
