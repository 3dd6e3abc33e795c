//! Findings of the second attack pass (DPoP, introspection, HTTP/2 and gRPC upstreams, trailers,
//! traces) against the release binary, each pinned as a black-box test against the real
//! `tokengate serve`. Every test here failed on the build it was written against (commit
//! `bd4edcb`), for the reason its doc comment gives ("Found: ..."); the fix is named in the
//! README's list of security fixes.
//!
//! 1. *The lockout of the first pass, one byte later*: the fix for "request bodies that never
//!    start" takes an upstream connection as soon as the body has *started*. A client that sends
//!    one body byte and stops holds an HTTP/1.1 upstream connection for the whole
//!    `[upstream].timeout` all the same; `max_connections` such requests (one TCP connection
//!    over HTTP/2) lock every other client out with 503, and can be repeated for ever.
//! 2. *The same lockout against an HTTP/2 upstream, without even the byte*: with
//!    `protocol = "h2"` a request is forwarded before its body starts (by design, for gRPC
//!    servers that speak first), so bodiless `POST` streams take every upstream stream slot
//!    (`max_connections` × the server's `SETTINGS_MAX_CONCURRENT_STREAMS`) for the whole
//!    `[upstream].timeout`.
//! 3. *Unbounded introspection calls for garbage tokens*: every distinct opaque token is one
//!    call to every introspecting issuer, made at once, with no bound on calls in flight: one
//!    unauthenticated client with a few HTTP/2 connections makes hundreds of concurrent calls
//!    (each an outbound socket of the proxy, each under tokengate's own client credentials).
//! 4. *A DPoP proof used before a reload is accepted again after it*: replay records live only
//!    as long as the old `max_age` (+ skew) allowed; a reload that lengthens `max_age` makes
//!    every proof whose record has gone, but whose `iat` the new window accepts, usable once more.
//! 5. *A certificate binding is dropped when the token is also DPoP-bound*: a token whose `cnf`
//!    has both `jkt` and `x5t#S256` is accepted with a DPoP proof on a connection without any
//!    client certificate (SPEC §4.8: a token with `cnf["x5t#S256"]` is accepted *only* on a TLS
//!    connection whose client certificate has that thumbprint).
//! 6. *Trace context as a request trailer*: the client's `traceparent`/`tracestate` are replaced
//!    in the head, but sent as request trailers they reach an HTTP/2 upstream byte for byte,
//!    malformed or not.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::dpop::{cnf, Es256, Proof};
use support::echo::Echo;
use support::gate::Gate;
use support::h2_upstream::{handler, H2Upstream, Options};
use support::h2raw::{self, H2Client};
use support::issuer::{MockIssuer, INTROSPECTION_CLIENT};
use support::wire;

const WAIT: Duration = Duration::from_secs(10);

/// An `[[issuer]]` block for `issuer` with explicit `clock_skew` and `fetch_timeout`, and
/// optionally `[issuer.introspection]` at the mock's `/introspect`.
fn issuer_toml(issuer: &MockIssuer, skew: &str, fetch_timeout: &str, introspect: bool) -> String {
    let mut toml = format!(
        "[[issuer]]\nid = \"corp\"\nissuer = {:?}\naudiences = [\"api\"]\n\
         clock_skew = {skew:?}\nfetch_timeout = {fetch_timeout:?}\njwks_min_refresh = \"1s\"\n",
        issuer.issuer()
    );
    if introspect {
        let (id, secret) = INTROSPECTION_CLIENT;
        toml.push_str(&format!(
            "[issuer.introspection]\nendpoint = \"{}/introspect\"\nclient_id = {id:?}\n\
             client_secret = {secret:?}\n",
            issuer.url()
        ));
    }
    toml
}

// ---------------------------------------------------------------------------------------------
// 1. HTTP/1.1 upstream: a body that starts with one byte and stalls
// ---------------------------------------------------------------------------------------------

