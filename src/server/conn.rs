//! One client connection, from accept to close: TLS, protocol detection, HTTP/1.1 or HTTP/2, and
//! the deadlines that keep idle or slow sockets from filling `max_connections` (SPEC §3
//! `header_read_timeout`, `idle_timeout`, `max_concurrent_streams`).
//!
//! Deadlines, all counted from accept:
//! - the TLS handshake and protocol detection (at most the 24 bytes of the HTTP/2 preface) must
//!   finish before `header_read_timeout`, or the socket is dropped: a client that sends nothing,
//!   or only `P`, costs a slot for that long and no longer;
//! - the first complete request head must arrive before the same deadline, on both protocols
//!   (HTTP/2: a preface and SETTINGS followed by silence is closed);
//! - afterwards HTTP/1.1 relies on hyper's `header_read_timeout` (from the end of one response
//!   to the next complete head), and an HTTP/2 connection without an open stream for
//!   `idle_timeout` gets GOAWAY and is closed.
//!
//! Detection is done here rather than by hyper-util's auto builder because that builder reads the
//! preface without any deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Method, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument as _, Span};

use super::framing_guard::{FramingGuard, HeadFlags};
use super::rewind::{Rewind, MAX_PREFIX};
use super::{tls, Handler, Phase};
use crate::inbound::{ConnInfo, Framing, Scheme};

const H2_PREFACE: &[u8; MAX_PREFIX] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a connection a deadline closed (GOAWAY sent, no stream open) may take to go away
/// before it is dropped: hyper's HTTP/2 graceful close waits for the client to acknowledge a
/// PING, which an idle or hostile client never does.
const CLOSING_GRACE: Duration = Duration::from_secs(1);

/// hyper needs its read buffer to be at least this large.
const HYPER_MIN_BUF: usize = 8192;

/// Connection-level settings, read from the configuration at start (listeners are not reloaded).
pub(super) struct ConnSettings {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// `Some` when `[server.tls]` is configured: every connection is TLS.
    tls: Option<TlsAcceptor>,
}

impl ConnSettings {
    pub(super) fn new(server: &crate::config::Server, tls: Option<TlsAcceptor>) -> Self {
        // The exact `max_header_bytes` check happens in the gateway (with a JSON 431); hyper's
        // buffer limit is looser and only stops heads that would never fit.
        let buf = (server.max_header_bytes * 2).max(HYPER_MIN_BUF);
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout)
            .max_buf_size(buf);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(server.max_concurrent_streams)
            .max_header_list_size(u32::try_from(buf).unwrap_or(u32::MAX));
        ConnSettings {
            h1,
            h2,
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            tls,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
}

/// Serves one accepted connection until it closes, the server cuts it off, or a deadline passes.
/// Until its first request is being served, a connection is idle: shutdown drops it at once.
/// `span` (the peer) is entered for the connection's own events and is the parent of its
/// requests' spans; it is not entered around each poll of an HTTP/1.1 connection (a lookup each
/// time, and nothing logs there).
pub(super) async fn serve<H: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    settings: Arc<ConnSettings>,
    handler: H,
    phase: watch::Receiver<Phase>,
    span: Span,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + settings.header_read_timeout;
    let mut stop = phase.clone();
    let stopping = stop.wait_for(|p| *p != Phase::Serving);
    match settings.tls.clone() {
        None => {
            let mut tcp = tcp;
            let detected = tokio::select! {
                detected = detect(&mut tcp, None, deadline, peer).instrument(span.clone()) => detected,
                _ = stopping => None,
            };
            let Some((proto, prefix)) = detected else {
                return;
            };
            let conn = ConnInfo::new(peer, Scheme::Http, None, span);
            let io = Rewind::new(tcp, &prefix);
            run(io, proto, conn, deadline, &settings, &handler, phase).await;
        }
        Some(acceptor) => {
            // Boxed: a TLS stream is large, and plain connections should not carry its size.
            let started = tokio::select! {
                started = Box::pin(start_tls(acceptor, tcp, peer, deadline).instrument(span.clone())) => started,
                _ = stopping => None,
            };
            let Some((tls, proto, prefix)) = started else {
                return;
            };
            let cert = tls::client_cert_thumbprint(&tls);
            let conn = ConnInfo::new(peer, Scheme::Https, cert, span);
            let io = Rewind::new(tls, &prefix);
            Box::pin(run(io, proto, conn, deadline, &settings, &handler, phase)).await;
        }
    }
}

