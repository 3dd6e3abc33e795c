//! Request and connection spans in the log (SPEC §8 Logs), black-box against the real binary.
//!
//! With `TOKENGATE_LOG_FORMAT=json` every line carries its innermost span as `span`
//! (`telemetry::init`: `with_current_span(true)`, no span list): an event logged inside a request
//! has `span.request_id`, one logged by a connection outside any request `span.peer`. Proven here
//! for the events operators search by request id: the forwarder's warning (upstream unreachable),
//! the userinfo client's (endpoint answers 500) and the key fetcher's (a JWKS refresh for an
//! unknown `kid` fails), the last two logged by tasks of their own; and for connection events of
//! a silent HTTP/1.1 client, a failed TLS handshake and an idle HTTP/2 connection. The human
//! format prints the whole chain (`conn{peer}:request{request_id}`), which shows that a request's
//! span is a child of its connection's, HTTP/2 streams (tasks of their own) included.
//! Nothing logged at debug level, the request span included, holds a token or a piece of one.
//!
//! Real time: every wait is bounded by [`SLACK`], far above the 1 s timeouts configured.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::echo::Echo;
use support::gate::Gate;
use support::issuer::{JwksMode, MockIssuer};
use support::{get, h2raw, pki, process, wire};

/// How long a 1 s timeout, or a log line, may take to show on a slow, shared machine.
const SLACK: Duration = Duration::from_secs(30);

/// JSON lines at debug level: the connection events are debug, and the token check wants every
/// line the proxy can write.
const JSON_DEBUG: [(&str, &str); 2] =
    [("TOKENGATE_LOG_FORMAT", "json"), ("TOKENGATE_LOG", "debug")];

/// `[server]` extras, the upstream URL and the rest (issuers, routes); always an admin listener,
/// so a test can wait for the issuers' keys.
fn config(server: &str, upstream: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n\
         [upstream]\nurl = \"{upstream}\"\ntimeout = \"5s\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{rest}"
    )
}

/// One public catch-all route.
const PUBLIC: &str = "[[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n";

/// An upstream URL nothing listens on: every forwarded request fails to connect.
fn unreachable_upstream() -> String {
    format!("http://127.0.0.1:{}", process::free_port())
}

/// The mock issuer and a catch-all route needing its tokens, with `route` keys added.
fn issuer_config(issuer: &MockIssuer, route: &str) -> String {
    format!(
        "{}\n[[route]]\nid = \"api\"\npath_prefix = \"/\"\n{route}\n",
        issuer.config_toml("mock", &["api"])
    )
}

/// The JSON lines logged so far (anything else is skipped).
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str(line.trim()).ok())
        .collect()
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

/// Waits (at most [`SLACK`]) for a JSON line `matches` accepts and returns the first one.
async fn logged(gate: &mut Gate, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let found = gate
        .process
        .wait_stderr_async(SLACK, |log| json_lines(log).iter().any(&matches))
        .await;
    let log = gate.log();
    assert!(found, "no {what} line within {SLACK:?}:\n{log}");
    json_lines(&log)
        .into_iter()
        .find(|line| matches(line))
        .expect("the line just seen")
}

/// Every JSON line logged after the first `skip` whose target starts with one of `targets`.
fn lines_of(log: &str, skip: usize, targets: &[&str]) -> Vec<Value> {
    json_lines(log)
        .into_iter()
        .skip(skip)
        .filter(|line| {
            let target = line["target"].as_str().unwrap_or_default();
            targets.iter().any(|t| target.starts_with(t))
        })
        .collect()
}

