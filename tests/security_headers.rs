//! Other proxies' user headers (SPEC §4 item 2), black-box against the real binary.
//!
//! Backends migrated from oauth2-proxy, nginx `auth_request`, Apache or IIS may still trust
//! `X-Forwarded-User`, `X-Auth-Request-*`, `Remote-User`, `X-Original-URL` and friends. The
//! proxy removes them always — on public routes too, with no `strip_header_prefixes` configured,
//! in any case, with `_` for `-`, and every duplicate — together with `Proxy-Authorization` and
//! `HTTP2-Settings`; and the underscore spellings of the `X-Forwarded-*` headers it sets itself
//! never reach the upstream from an untrusted peer (nginx with `underscores_in_headers`, CGI and
//! WSGI servers map them onto the real names).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use support::echo::Seen;
use support::gate::World;
use support::h2raw::{self, H2Client};
use support::wire;

const WAIT: Duration = Duration::from_secs(10);

/// Every value sent below contains this; none may reach the upstream.
const SPOOF: &str = "spoofed";

/// The headers other proxies use to pass an authenticated user, as those proxies spell them.
const USER_HEADERS: [&str; 15] = [
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Access-Token",
    "X-Auth-Request-Redirect",
    "Remote-User",
    "X-Remote-User",
    "X-Real-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
];

/// Hop-by-hop headers that are easy to forget: case variants and duplicates only.
const HOP_HEADERS: [&str; 2] = ["Proxy-Authorization", "HTTP2-Settings"];

/// Underscore spellings of the headers the proxy sets itself.
const FORWARDED_UNDERSCORE: [&str; 3] =
    ["X_Forwarded_Host", "X_Forwarded_For", "X_Forwarded_Proto"];

type Fixture = World;

/// `/authn…` needs a token, everything else is public; no `strip_header_prefixes`, no trusted
/// proxies.
async fn start() -> Fixture {
    World::start(
        "[[route]]\nid = \"authn\"\npath_prefix = \"/authn\"\nauth = \"required\"\n\n\
        [[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n",
    )
    .await
}

/// `name` with `-` read as `_`, in the given case.
fn underscored(name: &str) -> String {
    name.replace('-', "_")
}

/// Header lines for every name in every spelling: as written, lower case, upper case with `_`,
/// and a repeat of the first (a duplicate).
fn hostile_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for (i, name) in USER_HEADERS.iter().enumerate() {
        lines.push(format!("{name}: {SPOOF}-{i}-a"));
        lines.push(format!("{}: {SPOOF}-{i}-b", name.to_ascii_lowercase()));
        lines.push(format!(
            "{}: {SPOOF}-{i}-c",
            underscored(&name.to_ascii_uppercase())
        ));
        lines.push(format!("{}: {SPOOF}-{i}-d", underscored(name)));
        lines.push(format!("{name}: {SPOOF}-{i}-e"));
    }
    for (i, name) in HOP_HEADERS.iter().enumerate() {
        lines.push(format!("{name}: {SPOOF}-hop-{i}-a"));
        lines.push(format!("{}: {SPOOF}-hop-{i}-b", name.to_ascii_uppercase()));
        lines.push(format!("{name}: {SPOOF}-hop-{i}-c"));
    }
    for (i, name) in FORWARDED_UNDERSCORE.iter().enumerate() {
        lines.push(format!("{name}: {SPOOF}-fwd-{i}-a.example"));
        lines.push(format!(
            "{}: {SPOOF}-fwd-{i}-b.example",
            name.to_ascii_lowercase()
        ));
    }
    lines
}

/// Nothing the client spoofed reached the upstream, and the proxy's own forwarding headers are
/// there once each, with its own values. Every leak is listed, not only the first.
fn assert_clean(seen: &Seen, what: &str) {
    let mut leaked = Vec::new();
    for (name, value) in &seen.headers {
        let canonical = name.to_ascii_lowercase().replace('_', "-");
        let forbidden = canonical.starts_with("x-auth-request-")
            || USER_HEADERS
                .iter()
                .chain(HOP_HEADERS.iter())
                .any(|h| h.eq_ignore_ascii_case(&canonical))
            || (name.contains('_') && canonical.starts_with("x-forwarded-"));
        if forbidden || value.contains(SPOOF) {
            leaked.push(format!("{name}: {value}"));
        }
    }
    assert!(
        leaked.is_empty(),
        "{what}: reached the upstream:\n{}",
        leaked.join("\n")
    );
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "{what}");
    assert_eq!(seen.all("x-forwarded-host"), ["tokengate.test"], "{what}");
    assert_eq!(seen.all("x-forwarded-proto"), ["http"], "{what}");
    // Control: an unrelated header passes.
    assert_eq!(seen.header("x-keep"), Some("yes"), "{what}");
}

impl Fixture {
    /// Sends every hostile line on `target` over raw HTTP/1.1 (plus `extra` lines) and returns
    /// what the upstream received.
    async fn h1(&self, target: &str, extra: &[&str]) -> Seen {
        let lines = hostile_lines();
        let mut all: Vec<&str> = lines.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        all.push("X-Keep: yes");
        let bytes = wire::request("GET", target, "tokengate.test", &all);
        let reply = wire::exchange(self.gate.addr, &bytes, WAIT).await.reply();
        assert_eq!(reply.status, 200, "{target}: {}", reply.text());
        self.echo.seen().pop().expect("forwarded")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_proxies_user_headers_never_reach_the_upstream_on_a_public_route() {
    let f = start().await;
    let seen = f.h1("/public/x", &[]).await;
    assert_clean(&seen, "public route, HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_proxies_user_headers_never_reach_the_upstream_on_an_authenticated_route() {
    let f = start().await;
    let token = f.issuer.token("ES256", json!({"sub": "alice"}));
    let authorization = format!("Authorization: Bearer {token}");
    let seen = f.h1("/authn/x", &[&authorization]).await;
    assert_clean(&seen, "authenticated route, HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_proxies_user_headers_never_reach_the_upstream_over_http2() {
    let f = start().await;
    let token = f.issuer.token("ES256", json!({"sub": "alice"}));
    let bearer = format!("Bearer {token}");
    let client = H2Client::connect(f.gate.addr).await;
    for (path, authorization) in [("/public/x", None), ("/authn/x", Some(bearer.as_str()))] {
        let mut headers: Vec<(String, String)> = Vec::new();
        for (i, name) in USER_HEADERS.iter().enumerate() {
            headers.push((name.to_ascii_lowercase(), format!("{SPOOF}-{i}-a")));
            headers.push((
                underscored(&name.to_ascii_lowercase()),
                format!("{SPOOF}-{i}-b"),
            ));
        }
        // HTTP/2 forbids connection-specific headers, not these two.
        for (i, name) in HOP_HEADERS.iter().enumerate() {
            headers.push((name.to_ascii_lowercase(), format!("{SPOOF}-hop-{i}")));
        }
        for (i, name) in FORWARDED_UNDERSCORE.iter().enumerate() {
            headers.push((
                name.to_ascii_lowercase(),
                format!("{SPOOF}-fwd-{i}.example"),
            ));
        }
        headers.push(("x-keep".to_owned(), "yes".to_owned()));
        if let Some(authorization) = authorization {
            headers.push(("authorization".to_owned(), authorization.to_owned()));
        }
        let borrowed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let req = h2raw::request("GET", "tokengate.test", path, &borrowed);
        let answer = client.send(req, Bytes::new()).await.expect("answer");
        assert_eq!(
            answer.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let seen = f.echo.seen().pop().expect("forwarded");
        assert_clean(&seen, &format!("{path}, HTTP/2"));
    }
}
