//! Answers to HEAD (SPEC §6: "An answer to `HEAD` has the same status and headers and no body",
//! RFC 9110 §9.3.2), black-box against the real binary over HTTP/1.1 and HTTP/2.
//!
//! The proxy's own errors (400, 401, 403, 404) are the risk: they are built as JSON answers, and
//! a body sent after a HEAD answer desynchronizes an HTTP/1.1 connection (the client reads the
//! body as the next response) and is a protocol error for a strict HTTP/2 client. Every case is
//! compared with the GET of the same target: same status, same headers that matter, and the
//! `Content-Length` the GET had, when the HEAD answer carries one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use support::gate::World;
use support::h2raw::{self, describe, H2Answer, H2Client, RawFrame, DATA};
use support::wire::{self, head_end, Reply};

const WAIT: Duration = Duration::from_secs(10);

type Fixture = World;

/// `/req…` needs a token, `/scoped…` a token with scope `admin`, `/pub…` is public; nothing else
/// is routed.
async fn start() -> Fixture {
    World::start(
        "[[route]]\nid = \"req\"\npath_prefix = \"/req\"\nauth = \"required\"\n\n\
        [[route]]\nid = \"scoped\"\npath_prefix = \"/scoped\"\nauth = \"required\"\n\
        scopes = [\"admin\"]\n\n\
        [[route]]\nid = \"pub\"\npath_prefix = \"/pub\"\nauth = \"public\"\n",
    )
    .await
}

/// One HEAD case: target, whether to send a (scope-less) token, the status expected, and
/// whether the GET's length is comparable (the echo's own body names the method, so an
/// upstream answer to GET is one byte longer than to HEAD).
struct Case {
    target: &'static str,
    token: bool,
    status: u16,
    same_length: bool,
}

const CASES: [Case; 5] = [
    Case {
        target: "/req/x",
        token: false,
        status: 401,
        same_length: true,
    },
    Case {
        target: "/scoped/x",
        token: true,
        status: 403,
        same_length: true,
    },
    Case {
        target: "/nowhere",
        token: false,
        status: 404,
        same_length: true,
    },
    Case {
        target: "/pub/a%2Fb",
        token: false,
        status: 400,
        same_length: true,
    },
    Case {
        target: "/pub/x",
        token: false,
        status: 200,
        same_length: false,
    },
];

/// Headers a HEAD answer must share with the GET answer.
const SAME_HEADERS: [&str; 2] = ["content-type", "www-authenticate"];

impl Fixture {
    fn token(&self) -> String {
        self.issuer.token("ES256", json!({"scope": "read"}))
    }

    fn header_lines(&self, case: &Case) -> Vec<String> {
        if case.token {
            vec![format!("Authorization: Bearer {}", self.token())]
        } else {
            Vec::new()
        }
    }

    /// The GET of the same target over HTTP/1.1, on its own connection.
    async fn h1_get(&self, case: &Case) -> Reply {
        let lines = self.header_lines(case);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let bytes = wire::request("GET", case.target, "tokengate.test", &lines);
        wire::exchange(self.gate.addr, &bytes, WAIT).await.reply()
    }
}

