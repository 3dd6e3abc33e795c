//! Header hygiene end to end (SPEC §4.2): what the client sends, what the echo upstream
//! receives, and what the client gets back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use support::echo::{Echo, Seen};
use support::{get, raw, raw_status, send_h2, Proxy};

const WAIT: Duration = Duration::from_secs(10);

/// A public catch-all route; `strip_header_prefixes = ["X-Auth-", "X-Internal-"]`; identity
/// headers `X-Auth-Subject` (also covered by the prefix) and `X-User-Email` (covered only by
/// being an `[identity.headers]` name).
fn config(upstream: SocketAddr, server_extra: &str, identity_extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
strip_header_prefixes = ["X-Auth-", "X-Internal-"]
{server_extra}

[upstream]
url = "http://{upstream}"
timeout = "5s"

[identity]
{identity_extra}

[identity.headers]
X-Auth-Subject = "sub"
X-User-Email = "email"

[[route]]
id = "pub"
path_prefix = "/"
auth = "public"
"#
    )
}

/// Lower-case with `_` read as `-`.
fn canonical(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// The only request the echo has seen.
fn single(echo: &Echo) -> Seen {
    let seen = echo.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    seen.into_iter().next().expect("one request")
}

/// Sends a raw GET with the given header lines (each ending in CRLF) and `Connection: close`;
/// returns the raw response text.
async fn raw_get(addr: SocketAddr, header_lines: &str) -> String {
    let request = format!(
        "GET /check HTTP/1.1\r\nHost: tokengate.test\r\n{header_lines}Connection: close\r\n\r\n"
    );
    let (text, _) = raw(addr, request.as_bytes(), WAIT).await;
    text
}

fn assert_no_spoofable(seen: &Seen) {
    for (name, value) in &seen.headers {
        let name = canonical(name);
        assert!(
            !name.starts_with("x-auth-")
                && !name.starts_with("x-internal-")
                && name != "x-user-email"
                && name != "x-identity-assertion",
            "{name}: {value} reached the upstream"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Identity headers and stripped prefixes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn identity_assertion_and_prefixed_headers_are_stripped_in_every_spelling() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "", "")).await;

    let text = raw_get(
        proxy.addr,
        "X-Auth-Subject: alice\r\n\
         x-auth-subject: bob\r\n\
         X-AUTH-SUBJECT: carol\r\n\
         X_Auth_Subject: dave\r\n\
         x_auth-subject: erin\r\n\
         X-Auth-Roles: admin\r\n\
         X_AUTH_GROUPS: root\r\n\
         X-User-Email: a@example.com\r\n\
         x_user_email: b@example.com\r\n\
         X-USER-EMAIL: c@example.com\r\n\
         X-Identity-Assertion: eyJhbGciOiJub25lIn0.e30.\r\n\
         x-identity-assertion: forged\r\n\
         X_Identity_Assertion: forged2\r\n\
         X-Internal-Role: superuser\r\n\
         x_internal_tenant: 1\r\n\
         X-Keep: yes\r\n\
         X_Custom_Underscore: kept\r\n\
         X-Authentic: kept-too\r\n",
    )
    .await;
    assert_eq!(raw_status(&text), Some(200), "{text}");

    let seen = single(&echo);
    assert_no_spoofable(&seen);
    // Controls: unrelated headers (even look-alikes without the full prefix) still pass.
    assert_eq!(seen.header("x-keep"), Some("yes"));
    assert_eq!(seen.header("x_custom_underscore"), Some("kept"));
    assert_eq!(seen.header("x-authentic"), Some("kept-too"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_clients_trace_context_reaches_the_upstream_only_as_tokengates() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "", "")).await;

    // A tracestate without a traceparent, and a malformed traceparent: a new trace starts and
    // the client's tracestate (in every spelling and count) does not ride along with it.
    let text = raw_get(
        proxy.addr,
        "traceparent: 00-not-a-trace-01\r\n\
         tracestate: congo=t61rcWkgMzE\r\n\
         TraceState: rojo=00f067aa0ba902b7\r\n",
    )
    .await;
    assert_eq!(raw_status(&text), Some(200), "{text}");
    let seen = single(&echo);
    let parents: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("traceparent"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_ne!(parents[0], "00-not-a-trace-01");
    assert!(
        !seen
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("tracestate")),
        "{:?}",
        seen.headers
    );
    proxy.stop().await;
}

#[tokio::test]
async fn identity_headers_are_stripped_over_http2() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "", "")).await;

    let req = Request::get(proxy.url("/check"))
        .header("x-auth-subject", "alice")
        .header("x-auth-subject", "bob")
        .header("x_auth_subject", "carol")
        .header("x-user-email", "a@example.com")
        .header("x-identity-assertion", "forged")
        .header("x-internal-role", "superuser")
        .header("x-keep", "yes")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = send_h2(req).await;
    assert_eq!(answer.status, 200);

    let seen = single(&echo);
    assert_no_spoofable(&seen);
    assert_eq!(seen.header("x-keep"), Some("yes"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_custom_assertion_header_name_is_stripped() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "", "header = \"X-Gateway-Identity\"")).await;

    let text = raw_get(
        proxy.addr,
        "X-Gateway-Identity: forged\r\nx_gateway_identity: forged2\r\n",
    )
    .await;
    assert_eq!(raw_status(&text), Some(200), "{text}");
    let seen = single(&echo);
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| canonical(n) != "x-gateway-identity"),
        "{:?}",
        seen.headers
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Hop-by-hop headers, both directions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_request_headers_and_those_named_in_connection_never_reach_upstream() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "", "")).await;

    let text = raw_get(
        proxy.addr,
        "Connection: X-Foo, x-bar\r\n\
         Connection: X-Baz\r\n\
         X-Foo: 1\r\n\
         X-Bar: 2\r\n\
         X-Baz: 3\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: gzip\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: websocket\r\n\
         X-Unlisted: stays\r\n",
    )
    .await;
    assert_eq!(raw_status(&text), Some(200), "{text}");

    let seen = single(&echo);
    for name in [
        "x-foo",
        "x-bar",
        "x-baz",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert_eq!(
            seen.all(name),
            Vec::<&str>::new(),
            "{name} reached the upstream"
        );
    }
    // The proxy may open its own upstream connection with its own `Connection` header, but the
    // client's tokens must not be in it.
    for value in seen.all("connection") {
        let value = value.to_ascii_lowercase();
        assert!(
            !value.contains("x-foo") && !value.contains("x-bar") && !value.contains("x-baz"),
            "client Connection tokens forwarded: {value}"
        );
    }
    assert_eq!(seen.header("x-unlisted"), Some("stays"));
    proxy.stop().await;
}

