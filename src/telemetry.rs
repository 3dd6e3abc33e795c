//! Logging: the subscriber (human-readable or JSON lines on stderr) and the one access line per
//! request (SPEC §8). Fields are top-level keys in JSON; `status` and `latency_ms` are numbers.
//! Tokens, secrets and keys never reach a log line: the access line is built from typed fields
//! that cannot hold them.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, StatusCode};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Level from `TOKENGATE_LOG`, else `RUST_LOG`, else `info`;
/// `TOKENGATE_LOG_FORMAT=json` for JSON lines. Lines are handed to a writer thread that batches
/// them into few `write`s, so a request never waits on stderr; keep the returned guard alive
/// until exit (dropping it flushes what is queued). Nothing is dropped: a full queue blocks.
pub fn init() -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("tokengate-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let filter = std::env::var("TOKENGATE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = std::env::var("TOKENGATE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    guard
}

/// What the access line needs, filled in as the request walks the phases.
#[derive(Debug)]
pub struct AccessLine {
    pub request_id: HeaderValue,
    pub method: Method,
    /// The normalized path, once known.
    pub path: Option<String>,
    pub route: Option<Arc<str>>,
    pub sub: Option<String>,
    pub client_id: Option<String>,
    /// `jwt`, `introspection`, `dpop`, or none.
    pub auth: Option<&'static str>,
    /// Why the request was rejected (or a note such as `userinfo_unavailable`).
    pub reason: Option<&'static str>,
}

impl AccessLine {
    pub fn new(request_id: HeaderValue, method: Method) -> Self {
        AccessLine {
            request_id,
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

pub fn access(line: &AccessLine, status: StatusCode, latency: Duration) {
    let latency_ms = (latency.as_secs_f64() * 1e6).round() / 1e3;
    tracing::info!(
        target: "tokengate::access",
        request_id = line.request_id.to_str().unwrap_or(""),
        method = line.method.as_str(),
        path = line.path.as_deref().unwrap_or("-"),
        route = line.route.as_deref().unwrap_or("-"),
        status = status.as_u16(),
        latency_ms,
        sub = line.sub.as_deref(),
        client_id = line.client_id.as_deref(),
        auth = line.auth,
        reason = line.reason,
        "request"
    );
}