#[track_caller]
fn assert_span(line: &Value, field: &str, expected: &str) {
    assert_eq!(
        line["span"][field].as_str(),
        Some(expected),
        "span.{field} should be {expected:?}: {line}"
    );
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------------------------
// Events inside a request name its id
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarders_warning_names_the_request_id() {
    let mut gate = Gate::start(&config("", &unreachable_upstream(), PUBLIC), &JSON_DEBUG);
    let before = json_lines(&gate.log()).len();
    let answer = get(&gate.url("/orders"), &[("x-request-id", "fwd-h1-0001")]).await;
    assert_eq!(answer.status, 502);
    let warning = logged(&mut gate, "forwarder warning", |l| {
        message(l) == "upstream request failed"
    })
    .await;
    assert_eq!(warning["level"], "WARN");
    assert_span(&warning, "request_id", "fwd-h1-0001");
    for line in lines_of(&gate.log(), before, &["tokengate::forward"]) {
        assert_span(&line, "request_id", "fwd-h1-0001");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_userinfo_clients_warning_names_the_request_id() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let rest = format!(
        "[userinfo]\non_error = \"proceed\"\n\n{}",
        issuer_config(&issuer, "userinfo = true")
    );
    let upstream = format!("http://{}", echo.addr);
    let mut gate = Gate::start(&config("", &upstream, &rest), &JSON_DEBUG);
    gate.wait_ready().await;
    issuer.configure(|s| s.userinfo_status = Some(500));
    let before = json_lines(&gate.log()).len();
    let token = issuer.token("ES256", json!({}));
    let answer = get(
        &gate.url("/profile"),
        &[
            ("authorization", &bearer(&token)),
            ("x-request-id", "userinfo-0001"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "on_error = proceed forwards");
    assert_eq!(issuer.hits("/userinfo"), 1);
    // Logged by the call's own task (single-flight), which runs in the leader's request span.
    let warning = logged(&mut gate, "userinfo warning", |l| {
        message(l).starts_with("userinfo call failed")
    })
    .await;
    assert_eq!(warning["level"], "WARN");
    assert_span(&warning, "request_id", "userinfo-0001");
    for line in lines_of(&gate.log(), before, &["tokengate::userinfo"]) {
        assert_span(&line, "request_id", "userinfo-0001");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_fetchers_lines_for_an_unknown_kid_name_the_request_id() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let upstream = format!("http://{}", echo.addr);
    let mut gate = Gate::start(
        &config("", &upstream, &issuer_config(&issuer, "")),
        &JSON_DEBUG,
    );
    gate.wait_ready().await;
    issuer.set_jwks_mode(JwksMode::Status(500));
    let before = json_lines(&gate.log()).len();
    let jwks_hits = issuer.hits("/jwks");
    let token = issuer.token_with_header("ES256", json!({"kid": "not-published"}), json!({}));
    let answer = get(
        &gate.url("/orders"),
        &[
            ("authorization", &bearer(&token)),
            ("x-request-id", "unknown-kid-0001"),
        ],
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(issuer.hits("/jwks"), jwks_hits + 1, "one refresh was tried");
    // The refresh runs in a task of its own (a client hanging up must not cancel it).
    let warning = logged(&mut gate, "key fetcher warning", |l| {
        message(l).starts_with("issuer keys:")
    })
    .await;
    assert_eq!(warning["level"], "WARN");
    assert_span(&warning, "request_id", "unknown-kid-0001");
    // The background refresh is minutes away: every line since of the key fetcher and of the
    // HTTP client it fetched with (reqwest on hyper-util) is this request's.
    let targets = ["tokengate::token", "reqwest", "hyper_util::client"];
    let lines = lines_of(&gate.log(), before, &targets);
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        assert_span(line, "request_id", "unknown-kid-0001");
    }
}

// ---------------------------------------------------------------------------------------------
// Events of a connection name its peer
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http1_client_is_closed_with_its_peer_in_the_span() {
    let server = "header_read_timeout = \"1s\"";
    let mut gate = Gate::start(
        &config(server, &unreachable_upstream(), PUBLIC),
        &JSON_DEBUG,
    );
    let mut silent = TcpStream::connect(gate.addr).await.expect("connect");
    let peer = silent.local_addr().expect("local address").to_string();
    let exchange = wire::read_until_closed(&mut silent, SLACK).await;
    assert!(exchange.closed, "a client that sends nothing is closed");
    let event = logged(&mut gate, "closed silent connection", |l| {
        message(l).starts_with("no request within header_read_timeout")
            && l["span"]["peer"].as_str() == Some(peer.as_str())
    })
    .await;
    assert_eq!(event["level"], "DEBUG");
    assert_span(&event, "peer", &peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tls_handshake_is_logged_with_its_peer_in_the_span() {
    let pki = pki::pki();
    let dir = tempfile::tempdir().expect("tempdir");
    // `[server.tls]`, right after `[server]`'s keys.
    let tls = pki.server_tls_toml(&dir);
    let mut gate = Gate::start(&config(&tls, &unreachable_upstream(), PUBLIC), &JSON_DEBUG);
    // Plain HTTP to a TLS listener: not a ClientHello.
    let mut client = TcpStream::connect(gate.addr).await.expect("connect");
    let peer = client.local_addr().expect("local address").to_string();
    let request = wire::request("GET", "/", "tokengate.test", &[]);
    client.write_all(&request).await.expect("write");
    assert!(wire::read_until_closed(&mut client, SLACK).await.closed);
    let event = logged(&mut gate, "TLS handshake failure", |l| {
        message(l) == "TLS handshake failed" && l["span"]["peer"].as_str() == Some(peer.as_str())
    })
    .await;
    assert_eq!(event["level"], "DEBUG");
    assert_span(&event, "peer", &peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_logs_its_peer_and_its_requests_their_ids() {
    let server = "idle_timeout = \"1s\"";
    let mut gate = Gate::start(
        &config(server, &unreachable_upstream(), PUBLIC),
        &JSON_DEBUG,
    );
    let (send, peer, _driver) = h2_connect(gate.addr).await;
    let request = h2raw::request(
        "GET",
        "tokengate.test",
        "/orders",
        &[("x-request-id", "fwd-h2-0001")],
    );
    let answer = h2raw::send_on(send.clone(), request, Bytes::new())
        .await
        .expect("h2 answer");
    assert_eq!(answer.status, 502);
    let warning = logged(&mut gate, "forwarder warning", |l| {
        message(l) == "upstream request failed"
    })
    .await;
    assert_span(&warning, "request_id", "fwd-h2-0001");
    // No stream open for idle_timeout: the connection's watchdog says so, in the connection span.
    let event = logged(&mut gate, "idle HTTP/2 connection", |l| {
        message(l).starts_with("HTTP/2 connection idle")
    })
    .await;
    assert_eq!(event["level"], "DEBUG");
    assert_span(&event, "peer", &peer);
    // Held open until here: a client that hung up would not be an idle connection.
    drop(send);
}

// Attack pass 5: once the connection span stopped being entered around every poll, the HTTP/2
// library's first line (its SETTINGS frame, written as the connection is made) lost the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_librarys_first_settings_line_names_the_peer() {
    let mut gate = Gate::start(&config("", &unreachable_upstream(), PUBLIC), &JSON_DEBUG);
    let (send, peer, _driver) = h2_connect(gate.addr).await;
    let settings = logged(&mut gate, "the server's SETTINGS frame", |l| {
        message(l) == "send"
            && l["frame"]
                .as_str()
                .is_some_and(|f| f.starts_with("Settings { flags: (0x0)"))
            && l["spans"].as_array().is_some_and(|spans| {
                spans
                    .iter()
                    .any(|s| s["peer"].as_str() == Some(peer.as_str()))
            })
    })
    .await;
    assert_eq!(settings["level"], "DEBUG");
    assert_span(&settings, "peer", &peer);
    drop(send);
}

/// An h2c connection from a socket whose address (the proxy's peer) the test knows, driven by
/// the returned task.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    String,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let peer = tcp.local_addr().expect("local address").to_string();
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, peer, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_span_is_a_child_of_its_connections_over_http1_and_http2() {
    // Human format: each line prints its whole span chain.
    let env = [("TOKENGATE_LOG", "info")];
    let mut gate = Gate::start(&config("", &unreachable_upstream(), PUBLIC), &env);

    let mut h1 = TcpStream::connect(gate.addr).await.expect("connect");
    let h1_peer = h1.local_addr().expect("local address").to_string();
    let request = wire::request(
        "GET",
        "/orders",
        "tokengate.test",
        &["X-Request-Id: chain-h1"],
    );
    h1.write_all(&request).await.expect("write");
    assert_eq!(
        wire::read_until_closed(&mut h1, SLACK).await.reply().status,
        502
    );

    let (send, h2_peer, _driver) = h2_connect(gate.addr).await;
    let request = h2raw::request(
        "GET",
        "tokengate.test",
        "/orders",
        &[("x-request-id", "chain-h2")],
    );
    let answer = h2raw::send_on(send, request, Bytes::new())
        .await
        .expect("h2 answer");
    assert_eq!(answer.status, 502);

    for (id, peer) in [("chain-h1", h1_peer), ("chain-h2", h2_peer)] {
        let chain = format!("peer={peer}}}:request{{request_id=\"{id}\"}}");
        let found = gate
            .process
            .wait_stderr_async(SLACK, |log| {
                log.lines()
                    .any(|l| l.contains("upstream request failed") && l.contains(&chain))
            })
            .await;
        assert!(
            found,
            "no forwarder warning under `…{chain}`:\n{}",
            gate.log()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// No token in any line
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_debug_line_holds_a_token_or_a_sixteen_character_piece_of_one() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let rest = format!(
        "[userinfo]\non_error = \"proceed\"\n\n{}",
        issuer_config(&issuer, "userinfo = true")
    );
    let upstream = format!("http://{}", echo.addr);
    let mut gate = Gate::start(&config("", &upstream, &rest), &JSON_DEBUG);
    gate.wait_ready().await;
    let call = |token: &str, id: &str| {
        let (url, auth, id) = (gate.url("/orders"), bearer(token), id.to_owned());
        async move { get(&url, &[("authorization", &auth), ("x-request-id", &id)]).await }
    };

    // Accepted, enriched by userinfo and forwarded.
    let good = issuer.token("ES256", json!({"sub": "alice"}));
    assert_eq!(call(&good, "leak-ok").await.status, 200);
    // Refused by userinfo (401, logged at info).
    let revoked = issuer.token("ES256", json!({"sub": "bob"}));
    issuer.configure(|s| {
        s.revoked.insert(revoked.clone());
    });
    assert_eq!(call(&revoked, "leak-revoked").await.status, 401);
    // Userinfo fails (a warning); the request goes on with the token's claims.
    let failing = issuer.token("ES256", json!({"sub": "carol"}));
    issuer.configure(|s| {
        s.revoked.clear();
        s.userinfo_status = Some(500);
    });
    assert_eq!(call(&failing, "leak-failing").await.status, 200);
    // A forged signature.
    let mut forged = issuer.token("ES256", json!({"sub": "mallory"}));
    forged.replace_range(forged.len() - 8.., "AAAAAAAA");
    assert_eq!(call(&forged, "leak-forged").await.status, 401);
    // An unknown kid whose refresh fails (the key fetcher's warning).
    issuer.set_jwks_mode(JwksMode::Status(500));
    let unknown = issuer.token_with_header("ES256", json!({"kid": "gone"}), json!({"sub": "dave"}));
    assert_eq!(call(&unknown, "leak-kid").await.status, 401);

    // Every request's access line is out, and with it everything logged inside the request.
    for id in [
        "leak-ok",
        "leak-revoked",
        "leak-failing",
        "leak-forged",
        "leak-kid",
    ] {
        logged(&mut gate, "access", |l| l["request_id"] == id).await;
    }
    logged(&mut gate, "key fetcher warning", |l| {
        message(l).starts_with("issuer keys:")
    })
    .await;
    let log = gate.log();
    assert!(
        log.lines().any(|l| l.contains("\"DEBUG\"")),
        "debug lines are on"
    );
    for token in [&good, &revoked, &failing, &forged, &unknown] {
        assert!(!log.contains(token.as_str()), "a token is in the log");
        for window in token.as_bytes().windows(16) {
            let piece = std::str::from_utf8(window).expect("a JWT is ASCII");
            let line = log.lines().find(|l| l.contains(piece));
            assert!(
                line.is_none(),
                "{piece:?} of a token is in the log: {line:?}"
            );
        }
    }
}
