//! Unit tests of trace context propagation: the `traceparent` parser (every malformed case, the
//! forward-compatibility rules), continuing or starting a trace, `tracestate` bounds, ids, the
//! sampler, the call scope, and the export queue's drop accounting (with fake exporters).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanKind, Status};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};

use super::queue::{Counts, SpanQueue};
use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn tp(version: &str, trace: &str, span: &str, flags: &str) -> String {
    format!("{version}-{trace}-{span}-{flags}")
}

fn parse(text: &str) -> Result<Parent, Malformed> {
    parse_traceparent(text.as_bytes())
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn never() -> Sampler {
    Sampler::ratio(0.0)
}

// --- the parser ------------------------------------------------------------------------------

#[test]
fn valid_version_00_is_parsed_with_its_sampled_flag() {
    let sampled = parse(&tp("00", TRACE, SPAN, "01")).unwrap();
    assert_eq!(sampled.trace_id.to_string(), TRACE);
    assert_eq!(sampled.span_id.to_string(), SPAN);
    assert!(sampled.sampled);
    let unsampled = parse(&tp("00", TRACE, SPAN, "00")).unwrap();
    assert!(!unsampled.sampled);
}

#[test]
fn only_the_sampled_bit_of_the_flags_counts() {
    assert!(parse(&tp("00", TRACE, SPAN, "09")).unwrap().sampled);
    assert!(!parse(&tp("00", TRACE, SPAN, "fe")).unwrap().sampled);
}

#[test]
fn wrong_lengths_are_malformed() {
    let cases = [
        String::new(),
        "0".to_owned(),
        tp("00", &TRACE[1..], SPAN, "01"),
        tp("00", &format!("{TRACE}0"), SPAN, "01"),
        tp("00", TRACE, &SPAN[1..], "01"),
        tp("00", TRACE, SPAN, "1"),
        tp("00", TRACE, SPAN, "011"),
        // Version 00 has no further fields.
        format!(
            "{}-what-the-future-will-be-like",
            tp("00", TRACE, SPAN, "01")
        ),
        format!("{} ", tp("00", TRACE, SPAN, "01")),
    ];
    for case in &cases {
        assert!(parse(case).is_err(), "{case:?} was accepted");
    }
    assert_eq!(parse(&cases[2]), Err(Malformed::Length));
    assert_eq!(parse(&cases[7]), Err(Malformed::Length));
}

#[test]
fn non_lowercase_hex_is_malformed() {
    let upper_trace = TRACE.to_ascii_uppercase();
    let upper_span = SPAN.replace('f', "F");
    let cases = [
        tp("00", &upper_trace, SPAN, "01"),
        tp("00", TRACE, &upper_span, "01"),
        tp("00", TRACE, SPAN, "0A"),
        tp("00", &TRACE.replace('4', "g"), SPAN, "01"),
        tp("00", TRACE, &SPAN.replace('0', " "), "01"),
        tp("00", TRACE, SPAN, ".1"),
    ];
    for case in &cases {
        assert_eq!(parse(case), Err(Malformed::NotHex), "{case:?}");
    }
    assert_eq!(
        parse(&tp("0A", TRACE, SPAN, "01")),
        Err(Malformed::Version),
        "an upper-case version"
    );
    assert_eq!(parse(&tp("0x", TRACE, SPAN, "01")), Err(Malformed::Version));
}

#[test]
fn all_zero_ids_are_malformed() {
    let zero_trace = "0".repeat(32);
    let zero_span = "0".repeat(16);
    assert_eq!(
        parse(&tp("00", &zero_trace, SPAN, "01")),
        Err(Malformed::ZeroTraceId)
    );
    assert_eq!(
        parse(&tp("00", TRACE, &zero_span, "01")),
        Err(Malformed::ZeroSpanId)
    );
    assert_eq!(
        parse(&tp("cc", &zero_trace, SPAN, "01")),
        Err(Malformed::ZeroTraceId),
        "in later versions too"
    );
}

#[test]
fn version_ff_is_malformed() {
    assert_eq!(parse(&tp("ff", TRACE, SPAN, "01")), Err(Malformed::Version));
    assert_eq!(
        parse(&format!("{}-x", tp("ff", TRACE, SPAN, "01"))),
        Err(Malformed::Version)
    );
}

#[test]
fn misplaced_separators_are_malformed() {
    let good = tp("00", TRACE, SPAN, "01");
    for at in [2, 35, 52] {
        let mut bytes = good.clone().into_bytes();
        bytes[at] = b'_';
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(parse(&text), Err(Malformed::Separator), "{text}");
    }
}

#[test]
fn a_later_version_is_read_by_the_forward_compatibility_rules() {
    let plain = parse(&tp("cc", TRACE, SPAN, "01")).unwrap();
    assert_eq!(plain.trace_id.to_string(), TRACE);
    assert_eq!(plain.span_id.to_string(), SPAN);
    assert!(plain.sampled);
    // Unknown trailing fields are ignored, and so are unknown flags.
    let extended = parse(&format!(
        "{}-what-the-future-will-be-like",
        tp("cc", TRACE, SPAN, "08")
    ))
    .unwrap();
    assert_eq!(extended.span_id.to_string(), SPAN);
    assert!(!extended.sampled);
    // After the flags: the end or a dash, nothing else.
    assert_eq!(
        parse(&format!(
            "{}.what-the-future-will-be-like",
            tp("cc", TRACE, SPAN, "01")
        )),
        Err(Malformed::Separator)
    );
    // Shorter than version 00 is never enough.
    assert_eq!(parse(&tp("cc", TRACE, SPAN, "0")), Err(Malformed::Length));
    // The fields keep their rules.
    assert_eq!(
        parse(&tp("cc", &TRACE.to_ascii_uppercase(), SPAN, "01")),
        Err(Malformed::NotHex)
    );
}

// --- continuing or starting a trace ----------------------------------------------------------

#[test]
fn a_valid_traceparent_is_continued_as_our_parent() {
    let h = headers(&[("traceparent", &tp("00", TRACE, SPAN, "01"))]);
    let ctx = TraceContext::from_headers(&h, &never());
    assert_eq!(ctx.trace_id().to_string(), TRACE);
    assert_eq!(ctx.trace_id_hex().as_str(), TRACE);
    assert_eq!(ctx.parent().map(|p| p.to_string()).as_deref(), Some(SPAN));
    assert!(ctx.parent_is_remote());
    assert_ne!(ctx.span_id().to_string(), SPAN, "our span has its own id");
    assert!(ctx.sampled(), "the caller's flag wins over the sampler");
}

#[test]
fn an_unsampled_caller_stays_unsampled() {
    let h = headers(&[("traceparent", &tp("00", TRACE, SPAN, "00"))]);
    let ctx = TraceContext::from_headers(&h, &Sampler::always());
    assert!(!ctx.sampled());
    assert!(ctx.traceparent().to_str().unwrap().ends_with("-00"));
}

#[test]
fn a_malformed_or_missing_traceparent_starts_a_new_trace() {
    let bad = tp("00", &TRACE.to_ascii_uppercase(), SPAN, "01");
    for h in [
        HeaderMap::new(),
        headers(&[("traceparent", &bad), ("tracestate", "vendor=1")]),
    ] {
        let ctx = TraceContext::from_headers(&h, &Sampler::always());
        assert_ne!(ctx.trace_id().to_string(), TRACE.to_ascii_lowercase());
        assert_eq!(ctx.parent(), None);
        assert!(ctx.sampled());
        assert_eq!(
            ctx.tracestate(),
            None,
            "tracestate without its parent is dropped"
        );
    }
}

#[test]
fn two_traceparent_fields_start_a_new_trace() {
    let h = headers(&[
        ("traceparent", &tp("00", TRACE, SPAN, "01")),
        ("traceparent", &tp("00", TRACE, "1111111111111111", "01")),
    ]);
    let ctx = TraceContext::from_headers(&h, &Sampler::always());
    assert_ne!(ctx.trace_id().to_string(), TRACE);
    assert_eq!(ctx.parent(), None);
}

#[test]
fn new_traces_follow_the_sampler() {
    let never = TraceContext::from_headers(&HeaderMap::new(), &never());
    assert!(!never.sampled());
    assert!(never.traceparent().to_str().unwrap().ends_with("-00"));
    let always = TraceContext::from_headers(&HeaderMap::new(), &Sampler::always());
    assert!(always.sampled());
}

#[test]
fn the_outgoing_traceparent_names_our_span_as_parent() {
    let h = headers(&[("traceparent", &tp("00", TRACE, SPAN, "01"))]);
    let ctx = TraceContext::from_headers(&h, &never());
    let out = ctx.traceparent();
    let text = out.to_str().unwrap();
    assert_eq!(text.len(), 55);
    assert_eq!(
        text,
        format!("00-{TRACE}-{}-01", ctx.span_id()),
        "version 00, same trace, our span, the sampled flag"
    );
    let back = parse_traceparent(out.as_bytes()).unwrap();
    assert_eq!(back.span_id, ctx.span_id());
}

#[test]
fn a_child_is_a_new_span_below_its_parent() {
    let h = headers(&[
        ("traceparent", &tp("00", TRACE, SPAN, "01")),
        ("tracestate", "a=1"),
    ]);
    let request = TraceContext::from_headers(&h, &never());
    let call = request.child();
    assert_eq!(call.trace_id(), request.trace_id());
    assert_eq!(call.parent(), Some(request.span_id()));
    assert!(!call.parent_is_remote());
    assert_ne!(call.span_id(), request.span_id());
    assert_eq!(call.sampled(), request.sampled());
    assert_eq!(call.tracestate(), request.tracestate());
}

#[test]
fn inject_replaces_what_the_client_sent() {
    let incoming = headers(&[
        ("traceparent", &tp("00", TRACE, SPAN, "01")),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]);
    let ctx = TraceContext::from_headers(&incoming, &never());
    let mut outgoing = incoming.clone();
    ctx.inject(&mut outgoing);
    assert_eq!(outgoing.get_all("traceparent").iter().count(), 1);
    assert_eq!(outgoing["traceparent"], ctx.traceparent());
    assert_eq!(outgoing["tracestate"], "congo=t61rcWkgMzE");

    // A new trace has no tracestate to add (header hygiene removed the client's).
    let fresh = TraceContext::new_root(&never());
    let mut scrubbed = headers(&[]);
    fresh.inject(&mut scrubbed);
    assert!(scrubbed.get("tracestate").is_none());
    assert_eq!(scrubbed["traceparent"], fresh.traceparent());
}

// --- tracestate ------------------------------------------------------------------------------

fn state_of(values: &[&str]) -> Option<String> {
    let traceparent = tp("00", TRACE, SPAN, "01");
    let mut pairs = vec![("traceparent", traceparent.as_str())];
    pairs.extend(values.iter().map(|v| ("tracestate", *v)));
    TraceContext::from_headers(&headers(&pairs), &never())
        .tracestate()
        .map(|v| v.to_str().unwrap().to_owned())
}

#[test]
fn tracestate_is_passed_on_byte_for_byte() {
    let odd = "rojo=00f067aa0ba902b7 ,  congo=t61rcWkgMzE,,x@y=z";
    assert_eq!(state_of(&[odd]).as_deref(), Some(odd));
}

#[test]
fn several_tracestate_fields_are_joined_in_order() {
    assert_eq!(
        state_of(&["a=1,b=2", "c=3"]).as_deref(),
        Some("a=1,b=2,c=3")
    );
}

#[test]
fn an_absent_or_empty_tracestate_is_not_passed_on() {
    assert_eq!(state_of(&[]), None);
    assert_eq!(state_of(&[""]), None);
    assert_eq!(state_of(&[" , ,"]), None);
}

#[test]
fn an_oversized_tracestate_loses_long_members_first_then_from_the_end() {
    let long = format!("long={}", "x".repeat(200));
    let members: Vec<String> = (0..60)
        .map(|i| format!("k{i:02}={}", "v".repeat(20)))
        .collect();
    let mut all = vec![members[0].clone(), long.clone()];
    all.extend(members[1..].iter().cloned());
    let cut = state_of(&[&all.join(",")]).unwrap();
    assert!(cut.len() <= MAX_TRACESTATE, "{}", cut.len());
    assert!(!cut.contains("long="), "the long member goes first");
    let kept: Vec<&str> = cut.split(',').collect();
    assert_eq!(kept[0], members[0], "the front is kept");
    assert_eq!(
        kept,
        members[..kept.len()]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "whole members, in order, from the front"
    );
    assert!(kept.len() <= 32);
}

#[test]
fn a_tracestate_of_exactly_the_limit_is_kept_whole() {
    let value = format!("k={}", "v".repeat(MAX_TRACESTATE - 2));
    assert_eq!(state_of(&[&value]), Some(value));
}

// --- ids and the sampler ---------------------------------------------------------------------

#[test]
fn ids_are_unique_and_never_zero() {
    let mut traces = HashSet::new();
    let mut spans = HashSet::new();
    for _ in 0..20_000 {
        let t = TraceId::random();
        let s = SpanId::random();
        assert_ne!(t.to_bytes(), [0; 16]);
        assert_ne!(s.to_bytes(), [0; 8]);
        assert!(traces.insert(t));
        assert!(spans.insert(s));
    }
}

#[test]
fn threads_draw_different_ids() {
    let draw = || (0..1000).map(|_| SpanId::random()).collect::<Vec<_>>();
    let a = std::thread::spawn(draw).join().unwrap();
    let b = std::thread::spawn(draw).join().unwrap();
    let a: HashSet<_> = a.into_iter().collect();
    assert!(b.iter().all(|id| !a.contains(id)));
}

#[test]
fn hex_forms_are_lower_case() {
    let id = TraceId([0xab; 16]);
    assert_eq!(id.to_hex().as_str(), "ab".repeat(16));
    assert_eq!(SpanId([0x0f; 8]).to_string(), "0f".repeat(8));
}

#[test]
fn sampler_ratio_bounds_and_fraction() {
    let ids: Vec<TraceId> = (0..10_000).map(|_| TraceId::random()).collect();
    let count = |s: Sampler| ids.iter().filter(|id| s.samples(**id)).count();
    assert_eq!(count(Sampler::ratio(0.0)), 0);
    assert_eq!(count(Sampler::ratio(1.0)), ids.len());
    assert_eq!(count(Sampler::ratio(f64::NAN)), 0);
    let half = count(Sampler::ratio(0.5));
    assert!((4000..6000).contains(&half), "{half}");
    // The same id always gets the same answer.
    let s = Sampler::ratio(0.3);
    assert!(ids.iter().all(|id| s.samples(*id) == s.samples(*id)));
    // The id's low bits decide: smallest always in, largest always out.
    let low = TraceId([0; 16]);
    let high = TraceId([0xff; 16]);
    assert!(Sampler::ratio(0.01).samples(low));
    assert!(!Sampler::ratio(0.99).samples(high));
}

// --- the call scope --------------------------------------------------------------------------

#[tokio::test]
async fn calls_inside_a_request_scope_are_children_of_the_request() {
    let h = headers(&[("traceparent", &tp("00", TRACE, SPAN, "01"))]);
    let tracing = Tracing::disabled();
    let request = tracing.incoming(&h);
    let seen = scope(&tracing, request.clone(), None, async {
        assert_eq!(current().as_ref(), Some(&request));
        let call = Call::start(CallKind::Jwks);
        let mut out = HeaderMap::new();
        call.inject(&mut out);
        (call.trace().clone(), out)
    })
    .await;
    let (call, out) = seen;
    assert_eq!(call.trace_id(), request.trace_id());
    assert_eq!(call.parent(), Some(request.span_id()));
    assert_eq!(out["traceparent"], call.traceparent());
}

#[tokio::test]
async fn a_spawned_task_keeps_the_scope_only_when_wrapped() {
    let tracing = Tracing::disabled();
    let request = TraceContext::new_root(&Sampler::always());
    let (wrapped, bare) = scope(&tracing, request.clone(), None, async {
        let wrapped = tokio::spawn(in_current_scope(async {
            Call::start(CallKind::Userinfo).trace().clone()
        }));
        let bare = tokio::spawn(async { Call::start(CallKind::Userinfo).trace().clone() });
        (wrapped.await.unwrap(), bare.await.unwrap())
    })
    .await;
    assert_eq!(wrapped.parent(), Some(request.span_id()));
    assert_eq!(bare.parent(), None, "outside any scope: a new trace");
    assert_ne!(bare.trace_id(), request.trace_id());
}

#[tokio::test]
async fn background_calls_start_sampled_new_traces() {
    let telemetry = crate::config::Telemetry {
        otlp_endpoint: None,
        service_name: "t".to_owned(),
        sample_ratio: 0.0,
    };
    let tracing = Tracing::start(Some(&telemetry), None).unwrap();
    assert!(!tracing.exporting());
    let call = background(&tracing, async {
        Call::start(CallKind::Jwks).trace().clone()
    })
    .await;
    assert_eq!(call.parent(), None);
    assert!(!call.sampled(), "ratio 0.0 from the configuration");
    assert_eq!(current(), None);
}

// --- the export queue ------------------------------------------------------------------------

fn span_data(i: u64) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(TraceId::random().to_bytes()),
            opentelemetry::trace::SpanId::from_bytes((i + 1).to_be_bytes()),
            opentelemetry::trace::TraceFlags::SAMPLED,
            false,
            Default::default(),
        ),
        parent_span_id: opentelemetry::trace::SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Server,
        name: "s".into(),
        start_time: SystemTime::now(),
        end_time: SystemTime::now(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: Status::Unset,
        instrumentation_scope: Default::default(),
    }
}