/// HEAD then a pipelined `GET /pub/after` on one connection: returns the HEAD answer and every
/// byte that followed its head, which must be nothing or the next response's status line.
async fn h1_head(addr: SocketAddr, case: &Case, lines: &[String]) -> (Reply, Vec<u8>) {
    let mut text = format!("HEAD {} HTTP/1.1\r\nHost: tokengate.test\r\n", case.target);
    for line in lines {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str(
        "\r\nGET /pub/after HTTP/1.1\r\nHost: tokengate.test\r\nConnection: close\r\n\r\n",
    );
    let exchange = wire::exchange(addr, text.as_bytes(), WAIT).await;
    let reply = exchange
        .replies(&[true])
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("HEAD {}: no answer: {:?}", case.target, exchange.text()));
    let end = head_end(&exchange.bytes).expect("a head");
    (reply, exchange.bytes[end..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_over_http1_have_the_get_status_and_headers_and_no_body() {
    let f = start().await;
    for case in &CASES {
        let what = format!("HEAD {} over HTTP/1.1", case.target);
        let (head, after) = h1_head(f.gate.addr, case, &f.header_lines(case)).await;
        assert_eq!(head.status, case.status, "{what}: {}", head.head);
        assert!(
            after.is_empty() || after.starts_with(b"HTTP/1.1 "),
            "{what}: a body followed the head: {:?}",
            String::from_utf8_lossy(&after)
        );
        let get = f.h1_get(case).await;
        assert_eq!(get.status, head.status, "{what}: GET answered differently");
        for name in SAME_HEADERS {
            assert_eq!(head.header(name), get.header(name), "{what}: {name}");
        }
        if let (Some(length), true) = (head.header("content-length"), case.same_length) {
            assert_eq!(
                length,
                get.body.len().to_string(),
                "{what}: Content-Length is not the GET's"
            );
        }
    }
}

/// One request on a fresh HTTP/2 connection: the answer (or the stream error) and the frames
/// the server sent on that connection.
async fn h2_once(
    addr: SocketAddr,
    method: &str,
    case: &Case,
    token: &str,
) -> (Result<H2Answer, String>, Vec<RawFrame>) {
    let client = H2Client::connect(addr).await;
    let bearer = format!("Bearer {token}");
    let headers: Vec<(&str, &str)> = if case.token {
        vec![("authorization", bearer.as_str())]
    } else {
        Vec::new()
    };
    let req = h2raw::request(method, "tokengate.test", case.target, &headers);
    let answer = client.send(req, Bytes::new()).await;
    (answer, client.frames())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_over_http2_have_the_get_status_and_headers_and_no_data() {
    let f = start().await;
    let token = f.token();
    // Every case is tried, so one run lists every answer that still carries a body.
    let mut wrong = Vec::new();
    for case in &CASES {
        let what = format!("HEAD {} over HTTP/2", case.target);
        let (head, frames) = h2_once(f.gate.addr, "HEAD", case, &token).await;
        let data = frames
            .iter()
            .filter(|f| f.kind == DATA && !f.payload.is_empty())
            .count();
        let head = match head {
            Ok(head) if data == 0 && head.body.is_empty() => head,
            Ok(head) => {
                wrong.push(format!(
                    "{what}: {} with a body: {}",
                    head.status,
                    describe(&frames)
                ));
                continue;
            }
            Err(error) => {
                wrong.push(format!(
                    "{what}: the stream did not end cleanly ({error}): {}",
                    describe(&frames)
                ));
                continue;
            }
        };
        assert_eq!(head.status, case.status, "{what}");
        let (get, _) = h2_once(f.gate.addr, "GET", case, &token).await;
        let get = get.unwrap_or_else(|e| panic!("GET {}: {e}", case.target));
        assert_eq!(get.status, head.status, "{what}: GET answered differently");
        for name in SAME_HEADERS {
            assert_eq!(head.header(name), get.header(name), "{what}: {name}");
        }
        if let (Some(length), true) = (head.header("content-length"), case.same_length) {
            assert_eq!(
                length,
                get.body.len().to_string(),
                "{what}: Content-Length is not the GET's"
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_are_accepted_by_hyper_over_http1_and_http2() {
    let f = start().await;
    let token = f.token();
    for case in &CASES {
        for h2 in [false, true] {
            let what = format!("HEAD {} (http2: {h2})", case.target);
            let mut req = Request::head(f.gate.url(case.target));
            if case.token {
                req = req.header("authorization", format!("Bearer {token}"));
            }
            let req = req.body(Full::new(Bytes::new())).expect("request");
            let answer = if h2 {
                support::send_h2(req).await
            } else {
                support::send(req).await
            };
            assert_eq!(answer.status, case.status, "{what}");
            assert!(answer.body.is_empty(), "{what}: body {:?}", answer.body);
        }
    }
}
