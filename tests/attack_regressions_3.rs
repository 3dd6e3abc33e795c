//! Findings of the fourth attack pass (against commit `d31daf2`, the build that fixed the third
//! pass's six findings), each pinned as a black-box test against the real `tokengate serve`.
//! Every test here failed on that build, for the reason its doc comment gives ("Found: ...");
//! the README's list of security fixes names each fix.
//!
//! 1. *The gRPC exception is the old lockout, for anyone who sets a content type*: only gRPC
//!    calls skip the body wait, but "gRPC call" means "the client wrote `content-type:
//!    application/grpc...`". One client connection on any route that reaches an HTTP/2 upstream
//!    (a public one, or any route with any valid token) opens bodiless streams with that content
//!    type and takes every upstream stream slot for `[upstream].timeout` — exactly the second
//!    pass's finding 2, which the fix was meant to close. HTTP/1.1 clients can do it too
//!    (`Content-Type: application/grpc` plus a stalled body is forwarded at once).
//! 2. *Not even gRPC*: the test for "gRPC" is a plain prefix match, so `application/grpcx`,
//!    `application/grpc-web` (and a first `content-type` of `application/grpc` followed by a
//!    second one) skip the wait as well.
//! 3. *Unbounded read-ahead memory*: each request whose body has not arrived (below 64 KiB)
//!    keeps what did arrive in memory until `header_read_timeout`, with no total bound: 2 000
//!    HTTP/2 streams (20 connections) of 60 KiB each raised the proxy's RSS from 20 to 200 MiB,
//!    4 000 to 381 MiB (about 90 KiB per stream), with the defaults (`max_connections = 10000`,
//!    `max_concurrent_streams = 100`, `header_read_timeout = "10s"`) allowing a million such
//!    streams. Needs a public route (the wait runs after authentication) or any valid token.
//! 4. *A second confirmation method next to `jkt` is ignored*: a token whose `cnf` is
//!    `{"jkt": ..., "jwk": {...}}` (or `kid`, `jku`, any member other than `x5t#S256`) is
//!    accepted with just a DPoP proof, while the same member alone is refused as "a
//!    confirmation method tokengate cannot check" (README: "a binding tokengate cannot check is
//!    never ignored"; the third pass's fix: "every binding in `cnf` must hold").
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use support::dpop::{cnf, Es256, Proof};
use support::echo::Echo;
use support::gate::Gate;
use support::h2_upstream::{handler, H2Upstream, Options};
use support::h2raw::{self, H2Client};
use support::issuer::MockIssuer;
use support::wire;

const WAIT: Duration = Duration::from_secs(10);

/// An HTTP/2 upstream advertising `SETTINGS_MAX_CONCURRENT_STREAMS = 2` that reads each request
/// body to its end before answering, and counts the requests whose head reached it.
async fn counting_h2_upstream() -> (H2Upstream, Arc<AtomicUsize>) {
    let heads = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&heads);
    let upstream = H2Upstream::start(
        Options {
            max_concurrent_streams: Some(2),
            ..Options::default()
        },
        handler(move |req: Request<Incoming>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
                Response::new(support::h2_upstream::text_body(format!("{body:?}")))
            }
        }),
    )
    .await;
    (upstream, heads)
}

/// `header_read_timeout = "2s"`, an HTTP/2 upstream with `max_connections = 1`,
/// `timeout = "30s"`, one public catch-all route.
fn h2_upstream_gate(upstream: &H2Upstream) -> Gate {
    Gate::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"2s\"\n\n\
             [upstream]\nurl = \"http://{}\"\nprotocol = \"h2\"\nmax_connections = 1\n\
             connect_timeout = \"500ms\"\ntimeout = \"30s\"\n\n\
             [[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n",
            upstream.addr
        ),
        &[],
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Bodiless "gRPC" streams still take every HTTP/2 upstream stream slot
// ---------------------------------------------------------------------------------------------

