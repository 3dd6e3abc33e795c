//! The `traceparent` header (W3C Trace Context Level 1, §3.2), parsed by hand: a request that
//! carries one pays for 55 bytes of checks and nothing else (no SDK, no allocation).
//!
//! Version `00` is exactly `00-<32 hex>-<16 hex>-<2 hex>`, 55 characters, lower-case hex only.
//! A later version (anything but `ff`) is read by the forward-compatibility rules of §3.2.4: at
//! least 55 characters; the same three fields at the same offsets; after the flags either the
//! end or a `-` (the start of fields this version does not know, which are ignored). An all-zero
//! trace id or span id is invalid in every version. Whatever fails is [`Malformed`], and the
//! caller starts a new trace: W3C says a vendor MUST NOT continue an invalid parent.
//!
//! Only the `sampled` flag is kept: Level 1 gives no meaning to the other bits and says to
//! propagate them as zero.
//!
//! Left to others: what to do with the result (`context.rs`), `tracestate` (`context.rs`).

use std::fmt;

use super::ids::{SpanId, TraceId};

/// The fields of a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    /// The caller's span: the parent of ours.
    pub span_id: SpanId,
    pub sampled: bool,
}

/// Why a `traceparent` was not continued (for a debug log; it never quotes the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Version `00` and not exactly 55 characters, or a later version shorter than 55.
    Length,
    /// `ff`, or not two lower-case hex digits.
    Version,
    /// A `-` missing where the format puts one (or something else after a later version's flags).
    Separator,
    /// A field with a character that is not lower-case hex (upper case included).
    NotHex,
    ZeroTraceId,
    ZeroSpanId,
    /// More than one `traceparent` field in the request.
    Repeated,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformed::Length => "wrong length",
            Malformed::Version => "invalid version",
            Malformed::Separator => "misplaced separator",
            Malformed::NotHex => "not lower-case hex",
            Malformed::ZeroTraceId => "all-zero trace id",
            Malformed::ZeroSpanId => "all-zero parent id",
            Malformed::Repeated => "more than one traceparent",
        })
    }
}

/// Length of a version-00 `traceparent`.
const LEN: usize = 55;

/// Parses one `traceparent` value.
pub fn parse_traceparent(value: &[u8]) -> Result<Parent, Malformed> {
    let mut version = [0u8; 1];
    hex(value.get(..2).ok_or(Malformed::Length)?, &mut version).map_err(|_| Malformed::Version)?;
    match version[0] {
        0xff => return Err(Malformed::Version),
        0x00 if value.len() != LEN => return Err(Malformed::Length),
        _ if value.len() < LEN => return Err(Malformed::Length),
        // §3.2.4: a later version may append fields, each after a `-`.
        _ if value.len() > LEN && value[LEN] != b'-' => return Err(Malformed::Separator),
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return Err(Malformed::Separator);
    }
    let mut trace_id = [0u8; 16];
    hex(&value[3..35], &mut trace_id)?;
    let mut span_id = [0u8; 8];
    hex(&value[36..52], &mut span_id)?;
    let mut flags = [0u8; 1];
    hex(&value[53..55], &mut flags)?;
    if trace_id == [0; 16] {
        return Err(Malformed::ZeroTraceId);
    }
    if span_id == [0; 8] {
        return Err(Malformed::ZeroSpanId);
    }
    Ok(Parent {
        trace_id: TraceId(trace_id),
        span_id: SpanId(span_id),
        sampled: flags[0] & 0x01 != 0,
    })
}

/// Decodes lower-case hex `text` (twice as long as `out`) into `out`.
fn hex(text: &[u8], out: &mut [u8]) -> Result<(), Malformed> {
    for (pair, byte) in text.chunks_exact(2).zip(out.iter_mut()) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(())
}

fn nibble(c: u8) -> Result<u8, Malformed> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(Malformed::NotHex),
    }
}
