//! The span processor between the request path and the OTLP exporter: a bounded queue and one
//! worker thread that posts batches, counting every span that does not make it (SPEC §7
//! `tokengate_spans_dropped_total`).
//!
//! Why not the SDK's `BatchSpanProcessor`: it does the same queueing but keeps its drop count
//! private, and SPEC wants drops counted. The shape is the same as the SDK's (and STACK-NOTES B3):
//! - [`SpanQueue::on_end`] runs on the thread that ends a span (a runtime worker): one
//!   `try_send`, never a wait. A full queue, or a queue already shut down, drops the span and
//!   counts it.
//! - The worker (`tokengate-otlp`, a plain thread: the exporter's reqwest client is the blocking
//!   one, which must not run on a runtime thread) sleeps on a separate control channel, never on
//!   the span queue: a span sent to a queue with a sleeping receiver would cost the request
//!   thread a futex wake-up (a system call) per span. It is woken once per `batch` spans, by
//!   its `delay` timer, or for a flush or shutdown, and then drains the queue, posting batches of
//!   at most `batch`. A post that fails (collector down, slow beyond `timeout`, an error status)
//!   drops its batch, counted; the log says so once when exporting starts failing and once when
//!   it recovers, not per batch.
//! - [`SpanQueue::shutdown_with_timeout`] posts what is queued and waits at most its timeout; what
//!   is still pending then is counted as dropped. It blocks, so callers run it off the runtime
//!   (`Tracing::shutdown` uses `spawn_blocking`).
//!
//! Left to others: building spans (`export.rs`), what the exporter sends (opentelemetry-otlp).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

use crate::telemetry::metrics::Metrics;

/// Sizes and times of the export queue. The defaults suit production; tests shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportLimits {
    /// Spans waiting for the worker; one more is dropped (the SDK's default, 2048).
    pub queue: usize,
    /// Spans per POST (the SDK's default, 512).
    pub batch: usize,
    /// Longest a span waits for a batch to fill before it is posted anyway.
    pub delay: Duration,
    /// Longest one POST may take (connecting included) before its batch is dropped.
    pub timeout: Duration,
}

impl Default for ExportLimits {
    fn default() -> Self {
        ExportLimits {
            queue: 2048,
            batch: 512,
            delay: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What the queue and the worker share: the counts.
#[derive(Debug)]
pub(super) struct Counts {
    /// Accepted by `on_end` and not yet posted or dropped.
    pending: AtomicU64,
    dropped: AtomicU64,
    metrics: Option<Arc<Metrics>>,
}

impl Counts {
    pub(super) fn new(metrics: Option<Arc<Metrics>>) -> Counts {
        Counts {
            pending: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            metrics,
        }
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn drop_spans(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics.span_dropped(n);
        }
    }

    /// `n` spans left the queue (posted or failed): how many of them were still counted as
    /// pending. Fewer than `n` only after a shutdown gave up on them (and counted them).
    fn settle(&self, n: u64) -> u64 {
        let before = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(n))
            })
            .unwrap_or_default();
        before.min(n)
    }
}

/// What wakes the worker (spans themselves travel on their own channel).
enum Control {
    /// `batch` spans are waiting.
    Batch,
    /// Post what is queued, then answer.
    Flush(SyncSender<()>),
    /// Post what is queued, shut the exporter down, answer and stop.
    Shutdown(SyncSender<()>),
}

/// Control messages in flight at most: one `Batch`, plus flushes and the shutdown.
const CONTROL_SLOTS: usize = 16;

/// The processor the tracer provider hands ended spans to.
pub(super) struct SpanQueue {
    /// Boxed: the channel's slots are allocated up front, and a span is 350 bytes.
    spans: SyncSender<Box<SpanData>>,
    control: SyncSender<Control>,
    /// A `Batch` message is on its way and not yet taken: no need for another.
    batch_signalled: Arc<AtomicBool>,
    /// Spans that make a batch worth waking the worker for.
    batch: u64,
    /// Set by shutdown: spans ended later are dropped at once.
    closed: AtomicBool,
    counts: Arc<Counts>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// How long `force_flush` waits.
    flush_wait: Duration,
}