/// Answers every export with `fail`, after waiting on `gate` (held by the test) if set.
#[derive(Debug, Clone, Default)]
struct FakeExporter {
    exported: Arc<AtomicUsize>,
    fail: bool,
    gate: Option<Arc<Mutex<()>>>,
}

impl SpanExporter for FakeExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Some(gate) = &self.gate {
            drop(gate.lock());
        }
        if self.fail {
            return Err(OTelSdkError::InternalFailure("collector down".into()));
        }
        self.exported.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(())
    }
}

fn limits(queue: usize, batch: usize) -> ExportLimits {
    ExportLimits {
        queue,
        batch,
        delay: Duration::from_secs(60),
        timeout: Duration::from_secs(1),
    }
}

#[test]
fn queued_spans_are_posted_in_batches_and_on_shutdown() {
    let exporter = FakeExporter::default();
    let exported = exporter.exported.clone();
    let counts = Arc::new(Counts::new(None));
    let queue = SpanQueue::start(exporter, limits(64, 4), counts.clone()).unwrap();
    for i in 0..10 {
        queue.on_end(span_data(i));
    }
    queue
        .shutdown_with_timeout(Duration::from_secs(10))
        .unwrap();
    assert_eq!(exported.load(Ordering::SeqCst), 10);
    assert_eq!(counts.dropped(), 0);
    // After shutdown a span is dropped, and counted.
    queue.on_end(span_data(11));
    assert_eq!(counts.dropped(), 1);
}

