//! HTTP core behaviour, end to end (SPEC §3 route matching, §4.1 path normalization, §4.2
//! request ids and forwarding headers, §4.7 forwarding, §6 errors): requests go in over loopback,
//! and the tests look at what the client got back and what the upstream received.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use support::echo::Echo;
use support::{get, raw, raw_status, send, send_h2, Answer, Proxy};

/// Upper bound for a raw exchange; a server that closes answers long before.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `[server]` + `[upstream]` with the given default upstream, then `extra` TOML.
fn base_config(
    upstream: SocketAddr,
    server_extra: &str,
    upstream_extra: &str,
    extra: &str,
) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\n\
         [upstream]\nurl = \"http://{upstream}\"\n{upstream_extra}\n\n{extra}"
    )
}

/// Two public routes: `/public` goes to the default upstream, `/admin` to `admin`'s own one, so
/// a test can tell from which echo recorded a request which route applied.
fn public_and_admin(default: SocketAddr, admin: SocketAddr, server_extra: &str) -> String {
    base_config(
        default,
        server_extra,
        "timeout = \"5s\"",
        &format!(
            "[[route]]\nid = \"public\"\npath_prefix = \"/public\"\nauth = \"public\"\n\n\
             [[route]]\nid = \"admin\"\npath_prefix = \"/admin\"\nauth = \"public\"\n\
             upstream = \"http://{admin}\"\n"
        ),
    )
}

/// One public catch-all route to `upstream`.
fn catch_all(upstream: SocketAddr) -> String {
    base_config(
        upstream,
        "",
        "timeout = \"5s\"",
        "[[route]]\nid = \"all\"\npath_prefix = \"/\"\nauth = \"public\"\n",
    )
}

/// A raw HTTP/1 response, parsed from what `support::raw` read.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn parse(text: &str) -> Option<RawResponse> {
        let (head, rest) = text.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let status = raw_status(lines.next()?)?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(rest)
        } else {
            match headers.iter().find(|(n, _)| n == "content-length") {
                Some((_, len)) => rest.get(..len.parse::<usize>().ok()?)?.to_owned(),
                None => rest.to_owned(),
            }
        };
        Some(RawResponse {
            status,
            headers,
            body,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// Sends `GET target` over raw TCP with `Connection: close` (and the given extra header lines,
/// each ending in CRLF) and parses the answer.
async fn raw_get(addr: SocketAddr, target: &str, extra: &str) -> RawResponse {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: tokengate.test\r\n{extra}Connection: close\r\n\r\n"
    );
    raw_request(addr, request.as_bytes()).await
}

async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let (text, _closed) = raw(addr, bytes, WAIT).await;
    RawResponse::parse(&text).unwrap_or_else(|| panic!("no HTTP response in {text:?}"))
}

/// Asserts an error answer is JSON `{"error": code, "error_description": "..."}` with the right
/// content type and a request id.
fn assert_json_error(status: u16, headers: &http::HeaderMap, body: &[u8], code: &str) {
    let text = String::from_utf8_lossy(body);
    let json: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    assert_eq!(json["error"], code, "{status}: {text}");
    assert!(
        json["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{status}: error_description missing: {text}"
    );
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{status}: {text}"
    );
    assert!(
        headers.contains_key("x-request-id"),
        "{status}: no X-Request-Id"
    );
}

fn assert_answer_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(
        answer.status,
        status,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_json_error(answer.status, &answer.headers, &answer.body, code);
}

