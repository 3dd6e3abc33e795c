//! One span's W3C trace context (SPEC §8 "Traces"): which trace it belongs to, its own id, its
//! parent, the sampled flag and the caller's `tracestate`, and the headers that carry it on.
//!
//! The request path uses only this file, `parse.rs` and `ids.rs`: no OpenTelemetry type is
//! touched unless spans are exported, so propagation costs a header lookup, a few random numbers
//! and, when forwarding, one 55-byte header value (tens of nanoseconds, measured).
//!
//! - [`TraceContext::from_headers`]: a valid `traceparent` is continued (same trace id, a new
//!   span id, the caller's span as parent, its sampled flag as it is) with its `tracestate`;
//!   anything else starts a new trace (random trace id, sampled by the [`Sampler`]) and drops a
//!   `tracestate` that came with it (W3C: `tracestate` is meaningless without its parent).
//! - [`TraceContext::child`]: a span below this one (an issuer call, the upstream call).
//! - [`TraceContext::traceparent`] / [`TraceContext::inject`]: the headers for an outgoing call,
//!   with this span as the callee's parent, and `tracestate` passed on unchanged.
//!
//! `tracestate` is kept byte for byte (several fields are joined with `,`, as HTTP lists are)
//! up to [`MAX_TRACESTATE`] bytes. A longer one is cut as W3C §3.3.1.5 says: list members over
//! 128 bytes go first, then members from the end, until it fits.
//!
//! Left to others: recording spans (`export.rs`), the call scope (`scope.rs`).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::ids::{hex_into, SpanId, TraceId, TraceIdHex};
use super::parse::{parse_traceparent, Malformed, Parent};
use super::sampler::Sampler;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest `tracestate` passed on (W3C asks that at least 512 bytes be propagated).
pub const MAX_TRACESTATE: usize = 512;

/// List members longer than this are the first to go when `tracestate` is cut (W3C §3.3.1.5).
const LONG_MEMBER: usize = 128;

/// W3C: at most 32 list members.
const MAX_MEMBERS: usize = 32;

/// One span's place in a trace. Cloning it copies the ids and shares the `tracestate` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    /// Whether `parent` is the caller's span (a continued trace), not one of ours.
    parent_is_remote: bool,
    sampled: bool,
    state: Option<HeaderValue>,
}

impl TraceContext {
    /// The context of tokengate's span for a request with these headers.
    pub fn from_headers(headers: &HeaderMap, sampler: &Sampler) -> TraceContext {
        match incoming_parent(headers) {
            Ok(Some(parent)) => TraceContext::continued(parent, tracestate(headers)),
            Ok(None) => TraceContext::new_root(sampler),
            Err(why) => {
                tracing::debug!(reason = %why, "traceparent ignored, a new trace starts");
                TraceContext::new_root(sampler)
            }
        }
    }

    /// The first span of a new trace.
    pub fn new_root(sampler: &Sampler) -> TraceContext {
        let trace_id = TraceId::random();
        TraceContext {
            trace_id,
            span_id: SpanId::random(),
            parent: None,
            parent_is_remote: false,
            sampled: sampler.samples(trace_id),
            state: None,
        }
    }

    /// Our span below a caller's span (a valid incoming `traceparent`).
    pub fn continued(parent: Parent, state: Option<HeaderValue>) -> TraceContext {
        TraceContext {
            trace_id: parent.trace_id,
            span_id: SpanId::random(),
            parent: Some(parent.span_id),
            parent_is_remote: true,
            sampled: parent.sampled,
            state,
        }
    }

    /// A new span below this one, in the same trace, with the same flags and `tracestate`.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent: Some(self.span_id),
            parent_is_remote: false,
            sampled: self.sampled,
            state: self.state.clone(),
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The access line's `trace_id`: 32 lower-case hex digits, on the stack.
    pub fn trace_id_hex(&self) -> TraceIdHex {
        self.trace_id.to_hex()
    }

    /// This span's id: the parent id of every call made with [`TraceContext::inject`].
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The parent span: the caller's (see [`TraceContext::parent_is_remote`]) or one of ours;
    /// `None` for the first span of a trace.
    pub fn parent(&self) -> Option<SpanId> {
        self.parent
    }

