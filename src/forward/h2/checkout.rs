//! Which connection a request's stream goes on, and when to open another one.
//!
//! Each connection counts its own open streams (`in_flight`) against the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS (learnt by [`super::frames`]). A request takes a stream on the
//! oldest connection with room, so load gathers on few connections and the others go idle and
//! are reaped. When every connection is full it dials one more, if a permit is left (one per
//! socket, `max_connections` per origin), and unless the dials already under way will have room
//! for everybody waiting: a dial is expected to bring as many streams as the last connection's
//! server allowed, and before any limit is known only one dial runs at a time. So a burst of N
//! requests against a server allowing L streams opens ceil(N/L) connections, not N. Otherwise
//! the request waits for a stream, a connection or a permit until its deadline.
//!
//! Locking: one std mutex over the connection list and the dial count, never held across an
//! `.await`; a request takes it once when a stream is free. Releasing a stream is lock-free (an
//! atomic decrement, and a wake-up only when someone waits).
//!
//! Leaves to others: dialing ([`super::dial`]), sending and retrying (`h2.rs`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::body::ReqBody;
use super::frames::Peer;
use super::H2Error;

/// Idle time is counted in ticks of the pool's reaper task, not read from the clock per stream.
pub(super) const IDLE_TICK: Duration = Duration::from_secs(30);
/// A connection without a stream for this many ticks (60-90 s) is closed.
const IDLE_TICKS: u64 = 3;

/// Wakes requests waiting for a stream; shared with every connection and socket of the pool.
#[derive(Default)]
pub(super) struct Signal {
    notify: Notify,
    /// Requests in the waiting loop. Read before waking, so a stream that ends while nobody
    /// waits costs no more than an atomic load.
    waiting: AtomicUsize,
    /// Reaper ticks so far.
    ticks: AtomicU64,
}

impl Signal {
    pub(super) fn wake(&self) {
        // SeqCst pairs with `Waiting::enter`: either the waiter's re-check sees the change that
        // led here, or this load sees the waiter.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// One HTTP/2 connection, usable while its server has not said GOAWAY and its socket lives.
pub(super) struct Conn {
    pub(super) sender: SendRequest<ReqBody>,
    peer: Arc<Peer>,
    /// Streams handed out and not yet finished both ways.
    in_flight: AtomicUsize,
    /// The reaper tick at which `in_flight` last dropped to zero.
    idle_since: AtomicU64,
    signal: Arc<Signal>,
}

impl Conn {
    pub(super) fn new(sender: SendRequest<ReqBody>, peer: Arc<Peer>, signal: Arc<Signal>) -> Self {
        let now = signal.ticks.load(Ordering::Relaxed);
        Conn {
            sender,
            peer,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            signal,
        }
    }

    fn usable(&self) -> bool {
        !self.peer.going_away() && !self.peer.closed() && !self.sender.is_closed()
    }

    /// Takes a stream if the server's limit allows one more. Called under the pool's lock, the
    /// only place `in_flight` grows, so two requests cannot both take the last stream.
    fn take_stream(self: &Arc<Self>) -> Option<StreamSlot> {
        if self.in_flight.load(Ordering::SeqCst) >= self.peer.limit() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(StreamSlot {
            conn: Arc::clone(self),
        })
    }
}

/// One stream of a connection, given back when dropped.
pub(super) struct StreamSlot {
    conn: Arc<Conn>,
}

impl StreamSlot {
    pub(super) fn conn(&self) -> &Conn {
        &self.conn
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let conn = &self.conn;
        if conn.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            let now = conn.signal.ticks.load(Ordering::Relaxed);
            conn.idle_since.store(now, Ordering::Relaxed);
        }
        conn.signal.wake();
    }
}

/// The connections of one origin.
pub(super) struct Slots {
    state: Mutex<State>,
    /// One per socket, dialing and draining ones included: `max_connections` is a hard bound.
    permits: Arc<Semaphore>,
    max_connections: usize,
    pub(super) signal: Arc<Signal>,
}

struct State {
    /// Oldest first: requests fill the old ones, so the young ones go idle after a burst.
    conns: Vec<Arc<Conn>>,
    /// Dials under way.
    dialing: usize,
    /// The stream limit of the newest connection: what the next dial is expected to bring.
    last_limit: Option<usize>,
}

/// What a request got: a stream, or the duty (and the permit) to open a connection.
pub(super) enum Lease<'a> {
    Stream(StreamSlot),
    Dial(DialTicket<'a>),
}

impl Slots {
    pub(super) fn new(max_connections: usize) -> Self {
        Slots {
            state: Mutex::new(State {
                conns: Vec::new(),
                dialing: 0,
                last_limit: None,
            }),
            permits: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            signal: Arc::new(Signal::default()),
        }
    }