impl std::fmt::Debug for SpanQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanQueue")
            .field("closed", &self.closed)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl SpanQueue {
    /// Starts the worker thread that owns `exporter`.
    pub(super) fn start<E>(
        exporter: E,
        limits: ExportLimits,
        counts: Arc<Counts>,
    ) -> Result<SpanQueue, String>
    where
        E: SpanExporter + 'static,
    {
        let limits = ExportLimits {
            queue: limits.queue.max(1),
            batch: limits.batch.clamp(1, limits.queue.max(1)),
            ..limits
        };
        let (spans, spans_rx) = sync_channel(limits.queue);
        let (control, control_rx) = sync_channel(CONTROL_SLOTS);
        let batch_signalled = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            spans: spans_rx,
            control: control_rx,
            batch_signalled: Arc::clone(&batch_signalled),
            counts: Arc::clone(&counts),
            limits,
        };
        let worker = thread::Builder::new()
            .name("tokengate-otlp".to_owned())
            .spawn(move || worker.run(exporter))
            .map_err(|e| format!("cannot start the span export thread: {e}"))?;
        Ok(SpanQueue {
            spans,
            control,
            batch_signalled,
            batch: limits.batch as u64,
            closed: AtomicBool::new(false),
            counts,
            worker: Mutex::new(Some(worker)),
            flush_wait: limits.timeout.saturating_add(limits.timeout),
        })
    }

    /// Sends a control message and waits for its answer, both within `wait`.
    fn request(
        &self,
        make: impl FnOnce(SyncSender<()>) -> Control,
        wait: Duration,
    ) -> OTelSdkResult {
        let deadline = after(wait);
        let (done_tx, done_rx) = sync_channel(1);
        let mut msg = make(done_tx);
        // A busy worker takes its messages after its current post: retry until there is room
        // or time is up.
        loop {
            match self.control.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return Err(OTelSdkError::Timeout(wait));
                    }
                    msg = back;
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(wait))
    }
}

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.closed.load(Ordering::Relaxed) {
            self.counts.drop_spans(1);
            return;
        }
        // Counted before it can reach the worker, so the worker never settles it first.
        let pending = self.counts.pending.fetch_add(1, Ordering::Relaxed) + 1;
        if self.spans.try_send(Box::new(span)).is_err() {
            self.counts.settle(1);
            self.counts.drop_spans(1);
            return;
        }
        // A load first: the swap (exclusive access to the cache line) only once per batch.
        if pending >= self.batch
            && !self.batch_signalled.load(Ordering::Relaxed)
            && !self.batch_signalled.swap(true, Ordering::Relaxed)
            && self.control.try_send(Control::Batch).is_err()
        {
            self.batch_signalled.store(false, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        if self.closed.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        self.request(Control::Flush, self.flush_wait)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.closed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        match self.request(Control::Shutdown, timeout) {
            Ok(()) => {
                let worker = self
                    .worker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                if let Some(worker) = worker {
                    let _ = worker.join();
                }
                Ok(())
            }
            Err(e) => {
                // The worker is stuck on a slow collector: what it still holds is lost (the
                // thread is left to finish or die with the process).
                let lost = self.counts.pending.swap(0, Ordering::Relaxed);
                self.counts.drop_spans(lost);
                if lost > 0 {
                    tracing::warn!(
                        spans = lost,
                        "span export did not finish within {timeout:?}; spans dropped"
                    );
                }
                Err(e)
            }
        }
    }
}

/// The worker thread's state: the receiving ends and the counts.
struct Worker {
    spans: Receiver<Box<SpanData>>,
    control: Receiver<Control>,
    batch_signalled: Arc<AtomicBool>,
    counts: Arc<Counts>,
    limits: ExportLimits,
}

impl Worker {
    /// Sleeps until there is something to post, posts it; until shut down or disconnected.
    fn run<E: SpanExporter>(self, mut exporter: E) {
        // The exporter's own HTTP calls must never produce spans of their own.
        let _quiet = opentelemetry::Context::enter_telemetry_suppressed_scope();
        let mut failing = false;
        let mut due = after(self.limits.delay);
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            let message = self.control.recv_timeout(wait);
            if matches!(message, Ok(Control::Batch)) {
                self.batch_signalled.store(false, Ordering::Relaxed);
            }
            self.drain(&exporter, &mut failing);
            due = after(self.limits.delay);
            match message {
                Ok(Control::Batch) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Control::Flush(done)) => {
                    let _ = done.send(());
                }
                Ok(Control::Shutdown(done)) => {
                    let _ = exporter.shutdown();
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Posts everything queued now, `batch` spans at a time.
    fn drain<E: SpanExporter>(&self, exporter: &E, failing: &mut bool) {
        loop {
            let batch: Vec<SpanData> = self
                .spans
                .try_iter()
                .take(self.limits.batch)
                .map(|span| *span)
                .collect();
            if batch.is_empty() {
                return;
            }
            let full = batch.len() == self.limits.batch;
            self.post(exporter, batch, failing);
            if !full {
                return;
            }
        }
    }

    fn post<E: SpanExporter>(&self, exporter: &E, batch: Vec<SpanData>, failing: &mut bool) {
        let n = batch.len() as u64;
        // The blocking client does its whole exchange inside the first poll.
        let result = block_on(exporter.export(batch));
        let settled = self.counts.settle(n);
        match result {
            Ok(()) => {
                if *failing {
                    tracing::info!("span export recovered");
                    *failing = false;
                }
            }
            Err(e) => {
                self.counts.drop_spans(settled);
                if *failing {
                    tracing::debug!(spans = n, "span export failed again: {e}");
                } else {
                    tracing::warn!(spans = n, "span export failed; spans are dropped: {e}");
                    *failing = true;
                }
            }
        }
    }
}

/// `wait` from now; a wait too long to represent is a year (an `Instant` sum would panic).
fn after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Runs a future to completion on this (non-runtime) thread.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}
