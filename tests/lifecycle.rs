//! The process lifecycle and logs (SPEC §8), with the built binary as a subprocess in front of
//! the in-process echo upstream: SIGTERM drains in-flight requests, stops accepting and exits 0;
//! `shutdown_grace` bounds the drain; with `TOKENGATE_LOG_FORMAT=json` every request gives
//! exactly one access line with the documented top-level fields, and no log line ever holds the
//! bearer token.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use support::echo::Echo;
use support::process::Process;

/// Generous bounded waits: a debug binary on a slow, shared machine.
const WAIT: Duration = Duration::from_secs(60);

/// Public routes under `/pub` and `/slow` (the echo's slow answers), nothing else (so `/nope`
/// is 404). The upstream timeout is long enough for the slow requests below.
fn config(upstream: SocketAddr, server: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n\
         [upstream]\nurl = \"http://{upstream}\"\ntimeout = \"120s\"\n\n\
         [[route]]\nid = \"pub\"\npath_prefix = \"/pub\"\nauth = \"public\"\n\n\
         [[route]]\nid = \"slow\"\npath_prefix = \"/slow\"\nauth = \"public\"\n"
    )
}

/// GET over HTTP/1.1 that reports failures instead of panicking: `Ok((status, body))`.
async fn try_get(
    url: String,
    headers: Vec<(&'static str, String)>,
) -> Result<(u16, Bytes), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::get(url);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, body))
}

/// Waits until the echo upstream has received a request for `target`.
async fn until_upstream_saw(echo: &Echo, target: &str) {
    let deadline = Instant::now() + WAIT;
    while !echo.seen().iter().any(|s| s.target == target) {
        assert!(
            Instant::now() < deadline,
            "the upstream never received {target}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_in_flight_request_refuses_new_connections_and_exits_0() {
    let echo = Echo::start().await;
    let (mut proxy, addr) =
        Process::serve_ready(&config(echo.addr, "shutdown_grace = \"30s\""), &[]);

    let in_flight = tokio::spawn(try_get(format!("http://{addr}/slow/5000"), vec![]));
    until_upstream_saw(&echo, "/slow/5000").await;
    let signalled = Instant::now();
    proxy.sigterm();
    assert!(
        proxy
            .wait_stderr_async(WAIT, |log| log.contains("SIGTERM received")
                || log.contains("shutting down"))
            .await,
        "no shutdown log line after SIGTERM\n{}",
        proxy.stderr()
    );

    // New connections are refused once the signal is handled (the process is still draining).
    let refused = async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) => break e,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    let error = tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "new connections still accepted 10 s after SIGTERM\n{}",
                proxy.stderr()
            )
        });
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{error}"
    );
    let still_draining = proxy.try_wait().is_none() && !in_flight.is_finished();
    eprintln!(
        "connection refused {:?} after SIGTERM; proxy still draining then: {still_draining}",
        signalled.elapsed()
    );

    let (status, body) = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the in-flight request finishes")
        .expect("task")
        .unwrap_or_else(|e| panic!("the in-flight request failed: {e}\n{}", proxy.stderr()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echoed: Value = serde_json::from_slice(&body).expect("echo JSON");
    assert_eq!(echoed["target"], "/slow/5000");

    let exit = proxy
        .wait_exit_async(WAIT)
        .await
        .unwrap_or_else(|| panic!("still running after the drain\n{}", proxy.stderr()));
    assert_eq!(exit.code(), Some(0), "{}", proxy.stderr());
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_cuts_off_a_request_that_is_too_slow() {
    let echo = Echo::start().await;
    let (mut proxy, addr) =
        Process::serve_ready(&config(echo.addr, "shutdown_grace = \"1s\""), &[]);

    // The upstream would answer only after 60 s; the grace is 1 s.
    let in_flight = tokio::spawn(try_get(format!("http://{addr}/slow/60000"), vec![]));
    until_upstream_saw(&echo, "/slow/60000").await;
    let signalled = Instant::now();
    proxy.sigterm();
    // Bounded: far below the upstream's 60 s, far above the 1 s grace.
    let exit = proxy
        .wait_exit_async(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 20 s after SIGTERM with shutdown_grace = 1s\n{}",
                proxy.stderr()
            )
        });
    let took = signalled.elapsed();
    assert_eq!(exit.code(), Some(0), "{}", proxy.stderr());
    eprintln!("exited {took:?} after SIGTERM (shutdown_grace = 1s)");
    let outcome = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the client notices")
        .expect("task");
    assert!(
        !matches!(outcome, Ok((200, _))),
        "the cut-off request cannot have completed: {outcome:?}"
    );
}

