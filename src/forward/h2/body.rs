//! The bodies of one exchange (request and response), streamed as they are, never buffered, and
//! holding the stream they travel on until both are done.
//!
//! The request body reaches hyper wrapped, and the real body waits in the [`Exchange`] until
//! hyper first polls for data. If the attempt fails before that (the connection closed before
//! taking the request, or the server refused a bodiless request's stream), nothing of the body
//! has been read, so it can be taken back and the request sent again; once polled, it belongs to
//! that stream for good.
//!
//! Leaves to others: deciding to retry (`h2.rs`), the stream accounting ([`super::checkout`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::checkout::StreamSlot;
use super::BoxError;

/// Any request body, boxed once so that every request shares a connection's body type.
pub(super) type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// One request/response exchange on one stream.
pub(super) struct Exchange {
    /// Given back when the request body, the response body and the sender are all done.
    _slot: StreamSlot,
    /// The request body until hyper first polls it.
    unsent: Mutex<Option<BoxBody>>,
}

impl Exchange {
    /// The exchange, and the request body to give hyper.
    pub(super) fn new(slot: StreamSlot, body: BoxBody) -> (Arc<Exchange>, ReqBody) {
        let state = State::Unsent {
            end_stream: body.is_end_stream(),
            size_hint: body.size_hint(),
        };
        let exchange = Arc::new(Exchange {
            _slot: slot,
            unsent: Mutex::new(Some(body)),
        });
        let req_body = ReqBody {
            state,
            exchange: Arc::clone(&exchange),
        };
        (exchange, req_body)
    }

    /// The request body, if hyper never read from it.
    pub(super) fn take_unsent(&self) -> Option<BoxBody> {
        self.unsent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

enum State {
    /// Still in the exchange; what hyper asks before polling is answered from the original.
    Unsent {
        end_stream: bool,
        size_hint: SizeHint,
    },
    Sending(BoxBody),
    /// Taken back for another attempt: this stream is dead anyway.
    Gone,
}

/// The request body as hyper sees it.
pub(super) struct ReqBody {
    state: State,
    exchange: Arc<Exchange>,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let State::Unsent { .. } = this.state {
            this.state = match this.exchange.take_unsent() {
                Some(body) => State::Sending(body),
                None => State::Gone,
            };
        }
        match &mut this.state {
            State::Sending(body) => Pin::new(body).poll_frame(cx),
            State::Unsent { .. } | State::Gone => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Unsent { end_stream, .. } => *end_stream,
            State::Sending(body) => body.is_end_stream(),
            State::Gone => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Unsent { size_hint, .. } => *size_hint,
            State::Sending(body) => body.size_hint(),
            State::Gone => SizeHint::with_exact(0),
        }
    }
}

impl std::fmt::Debug for ReqBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReqBody").finish_non_exhaustive()
    }
}

/// An upstream response body, streamed (trailers included); gives its stream back at its end.
pub struct H2Body {
    inner: Incoming,
    exchange: Option<Arc<Exchange>>,
}

impl H2Body {
    pub(super) fn new(inner: Incoming, exchange: Arc<Exchange>) -> Self {
        // A trailers-only answer (a gRPC error) is over before its body is read.
        let exchange = (!inner.is_end_stream()).then_some(exchange);
        H2Body { inner, exchange }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            // The end, or a reset stream: either way the stream is over.
            _ => this.exchange = None,
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

impl std::fmt::Debug for H2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
