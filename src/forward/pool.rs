//! Idle HTTP/1.1 connections to one upstream origin, reused newest first.
//!
//! Why not hyper-util's legacy `Client`: for every request it clones itself and the URI, hashes
//! its pool key twice under a lock, races the checkout against a lazy connect, boxes the response
//! future, and spawns a task that waits for the connection to become idle again. On the benchmark
//! that is about 4 µs per request, a fifth of a whole proxied request. Here a request takes a
//! ready connection (or dials one), sends, and the response body puts the connection back when
//! it ends; a body that is dropped early or fails takes its connection with it.
//!
//! Kept from the legacy client: idle connections expire (after 60-90 s); a request that
//! an idle connection could not even start to send (the upstream had just closed it) is retried
//! on another connection; `Host` is set from the upstream when the request has none.
//!
//! Bounded: every connection, busy or idle, holds one of `[upstream].max_connections` permits for
//! its whole life (the permit lives in the task that drives it). A request that finds no idle
//! connection and no free permit waits for either, up to `connect_timeout`, and then fails with
//! [`SendError::Saturated`] (503): a slow upstream cannot make the proxy exhaust its own file
//! descriptors and lock every client out.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::Uri;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use super::request_body::RequestBody;
use crate::config::UpstreamTarget;

/// Idle time is counted in ticks of the pool's reaper task, not read from the clock per request.
const IDLE_TICK: Duration = Duration::from_secs(30);
/// A connection idle for this many ticks (60-90 s) is closed. Shorter than the keep-alive
/// timeout of the upstream would be ideal, but a connection it closed is never handed out anyway.
const IDLE_TICKS: u64 = 3;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// Every connection is busy and `max_connections` is reached: nothing was sent.
    Saturated,
    /// Connecting or the exchange failed.
    Failed(BoxError),
}

impl<E: Into<BoxError>> From<E> for SendError {
    fn from(error: E) -> Self {
        SendError::Failed(error.into())
    }
}

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector dials.
    origin: Uri,
    /// The `Host` of a request that arrives without one (HTTP/1.0).
    host: HeaderValue,
    /// Oldest at the front, newest at the back.
    idle: Mutex<VecDeque<Idle>>,
    /// Reaper ticks so far.
    ticks: AtomicU64,
    reaper: Once,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    /// Woken when a connection goes back to `idle`, for requests waiting for one.
    returned: Notify,
    /// How long a request waits for a connection when all are busy.
    wait: Duration,
}

/// A connection found for a request: a reused one (a failed first write may be retried) or a
/// fresh one.
enum Slot {
    Idle(SendRequest<RequestBody>),
    New(SendRequest<RequestBody>),
}

struct Idle {
    sender: SendRequest<RequestBody>,
    /// The tick at which it became idle.
    since: u64,
}

impl Idle {
    fn expired(&self, now: u64) -> bool {
        now.saturating_sub(self.since) >= IDLE_TICKS
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(
        target: &UpstreamTarget,
        connector: HttpsConnector<HttpConnector>,
        max_connections: usize,
        wait: Duration,
    ) -> Result<Self, String> {
        let origin = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("upstream {}: {e}", target.origin))?;
        // As hyper-util's client does: the port only when it is not the scheme's default.
        let default_port = if target.scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let host = match target.authority.port_u16() {
            Some(port) if port != default_port => target.authority.as_str().to_owned(),
            _ => target.authority.host().to_owned(),
        };
        let host = HeaderValue::try_from(host).map_err(|e| format!("upstream host: {e}"))?;
        Ok(Pool {
            connector,
            origin,
            host,
            idle: Mutex::new(VecDeque::new()),
            ticks: AtomicU64::new(0),
            reaper: Once::new(),
            slots: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            returned: Notify::new(),
            wait,
        })
    }

    /// Sends `req` (origin-form URI) on an idle connection or a new one, until response headers.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.host.clone());
        }
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                // Boxed: the rare path should not grow every request's future.
                None => match Box::pin(self.connection()).await? {
                    Slot::Idle(sender) => (sender, true),
                    Slot::New(sender) => (sender, false),
                },
            };
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.body_returns(sender, response)),
                Err(mut error) => match error.take_message() {
                    // Not a byte was written: the idle connection had been closed. Each retry
                    // uses up one idle connection, and a fresh one is never retried.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Failed(error.into_error().into())),
                },
            }
        }
    }

    /// A connection for a request that found none idle: a new one while a permit is free, else
    /// the first one handed back or the first permit released, until `wait` runs out.
    async fn connection(self: &Arc<Self>) -> Result<Slot, SendError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // Registered before looking, so a connection returned in between is not missed.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(sender) = self.checkout() {
                return Ok(Slot::Idle(sender));
            }
            let permit = match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => tokio::select! {
                    _ = returned => continue,
                    permit = self.slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return Err(SendError::Saturated),
                    },
                    _ = tokio::time::sleep_until(deadline) => return Err(SendError::Saturated),
                },
            };
            return Ok(Slot::New(self.connect(permit).await?));
        }
    }

    /// The newest idle connection that is still open and not expired.
    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let now = self.ticks.load(Ordering::Relaxed);
        let mut idle = self.lock();
        while let Some(entry) = idle.pop_back() {
            if entry.sender.is_ready() && !entry.expired(now) {
                return Some(entry.sender);
            }
        }
        None
    }

    async fn connect(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
    ) -> Result<SendRequest<RequestBody>, BoxError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(self.origin.clone()).await?;
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended");
            }
            // The socket is closed: its slot is free for another connection.
            drop(permit);
        });
        self.reaper.call_once(|| {
            tokio::spawn(reap(Arc::downgrade(self)));
        });
        Ok(sender)
    }

    /// The response, whose body puts `sender` back into the pool once it has been read to the
    /// end. A protocol switch (101) hands the connection to the upgrade instead.
    fn body_returns(
        self: &Arc<Self>,
        sender: SendRequest<RequestBody>,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        let reuse = (response.status() != StatusCode::SWITCHING_PROTOCOLS)
            .then(|| (sender, Arc::clone(self)));
        response.map(|inner| {
            let mut body = PooledBody { inner, reuse };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }

    fn put(self: &Arc<Self>, mut sender: SendRequest<RequestBody>) {
        if sender.is_ready() {
            let now = self.ticks.load(Ordering::Relaxed);
            let mut idle = self.lock();
            prune(&mut idle, now);
            idle.push_back(Idle { sender, since: now });
            drop(idle);
            self.returned.notify_one();
        } else if !sender.is_closed() {
            // The response ended before the request body did (an upstream that answers early):
            // the connection is reusable once the rest of the request has been sent.
            let pool = Arc::clone(self);
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(sender);
                }
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        // A panic while holding the lock cannot leave the queue half-updated.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Drops expired or closed connections from the old end.
fn prune(idle: &mut VecDeque<Idle>, now: u64) {
    while idle
        .front()
        .is_some_and(|entry| entry.sender.is_closed() || entry.expired(now))
    {
        idle.pop_front();
    }
}

/// Counts idle time, and closes expired connections of a pool nobody sends through, until the
/// pool is gone.
async fn reap(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + IDLE_TICK, IDLE_TICK);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = pool.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        prune(&mut pool.lock(), now);
    }
}

/// An upstream response body, streamed; gives its connection back to the pool at its end.
pub struct PooledBody {
    inner: Incoming,
    reuse: Option<(SendRequest<RequestBody>, Arc<Pool>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.reuse.take() {
            pool.put(sender);
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            // The connection is in an unknown state: it goes when `reuse` is dropped.
            Some(Err(_)) => this.reuse = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