#[test]
fn a_failed_post_counts_its_batch_as_dropped() {
    let exporter = FakeExporter {
        fail: true,
        ..FakeExporter::default()
    };
    let metrics =
        crate::telemetry::metrics::Metrics::new(crate::telemetry::metrics::MetricsOptions {
            spans_dropped: true,
            shared_store: false,
        });
    let counts = Arc::new(Counts::new(Some(metrics.clone())));
    let queue = SpanQueue::start(exporter, limits(64, 4), counts.clone()).unwrap();
    for i in 0..7 {
        queue.on_end(span_data(i));
    }
    queue.force_flush().unwrap();
    assert_eq!(counts.dropped(), 7);
    assert!(
        metrics.encode().contains("tokengate_spans_dropped_total 7"),
        "{}",
        metrics.encode()
    );
    queue
        .shutdown_with_timeout(Duration::from_secs(10))
        .unwrap();
}

#[test]
fn a_stuck_exporter_never_blocks_on_end_and_shutdown_gives_up_in_time() {
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let exporter = FakeExporter {
        gate: Some(gate.clone()),
        ..FakeExporter::default()
    };
    let exported = exporter.exported.clone();
    let counts = Arc::new(Counts::new(None));
    let queue = SpanQueue::start(exporter, limits(8, 2), counts.clone()).unwrap();
    let n = 500;
    let started = Instant::now();
    for i in 0..n {
        queue.on_end(span_data(i));
    }
    // Generous: 500 `try_send`s take microseconds; a wait on the exporter would take forever.
    assert!(started.elapsed() < Duration::from_secs(5));
    // At most the queue, the batch being built and the one being posted are held.
    assert!(counts.dropped() >= n - 8 - 2 - 2, "{}", counts.dropped());

    let started = Instant::now();
    let result = queue.shutdown_with_timeout(Duration::from_millis(300));
    assert!(
        matches!(result, Err(OTelSdkError::Timeout(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing was exported: every span is counted as dropped, exactly once.
    drop(held);
    assert_eq!(counts.dropped(), n);
    std::thread::sleep(Duration::from_millis(50));
    let late = exported.load(Ordering::SeqCst) as u64;
    assert_eq!(counts.dropped(), n, "a late post is not counted again");
    assert!(late <= 12);
}
