//! OTLP/HTTP span export (SPEC §8 "Traces") against a collector on 127.0.0.1: a small hyper
//! server that decodes each `ExportTraceServiceRequest` and keeps it. The spans are recorded
//! through `tokengate::telemetry::trace` as the gateway records them: the server span of a
//! synthetic request, its client spans (JWKS, userinfo, upstream), and a rejected request.
//!
//! Checked: the POST goes to `<otlp_endpoint>/v1/traces` as protobuf; the ids are the propagated
//! ones (the incoming trace id, the incoming span as the server span's parent, the injected
//! `traceparent` naming the client span); kinds, names and attributes; no attribute value holds
//! the token or a claim value (`sub`, `client_id`). A collector that accepts and never answers,
//! or none at all, never delays recording: spans are dropped and counted
//! (`tokengate_spans_dropped_total`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use tokengate::config::Telemetry;
use tokengate::reason::{AuthMethod, Reason};
use tokengate::telemetry::metrics::{Metrics, MetricsOptions};
use tokengate::telemetry::trace::{
    self, Call, CallKind, CallOutcome, ClientSpan, ExportLimits, ServerSpan, Tracing,
};
use tokengate::telemetry::AccessLine;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZS1zdWItN2YzYSJ9.c2lnbmF0dXJl";
const SUB: &str = "alice-sub-7f3a";
const CLIENT_ID: &str = "svc-billing-client";

/// What the collector received: one entry per POST.
#[derive(Debug, Clone)]
struct Post {
    path: String,
    content_type: Option<String>,
    request: ExportTraceServiceRequest,
}

/// An OTLP/HTTP collector on 127.0.0.1 that answers 200 and keeps every request.
struct Collector {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    task: JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let kept = posts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| receive(kept.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Collector { addr, posts, task }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    fn spans(&self) -> Vec<Span> {
        self.posts()
            .into_iter()
            .flat_map(|p| p.request.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }
}

async fn receive(
    posts: Arc<Mutex<Vec<Post>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let request = ExportTraceServiceRequest::decode(body).unwrap();
    posts.lock().unwrap().push(Post {
        path,
        content_type,
        request,
    });
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    Ok(Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(answer)))
        .unwrap())
}

/// A collector that accepts connections and never reads or answers.
struct HungCollector {
    addr: SocketAddr,
    accepted: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl Drop for HungCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HungCollector {
    async fn start() -> HungCollector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                held.push(tcp);
            }
        });
        HungCollector {
            addr,
            accepted,
            task,
        }
    }
}

fn telemetry(endpoint: String) -> Telemetry {
    Telemetry {
        otlp_endpoint: Some(endpoint),
        service_name: "tokengate-test".to_owned(),
        sample_ratio: 1.0,
    }
}

fn metrics() -> Arc<Metrics> {
    Metrics::new(MetricsOptions {
        spans_dropped: true,
        shared_store: false,
    })
}

fn dropped_metric(metrics: &Metrics) -> u64 {
    let text = metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix("tokengate_spans_dropped_total "))
        .unwrap_or_else(|| panic!("no tokengate_spans_dropped_total in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}

/// Every attribute value as text, for the "no token, no claim" check.
fn values(attributes: &[KeyValue]) -> Vec<String> {
    attributes
        .iter()
        .filter_map(|kv| kv.value.as_ref().and_then(|v| v.value.as_ref()))
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn access_line(route: &str, auth: Option<AuthMethod>, reason: Option<Reason>) -> AccessLine {
    let mut line = AccessLine::new(
        HeaderValue::from_static("req-1"),
        tokengate::telemetry::trace::TraceId::random().to_hex(),
        Method::GET,
    );
    line.path = Some("/orders/7".to_owned());
    line.route = Some(route.into());
    line.sub = Some(SUB.to_owned());
    line.client_id = Some(CLIENT_ID.to_owned());
    line.auth = auth;
    line.reason = reason;
    line
}

fn incoming_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        HeaderValue::from_str(&format!("00-{TRACE}-{PARENT}-01")).unwrap(),
    );
    h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
    );
    h
}

