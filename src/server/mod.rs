//! Listeners and connections: HTTP/1.1 and HTTP/2 (h2c prior knowledge, TLS ALPN) on one socket,
//! a cap on concurrent connections, deadlines for slow and idle clients (`conn.rs`), and graceful
//! shutdown.
//!
//! `run` takes the shutdown trigger as a future (the mini-redis way), so tests pass a oneshot
//! and `main` passes SIGTERM/SIGINT. Shutdown has two steps, broadcast to every connection on a
//! `watch` channel: `Draining` (the accept loops stop; idle connections close, HTTP/2 ones get
//! GOAWAY; in-flight requests finish) and, after `shutdown_grace`, `CutOff` (whatever is left is
//! dropped). Each connection task holds a clone of an mpsc sender, so "every connection is done"
//! is the receiver seeing all senders dropped.
//!
//! The main and the admin listener share the accept loop (`accept_loop`): connection cap,
//! accept-error backoff and logging; they differ in the [`Handler`] that answers requests.

pub mod admin;
mod conn;
pub mod framing_guard;
mod rewind;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::gateway::{Gateway, ProxyBody};
use crate::inbound::{ConnInfo, Framing};
use crate::telemetry::Metrics;
use conn::ConnSettings;

/// Connections the admin listener serves at once (probes and scrapes need few).
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// How long an accept loop pauses after a failed `accept` (EMFILE and friends) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Where a server is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// No new connections; idle ones close, in-flight requests finish.
    Draining,
    /// `shutdown_grace` is over: every remaining connection is dropped.
    CutOff,
}

/// What answers the requests of a listener.
pub trait Handler: Clone + Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static;

    /// The answer's future does not borrow the handler (`use<Self>`): the connection hands it to
    /// hyper as it is, without an async wrapper that would hold (and copy) it once more.
    fn handle(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
        framing: Framing,
    ) -> impl Future<Output = Response<Self::Body>> + Send + use<Self>;
}

/// The main listener: every request goes through the current gateway generation.
#[derive(Clone)]
struct Proxy(SharedGateway);

impl Handler for Proxy {
    type Body = ProxyBody;

    // Inlined so the request's future is built where hyper keeps it, not built here and then
    // copied whole (it is the request's largest value).
    #[inline(always)]
    fn handle(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
        framing: Framing,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + use<> {
        // A reload swaps the generation; this request keeps the one it started with.
        self.0.load_full().handle(req, conn, framing)
    }
}

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
    let (settings, admin_settings, grace, max_connections, metrics) = {
        let g = gateway.load();
        let server = &g.config.server;
        (
            Arc::new(ConnSettings::new(server, listeners.tls)),
            // `[server.tls]` is for clients; probes and scrapes talk plain HTTP to the admin port.
            Arc::new(ConnSettings::new(server, None)),
            server.shutdown_grace,
            server.max_connections,
            g.metrics().clone(),
        )
    };
    let (phase_tx, phase) = watch::channel(Phase::Serving);
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let main = tokio::spawn(accept_loop(
        "main",
        listeners.main,
        Limits::new(max_connections, Some(metrics)),
        settings.clone(),
        Proxy(gateway.clone()),
        phase.clone(),
        alive.clone(),
    ));
    let admin = listeners.admin.map(|listener| {
        tokio::spawn(accept_loop(
            "admin",
            listener,
            Limits::new(ADMIN_MAX_CONNECTIONS, None),
            admin_settings,
            admin::Admin(gateway.clone()),
            phase.clone(),
            alive.clone(),
        ))
    });
    drop(alive);
    shutdown.await;
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    let _ = phase_tx.send(Phase::Draining);
    let _ = main.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    tokio::select! {
        _ = all_done.recv() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown grace elapsed; cutting off remaining requests");
            let _ = phase_tx.send(Phase::CutOff);
            // Dropped connections end their tasks promptly.
            let _ = tokio::time::timeout(Duration::from_secs(1), all_done.recv()).await;
        }
    }
}

/// The connection cap of one listener, and whether its connections count in
/// `tokengate_open_connections` (the main listener's do; the admin's do not).
struct Limits {
    connections: Arc<Semaphore>,
    metrics: Option<Arc<Metrics>>,
}

impl Limits {
    fn new(max: usize, metrics: Option<Arc<Metrics>>) -> Self {
        Limits {
            connections: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            metrics,
        }
    }
}

/// Accepts connections until the server drains. A connection over the cap is closed at once,
/// never queued (SPEC §3 `max_connections`).
async fn accept_loop<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    settings: Arc<ConnSettings>,
    handler: H,
    mut phase: watch::Receiver<Phase>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = phase.wait_for(|p| *p != Phase::Serving) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(listener = name, %error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
            tracing::warn!(listener = name, %peer, "max_connections reached; closing new connection");
            drop(tcp);
            continue;
        };
        let (settings, handler, phase, alive) = (
            settings.clone(),
            handler.clone(),
            phase.clone(),
            alive.clone(),
        );
        // Every log event of the connection, its requests' included, names the peer.
        let span = tracing::info_span!("conn", listener = name, %peer);
        let open = limits.metrics.as_ref().map(|m| m.connection_opened());
        tokio::spawn(async move {
            conn::serve(tcp, peer, settings, handler, phase, span).await;
            drop((permit, open, alive));
        });
    }
}

/// Raises the soft open-file limit to the hard one (as nginx's `worker_rlimit_nofile` and Envoy's
/// start scripts do), so `max_connections` client sockets plus the upstream pools fit, and logs
/// both numbers. A failure is logged and start goes on with the limit as it is.
pub fn raise_open_file_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE);
    match (before, rlimit::increase_nofile_limit(u64::MAX)) {
        (Ok((soft, hard)), Ok(raised)) => {
            tracing::info!(soft = raised, hard, was = soft, "open-file limit");
        }
        (_, Err(error)) | (Err(error), _) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit");
        }
    }
}
