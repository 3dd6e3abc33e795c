//! HTTP/2 upstreams for the pool's tests, on 127.0.0.1:0, each counting the connections it
//! accepted:
//! - [`H2Upstream`]: a hyper HTTP/2 server (h2c, or TLS with the ALPN list a test chooses) around
//!   a handler closure, whose connections can be sent GOAWAY, frozen (no byte in or out any
//!   more, the socket left open), or dropped with the listener, and restarted on the same port;
//! - [`RawH2`]: a hand-written HTTP/2 server that answers each HEADERS frame as a script says
//!   (200, RST_STREAM with any code, or GOAWAY with a chosen last stream id), for what no
//!   well-behaved server does on demand.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// How an [`H2Upstream`] listens.
#[derive(Clone, Default)]
pub struct Options {
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised (hyper's default when `None`).
    pub max_concurrent_streams: Option<u32>,
    /// TLS (with the ALPN list of the config) instead of h2c.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Listen here instead of on a fresh port (to come back on the same port).
    pub addr: Option<SocketAddr>,
}

/// What a connection task can be told to do.
enum Command {
    /// Send GOAWAY and finish the streams in flight; answers once GOAWAY is queued.
    GoAway(oneshot::Sender<()>),
}

struct ConnHandle {
    frozen: Arc<AtomicBool>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

/// A hyper HTTP/2 server.
pub struct H2Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<ConnHandle>>>,
    accept: JoinHandle<()>,
}

impl H2Upstream {
    pub async fn start(options: Options, handler: Handler) -> H2Upstream {
        let listener = TcpListener::bind(options.addr.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await
            .expect("bind the HTTP/2 upstream");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let conns: Arc<Mutex<Vec<ConnHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let accepted = Arc::clone(&accepted);
            let conns = Arc::clone(&conns);
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let frozen = Arc::new(AtomicBool::new(false));
                    let (commands, rx) = mpsc::unbounded_channel();
                    let task = tokio::spawn(serve(
                        tcp,
                        options.clone(),
                        handler.clone(),
                        Arc::clone(&frozen),
                        rx,
                    ));
                    conns.lock().unwrap().push(ConnHandle {
                        frozen,
                        commands,
                        task,
                    });
                }
            }
        });
        H2Upstream {
            addr,
            accepted,
            conns,
            accept,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Sends GOAWAY on every open connection; returns once each has queued it.
    pub async fn goaway_all(&self) {
        let acks: Vec<oneshot::Receiver<()>> = {
            let conns = self.conns.lock().unwrap();
            conns
                .iter()
                .filter_map(|c| {
                    let (tx, rx) = oneshot::channel();
                    c.commands.send(Command::GoAway(tx)).ok().map(|_| rx)
                })
                .collect()
        };
        for ack in acks {
            let _ = ack.await;
        }
    }

    /// Every open connection stops reading and writing, its socket left open (a hung peer).
    pub fn freeze_all(&self) {
        for conn in self.conns.lock().unwrap().iter() {
            conn.frozen.store(true, Ordering::SeqCst);
        }
    }

    /// Closes the listener and every connection, like a process that died; returns once the
    /// port is free again.
    pub async fn stop(mut self) {
        for task in self.kill() {
            let _ = task.await;
        }
        let _ = (&mut self.accept).await;
    }

    fn kill(&self) -> Vec<JoinHandle<()>> {
        self.accept.abort();
        let conns: Vec<ConnHandle> = self.conns.lock().unwrap().drain(..).collect();
        conns
            .into_iter()
            .map(|conn| {
                conn.task.abort();
                conn.task
            })
            .collect()
    }
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        drop(self.kill());
    }
}

async fn serve(
    tcp: TcpStream,
    options: Options,
    handler: Handler,
    frozen: Arc<AtomicBool>,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    let _ = tcp.set_nodelay(true);
    match options.tls.clone() {
        Some(config) => {
            let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                return;
            };
            serve_h2(Freezable { io: tls, frozen }, &options, handler, commands).await;
        }
        None => serve_h2(Freezable { io: tcp, frozen }, &options, handler, commands).await,
    }
}