/// The TLS handshake, then the protocol ALPN chose (or detection when the client named none).
async fn start_tls(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<(TlsStream<TcpStream>, Proto, Vec<u8>)> {
    let mut tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    let alpn = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some(Proto::Http2),
        Some(_) => Some(Proto::Http1),
        None => None,
    };
    let (proto, prefix) = detect(&mut tls, alpn, deadline, peer).await?;
    Some((tls, proto, prefix))
}

/// The protocol of a connection: ALPN's choice when there is one, else HTTP/2 exactly when the
/// client starts with the prior-knowledge preface. Reads at most the preface's 24 bytes (handed
/// back to be replayed), and gives up at `deadline` or when the client closes.
async fn detect<IO: AsyncRead + Unpin>(
    io: &mut IO,
    alpn: Option<Proto>,
    deadline: Instant,
    peer: SocketAddr,
) -> Option<(Proto, Vec<u8>)> {
    if let Some(proto) = alpn {
        return Some((proto, Vec::new()));
    }
    let mut buf = [0u8; MAX_PREFIX];
    let mut n = 0;
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf[n..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(read)) => n += read,
            Err(_) => {
                tracing::debug!(%peer, bytes = n, "no request within header_read_timeout; closing");
                return None;
            }
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some((Proto::Http1, buf[..n].to_vec()));
        }
        if n == MAX_PREFIX {
            return Some((Proto::Http2, buf.to_vec()));
        }
    }
}

/// Serves HTTP on an established (and detected) stream.
async fn run<IO, H>(
    io: IO,
    proto: Proto,
    conn: ConnInfo,
    first_deadline: Instant,
    settings: &ConnSettings,
    handler: &H,
    phase: watch::Receiver<Phase>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let activity = Arc::new(Activity::default());
    let watchdog = Watchdog {
        activity: activity.clone(),
        first_deadline,
        idle_timeout: settings.idle_timeout,
        closing_grace: CLOSING_GRACE.min(settings.header_read_timeout),
        span: conn.span.clone(),
    };
    match proto {
        Proto::Http1 => {
            let flags = Arc::new(HeadFlags::default());
            let conn = Arc::new(conn);
            let handler = handler.clone();
            let observed = flags.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                // hyper dispatches an HTTP/1 connection's requests one after another in wire
                // order, so the count of requests so far is this one's index for the observer.
                let index = activity.started.fetch_add(1, Ordering::Relaxed);
                let framing = match observed.had_cl_and_te(index) {
                    true => Framing::ContentLengthAndTransferEncoding,
                    false => Framing::Clean,
                };
                let head = req.method() == Method::HEAD;
                Answering::new(handler.handle(req, conn.clone(), framing), head, None)
            });
            let io = TokioIo::new(FramingGuard::new(io, flags));
            let connection = settings.h1.serve_connection(io, service).with_upgrades();
            watchdog
                .drive(connection, Proto::Http1, phase, |c| c.graceful_shutdown())
                .await;
        }
        Proto::Http2 => {
            let conn = Arc::new(conn);
            let handler = handler.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let stream = activity.stream();
                let head = req.method() == Method::HEAD;
                Answering::new(
                    handler.handle(req, conn.clone(), Framing::Clean),
                    head,
                    Some(stream),
                )
            });
            // The HTTP/2 library logs its first SETTINGS frame (debug) as the connection is
            // made; its later lines are in a span of its own, whoever polls the connection.
            let connection = watchdog
                .span
                .in_scope(|| settings.h2.serve_connection(TokioIo::new(io), service));
            watchdog
                .drive(connection, Proto::Http2, phase, |c| c.graceful_shutdown())
                .await;
        }
    }
}

/// Requests and open streams of one connection, for its deadlines.
#[derive(Default)]
struct Activity {
    /// Streams whose response has not been sent completely (HTTP/2 only).
    open: AtomicUsize,
    /// Requests whose head arrived, ever.
    started: AtomicU64,
    /// Notified when `open` drops to zero.
    idle: Notify,
}