fn fast_limits() -> ExportLimits {
    ExportLimits {
        delay: Duration::from_millis(50),
        ..ExportLimits::default()
    }
}

#[tokio::test]
async fn spans_reach_the_collector_with_the_propagated_ids_and_no_token_or_claim() {
    let collector = Collector::start().await;
    let metrics = metrics();
    let tracing = Tracing::start_with(
        &telemetry(collector.base_url()),
        Some(metrics.clone()),
        fast_limits(),
    )
    .unwrap();
    assert!(tracing.exporting());

    // A forwarded request that continues the caller's trace: JWKS and userinfo calls made
    // through the scope (as the issuer client does), then the upstream call.
    let started = Instant::now();
    let request = tracing.incoming(&incoming_headers());
    let (jwks_sent, userinfo_sent) = trace::scope(&tracing, request.clone(), None, async {
        let mut sent = Vec::new();
        for (kind, status) in [(CallKind::Jwks, 200), (CallKind::Userinfo, 503)] {
            let call = Call::start(kind);
            let mut headers = HeaderMap::new();
            call.inject(&mut headers);
            sent.push(headers);
            let span = ClientSpan::new(&Method::GET, CallOutcome::Status(status))
                .server(Some("idp.example.com"), Some(443))
                .issuer("corp");
            call.finish(&span);
        }
        (sent[0].clone(), sent[1].clone())
    })
    .await;
    let upstream = request.child();
    let mut upstream_headers = HeaderMap::new();
    request.inject(&mut upstream_headers);
    tracing.client_span(
        &upstream,
        CallKind::Upstream,
        Duration::from_millis(3),
        &ClientSpan::new(&Method::GET, CallOutcome::Status(200))
            .server(Some("127.0.0.1"), Some(3000)),
    );
    let line = access_line("orders-read", Some(AuthMethod::Jwt), None);
    tracing.server_span(
        &request,
        started.elapsed(),
        &ServerSpan::from_access(&line, StatusCode::OK),
    );

    // A rejected request without a traceparent: a new trace, with the reason.
    let denied = tracing.incoming(&HeaderMap::new());
    let line = access_line(
        "orders-write",
        Some(AuthMethod::Jwt),
        Some(Reason::AccessDenied),
    );
    tracing.server_span(
        &denied,
        Duration::from_millis(1),
        &ServerSpan::from_access(&line, StatusCode::FORBIDDEN),
    );

    tracing.shutdown(Duration::from_secs(10)).await;

    let posts = collector.posts();
    assert!(!posts.is_empty(), "nothing was posted");
    for post in &posts {
        assert_eq!(post.path, "/v1/traces");
        assert_eq!(post.content_type.as_deref(), Some("application/x-protobuf"));
        let resource = post.request.resource_spans[0].resource.as_ref().unwrap();
        let service = resource
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref());
        assert_eq!(
            service,
            Some(&Value::StringValue("tokengate-test".to_owned()))
        );
    }
    let spans = collector.spans();
    assert_eq!(spans.len(), 5, "{spans:#?}");

    // The server span: our ids, the caller's span as parent.
    let server = spans
        .iter()
        .find(|s| hex(&s.span_id) == request.span_id().to_string())
        .expect("the server span");
    assert_eq!(hex(&server.trace_id), TRACE, "the incoming trace id");
    assert_eq!(hex(&server.parent_span_id), PARENT);
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(server.name, "GET orders-read");
    assert_eq!(text_attr(server, "http.request.method"), Some("GET"));
    assert_eq!(text_attr(server, "http.route"), Some("orders-read"));
    assert_eq!(int_attr(server, "http.response.status_code"), Some(200));
    assert_eq!(text_attr(server, "tokengate.auth"), Some("jwt"));
    assert_eq!(text_attr(server, "tokengate.reason"), None);
    assert_eq!(server.trace_state, "congo=t61rcWkgMzE");
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);

    // The upstream received our server span as its parent, in the same trace.
    assert_eq!(
        upstream_headers["traceparent"].to_str().unwrap(),
        format!("00-{TRACE}-{}-01", hex(&server.span_id))
    );
    assert_eq!(upstream_headers["tracestate"], "congo=t61rcWkgMzE");

    // Three client spans, children of the server span; each issuer call's traceparent named
    // its own span.
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == server.span_id)
        .collect();
    assert_eq!(children.len(), 3, "{children:#?}");
    for child in &children {
        assert_eq!(child.trace_id, server.trace_id);
        assert_eq!(child.kind, SpanKind::Client as i32);
    }
    let by_call = |call: &str| {
        *children
            .iter()
            .find(|s| text_attr(s, "tokengate.call") == Some(call))
            .unwrap_or_else(|| panic!("no {call} span"))
    };
    let jwks = by_call("jwks");
    assert_eq!(jwks.name, "jwks fetch");
    assert_eq!(
        jwks_sent["traceparent"].to_str().unwrap(),
        format!("00-{TRACE}-{}-01", hex(&jwks.span_id))
    );
    assert_eq!(text_attr(jwks, "server.address"), Some("idp.example.com"));
    assert_eq!(int_attr(jwks, "server.port"), Some(443));
    assert_eq!(text_attr(jwks, "tokengate.issuer"), Some("corp"));
    assert_eq!(int_attr(jwks, "http.response.status_code"), Some(200));
    let userinfo = by_call("userinfo");
    assert_eq!(
        userinfo_sent["traceparent"].to_str().unwrap(),
        format!("00-{TRACE}-{}-01", hex(&userinfo.span_id))
    );
    assert_eq!(text_attr(userinfo, "error.type"), Some("503"));
    let status = userinfo.status.as_ref().expect("status");
    assert_eq!(status.code, 2, "a failed call is an error span");
    let upstream_span = by_call("upstream");
    assert_eq!(hex(&upstream_span.span_id), upstream.span_id().to_string());

    // The rejected request: a root span of a new trace, with its reason.
    let rejected = spans
        .iter()
        .find(|s| hex(&s.span_id) == denied.span_id().to_string())
        .expect("the rejected request's span");
    assert!(rejected.parent_span_id.is_empty());
    assert_eq!(hex(&rejected.trace_id), denied.trace_id().to_string());
    assert_ne!(hex(&rejected.trace_id), TRACE);
    assert_eq!(
        text_attr(rejected, "tokengate.reason"),
        Some("access_denied")
    );
    assert_eq!(int_attr(rejected, "http.response.status_code"), Some(403));

    // Nothing secret anywhere: no attribute value is, or contains, the token or a claim value.
    for span in &spans {
        for value in values(&span.attributes) {
            for secret in [TOKEN, SUB, CLIENT_ID] {
                assert!(
                    !value.contains(secret),
                    "span {:?} has attribute value {value:?} holding {secret:?}",
                    span.name
                );
            }
        }
    }
    assert_eq!(tracing.dropped(), 0);
    assert_eq!(dropped_metric(&metrics), 0);
}