async fn serve_h2<S>(
    io: S,
    options: &Options,
    handler: Handler,
    mut commands: mpsc::UnboundedReceiver<Command>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(max) = options.max_concurrent_streams {
        builder.max_concurrent_streams(max);
    }
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            command = commands.recv() => match command {
                Some(Command::GoAway(ack)) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = ack.send(());
                }
                None => {
                    let _ = conn.as_mut().await;
                    return;
                }
            },
        }
    }
}

/// A socket that, once frozen, never reads or writes again (and never wakes anyone).
struct Freezable<S> {
    io: S,
    frozen: Arc<AtomicBool>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Freezable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Freezable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// A scripted raw HTTP/2 server
// ---------------------------------------------------------------------------------------------

/// How [`RawH2`] answers one request (one HEADERS frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `:status: 200`, no body.
    Ok,
    /// RST_STREAM with this error code (7 = REFUSED_STREAM, 2 = INTERNAL_ERROR).
    Reset(u32),
    /// GOAWAY (NO_ERROR) naming this last stream id; the stream itself gets no answer.
    GoAway { last_stream_id: u32 },
}

pub type Script = Arc<dyn Fn(usize, u32) -> Reply + Send + Sync>;

/// A hand-written HTTP/2 server: HEADERS in, the [`Reply`] that `script(connection index,
/// stream id)` names out; SETTINGS and PING are acknowledged, everything else is ignored.
pub struct RawH2 {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// `(connection index, stream id)` of every HEADERS frame received, in order.
    pub requests: Arc<Mutex<Vec<(usize, u32)>>>,
    accept: JoinHandle<()>,
}

impl RawH2 {
    pub async fn start(script: Script) -> RawH2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests: Arc<Mutex<Vec<(usize, u32)>>> = Arc::default();
        let accept = tokio::spawn({
            let accepted = Arc::clone(&accepted);
            let requests = Arc::clone(&requests);
            async move {
                let mut tasks = tokio::task::JoinSet::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let index = accepted.fetch_add(1, Ordering::SeqCst);
                    tasks.spawn(raw_conn(
                        tcp,
                        index,
                        Arc::clone(&script),
                        Arc::clone(&requests),
                    ));
                }
            }
        });
        RawH2 {
            addr,
            accepted,
            requests,
            accept,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<(usize, u32)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts the connections.
        self.accept.abort();
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn raw_conn(
    mut tcp: TcpStream,
    index: usize,
    script: Script,
    requests: Arc<Mutex<Vec<(usize, u32)>>>,
) -> io::Result<()> {
    let mut preface = [0u8; 24];
    tcp.read_exact(&mut preface).await?;
    assert_eq!(
        &preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "client preface"
    );
    tcp.write_all(&frame(0x4, 0, 0, &[])).await?;
    loop {
        let mut header = [0u8; 9];
        tcp.read_exact(&mut header).await?;
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await?;
        let answer = match kind {
            0x4 if flags & 0x1 == 0 => frame(0x4, 0x1, 0, &[]),
            0x6 if flags & 0x1 == 0 => frame(0x6, 0x1, 0, &payload),
            0x1 => {
                requests.lock().unwrap().push((index, stream));
                match script(index, stream) {
                    // 0x88: `:status: 200` from the static table; END_STREAM | END_HEADERS.
                    Reply::Ok => frame(0x1, 0x5, stream, &[0x88]),
                    Reply::Reset(code) => frame(0x3, 0, stream, &code.to_be_bytes()),
                    Reply::GoAway { last_stream_id } => {
                        let mut goaway = last_stream_id.to_be_bytes().to_vec();
                        goaway.extend_from_slice(&0u32.to_be_bytes());
                        frame(0x7, 0, 0, &goaway)
                    }
                }
            }
            _ => continue,
        };
        tcp.write_all(&answer).await?;
    }
}

/// A whole response body of `text`.
pub fn text_body(text: String) -> TestBody {
    use http_body_util::BodyExt as _;
    http_body_util::Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

/// A request or response body made of the given frames (data and trailers), with no known
/// length.
pub struct Frames(pub std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}
