//! Several issuers through the proxy (SPEC §3 `[[issuer]]`, "Keys:", "Issuers:", §4 item 4,
//! §6 503 row, §7 `/readyz`): the token's `iss` picks the issuer, routes restrict issuers, an
//! issuer that is down or whose discovery document names another issuer stays unready (its routes
//! 503) without taking the others down, and a flood of unknown `kid`s is rate-limited.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::echo::Echo;
use support::issuer::MockIssuer;
use support::{config, get, Answer, Proxy};

const DISCOVERY: &str = "/.well-known/openid-configuration";

/// `/any` takes every issuer, `/only-a` and `/only-b` one each; the verified `sub` is forwarded
/// as `X-Auth-Subject`.
const ROUTES: &str = "\n[identity.headers]\nX-Auth-Subject = \"sub\"\n\n\
    [[route]]\nid = \"only-a\"\npath_prefix = \"/only-a\"\nissuers = [\"a\"]\n\n\
    [[route]]\nid = \"only-b\"\npath_prefix = \"/only-b\"\nissuers = [\"b\"]\n\n\
    [[route]]\nid = \"any\"\npath_prefix = \"/any\"\n";

struct Fixture {
    echo: Echo,
    a: MockIssuer,
    b: MockIssuer,
    proxy: Proxy,
}

impl Fixture {
    /// Starts the proxy with issuers `a` and `b` (both audience `api`) without waiting for them.
    async fn start_with(a: MockIssuer, b: MockIssuer) -> Fixture {
        let echo = Echo::start().await;
        let extra = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}\n{}\n{ROUTES}",
            a.config_toml("a", &["api"]),
            b.config_toml("b", &["api"])
        );
        let proxy = Proxy::start(&config(echo.addr, &extra)).await;
        Fixture { echo, a, b, proxy }
    }

    /// Both issuers up and ready.
    async fn ready() -> Fixture {
        let a = MockIssuer::start().await;
        let b = MockIssuer::start().await;
        let f = Fixture::start_with(a, b).await;
        f.wait_readyz(200, &json!({"ready": true})).await;
        f
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.admin.expect("admin listener"))
    }

    /// Polls `/readyz` (bounded) until it answers exactly `status` and `body`.
    async fn wait_readyz(&self, status: u16, expected: &Value) {
        let url = self.admin("/readyz");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = get(&url, &[]).await;
            if answer.status == status && answer.json() == *expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never became {status} {expected}: {} {}",
                answer.status,
                body(&answer)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn assert_healthy(&self) {
        let answer = get(&self.admin("/healthz"), &[]).await;
        assert_eq!(answer.status, 200, "{}", body(&answer));
    }

    async fn call(&self, path: &str, token: &str) -> Answer {
        let value = format!("Bearer {token}");
        get(&self.proxy.url(path), &[("authorization", value.as_str())]).await
    }

    /// 200, the upstream saw it with `X-Auth-Subject: sub`.
    async fn accept(&self, path: &str, token: &str, sub: &str, why: &str) {
        let before = self.echo.seen().len();
        let answer = self.call(path, token).await;
        assert_eq!(answer.status, 200, "{why}: {}", body(&answer));
        let seen = self.echo.seen();
        assert_eq!(seen.len(), before + 1, "{why}");
        let last = seen.last().expect("seen");
        assert_eq!(last.header("x-auth-subject"), Some(sub), "{why}");
    }

    /// 401 `invalid_token` with the exact challenge; the upstream never saw it.
    async fn reject(&self, path: &str, token: &str, why: &str) -> String {
        let before = self.echo.seen().len();
        let answer = self.call(path, token).await;
        assert_eq!(
            self.echo.seen().len(),
            before,
            "{why}: reached the upstream"
        );
        assert_invalid_token(&answer, token, why)
    }

    /// 503 `temporarily_unavailable` with `Retry-After`; the upstream never saw it.
    async fn unavailable(&self, path: &str, token: &str, why: &str) {
        let before = self.echo.seen().len();
        let answer = self.call(path, token).await;
        assert_eq!(answer.status, 503, "{why}: {}", body(&answer));
        assert_eq!(
            self.echo.seen().len(),
            before,
            "{why}: reached the upstream"
        );
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{why}"
        );
        assert_eq!(answer.json()["error"], "temporarily_unavailable", "{why}");
        let retry = answer.header("retry-after").unwrap_or_default();
        assert!(
            retry.parse::<u32>().is_ok_and(|s| s > 0),
            "{why}: Retry-After {retry:?}"
        );
        assert_eq!(answer.header("www-authenticate"), None, "{why}");
        assert!(
            !body(&answer).contains(token),
            "{why}: body repeats the token"
        );
    }
}