impl Activity {
    fn stream(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }
}

/// One open HTTP/2 stream: from its head until its response body is done (or dropped).
struct StreamGuard(Arc<Activity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

pin_project! {
    /// A handler's answer on its way to hyper, [`answer`]ed when ready. A plain future rather
    /// than an `async` block: the block would move the handler's future (the request's largest
    /// value) into its own state, one more copy of it per request.
    struct Answering<F> {
        #[pin]
        response: F,
        head: bool,
        stream: Option<StreamGuard>,
    }
}

impl<F> Answering<F> {
    fn new(response: F, head: bool, stream: Option<StreamGuard>) -> Self {
        Answering {
            response,
            head,
            stream,
        }
    }
}

impl<F, B> Future for Answering<F>
where
    F: Future<Output = Response<B>>,
    B: Body,
{
    type Output = Result<Response<Served<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.response.poll(cx));
        Poll::Ready(Ok(answer(response, *this.head, this.stream.take())))
    }
}

/// The response as hyper sends it. An answer to `HEAD` has the status and headers a `GET` gets
/// and no body (RFC 9110 §9.3.2), whoever made it: hyper's HTTP/1 server leaves the body out by
/// itself, its HTTP/2 server would send it (and strict clients refuse that), so it is left out
/// here for both. A body of our own keeps its length in `Content-Length`; an upstream's answer to
/// `HEAD` has no body to begin with.
fn answer<B: Body>(
    response: Response<B>,
    head: bool,
    stream: Option<StreamGuard>,
) -> Response<Served<B>> {
    let (mut parts, inner) = response.into_parts();
    if head && !parts.headers.contains_key(CONTENT_LENGTH) {
        if let Some(length) = inner.size_hint().exact().filter(|n| *n > 0) {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    let body = Served {
        inner: (!head).then_some(inner),
        _stream: stream,
    };
    Response::from_parts(parts, body)
}

/// A response body; for HTTP/2 it keeps its stream counted as open until hyper is done with it.
pub(super) struct Served<B> {
    /// `None`: an answer to `HEAD`, sent without its body.
    inner: Option<B>,
    _stream: Option<StreamGuard>,
}

impl<B: Body + Unpin> Body for Served<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().inner {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

struct Watchdog {
    activity: Arc<Activity>,
    /// accept + `header_read_timeout`: the first request head must have arrived by then.
    first_deadline: Instant,
    idle_timeout: Duration,
    /// How long a connection told to close may take to do so before it is dropped.
    closing_grace: Duration,
    /// The connection's span (its peer), for the events here.
    span: Span,
}

/// What ended one round of [`Watchdog::drive`].
enum Event {
    Ended(Result<(), hyper::Error>),
    /// The server cut off its remaining connections.
    CutOff,
    /// The server is draining: no new requests.
    Drain,
    Expired(Expired),
    /// Told to close by a deadline, it did not within `closing_grace`.
    Lingered,
}

/// Why a connection should close.
enum Expired {
    /// No request head arrived in time.
    NoRequest,
    /// HTTP/2: no open stream for `idle_timeout`.
    Idle,
}

impl Watchdog {
    /// Drives `connection` until it ends: told to close (gracefully) when the server drains or a
    /// deadline passes, dropped when the server cuts off or a connection told to close lingers.
    ///
    /// The connection is polled on every wake-up; the watchers (server phase, deadlines) only
    /// when one of them woke the task ([`SideWaker`]), not on each of the connection's many
    /// wake-ups per request.
    async fn drive<C>(
        self,
        connection: C,
        proto: Proto,
        mut phase: watch::Receiver<Phase>,
        shutdown: fn(Pin<&mut C>),
    ) where
        C: Future<Output = Result<(), hyper::Error>>,
    {
        tokio::pin!(connection);
        let mut cut = phase.clone();
        let expired = self.expired(proto);
        tokio::pin!(expired);
        let side = Arc::new(SideWaker::default());
        // Told to close (GOAWAY, or no more keep-alive); then, when a deadline closed it, how long
        // it may linger. Draining is bounded by `shutdown_grace` and the cut-off instead.
        let mut closing = false;
        let mut linger_until: Option<Instant> = None;
        loop {
            let event = {
                let watch = async {
                    let linger = async {
                        match linger_until {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = cut.wait_for(|p| *p == Phase::CutOff) => Event::CutOff,
                        _ = phase.wait_for(|p| *p != Phase::Serving), if !closing => Event::Drain,
                        why = &mut expired, if !closing => Event::Expired(why),
                        _ = linger => Event::Lingered,
                    }
                };
                tokio::pin!(watch);
                side.arm();
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                        return Poll::Ready(Event::Ended(result));
                    }
                    side.poll(cx, watch.as_mut())
                })
                .await
            };
            let _entered = self.span.enter();
            match event {
                Event::Ended(result) => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                Event::CutOff => return,
                Event::Drain => {}
                Event::Expired(Expired::NoRequest) => {
                    tracing::debug!("no complete request head within header_read_timeout; closing");
                    if proto == Proto::Http1 {
                        // A half-sent head: nothing to say to it (a 408 is optional).
                        return;
                    }
                    linger_until = Some(Instant::now() + self.closing_grace);
                }
                Event::Expired(Expired::Idle) => {
                    tracing::debug!("HTTP/2 connection idle for idle_timeout; sending GOAWAY");
                    linger_until = Some(Instant::now() + self.closing_grace);
                }
                Event::Lingered => {
                    tracing::debug!("connection did not close in time; dropping it");
                    return;
                }
            }
            shutdown(connection.as_mut());
            closing = true;
        }
    }

    /// Resolves when the connection has overstayed: no first request head by `first_deadline`,
    /// or (HTTP/2) no open stream for `idle_timeout`. HTTP/1.1 after its first request is left to
    /// hyper's own head timeout.
    async fn expired(&self, proto: Proto) -> Expired {
        let activity = &self.activity;
        loop {
            let idle = activity.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let started = activity.started.load(Ordering::Acquire);
            if activity.open.load(Ordering::Acquire) > 0 {
                idle.await;
                continue;
            }
            let until = match (started, proto) {
                (0, _) => self.first_deadline,
                (_, Proto::Http2) => Instant::now() + self.idle_timeout,
                (_, Proto::Http1) => return std::future::pending::<Expired>().await,
            };
            // A stream that ends meanwhile starts the idle period anew.
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = idle => continue,
            }
            if activity.open.load(Ordering::Acquire) == 0
                && activity.started.load(Ordering::Acquire) == started
            {
                return match started {
                    0 => Expired::NoRequest,
                    _ => Expired::Idle,
                };
            }
        }
    }
}

