//! Connections that never finish, HTTP/2 idle and stream limits, and the upstream connection cap
//! (SPEC §3 `[server]` `header_read_timeout`, `idle_timeout`, `max_concurrent_streams`,
//! `max_connections`; `[upstream]` `max_connections`, `connect_timeout`; §6 503 row), black-box
//! against the real binary.
//!
//! The attacks: a handful of sockets that stop at any point before a complete request head (no
//! byte, one byte of the HTTP/2 preface, the whole preface, preface and SETTINGS, half an
//! HTTP/1.1 head) must not hold `max_connections` slots forever; and many client requests to a
//! slow upstream must not make the proxy open sockets without bound (file descriptors run out and
//! the whole proxy stops accepting). Timing assertions have wide slack: "closed within 15 s" for
//! a 1 s timeout, never "at 1 s".
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::echo::Echo;
use support::gate::Gate;
use support::h2raw::{self, H2Answer, H2Client, SETTINGS_MAX_CONCURRENT_STREAMS};
use support::wire;

/// How long a 1 s timeout may take to show on a slow, shared machine.
const SLACK: Duration = Duration::from_secs(15);

/// The binary with `[server]` and `[upstream]` extras and one public catch-all route.
fn start(echo: &Echo, server: &str, upstream: &str) -> Gate {
    Gate::start(&config(echo, server, upstream), &[])
}

fn config(echo: &Echo, server: &str, upstream: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n\
         [upstream]\nurl = \"http://{}\"\n{upstream}\n\n\
         [[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n",
        echo.addr
    )
}

