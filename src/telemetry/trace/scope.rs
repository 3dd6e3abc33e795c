//! The trace scope of a task: which span the proxy's own calls (discovery, JWKS, userinfo,
//! introspection) are children of, without threading a context through every signature.
//!
//! The gateway runs a request inside [`scope`] (the request's span and the process's
//! [`Tracing`]); a background task (the key refresher) may run inside [`background`]. The code
//! that makes a call — one place, the issuer HTTP client — then does:
//!
//! ```ignore
//! let call = trace::Call::start(CallKind::Jwks);   // a child span of the current one
//! call.inject(request.headers_mut());              // its traceparent on the call
//! let answer = client.execute(request).await;
//! call.finish(&ClientSpan::new(&Method::GET, outcome).server(host, port));
//! ```
//!
//! Inside a request scope a call's span is a child of the request's span; inside a background
//! scope it starts a new trace (sampled by the configured ratio); outside any scope it starts a
//! new, unrecorded trace, so the call still carries a `traceparent` (SPEC §8). A task-local does
//! not follow `tokio::spawn`: a task spawned on a request's behalf (a coalesced userinfo call, an
//! on-demand key refresh) is wrapped in [`in_current_scope`].
//!
//! A request's scope also carries its log span ([`LogSpan`]), made on the request's first log
//! event; a task spawned in the scope shares it, so its events carry the request id too.
//!
//! Left to others: the ids (`context.rs`), recording (`Tracing`).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use tokio::task::futures::TaskLocalFuture;

use super::context::TraceContext;
use super::sampler::Sampler;
use super::spans::{CallKind, ClientSpan};
use super::Tracing;
use crate::telemetry::log_span::LogSpan;

/// What a task's calls hang off: the process's tracing and, in a request, the request's span.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    tracing: Tracing,
    /// `None` in a background scope.
    request: Option<Arc<RequestScope>>,
}

/// What the tasks of one request share (one allocation per request, not a clone per task).
#[derive(Debug)]
struct RequestScope {
    /// The request's span in the trace.
    trace: TraceContext,
    /// Its span in the log; `None` where nothing logs on its behalf (tests).
    log: Option<LogSpan>,
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// Runs `future` (the request's phases) with `request` as the parent of its calls, and `log`
/// as the span its log events (and those of the tasks it spawns in scope) are in.
pub fn scope<F: Future>(
    tracing: &Tracing,
    request: TraceContext,
    log: Option<LogSpan>,
    future: F,
) -> TaskLocalFuture<Scope, F> {
    SCOPE.scope(
        Scope {
            tracing: tracing.clone(),
            request: Some(Arc::new(RequestScope {
                trace: request,
                log,
            })),
        },
        future,
    )
}

/// Runs background work whose calls each start a new trace, recorded when sampled.
pub fn background<F: Future>(tracing: &Tracing, future: F) -> TaskLocalFuture<Scope, F> {
    SCOPE.scope(
        Scope {
            tracing: tracing.clone(),
            request: None,
        },
        future,
    )
}

/// Runs `future` (about to be spawned) in the scope of the current task, if it has one.
pub fn in_current_scope<F: Future>(future: F) -> TaskLocalFuture<Scope, F> {
    let current = SCOPE.try_with(Scope::clone).unwrap_or_default();
    SCOPE.scope(current, future)
}

/// The request span of the current task's scope.
pub fn current() -> Option<TraceContext> {
    SCOPE
        .try_with(|s| s.request.as_ref().map(|r| r.trace.clone()))
        .ok()
        .flatten()
}

/// `f` on the log span of the current task's request, if it runs in one.
pub(crate) fn with_log_span<R>(f: impl FnOnce(&LogSpan) -> R) -> Option<R> {
    SCOPE
        .try_with(|s| s.request.as_ref()?.log.as_ref().map(f))
        .ok()
        .flatten()
}

/// One outgoing call being made: its span's context and when it started.
#[derive(Debug)]
pub struct Call {
    tracing: Tracing,
    trace: TraceContext,
    kind: CallKind,
    started: Instant,
}

impl Call {
    /// A call starting now, in the current scope (see the module documentation).
    pub fn start(kind: CallKind) -> Call {
        let (tracing, trace) = SCOPE
            .try_with(|s| {
                let trace = match &s.request {
                    Some(request) => request.trace.child(),
                    None => TraceContext::new_root(&s.tracing.sampler()),
                };
                (s.tracing.clone(), trace)
            })
            .unwrap_or_else(|_| {
                (
                    Tracing::disabled(),
                    TraceContext::new_root(&Sampler::always()),
                )
            });
        Call {
            tracing,
            trace,
            kind,
            started: Instant::now(),
        }
    }

    /// The call's span: the parent the callee sees.
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// Sets `traceparent` (this call's span as parent) and `tracestate` on the call's request.
    pub fn inject(&self, headers: &mut HeaderMap) {
        self.trace.inject(headers);
    }

    /// Records the call's client span (when exporting and sampled).
    pub fn finish(self, span: &ClientSpan<'_>) {
        self.tracing
            .client_span(&self.trace, self.kind, self.started.elapsed(), span);
    }
}
