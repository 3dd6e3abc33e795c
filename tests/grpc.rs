//! gRPC through tokengate end to end, with a real gRPC stack on both sides (SPEC §3
//! `[upstream].protocol = "h2"`, §4.7, §6): a tonic server as the upstream (`support::grpc`),
//! a tonic client through the proxy, a token from the mock issuer in the `authorization`
//! metadata, and routes per method (`path_prefix = "/test.Echo"`, per-method scopes and a claim
//! rule).
//!
//! Proven here: unary, server-streaming, client-streaming and bidirectional calls; the identity
//! reaching the service as metadata and the client's token never; a status with details and
//! metadata, and trailers after streamed messages, reaching the client unchanged; deadlines
//! (`grpc-timeout` is honoured up to `[upstream].timeout`); 100 MiB each way in small messages
//! with the real binary's RSS flat; every SPEC §6 error a gRPC client can meet, as the
//! `tonic::Code` and message it sees; and what happens to a stream whose client sends nothing
//! (refused after `header_read_timeout`).
//!
//! Plain HTTP/2 upstreams (no gRPC), resets and trailers from HTTP/1.1 clients are
//! `tests/h2_upstream_e2e.rs`'s.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::future::pending;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::Request as HttpRequest;
use http_body_util::Full;
use serde_json::{json, Value};
use tonic::codegen::tokio_stream::{self, wrappers::ReceiverStream};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use support::gate::Gate;
use support::grpc::{self, EchoServer, Msg};
use support::h2_upstream::{handler, H2Upstream, Options};
use support::issuer::{now, JwksMode, MockIssuer};
use support::process::free_port;
use support::{wait_ready, Proxy};

const MIB: u64 = 1 << 20;
/// Generous bound for anything that should happen "soon" on a slow, shared machine.
const SLACK: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The world: issuer, gRPC upstream, proxy
// ---------------------------------------------------------------------------------------------

/// What a test changes in the configuration.
struct Setup<'a> {
    /// `[upstream].timeout`.
    timeout: &'a str,
    /// More lines for `[upstream]`.
    upstream: &'a str,
    /// Routes tried before the `test.Echo` ones.
    routes: &'a str,
    /// SETTINGS_MAX_CONCURRENT_STREAMS of the tonic upstream.
    max_streams: Option<u32>,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            timeout: "30s",
            upstream: "",
            routes: "",
            max_streams: None,
        }
    }
}

/// The configuration: the mock issuer, an identity key with two claim headers, the tonic
/// upstream over HTTP/2, and per-method routes: `Upload` needs `echo:write`, `Admin` needs a
/// `groups` claim containing `admin`, every other `test.Echo` method needs `echo:read`.
fn config(issuer: &MockIssuer, upstream: SocketAddr, key: &Path, setup: &Setup<'_>) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"http://{upstream}\"\nprotocol = \"h2\"\ntimeout = \"{timeout}\"\n{more}\n\n\
         {issuer_toml}\n\
         [identity]\nsigning_key = {key:?}\n\
         [identity.headers]\nX-Auth-Subject = \"sub\"\nX-Auth-Groups = \"groups\"\n\n\
         {routes}\n\
         [[route]]\nid = \"echo-upload\"\npath = \"/test.Echo/Upload\"\nscopes = [\"echo:write\"]\n\n\
         [[route]]\nid = \"echo-admin\"\npath = \"/test.Echo/Admin\"\nscopes = [\"echo:read\"]\n\
         [[route.claims]]\nclaim = \"groups\"\ncontains = \"admin\"\n\n\
         [[route]]\nid = \"echo\"\npath_prefix = \"/test.Echo\"\nscopes = [\"echo:read\"]\n",
        timeout = setup.timeout,
        more = setup.upstream,
        issuer_toml = issuer.config_toml("mock", &["api"]),
        key = key.display().to_string(),
        routes = setup.routes,
    )
}

struct World {
    issuer: MockIssuer,
    echo: EchoServer,
    proxy: Proxy,
    _keys: tempfile::TempDir,
}

async fn world(setup: Setup<'_>) -> World {
    let issuer = MockIssuer::start().await;
    let echo = EchoServer::start(setup.max_streams).await;
    let (keys, key) = support::identity_key();
    let proxy = Proxy::start(&config(&issuer, echo.addr, &key, &setup)).await;
    wait_ready(&proxy).await;
    World {
        issuer,
        echo,
        proxy,
        _keys: keys,
    }
}