/// The second pass's test `bodiless_streams_cannot_lock_others_out_of_an_http2_upstream`, with
/// one header more: `content-type: application/grpc`. One HTTP/2 client opens two such `POST`
/// streams on the public route and never sends a message. A different client must still be
/// served within 10 s (upstream timeout 30 s). Forwarding gRPC calls at once is deliberate
/// (servers that speak first), but then one client connection must not be able to take every
/// slot: e.g. a per-client-connection share of the upstream's streams, or the body wait for gRPC
/// routes not marked as server-speaks-first.
///
/// Found: `503 temporarily_unavailable` for the whole 30 s (attack_body.py Y grpc: the same
/// with `application/grpc+proto`, `application/grpc; charset=x`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_grpc_streams_cannot_lock_others_out_of_an_http2_upstream() {
    let (upstream, _heads) = counting_h2_upstream().await;
    let gate = h2_upstream_gate(&upstream);
    assert_eq!(
        wire::get_status(gate.addr, "/setup").await,
        Some(200),
        "{}",
        gate.log()
    );

    let attacker = H2Client::connect(gate.addr).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let req = h2raw::request(
            "POST",
            "tokengate.test",
            &format!("/pkg.Svc/Method{i}"),
            &[("content-type", "application/grpc"), ("te", "trailers")],
        );
        let mut send = attacker.sender().ready().await.expect("h2 ready");
        held.push(
            send.send_request(req, false)
                .expect("send_request without END_STREAM"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (statuses, served) =
        wire::served_within(gate.addr, "/legit", Duration::from_secs(10)).await;
    assert!(
        served,
        "two bodiless application/grpc streams from one client keep every other client out of \
         the HTTP/2 upstream: statuses {statuses:?} over 10 s (upstream timeout 30 s)\n{}",
        gate.log()
    );
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// 2. Content types that only look like gRPC skip the body wait
// ---------------------------------------------------------------------------------------------

/// Streams whose `content-type` is not gRPC (`application/grpcx`, `application/grpc-web`; gRPC
/// is `application/grpc` optionally followed by `+<format>`), and a stream with two
/// `content-type` fields (`application/grpc`, then `application/json`), each a bodiless `POST`.
/// Each must wait for its body like any other request: no upstream stream before the body, then
/// 408 after `header_read_timeout` (2 s), answered in gRPC form as SPEC §6 asks for any content
/// type starting with `application/grpc`.
///
/// Found: all three reach the upstream at once (a plain prefix match on the first value) and
/// hold a stream slot; with two of them, other clients get 503 (attack_body.py Y grpcX,
/// grpc-web, dup_grpc_json). A duplicated `content-type` with `application/json` first is
/// waited for, so the order of two fields decides the treatment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_that_only_look_like_grpc_wait_for_the_body() {
    let (upstream, heads) = counting_h2_upstream().await;
    let gate = h2_upstream_gate(&upstream);
    assert_eq!(
        wire::get_status(gate.addr, "/setup").await,
        Some(200),
        "{}",
        gate.log()
    );
    let cases: [(&str, &[(&str, &str)]); 3] = [
        (
            "application/grpcx",
            &[("content-type", "application/grpcx")],
        ),
        (
            "application/grpc-web",
            &[("content-type", "application/grpc-web")],
        ),
        (
            "application/grpc, then application/json",
            &[
                ("content-type", "application/grpc"),
                ("content-type", "application/json"),
            ],
        ),
    ];
    for (name, headers) in cases {
        let before = heads.load(Ordering::SeqCst);
        let client = H2Client::connect(gate.addr).await;
        let req = h2raw::request("POST", "tokengate.test", "/upload", headers);
        let mut send = client.sender().ready().await.expect("h2 ready");
        let (response, _stream) = send.send_request(req, false).expect("send_request");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let reached = heads.load(Ordering::SeqCst) - before;
        assert_eq!(
            reached, 0,
            "content-type {name}: a bodiless request was forwarded to the upstream before its \
             body arrived (only gRPC calls may be)"
        );
        let answer = tokio::time::timeout(WAIT, response)
            .await
            .expect("an answer within 10 s")
            .expect("response");
        // The 408 `request_timeout`, in gRPC form: a content type that starts with
        // `application/grpc` gets tokengate's own errors as a trailers-only gRPC answer
        // (HTTP 200, `grpc-status` 2 UNKNOWN for a 408), whether or not it is a real call.
        assert_eq!(answer.status(), 200, "content-type {name}\n{}", gate.log());
        assert_eq!(
            answer.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"2"[..]),
            "content-type {name}: {:?}",
            answer.headers()
        );
        let message = answer
            .headers()
            .get("grpc-message")
            .map(|v| v.to_str().unwrap_or(""));
        assert!(
            message
                .is_some_and(|m| m.contains("did%20not%20arrive") || m.contains("did not arrive")),
            "content-type {name}: the request-timeout description, got {message:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Read-ahead memory has no total bound
// ---------------------------------------------------------------------------------------------

/// RSS of a process in MiB (`VmRSS` of /proc/PID/status).
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kib / 1024
}

/// How much the proxy's RSS may grow while 2 000 request bodies of 60 KiB each are pending
/// (117 MiB of client data): the read-ahead bound (256 requests × 64 KiB = 16 MiB), plus what
/// 2 000 open streams cost anyway (hyper's HTTP/2 buffering, at most a 1 MiB flow-control window
/// per connection, and per-stream state, measured at about 60 MiB together), with slack. Before
/// the fix: 180 MiB, growing with every further stream. The point is that one client cannot make
/// the proxy hold `max_connections × max_concurrent_streams × 64 KiB`.
const MAX_READ_AHEAD_GROWTH_MIB: u64 = 100;

/// Default limits but `header_read_timeout = "10s"` stated; a public route to an HTTP/1.1
/// upstream with `max_connections = 16` (so that what is measured is the read-ahead, not the
/// memory of the upstream connections an operator allows: past the read-ahead bound, bodies
/// stream to the upstream or get 503). 20 HTTP/2 connections open 100 `POST` streams each and send 60 KiB of body on
/// every stream (below the 64 KiB that would release it to the upstream), then stall. The
/// proxy's RSS must not grow by more than [`MAX_READ_AHEAD_GROWTH_MIB`].
///
/// Found: RSS 20 MiB → 200 MiB (2 000 streams), → 381 MiB with 4 000 (attack_rss.py), about
/// 90 KiB per stalled stream, held for `header_read_timeout` and renewable at once; an HTTP/1.1
/// client does the same with one connection per body (1 000 → +95 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_cannot_grow_the_proxy_without_bound() {
    let echo = Echo::start().await;
    let gate = Gate::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"10s\"\n\n\
             [upstream]\nurl = \"http://{}\"\nmax_connections = 16\n\n\
             [[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n",
            echo.addr
        ),
        &[],
    );
    assert_eq!(
        wire::get_status(gate.addr, "/setup").await,
        Some(200),
        "{}",
        gate.log()
    );
    let pid = gate.process.pid();
    let before = rss_mib(pid);

    let chunk = Bytes::from(vec![b'a'; 60 * 1024]);
    let mut clients = Vec::new();
    let mut held = Vec::new();
    for c in 0..20 {
        let client = H2Client::connect(gate.addr).await;
        for i in 0..100 {
            let req = h2raw::request("POST", "tokengate.test", &format!("/upload/{c}/{i}"), &[]);
            let mut send = client.sender().ready().await.expect("h2 ready");
            let (response, mut stream) = send.send_request(req, false).expect("send_request");
            stream.send_data(chunk.clone(), false).expect("send_data");
            held.push((response, stream));
        }
        clients.push(client);
    }
    // Let the data arrive (117 MiB over loopback), well inside the 10 s read timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_mib(pid);
    let growth = after.saturating_sub(before);
    assert!(
        growth <= MAX_READ_AHEAD_GROWTH_MIB,
        "2 000 stalled 60 KiB request bodies from one client grew the proxy's RSS by {growth} MiB \
         ({before} → {after} MiB); the read-ahead needs a total bound"
    );
    drop(held);
    drop(clients);
}