/// The startup line says the proxy is serving; from then on SIGTERM must be handled (drain,
/// exit 0), not kill the process with the default signal action. Repeated, since it is a race.
#[test]
fn sigterm_right_after_the_startup_line_exits_0() {
    let toml = "[server]\nlisten = \"127.0.0.1:0\"\n\n\
                [upstream]\nurl = \"http://127.0.0.1:9\"\n\n\
                [[route]]\nid = \"all\"\npath_prefix = \"/\"\nauth = \"public\"\n";
    // The window is narrow and starting `kill` takes about as long, so a shell is started
    // first, blocked on `read`; one newline makes it run its builtin `kill` at once.
    let rounds = 50;
    for round in 1..=rounds {
        let mut proxy = Process::serve(toml, &[]);
        let mut shell = std::process::Command::new("sh")
            .args([
                "-c",
                "read _ && kill -TERM \"$0\"",
                &proxy.pid().to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut trigger = shell.stdin.take().expect("stdin");
        let started = proxy.wait_stderr(WAIT, |log| log.contains("tokengate serving"));
        std::io::Write::write_all(&mut trigger, b"\n").expect("trigger");
        drop(trigger);
        let sent = shell.wait().expect("sh");
        assert!(started, "never started\n{}", proxy.stderr());
        assert!(sent.success(), "kill failed");
        let exit = proxy
            .wait_exit(WAIT)
            .unwrap_or_else(|| panic!("still running after SIGTERM\n{}", proxy.stderr()));
        assert_eq!(
            exit.code(),
            Some(0),
            "round {round} of {rounds}: a SIGTERM sent right after \"tokengate serving\" ended \
             the process with {exit} instead of a graceful exit 0 (the signal handler is \
             installed after the startup line)\n{}",
            proxy.stderr()
        );
    }
}

/// Starts the proxy with `shutdown_grace` and `header_read_timeout` far above the bound that
/// [`assert_prompt_exit`] asserts, so only closing idle connections at once lets it exit in time.
async fn proxy_with_long_limits(echo: &Echo) -> (Process, SocketAddr) {
    Process::serve_ready(
        &config(
            echo.addr,
            "shutdown_grace = \"60s\"\nheader_read_timeout = \"60s\"",
        ),
        &[],
    )
}

async fn assert_prompt_exit(proxy: &mut Process, what: &str) {
    let signalled = Instant::now();
    proxy.sigterm();
    let exit = proxy
        .wait_exit_async(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 20 s after SIGTERM with only {what} open (nothing in flight; \
                 shutdown_grace and header_read_timeout are 60 s)\n{}",
                proxy.stderr()
            )
        });
    eprintln!("exited {:?} after SIGTERM with {what}", signalled.elapsed());
    assert_eq!(exit.code(), Some(0), "{}", proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_does_not_hold_up_the_exit() {
    let echo = Echo::start().await;
    let (mut proxy, addr) = proxy_with_long_limits(&echo).await;
    let mut kept = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /pub/keep HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut kept, request.as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\"body_len\":0}") {
        let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut kept, &mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_prompt_exit(&mut proxy, "an idle HTTP/1.1 keep-alive connection").await;
    drop(kept);
}

/// A client that connected but has not sent a byte yet (a TCP health check, a browser's
/// preconnect) is an idle connection too: SIGTERM closes it at once (SPEC §8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sent_nothing_does_not_hold_up_the_exit() {
    let echo = Echo::start().await;
    let (mut proxy, addr) = proxy_with_long_limits(&echo).await;
    let silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Let the proxy accept it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_prompt_exit(&mut proxy, "a connection that has sent nothing").await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_does_not_hold_up_the_exit() {
    let echo = Echo::start().await;
    let (mut proxy, addr) = proxy_with_long_limits(&echo).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}/pub/h2-idle"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = send.send_request(req).await.expect("h2 request");
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await.expect("body");
    assert_prompt_exit(&mut proxy, "an idle HTTP/2 connection").await;
    // The server ended the connection (GOAWAY, then close): the client's driver finishes.
    let ended = tokio::time::timeout(WAIT, driver).await;
    assert!(ended.is_ok(), "the HTTP/2 connection was not closed");
    drop(send);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_exits_0_too() {
    let echo = Echo::start().await;
    let (mut proxy, addr) =
        Process::serve_ready(&config(echo.addr, "shutdown_grace = \"30s\""), &[]);
    let in_flight = tokio::spawn(try_get(format!("http://{addr}/slow/2000"), vec![]));
    until_upstream_saw(&echo, "/slow/2000").await;
    proxy.signal("INT");
    let (status, _) = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the in-flight request finishes")
        .expect("task")
        .unwrap_or_else(|e| panic!("the in-flight request failed: {e}\n{}", proxy.stderr()));
    assert_eq!(status, 200);
    let exit = proxy
        .wait_exit_async(WAIT)
        .await
        .unwrap_or_else(|| panic!("still running after SIGINT\n{}", proxy.stderr()));
    assert_eq!(exit.code(), Some(0), "{}", proxy.stderr());
}

/// The JSON objects among the log lines that are access lines (they have `request_id`).
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("request_id").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_one_line_per_request_without_the_token() {
    let echo = Echo::start().await;
    let (mut proxy, addr) = Process::serve_ready(
        &config(echo.addr, "shutdown_grace = \"30s\""),
        &[("TOKENGATE_LOG_FORMAT", "json")],
    );
    let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJsb2ctdGVzdCJ9.c2VjcmV0LXRva2VuLWxvZy10ZXN0";
    let bearer = format!("Bearer {token}");
    let auth = || vec![("authorization", bearer.clone())];
    let with_id = |id: &str| {
        let mut h = auth();
        h.push(("x-request-id", id.to_owned()));
        h
    };

    // (request id, target, expected status, expected normalized path or None)
    let cases: [(&str, &str, u16, Option<&str>); 4] = [
        ("log-ok-1", "/pub/a/./b/../c?q=1", 200, Some("/pub/a/c")),
        ("log-ok-2", "/pub//x", 200, Some("/pub/x")),
        ("log-404", "/nope", 404, Some("/nope")),
        ("log-400", "/pub/%2F", 400, None),
    ];
    for (id, target, status, _) in cases {
        let (got, body) = try_get(format!("http://{addr}{target}"), with_id(id))
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(got, status, "{target}: {}", String::from_utf8_lossy(&body));
        assert!(
            !String::from_utf8_lossy(&body).contains(token),
            "{target}: the answer holds the token"
        );
    }
    // One over HTTP/2 (h2c) and one without a client request id.
    let h2 = support::send_h2(
        Request::get(format!("http://{addr}/pub/h2"))
            .header("authorization", bearer.as_str())
            .header("x-request-id", "log-h2")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(h2.status, 200);
    let (got, _) = try_get(format!("http://{addr}/pub/no-id"), auth())
        .await
        .expect("request");
    assert_eq!(got, 200);
    let total = cases.len() + 2;

    // Let the last line be written, then stop the process so the log is complete.
    let written = proxy
        .wait_stderr_async(WAIT, |log| access_lines(log).len() >= total)
        .await;
    assert!(written, "expected {total} access lines\n{}", proxy.stderr());
    proxy.sigterm();
    let exit = proxy.wait_exit_async(WAIT).await.expect("exits");
    assert_eq!(exit.code(), Some(0));
    let log = proxy.stderr();

    // Every line is a JSON object; none holds the token (or the Authorization header's value).
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(value.is_object(), "not a JSON object: {line:?}");
        assert!(!line.contains(token), "a log line holds the token: {line}");
        assert!(
            !line.contains("c2VjcmV0LXRva2VuLWxvZy10ZXN0"),
            "a log line holds part of the token: {line}"
        );
    }
    assert!(!proxy.stdout().contains(token));

    let lines = access_lines(&log);
    assert_eq!(
        lines.len(),
        total,
        "exactly one access line per request\n{log}"
    );
    let h2_cases = [("log-h2", "/pub/h2", 200, Some("/pub/h2"))];
    for (id, target, status, path) in cases.iter().chain(h2_cases.iter()) {
        let mine: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == *id).collect();
        assert_eq!(
            mine.len(),
            1,
            "{target}: one access line with request_id {id}\n{log}"
        );
        let line = mine[0];
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["status"], *status, "{target}: {line}");
        assert!(line["status"].is_u64(), "status is a number: {line}");
        assert!(
            line["latency_ms"].is_number(),
            "latency_ms is a number: {line}"
        );
        assert!(line["path"].is_string(), "{line}");
        assert!(line.get("route").is_some(), "route: {line}");
        if let Some(path) = path {
            assert_eq!(line["path"], *path, "the normalized path: {line}");
        }
        if *status == 200 {
            assert_eq!(line["route"], "pub", "{line}");
            assert!(
                line.get("reason").is_none_or(Value::is_null),
                "no reason for a success: {line}"
            );
        } else {
            assert!(
                line["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "a rejection has a reason: {line}"
            );
        }
    }
    // The request without an X-Request-Id got a generated one, logged like the others.
    let generated: Vec<&Value> = lines.iter().filter(|l| l["path"] == "/pub/no-id").collect();
    assert_eq!(generated.len(), 1, "{log}");
    assert!(
        generated[0]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{}",
        generated[0]
    );
    // The echo saw no Authorization header: public routes do not forward it.
    assert!(echo
        .seen()
        .iter()
        .all(|s| s.header("authorization").is_none()));
}

/// Access lines are handed to the log thread in batches (when a worker parks, or at 16 KiB):
/// many concurrent requests, well past one batch, each get exactly one line, and a SIGTERM right
/// after the last answer loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_access_lines_are_all_written_once_even_at_exit() {
    let echo = Echo::start().await;
    let (mut proxy, addr) = Process::serve_ready(
        &config(echo.addr, "shutdown_grace = \"30s\""),
        &[("TOKENGATE_LOG_FORMAT", "json")],
    );
    // About 250 bytes per line: 400 lines are several batches.
    let total = 400;
    let mut tasks = Vec::new();
    for i in 0..total {
        let url = format!("http://{addr}/pub/batch");
        let id = vec![("x-request-id", format!("batch-{i}"))];
        tasks.push(tokio::spawn(try_get(url, id)));
    }
    for task in tasks {
        let (status, _) = task.await.expect("task").expect("request");
        assert_eq!(status, 200);
    }
    proxy.sigterm();
    let exit = proxy.wait_exit_async(WAIT).await.expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", proxy.stderr());
    let log = proxy.stderr();
    let mut ids: Vec<String> = access_lines(&log)
        .iter()
        .filter_map(|l| l["request_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..total).map(|i| format!("batch-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "one access line per request, none lost at exit");
}