fn body(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

fn assert_invalid_token(answer: &Answer, token: &str, why: &str) -> String {
    assert_eq!(answer.status, 401, "{why}: {}", body(answer));
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{why}"
    );
    let json = answer.json();
    assert_eq!(json["error"], "invalid_token", "{why}: {json}");
    let description = json["error_description"]
        .as_str()
        .expect("description")
        .to_owned();
    let expected = format!(
        "Bearer realm=\"tokengate\", error=\"invalid_token\", error_description=\"{description}\""
    );
    assert_eq!(
        answer.header("www-authenticate"),
        Some(expected.as_str()),
        "{why}"
    );
    assert!(
        !body(answer).contains(token),
        "{why}: body repeats the token"
    );
    assert!(!expected.contains(token), "{why}: challenge repeats it");
    description
}

#[tokio::test]
async fn the_token_iss_picks_the_issuer() {
    let f = Fixture::ready().await;
    // Both mocks name their keys alike (`rsa-1`, `p256-1`, …): only `iss` can tell them apart.
    assert_eq!(f.a.kid("ES256"), f.b.kid("ES256"));
    for alg in ["RS256", "ES256", "EdDSA"] {
        let token = f.a.token(alg, json!({"sub": "from-a"}));
        f.accept("/any", &token, "from-a", &format!("A {alg}"))
            .await;
        let token = f.b.token(alg, json!({"sub": "from-b"}));
        f.accept("/any", &token, "from-b", &format!("B {alg}"))
            .await;
    }
    // An `iss` naming neither issuer.
    let token =
        f.a.token("ES256", json!({"iss": "https://unknown.example.com"}));
    f.reject("/any", &token, "unknown iss").await;
}

#[tokio::test]
async fn a_route_limited_to_one_issuer_refuses_the_others_valid_tokens() {
    let f = Fixture::ready().await;
    let from_a = f.a.token("ES256", json!({"sub": "from-a"}));
    let from_b = f.b.token("ES256", json!({"sub": "from-b"}));
    f.accept("/only-a", &from_a, "from-a", "A on /only-a").await;
    f.reject("/only-a", &from_b, "B on /only-a").await;
    f.accept("/only-b", &from_b, "from-b", "B on /only-b").await;
    f.reject("/only-b", &from_a, "A on /only-b").await;
}

#[tokio::test]
async fn a_token_signed_by_a_but_claiming_b_is_rejected() {
    let f = Fixture::ready().await;
    let iss_b = f.b.issuer();
    for alg in ["RS256", "ES256", "EdDSA"] {
        // A's key, the (same-named) kid B also publishes, B's `iss`.
        let token = f.a.token(alg, json!({ "iss": iss_b }));
        for path in ["/any", "/only-b", "/only-a"] {
            f.reject(path, &token, &format!("{alg} on {path}")).await;
        }
        // Without a kid: tried against each of B's keys, none verifies.
        let token =
            f.a.token_with_header(alg, json!({"kid": null}), json!({ "iss": iss_b }));
        f.reject("/any", &token, &format!("{alg} without kid"))
            .await;
    }
}