#[tokio::test]
async fn unsampled_traces_are_not_exported() {
    let collector = Collector::start().await;
    let tracing = Tracing::start_with(
        &Telemetry {
            sample_ratio: 0.0,
            ..telemetry(collector.base_url())
        },
        None,
        fast_limits(),
    )
    .unwrap();
    let line = access_line("r", None, None);
    // A new trace (ratio 0.0) and a caller that did not sample.
    let mut unsampled = HeaderMap::new();
    unsampled.insert(
        "traceparent",
        HeaderValue::from_str(&format!("00-{TRACE}-{PARENT}-00")).unwrap(),
    );
    for headers in [HeaderMap::new(), unsampled] {
        let ctx = tracing.incoming(&headers);
        assert!(!ctx.sampled());
        tracing.server_span(
            &ctx,
            Duration::ZERO,
            &ServerSpan::from_access(&line, StatusCode::OK),
        );
    }
    // A sampled caller is honoured although the ratio is 0.0.
    let sampled = tracing.incoming(&incoming_headers());
    tracing.server_span(
        &sampled,
        Duration::ZERO,
        &ServerSpan::from_access(&line, StatusCode::OK),
    );
    tracing.shutdown(Duration::from_secs(10)).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(hex(&spans[0].trace_id), TRACE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collector_never_delays_recording_and_drops_are_counted() {
    let collector = HungCollector::start().await;
    let metrics = metrics();
    let limits = ExportLimits {
        queue: 64,
        batch: 16,
        delay: Duration::from_millis(20),
        // Long, so a recording path that waited on the collector would take seconds per span.
        timeout: Duration::from_secs(20),
    };
    let tracing = Tracing::start_with(
        &telemetry(format!("http://{}", collector.addr)),
        Some(metrics.clone()),
        limits,
    )
    .unwrap();
    let line = access_line("orders-read", Some(AuthMethod::Jwt), None);

    // Let the exporter reach the collector and get stuck on its first batch.
    let first = tracing.incoming(&incoming_headers());
    tracing.server_span(
        &first,
        Duration::ZERO,
        &ServerSpan::from_access(&line, StatusCode::OK),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while *collector.accepted.lock().unwrap() == 0 {
        assert!(Instant::now() < deadline, "the exporter never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let n: u64 = 3000;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 1..n {
        let one = Instant::now();
        let ctx = tracing.incoming(&incoming_headers());
        tracing.server_span(
            &ctx,
            Duration::ZERO,
            &ServerSpan::from_access(&line, StatusCode::OK),
        );
        slowest = slowest.max(one.elapsed());
        // Checked inside the loop, so a path that blocks fails after one stuck POST, not 3000.
        assert!(
            slowest < Duration::from_secs(2),
            "one record took {slowest:?}"
        );
    }
    let total = started.elapsed();
    // Generous slack: a record takes microseconds; blocking on the collector would take 20 s.
    assert!(
        total < Duration::from_secs(10),
        "{n} records took {total:?}"
    );
    // Held at most: the queue, the batch being built, the batch stuck in the POST.
    let held = 64 + 16 + 16;
    assert!(
        tracing.dropped() >= n - held,
        "dropped {} of {n}",
        tracing.dropped()
    );
    assert_eq!(dropped_metric(&metrics), tracing.dropped());

    // Shutdown waits a bounded time, then counts what it could not post.
    let stopping = Instant::now();
    tracing.shutdown(Duration::from_millis(500)).await;
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(
        tracing.dropped(),
        n,
        "every span dropped, each counted once"
    );
    assert_eq!(dropped_metric(&metrics), n);
}

#[tokio::test]
async fn an_absent_collector_only_drops_spans() {
    // A port that was just free: connections are refused.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let metrics = metrics();
    let tracing = Tracing::start_with(
        &telemetry(format!("http://{addr}")),
        Some(metrics.clone()),
        fast_limits(),
    )
    .unwrap();
    let line = access_line("r", None, Some(Reason::MissingToken));
    for _ in 0..10 {
        let ctx = tracing.incoming(&HeaderMap::new());
        tracing.server_span(
            &ctx,
            Duration::ZERO,
            &ServerSpan::from_access(&line, StatusCode::UNAUTHORIZED),
        );
    }
    tracing.shutdown(Duration::from_secs(10)).await;
    assert_eq!(tracing.dropped(), 10);
    assert_eq!(dropped_metric(&metrics), 10);
}

/// End to end through the proxy: an incoming `traceparent` is continued, the upstream receives
/// our span as parent, and the collector gets the server span (the proxy's `stop` flushes it).
#[tokio::test]
async fn proxied_request_continues_the_trace_and_exports_its_span() {
    let collector = Collector::start().await;
    let echo = support::echo::Echo::start().await;
    let toml = support::config(
        echo.addr,
        &format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"tokengate-e2e\"\n\n\
             [[route]]\nid = \"open\"\npath_prefix = \"/\"\nauth = \"public\"\n",
            collector.base_url()
        ),
    );
    let proxy = support::Proxy::start(&toml).await;
    let answer = support::get(
        &proxy.url("/hello"),
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = echo.seen();
    let sent = seen[0].header("traceparent").expect("traceparent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[1], TRACE);
    assert_ne!(parts[2], PARENT, "the upstream's parent is our span");
    assert_eq!(seen[0].header("tracestate"), Some("congo=t61rcWkgMzE"));
    proxy.stop().await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let server = loop {
        let found = collector
            .spans()
            .into_iter()
            .find(|s| s.kind == SpanKind::Server as i32);
        if let Some(span) = found {
            break span;
        }
        assert!(Instant::now() < deadline, "no server span exported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(hex(&server.trace_id), TRACE);
    assert_eq!(hex(&server.parent_span_id), PARENT);
    assert_eq!(hex(&server.span_id), parts[2]);
    assert_eq!(text_attr(&server, "http.route"), Some("open"));
}

/// The request's calls are its children: the userinfo call (an issuer call) and the upstream
/// call are exported as CLIENT spans whose parent is the request's SERVER span, in the incoming
/// trace.
#[tokio::test]
async fn a_request_s_userinfo_and_upstream_calls_are_child_spans_of_its_server_span() {
    let collector = Collector::start().await;
    let echo = support::echo::Echo::start().await;
    let issuer = support::issuer::MockIssuer::start().await;
    let toml = support::config(
        echo.addr,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[telemetry]\notlp_endpoint = \"{}\"\n\n{}\n\
             [[route]]\nid = \"profile\"\npath = \"/profile\"\nuserinfo = true\n",
            collector.base_url(),
            issuer.config_toml("corp", &["api"])
        ),
    );
    let proxy = support::Proxy::start(&toml).await;
    support::wait_ready(&proxy).await;
    let token = issuer.token("RS256", serde_json::json!({"aud": "api", "sub": "alice"}));
    let answer = support::get(
        &proxy.url("/profile"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    proxy.stop().await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = collector.spans();
        let kinds = |k: SpanKind| spans.iter().filter(|s| s.kind == k as i32).count();
        if kinds(SpanKind::Server) >= 1 && kinds(SpanKind::Client) >= 2 {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans missing: {}", spans.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(hex(&server.trace_id), TRACE);
    assert_eq!(hex(&server.parent_span_id), PARENT);
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32 && s.parent_span_id == server.span_id)
        .collect();
    assert_eq!(children.len(), 2, "{children:?}");
    for child in &children {
        assert_eq!(hex(&child.trace_id), TRACE);
        for attr in &child.attributes {
            let text = format!("{:?}", attr.value);
            assert!(
                !text.contains(&token[..16]) && !text.contains("alice"),
                "{text}"
            );
        }
    }
}

/// A collector that accepts and never answers never slows a proxied request: 200 requests
/// through a proxy exporting to it finish as fast as without export would allow (bounded with
/// generous slack), and the drop counter is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collector_never_slows_requests_and_its_spans_are_counted_dropped() {
    let collector = HungCollector::start().await;
    let echo = support::echo::Echo::start().await;
    let toml = support::config(
        echo.addr,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[telemetry]\notlp_endpoint = \"http://{}\"\n\n\
             [[route]]\nid = \"open\"\npath_prefix = \"/\"\nauth = \"public\"\n",
            collector.addr
        ),
    );
    let proxy = support::Proxy::start(&toml).await;
    let started = Instant::now();
    for i in 0..200 {
        let answer = support::get(&proxy.url(&format!("/r/{i}")), &[]).await;
        assert_eq!(answer.status, 200);
    }
    let took = started.elapsed();
    // Exporting to a collector that never answers must cost the requests nothing: with 200
    // requests, a request blocked on the collector even once would take seconds.
    assert!(took < Duration::from_secs(20), "200 requests took {took:?}");
    let metrics = format!("http://{}/metrics", proxy.admin.unwrap());
    let scrape = support::get(&metrics, &[]).await;
    let text = String::from_utf8_lossy(&scrape.body).into_owned();
    assert!(
        text.contains("tokengate_spans_dropped_total"),
        "the drop counter is exported with [telemetry]:\n{text}"
    );
}
