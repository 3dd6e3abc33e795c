//! Listeners and connections: HTTP/1.1 and HTTP/2 (h2c prior knowledge) on one socket, a cap on
//! concurrent connections, slow-client cut-off, and graceful shutdown.
//!
//! `run` takes the shutdown trigger as a future (the mini-redis way), so tests pass a oneshot
//! and `main` passes SIGTERM/SIGINT. Each connection task holds a `GracefulShutdown` watcher: on
//! shutdown the accept loops stop, in-flight requests finish (up to `shutdown_grace`), idle
//! HTTP/1 connections close and HTTP/2 ones get GOAWAY.

pub mod admin;
pub mod framing_guard;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::gateway::{ConnInfo, Gateway};
use framing_guard::{FramingGuard, HeadFlags};

/// hyper needs its read buffer to be at least this large.
const HYPER_MIN_BUF: usize = 8192;

/// The sockets and TLS setup, made before anything else starts so that a port in use or an
/// unusable certificate fails the start (exit 1). Read at start only; a reload keeps them.
pub struct Listeners {
    pub main: TcpListener,
    pub admin: Option<TcpListener>,
    pub tls: Option<TlsAcceptor>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, String> {
        let tls = config.server.tls.as_ref().map(tls::acceptor).transpose()?;
        let main = config.server.listen;
        let main_listener = TcpListener::bind(main)
            .await
            .map_err(|e| format!("cannot listen on {main}: {e}"))?;
        let admin = match config.admin.as_ref().map(|a| a.listen) {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            main: main_listener,
            admin,
            tls,
        })
    }

    pub fn main_addr(&self) -> Option<SocketAddr> {
        self.main.local_addr().ok()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// The current configuration generation; a reload swaps it, in-flight requests keep theirs.
pub type SharedGateway = Arc<ArcSwap<Gateway>>;

/// Serves until `shutdown` resolves, then drains (up to `shutdown_grace`) and returns.
pub async fn run(listeners: Listeners, gateway: SharedGateway, shutdown: impl Future<Output = ()>) {
    let settings = {
        let g = gateway.load();
        ConnSettings::new(&g.config.server, listeners.tls)
    };
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let main = tokio::spawn(accept_loop(
        listeners.main,
        settings.clone(),
        graceful.clone(),
        stop_rx.clone(),
        gateway.clone(),
    ));
    let admin = listeners.admin.map(|listener| {
        tokio::spawn(admin::serve(
            listener,
            gateway.clone(),
            graceful.clone(),
            stop_rx.clone(),
        ))
    });
    shutdown.await;
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    let _ = stop_tx.send(true);
    let _ = main.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // Both accept loops have returned, so this is the last handle.
    let drained = async move {
        match Arc::try_unwrap(graceful) {
            Ok(graceful) => graceful.shutdown().await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = drained => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "shutdown grace elapsed; cutting off remaining requests");
        }
    }
}

/// Connection-level settings, read from the configuration at start (listeners are not reloaded).
#[derive(Clone)]
struct ConnSettings {
    builder: Arc<auto::Builder<TokioExecutor>>,
    header_read_timeout: Duration,
    limit: Arc<Semaphore>,
    shutdown_grace: Duration,
    /// `Some` when `[server.tls]` is configured: every connection is TLS.
    tls: Option<TlsAcceptor>,
}

impl ConnSettings {
    fn new(server: &crate::config::Server, tls: Option<TlsAcceptor>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The exact `max_header_bytes` check happens in the gateway (with a JSON 431); hyper's
        // buffer limit is looser and only stops heads that would never fit.
        let buf = (server.max_header_bytes * 2).max(HYPER_MIN_BUF);
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout)
            .max_buf_size(buf);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(buf).unwrap_or(u32::MAX));
        ConnSettings {
            builder: Arc::new(builder),
            header_read_timeout: server.header_read_timeout,
            limit: Arc::new(Semaphore::new(server.max_connections)),
            shutdown_grace: server.shutdown_grace,
            tls,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    settings: ConnSettings,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    gateway: SharedGateway,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = settings.limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "max_connections reached; closing new connection");
            drop(tcp);
            continue;
        };
        let settings = settings.clone();
        let gateway = gateway.clone();
        let watcher = graceful.watcher();
        let stop = stop.clone();
        tokio::spawn(async move {
            serve_tcp(tcp, peer, settings, watcher, gateway, stop).await;
            drop(permit);
        });
    }
}

async fn serve_tcp(
    tcp: TcpStream,
    peer: SocketAddr,
    settings: ConnSettings,
    graceful: hyper_util::server::graceful::Watcher,
    gateway: SharedGateway,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = settings.header_read_timeout;
    // Until a first request starts, a connection is idle: shutdown closes it at once instead of
    // waiting for its deadline.
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    if let Some(acceptor) = settings.tls.clone() {
        // Boxed: a TLS stream is large, and plain connections should not carry its size.
        let tls = serve_tls(acceptor, tcp, peer, stopping, &settings, graceful, gateway);
        Box::pin(tls).await;
        return;
    }
    // hyper-util's auto builder sniffs the protocol without a deadline, so a client that sends
    // nothing would hold the connection forever: wait for a first byte ourselves.
    let mut probe = [0u8; 1];
    let first_byte = tokio::time::timeout(deadline, tcp.peek(&mut probe));
    tokio::select! {
        _ = &mut stopping => return,
        result = first_byte => match result {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                tracing::debug!(%peer, "client sent nothing; closing");
                return;
            }
        },
    }
    serve_io(
        tcp,
        ConnInfo::new(peer, "http", None),
        &settings,
        graceful,
        gateway,
    )
    .await;
}

/// The TLS handshake (with the same deadline as a request head), then HTTP over it.
async fn serve_tls(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    stopping: Pin<&mut impl Future<Output = ()>>,
    settings: &ConnSettings,
    graceful: hyper_util::server::graceful::Watcher,
    gateway: SharedGateway,
) {
    let handshake = tokio::time::timeout(settings.header_read_timeout, acceptor.accept(tcp));
    let tls = tokio::select! {
        _ = stopping => return,
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let conn =
        ConnInfo::new(peer, "https", None).with_client_cert(tls::client_cert_thumbprint(&tls));
    serve_io(tls, conn, settings, graceful, gateway).await;
}

/// Serves HTTP/1.1 or HTTP/2 on an established stream, behind the framing guard.
async fn serve_io<IO>(
    io: IO,
    conn: ConnInfo,
    settings: &ConnSettings,
    graceful: hyper_util::server::graceful::Watcher,
    gateway: SharedGateway,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let flags = Arc::new(HeadFlags::default());
    let conn = Arc::new(conn.with_head_flags(flags.clone()));
    let io = TokioIo::new(FramingGuard::new(io, flags));
    let service = service_fn(move |req: Request<Incoming>| {
        let gateway = gateway.load_full();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(gateway.handle(&conn, req).await) }
    });
    let connection = settings
        .builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    if let Err(error) = graceful.watch(connection).await {
        tracing::debug!(%peer, error = %error, "connection ended with an error");
    }
}
