//! The per-request context (Pingora's `CTX`): what the phases learn about a request that is for
//! the operator rather than for the next phase — the access-line fields, when it started, and the
//! `tracing` span every log event inside the request carries (so a warning from the forwarder,
//! the key fetcher or the userinfo client names its request id; made on the request's first log
//! event, see `telemetry::LogSpan`).

use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderValue;
use http::Method;

use crate::authn::{ClaimsSource, Principal};
use crate::inbound::ConnInfo;
use crate::scrub;
use crate::telemetry::trace::{TraceContext, Tracing};
use crate::telemetry::{AccessLine, LogSpan};

pub struct RequestCtx {
    pub line: AccessLine,
    /// The request's span in the W3C trace: continued from `traceparent`, or a new trace.
    pub trace: TraceContext,
    pub start: Instant,
    log: Option<LogSpan>,
    /// The matched route's index in the configuration (its metrics), once routed.
    pub route: Option<usize>,
    /// A gRPC call (`content-type: application/grpc…`): our own errors are answered in gRPC form.
    pub grpc: bool,
}

impl RequestCtx {
    /// At the very start of a request: its id (the client's when acceptable, else a new one).
    /// Its log span is a child of the connection's (`conn`), so its events name the peer too.
    pub fn new(
        headers: &http::HeaderMap,
        method: &Method,
        tracing: &Tracing,
        conn: &Arc<ConnInfo>,
    ) -> Self {
        let request_id = scrub::request_id(headers);
        let trace = tracing.incoming(headers);
        RequestCtx {
            log: Some(LogSpan::new(request_id.clone(), conn.clone())),
            line: AccessLine::new(request_id, trace.trace_id_hex(), method.clone()),
            trace,
            start: Instant::now(),
            route: None,
            grpc: crate::forward::wants_grpc_errors(headers),
        }
    }

    /// The request's log span, for the scope the phases run in (it is taken: the context keeps
    /// none).
    pub fn take_log(&mut self) -> Option<LogSpan> {
        self.log.take()
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
