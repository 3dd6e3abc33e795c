//! Method case and HEAD routing (SPEC §3 routing paragraph, §6 400 row), black-box against the
//! real binary over HTTP/1.1 and HTTP/2.
//!
//! The attack configuration: `methods = ["DELETE"]` on `/orders` needs a token, then a public
//! catch-all. Methods are case-sensitive (RFC 9110 §9.1), so `delete` is not `DELETE` and would
//! skip the protected route, yet many frameworks upper-case the method and run the delete
//! handler. The proxy must refuse a method with a lower-case letter (400 `invalid_request`)
//! instead of routing it. Upper-case extension methods are fine. A route that lists `GET` also
//! matches `HEAD`, so a HEAD cannot slip past it to a later public route.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::time::Duration;

use bytes::Bytes;

use support::gate::World;
use support::h2raw::{self, H2Client};
use support::wire;

const WAIT: Duration = Duration::from_secs(10);

type Fixture = World;

/// `DELETE /orders…` and `GET /reads…` need a token; everything else is public.
async fn start() -> Fixture {
    World::start(
        "[[route]]\nid = \"orders-delete\"\npath_prefix = \"/orders\"\nmethods = [\"DELETE\"]\n\
        auth = \"required\"\n\n\
        [[route]]\nid = \"reads\"\npath_prefix = \"/reads\"\nmethods = [\"GET\"]\n\
        auth = \"required\"\n\n\
        [[route]]\nid = \"public\"\npath_prefix = \"/\"\nauth = \"public\"\n",
    )
    .await
}

impl Fixture {
    fn assert_nothing_forwarded(&self, what: &str) {
        let seen = self.echo.seen();
        assert!(
            seen.is_empty(),
            "{what}: the upstream received {:?}",
            seen.iter()
                .map(|s| format!("{} {}", s.method, s.target))
                .collect::<Vec<_>>()
        );
    }
}

fn assert_invalid_request(status: u16, body: &[u8], what: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, 400, "{what}: {text}");
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: 400 body is not JSON ({e}): {text}"));
    assert_eq!(json["error"], "invalid_request", "{what}: {text}");
}

/// Methods that differ from a route's method only by case, and targets on the protected and
/// the public routes: none may be routed at all.
const NON_CANONICAL: [(&str, &str); 6] = [
    ("delete", "/orders/7"),
    ("Delete", "/orders/7"),
    ("dELETE", "/orders/7"),
    ("get", "/orders/7"),
    ("get", "/public/x"),
    ("post", "/public/x"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_with_a_lower_case_letter_is_400_over_http1_and_never_reaches_a_later_route() {
    let f = start().await;
    for (method, target) in NON_CANONICAL {
        let what = format!("{method} {target} over HTTP/1.1");
        let bytes = wire::request(method, target, "tokengate.test", &[]);
        let reply = wire::exchange(f.gate.addr, &bytes, WAIT).await.reply();
        assert_invalid_request(reply.status, &reply.body, &what);
        f.assert_nothing_forwarded(&what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_with_a_lower_case_letter_is_400_over_http2_and_never_reaches_a_later_route() {
    let f = start().await;
    let client = H2Client::connect(f.gate.addr).await;
    for (method, target) in NON_CANONICAL {
        let what = format!("{method} {target} over HTTP/2");
        let req = h2raw::request(method, "tokengate.test", target, &[]);
        let answer = client
            .send(req, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_invalid_request(answer.status, &answer.body, &what);
        f.assert_nothing_forwarded(&what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_delete_without_a_token_is_401_on_the_protected_route() {
    let f = start().await;
    let bytes = wire::request("DELETE", "/orders/7", "tokengate.test", &[]);
    let reply = wire::exchange(f.gate.addr, &bytes, WAIT).await.reply();
    assert_eq!(reply.status, 401, "{}", reply.text());
    let client = H2Client::connect(f.gate.addr).await;
    let req = h2raw::request("DELETE", "tokengate.test", "/orders/7", &[]);
    let answer = client.send(req, Bytes::new()).await.expect("answer");
    assert_eq!(answer.status, 401);
    f.assert_nothing_forwarded("DELETE without a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upper_case_extension_methods_are_forwarded_as_they_are() {
    let f = start().await;
    for method in ["M-SEARCH", "PURGE"] {
        let bytes = wire::request(method, "/public/x", "tokengate.test", &[]);
        let reply = wire::exchange(f.gate.addr, &bytes, WAIT).await.reply();
        assert_eq!(reply.status, 200, "{method}: {}", reply.text());
        let seen = f.echo.seen().pop().expect("forwarded");
        assert_eq!(seen.method, method);
    }
    let client = H2Client::connect(f.gate.addr).await;
    let req = h2raw::request("M-SEARCH", "tokengate.test", "/public/x", &[]);
    let answer = client.send(req, Bytes::new()).await.expect("answer");
    assert_eq!(answer.status, 200);
    assert_eq!(f.echo.seen().pop().expect("forwarded").method, "M-SEARCH");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_without_a_token_is_401_on_a_route_that_lists_get() {
    let f = start().await;
    let bytes = wire::request("HEAD", "/reads/x", "tokengate.test", &[]);
    let exchange = wire::exchange(f.gate.addr, &bytes, WAIT).await;
    let replies = exchange.replies(&[true]);
    let reply = replies
        .first()
        .unwrap_or_else(|| panic!("no answer: {:?}", exchange.text()));
    assert_eq!(
        reply.status, 401,
        "HEAD went past the GET route: {}",
        reply.head
    );
    f.assert_nothing_forwarded("HEAD over HTTP/1.1");

    let client = H2Client::connect(f.gate.addr).await;
    let req = h2raw::request("HEAD", "tokengate.test", "/reads/x", &[]);
    let answer = client.send(req, Bytes::new()).await.expect("answer");
    assert_eq!(
        answer.status, 401,
        "HEAD over HTTP/2 went past the GET route"
    );
    f.assert_nothing_forwarded("HEAD over HTTP/2");
}
