//! The access line (SPEC §8), written without going through `tracing`'s generic formatting.
//!
//! It is the one log line of every request, so it is formatted here with what it is known to
//! hold (a few strings, a status, a latency) into a per-thread buffer, in exactly the layout of
//! the subscriber's text or JSON lines, and handed to the same non-blocking writer. Strings are
//! escaped as `{:?}` (text) or as JSON strings: a `sub` with a newline cannot forge a log line.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderValue;
use http::{Method, StatusCode};
use tracing_appender::non_blocking::NonBlocking;
use tracing_subscriber::fmt::MakeWriter;

use crate::reason::{AuthMethod, Reason};
use crate::telemetry::trace::TraceIdHex;

/// The target of the access lines (what `TOKENGATE_LOG` filters on).
pub const ACCESS_TARGET: &str = "tokengate::access";

/// What the access line needs, filled in as the request walks the phases.
#[derive(Debug)]
pub struct AccessLine {
    pub request_id: HeaderValue,
    /// The request's W3C trace id (continued from `traceparent`, or new).
    pub trace_id: TraceIdHex,
    pub method: Method,
    /// The normalized path, once known.
    pub path: Option<String>,
    pub route: Option<Arc<str>>,
    pub sub: Option<String>,
    pub client_id: Option<String>,
    /// How the caller was verified, if it was.
    pub auth: Option<AuthMethod>,
    /// Why the request was rejected (or a note such as `userinfo_unavailable`).
    pub reason: Option<Reason>,
}

impl AccessLine {
    pub fn new(request_id: HeaderValue, trace_id: TraceIdHex, method: Method) -> Self {
        AccessLine {
            request_id,
            trace_id,
            method,
            path: None,
            route: None,
            sub: None,
            client_id: None,
            auth: None,
            reason: None,
        }
    }
}

/// Where access lines go when the subscriber writes plain (uncoloured) text or JSON.
pub(super) struct AccessOut {
    pub writer: NonBlocking,
    pub json: bool,
}

pub(super) static ACCESS_OUT: OnceLock<AccessOut> = OnceLock::new();

/// Logs the access line at info, unless the filter turns `tokengate::access` off.
pub fn access(line: &AccessLine, status: StatusCode, latency: Duration) {
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    let Some(out) = ACCESS_OUT.get() else {
        // A coloured terminal (or no `init`): the subscriber formats it.
        let latency_ms = (latency.as_secs_f64() * 1e6).round() / 1e3;
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = line.request_id.to_str().unwrap_or(""),
            trace_id = line.trace_id.as_str(),
            method = line.method.as_str(),
            path = line.path.as_deref().unwrap_or("-"),
            route = line.route.as_deref().unwrap_or("-"),
            status = status.as_u16(),
            latency_ms,
            sub = line.sub.as_deref(),
            client_id = line.client_id.as_deref(),
            auth = line.auth.map(AuthMethod::as_str),
            reason = line.reason.map(Reason::as_str),
            "request"
        );
        return;
    };
    BATCH.with(|batch| {
        let mut batch = batch.borrow_mut();
        format_line(
            &mut batch.buf,
            out.json,
            SystemTime::now(),
            line,
            status,
            latency,
        );
        if !batch.worker || batch.buf.len() >= FLUSH_BYTES {
            flush(&mut batch.buf, out);
        }
    });
}

/// A batch is handed to the log thread at this size even if its worker never parks.
const FLUSH_BYTES: usize = 16 * 1024;

/// Access lines of one thread not yet handed to the log thread.
struct Batch {
    buf: Vec<u8>,
    /// Set once the thread parked as a runtime worker: it will park again, so lines can wait
    /// for that. Other threads (tests' runtimes, blocking threads) hand each line over at once.
    worker: bool,
}

thread_local! {
    static BATCH: RefCell<Batch> = const {
        RefCell::new(Batch { buf: Vec::new(), worker: false })
    };
}

/// Runtime hook, called when a worker thread is about to park (it has nothing left to run):
/// the lines of the requests it just served go to the log thread in one message and one
/// `write`, instead of a channel send and a wake-up per request.
pub fn flush_on_park() {
    hand_over(true);
}

/// Runtime hook for a stopping worker thread: nothing it logged is lost.
pub fn flush_on_stop() {
    hand_over(false);
}

/// Hands this thread's pending lines to the log thread; `worker` says whether it will park again.
fn hand_over(worker: bool) {
    let _ = BATCH.try_with(|batch| {
        let mut batch = batch.borrow_mut();
        batch.worker = worker;
        if let (false, Some(out)) = (batch.buf.is_empty(), ACCESS_OUT.get()) {
            flush(&mut batch.buf, out);
        }
    });
}