#[tokio::test]
async fn hop_by_hop_response_headers_never_reach_the_client() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "", "")).await;

    // Raw, so nothing on the client side can hide a header.
    let text = raw_get(proxy.addr, "").await;
    assert_eq!(raw_status(&text), Some(200), "{text}");
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    for line in head.split("\r\n").skip(1) {
        let (name, value) = line.split_once(':').expect("header line");
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().to_ascii_lowercase();
        assert_ne!(name, "keep-alive", "{head}");
        assert_ne!(name, "x-upstream-private", "{head}");
        if name == "connection" {
            assert!(!value.contains("x-upstream-private"), "{head}");
        }
    }
    // The echo did send them (so the test is meaningful).
    assert!(text.contains("\"target\":\"/check\""), "{text}");

    // And over HTTP/1.1 through hyper's client, and over HTTP/2.
    let answer = get(&proxy.url("/check"), &[]).await;
    assert!(answer.header("keep-alive").is_none());
    assert!(answer.header("x-upstream-private").is_none());
    let req = Request::get(proxy.url("/check"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = send_h2(req).await;
    assert_eq!(answer.status, 200);
    assert!(answer.header("keep-alive").is_none());
    assert!(answer.header("x-upstream-private").is_none());
    assert!(answer.header("connection").is_none());
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn authorization_and_dpop_are_removed_on_a_public_route_by_default() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "", "")).await;

    let answer = get(
        &proxy.url("/check"),
        &[
            ("authorization", "Bearer abc.def.ghi"),
            ("dpop", "eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.sig"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = single(&echo);
    assert!(seen.all("authorization").is_empty(), "{:?}", seen.headers);
    assert!(seen.all("dpop").is_empty(), "{:?}", seen.headers);
    proxy.stop().await;
}

#[tokio::test]
async fn authorization_is_forwarded_with_forward_token() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "", "forward_token = true")).await;

    let answer = get(
        &proxy.url("/check"),
        &[("authorization", "Bearer abc.def.ghi")],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = single(&echo);
    assert_eq!(seen.all("authorization"), ["Bearer abc.def.ghi"]);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// X-Forwarded-*
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_client_are_replaced_by_the_proxys_view() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "", "")).await;

    let answer = get(
        &proxy.url("/check"),
        &[
            ("host", "shop.example.com:8080"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "admin.internal"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = single(&echo);
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["shop.example.com:8080"]);
    proxy.stop().await;
}

#[tokio::test]
async fn forwarded_headers_are_set_even_when_the_client_sends_none() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "", "")).await;

    let answer = get(&proxy.url("/check"), &[("host", "shop.example.com")]).await;
    assert_eq!(answer.status, 200);
    let seen = single(&echo);
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["shop.example.com"]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_chain_is_extended_and_its_proto_and_host_kept() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(
        echo.addr,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        "",
    ))
    .await;

    let answer = get(
        &proxy.url("/check"),
        &[
            ("host", "internal-lb:8080"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example.com"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = single(&echo);
    assert_eq!(
        seen.all("x-forwarded-for").join(", "),
        "203.0.113.7, 10.0.0.1, 127.0.0.1"
    );
    assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.all("x-forwarded-host"), ["shop.example.com"]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_without_forwarded_headers_gets_the_proxys_own_view() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(
        echo.addr,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        "",
    ))
    .await;

    let answer = get(&proxy.url("/check"), &[("host", "shop.example.com")]).await;
    assert_eq!(answer.status, 200);
    let seen = single(&echo);
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["shop.example.com"]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_range_that_does_not_contain_the_peer_is_not_trusted() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(echo.addr, "trusted_proxies = [\"10.0.0.0/8\"]", "")).await;

    let answer = get(
        &proxy.url("/check"),
        &[
            ("host", "shop.example.com"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = single(&echo);
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["shop.example.com"]);
    proxy.stop().await;
}