/// `[upstream] max_connections = 2`, `timeout = "30s"`, `header_read_timeout = "2s"`: two
/// `POST`s on the public route announce `Content-Length: 100`, send one body byte and nothing
/// more. A different client must still be served well before the upstream timeout (10 s): the
/// first pass's fix (no upstream connection before the body starts) must not be undone by a
/// single byte. Possible fixes: a per-client-connection share of the upstream pool, buffering a
/// small body (or its first N KiB) before taking a connection, or a minimum body data rate.
///
/// Found: the second client gets `503 temporarily_unavailable` ("the upstream connection limit
/// is reached") for the whole 30 s; the attacker repeats at will (one HTTP/2 connection can carry
/// `max_connections` such streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_body_byte_then_silence_cannot_lock_others_out_of_an_http1_upstream() {
    let echo = Echo::start().await;
    let gate = Gate::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"2s\"\n\n\
             [upstream]\nurl = \"http://{}\"\nmax_connections = 2\nconnect_timeout = \"500ms\"\n\
             timeout = \"30s\"\n\n\
             [[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n",
            echo.addr
        ),
        &[],
    );
    let mut held = Vec::new();
    for i in 0..2 {
        let mut tcp = TcpStream::connect(gate.addr).await.expect("connect");
        let head = format!(
            "POST /upload/{i} HTTP/1.1\r\nHost: tokengate.test\r\nContent-Length: 100\r\n\r\nA"
        );
        tcp.write_all(head.as_bytes()).await.expect("write");
        held.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (statuses, served) =
        wire::served_within(gate.addr, "/legit", Duration::from_secs(10)).await;
    assert!(
        served,
        "two requests that sent one body byte each keep every other client out of the upstream: \
         statuses {statuses:?} over 10 s (upstream timeout 30 s)\n{}",
        gate.log()
    );
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// 2. HTTP/2 upstream: bodiless streams take every stream slot
// ---------------------------------------------------------------------------------------------

/// `[upstream] protocol = "h2"`, `max_connections = 1`, `timeout = "30s"`; the upstream (a
/// hyper HTTP/2 server reading each body to its end before answering) advertises
/// `SETTINGS_MAX_CONCURRENT_STREAMS = 2`. One HTTP/2 client opens two `POST` streams on the
/// public route and never sends a body byte. A different client must still be served within
/// 10 s. (An HTTP/2 upstream is not waited for the body on purpose — a gRPC server may speak
/// first — but then a client must not be able to take every slot: e.g. a per-client-connection
/// share of the upstream's streams, or the body-start wait for requests that are not gRPC.)
///
/// Found: 503 `temporarily_unavailable` for the whole 30 s, then the attacker opens new streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_streams_cannot_lock_others_out_of_an_http2_upstream() {
    let upstream = H2Upstream::start(
        Options {
            max_concurrent_streams: Some(2),
            ..Options::default()
        },
        handler(|req: Request<Incoming>| async move {
            let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
            Response::new(support::h2_upstream::text_body(format!("{body:?}")))
        }),
    )
    .await;
    let gate = Gate::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"2s\"\n\n\
             [upstream]\nurl = \"http://{}\"\nprotocol = \"h2\"\nmax_connections = 1\n\
             connect_timeout = \"500ms\"\ntimeout = \"30s\"\n\n\
             [[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n",
            upstream.addr
        ),
        &[],
    );
    // Setup: the route works.
    assert_eq!(
        wire::get_status(gate.addr, "/setup").await,
        Some(200),
        "{}",
        gate.log()
    );

    let attacker = H2Client::connect(gate.addr).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let req = h2raw::request("POST", "tokengate.test", &format!("/upload/{i}"), &[]);
        let mut send = attacker.sender().ready().await.expect("h2 ready");
        let (response, stream) = send
            .send_request(req, false)
            .expect("send_request without END_STREAM");
        held.push((response, stream));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (statuses, served) =
        wire::served_within(gate.addr, "/legit", Duration::from_secs(10)).await;
    assert!(
        served,
        "two bodiless HTTP/2 streams keep every other client out of the HTTP/2 upstream: \
         statuses {statuses:?} over 10 s (upstream timeout 30 s)\n{}",
        gate.log()
    );
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// 3. Introspection calls in flight are unbounded
// ---------------------------------------------------------------------------------------------

/// Concurrent introspection calls per issuer that an unauthenticated flood may cause. Any bound
/// up to this passes; the point is that there is one (like `[upstream].max_connections` for the
/// upstream), not its exact value.
const MAX_INTROSPECTION_IN_FLIGHT: usize = 100;

