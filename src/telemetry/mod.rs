//! Logging: the subscriber (human-readable or JSON lines on stderr) and the one access line per
//! request (SPEC §8). Fields are top-level keys in JSON; `status` and `latency_ms` are numbers.
//! Tokens, secrets and keys never reach a log line: the access line is built from typed fields
//! that cannot hold them.

mod access;
mod log_span;
pub mod metrics;
pub mod trace;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

pub use access::{access, flush_on_park, flush_on_stop, AccessLine, ACCESS_TARGET};
pub use log_span::LogSpan;
pub use metrics::{Metrics, MetricsOptions, RouteMetrics};

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
    let directives = std::env::var("TOKENGATE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let json = std::env::var("TOKENGATE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let access_writer = writer.clone();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    // `span`: the event's innermost span — inside a request the request's (`request_id`, also in
    // tasks the request spawns), outside one the connection's (`peer`); `spans`: the whole
    // chain, so a request's events name its peer too. The human format prints the chain as
    // `conn{listener peer}:request{request_id}`.
    let fmt = match json {
        true => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
        false => fmt.boxed(),
    };
    // A plain level (the usual case) is a static filter: an `EnvFilter` also does per-span
    // bookkeeping on every span enter and exit.
    let (level, env) = match directives.trim().parse::<LevelFilter>() {
        Ok(level) => (Some(level), None),
        Err(_) => (
            None,
            Some(EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))),
        ),
    };
    // The request span is entered around each event only (`log_span`). A second init (tests)
    // keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(log_span::EnterRequestSpan)
        .with(fmt)
        .with(log_span::ExitRequestSpan)
        .with(level)
        .with(env)
        .try_init();
    if installed.is_ok() && !ansi {
        // Access lines are formatted by `access` in this subscriber's layout (a coloured
        // terminal leaves them to the subscriber).
        let _ = access::ACCESS_OUT.set(access::AccessOut {
            writer: access_writer,
            json,
        });
    }
    guard
}