fn flush(buf: &mut Vec<u8>, out: &AccessOut) {
    // The writer queues the batch for the log thread; it cannot fail short of shutdown.
    let _ = out.writer.make_writer().write_all(buf);
    buf.clear();
}

/// One access line, newline included, as the text or JSON subscriber would write it.
fn format_line(
    buf: &mut Vec<u8>,
    json: bool,
    now: SystemTime,
    line: &AccessLine,
    status: StatusCode,
    latency: Duration,
) {
    let strings = [
        ("request_id", Some(line.request_id.to_str().unwrap_or(""))),
        ("trace_id", Some(line.trace_id.as_str())),
        ("method", Some(line.method.as_str())),
        ("path", Some(line.path.as_deref().unwrap_or("-"))),
        ("route", Some(line.route.as_deref().unwrap_or("-"))),
    ];
    let optional = [
        ("sub", line.sub.as_deref()),
        ("client_id", line.client_id.as_deref()),
        ("auth", line.auth.map(AuthMethod::as_str)),
        ("reason", line.reason.map(Reason::as_str)),
    ];
    // The two layouts differ only in their frame and separators: `,"name":` against ` name=`.
    let (before_name, after_name): (&[u8], &[u8]) = if json {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        rfc3339_micros(buf, now);
        buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
        (b",\"", b"\":")
    } else {
        rfc3339_micros(buf, now);
        push_all(buf, &[b"  INFO ", ACCESS_TARGET.as_bytes(), b": request"]);
        (b" ", b"=")
    };
    for (name, value) in strings.iter().chain(&optional) {
        if let Some(value) = value {
            push_all(buf, &[before_name, name.as_bytes(), after_name]);
            if is_plain(value) {
                push_all(buf, &[b"\"", value.as_bytes(), b"\""]);
            } else if json {
                let _ = serde_json::to_writer(&mut *buf, value);
            } else {
                // `{:?}`, as the subscriber writes a string field.
                let _ = write!(buf, "{value:?}");
            }
        }
        if *name == "route" {
            push_all(buf, &[before_name, b"status", after_name]);
            push_digits(buf, u64::from(status.as_u16()), 1);
            push_all(buf, &[before_name, b"latency_ms", after_name]);
            push_millis(buf, latency);
        }
    }
    if json {
        push_all(
            buf,
            &[b",\"target\":\"", ACCESS_TARGET.as_bytes(), b"\"}\n"],
        );
    } else {
        buf.push(b'\n');
    }
}

/// Printable ASCII without `"` or `\\`: quoted as is in both layouts, no escaping needed.
fn is_plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

fn push_all(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    for part in parts {
        buf.extend_from_slice(part);
    }
}