/// A plain GET over HTTP/1.1 until it is answered 200 (a slot freed by the proxy may take a
/// moment to be reusable after the client saw the close); panics after `SLACK`.
async fn eventually_served(addr: SocketAddr, log: impl Fn() -> String) {
    let deadline = Instant::now() + SLACK;
    let bytes = wire::request("GET", "/legit", "tokengate.test", &[]);
    loop {
        let exchange = wire::exchange(addr, &bytes, Duration::from_secs(5)).await;
        if exchange
            .replies(&[])
            .first()
            .is_some_and(|r| r.status == 200)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a legitimate client is still locked out {SLACK:?} later\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets that stop before a complete request head
// ---------------------------------------------------------------------------------------------

/// Fills every slot of `max_connections = 3` with sockets that sent `prefix` and then nothing;
/// each must be closed by the proxy (with `header_read_timeout = "1s"`), and a legitimate
/// client is served afterwards.
async fn slots_are_freed_after(prefix: &[u8], what: &str) {
    let echo = Echo::start().await;
    let gate = start(
        &echo,
        "header_read_timeout = \"1s\"\nmax_connections = 3",
        "timeout = \"5s\"",
    );
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(gate.addr).await.expect("connect");
        if !prefix.is_empty() {
            tcp.write_all(prefix).await.expect("write");
        }
        sockets.push(tcp);
    }
    let started = Instant::now();
    for (i, tcp) in sockets.iter_mut().enumerate() {
        let left = SLACK.saturating_sub(started.elapsed());
        let end = wire::read_until_closed(tcp, left).await;
        assert!(
            end.closed,
            "{what}: socket {i} still open {SLACK:?} after it stopped (read {:?})\n{}",
            h2raw::parse_frames(&end.bytes),
            gate.log()
        );
    }
    eprintln!("{what}: all three closed after {:?}", started.elapsed());
    assert!(echo.seen().is_empty(), "{what}: something was forwarded");
    eventually_served(gate.addr, || gate.log()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_send_nothing_are_closed_and_free_their_slots() {
    slots_are_freed_after(b"", "nothing sent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_send_one_byte_of_the_http2_preface_are_closed_and_free_their_slots() {
    slots_are_freed_after(b"P", "\"P\" sent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_send_the_http2_preface_only_are_closed_and_free_their_slots() {
    slots_are_freed_after(h2raw::PREFACE, "preface sent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_send_preface_and_settings_then_nothing_are_closed_and_free_their_slots() {
    let mut hello = h2raw::PREFACE.to_vec();
    hello.extend_from_slice(&h2raw::settings_frame(&[]));
    slots_are_freed_after(&hello, "preface + SETTINGS sent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_send_half_an_http1_head_are_closed_and_free_their_slots() {
    slots_are_freed_after(
        b"GET /slow-head HTTP/1.1\r\nHost: tokengate.test\r\nX-Partial: ",
        "half an HTTP/1.1 head sent",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 idle connections and stream limit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connection_gets_goaway_and_is_closed() {
    let echo = Echo::start().await;
    // A long header_read_timeout: only idle_timeout can close this connection within SLACK.
    let gate = start(
        &echo,
        "header_read_timeout = \"60s\"\nidle_timeout = \"1s\"",
        "timeout = \"10s\"",
    );
    let client = H2Client::connect(gate.addr).await;
    let req = h2raw::request("GET", "tokengate.test", "/once", &[]);
    let answer = client.send(req, Bytes::new()).await.expect("answer");
    assert_eq!(answer.status, 200);
    assert!(
        client.closed_within(SLACK).await,
        "an idle HTTP/2 connection is still open {SLACK:?} later\n{}",
        gate.log()
    );
    assert!(
        client.got_goaway(),
        "closed without GOAWAY: {:?}",
        client.frames()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connection_with_an_open_stream_is_not_closed_by_idle_timeout() {
    let echo = Echo::start().await;
    let gate = start(
        &echo,
        "header_read_timeout = \"60s\"\nidle_timeout = \"1s\"",
        "timeout = \"10s\"",
    );
    let client = H2Client::connect(gate.addr).await;
    // The stream stays open three times as long as idle_timeout.
    let req = h2raw::request("GET", "tokengate.test", "/slow/3000", &[]);
    let answer = client.send(req, Bytes::new()).await;
    let goaway_during_stream = client.got_goaway();
    let answer: H2Answer = answer.unwrap_or_else(|e| panic!("the long stream failed: {e}"));
    assert_eq!(answer.status, 200);
    assert!(
        answer.json()["target"] == "/slow/3000",
        "incomplete body: {:?}",
        answer.body
    );
    assert!(
        !goaway_during_stream,
        "GOAWAY while a stream was open: {:?}",
        client.frames()
    );
    // Idle once the stream is done: now it goes.
    assert!(
        client.closed_within(SLACK).await,
        "still open {SLACK:?} after the stream ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_is_advertised_in_the_settings_frame() {
    let echo = Echo::start().await;
    let gate = start(&echo, "max_concurrent_streams = 7", "timeout = \"5s\"");
    let settings = h2raw::server_settings(gate.addr, SLACK).await;
    let advertised = settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|(_, value)| *value);
    assert_eq!(advertised, Some(7), "SETTINGS: {settings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_defaults_to_100() {
    let echo = Echo::start().await;
    let gate = start(&echo, "", "timeout = \"5s\"");
    let settings = h2raw::server_settings(gate.addr, SLACK).await;
    let advertised = settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|(_, value)| *value);
    assert_eq!(advertised, Some(100), "SETTINGS: {settings:?}");
}

// ---------------------------------------------------------------------------------------------
// Upstream connection cap
// ---------------------------------------------------------------------------------------------

const CAPPED_UPSTREAM: &str = "max_connections = 2\nconnect_timeout = \"500ms\"\ntimeout = \"20s\"";

/// `GET path` over HTTP/1.1 on its own connection, answered in full.
async fn h1_get(addr: SocketAddr, path: &str) -> wire::Reply {
    let bytes = wire::request("GET", path, "tokengate.test", &[]);
    wire::exchange(addr, &bytes, Duration::from_secs(30))
        .await
        .reply()
}

fn assert_unavailable(status: u16, retry_after: Option<&str>, body: &[u8], what: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, 503, "{what}: {text}");
    assert!(retry_after.is_some(), "{what}: 503 without Retry-After");
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: 503 body is not JSON ({e}): {text}"));
    assert_eq!(json["error"], "temporarily_unavailable", "{what}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_upstream_connection_cap_gets_503_with_retry_after() {
    let echo = Echo::start().await;
    let gate = start(&echo, "", CAPPED_UPSTREAM);
    let addr = gate.addr;
    let first = tokio::spawn(async move { h1_get(addr, "/slow/4000").await });
    let second = tokio::spawn(async move { h1_get(addr, "/slow/4000").await });
    let deadline = Instant::now() + SLACK;
    while echo.seen().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the first two requests never reached the upstream\n{}",
            gate.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let third = h1_get(addr, "/third").await;
    assert_unavailable(
        third.status,
        third.header("retry-after"),
        &third.body,
        "third request",
    );
    assert_eq!(third.header("content-type"), Some("application/json"));

    for handle in [first, second] {
        assert_eq!(handle.await.expect("task").status, 200);
    }
    assert!(
        echo.connections() <= 2,
        "the upstream saw {} connections",
        echo.connections()
    );
    assert!(!echo.seen().iter().any(|s| s.target == "/third"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_http2_streams_to_a_slow_endpoint_never_exceed_the_upstream_cap() {
    let echo = Echo::start().await;
    let gate = start(&echo, "", CAPPED_UPSTREAM);
    let client = H2Client::connect(gate.addr).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        let send = client.sender();
        let req = h2raw::request("GET", "tokengate.test", &format!("/slow/2000?n={i}"), &[]);
        streams.push(tokio::spawn(h2raw::send_on(send, req, Bytes::new())));
    }
    let mut ok = 0;
    let mut unavailable = 0;
    for stream in streams {
        let answer = stream.await.expect("task").expect("answer");
        match answer.status {
            200 => ok += 1,
            _ => {
                assert_unavailable(
                    answer.status,
                    answer.header("retry-after"),
                    &answer.body,
                    "a stream over the cap",
                );
                unavailable += 1;
            }
        }
    }
    eprintln!("{ok} answered, {unavailable} refused with 503");
    assert!(
        echo.connections() <= 2,
        "20 streams made the proxy open {} upstream connections",
        echo.connections()
    );
    assert!(ok >= 1, "no stream reached the upstream");
    assert!(unavailable >= 1, "every stream was served within the cap?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_logged_at_start_with_soft_and_hard_values() {
    let echo = Echo::start().await;
    let gate = Gate::start(
        &config(&echo, "", "timeout = \"5s\""),
        &[("TOKENGATE_LOG_FORMAT", "json")],
    );
    // Startup lines come before or right after "tokengate serving"; give them a moment.
    let mut process = gate.process;
    let found = process
        .wait_stderr_async(SLACK, |log| log.lines().any(is_file_limit_line))
        .await;
    let log = process.stderr();
    assert!(found, "no open-file limit line at start:\n{log}");
    let line = log
        .lines()
        .find(|l| is_file_limit_line(l))
        .expect("the line");
    let numbers = numbers_in_json_line(line);
    assert!(
        numbers.len() >= 2,
        "the open-file limit line should carry a soft and a hard value: {line}"
    );
}

/// A log line about the open-file (`RLIMIT_NOFILE`) limit, however it is worded.
fn is_file_limit_line(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    [
        "open file",
        "open-file",
        "nofile",
        "file descriptor",
        "fd limit",
        "file limit",
        "rlimit",
    ]
    .iter()
    .any(|k| lower.contains(k))
}

/// The numbers in a JSON log line's values (numbers, and digit runs inside strings), the
/// timestamp and source location left out.
fn numbers_in_json_line(line: &str) -> Vec<String> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(line) else {
        panic!("not a JSON log line: {line}");
    };
    let mut numbers = Vec::new();
    let mut values: Vec<(String, serde_json::Value)> = map.into_iter().collect();
    while let Some((key, value)) = values.pop() {
        if [
            "timestamp",
            "time",
            "line_number",
            "line",
            "threadId",
            "thread_id",
        ]
        .contains(&key.as_str())
        {
            continue;
        }
        match value {
            serde_json::Value::Number(n) => numbers.push(n.to_string()),
            serde_json::Value::String(s) => numbers.extend(
                s.split(|c: char| !c.is_ascii_digit())
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned),
            ),
            serde_json::Value::Object(inner) => values.extend(inner),
            _ => {}
        }
    }
    numbers
}
