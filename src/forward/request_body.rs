//! The client's request body on its way upstream: streamed as it arrives, but only once it has
//! started, and with its own failures told apart from the upstream's.
//!
//! Why wait for the start (HTTP/1.1 upstreams): an upstream connection is a bounded resource
//! (`[upstream].max_connections`), and an HTTP/1.1 one serves a single request at a time. A
//! client that sends a request head and then no body would otherwise hold one for the whole
//! `[upstream].timeout`, and a handful of such streams on one connection lock every other client
//! out (503). So a request whose body has not begun (its first frame, or its end) within
//! `header_read_timeout` gets 408 and never touches the upstream. A body that starts and then
//! trickles is bounded by `[upstream].timeout` as before. An HTTP/2 upstream does not wait: a
//! request there holds one of many multiplexed streams, and a gRPC call whose server speaks
//! first must reach the server before the client says anything.
//!
//! Trailers: the body's trailer fields (HTTP/1.1 chunked, HTTP/2) are scrubbed as they pass, by
//! the same rules as the request head (`scrub::request_trailers`): a client must not be able to
//! send `X-Auth-Subject` as a trailer to an HTTP/2 upstream either.
//!
//! Why a separate error type: hyper reports a broken chunked body or a client that hung up
//! mid-upload as a failure of the upstream exchange. Wrapping the client body's errors in
//! [`ClientBodyError`] lets the forwarder find them in the error's cause chain and answer 400 (the
//! client's fault) instead of 502 (the upstream's), and log them as such.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::scrub::{self, ScrubRules};

/// A request body that has started.
pub struct RequestBody {
    /// The frame read while waiting for the start, handed out first.
    first: Option<Frame<Bytes>>,
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

/// Why a body did not start.
pub enum NotStarted {
    /// Nothing arrived within the wait.
    TimedOut,
    Failed(ClientBodyError),
}

impl RequestBody {
    /// Waits up to `wait` for `body` to start (module docs); `None` does not wait (an HTTP/2
    /// upstream). A body already known to be empty (no `Content-Length`/`Transfer-Encoding`,
    /// `Content-Length: 0`, HTTP/2 `END_STREAM` on the head) does not wait either.
    pub async fn started(
        body: Incoming,
        wait: Option<Duration>,
        trailer_rules: Option<Arc<ScrubRules>>,
    ) -> Result<RequestBody, NotStarted> {
        let mut started = RequestBody {
            first: None,
            rest: body,
            trailer_rules,
        };
        let Some(wait) = wait.filter(|_| !started.rest.is_end_stream()) else {
            return Ok(started);
        };
        match tokio::time::timeout(wait, started.rest.frame()).await {
            Err(_) => Err(NotStarted::TimedOut),
            Ok(Some(Err(error))) => Err(NotStarted::Failed(ClientBodyError(error))),
            Ok(first) => {
                started.first = first.and_then(Result::ok).map(|f| started.scrubbed(f));
                Ok(started)
            }
        }
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
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        Pin::new(&mut this.rest)
            .poll_frame(cx)
            .map(|frame| frame.map(|r| r.map(|f| this.scrubbed(f)).map_err(ClientBodyError)))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let Some(data) = self.first.as_ref().and_then(Frame::data_ref) else {
            return rest;
        };
        let n = data.remaining() as u64;
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