impl World {
    /// A token allowed everywhere: both scopes, in the `admin` group.
    fn token(&self) -> String {
        self.token_with(json!({"scope": "echo:read echo:write", "groups": ["staff", "admin"]}))
    }

    fn token_with(&self, claims: Value) -> String {
        self.issuer.token("ES256", claims)
    }

    async fn client(&self) -> tonic::client::Grpc<tonic::transport::Channel> {
        grpc::client(self.proxy.addr).await
    }

    /// A unary call with `authorization` set to exactly `authorization` (when given).
    async fn call_raw(
        &self,
        method: &str,
        authorization: Option<&str>,
    ) -> Result<tonic::Response<Msg>, Status> {
        let mut request = tonic::Request::new(Msg::text("hello"));
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        grpc::call(&mut self.client().await, method, request).await
    }

    /// How many calls reached the upstream.
    fn upstream_calls(&self) -> usize {
        self.echo.calls().len()
    }
}

/// The payload of a compact JWS (not verified: `tests/identity*.rs` verify assertions).
fn jws_payload(jws: &str) -> Value {
    let payload = jws.split('.').nth(1).expect("a compact JWS");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The status of a call that must have failed.
fn refused<T: std::fmt::Debug>(result: Result<T, Status>) -> Status {
    match result {
        Ok(answer) => panic!("the call succeeded: {answer:?}"),
        Err(status) => status,
    }
}

fn assert_status(status: &Status, code: Code, message: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message, "{status:?}");
}

fn metadata<'a>(status: &'a Status, name: &str) -> Option<&'a str> {
    status.metadata().get(name).and_then(|v| v.to_str().ok())
}

// ---------------------------------------------------------------------------------------------
// Calls that succeed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unary_call_reaches_the_service_with_the_identity_as_metadata_and_never_the_token() {
    let w = world(Setup::default()).await;
    let mut request = grpc::request(Msg::text("hello"), Some(&w.token()));
    // A client posing as someone else, and its own request id.
    let spoof = MetadataValue::from_static("mallory");
    request.metadata_mut().insert("x-auth-subject", spoof);
    let id = MetadataValue::from_static("grpc-e2e-1");
    request.metadata_mut().insert("x-request-id", id);

    let response = grpc::call(&mut w.client().await, "/test.Echo/Unary", request)
        .await
        .expect("the call succeeds");
    assert_eq!(response.get_ref().text, "hello");
    let headers = response.metadata();
    assert_eq!(headers.get("x-served-by").unwrap(), "test.Echo");
    assert_eq!(headers.get("x-request-id").unwrap(), "grpc-e2e-1");

    let calls = w.echo.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.path, "/test.Echo/Unary");
    assert_eq!(call.all("x-auth-subject"), ["alice"], "spoofed value gone");
    assert_eq!(call.header("x-auth-groups"), Some("staff,admin"));
    assert_eq!(call.header("authorization"), None, "the token stays out");
    assert_eq!(call.header("te"), Some("trailers"));
    assert_eq!(call.header("content-type"), Some("application/grpc"));
    assert_eq!(call.header("x-request-id"), Some("grpc-e2e-1"));
    let assertion = call
        .header("x-identity-assertion")
        .expect("the signed identity");
    let claims = jws_payload(assertion);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["route"], "echo");
    assert_eq!(claims["auth"], "jwt");
    assert_eq!(claims["scope"], "echo:read echo:write");
}