/// A plain-TCP upstream that records each request head exactly as it arrived on the wire
/// (request line included, so the HTTP version the proxy spoke is visible) and answers `ok`.
/// Only bodiless requests are supported.
struct WireUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for WireUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WireUpstream {
    async fn start() -> WireUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = find(&buf, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            recorded.lock().expect("lock").push(head);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if tcp.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        WireUpstream { addr, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The values of `name` in a recorded request head (case-insensitive name).
fn head_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn only<'a>(values: Vec<&'a str>, what: &str) -> &'a str {
    assert_eq!(
        values.len(),
        1,
        "{what}: expected exactly one value, got {values:?}"
    );
    values[0]
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 and HTTP/2 in, HTTP/1.1 out
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http1_request_reaches_upstream_as_http11_with_canonical_host_forwarded_headers_and_request_id(
) {
    let upstream = WireUpstream::start().await;
    let proxy = Proxy::start(&catch_all(upstream.addr)).await;

    let answer = get(
        &proxy.url("/public/hello?x=1"),
        &[("host", "API.Example.com:8443")],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], b"ok");

    let heads = upstream.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = &heads[0];
    let request_line = head.lines().next().unwrap_or_default();
    assert_eq!(request_line, "GET /public/hello?x=1 HTTP/1.1");
    // The canonical host the route was matched on, not the client's spelling.
    assert_eq!(
        only(head_values(head, "host"), "Host"),
        "api.example.com:8443"
    );
    assert_eq!(
        only(head_values(head, "x-forwarded-for"), "XFF"),
        "127.0.0.1"
    );
    assert_eq!(only(head_values(head, "x-forwarded-proto"), "XFP"), "http");
    assert_eq!(
        only(head_values(head, "x-forwarded-host"), "XFH"),
        "api.example.com:8443"
    );
    let forwarded_id = only(head_values(head, "x-request-id"), "X-Request-Id");
    assert!(!forwarded_id.is_empty());
    assert_eq!(answer.header("x-request-id"), Some(forwarded_id));
    proxy.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_request_reaches_upstream_as_http11_with_authority_as_host() {
    let upstream = WireUpstream::start().await;
    let proxy = Proxy::start(&catch_all(upstream.addr)).await;

    let req = Request::get(proxy.url("/public/h2?y=2"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = send_h2(req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], b"ok");

    let heads = upstream.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = &heads[0];
    assert_eq!(
        head.lines().next().unwrap_or_default(),
        "GET /public/h2?y=2 HTTP/1.1"
    );
    let authority = proxy.addr.to_string();
    assert_eq!(only(head_values(head, "host"), "Host"), authority);
    assert_eq!(
        only(head_values(head, "x-forwarded-for"), "XFF"),
        "127.0.0.1"
    );
    assert_eq!(only(head_values(head, "x-forwarded-proto"), "XFP"), "http");
    assert_eq!(
        only(head_values(head, "x-forwarded-host"), "XFH"),
        authority
    );
    let forwarded_id = only(head_values(head, "x-request-id"), "X-Request-Id");
    assert_eq!(answer.header("x-request-id"), Some(forwarded_id));
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Route matching on the normalized path, and the normalized path is what is forwarded
// ---------------------------------------------------------------------------------------------

/// Each target must be routed to the admin upstream and arrive there as exactly `/admin`.
#[tokio::test]
async fn dot_segments_encoded_dots_double_slashes_and_encoded_letters_route_and_forward_normalized()
{
    let public = Echo::start().await;
    let admin = Echo::start().await;
    let proxy = Proxy::start(&public_and_admin(public.addr, admin.addr, "")).await;

    let targets = [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "//admin",
        "/./admin",
        "/%61dmin",
        "/public/./../admin",
    ];
    for (i, target) in targets.iter().enumerate() {
        let answer = raw_get(proxy.addr, target, "").await;
        assert_eq!(answer.status, 200, "{target}: {answer:?}");
        let seen = admin.seen();
        assert_eq!(
            seen.len(),
            i + 1,
            "{target} did not reach the admin upstream"
        );
        assert_eq!(seen[i].target, "/admin", "{target}");
    }
    assert!(
        public.seen().is_empty(),
        "the public upstream was reached: {:?}",
        public.seen()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn encoded_slash_backslash_bad_utf8_and_climbing_above_root_are_400_and_not_forwarded() {
    let public = Echo::start().await;
    let admin = Echo::start().await;
    let proxy = Proxy::start(&public_and_admin(public.addr, admin.addr, "")).await;

    let targets = [
        "/admin%2f",
        "/admin%2F",
        "/public/..%2fadmin",
        "/public/..%2Fadmin",
        "/public\\..\\admin",
        "/public/%5c..%5cadmin",
        "/public/%00",
        "/a/b/../../..",
        "/../admin",
        "/public/%C0%AF",
        "/public/%FF",
        "/public/%zz",
        "/public/%2",
        "/public/%",
    ];
    for target in targets {
        let answer = raw_get(proxy.addr, target, "").await;
        assert_eq!(answer.status, 400, "{target}: {answer:?}");
        assert_eq!(answer.json()["error"], "invalid_request", "{target}");
        assert!(answer.header("x-request-id").is_some(), "{target}");
    }
    assert!(public.seen().is_empty(), "{:?}", public.seen());
    assert!(admin.seen().is_empty(), "{:?}", admin.seen());
    proxy.stop().await;
}

#[tokio::test]
async fn path_parameters_are_400_by_default() {
    let public = Echo::start().await;
    let admin = Echo::start().await;
    let proxy = Proxy::start(&public_and_admin(public.addr, admin.addr, "")).await;

    for target in ["/admin;x", "/public/..;/admin", "/public;a=b/x"] {
        let answer = raw_get(proxy.addr, target, "").await;
        assert_eq!(answer.status, 400, "{target}: {answer:?}");
        assert_eq!(answer.json()["error"], "invalid_request", "{target}");
    }
    assert!(public.seen().is_empty(), "{:?}", public.seen());
    assert!(admin.seen().is_empty(), "{:?}", admin.seen());
    proxy.stop().await;
}

#[tokio::test]
async fn path_parameters_when_allowed_are_ignored_for_matching_and_kept_when_forwarding() {
    let public = Echo::start().await;
    let admin = Echo::start().await;
    let proxy = Proxy::start(&public_and_admin(
        public.addr,
        admin.addr,
        "allow_path_parameters = true",
    ))
    .await;

    let answer = raw_get(proxy.addr, "/admin;x", "").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = raw_get(proxy.addr, "/public/..;/admin", "").await;
    assert_eq!(answer.status, 200, "{answer:?}");

    let seen: Vec<String> = admin.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(seen, ["/admin;x", "/admin"]);
    assert!(public.seen().is_empty(), "{:?}", public.seen());
    proxy.stop().await;
}

#[tokio::test]
async fn paths_match_case_sensitively() {
    let public = Echo::start().await;
    let admin = Echo::start().await;
    let proxy = Proxy::start(&public_and_admin(public.addr, admin.addr, "")).await;

    for target in ["/ADMIN", "/Admin", "/%41DMIN"] {
        let answer = raw_get(proxy.addr, target, "").await;
        assert_eq!(answer.status, 404, "{target}: {answer:?}");
        assert_eq!(answer.json()["error"], "no_route", "{target}");
    }
    assert!(public.seen().is_empty(), "{:?}", public.seen());
    assert!(admin.seen().is_empty(), "{:?}", admin.seen());
    proxy.stop().await;
}

#[tokio::test]
async fn query_string_is_forwarded_unchanged_and_never_routed_on() {
    let public = Echo::start().await;
    let admin = Echo::start().await;
    let proxy = Proxy::start(&public_and_admin(public.addr, admin.addr, "")).await;

    let answer = raw_get(proxy.addr, "/public/q?a=%2F&b", "").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = raw_get(proxy.addr, "/public/q?/../../admin&c=%2e%2E;x", "").await;
    assert_eq!(answer.status, 200, "{answer:?}");

    let seen: Vec<String> = public.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        seen,
        ["/public/q?a=%2F&b", "/public/q?/../../admin&c=%2e%2E;x"]
    );
    assert!(admin.seen().is_empty(), "{:?}", admin.seen());
    proxy.stop().await;
}

#[tokio::test]
async fn fragment_in_a_raw_request_line_is_not_forwarded_and_not_routed_on() {
    let public = Echo::start().await;
    let admin = Echo::start().await;
    let proxy = Proxy::start(&public_and_admin(public.addr, admin.addr, "")).await;

    for target in [
        "/public/page#frag",
        "/public/page?x=1#frag",
        "/public/page#/../../admin",
    ] {
        let answer = raw_get(proxy.addr, target, "").await;
        // SPEC §4.1: the fragment is dropped before routing (a 400 would also keep it from the
        // upstream, but the SPEC says it is dropped).
        assert_eq!(answer.status, 200, "{target}: {answer:?}");
    }
    let seen: Vec<String> = public.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(seen, ["/public/page", "/public/page?x=1", "/public/page"]);
    assert!(seen.iter().all(|t| !t.contains('#')));
    assert!(admin.seen().is_empty(), "{:?}", admin.seen());
    proxy.stop().await;
}

#[tokio::test]
async fn no_route_is_404_json_with_request_id_and_nothing_reaches_upstream() {
    let public = Echo::start().await;
    let admin = Echo::start().await;
    let proxy = Proxy::start(&public_and_admin(public.addr, admin.addr, "")).await;

    let answer = get(&proxy.url("/nowhere?x=1"), &[]).await;
    assert_answer_error(&answer, 404, "no_route");

    let req = Request::post(proxy.url("/publicity"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("request");
    let answer = send_h2(req).await;
    assert_answer_error(&answer, 404, "no_route");

    assert!(public.seen().is_empty(), "{:?}", public.seen());
    assert!(admin.seen().is_empty(), "{:?}", admin.seen());
    assert_eq!(public.connections() + admin.connections(), 0);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// path_prefix, methods, host
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn path_prefix_is_segment_aware() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&base_config(
        echo.addr,
        "",
        "",
        "[[route]]\nid = \"orders\"\npath_prefix = \"/orders\"\nauth = \"public\"\n",
    ))
    .await;

    for target in ["/orders", "/orders/", "/orders/7", "/orders/7/items?x=1"] {
        let answer = get(&proxy.url(target), &[]).await;
        assert_eq!(answer.status, 200, "{target}");
        assert_eq!(answer.json()["target"], target);
    }
    for target in ["/ordersX", "/orders.json", "/order", "/", "/x/orders"] {
        let answer = get(&proxy.url(target), &[]).await;
        assert_eq!(answer.status, 404, "{target}");
    }
    assert_eq!(echo.seen().len(), 4);
    proxy.stop().await;
}

#[tokio::test]
async fn exact_path_matches_only_that_path() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&base_config(
        echo.addr,
        "",
        "",
        "[[route]]\nid = \"health\"\npath = \"/healthz\"\nauth = \"public\"\n",
    ))
    .await;

    assert_eq!(get(&proxy.url("/healthz"), &[]).await.status, 200);
    assert_eq!(get(&proxy.url("/healthz?probe=1"), &[]).await.status, 200);
    assert_eq!(get(&proxy.url("/healthz/x"), &[]).await.status, 404);
    assert_eq!(get(&proxy.url("/healthzz"), &[]).await.status, 404);
    assert_eq!(echo.seen().len(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn methods_restrict_a_route_and_the_first_matching_route_wins() {
    let reads = Echo::start().await;
    let writes = Echo::start().await;
    let proxy = Proxy::start(&base_config(
        reads.addr,
        "",
        "",
        &format!(
            "[[route]]\nid = \"writes\"\npath_prefix = \"/orders\"\nauth = \"public\"\n\
             methods = [\"POST\", \"DELETE\"]\nupstream = \"http://{}\"\n\n\
             [[route]]\nid = \"reads\"\npath_prefix = \"/orders\"\nauth = \"public\"\n\
             methods = [\"GET\"]\n",
            writes.addr
        ),
    ))
    .await;

    let post = Request::post(proxy.url("/orders/1"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    assert_eq!(send(post).await.status, 200);
    let delete = Request::delete(proxy.url("/orders/1"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(send(delete).await.status, 200);
    assert_eq!(get(&proxy.url("/orders/1"), &[]).await.status, 200);
    let put = Request::put(proxy.url("/orders/1"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = send(put).await;
    assert_answer_error(&answer, 404, "no_route");

    let writes_seen: Vec<String> = writes.seen().into_iter().map(|s| s.method).collect();
    let reads_seen: Vec<String> = reads.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(writes_seen, ["POST", "DELETE"]);
    assert_eq!(reads_seen, ["GET"]);
    proxy.stop().await;
}

#[tokio::test]
async fn host_matches_case_insensitively_and_ignores_the_port_unless_the_rule_names_one() {
    let default = Echo::start().await;
    let api = Echo::start().await;
    let pinned = Echo::start().await;
    let proxy = Proxy::start(&base_config(
        default.addr,
        "",
        "",
        &format!(
            "[[route]]\nid = \"api\"\npath_prefix = \"/\"\nauth = \"public\"\n\
             host = \"api.example.com\"\nupstream = \"http://{}\"\n\n\
             [[route]]\nid = \"pinned\"\npath_prefix = \"/\"\nauth = \"public\"\n\
             host = \"svc.example.com:9000\"\nupstream = \"http://{}\"\n\n\
             [[route]]\nid = \"fallback\"\npath_prefix = \"/\"\nauth = \"public\"\n",
            api.addr, pinned.addr
        ),
    ))
    .await;

    let cases: [(&str, &Echo); 8] = [
        ("api.example.com", &api),
        ("API.Example.COM", &api),
        ("api.example.com:8443", &api),
        ("Api.Example.Com:80", &api),
        ("svc.example.com:9000", &pinned),
        ("SVC.example.com:9000", &pinned),
        ("svc.example.com:9001", &default),
        ("svc.example.com", &default),
    ];
    for (host, echo) in cases {
        let before = echo.seen().len();
        let answer = get(&proxy.url("/h"), &[("host", host)]).await;
        assert_eq!(answer.status, 200, "{host}");
        assert_eq!(echo.seen().len(), before + 1, "Host {host} went elsewhere");
    }
    let other = get(&proxy.url("/h"), &[("host", "other.example.com")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(api.seen().len(), 4);
    assert_eq!(pinned.seen().len(), 2);
    assert_eq!(default.seen().len(), 3);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unreachable_upstream_is_502_bad_gateway() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let proxy = Proxy::start(&catch_all(dead)).await;

    let answer = get(&proxy.url("/x"), &[]).await;
    assert_answer_error(&answer, 502, "bad_gateway");
    let req = Request::get(proxy.url("/x"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_answer_error(&send_h2(req).await, 502, "bad_gateway");
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_slower_than_timeout_is_504_gateway_timeout() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&base_config(
        echo.addr,
        "",
        "timeout = \"500ms\"",
        "[[route]]\nid = \"all\"\npath_prefix = \"/\"\nauth = \"public\"\n",
    ))
    .await;

    let answer = get(&proxy.url("/slow/3000"), &[]).await;
    assert_answer_error(&answer, 504, "gateway_timeout");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Connection handling
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sequential_requests_reuse_one_pooled_upstream_connection() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&catch_all(echo.addr)).await;

    for i in 0..5 {
        let answer = get(&proxy.url(&format!("/seq/{i}")), &[]).await;
        // The connection is back in the pool as soon as the body has been read to its end.
        assert_eq!(answer.status, 200);
    }
    assert_eq!(echo.seen().len(), 5);
    assert_eq!(
        echo.connections(),
        1,
        "upstream connections were not reused"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn absolute_form_connect_and_asterisk_targets_are_400() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&catch_all(echo.addr)).await;

    let requests = [
        "GET http://evil.example/admin HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "GET http://tokengate.test/x HTTP/1.1\r\nHost: tokengate.test\r\nConnection: close\r\n\r\n",
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: tokengate.test\r\nConnection: close\r\n\r\n",
    ];
    for request in requests {
        let answer = raw_request(proxy.addr, request.as_bytes()).await;
        assert_eq!(answer.status, 400, "{request:?}: {answer:?}");
        assert_eq!(answer.json()["error"], "invalid_request", "{request:?}");
    }
    assert!(echo.seen().is_empty(), "{:?}", echo.seen());
    proxy.stop().await;
}

#[tokio::test]
async fn http11_without_host_or_with_two_hosts_is_400() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&catch_all(echo.addr)).await;

    let requests = [
        "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    ];
    for request in requests {
        let answer = raw_request(proxy.addr, request.as_bytes()).await;
        assert_eq!(answer.status, 400, "{request:?}: {answer:?}");
        assert_eq!(answer.json()["error"], "invalid_request", "{request:?}");
    }
    assert!(echo.seen().is_empty(), "{:?}", echo.seen());
    // Control: the same request with one Host is served.
    let answer = raw_request(
        proxy.addr,
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_on_public_route_gets_101_and_bytes_flow_both_ways() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&catch_all(echo.addr)).await;

    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: tokengate.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");

    // Read the 101 head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while find(&head, b"\r\n\r\n").is_none() {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
            .await
            .expect("101 head in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before the 101: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert_eq!(raw_status(&head), Some(101), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );

    for message in [&b"ping-1"[..], b"second message", b"\x00\x01binary\xff"] {
        tcp.write_all(message).await.expect("write");
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(back, message);
    }

    let seen = echo.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/ws");
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    assert!(seen[0]
        .header("connection")
        .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")));
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Errors and request ids
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn proxy_errors_are_json_and_every_response_carries_a_request_id() {
    let echo = Echo::start().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let proxy = Proxy::start(&base_config(
        echo.addr,
        "",
        "",
        &format!(
            "[[route]]\nid = \"down\"\npath_prefix = \"/down\"\nauth = \"public\"\n\
             upstream = \"http://{dead}\"\n\n\
             [[route]]\nid = \"up\"\npath_prefix = \"/up\"\nauth = \"public\"\n"
        ),
    ))
    .await;

    // Proxied.
    let ok = get(&proxy.url("/up/x"), &[]).await;
    assert_eq!(ok.status, 200);
    let id = ok
        .header("x-request-id")
        .expect("X-Request-Id on a proxied response");
    assert_eq!(echo.seen()[0].header("x-request-id"), Some(id));
    // The proxy's own answers.
    assert_answer_error(&get(&proxy.url("/none"), &[]).await, 404, "no_route");
    assert_answer_error(&get(&proxy.url("/down/x"), &[]).await, 502, "bad_gateway");
    let bad = raw_get(proxy.addr, "/up/%2e%2e/%2e%2e/x", "").await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(bad.header("content-type"), Some("application/json"));
    assert!(bad.header("x-request-id").is_some(), "{bad:?}");
    let json = bad.json();
    assert_eq!(json["error"], "invalid_request");
    assert!(json["error_description"].is_string());
    proxy.stop().await;
}

#[tokio::test]
async fn valid_client_request_id_is_echoed_and_forwarded_unchanged() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&catch_all(echo.addr)).await;

    let id_128: String = "r".repeat(128);
    for id in ["abc-123", "Req_42:x/y=z", "~", id_128.as_str()] {
        let answer = get(&proxy.url("/x"), &[("x-request-id", id)]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-request-id"), Some(id));
        let seen = echo.seen();
        let last = seen.last().expect("forwarded");
        assert_eq!(last.all("x-request-id"), [id]);
    }
    // Also on the proxy's own errors.
    let answer = get(&proxy.url("/%2F"), &[("x-request-id", "err-7")]).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header("x-request-id"), Some("err-7"));
    proxy.stop().await;
}

#[tokio::test]
async fn invalid_client_request_id_is_replaced() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&catch_all(echo.addr)).await;

    let too_long = "a".repeat(130);
    for (i, bad) in [too_long.as_str(), "has space", "tab\there"]
        .into_iter()
        .enumerate()
    {
        let answer = raw_get(proxy.addr, "/x", &format!("X-Request-Id: {bad}\r\n")).await;
        assert_eq!(answer.status, 200, "{bad:?}: {answer:?}");
        let id = answer
            .header("x-request-id")
            .expect("X-Request-Id")
            .to_owned();
        assert_ne!(id, bad);
        assert!(!id.is_empty() && id.len() <= 128, "{id:?}");
        assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{id:?}");
        let seen = echo.seen();
        assert_eq!(seen.len(), i + 1);
        assert_eq!(seen[i].all("x-request-id"), [id.as_str()]);
    }
    // Generated ids differ between requests, and the next one cannot be told from the last
    // (a client could otherwise send the id another client's request is about to get): 32 hex
    // digits of which neither half repeats.
    let a = get(&proxy.url("/x"), &[]).await;
    let b = get(&proxy.url("/x"), &[]).await;
    let (a, b) = (
        a.header("x-request-id").expect("id").to_owned(),
        b.header("x-request-id").expect("id").to_owned(),
    );
    for id in [&a, &b] {
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
    assert_ne!(a[..16], b[..16], "{a} {b}");
    assert_ne!(a[16..], b[16..], "{a} {b}");
    proxy.stop().await;
}
