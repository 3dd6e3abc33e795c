//! HTTP/2 to one upstream origin (`protocol = "h2"`, gRPC): few connections, many streams each.
//!
//! A request takes a stream on a shared connection; connections are opened as the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS requires, up to `max_connections` sockets per origin, and a
//! request that finds no stream free within `connect_timeout` fails with
//! [`H2Error::Saturated`] (503). Bodies stream both ways untouched (flow control bounds memory)
//! and trailers pass both ways, so gRPC unary and streaming calls work.
//!
//! How the pieces fit, and why:
//! - **The server's stream limit** is read off the wire (`frames`): an IO wrapper under hyper
//!   scans the frame headers the server sends for SETTINGS and GOAWAY. hyper 1.12 does have
//!   `Connection::current_max_send_streams()`, but that future lives in its own task, its value
//!   before the first SETTINGS is our own guess (indistinguishable from the server's), and GOAWAY
//!   is not exposed at all; the wrapper answers all three, independently of h2's internals.
//!   Each connection counts the streams it handed out against that limit (`checkout`); h2
//!   still enforces the limit itself, the count only decides where a stream goes and when to dial.
//! - **A cold burst is never refused** (`dial`): a connection is handed out only after the
//!   server's first SETTINGS, and `initial_max_send_streams(1)` covers the instant between our
//!   reading them and h2 applying them.
//! - **A request the server did not process is sent again** (up to 3 tries): one that a
//!   connection closed before taking (hyper hands it back whole), and one without a body whose
//!   stream was refused (REFUSED_STREAM) or lay above the last stream id of a GOAWAY (RFC 9113
//!   §8.7). A request with a body is not: hyper reads the body as soon as the stream opens,
//!   bodies are never buffered (`body`), and hyper never hands back what reached h2.
//! - **Dead connections are replaced**: PING keep-alive (also while idle) ends a connection
//!   whose server stopped answering; a GOAWAY takes the connection out of rotation while its
//!   streams finish; connections idle for 60-90 s are closed.
//! - **`max_connections` is a hard bound on sockets**: each socket holds a semaphore permit for
//!   its whole life, from dial to close, draining ones included.
//! - **Headers** (`head`): no HTTP/1-only header goes upstream; `Host` becomes `:authority`.
//!
//! A note for operators: gRPC-Go servers by default answer pings more frequent than every 5
//! minutes on a connection without streams with GOAWAY `too_many_pings`. That is handled (the
//! connection is replaced), but a longer `keep_alive_interval` avoids the churn.
//!
//! Leaves to others: the choice of protocol per route, timeouts until response headers
//! (`upstream.timeout`), mapping [`H2Error`] to a status, and building the TLS client
//! configuration (`ca_file` or system roots), which this module only narrows to ALPN `h2`.

use std::sync::{Arc, Once, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::time::Instant;

use crate::config::UpstreamTarget;

mod body;
mod checkout;
mod dial;
mod frames;
mod head;

pub use body::H2Body;

use body::{BoxBody, Exchange};
use checkout::{Lease, Slots, StreamSlot, IDLE_TICK};
use dial::Dialer;
use head::Head;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Tries per request when the upstream did not process the stream (refused it, or went away).
const MAX_ATTEMPTS: u32 = 3;

/// Connection limits of one origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    /// Sockets to the origin, those being opened or draining included (`[upstream].max_connections`).
    pub max_connections: usize,
    /// TCP connect, TLS, and the server's first SETTINGS, together; also how long a request may
    /// wait for a free stream (`[upstream].connect_timeout`).
    pub connect_timeout: Duration,
    /// A PING every this often, also on a connection without streams.
    pub keep_alive_interval: Duration,
    /// A connection whose PING is not answered within this is closed.
    pub keep_alive_timeout: Duration,
}

