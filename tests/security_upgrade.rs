//! Upgrade smuggling (SPEC §4 item 2, `Upgrade`; §4.7 WebSocket), black-box against the real
//! binary over raw HTTP/1.1.
//!
//! `Upgrade: websocket` is the only protocol ever tunnelled. Anything else — `h2c` with its
//! `HTTP2-Settings`, `TLS/1.2`, a made-up token, a list that mixes `websocket` with `h2c` — is
//! removed and the request forwarded as a plain one: otherwise an upstream that honours h2c
//! (RFC 7540 §3.2) answers 101 and the client holds a raw HTTP/2 connection to the upstream on
//! which the proxy checks nothing more. An upstream that answers 101 to a request that was not
//! a WebSocket upgrade is a 502, never a tunnel.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::echo::Echo;
use support::gate::Gate;
use support::h2c_upstream::{asks_h2c, H2cUpstream, Switch, PLAIN_BODY, TUNNEL_MARKER};
use support::h2raw::{self, H2Client};
use support::wire::{self, head_end, head_values, Exchange};

const WAIT: Duration = Duration::from_secs(10);

/// The headers of an h2c upgrade request (RFC 7540 §3.2), as curl `--http2` sends them.
const H2C_HEADERS: [&str; 3] = [
    "Connection: Upgrade, HTTP2-Settings",
    "Upgrade: h2c",
    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
];

/// The binary with one public catch-all route to `upstream`.
fn start(upstream: SocketAddr) -> Gate {
    Gate::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n\
             [upstream]\nurl = \"http://{upstream}\"\ntimeout = \"5s\"\n\n\
             [[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n"
        ),
        &[],
    )
}

/// `GET target` with the given header lines and no `Connection: close` (so the connection stays
/// HTTP/1.1 or switches), then a pipelined `GET /second` with `Connection: close`. Reads until
/// the proxy closes.
async fn upgrade_then_second(addr: SocketAddr, target: &str, headers: &[&str]) -> Exchange {
    let mut text = format!("GET {target} HTTP/1.1\r\nHost: tokengate.test\r\n");
    for line in headers {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.push_str("GET /second HTTP/1.1\r\nHost: tokengate.test\r\nConnection: close\r\n\r\n");
    wire::exchange(addr, text.as_bytes(), WAIT).await
}

/// The client got two plain HTTP/1.1 answers with `status`, no 101, no tunnel bytes.
fn assert_two_plain_answers(exchange: &Exchange, status: u16, what: &str) {
    let text = exchange.text();
    assert!(
        !text.contains(TUNNEL_MARKER),
        "{what}: the client got a raw tunnel to the upstream:\n{text}"
    );
    let replies = exchange.replies(&[]);
    assert!(
        replies.iter().all(|r| r.status != 101),
        "{what}: 101 reached the client:\n{text}"
    );
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [status, status], "{what}:\n{text}");
}