/// Lets one task poll a second future only when that future woke it: the future is polled with
/// a waker of its own that raises a flag and then wakes the task.
#[derive(Default)]
struct SideWaker {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl SideWaker {
    /// The next [`SideWaker::poll`] polls the future (a new future must be polled once).
    fn arm(&self) {
        self.woken.store(true, Ordering::Release);
    }

    fn poll<F: Future>(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        side: Pin<&mut F>,
    ) -> Poll<F::Output> {
        self.task.register(cx.waker());
        if !self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.clone());
        side.poll(&mut Context::from_waker(&waker))
    }
}

impl Wake for SideWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;

    /// Counts the wake-ups of the task that drives the connection.
    #[derive(Default)]
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_watcher_is_polled_again_only_after_it_woke_the_task() {
        let side = Arc::new(SideWaker::default());
        let (polls, ready) = (AtomicUsize::new(0), AtomicBool::new(false));
        let stored: Mutex<Option<Waker>> = Mutex::new(None);
        let watcher = std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            if ready.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *stored.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        });
        let mut watcher = std::pin::pin!(watcher);
        let task = Arc::new(TaskWakes::default());
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);

        side.arm();
        assert!(side.poll(&mut cx, watcher.as_mut()).is_pending());
        // The connection woke the task, the watcher did not: it is left alone.
        assert!(side.poll(&mut cx, watcher.as_mut()).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1);

        ready.store(true, Ordering::Relaxed);
        stored.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            task.0.load(Ordering::Relaxed),
            1,
            "its wake-up reaches the task"
        );
        assert!(side.poll(&mut cx, watcher.as_mut()).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
