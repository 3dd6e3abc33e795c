//! Host confusion and host canonicalization (SPEC §3 routing paragraph, §6 400 row), black-box
//! against the real binary.
//!
//! The attack configuration: a route for `host = "admin.example.com"` that needs a token, then
//! a public catch-all. The proxy must route on one canonical host (lower case, one trailing dot
//! removed, at most one decimal port; `:authority` over HTTP/2, where a differing `host` header
//! is a 400), refuse anything else with 400 `invalid_request`, and hand the upstream exactly the
//! host it routed on, as `Host` and as `X-Forwarded-Host`. Otherwise a request routed as public
//! reaches an upstream (nginx, a framework) that reads its own idea of the host and serves the
//! admin site.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::time::Duration;

use bytes::Bytes;

use support::echo::Seen;
use support::gate::World;
use support::h2raw::{self, H2Client};
use support::wire::{self, Reply};

/// Upper bound for one exchange; the proxy answers long before.
const WAIT: Duration = Duration::from_secs(10);

type Fixture = World;

/// `/admin/…` on `admin.example.com` needs a token; everything else is public.
async fn start() -> Fixture {
    World::start(
        "[[route]]\nid = \"admin\"\nhost = \"admin.example.com\"\npath_prefix = \"/admin\"\n\
        auth = \"required\"\n\n\
        [[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n",
    )
    .await
}

impl Fixture {
    /// `GET target` over raw HTTP/1.1 with exactly this `Host` line.
    async fn h1(&self, target: &str, host: &str) -> Reply {
        let bytes = wire::request("GET", target, host, &[]);
        wire::exchange(self.gate.addr, &bytes, WAIT).await.reply()
    }

    fn assert_nothing_forwarded(&self, what: &str) {
        let seen = self.echo.seen();
        assert!(
            seen.is_empty(),
            "{what}: the upstream received {:?}",
            seen.iter()
                .map(|s| format!("{} {} host={:?}", s.method, s.target, s.all("host")))
                .collect::<Vec<_>>()
        );
    }

    /// The last request the upstream received.
    fn last_seen(&self) -> Seen {
        self.echo
            .seen()
            .pop()
            .expect("the upstream received a request")
    }
}

fn assert_invalid_request(status: u16, body: &[u8], what: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, 400, "{what}: {text}");
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: 400 body is not JSON ({e}): {text}"));
    assert_eq!(json["error"], "invalid_request", "{what}: {text}");
}