// ---------------------------------------------------------------------------------------------
// 4. A second confirmation method next to jkt is ignored
// ---------------------------------------------------------------------------------------------

/// A DPoP world on the real binary: mock issuer, echo upstream, one `required` catch-all route.
fn dpop_toml(issuer: &MockIssuer, echo: &Echo, key: &std::path::Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"http://{}\"\ntimeout = \"5s\"\n\n\
         [[issuer]]\nid = \"corp\"\nissuer = {:?}\naudiences = [\"api\"]\n\n\
         [identity]\nsigning_key = {:?}\n\n\
         [[route]]\nid = \"api\"\npath_prefix = \"/\"\n",
        echo.addr,
        issuer.issuer(),
        key.display().to_string()
    )
}

async fn get_status(gate: &Gate, scheme: &str, token: &str, proof: Option<&str>) -> u16 {
    let authorization = format!("{scheme} {token}");
    let mut headers = vec![("authorization", authorization.as_str())];
    if let Some(proof) = proof {
        headers.push(("dpop", proof));
    }
    support::get(&gate.url("/orders"), &headers).await.status
}

/// Tokens whose `cnf` has the proof key's `jkt` *and* another registered confirmation method
/// (RFC 7800 `jwk`, `kid`, `jku`), sent with a valid DPoP proof. tokengate cannot check the
/// second binding, and refuses a token carrying it alone ("token is bound by a confirmation
/// method tokengate cannot check"); README: "any other `cnf` is refused (a binding tokengate
/// cannot check is never ignored)", and the third pass's fix: "every binding in `cnf` must
/// hold". The token must be refused, and nothing forwarded.
///
/// Found: 200 for each, forwarded with `auth = "dpop"`; only `x5t#S256` is looked at next to
/// `jkt` (attack_cnf.py: `jwk`, `jku`, `kid`, `x5t`, `foo` all 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_method_next_to_jkt_that_cannot_be_checked_is_not_ignored() {
    let issuer = MockIssuer::start().await;
    let echo = Echo::start().await;
    let (_keys, key) = support::identity_key();
    let gate = Gate::start_ready(&dpop_toml(&issuer, &echo, &key)).await;
    let client = Es256::new(11);

    // Setup: jkt alone passes with a proof; the other method alone is refused as a bearer token.
    let only_jkt = issuer.token("ES256", json!({"cnf": cnf(&client)}));
    let proof = Proof::new(&client, "GET", &gate.url("/orders"), &only_jkt).sign(&client);
    assert_eq!(
        get_status(&gate, "DPoP", &only_jkt, Some(&proof)).await,
        200,
        "setup\n{}",
        gate.log()
    );
    let only_jwk = issuer.token(
        "ES256",
        json!({"cnf": {"jwk": {"kty": "EC", "crv": "P-256"}}}),
    );
    assert_eq!(
        get_status(&gate, "Bearer", &only_jwk, None).await,
        401,
        "setup: a cnf with only jwk is refused"
    );

    for (member, value) in [
        (
            "jwk",
            json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
        ),
        ("kid", json!("holder-key-1")),
        ("jku", json!("https://holder.example/jwks")),
    ] {
        let mut both = cnf(&client);
        both[member] = value;
        let token = issuer.token("ES256", json!({ "cnf": both }));
        let proof = Proof::new(&client, "GET", &gate.url("/orders"), &token).sign(&client);
        let before = echo.seen().len();
        let status = get_status(&gate, "DPoP", &token, Some(&proof)).await;
        assert_eq!(
            status, 401,
            "a token with cnf {{jkt, {member}}} was accepted with only a DPoP proof: the {member} \
             binding was ignored"
        );
        assert_eq!(
            echo.seen().len(),
            before,
            "cnf {{jkt, {member}}}: it reached the upstream"
        );
    }
}