/// No request head the upstream received carries a protocol switch.
fn assert_heads_plain(heads: &[String], what: &str) {
    for head in heads {
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                head_values(head, name).is_empty(),
                "{what}: the upstream received {name}:\n{head}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_to_an_h2c_capable_upstream_is_forwarded_as_a_plain_request() {
    let upstream = H2cUpstream::start(Switch::OnH2c).await;
    let gate = start(upstream.addr);

    let exchange = upgrade_then_second(gate.addr, "/first", &H2C_HEADERS).await;
    assert_two_plain_answers(&exchange, 200, "Upgrade: h2c");
    let replies = exchange.replies(&[]);
    assert_eq!(replies[0].text(), PLAIN_BODY);
    assert_eq!(upstream.switched(), 0, "the upstream was asked to switch");
    let heads = upstream.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert_heads_plain(&heads, "Upgrade: h2c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_reaches_the_echo_without_upgrade_http2_settings_or_connection() {
    let echo = Echo::start().await;
    let gate = start(echo.addr);

    let exchange = upgrade_then_second(gate.addr, "/first", &H2C_HEADERS).await;
    assert_two_plain_answers(&exchange, 200, "Upgrade: h2c to the echo");
    let seen = echo.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for name in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(seen[0].header(name), None, "{name} reached the upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_upgrade_tokens_are_removed_and_the_request_forwarded_plain() {
    let echo = Echo::start().await;
    let gate = start(echo.addr);
    for token in ["TLS/1.2", "foo", "h2c", "H2C", "HTTP/2.0"] {
        let upgrade = format!("Upgrade: {token}");
        let exchange =
            upgrade_then_second(gate.addr, "/first", &["Connection: Upgrade", &upgrade]).await;
        assert_two_plain_answers(&exchange, 200, &upgrade);
        let seen = echo.seen();
        let first = &seen[seen.len() - 2];
        assert_eq!(first.target, "/first");
        assert_eq!(
            first.header("upgrade"),
            None,
            "{upgrade} reached the upstream"
        );
        assert_eq!(
            first.header("connection"),
            None,
            "{upgrade}: Connection upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_lists_mixing_websocket_and_h2c_never_switch_to_h2c() {
    let upstream = H2cUpstream::start(Switch::OnH2c).await;
    let gate = start(upstream.addr);
    let cases: [&[&str]; 3] = [
        &["Connection: Upgrade", "Upgrade: websocket, h2c"],
        &["Connection: Upgrade", "Upgrade: h2c, websocket"],
        &["Connection: Upgrade", "Upgrade: websocket", "Upgrade: h2c"],
    ];
    for headers in cases {
        let what = format!("{headers:?}");
        let exchange = upgrade_then_second(gate.addr, "/first", headers).await;
        assert_two_plain_answers(&exchange, 200, &what);
        assert_eq!(
            upstream.switched(),
            0,
            "{what}: the upstream switched to h2c"
        );
        for head in upstream.heads() {
            assert!(
                !asks_h2c(&head),
                "{what}: h2c reached the upstream:\n{head}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_switching_protocols_without_a_websocket_upgrade_is_502() {
    let upstream = H2cUpstream::start(Switch::Always).await;
    let gate = start(upstream.addr);

    // A plain request, an h2c upgrade (forwarded plain, so the 101 is unasked for) and the same
    // over HTTP/2: never a tunnel.
    let plain = wire::request("GET", "/plain", "tokengate.test", &[]);
    let mut h2c = b"GET /h2c HTTP/1.1\r\nHost: tokengate.test\r\n".to_vec();
    for line in H2C_HEADERS {
        h2c.extend_from_slice(line.as_bytes());
        h2c.extend_from_slice(b"\r\n");
    }
    h2c.extend_from_slice(b"\r\n");
    for (what, bytes) in [("plain GET", plain), ("h2c upgrade", h2c)] {
        let exchange = wire::exchange(gate.addr, &bytes, WAIT).await;
        let text = exchange.text();
        assert!(
            !text.contains(TUNNEL_MARKER),
            "{what}: tunnel opened:\n{text}"
        );
        let reply = exchange.reply();
        assert_eq!(reply.status, 502, "{what}:\n{text}");
        assert_eq!(reply.json()["error"], "bad_gateway", "{what}");
    }

    let client = H2Client::connect(gate.addr).await;
    let req = h2raw::request("GET", "tokengate.test", "/h2", &[]);
    let answer = client.send(req, Bytes::new()).await.expect("answer");
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["error"], "bad_gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_still_tunnels() {
    let echo = Echo::start().await;
    let gate = start(echo.addr);

    let mut tcp = TcpStream::connect(gate.addr).await.expect("connect");
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: tokengate.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while head_end(&head).is_none() {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
            .await
            .expect("101 in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before the 101: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp.write_all(b"ping through the tunnel")
        .await
        .expect("write");
    let mut back = [0u8; 23];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&back, b"ping through the tunnel");
    assert_eq!(echo.seen()[0].header("upgrade"), Some("websocket"));
}