/// An issuer with `[issuer.introspection]` whose endpoint takes 3 s per answer
/// (`fetch_timeout = "5s"`). Three HTTP/2 connections send 100 requests each, every one with a
/// different random opaque token, on a `required` route. The issuer must not see more than
/// [`MAX_INTROSPECTION_IN_FLIGHT`] calls at once: each call is an outbound socket of the proxy
/// and a request under tokengate's client credentials (issuer rate limits then hit every user of
/// opaque tokens), and nothing here needs a credential.
///
/// Found: all 300 calls are in flight at once (measured 1.5 s into the flood, before any
/// answer); in the attack script, 3 such connections against a proxy with 256 file descriptors
/// made `accept` fail for every other client.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_garbage_opaque_tokens_does_not_open_one_introspection_call_each() {
    let issuer = MockIssuer::start().await;
    issuer.configure(|s| s.introspection_delay = Duration::from_secs(3));
    let echo = Echo::start().await;
    let (_keys, key) = support::identity_key();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"http://{}\"\ntimeout = \"5s\"\n\n{}\n\
         [identity]\nsigning_key = {:?}\n\n\
         [[route]]\nid = \"api\"\npath_prefix = \"/\"\n",
        echo.addr,
        issuer_toml(&issuer, "60s", "5s", true),
        key.display().to_string()
    );
    let gate = Gate::start_ready(&toml).await;
    let before = issuer.introspection_calls();

    let mut clients = Vec::new();
    let mut flood = tokio::task::JoinSet::new();
    for c in 0..3 {
        let client = H2Client::connect(gate.addr).await;
        for i in 0..100 {
            let token = format!("garbage-{c}-{i}-{}", support::issuer::now());
            let req = h2raw::request(
                "GET",
                "tokengate.test",
                "/orders",
                &[("authorization", &format!("Bearer {token}"))],
            );
            flood.spawn(h2raw::send_on(client.sender(), req, Bytes::new()));
        }
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let in_flight = issuer.introspection_calls() - before;
    while flood.join_next().await.is_some() {}

    assert!(
        in_flight <= MAX_INTROSPECTION_IN_FLIGHT,
        "300 garbage opaque tokens from one unauthenticated client: {in_flight} introspection \
         calls in flight at once (more than {MAX_INTROSPECTION_IN_FLIGHT}); calls to an issuer \
         must be bounded\n{}",
        gate.log()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 4. DPoP replay after a reload that lengthens max_age
// ---------------------------------------------------------------------------------------------

/// A DPoP world on the real binary: mock issuer (`clock_skew` as given), echo upstream, one
/// `required` catch-all route, `[dpop]` as given.
fn dpop_toml(issuer: &MockIssuer, echo: &Echo, key: &std::path::Path, dpop: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"http://{}\"\ntimeout = \"5s\"\n\n{}\n\
         [dpop]\n{dpop}\n\n\
         [identity]\nsigning_key = {:?}\n\n\
         [[route]]\nid = \"api\"\npath_prefix = \"/\"\n",
        echo.addr,
        issuer_toml(issuer, "0s", "2s", false),
        key.display().to_string()
    )
}

/// GET `/orders` with `Authorization: DPoP <token>` and `DPoP: <proof>`; the status.
async fn dpop_get(gate: &Gate, token: &str, proof: &str) -> u16 {
    let authorization = format!("DPoP {token}");
    support::get(
        &gate.url("/orders"),
        &[("authorization", &authorization), ("dpop", proof)],
    )
    .await
    .status
}

/// `[dpop] max_age = "2s"` and the issuer's `clock_skew = "0s"`: a proof is used once (200);
/// 3.5 s later the operator raises `max_age` to `"300s"` and reloads (SIGHUP). The same proof,
/// sent again, must be refused: it was used. SPEC §4.8 (`jti` not seen within `max_age`), and
/// the checker's own promise that "a reload must not forget which proofs were used". (A fix:
/// after a reload that widens the window, refuse proofs whose `iat` is older than the reload
/// minus the old window until the new window has passed; or keep records for a fixed maximum.)
///
/// Found: 200 — the record was dropped when the old 2 s window closed, and the new window
/// accepts the proof's `iat`, so a captured request can be replayed once more after such a
/// reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_dpop_proof_is_not_accepted_again_after_a_reload_that_lengthens_max_age() {
    let issuer = MockIssuer::start().await;
    let echo = Echo::start().await;
    let (_keys, key) = support::identity_key();
    let mut gate = Gate::start_ready(&dpop_toml(&issuer, &echo, &key, "max_age = \"2s\"")).await;
    let client = Es256::new(7);
    let token = issuer.token("ES256", json!({"cnf": cnf(&client)}));
    let proof = Proof::new(&client, "GET", &gate.url("/orders"), &token).sign(&client);

    assert_eq!(
        dpop_get(&gate, &token, &proof).await,
        200,
        "setup: first use\n{}",
        gate.log()
    );
    assert_eq!(
        dpop_get(&gate, &token, &proof).await,
        401,
        "setup: an immediate replay"
    );

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let config = gate
        .process
        .dir()
        .expect("config dir")
        .join("tokengate.toml");
    std::fs::write(
        &config,
        dpop_toml(&issuer, &echo, &key, "max_age = \"300s\""),
    )
    .expect("rewrite config");
    let reloads = gate.log().matches("configuration reloaded").count();
    gate.process.signal("HUP");
    assert!(
        gate.process
            .wait_stderr_async(WAIT, |log| log.matches("configuration reloaded").count()
                > reloads)
            .await,
        "setup: the reload did not happen\n{}",
        gate.log()
    );

    let status = dpop_get(&gate, &token, &proof).await;
    assert_eq!(
        status, 401,
        "a DPoP proof already used once was accepted again after a reload lengthened max_age"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A token bound to a certificate and a DPoP key, without the certificate
// ---------------------------------------------------------------------------------------------

/// A token with `cnf = {"jkt": <proof key>, "x5t#S256": <some certificate>}`, sent with a valid
/// DPoP proof on a plain-TCP connection (no client certificate at all). Both confirmation
/// methods the issuer put in the token must hold; SPEC §4.8: "a token with `cnf["x5t#S256"]` is
/// accepted only on a TLS connection whose client certificate has that SHA-256 thumbprint".
/// The same token as `Bearer` is refused (it is DPoP-bound), and a token with only `x5t#S256`
/// is refused here, so the DPoP path is the one that forgets the certificate.
///
/// Found: 200, forwarded with `auth = "dpop"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_to_a_certificate_is_refused_without_it_even_with_a_dpop_proof() {
    let issuer = MockIssuer::start().await;
    let echo = Echo::start().await;
    let (_keys, key) = support::identity_key();
    let gate = Gate::start_ready(&dpop_toml(&issuer, &echo, &key, "")).await;
    let client = Es256::new(9);
    let x5t = support::dpop::b64([0x5a_u8; 32]);
    let mut both = cnf(&client);
    both["x5t#S256"] = json!(x5t);
    let token = issuer.token("ES256", json!({ "cnf": both }));

    // Setup: the same key and token shape without the certificate binding is accepted.
    let only_jkt = issuer.token("ES256", json!({"cnf": cnf(&client)}));
    let proof = Proof::new(&client, "GET", &gate.url("/orders"), &only_jkt).sign(&client);
    assert_eq!(
        dpop_get(&gate, &only_jkt, &proof).await,
        200,
        "setup\n{}",
        gate.log()
    );

    let before = echo.seen().len();
    let proof = Proof::new(&client, "GET", &gate.url("/orders"), &token).sign(&client);
    let status = dpop_get(&gate, &token, &proof).await;
    assert_eq!(
        status, 401,
        "a token bound to a TLS client certificate (cnf x5t#S256) was accepted on a connection \
         without one, because it was also DPoP-bound"
    );
    assert_eq!(echo.seen().len(), before, "it reached the upstream");
}

// ---------------------------------------------------------------------------------------------
// 6. traceparent / tracestate as request trailers
// ---------------------------------------------------------------------------------------------

/// An HTTP/2 client sends a `POST` to an HTTP/2 upstream with request trailers `traceparent`
/// (malformed) and `tracestate`. The proxy replaces the client's trace context in the head (a
/// malformed `traceparent` is "ignored, never forwarded", README "Traces"); the trailers must
/// not carry it past the proxy either (README "gRPC services": request trailers are "scrubbed
/// like headers"). A harmless trailer passes.
///
/// Found: both reach the upstream as trailers, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_sent_as_request_trailers_never_reaches_the_upstream() {
    let trailers_seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let recorder = Arc::clone(&trailers_seen);
    let upstream = H2Upstream::start(
        Options::default(),
        handler(move |req: Request<Incoming>| {
            let recorder = Arc::clone(&recorder);
            async move {
                let collected = req.into_body().collect().await.expect("request body");
                *recorder.lock().unwrap() = collected.trailers().cloned();
                Response::new(support::h2_upstream::text_body("ok".to_owned()))
            }
        }),
    )
    .await;
    let gate = Gate::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n\
             [upstream]\nurl = \"http://{}\"\nprotocol = \"h2\"\ntimeout = \"5s\"\n\n\
             [[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n",
            upstream.addr
        ),
        &[],
    );
    let client = H2Client::connect(gate.addr).await;
    let req = h2raw::request("POST", "tokengate.test", "/upload", &[("te", "trailers")]);
    let mut send = client.sender().ready().await.expect("h2 ready");
    let (response, mut stream) = send.send_request(req, false).expect("send_request");
    stream
        .send_data(Bytes::from_static(b"hello"), false)
        .expect("send_data");
    let mut trailers = HeaderMap::new();
    trailers.insert(
        "traceparent",
        "00-not-a-trace-context-!!-01".parse().unwrap(),
    );
    trailers.insert("tracestate", "attacker=chosen".parse().unwrap());
    trailers.insert("x-checksum", "sha256=abc".parse().unwrap());
    stream.send_trailers(trailers).expect("send_trailers");
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("answer in time")
        .expect("response");
    assert_eq!(response.status(), 200, "{}", gate.log());

    let seen = trailers_seen.lock().unwrap().clone().unwrap_or_default();
    assert_eq!(
        seen.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"sha256=abc"[..]),
        "setup: a harmless trailer passes ({seen:?})"
    );
    for name in ["traceparent", "tracestate"] {
        assert!(
            seen.get(name).is_none(),
            "the client's {name} reached the upstream as a request trailer: {:?}",
            seen.get(name)
        );
    }
}
