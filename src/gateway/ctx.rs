//! The per-request context (Pingora's `CTX`): what the phases learn about a request that is for
//! the operator rather than for the next phase — the access-line fields, when it started, and
//! its span in the W3C trace. The `tracing` span every log event inside the request carries (so
//! a warning from the forwarder, the key fetcher or the userinfo client names its request id)
//! travels in the request's trace scope instead, made on its first log event
//! (`telemetry::LogSpan`).

use std::time::Instant;

use http::header::HeaderValue;
use http::Method;

use crate::authn::{ClaimsSource, Principal};
use crate::scrub;
use crate::telemetry::trace::{TraceContext, Tracing};
use crate::telemetry::AccessLine;

pub struct RequestCtx {
    pub line: AccessLine,
    /// The request's span in the W3C trace: continued from `traceparent`, or a new trace.
    pub trace: TraceContext,
    pub start: Instant,
    /// The matched route's index in the configuration (its metrics), once routed.
    pub route: Option<usize>,
    /// A gRPC call (`content-type: application/grpc…`): our own errors are answered in gRPC form.
    pub grpc: bool,
}

impl RequestCtx {
    /// At the very start of a request: its id (the client's when acceptable, else a new one).
    pub fn new(headers: &http::HeaderMap, method: &Method, tracing: &Tracing) -> Self {
        let request_id = scrub::request_id(headers);
        let trace = tracing.incoming(headers);
        RequestCtx {
            line: AccessLine::new(request_id, trace.trace_id_hex(), method.clone()),
            trace,
            start: Instant::now(),
            route: None,
            grpc: crate::forward::wants_grpc_errors(headers),
        }
    }

    pub fn request_id(&self) -> &HeaderValue {
        &self.line.request_id
    }

    /// After enrichment, before policy, so a 403 is logged with who was refused.
    pub fn caller(&mut self, principal: &Principal) {
        if let Principal::Caller(caller) = principal {
            self.line.auth = Some(caller.auth);
            self.line.sub = caller.sub().map(str::to_owned);
            self.line.client_id = caller.client_id().map(str::to_owned);
            if let ClaimsSource::Skipped(note) = caller.source {
                self.line.reason = Some(note);
            }
        }
    }
}