    /// Sockets open or being opened.
    pub(super) fn sockets(&self) -> usize {
        self.max_connections
            .saturating_sub(self.permits.available_permits())
    }

    /// A stream, or the duty to dial; waits for one of them until `deadline`.
    pub(super) async fn acquire(&self, deadline: Instant) -> Result<Lease<'_>, H2Error> {
        if let Some(lease) = self.try_acquire(None) {
            return Ok(lease);
        }
        let mut waiting = Waiting::enter(&self.signal);
        let timeout = tokio::time::sleep_until(deadline);
        tokio::pin!(timeout);
        loop {
            // Registered before the re-check, so a wake-up in between is not lost.
            let notified = self.signal.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(lease) = self.try_acquire(Some(&mut waiting)) {
                return Ok(lease);
            }
            tokio::select! {
                () = &mut notified => {}
                () = &mut timeout => return Err(self.timed_out()),
            }
        }
    }

    /// `waiter` is this request's place among the waiters, if it has one: it is given up under
    /// the lock with the lease, so nobody counts this request both as waiting and as served.
    fn try_acquire(&self, waiter: Option<&mut Waiting<'_>>) -> Option<Lease<'_>> {
        let mut state = self.lock();
        state.conns.retain(|conn| conn.usable());
        if let Some(slot) = state.conns.iter().find_map(Conn::take_stream) {
            if let Some(waiter) = waiter {
                waiter.leave();
            }
            return Some(Lease::Stream(slot));
        }
        // Everybody who needs a stream from a dial under way: the dialers themselves, the
        // waiters, and this request if it is not counted among the waiters yet.
        let needy = state.dialing
            + self.signal.waiting.load(Ordering::SeqCst)
            + usize::from(waiter.is_none());
        let covered = match state.last_limit {
            Some(limit) => state.dialing.saturating_mul(limit) >= needy,
            None => state.dialing > 0,
        };
        if covered {
            return None;
        }
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        state.dialing += 1;
        if let Some(waiter) = waiter {
            waiter.leave();
        }
        Some(Lease::Dial(DialTicket {
            slots: self,
            permit: Some(permit),
            done: false,
        }))
    }

    fn timed_out(&self) -> H2Error {
        if self.permits.available_permits() == 0 {
            H2Error::Saturated
        } else {
            // A dial this request counted on did not finish in time.
            H2Error::Connect("no connection could be opened within connect_timeout".into())
        }
    }

    /// Closes connections that have had no stream for 60-90 s.
    pub(super) fn tick(&self) {
        let now = self.signal.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = self.lock();
        state.conns.retain(|conn| {
            conn.in_flight.load(Ordering::SeqCst) > 0
                || now.saturating_sub(conn.idle_since.load(Ordering::Relaxed)) < IDLE_TICKS
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole, even one that panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The duty to open a connection, with the permit the socket will hold. Dropped without
/// [`DialTicket::opened`] (the dial failed or was cancelled), it gives both back.
pub(super) struct DialTicket<'a> {
    slots: &'a Slots,
    permit: Option<OwnedSemaphorePermit>,
    done: bool,
}

impl DialTicket<'_> {
    /// The permit, for the socket to hold for its whole life.
    pub(super) fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        self.permit.take()
    }

    /// Adds the new connection to the pool, with one stream taken for the dialing request.
    pub(super) fn opened(mut self, conn: Conn) -> Option<StreamSlot> {
        let conn = Arc::new(conn);
        let limit = conn.peer.limit();
        let slot = {
            let mut state = self.slots.lock();
            state.dialing -= 1;
            self.done = true;
            state.last_limit = Some(limit);
            let slot = conn.take_stream();
            state.conns.push(conn);
            slot
        };
        self.slots.signal.wake();
        slot
    }
}

impl Drop for DialTicket<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        drop(self.permit.take());
        self.slots.lock().dialing -= 1;
        // Someone else may dial now, or learn that no connection is coming.
        self.slots.signal.wake();
    }
}

/// Counts a request among the waiters while it is in the waiting loop.
struct Waiting<'a> {
    signal: &'a Signal,
    left: bool,
}

impl<'a> Waiting<'a> {
    fn enter(signal: &'a Signal) -> Self {
        signal.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting {
            signal,
            left: false,
        }
    }

    fn leave(&mut self) {
        if !std::mem::replace(&mut self.left, true) {
            self.signal.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}
