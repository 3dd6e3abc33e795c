//! Resource limits (SPEC §3 `[server]`, §6): request head size, slow or silent clients, and the
//! cap on concurrent connections. Every wait is bounded; none of the assertions is about speed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::echo::Echo;
use support::{get, raw, raw_status, send_h2, Proxy};

/// Generous upper bound for anything the server should do "at once" or after a 1 s timeout.
const WAIT: Duration = Duration::from_secs(10);

fn config(upstream: SocketAddr, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\n\
         [upstream]\nurl = \"http://{upstream}\"\ntimeout = \"5s\"\n\n\
         [[route]]\nid = \"all\"\npath_prefix = \"/\"\nauth = \"public\"\n"
    )
}

// ---------------------------------------------------------------------------------------------
// max_header_bytes
// ---------------------------------------------------------------------------------------------

/// A 431 must be a 431; when the proxy itself answered (there is a body), it is the JSON error.
fn assert_431(status: u16, body: &[u8], what: &str) {
    assert_eq!(status, 431, "{what}: {}", String::from_utf8_lossy(body));
    if !body.is_empty() {
        let json: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{what}: 431 body is not JSON ({e})"));
        assert_eq!(json["error"], "request_header_fields_too_large", "{what}");
    }
}

/// Writes `request` while reading the answer concurrently (a server that refuses a huge head may
/// answer and close before the client has finished writing), then returns what was read.
async fn raw_large(addr: SocketAddr, request: Vec<u8>) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        // The server may close mid-write; that is expected.
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    drop(write.await);
    String::from_utf8_lossy(&out).into_owned()
}

fn request_with_header(bytes: usize) -> Vec<u8> {
    format!(
        "GET /big HTTP/1.1\r\nHost: tokengate.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(bytes)
    )
    .into_bytes()
}

fn raw_body(text: &str) -> &[u8] {
    text.split_once("\r\n\r\n")
        .map_or(&b""[..], |(_, b)| b.as_bytes())
}

#[tokio::test]
async fn http1_head_under_max_header_bytes_is_served() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "max_header_bytes = 8192")).await;

    let text = raw_large(proxy.addr, request_with_header(6000)).await;
    assert_eq!(raw_status(&text), Some(200), "{text}");
    let seen = echo.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-big").map(str::len), Some(6000));
    proxy.stop().await;
}

#[tokio::test]
async fn http1_head_over_max_header_bytes_is_431_and_not_forwarded() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "max_header_bytes = 8192")).await;

    let text = raw_large(proxy.addr, request_with_header(9000)).await;
    assert_431(
        raw_status(&text).unwrap_or(0),
        raw_body(&text),
        &format!("9000-byte header: {}", text.lines().next().unwrap_or("")),
    );
    // Also several headers that are each small but together too large.
    let many: String = (0..40)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(250)))
        .collect();
    let request =
        format!("GET /big HTTP/1.1\r\nHost: tokengate.test\r\n{many}Connection: close\r\n\r\n");
    let text = raw_large(proxy.addr, request.into_bytes()).await;
    assert_431(
        raw_status(&text).unwrap_or(0),
        raw_body(&text),
        "40 x 250-byte headers",
    );
    assert!(echo.seen().is_empty(), "{:?}", echo.seen());
    proxy.stop().await;
}

#[tokio::test]
async fn http1_head_far_over_max_header_bytes_is_431() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "max_header_bytes = 8192")).await;

    let text = raw_large(proxy.addr, request_with_header(100 * 1024)).await;
    assert_431(
        raw_status(&text).unwrap_or(0),
        raw_body(&text),
        &format!("100 KB header: {:?}", text.lines().next()),
    );
    assert!(echo.seen().is_empty(), "{:?}", echo.seen());
    // The proxy still serves others afterwards.
    assert_eq!(get(&proxy.url("/after"), &[]).await.status, 200);
    proxy.stop().await;
}

/// An h2 request with one large header; `Err` when the client or connection failed instead of
/// getting an answer.
async fn h2_with_header(proxy: &Proxy, bytes: usize) -> Result<(u16, Bytes), String> {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::get(proxy.url("/big"))
        .header("x-big", "a".repeat(bytes))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(WAIT, client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, body))
}