/// The upstream got exactly one `Host` and one `X-Forwarded-Host`, both `expected`.
fn assert_upstream_host(seen: &Seen, expected: &str, what: &str) {
    assert_eq!(seen.all("host"), [expected], "{what}: Host upstream");
    assert_eq!(
        seen.all("x-forwarded-host"),
        [expected],
        "{what}: X-Forwarded-Host upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP/2: the routed host is `:authority`
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_host_header_differing_from_authority_is_400_and_never_forwarded() {
    let f = start().await;
    let client = H2Client::connect(f.gate.addr).await;
    // (authority, host): the first is the attack of the issue, routed as public by `:authority`
    // while an upstream that reads `Host` would serve the admin site.
    let cases = [
        ("public.example.com", "admin.example.com"),
        ("public.example.com", "ADMIN.EXAMPLE.COM."),
        ("public.example.com", "public.example.com:8080"),
        ("public.example.com", "a b"),
    ];
    for (authority, host) in cases {
        let what = format!(":authority {authority} + host {host}");
        let req = h2raw::request("GET", authority, "/admin/panel", &[("host", host)]);
        let answer = client
            .send(req, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_invalid_request(answer.status, &answer.body, &what);
        f.assert_nothing_forwarded(&what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_host_header_equal_to_authority_once_canonical_is_accepted_and_forwarded_canonical() {
    let f = start().await;
    let client = H2Client::connect(f.gate.addr).await;
    let req = h2raw::request(
        "GET",
        "public.example.com",
        "/pub/x",
        &[("host", "PUBLIC.Example.com.")],
    );
    let answer = client.send(req, Bytes::new()).await.expect("answer");
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_upstream_host(&f.last_seen(), "public.example.com", "h2 host = authority");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_is_forwarded_canonical_as_host_and_x_forwarded_host() {
    let f = start().await;
    let client = H2Client::connect(f.gate.addr).await;
    let cases = [
        ("Public.Example.COM.:8443", "public.example.com:8443"),
        ("PUBLIC.EXAMPLE.COM", "public.example.com"),
        ("public.example.com", "public.example.com"),
    ];
    for (authority, canonical) in cases {
        let req = h2raw::request("GET", authority, "/pub/x", &[]);
        let answer = client.send(req, Bytes::new()).await.expect("answer");
        assert_eq!(answer.status, 200, "{authority}");
        assert_upstream_host(&f.last_seen(), canonical, authority);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_variants_of_the_protected_name_match_its_route() {
    let f = start().await;
    let client = H2Client::connect(f.gate.addr).await;
    for authority in [
        "ADMIN.EXAMPLE.COM.",
        "admin.example.com.:443",
        "Admin.Example.Com",
    ] {
        let req = h2raw::request("GET", authority, "/admin/panel", &[]);
        let answer = client.send(req, Bytes::new()).await.expect("answer");
        assert_eq!(
            answer.status, 401,
            "{authority}: routed past the admin route"
        );
        f.assert_nothing_forwarded(authority);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1: canonical Host
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_variants_of_the_protected_name_all_match_its_route() {
    let f = start().await;
    for host in [
        "admin.example.com",
        "admin.example.com.",
        "ADMIN.EXAMPLE.COM",
        "ADMIN.EXAMPLE.COM.:443",
        "admin.example.com:443",
    ] {
        let reply = f.h1("/admin/panel", host).await;
        assert_eq!(
            reply.status,
            401,
            "Host {host:?} was routed past the admin route: {}",
            reply.text()
        );
        f.assert_nothing_forwarded(host);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_hosts_are_400_invalid_request_and_never_forwarded() {
    let f = start().await;
    // Every case is tried, so one run lists all the hosts that are still let through.
    let mut wrong = Vec::new();
    for host in [
        "admin.example.com:80:80",
        "admin.example.com:",
        "admin..example.com",
        "admin.example.com..",
        "a b",
        "[::1",
        "[zz::1]",
        "1.2.3",
        // Hex IPv4 spellings (attack pass 8): URL parsers and `inet_aton` read each as 127.0.0.1.
        "127.0.0.0x1",
        "0x7f000001",
        "0X7F000001:80",
        "0x7f.0.0.0x1",
        "admin.example.com:65536",
        "admin.example.com:99999999999",
        "",
    ] {
        let before = f.echo.seen().len();
        let reply = f.h1("/admin/panel", host).await;
        let forwarded = f.echo.seen().len() > before;
        let code = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|j| j["error"].as_str().map(str::to_owned));
        if reply.status != 400 || code.as_deref() != Some("invalid_request") || forwarded {
            wrong.push(format!(
                "Host {host:?}: {} {code:?}, forwarded: {forwarded}",
                reply.status
            ));
        }
    }
    assert!(wrong.is_empty(), "not refused:\n{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authorities_over_http2_are_400_and_never_forwarded() {
    let f = start().await;
    let client = H2Client::connect(f.gate.addr).await;
    // Only values the `http` crate lets a client put in `:authority`.
    for authority in [
        "admin..example.com",
        "admin.example.com..",
        "1.2.3",
        "127.0.0.0x1",
    ] {
        let req = h2raw::request("GET", authority, "/admin/panel", &[]);
        let answer = client.send(req, Bytes::new()).await.expect("answer");
        assert_invalid_request(answer.status, &answer.body, authority);
        f.assert_nothing_forwarded(authority);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_receives_the_canonical_host_as_host_and_x_forwarded_host_over_http1() {
    let f = start().await;
    let cases = [
        ("ADMIN.Example.COM.:8080", "admin.example.com:8080"),
        ("Public.EXAMPLE.com", "public.example.com"),
        ("public.example.com.", "public.example.com"),
        ("public.example.com", "public.example.com"),
    ];
    for (host, canonical) in cases {
        let reply = f.h1("/pub/x", host).await;
        assert_eq!(reply.status, 200, "{host}: {}", reply.text());
        assert_upstream_host(&f.last_seen(), canonical, host);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literal_hosts_are_valid() {
    let f = start().await;
    for host in ["[::1]:8080", "127.0.0.1", "127.0.0.1:8080", "[::1]"] {
        let reply = f.h1("/pub/x", host).await;
        assert_eq!(reply.status, 200, "{host}: {}", reply.text());
        assert_upstream_host(&f.last_seen(), host, host);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_on_a_keep_alive_connection_is_routed_on_its_own_host() {
    // The connection remembers a checked host; a different one later must still be checked
    // and routed on its own, before and after the remembered one comes back.
    let f = start().await;
    let hosts = [
        "public.example.com",
        "admin.example.com",
        "public.example.com",
        "ADMIN.example.com.",
        "public.example.com:8443:1",
    ];
    let mut pipelined = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let close = if i + 1 == hosts.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        let request = format!("GET /admin/x HTTP/1.1\r\nHost: {host}\r\n{close}\r\n");
        pipelined.extend_from_slice(request.as_bytes());
    }
    let replies = wire::exchange(f.gate.addr, &pipelined, WAIT)
        .await
        .replies(&[]);
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 200, 401, 400]);
    let seen = f.echo.seen();
    assert_eq!(seen.len(), 2, "only the public requests reach the upstream");
    for s in &seen {
        assert_upstream_host(s, "public.example.com", "public request");
    }
}