    pub fn parent_is_remote(&self) -> bool {
        self.parent_is_remote
    }

    /// The W3C `sampled` flag: set when the trace may be recorded, by the caller's decision for
    /// a continued trace, by the sampler for a new one. Spans are exported only when it is set.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The caller's `tracestate`, as it came (bounded).
    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.state.as_ref()
    }

    /// `00-<trace id>-<this span id>-<flags>`: the `traceparent` of a call this span makes.
    pub fn traceparent(&self) -> HeaderValue {
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&self.trace_id.0, &mut buf[3..35]);
        hex_into(&self.span_id.0, &mut buf[36..52]);
        if self.sampled {
            buf[54] = b'1';
        }
        // Hex digits and `-` are always valid header bytes; the fallback is never taken (an
        // empty value would make the callee start a new trace, nothing worse).
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Sets `traceparent` (this span as the parent) and, when there is one, `tracestate` on an
    /// outgoing request: the callee must see our span, not the client's. A request made from a
    /// client's must not carry the client's `tracestate` already (header hygiene removes it).
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent());
        if let Some(state) = &self.state {
            headers.insert(TRACESTATE, state.clone());
        }
    }
}

/// The request's `traceparent`: none, one valid value, or why it cannot be continued.
fn incoming_parent(headers: &HeaderMap) -> Result<Option<Parent>, Malformed> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    // Two fields could come from two different callers: which one is ours is unknowable.
    if values.next().is_some() {
        return Err(Malformed::Repeated);
    }
    parse_traceparent(first.as_bytes()).map(Some)
}

/// The request's `tracestate`, kept as it came when it fits; `None` when absent or empty.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(TRACESTATE).iter();
    let first = values.next()?;
    let joined = match values.next() {
        // The common case: one field, shared, not copied.
        None if first.len() <= MAX_TRACESTATE => return non_empty(first.clone()),
        None => first.as_bytes().to_vec(),
        Some(second) => {
            let mut joined = first.as_bytes().to_vec();
            for value in std::iter::once(second).chain(values) {
                // Never collect more than the cut can use, whatever the client sends.
                if joined.len() > MAX_TRACESTATE * 4 {
                    break;
                }
                joined.push(b',');
                joined.extend_from_slice(value.as_bytes());
            }
            joined
        }
    };
    let bounded = if joined.len() <= MAX_TRACESTATE {
        joined
    } else {
        cut(&joined)
    };
    HeaderValue::from_maybe_shared(Bytes::from(bounded))
        .ok()
        .and_then(non_empty)
}

/// A value with no list member (only `,` and blanks) is not passed on.
fn non_empty(value: HeaderValue) -> Option<HeaderValue> {
    let has_member = value
        .as_bytes()
        .iter()
        .any(|b| !matches!(b, b',' | b' ' | b'\t'));
    has_member.then_some(value)
}

/// W3C §3.3.1.5: drop members over 128 bytes, then members from the end, until the list fits
/// in [`MAX_TRACESTATE`] bytes and [`MAX_MEMBERS`] members. The members kept are unchanged.
fn cut(list: &[u8]) -> Vec<u8> {
    let trim = |m: &[u8]| -> (usize, usize) {
        let start = m.iter().position(|b| !matches!(b, b' ' | b'\t'));
        let end = m.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
        match (start, end) {
            (Some(s), Some(e)) => (s, e + 1),
            _ => (0, 0),
        }
    };
    let members: Vec<&[u8]> = list
        .split(|b| *b == b',')
        .map(|m| {
            let (s, e) = trim(m);
            &m[s..e]
        })
        .filter(|m| !m.is_empty() && m.len() <= LONG_MEMBER)
        .collect();
    let mut out = Vec::with_capacity(MAX_TRACESTATE);
    for member in members.into_iter().take(MAX_MEMBERS) {
        let extra = usize::from(!out.is_empty()) + member.len();
        if out.len() + extra > MAX_TRACESTATE {
            break;
        }
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(member);
    }
    out
}
