//! The client's request body on its way upstream: its first [`PREFETCH_BYTES`] (or all of it,
//! when shorter) read before an upstream connection is taken, the rest streamed as it arrives,
//! and its own failures told apart from the upstream's.
//!
//! Why read ahead: upstream connections and HTTP/2 streams are bounded (`[upstream]
//! .max_connections`, the upstream's stream limit), and an HTTP/1.1 connection serves a single
//! request at a time. A client that sends a request head and then no body, or one byte of it,
//! would otherwise hold one for the whole `[upstream].timeout`, and a handful of such requests
//! lock every other client out (503). So a request body must arrive whole, or reach
//! `PREFETCH_BYTES`, within `header_read_timeout`, else 408 and the upstream is never touched
//! (nginx buffers whole bodies for the same reason). Past that a body streams; keeping a slot
//! then costs a client that much data per slot, and the wait for the response stays bounded
//! by `[upstream].timeout`.
//!
//! gRPC calls to an HTTP/2 upstream are the exception ([`BodyWait`]): a streaming call's client
//! may send a small first message and wait for the answer, or send nothing until the server
//! speaks. An authenticated caller's call is forwarded at once; an anonymous one's (a public
//! route) once its first message has started, so holding a slot costs at least a frame and
//! anyone doing so on an authenticated route is named in the access log.
//!
//! Memory: what is read ahead is bounded per request (`PREFETCH_BYTES`) and in total: at most
//! [`READ_AHEAD_SLOTS`] requests read ahead at once ([`ReadAheadSlots`]). A request that finds
//! none free streams its body as it arrives instead, so a flood of stalled bodies cannot grow
//! the proxy without bound (what remains is hyper's own per-connection buffering, bounded by
//! the HTTP/2 flow-control windows).
//!
//! Trailers: the body's trailer fields (HTTP/1.1 chunked, HTTP/2) are scrubbed as they pass, by
//! the same rules as the request head (`scrub::request_trailers`): a client must not be able to
//! send `X-Auth-Subject` as a trailer to an HTTP/2 upstream either.
//!
//! Why a separate error type: hyper reports a broken chunked body or a client that hung up
//! mid-upload as a failure of the upstream exchange. Wrapping the client body's errors in
//! [`ClientBodyError`] lets the forwarder find them in the error's cause chain and answer 400 (the
//! client's fault) instead of 502 (the upstream's), and log them as such.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::scrub::{self, ScrubRules};

/// How much of a body is read before the upstream is involved (module docs). Large enough that a
/// slot costs a client real data, small enough that holding it per request is cheap; most API
/// request bodies are smaller and arrive whole.
pub const PREFETCH_BYTES: usize = 64 * 1024;

/// Requests reading ahead at once, at most (16 MiB of bodies). A healthy client's read-ahead
/// lasts a round trip or so, so this many at one instant is far beyond normal traffic; only
/// stalled bodies pile up to it.
pub const READ_AHEAD_SLOTS: usize = 256;

/// What the forwarder waits for before it involves the upstream (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyWait {
    /// The whole body, or its first `PREFETCH_BYTES`.
    ReadAhead,
    /// Its first frame (or its end): a gRPC call from an anonymous caller.
    Start,
    /// Nothing: a gRPC call from an authenticated caller.
    Nothing,
}

/// The read-ahead slots of one upstream client ([`READ_AHEAD_SLOTS`]).
pub struct ReadAheadSlots(Arc<Semaphore>);

impl ReadAheadSlots {
    pub fn new(slots: usize) -> ReadAheadSlots {
        ReadAheadSlots(Arc::new(Semaphore::new(slots)))
    }

    /// A free slot, or `None` when every one is taken.
    fn take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0).try_acquire_owned().ok()
    }
}

/// A request body ready to go upstream.
pub struct RequestBody {
    /// The frames read ahead (already scrubbed), handed out first.
    ahead: VecDeque<Frame<Bytes>>,
    /// The read-ahead slot `ahead` holds; given back once `ahead` has been handed out.
    held: Option<OwnedSemaphorePermit>,
    rest: Incoming,
    /// What trailer fields may not pass (`scrub::request_trailers`); `None` passes them as sent
    /// (the benchmark's bare pool only).
    trailer_rules: Option<Arc<ScrubRules>>,
}