/// `n` in decimal, zero-padded to at least `width` digits (the line is written on every
/// request, so without `fmt`'s machinery).
fn push_digits(buf: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while n > 0 || digits.len() - i < width.max(1) {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Milliseconds with three decimals, rounded to the microsecond: `1.826`.
fn push_millis(buf: &mut Vec<u8>, latency: Duration) {
    let micros = latency.as_micros() + u128::from(latency.subsec_nanos() % 1000 >= 500);
    let micros = u64::try_from(micros).unwrap_or(u64::MAX);
    push_digits(buf, micros / 1000, 1);
    buf.push(b'.');
    push_digits(buf, micros % 1000, 3);
}

/// `2026-11-25T16:23:09.279854Z`, the subscriber's timestamp format.
fn rfc3339_micros(buf: &mut Vec<u8>, now: SystemTime) {
    /// The last second written on this thread, as text: it changes once a second, not per line.
    type Second = (u64, [u8; SECOND_LEN]);
    const SECOND_LEN: usize = "2026-11-25T16:23:09".len();
    thread_local! {
        static LAST: Cell<Second> = const { Cell::new((u64::MAX, [0; SECOND_LEN])) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    match LAST.with(Cell::get) {
        (last, text) if last == secs => buf.extend_from_slice(&text),
        _ => {
            let start = buf.len();
            push_date_time(buf, secs);
            if let Some(Ok(text)) = buf.get(start..).map(<[u8; SECOND_LEN]>::try_from) {
                LAST.with(|last| last.set((secs, text)));
            }
        }
    }
    buf.push(b'.');
    push_digits(buf, u64::from(since.subsec_micros()), 6);
    buf.push(b'Z');
}

/// `2026-11-25T16:23:09` for `secs` since the epoch.
fn push_date_time(buf: &mut Vec<u8>, secs: u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    push_digits(buf, year, 4);
    for (sep, value) in [
        (b'-', month),
        (b'-', day),
        (b'T', rem / 3600),
        (b':', rem / 60 % 60),
        (b':', rem % 60),
    ] {
        buf.push(sep);
        push_digits(buf, value, 2);
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn sample() -> AccessLine {
        let trace = crate::telemetry::trace::parse_traceparent(TRACE).unwrap();
        let mut line = AccessLine::new(
            HeaderValue::from_static("abc-1"),
            trace.trace_id.to_hex(),
            Method::GET,
        );
        line.path = Some("/orders/7".into());
        line.route = Some("orders".into());
        line.sub = Some("alice\n2026-01-01T00:00:00.000000Z  INFO forged".into());
        line.auth = Some(AuthMethod::Jwt);
        line
    }

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, micros * 1000)
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00.000042Z"),
            (951_782_400, "2000-02-29T00:00:00.000042Z"),
            (1_795_623_363, "2026-11-25T16:16:03.000042Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000042Z"),
        ] {
            let mut buf = Vec::new();
            rfc3339_micros(&mut buf, at(secs, 42));
            assert_eq!(String::from_utf8(buf).unwrap(), want);
        }
    }

    #[test]
    fn a_remembered_second_is_only_reused_within_that_second() {
        let line = |secs, micros| {
            let mut buf = b"x".to_vec();
            rfc3339_micros(&mut buf, at(secs, micros));
            String::from_utf8(buf).unwrap()
        };
        for _ in 0..2 {
            assert_eq!(line(1_795_623_363, 1), "x2026-11-25T16:16:03.000001Z");
            assert_eq!(line(1_795_623_363, 999_999), "x2026-11-25T16:16:03.999999Z");
            assert_eq!(line(1_795_623_364, 0), "x2026-11-25T16:16:04.000000Z");
            assert_eq!(line(0, 7), "x1970-01-01T00:00:00.000007Z");
        }
        // A year past 9999 is longer than the remembered text; it is written, never cut.
        assert_eq!(line(253_402_300_800, 5), "x10000-01-01T00:00:00.000005Z");
        assert_eq!(line(253_402_300_800, 6), "x10000-01-01T00:00:00.000006Z");
    }

    #[test]
    fn text_line_has_every_field_and_escapes_what_could_forge_a_line() {
        let mut buf = Vec::new();
        let latency = Duration::from_micros(1_826);
        format_line(
            &mut buf,
            false,
            at(0, 0),
            &sample(),
            StatusCode::OK,
            latency,
        );
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000000Z  INFO tokengate::access: request request_id=\"abc-1\" \
             trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\" method=\"GET\" path=\"/orders/7\" route=\"orders\" status=200 latency_ms=1.826 \
             sub=\"alice\\n2026-01-01T00:00:00.000000Z  INFO forged\" auth=\"jwt\"\n"
        );
    }

    #[test]
    fn json_line_has_top_level_fields_and_numbers() {
        let mut buf = Vec::new();
        let latency = Duration::from_nanos(2_000_500);
        format_line(
            &mut buf,
            true,
            at(0, 7),
            &sample(),
            StatusCode::FORBIDDEN,
            latency,
        );
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000007Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], ACCESS_TARGET);
        assert_eq!(v["request_id"], "abc-1");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["status"], 403);
        assert_eq!(v["latency_ms"], 2.001);
        assert_eq!(v["sub"], "alice\n2026-01-01T00:00:00.000000Z  INFO forged");
        assert!(v.get("client_id").is_none() && v.get("reason").is_none());
    }

    #[test]
    fn numbers_are_written_like_display() {
        for n in [0u64, 7, 10, 99, 200, 503, 12_345, u64::MAX] {
            let mut buf = Vec::new();
            push_digits(&mut buf, n, 1);
            assert_eq!(String::from_utf8(buf).unwrap(), n.to_string());
        }
        for (latency, want) in [
            (Duration::ZERO, "0.000"),
            (Duration::from_nanos(499), "0.000"),
            (Duration::from_nanos(500), "0.001"),
            (Duration::from_micros(1_826), "1.826"),
            (Duration::from_secs(61), "61000.000"),
        ] {
            let mut buf = Vec::new();
            push_millis(&mut buf, latency);
            assert_eq!(String::from_utf8(buf).unwrap(), want);
        }
    }
}
