//! The request span of the log (`request{request_id}`, a child of the connection's
//! `conn{listener peer}`), made when the request logs its first event rather than for every
//! request: a `tracing` span costs its creation, a lookup on each enter and exit (every poll of
//! the request) and its formatted fields, about a microsecond per request that logs nothing.
//!
//! A request runs in a trace scope (`trace::scope`) that holds its [`LogSpan`]. Around each
//! event, [`EnterRequestSpan`] (before the formatting layer) enters the span of the task's
//! request, making it on first use, and [`ExitRequestSpan`] (after it) leaves it, so the line
//! reads exactly as if the span had been entered all along: `span.request_id` and the
//! `conn:request` chain. Tasks spawned in the request's scope (`trace::in_current_scope`) share
//! the span.

use std::sync::{Arc, OnceLock};

use http::HeaderValue;
use tracing::{Event, Span, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::trace::with_log_span;
use crate::inbound::ConnInfo;

/// One request's log span, made on first use.
#[derive(Debug)]
pub struct LogSpan {
    request_id: HeaderValue,
    /// Holds the connection's span: the request span's parent.
    conn: Arc<ConnInfo>,
    span: OnceLock<Span>,
}

impl LogSpan {
    pub fn new(request_id: HeaderValue, conn: Arc<ConnInfo>) -> Self {
        LogSpan {
            request_id,
            conn,
            span: OnceLock::new(),
        }
    }

    fn span(&self) -> &Span {
        self.span.get_or_init(|| {
            tracing::info_span!(
                parent: &self.conn.span,
                "request",
                request_id = self.request_id.to_str().unwrap_or_default()
            )
        })
    }
}

/// Enters the current request's log span before an event is formatted (see the module docs).
pub struct EnterRequestSpan;

/// Leaves it after the event is formatted.
pub struct ExitRequestSpan;

impl<S: Subscriber> Layer<S> for EnterRequestSpan {
    fn on_event(&self, _event: &Event<'_>, _ctx: Context<'_, S>) {
        with_log_span(|log| {
            log.span()
                .with_subscriber(|(id, dispatch)| dispatch.enter(id))
        });
    }
}

impl<S: Subscriber> Layer<S> for ExitRequestSpan {
    fn on_event(&self, _event: &Event<'_>, _ctx: Context<'_, S>) {
        // The same task-local as when entering: a span made (and entered) then is left now.
        with_log_span(|log| {
            if let Some(span) = log.span.get() {
                span.with_subscriber(|(id, dispatch)| dispatch.exit(id));
            }
        });
    }
}
