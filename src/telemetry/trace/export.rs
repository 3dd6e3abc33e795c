//! OTLP/HTTP export through the OpenTelemetry SDK: the tracer provider, and turning one of our
//! finished spans into an SDK span with exactly our ids.
//!
//! Ids: spans are built with the SDK's `SpanBuilder` and *explicit* ids — the trace id and
//! span id of the [`TraceContext`] that was propagated, the parent given as a span context in the
//! parent `Context`, and a preset sampling result (record and sample) so the SDK's sampler never
//! second-guesses the decision the request path already made. The tracing bridge
//! (`tracing-opentelemetry`) was not used: it mints its own span ids when a `tracing` span is
//! created, which would make the exported ids differ from the propagated ones (or need a
//! pre-sampled tracer and per-span extension writes on every request, export on or off).
//!
//! A span is built and ended in one go when its work is over (the request's response head is
//! ready, a call has its answer): its start is `now - elapsed`, so the request path keeps a
//! monotonic `Instant` and never reads the wall clock unless a span is recorded.
//!
//! The exporter is opentelemetry-otlp's HTTP/protobuf one with its blocking reqwest client
//! (STACK-NOTES B3). Its endpoint is used verbatim, so it is given `<otlp_endpoint>/v1/traces`.
//! Batching, drops and shutdown are `queue.rs`'s.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use opentelemetry::trace::{
    SamplingDecision, SamplingResult, Span as _, SpanBuilder, SpanContext, SpanKind, Status,
    TraceContextExt as _, TraceFlags, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter as _};
use opentelemetry_sdk::Resource;

use super::context::TraceContext;
use super::queue::{Counts, ExportLimits, SpanQueue};
use crate::telemetry::metrics::Metrics;

/// The exporting half of [`Tracing`](super::Tracing): one per process.
pub(super) struct Export {
    tracer: SdkTracer,
    /// Taken by the first shutdown (or by `Drop`).
    provider: Mutex<Option<SdkTracerProvider>>,
    counts: Arc<Counts>,
    /// `<otlp_endpoint>/v1/traces`, for `Debug` and logs.
    url: String,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("url", &self.url)
            .field("dropped", &self.counts.dropped())
            .finish_non_exhaustive()
    }
}

impl Export {
    /// Builds the exporter and starts its worker thread. No network I/O: a collector that is
    /// down is only noticed (and logged) when the first batch is posted.
    pub(super) fn start(
        url: String,
        service_name: &str,
        metrics: Option<Arc<Metrics>>,
        limits: ExportLimits,
    ) -> Result<Export, String> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_timeout(limits.timeout)
            .build()
            .map_err(|e| format!("OTLP exporter for {url}: {e}"))?;
        let resource = Resource::builder()
            .with_service_name(service_name.to_owned())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        // Set here, before the exporter moves to its thread (our processor does not forward it).
        exporter.set_resource(&resource);
        let counts = Arc::new(Counts::new(metrics));
        let queue = SpanQueue::start(exporter, limits, Arc::clone(&counts))?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            // Never consulted (every span carries its sampling result); stated for the reader.
            .with_sampler(Sampler::AlwaysOn)
            .with_span_processor(queue)
            .build();
        let scope = InstrumentationScope::builder("tokengate")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        Ok(Export {
            tracer,
            provider: Mutex::new(Some(provider)),
            counts,
            url,
        })
    }

    /// Records one finished span with `ctx`'s ids. Never blocks: the span is queued or dropped.
    pub(super) fn record(
        &self,
        ctx: &TraceContext,
        kind: SpanKind,
        name: Cow<'static, str>,
        elapsed: Duration,
        attributes: Vec<KeyValue>,
        error: bool,
    ) {
        let end = SystemTime::now();
        let start = end.checked_sub(elapsed).unwrap_or(end);
        let trace_id = opentelemetry::trace::TraceId::from_bytes(ctx.trace_id().to_bytes());
        let trace_state = ctx.tracestate().map(parsed_state).unwrap_or_default();
        let parent = match ctx.parent() {
            None => Context::new(),
            Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                opentelemetry::trace::SpanId::from_bytes(parent.to_bytes()),
                TraceFlags::SAMPLED,
                ctx.parent_is_remote(),
                trace_state.clone(),
            )),
        };
        let status = if error {
            Status::error("")
        } else {
            Status::Unset
        };
        let builder = SpanBuilder::from_name(name)
            .with_trace_id(trace_id)
            .with_span_id(opentelemetry::trace::SpanId::from_bytes(
                ctx.span_id().to_bytes(),
            ))
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attributes)
            .with_status(status)
            .with_sampling_result(SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state,
            });
        let mut span = self.tracer.build_with_context(builder, &parent);
        span.end_with_timestamp(end);
    }

    pub(super) fn dropped(&self) -> u64 {
        self.counts.dropped()
    }

    /// Posts what is queued and stops the worker, waiting at most `wait`. Blocks: call it off
    /// the runtime threads.
    pub(super) fn shutdown_blocking(&self, wait: Duration) -> Result<(), String> {
        let provider = self
            .provider
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match provider {
            Some(provider) => provider
                .shutdown_with_timeout(wait)
                .map_err(|e| format!("span export shutdown: {e}")),
            None => Ok(()),
        }
    }
}

thread_local! {
    /// The last `tracestate` parsed on this thread: the spans of one request (and often of one
    /// caller's requests) carry the same value, and parsing it is the costliest step of
    /// recording a span (~0.5 µs measured, most of the rest together).
    static LAST_STATE: RefCell<Option<(HeaderValue, TraceState)>> = const { RefCell::new(None) };
}

/// `tracestate` as OpenTelemetry's type; one it cannot parse is left off the span (it was
/// still propagated as it came).
fn parsed_state(value: &HeaderValue) -> TraceState {
    LAST_STATE.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((raw, parsed)) = last.as_ref() {
            if raw == value {
                return parsed.clone();
            }
        }
        let parsed = value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<TraceState>().ok())
            .unwrap_or_default();
        *last = Some((value.clone(), parsed.clone()));
        parsed
    })
}

impl Drop for Export {
    /// Without an explicit shutdown (a test, an early exit), the provider's own drop would post
    /// and wait on whatever thread drops it — possibly a runtime worker. Hand it to a thread.
    fn drop(&mut self) {
        let provider = self
            .provider
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(provider) = provider {
            let _ = std::thread::Builder::new()
                .name("tokengate-otlp-stop".to_owned())
                .spawn(move || {
                    let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
                });
        }
    }
}