#[tokio::test]
async fn server_streaming_call_delivers_every_message_in_order_then_ends_ok() {
    let w = world(Setup::default()).await;
    let msg = Msg {
        n: 200,
        ..Msg::default()
    };
    let request = grpc::request(msg, Some(&w.token()));
    let mut stream = grpc::server_streaming(&mut w.client().await, "/test.Echo/Count", request)
        .await
        .expect("response headers")
        .into_inner();
    let mut got = Vec::new();
    while let Some(msg) = stream.message().await.expect("a message or the end") {
        got.push(msg.n);
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    assert!(stream.trailers().await.expect("trailers").is_some());
    assert_eq!(w.echo.calls()[0].path, "/test.Echo/Count");
}

#[tokio::test]
async fn bidirectional_call_answers_each_message_before_the_next_is_sent() {
    let w = world(Setup::default()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // The first message goes with the call (an authenticated call is forwarded at once anyway,
    // `src/forward/request_body.rs`).
    tx.send(Msg::text("ping 0")).await.unwrap();
    let request = grpc::request(ReceiverStream::new(rx), Some(&w.token()));
    let mut replies = grpc::streaming(&mut w.client().await, "/test.Echo/Chat", request)
        .await
        .expect("response headers")
        .into_inner();
    for i in 0..20u64 {
        if i > 0 {
            tx.send(Msg::text(&format!("ping {i}"))).await.unwrap();
        }
        // Nothing more is sent until this reply is in: a proxy that held either direction back
        // would hang here.
        let reply = tokio::time::timeout(SLACK, replies.message())
            .await
            .expect("the reply to the message just sent")
            .expect("a message")
            .expect("not the end yet");
        assert_eq!(reply.text, format!("echo: ping {i}"));
        assert_eq!(reply.n, i);
    }
    drop(tx);
    let end = tokio::time::timeout(SLACK, replies.message())
        .await
        .expect("the end");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn a_status_with_details_and_metadata_reaches_the_client_unchanged() {
    let w = world(Setup::default()).await;
    let request = grpc::request(Msg::text("fail"), Some(&w.token()));
    let status = refused(grpc::call(&mut w.client().await, "/test.Echo/Fail", request).await);
    assert_status(&status, grpc::FAIL_CODE, grpc::FAIL_MESSAGE);
    assert_eq!(status.details(), grpc::FAIL_DETAILS);
    assert_eq!(metadata(&status, "x-reason"), Some("quota-exceeded"));
    let bin = status
        .metadata()
        .get_bin("x-trace-bin")
        .expect("binary metadata");
    assert_eq!(
        bin.to_bytes().unwrap(),
        Bytes::from_static(&[0x00, 0x9f, 0xff, 0x10])
    );
    assert_eq!(w.upstream_calls(), 1);
}

#[tokio::test]
async fn trailers_after_streamed_messages_reach_the_client_unchanged() {
    let w = world(Setup::default()).await;
    let msg = Msg {
        text: "aborted".into(),
        n: 3,
        ..Msg::default()
    };
    let request = grpc::request(msg, Some(&w.token()));
    let mut stream = grpc::server_streaming(&mut w.client().await, "/test.Echo/Count", request)
        .await
        .expect("response headers")
        .into_inner();
    for i in 0..3 {
        let msg = stream
            .message()
            .await
            .expect("a message")
            .expect("not the end");
        assert_eq!(msg.n, i);
    }
    // The status comes in the HTTP/2 trailers, after the messages.
    let status = refused(stream.message().await);
    assert_status(&status, Code::Aborted, "aborted after the messages");
    assert_eq!(metadata(&status, "x-reason"), Some("quota-exceeded"));
    let bin = status
        .metadata()
        .get_bin("x-trace-bin")
        .expect("binary metadata");
    assert_eq!(
        bin.to_bytes().unwrap(),
        Bytes::from_static(&[0x00, 0x9f, 0xff, 0x10])
    );
}

// ---------------------------------------------------------------------------------------------
// Deadlines: `grpc-timeout` is honoured up to `[upstream].timeout`
// ---------------------------------------------------------------------------------------------

/// A `Slow` call that the service would answer after a minute, with `Request::set_timeout`
/// (`deadline`), through a tonic `Channel` (`channel`) or a bare HTTP/2 client; its status and
/// how long it took.
async fn slow_call_with_deadline(
    w: &World,
    deadline: Duration,
    channel: bool,
) -> (Status, Duration) {
    let msg = Msg {
        n: 60_000,
        ..Msg::default()
    };
    let mut request = grpc::request(msg, Some(&w.token()));
    request.set_timeout(deadline);
    let started = Instant::now();
    let result = if channel {
        grpc::call(&mut w.client().await, "/test.Echo/Slow", request).await
    } else {
        grpc::call(
            &mut grpc::bare_client(w.proxy.addr),
            "/test.Echo/Slow",
            request,
        )
        .await
    };
    (refused(result), started.elapsed())
}

#[tokio::test]
async fn a_client_deadline_shorter_than_the_call_ends_it_early() {
    let w = world(Setup::default()).await; // [upstream].timeout = 30 s
    let deadline = Duration::from_millis(300);

    // Through a tonic `Channel`: tonic 0.14's channel runs its own timer for `grpc-timeout`
    // (Cancelled, "Timeout expired"), so the client gives up on its own, whatever the wire does.
    let (status, took) = slow_call_with_deadline(&w, deadline, true).await;
    eprintln!(
        "300 ms deadline, tonic Channel: {:?} {:?} after {took:?}",
        status.code(),
        status.message()
    );
    assert!(
        matches!(
            status.code(),
            Code::Cancelled | Code::DeadlineExceeded | Code::Unavailable
        ),
        "{status:?}"
    );
    assert!(took < Duration::from_secs(20), "ended after {took:?}");

    // Through a bare HTTP/2 client: the answer comes from the other end. tonic's server
    // enforces the deadline (DeadlineExceeded) as tokengate does (504 → Unavailable); the two
    // clocks run out together and whichever fires first answers (tokengate, in the runs seen so
    // far). That tokengate fires without the service's help is the next tests'.
    let (status, took) = slow_call_with_deadline(&w, deadline, false).await;
    eprintln!(
        "300 ms deadline, bare HTTP/2 client: {:?} {:?} after {took:?}",
        status.code(),
        status.message()
    );
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{status:?}"
    );
    assert!(took >= deadline, "{took:?}");
    assert!(took < Duration::from_secs(20), "ended after {took:?}");

    let calls = w.echo.calls();
    assert_eq!(calls.len(), 2);
    for call in calls {
        // tonic writes 300 ms in microseconds; tokengate passes it on as it came.
        assert_eq!(call.header("grpc-timeout"), Some("300000u"));
    }
}

/// An HTTP/2 upstream that accepts every request and never answers.
async fn black_hole() -> H2Upstream {
    H2Upstream::start(Options::default(), handler(|_| pending())).await
}

fn hole_route(hole: &H2Upstream) -> String {
    format!(
        "[[route]]\nid = \"hole\"\npath_prefix = \"/test.Hole\"\nupstream = \"http://{}\"\n\
         scopes = [\"echo:read\"]\n",
        hole.addr
    )
}

#[tokio::test]
async fn grpc_timeout_alone_bounds_the_wait_for_an_upstream_that_never_answers() {
    let hole = black_hole().await;
    let routes = hole_route(&hole);
    let w = world(Setup {
        timeout: "30s",
        routes: &routes,
        ..Setup::default()
    })
    .await;
    // A raw HTTP/2 client with no timer of its own: only tokengate can end this call early.
    let req = HttpRequest::post(w.proxy.url("/test.Hole/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .header("authorization", format!("Bearer {}", w.token()))
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(SLACK, support::send_h2(req))
        .await
        .expect("tokengate answers long before [upstream].timeout");
    let took = started.elapsed();
    eprintln!("grpc-timeout 300m, upstream.timeout 30s: answered after {took:?}");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("grpc-status"), Some("14"));
    assert_eq!(
        answer.header("grpc-message"),
        Some("the upstream did not answer in time")
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[tokio::test]
async fn a_deadline_longer_than_upstream_timeout_is_cut_at_upstream_timeout() {
    let hole = black_hole().await;
    let routes = hole_route(&hole);
    let w = world(Setup {
        timeout: "1s",
        routes: &routes,
        ..Setup::default()
    })
    .await;
    let mut request = grpc::request(Msg::text("hello"), Some(&w.token()));
    request.set_timeout(Duration::from_secs(120));
    let started = Instant::now();
    let status = refused(grpc::call(&mut w.client().await, "/test.Hole/Call", request).await);
    let took = started.elapsed();
    eprintln!("client deadline 120 s, upstream.timeout 1 s: {status:?} after {took:?}");
    assert_status(
        &status,
        Code::Unavailable,
        "the upstream did not answer in time",
    );
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// Every SPEC §6 error, as a tonic client sees it
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_token_is_unauthenticated_with_a_bearer_challenge() {
    let w = world(Setup::default()).await;
    let status = refused(w.call_raw("/test.Echo/Unary", None).await);
    assert_status(&status, Code::Unauthenticated, "a bearer token is required");
    assert_eq!(
        metadata(&status, "www-authenticate"),
        Some("Bearer realm=\"tokengate\"")
    );
    assert!(metadata(&status, "x-request-id").is_some());
    assert_eq!(w.upstream_calls(), 0);
}

#[tokio::test]
async fn bad_or_expired_tokens_are_unauthenticated_with_an_invalid_token_challenge() {
    let w = world(Setup::default()).await;
    let expired =
        w.token_with(json!({"scope": "echo:read", "exp": now() - 3600, "iat": now() - 7200}));
    let good = w.token();
    let (head, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
    let expired_status = refused(
        w.call_raw("/test.Echo/Unary", Some(&format!("Bearer {expired}")))
            .await,
    );
    assert_status(&expired_status, Code::Unauthenticated, "token has expired");
    for token in [expired.as_str(), forged.as_str(), "not-a-jwt"] {
        let status = refused(
            w.call_raw("/test.Echo/Unary", Some(&format!("Bearer {token}")))
                .await,
        );
        assert_eq!(status.code(), Code::Unauthenticated, "{token}: {status:?}");
        assert!(!status.message().is_empty());
        let challenge = metadata(&status, "www-authenticate").expect("a challenge");
        assert!(
            challenge.starts_with("Bearer realm=\"tokengate\", error=\"invalid_token\""),
            "{challenge}"
        );
        assert!(
            !status.message().contains(token),
            "the token is never echoed"
        );
    }
    assert_eq!(w.upstream_calls(), 0);
}

#[tokio::test]
async fn a_missing_scope_is_permission_denied_naming_the_scope() {
    let w = world(Setup::default()).await;
    let read_only = w.token_with(json!({"scope": "echo:read"}));
    let mut request = grpc::request(tokio_stream::iter(vec![Msg::text("x")]), Some(&read_only));
    request.set_timeout(SLACK);
    let status =
        refused(grpc::client_streaming(&mut w.client().await, "/test.Echo/Upload", request).await);
    assert_status(
        &status,
        Code::PermissionDenied,
        "the token lacks a required scope (echo:write)",
    );
    assert_eq!(
        metadata(&status, "www-authenticate"),
        Some("Bearer realm=\"tokengate\", error=\"insufficient_scope\", scope=\"echo:write\"")
    );
    assert_eq!(w.upstream_calls(), 0);
}

#[tokio::test]
async fn a_failed_claim_rule_is_permission_denied_naming_the_route() {
    let w = world(Setup::default()).await;
    let staff = w.token_with(json!({"scope": "echo:read", "groups": ["staff"]}));
    let status = refused(
        w.call_raw("/test.Echo/Admin", Some(&format!("Bearer {staff}")))
            .await,
    );
    assert_status(
        &status,
        Code::PermissionDenied,
        "access to route 'echo-admin' is denied by its policy",
    );
    assert_eq!(w.upstream_calls(), 0);
    // The same token is fine on the methods its scope covers.
    w.call_raw("/test.Echo/Unary", Some(&format!("Bearer {staff}")))
        .await
        .expect("allowed on Unary");
}

#[tokio::test]
async fn an_unrouted_method_is_unimplemented() {
    let w = world(Setup::default()).await;
    let token = w.token();
    let status = refused(
        w.call_raw("/test.Other/Call", Some(&format!("Bearer {token}")))
            .await,
    );
    assert_status(
        &status,
        Code::Unimplemented,
        "no route matches this request",
    );
    assert_eq!(w.upstream_calls(), 0);
}

#[tokio::test]
async fn a_malformed_authorization_is_internal() {
    let w = world(Setup::default()).await;
    for value in ["Bearer a b!", "Bearer ", "Bearer tok\"en"] {
        let status = refused(w.call_raw("/test.Echo/Unary", Some(value)).await);
        assert_status(&status, Code::Internal, "malformed Authorization header");
    }
    assert_eq!(w.upstream_calls(), 0);
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable() {
    let routes = format!(
        "[[route]]\nid = \"down\"\npath_prefix = \"/test.Down\"\n\
         upstream = \"http://127.0.0.1:{}\"\nscopes = [\"echo:read\"]\n",
        free_port()
    );
    let w = world(Setup {
        routes: &routes,
        ..Setup::default()
    })
    .await;
    let token = w.token();
    let status = refused(
        w.call_raw("/test.Down/Call", Some(&format!("Bearer {token}")))
            .await,
    );
    assert_status(
        &status,
        Code::Unavailable,
        "the upstream could not be reached",
    );
}

#[tokio::test]
async fn an_upstream_timeout_is_unavailable() {
    let w = world(Setup {
        timeout: "1s",
        ..Setup::default()
    })
    .await;
    let msg = Msg {
        n: 60_000,
        ..Msg::default()
    };
    let request = grpc::request(msg, Some(&w.token()));
    let status = refused(grpc::call(&mut w.client().await, "/test.Echo/Slow", request).await);
    assert_status(
        &status,
        Code::Unavailable,
        "the upstream did not answer in time",
    );
    assert_eq!(w.echo.slow_arrived(), 1, "it did reach the upstream");
}

#[tokio::test]
async fn unavailable_issuer_keys_are_unavailable_with_retry_after() {
    let issuer = MockIssuer::start().await;
    issuer.set_jwks_mode(JwksMode::Status(503));
    let echo = EchoServer::start(None).await;
    let (_keys, key) = support::identity_key();
    let proxy = Proxy::start(&config(&issuer, echo.addr, &key, &Setup::default())).await;
    let token = issuer.token("ES256", json!({"scope": "echo:read"}));
    let mut request = grpc::request(Msg::text("hello"), Some(&token));
    request.set_timeout(SLACK);
    let status = refused(
        grpc::call(
            &mut grpc::client(proxy.addr).await,
            "/test.Echo/Unary",
            request,
        )
        .await,
    );
    assert_status(
        &status,
        Code::Unavailable,
        "the issuer's signing keys are not available",
    );
    assert!(metadata(&status, "retry-after").is_some(), "{status:?}");
    assert!(echo.calls().is_empty());
}

#[tokio::test]
async fn the_upstream_connection_limit_is_unavailable_with_retry_after() {
    // One connection to an upstream that allows one stream on it: a held call takes it all.
    let w = world(Setup {
        upstream: "max_connections = 1\nconnect_timeout = \"300ms\"",
        max_streams: Some(1),
        ..Setup::default()
    })
    .await;
    let token = w.token();
    let held = {
        let mut client = w.client().await;
        let msg = Msg {
            n: 60_000,
            ..Msg::default()
        };
        let request = grpc::request(msg, Some(&token));
        tokio::spawn(async move { grpc::call(&mut client, "/test.Echo/Slow", request).await })
    };
    let deadline = Instant::now() + SLACK;
    while w.echo.slow_arrived() == 0 {
        assert!(Instant::now() < deadline, "the held call never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = refused(
        w.call_raw("/test.Echo/Unary", Some(&format!("Bearer {token}")))
            .await,
    );
    assert_status(
        &status,
        Code::Unavailable,
        "the upstream connection limit is reached",
    );
    assert_eq!(metadata(&status, "retry-after"), Some("1"));
    held.abort();
}

// ---------------------------------------------------------------------------------------------
// 100 MiB each way, the real binary's memory
// ---------------------------------------------------------------------------------------------

/// The proxy's peak RSS may grow by at most this over its size after the first call.
const RSS_GROWTH_LIMIT_KB: u64 = 64 * 1024;
/// Message payload: small next to the transfer, as a chunked-upload or feed service sends.
const CHUNK: u64 = 16 * 1024;

/// 100 MiB, or `TOKENGATE_GRPC_STREAM_MIB` MiB.
fn stream_size() -> u64 {
    std::env::var("TOKENGATE_GRPC_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(100 * MIB, |mib| mib * MIB)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_each_way_in_small_messages_keeps_the_proxy_rss_flat() {
    let total = stream_size();
    let issuer = MockIssuer::start().await;
    let echo = EchoServer::start(None).await;
    let (_keys, key) = support::identity_key();
    let setup = Setup {
        timeout: "600s", // an upload's answer comes once all of it is read
        ..Setup::default()
    };
    let gate = Gate::start_ready(&config(&issuer, echo.addr, &key, &setup)).await;
    let token = issuer.token("ES256", json!({"scope": "echo:read echo:write"}));
    let mut client = grpc::client(gate.addr).await;
    grpc::call(
        &mut client,
        "/test.Echo/Unary",
        grpc::request(Msg::text("warm-up"), Some(&token)),
    )
    .await
    .expect("warm-up call");
    let start_kb = gate.process.rss_kb();

    // Client → server: generated as the client sends, one shared buffer.
    let chunk = Bytes::from(vec![b'u'; CHUNK as usize]);
    let messages = total.div_ceil(CHUNK);
    let upload = tokio_stream::iter((0..messages).map(move |i| Msg {
        payload: chunk.slice(..CHUNK.min(total - i * CHUNK) as usize),
        n: i,
        ..Msg::default()
    }));
    let began = Instant::now();
    let answer = grpc::client_streaming(
        &mut client,
        "/test.Echo/Upload",
        grpc::request(upload, Some(&token)),
    )
    .await
    .expect("the upload")
    .into_inner();
    eprintln!(
        "gRPC upload: {} MiB in {:.1?}",
        total / MIB,
        began.elapsed()
    );
    assert_eq!(answer.n, total, "every payload byte reached the service");
    assert_eq!(answer.size, messages);

    // Server → client: counted, never kept.
    let ask = Msg {
        n: total,
        size: CHUNK,
        ..Msg::default()
    };
    let began = Instant::now();
    let mut stream = grpc::server_streaming(
        &mut client,
        "/test.Echo/Download",
        grpc::request(ask, Some(&token)),
    )
    .await
    .expect("the download")
    .into_inner();
    let (mut bytes, mut count) = (0u64, 0u64);
    while let Some(msg) = stream.message().await.expect("a message") {
        bytes += msg.payload.len() as u64;
        count += 1;
    }
    eprintln!(
        "gRPC download: {} MiB in {:.1?}",
        total / MIB,
        began.elapsed()
    );
    assert_eq!(bytes, total, "every payload byte reached the client");
    assert_eq!(count, messages);

    let peak_kb = gate.process.rss_peak_kb();
    eprintln!(
        "tokengate RSS: {start_kb} kB after the first call, peak {peak_kb} kB (growth {} kB)",
        peak_kb.saturating_sub(start_kb)
    );
    assert!(
        peak_kb.saturating_sub(start_kb) < RSS_GROWTH_LIMIT_KB,
        "tokengate's peak RSS grew from {start_kb} kB to {peak_kb} kB: messages are being buffered"
    );
}

// ---------------------------------------------------------------------------------------------
// A stream whose client waits for the server first
// ---------------------------------------------------------------------------------------------

/// Over an HTTP/2 upstream an authenticated caller's call is forwarded as soon as its head is
/// authorized, before the client sends anything (other requests wait for their body,
/// `src/forward/request_body.rs`): a bidirectional call whose client waits for the server
/// reaches the service at once, and outlives `header_read_timeout` without a 408.
#[tokio::test]
async fn a_call_whose_client_sends_nothing_yet_reaches_the_service_at_once() {
    let issuer = MockIssuer::start().await;
    let echo = EchoServer::start(None).await;
    let (_keys, key) = support::identity_key();
    let toml = config(&issuer, echo.addr, &key, &Setup::default())
        .replace("[server]\n", "[server]\nheader_read_timeout = \"1s\"\n");
    let proxy = Proxy::start(&toml).await;
    wait_ready(&proxy).await;
    let token = issuer.token("ES256", json!({"scope": "echo:read"}));
    let mut client = grpc::client(proxy.addr).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let request = grpc::request(ReceiverStream::new(rx), Some(&token));
    let mut replies = grpc::streaming(&mut client, "/test.Echo/Chat", request)
        .await
        .expect("response headers before the client said anything")
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while echo.calls().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never reached the service"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Longer than header_read_timeout, then the first message.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tx.send(Msg::text("late hello")).await.unwrap();
    let first = replies
        .message()
        .await
        .expect("a reply")
        .expect("a message");
    assert!(first.text.contains("late hello"), "{first:?}");
    drop(tx);

    let request = grpc::request(Msg::text("next"), Some(&token));
    let reply = grpc::call(&mut client, "/test.Echo/Unary", request)
        .await
        .expect("the same channel still works");
    assert_eq!(reply.get_ref().text, "next");
}