#[tokio::test]
async fn http2_head_limits_match_http1() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "max_header_bytes = 8192")).await;

    let (status, body) = h2_with_header(&proxy, 6000)
        .await
        .expect("6000-byte header");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(echo.seen().len(), 1);

    let (status, body) = h2_with_header(&proxy, 9000)
        .await
        .expect("9000-byte header");
    assert_431(status, &body, "h2 9000-byte header");

    // Over hyper's own h2 header-list limit: h2 answers 431 itself.
    let (status, body) = h2_with_header(&proxy, 20_000)
        .await
        .expect("20000-byte header");
    assert_431(status, &body, "h2 20000-byte header");

    // Far over: the h2 crate answers 431 up to 4x its header-list limit; beyond that it treats
    // the block as abuse and ends the connection with GOAWAY(ENHANCE_YOUR_CALM) before any
    // request exists. Either way the request is refused and never forwarded.
    match h2_with_header(&proxy, 100 * 1024).await {
        Ok((status, body)) => assert_431(status, &body, "h2 100 KB header"),
        Err(error) => assert!(
            error.contains("ENHANCE_YOUR_CALM") || error.contains("header_list_way_too_large"),
            "h2 100 KB header: neither 431 nor an abuse GOAWAY: {error}"
        ),
    }

    assert_eq!(echo.seen().len(), 1, "an oversized h2 head was forwarded");
    // Still serving h2.
    let req = Request::get(proxy.url("/after"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(send_h2(req).await.status, 200);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// header_read_timeout
// ---------------------------------------------------------------------------------------------

/// Reads until the server closes (EOF or reset) or `WAIT` passes; `true` if it closed.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 before closing is allowed.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_silent_clients_are_cut_off_without_blocking_others() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "header_read_timeout = \"1s\"")).await;

    // Half a head, then nothing.
    let mut slow = TcpStream::connect(proxy.addr).await.expect("connect");
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: tokengate.test\r\nX-Partial: ")
        .await
        .expect("write");
    // Connected, never a byte.
    let mut silent = TcpStream::connect(proxy.addr).await.expect("connect");

    // Meanwhile another client is served.
    let answer = get(&proxy.url("/other"), &[]).await;
    assert_eq!(answer.status, 200);
    let req = Request::get(proxy.url("/other-h2"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(send_h2(req).await.status, 200);

    let (slow_closed, silent_closed) =
        tokio::join!(closed_by_server(&mut slow), closed_by_server(&mut silent));
    assert!(slow_closed, "a client stalled mid-head was not cut off");
    assert!(silent_closed, "a client that sent nothing was not cut off");

    let targets: Vec<String> = echo.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/other", "/other-h2"]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_dribbled_in_past_the_timeout_is_never_forwarded() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "header_read_timeout = \"1s\"")).await;

    let mut slow = TcpStream::connect(proxy.addr).await.expect("connect");
    slow.write_all(b"GET /dribble HTTP/1.1\r\n")
        .await
        .expect("write");
    // One header line every 300 ms: each read makes progress, but the head as a whole never
    // completes within the timeout. Stop once the server has gone (a write fails).
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let line = format!("X-Drip-{i}: x\r\n");
        if slow.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    assert!(
        closed_by_server(&mut slow).await,
        "a head dribbled in slower than header_read_timeout was not cut off"
    );
    assert!(echo.seen().is_empty(), "{:?}", echo.seen());
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// max_connections
// ---------------------------------------------------------------------------------------------

/// Sends one keep-alive GET on `stream` and reads its response (headers + Content-Length body).
async fn keep_alive_get(stream: &mut TcpStream, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: tokengate.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return raw_status(&head);
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_max_connections_are_closed_at_once_and_served_after_one_is_released() {
    let echo = Echo::start().await;
    // A long header_read_timeout, so the held idle connections are not closed by it.
    let proxy = Proxy::start(&config(
        echo.addr,
        "max_connections = 2\nheader_read_timeout = \"60s\"",
    ))
    .await;

    // Two connections, each proven to be accepted and served, then held idle (keep-alive).
    let mut first = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(keep_alive_get(&mut first, "/one").await, Some(200));
    let mut second = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(keep_alive_get(&mut second, "/two").await, Some(200));

    // A third is closed at once: no answer, EOF or reset well before the 60 s head timeout.
    let (text, closed) = raw(
        proxy.addr,
        b"GET /three HTTP/1.1\r\nHost: tokengate.test\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(closed, "the connection over the limit was kept open");
    assert_eq!(
        raw_status(&text),
        None,
        "the connection over the limit was served: {text}"
    );

    // The held ones are unaffected.
    assert_eq!(keep_alive_get(&mut second, "/two-again").await, Some(200));

    // Release one; a new connection is served (the proxy notices the close asynchronously, so
    // retry within a bound).
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    let served = loop {
        let (text, _) = raw(
            proxy.addr,
            b"GET /four HTTP/1.1\r\nHost: tokengate.test\r\nConnection: close\r\n\r\n",
            WAIT,
        )
        .await;
        if raw_status(&text) == Some(200) {
            break true;
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(served, "no connection was served after one was released");

    let targets: Vec<String> = echo.seen().into_iter().map(|s| s.target).collect();
    assert!(!targets.iter().any(|t| t == "/three"), "{targets:?}");
    assert_eq!(targets.first().map(String::as_str), Some("/one"));
    assert!(targets.iter().any(|t| t == "/four"), "{targets:?}");
    drop(second);
    proxy.stop().await;
}
