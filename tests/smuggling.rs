//! Request smuggling and ambiguous framing (SPEC §4.0), over raw TCP.
//!
//! Each hostile request is followed on the same connection by a second, pipelined request
//! (`GET /smuggled`). The proxy must answer 400, close the connection, and forward nothing: not
//! the hostile request, and never the bytes after it read as another request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::echo::Echo;
use support::{raw, raw_status, Proxy};

/// Upper bound for the server to answer and close; a proxy that keeps the connection open makes
/// the test wait this long and then fail.
const WAIT: Duration = Duration::from_secs(5);

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: tokengate.test\r\n\r\n";

async fn setup() -> (Echo, Proxy) {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&support::config(
        echo.addr,
        "[[route]]\nid = \"all\"\npath_prefix = \"/\"\nauth = \"public\"\n",
    ))
    .await;
    (echo, proxy)
}

/// Number of HTTP/1.x status lines in a raw answer (a body may end right before the next one,
/// and neither the echo's JSON nor the proxy's errors contain the version string).
fn responses(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count() + text.matches("HTTP/1.0 ").count()
}

/// Sends `head` + `body` + a pipelined `GET /smuggled`, then checks: one 400, closed, nothing
/// reached the upstream.
async fn assert_rejected(addr: SocketAddr, echo: &Echo, head: &str, body: &str) {
    let request = format!("{head}\r\n{body}{SMUGGLED}");
    let (text, closed) = raw(addr, request.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&text), Some(400), "{head:?}\n---\n{text}");
    assert!(closed, "connection left open after {head:?}\n---\n{text}");
    assert_eq!(
        responses(&text),
        1,
        "the pipelined request was answered after {head:?}\n---\n{text}"
    );
    let seen = echo.seen();
    assert!(
        seen.is_empty(),
        "the upstream received {:?} after {head:?}",
        seen.iter()
            .map(|s| format!("{} {} ({} body bytes)", s.method, s.target, s.body_len))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Content-Length together with Transfer-Encoding (needs the framing guard)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn content_length_then_transfer_encoding_chunked_is_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    // A front end that trusts Content-Length reads 6 bytes; one that trusts chunked reads the
    // empty chunk and then sees the smuggled request.
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nContent-Length: 6\r\n\
         Transfer-Encoding: chunked\r\n",
        "0\r\n\r\n",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn transfer_encoding_then_content_length_in_odd_case_is_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\ntRANSFER-eNCODING: Chunked\r\n\
         CONTENT-length: 48\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Everything else hyper or the gateway must refuse
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_differing_content_length_headers_are_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nContent-Length: 5\r\n\
         Content-Length: 6\r\n",
        "hello!",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_content_length_list_of_differing_values_is_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nContent-Length: 5, 6\r\n",
        "hello!",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn transfer_encoding_gzip_is_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nTransfer-Encoding: gzip\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn transfer_encoding_gzip_chunked_is_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nTransfer-Encoding: gzip, chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn transfer_encoding_chunked_then_identity_lines_are_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nTransfer-Encoding: chunked\r\n\
         Transfer-Encoding: identity\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn transfer_encoding_gzip_then_chunked_lines_are_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nTransfer-Encoding: gzip\r\n\
         Transfer-Encoding: chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn transfer_encoding_xchunked_is_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nTransfer-Encoding: xchunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn obs_folded_header_line_is_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nX-Note: first\r\n \
         Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "hello",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn whitespace_before_a_header_colon_is_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nFoo : bar\r\nContent-Length: 5\r\n",
        "hello",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn whitespace_before_the_transfer_encoding_colon_is_400_closed_and_not_forwarded() {
    let (echo, proxy) = setup().await;
    assert_rejected(
        proxy.addr,
        &echo,
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nContent-Length: 6\r\n\
         Transfer-Encoding : chunked\r\n",
        "0\r\n\r\n",
    )
    .await;
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Legitimate framing is forwarded intact
// ---------------------------------------------------------------------------------------------

/// The `body_len` the echo reported, from a raw answer.
fn echoed_body_len(text: &str) -> u64 {
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {text}"));
    let end = text
        .rfind('}')
        .unwrap_or_else(|| panic!("no JSON in {text}"));
    let json: serde_json::Value = serde_json::from_str(&text[start..=end]).expect("echo JSON");
    json["body_len"].as_u64().expect("body_len")
}

#[tokio::test]
async fn a_chunked_post_is_forwarded_with_its_full_body() {
    let (echo, proxy) = setup().await;
    let request = "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nTransfer-Encoding: chunked\r\n\
                   Connection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
    let (text, _) = raw(proxy.addr, request.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&text), Some(200), "{text}");
    assert_eq!(echoed_body_len(&text), 11);
    let seen = echo.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].method.as_str(), seen[0].body_len), ("POST", 11));
    proxy.stop().await;
}

#[tokio::test]
async fn a_content_length_post_is_forwarded_with_its_full_body() {
    let (echo, proxy) = setup().await;
    let body = "x".repeat(1000);
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: tokengate.test\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let (text, _) = raw(proxy.addr, request.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&text), Some(200), "{text}");
    assert_eq!(echoed_body_len(&text), 1000);
    let seen = echo.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 1000);
    proxy.stop().await;
}

/// Control for the tests above: a well-framed request followed by a pipelined one gets both
/// answered and forwarded, so "only one answer, nothing forwarded" there is the proxy's doing.
#[tokio::test]
async fn well_framed_pipelined_requests_are_both_answered() {
    let (echo, proxy) = setup().await;
    let request = "POST /first HTTP/1.1\r\nHost: tokengate.test\r\nContent-Length: 5\r\n\r\nhello\
                   GET /second HTTP/1.1\r\nHost: tokengate.test\r\nConnection: close\r\n\r\n";
    let (text, closed) = raw(proxy.addr, request.as_bytes(), WAIT).await;
    assert!(closed, "{text}");
    assert_eq!(responses(&text), 2, "{text}");
    let seen: Vec<(String, u64)> = echo
        .seen()
        .into_iter()
        .map(|s| (s.target, s.body_len))
        .collect();
    assert_eq!(seen, [("/first".to_owned(), 5), ("/second".to_owned(), 0)]);
    proxy.stop().await;
}
