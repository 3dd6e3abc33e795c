//! Traces (SPEC §8): W3C Trace Context propagation, always on, and OTLP/HTTP span export, with
//! `[telemetry].otlp_endpoint`.
//!
//! - [`TraceContext`] (`context.rs`, `parse.rs`, `ids.rs`, `sampler.rs`): the request path's
//!   half, free of OpenTelemetry types. Continue or start a trace from the request's headers,
//!   make child spans, write `traceparent`/`tracestate` on outgoing calls, give the access line
//!   its `trace_id`.
//! - [`Tracing`] (this file): the process's handle, cheap to clone: the [`Sampler`] for new
//!   traces and, when exporting, the exporter (`export.rs`, `queue.rs`). Recording a span
//!   ([`Tracing::server_span`], [`Tracing::client_span`]) does nothing unless spans are
//!   exported and the trace is sampled; it never blocks and never fails: a slow or absent
//!   collector only drops spans, counted in `tokengate_spans_dropped_total`.
//! - What a span says (`spans.rs`): [`ServerSpan`], [`ClientSpan`], typed so that no token or
//!   claim value can become an attribute.
//! - [`scope`], [`Call`] (`scope.rs`): the request's span as the task's current one, so the issuer
//!   client can make child spans without a context parameter on every function.
//!
//! Left to others: calling these at the right phase (the gateway, the issuer client, the
//! forwarder), the access line's `trace_id` field (`telemetry::access`), the metrics registry.

mod context;
mod export;
mod ids;
mod parse;
mod queue;
mod sampler;
mod scope;
mod spans;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::trace::SpanKind;

pub use context::{TraceContext, MAX_TRACESTATE, TRACEPARENT, TRACESTATE};
pub(crate) use ids::hex_into;
pub use ids::{SpanId, SpanIdHex, TraceId, TraceIdHex};
pub use parse::{parse_traceparent, Malformed, Parent};
pub use queue::ExportLimits;
pub use sampler::Sampler;
pub(crate) use scope::with_log_span;
pub use scope::{background, current, in_current_scope, scope, Call, Scope};
pub use spans::{CallKind, CallOutcome, ClientSpan, ServerSpan};

use crate::config::Telemetry;
use crate::telemetry::metrics::Metrics;
use export::Export;

/// The process's tracing: how new traces are sampled, and where spans go. One per process
/// (the exporter's thread and queue outlive configuration reloads); clone it freely.
#[derive(Debug, Clone, Default)]
pub struct Tracing {
    sampler: Sampler,
    /// `Some` with `[telemetry].otlp_endpoint`.
    export: Option<Arc<Export>>,
}

impl Tracing {
    /// Propagation only: every new trace sampled (the default ratio), nothing exported.
    pub fn disabled() -> Tracing {
        Tracing::default()
    }

    /// From the configuration: `None` (no `[telemetry]`) is [`Tracing::disabled`]. Drops are
    /// counted in `metrics` when given. Starts the exporter's thread; no network I/O.
    pub fn start(
        telemetry: Option<&Telemetry>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Tracing, String> {
        match telemetry {
            None => Ok(Tracing::disabled()),
            Some(t) => Tracing::start_with(t, metrics, ExportLimits::default()),
        }
    }

    /// [`Tracing::start`] with explicit queue sizes and timeouts (tests).
    pub fn start_with(
        telemetry: &Telemetry,
        metrics: Option<Arc<Metrics>>,
        limits: ExportLimits,
    ) -> Result<Tracing, String> {
        let export = match telemetry.traces_url() {
            None => None,
            Some(url) => Some(Arc::new(Export::start(
                url,
                &telemetry.service_name,
                metrics,
                limits,
            )?)),
        };
        Ok(Tracing {
            sampler: Sampler::ratio(telemetry.sample_ratio),
            export,
        })
    }

    pub fn sampler(&self) -> Sampler {
        self.sampler
    }

    /// Whether spans are exported at all.
    pub fn exporting(&self) -> bool {
        self.export.is_some()
    }

    /// The context of tokengate's span for an incoming request.
    pub fn incoming(&self, headers: &HeaderMap) -> TraceContext {
        TraceContext::from_headers(headers, &self.sampler)
    }

    /// Records the request's span (kind SERVER) with `ctx`'s ids, `elapsed` being how long the
    /// request took until now.
    pub fn server_span(&self, ctx: &TraceContext, elapsed: Duration, span: &ServerSpan<'_>) {
        if let Some(export) = self.recording(ctx) {
            export.record(
                ctx,
                SpanKind::Server,
                span.name(),
                elapsed,
                span.attributes(),
                span.is_error(),
            );
        }
    }

    /// Records an outgoing call's span (kind CLIENT); `ctx` is the call's own context (a
    /// [`TraceContext::child`] of the request's, or a [`Call`]'s).
    pub fn client_span(
        &self,
        ctx: &TraceContext,
        kind: CallKind,
        elapsed: Duration,
        span: &ClientSpan<'_>,
    ) {
        if let Some(export) = self.recording(ctx) {
            export.record(
                ctx,
                SpanKind::Client,
                ClientSpan::name(kind),
                elapsed,
                span.attributes(kind),
                span.is_error(),
            );
        }
    }

    fn recording(&self, ctx: &TraceContext) -> Option<&Export> {
        self.export.as_deref().filter(|_| ctx.sampled())
    }

    /// Spans dropped so far (queue full, export failed, shutdown timed out).
    pub fn dropped(&self) -> u64 {
        self.export.as_ref().map_or(0, |e| e.dropped())
    }

    /// Posts the spans still queued, waiting at most about `wait`, on a blocking thread (the
    /// SDK's shutdown blocks). Spans recorded afterwards are dropped. Call once, at exit.
    pub async fn shutdown(&self, wait: Duration) {
        let Some(export) = self.export.clone() else {
            return;
        };
        let stop = tokio::task::spawn_blocking(move || export.shutdown_blocking(wait));
        // The queue bounds its own wait; this only guards against a stuck blocking pool.
        match tokio::time::timeout(wait.saturating_add(Duration::from_secs(1)), stop).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("{e}"),
            Ok(Err(_)) | Err(_) => tracing::warn!("span export shutdown did not finish"),
        }
    }
}