#[tokio::test]
async fn an_issuer_down_at_start_is_unready_then_recovers_without_restart() {
    let a = MockIssuer::start().await;
    let b = MockIssuer::start().await;
    b.set_down(true);
    let f = Fixture::start_with(a, b).await;
    f.wait_readyz(503, &json!({"ready": false, "missing": ["b"]}))
        .await;
    f.assert_healthy().await;
    let from_a = f.a.token("ES256", json!({"sub": "from-a"}));
    let from_b = f.b.token("ES256", json!({"sub": "from-b"}));
    f.accept("/any", &from_a, "from-a", "A while B is down")
        .await;
    f.unavailable("/any", &from_b, "B down, /any").await;
    f.unavailable("/only-b", &from_b, "B down, /only-b").await;
    // Still unready after more retries (bounded wait for them to happen).
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.b.hits(DISCOVERY) < 2 {
        assert!(Instant::now() < deadline, "issuer b is not retried");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    f.wait_readyz(503, &json!({"ready": false, "missing": ["b"]}))
        .await;
    f.unavailable("/any", &from_b, "B still down").await;
    f.assert_healthy().await;

    f.b.set_down(false);
    f.wait_readyz(200, &json!({"ready": true})).await;
    f.assert_healthy().await;
    f.accept("/any", &from_b, "from-b", "B recovered, /any")
        .await;
    f.accept("/only-b", &from_b, "from-b", "B recovered, /only-b")
        .await;
    f.accept("/any", &from_a, "from-a", "A still fine").await;
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_keeps_the_issuer_unready() {
    let a = MockIssuer::start().await;
    let b = MockIssuer::start().await;
    // Discovery claims the issuer with a trailing slash: not exactly the configured one.
    let with_slash = format!("{}/", b.issuer());
    b.set_discovery_issuer(Some(&with_slash));
    let f = Fixture::start_with(a, b).await;
    f.wait_readyz(503, &json!({"ready": false, "missing": ["b"]}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.b.hits(DISCOVERY) < 2 {
        assert!(Instant::now() < deadline, "discovery for b is not retried");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    f.wait_readyz(503, &json!({"ready": false, "missing": ["b"]}))
        .await;
    f.assert_healthy().await;
    assert_eq!(
        f.b.hits("/jwks"),
        0,
        "keys named by a mismatching document are never fetched"
    );
    let from_b = f.b.token("ES256", json!({"sub": "from-b"}));
    f.unavailable("/any", &from_b, "B's discovery mismatches")
        .await;
    let from_a = f.a.token("ES256", json!({"sub": "from-a"}));
    f.accept("/any", &from_a, "from-a", "A unaffected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_min_refresh() {
    let f = Fixture::ready().await;
    let a_before = f.a.hits("/jwks");
    let b_before = f.b.hits("/jwks");
    assert!(a_before >= 1 && b_before >= 1, "the initial loads");
    let mut seed = [0u8; 8];
    getrandom::getrandom(&mut seed).expect("random");
    let tokens: Vec<String> = (0..100)
        .map(|i| {
            let kid = format!(
                "kid-{}-{i}",
                seed.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            f.a.token_with_header("ES256", json!({ "kid": kid }), json!({}))
        })
        .collect();
    let url = f.proxy.url("/any");
    let started = Instant::now();
    let tasks: Vec<_> = tokens
        .iter()
        .cloned()
        .map(|token| {
            let url = url.clone();
            tokio::spawn(async move {
                let value = format!("Bearer {token}");
                let answer = get(&url, &[("authorization", value.as_str())]).await;
                (token, answer)
            })
        })
        .collect();
    for task in tasks {
        let (token, answer) = task.await.expect("task");
        assert_invalid_token(&answer, &token, "random unknown kid");
    }
    let elapsed = started.elapsed();
    assert!(f.echo.seen().is_empty(), "nothing reached the upstream");
    let fetches = f.a.hits("/jwks") - a_before;
    // The first load does not count, so the first unknown kid may refresh at once; after that
    // at most one fetch per started jwks_min_refresh (1 s) interval.
    let allowed = 1 + usize::try_from(elapsed.as_secs()).expect("secs");
    assert!(
        (1..=allowed).contains(&fetches),
        "{fetches} JWKS fetches for 100 unknown kids in {elapsed:?} (allowed 1..={allowed})"
    );
    assert_eq!(f.b.hits("/jwks"), b_before, "issuer b is not involved");
    // The issuer still works.
    let token = f.a.token("ES256", json!({"sub": "after"}));
    f.accept("/any", &token, "after", "after the flood").await;
}