/// Reading the client's body failed (bad framing, or the client went away).
#[derive(Debug)]
pub struct ClientBodyError(hyper::Error);

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading the client's request body failed: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Why a body is not ready.
pub enum NotReady {
    /// It did not arrive (whole, or its first `PREFETCH_BYTES`) within the wait.
    TimedOut,
    Failed(ClientBodyError),
}

impl RequestBody {
    /// A body handed on as it arrives, without waiting (the benchmark's bare pool).
    pub fn streamed(body: Incoming) -> RequestBody {
        RequestBody {
            ahead: VecDeque::new(),
            held: None,
            rest: body,
            trailer_rules: None,
        }
    }

    /// Reads `body` ahead as `wait` says, for up to `limit` (module docs). A body already known
    /// to be empty (no `Content-Length`/`Transfer-Encoding`, `Content-Length: 0`, HTTP/2
    /// `END_STREAM` on the head) is ready at once.
    pub async fn ready(
        body: Incoming,
        wait: BodyWait,
        limit: Duration,
        slots: &ReadAheadSlots,
        trailer_rules: Arc<ScrubRules>,
    ) -> Result<RequestBody, NotReady> {
        let mut ready = RequestBody {
            trailer_rules: Some(trailer_rules),
            ..RequestBody::streamed(body)
        };
        let enough = match wait {
            _ if ready.rest.is_end_stream() => return Ok(ready),
            BodyWait::Nothing => return Ok(ready),
            BodyWait::Start => 1,
            BodyWait::ReadAhead => match slots.take() {
                Some(slot) => {
                    ready.held = Some(slot);
                    PREFETCH_BYTES
                }
                // Every slot is taken (a flood of stalled bodies): stream this one.
                None => return Ok(ready),
            },
        };
        match tokio::time::timeout(limit, ready.read_ahead(enough)).await {
            Err(_) => Err(NotReady::TimedOut),
            Ok(Err(error)) => Err(NotReady::Failed(ClientBodyError(error))),
            Ok(Ok(())) => {
                if ready.ahead.is_empty() {
                    ready.held = None;
                }
                Ok(ready)
            }
        }
    }

    /// Reads frames until the body ends or `enough` bytes of data are here.
    async fn read_ahead(&mut self, enough: usize) -> Result<(), hyper::Error> {
        let mut bytes = 0;
        while bytes < enough && !self.rest.is_end_stream() {
            let Some(frame) = self.rest.frame().await.transpose()? else {
                break;
            };
            bytes += frame.data_ref().map_or(0, Buf::remaining);
            let frame = self.scrubbed(frame);
            self.ahead.push_back(frame);
        }
        Ok(())
    }

    fn scrubbed(&self, mut frame: Frame<Bytes>) -> Frame<Bytes> {
        if let (Some(trailers), Some(rules)) = (frame.trailers_mut(), &self.trailer_rules) {
            scrub::request_trailers(trailers, rules);
        }
        frame
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.ahead.pop_front() {
            if this.ahead.is_empty() {
                this.held = None;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut this.rest)
            .poll_frame(cx)
            .map(|frame| frame.map(|r| r.map(|f| this.scrubbed(f)).map_err(ClientBodyError)))
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        if self.ahead.is_empty() {
            return rest;
        }
        let n: u64 = self
            .ahead
            .iter()
            .filter_map(Frame::data_ref)
            .map(|data| data.remaining() as u64)
            .sum();
        // Built anew: `SizeHint` panics when a lower bound passes the upper one in between.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(n));
        }
        hint.set_lower(rest.lower().saturating_add(n));
        hint
    }
}

/// Whether `error`, or one of its causes, is the client's body failing.
pub fn is_client_body_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<ClientBodyError>() {
            return true;
        }
        cause = e.source();
    }
    false
}