impl H2Limits {
    /// The configured limits, with keep-alive every 20 s and a dead peer noticed 10 s after.
    pub fn new(max_connections: usize, connect_timeout: Duration) -> Self {
        H2Limits {
            max_connections,
            connect_timeout,
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a request got no response headers from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    /// Every stream of every connection the limit allows stayed busy for `connect_timeout`: 503.
    #[error("upstream connection limit reached: no HTTP/2 stream free within connect_timeout")]
    Saturated,
    /// The connection could not be opened (refused, timed out, TLS failed, no SETTINGS).
    #[error("opening an HTTP/2 connection to the upstream failed")]
    Connect(#[source] BoxError),
    /// An `https` upstream did not negotiate HTTP/2 (ALPN `h2`).
    #[error(
        "the upstream did not agree to HTTP/2 over TLS (ALPN h2); \
         if it only speaks HTTP/1.1, set its protocol to \"http1\""
    )]
    NoH2,
    /// The stream failed before response headers (reset, connection lost).
    #[error("the upstream HTTP/2 request failed")]
    Request(#[source] hyper::Error),
}

/// The HTTP/2 connections to one upstream origin.
pub struct H2Pool {
    scheme: Scheme,
    /// `:authority` of a request without `Host`.
    authority: Authority,
    origin: String,
    max_connections: usize,
    connect_timeout: Duration,
    dialer: Dialer,
    slots: Slots,
    reaper: Once,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool")
            .field("origin", &self.origin)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl H2Pool {
    /// A pool for `target`; `tls` is required for an `https` target (its ALPN list is replaced
    /// by `h2` alone) and ignored for `http` (h2c, prior knowledge). Opens nothing yet.
    pub fn new(
        target: &UpstreamTarget,
        tls: Option<Arc<rustls::ClientConfig>>,
        limits: H2Limits,
    ) -> Result<Self, String> {
        let https = target.scheme == Scheme::HTTPS;
        let tls = match (https, tls) {
            (true, None) => {
                return Err(format!(
                    "upstream {}: https needs a TLS client configuration",
                    target.origin
                ))
            }
            (true, tls) => tls,
            (false, _) => None,
        };
        if limits.max_connections == 0 {
            return Err(format!(
                "upstream {}: max_connections must be at least 1",
                target.origin
            ));
        }
        let max_connections = limits
            .max_connections
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let port = target
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let dialer = Dialer::new(target.authority.host(), port, tls, &limits)
            .map_err(|e| format!("upstream {}: {e}", target.origin))?;
        Ok(H2Pool {
            scheme: target.scheme.clone(),
            authority: target.authority.clone(),
            origin: target.origin.clone(),
            max_connections,
            connect_timeout: limits.connect_timeout,
            dialer,
            slots: Slots::new(max_connections),
            reaper: Once::new(),
        })
    }

    /// `scheme://authority` of the upstream.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Sockets open or being opened to the upstream, draining ones included.
    pub fn open_connections(&self) -> usize {
        self.slots.sockets()
    }

    /// Sends one request (origin-form or absolute URI; the scheme is the upstream's and the
    /// authority its `Host`, else the URI's, else the upstream's) and waits for response headers.
    /// The response body holds its stream until it ends or is dropped.
    pub async fn send<B>(self: &Arc<Self>, req: Request<B>) -> Result<Response<H2Body>, H2Error>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut head, body) = Head::from_request(req, &self.scheme, &self.authority);
        let mut body: BoxBody = body.map_err(Into::into).boxed_unsync();
        let deadline = Instant::now() + self.connect_timeout;
        let mut attempt = 1;
        loop {
            let slot = self.stream(deadline).await?;
            let mut sender = slot.conn().sender.clone();
            // hyper reads a body as soon as its stream opens, so only a request without one can
            // still be unsent when the server refuses the stream; only its head is worth a copy.
            // (A request hyper hands back whole brings its own head.)
            let copy = (body.is_end_stream() && attempt < MAX_ATTEMPTS).then(|| head.clone());
            let (exchange, req_body) = Exchange::new(slot, body);
            let sent = sender.try_send_request(head.into_request(req_body)).await;
            let mut error = match sent {
                Ok(response) => return Ok(response.map(|inner| H2Body::new(inner, exchange))),
                Err(error) => error,
            };
            let again = match error.take_message() {
                // The connection closed before taking it.
                Some(request) => Some(Head::from_returned(request)),
                None => copy.filter(|_| unprocessed(error.error())),
            };
            let error = error.into_error();
            let unsent = exchange.take_unsent();
            match (again, unsent) {
                (Some(again), Some(unsent)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(
                        upstream = %self.origin, %error, attempt,
                        "the upstream did not process the request; sending it again"
                    );
                    (head, body) = (again, unsent);
                    attempt += 1;
                }
                _ => return Err(H2Error::Request(error)),
            }
        }
    }

    /// A stream on a connection with room, opening that connection if it falls to us.
    async fn stream(self: &Arc<Self>, deadline: Instant) -> Result<StreamSlot, H2Error> {
        loop {
            let mut ticket = match self.slots.acquire(deadline).await? {
                Lease::Stream(slot) => return Ok(slot),
                Lease::Dial(ticket) => ticket,
            };
            self.start_reaper();
            let Some(permit) = ticket.take_permit() else {
                continue;
            };
            // A failed dial drops the ticket, which hands the permit back and wakes the waiters.
            let conn = self.dialer.dial(permit, &self.slots.signal).await?;
            tracing::debug!(upstream = %self.origin, "HTTP/2 connection opened");
            if let Some(slot) = ticket.opened(conn) {
                return Ok(slot);
            }
            // A server that allows no stream at all: wait for a better connection like anyone.
        }
    }

    fn start_reaper(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            tokio::spawn(reap(Arc::downgrade(self)));
        });
    }
}

/// Counts idle time and closes idle connections, until the pool is gone.
async fn reap(pool: Weak<H2Pool>) {
    let mut tick = tokio::time::interval_at(Instant::now() + IDLE_TICK, IDLE_TICK);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.slots.tick();
    }
}

/// Whether the server said it did not process the stream (RFC 9113 §8.7), so that sending the
/// request again cannot repeat it.
fn unprocessed(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            let refused = h2.reason() == Some(h2::Reason::REFUSED_STREAM) && h2.is_reset();
            return h2.is_remote() && (refused || h2.is_go_away());
        }
        source = cause.source();
    }
    false
}
