//! Token extraction through the proxy (SPEC §4 item 3, §6 400/401 rows): the `Authorization`
//! grammar, what counts as "no token", `max_token_bytes`, and how `required`, `optional` and
//! `public` routes treat a credential. Each case checks the status, the exact
//! `WWW-Authenticate`, the JSON `error`, and whether the echo upstream saw the request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::echo::Echo;
use support::issuer::MockIssuer;
use support::{config, get, Answer, Proxy};

/// `/req` needs a token, `/opt` takes one if given, `/pub` never looks; the verified `sub` is
/// forwarded as `X-Auth-Subject`.
const ROUTES: &str = "\n[identity.headers]\nX-Auth-Subject = \"sub\"\n\n\
    [[route]]\nid = \"req\"\npath_prefix = \"/req\"\nauth = \"required\"\n\n\
    [[route]]\nid = \"opt\"\npath_prefix = \"/opt\"\nauth = \"optional\"\n\n\
    [[route]]\nid = \"pub\"\npath_prefix = \"/pub\"\nauth = \"public\"\n";

struct Fixture {
    echo: Echo,
    mock: MockIssuer,
    proxy: Proxy,
    realm: &'static str,
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::with_server("", "tokengate").await
    }

    /// `server_extra` goes into `[server]`; `realm` is what it configures (or the default).
    async fn with_server(server_extra: &str, realm: &'static str) -> Fixture {
        let echo = Echo::start().await;
        let mock = MockIssuer::start().await;
        let extra = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}\n{ROUTES}",
            mock.config_toml("mock", &["api"])
        );
        let text = config(echo.addr, &extra).replacen(
            "[server]\n",
            &format!("[server]\n{server_extra}"),
            1,
        );
        let proxy = Proxy::start(&text).await;
        wait_ready(&proxy).await;
        Fixture {
            echo,
            mock,
            proxy,
            realm,
        }
    }

    fn good(&self) -> String {
        self.mock.token("ES256", json!({}))
    }

    async fn send(&self, path: &str, authorization: &[&str]) -> Answer {
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|v| ("authorization", *v))
            .collect();
        get(&self.proxy.url(path), &headers).await
    }

    /// Sends and reports whether the upstream saw the request.
    async fn send_seen(&self, path: &str, authorization: &[&str]) -> (Answer, bool) {
        let before = self.echo.seen().len();
        let answer = self.send(path, authorization).await;
        let after = self.echo.seen().len();
        assert!(after <= before + 1);
        (answer, after == before + 1)
    }

    /// 200 through to the upstream; returns the `X-Auth-Subject` the upstream received.
    async fn pass(&self, path: &str, authorization: &[&str], why: &str) -> Option<String> {
        let (answer, seen) = self.send_seen(path, authorization).await;
        assert_eq!(answer.status, 200, "{why}: {}", body(&answer));
        assert!(seen, "{why}: the upstream must see it");
        let last = self.echo.seen().pop().expect("seen");
        assert_eq!(last.header("authorization"), None, "{why}: not forwarded");
        last.header("x-auth-subject").map(str::to_owned)
    }

    /// 400 `invalid_request`, never reaching the upstream.
    async fn bad_request(&self, path: &str, authorization: &[&str], why: &str) {
        let (answer, seen) = self.send_seen(path, authorization).await;
        assert_eq!(answer.status, 400, "{why}: {}", body(&answer));
        assert!(!seen, "{why}: must not reach the upstream");
        assert_json_error(&answer, "invalid_request", why);
        // §6 gives 400 `invalid_request` as a body error; no challenge is sent for it.
        assert_eq!(answer.header("www-authenticate"), None, "{why}");
        for value in authorization {
            if let Some(token) = value.split_whitespace().nth(1).filter(|t| t.len() > 8) {
                assert!(!body(&answer).contains(token), "{why}: body repeats it");
            }
        }
    }

    /// 401 with `Bearer realm="…"` and no `error` attribute, never reaching the upstream.
    async fn missing(&self, path: &str, authorization: &[&str], why: &str) {
        let (answer, seen) = self.send_seen(path, authorization).await;
        assert_eq!(answer.status, 401, "{why}: {}", body(&answer));
        assert!(!seen, "{why}: must not reach the upstream");
        let expected = format!("Bearer realm=\"{}\"", self.realm);
        assert_eq!(
            answer.header("www-authenticate"),
            Some(expected.as_str()),
            "{why}"
        );
        assert_json_error(&answer, "missing_token", why);
    }

    /// 401 `invalid_token` with the exact challenge, never reaching the upstream.
    async fn invalid(&self, path: &str, token: &str, why: &str) -> String {
        let value = format!("Bearer {token}");
        let (answer, seen) = self.send_seen(path, &[&value]).await;
        assert!(!seen, "{why}: must not reach the upstream");
        assert_invalid_token(&answer, token, self.realm, why)
    }
}

fn body(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

fn assert_json_error(answer: &Answer, error: &str, why: &str) {
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{why}"
    );
    let json = answer.json();
    assert_eq!(json["error"], error, "{why}: {json}");
    assert!(json["error_description"].is_string(), "{why}: {json}");
}

/// The exact `invalid_token` challenge (its description equal to the body's); no token bytes in
/// the answer. Returns the description.
fn assert_invalid_token(answer: &Answer, token: &str, realm: &str, why: &str) -> String {
    assert_eq!(answer.status, 401, "{why}: {}", body(answer));
    assert_json_error(answer, "invalid_token", why);
    let description = answer.json()["error_description"]
        .as_str()
        .expect("description")
        .to_owned();
    let expected = format!(
        "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""
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
    assert!(
        !expected.contains(token),
        "{why}: challenge repeats the token"
    );
    description
}

async fn wait_ready(proxy: &Proxy) {
    let url = format!("http://{}/readyz", proxy.admin.expect("admin listener"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(&url, &[]).await;
        if answer.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "proxy not ready: {}",
            body(&answer)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn the_scheme_is_case_insensitive() {
    let f = Fixture::start().await;
    let token = f.good();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {token}");
        let sub = f.pass("/req", &[&value], scheme).await;
        assert_eq!(sub.as_deref(), Some("alice"), "{scheme}");
    }
}

#[tokio::test]
async fn one_or_more_spaces_separate_scheme_and_token() {
    let f = Fixture::start().await;
    let token = f.good();
    for spaces in [1, 2, 5] {
        let value = format!("Bearer{}{token}", " ".repeat(spaces));
        let sub = f.pass("/req", &[&value], &format!("{spaces} spaces")).await;
        assert_eq!(sub.as_deref(), Some("alice"));
    }
}

#[tokio::test]
async fn several_authorization_headers_are_400_invalid_request() {
    let f = Fixture::start().await;
    let token = f.good();
    let value = format!("Bearer {token}");
    f.bad_request("/req", &[&value, &value], "the same token twice")
        .await;
    f.bad_request("/req", &[&value, "Basic dXNlcjpwYXNz"], "bearer and basic")
        .await;
    f.bad_request("/opt", &[&value, &value], "twice on an optional route")
        .await;
}

#[tokio::test]
async fn a_malformed_bearer_credential_is_400_invalid_request() {
    let f = Fixture::start().await;
    let token = f.good();
    let cases = [
        ("Bearer alone", "Bearer".to_owned()),
        ("Bearer and a space", "Bearer ".to_owned()),
        ("Bearer and spaces", "Bearer    ".to_owned()),
        ("tab as the separator", format!("Bearer\t{token}")),
        ("space then tab", format!("Bearer \t{token}")),
        ("'!' in the token", format!("Bearer {token}!")),
        ("'@' in the token", "Bearer abc@def".to_owned()),
        ("',' in the token", "Bearer abc,def".to_owned()),
        ("'\"' in the token", "Bearer \"abc\"".to_owned()),
        ("';' in the token", "Bearer abc;def".to_owned()),
        ("'=' before the end", "Bearer ab=cd".to_owned()),
        ("only '='", "Bearer ===".to_owned()),
        (
            "trailing garbage after a space",
            format!("Bearer {token} extra"),
        ),
        ("two tokens", format!("Bearer {token} {token}")),
        ("lower-case scheme, bad token", "bearer a b".to_owned()),
    ];
    for (why, value) in &cases {
        f.bad_request("/req", &[value], why).await;
    }
    // Optional routes extract the same way: a broken header is never "no token".
    for (why, value) in &cases {
        f.bad_request("/opt", &[value], &format!("optional: {why}"))
            .await;
    }
}

#[tokio::test]
async fn another_scheme_on_a_required_route_is_401_without_an_error_attribute() {
    let f = Fixture::start().await;
    let token = f.good();
    f.missing("/req", &["Basic dXNlcjpwYXNz"], "Basic").await;
    let digest = "Digest username=\"u\", realm=\"r\", nonce=\"n\"";
    f.missing("/req", &[digest], "Digest").await;
    // The scheme is everything before the first space: `Bearerxyz` is another scheme.
    let glued = format!("Bearer{token}");
    f.missing("/req", &[&glued], "Bearer glued to the token")
        .await;
    let other = format!("Token {token}");
    f.missing("/req", &[&other], "Token scheme with a JWT")
        .await;
}

#[tokio::test]
async fn no_token_on_a_required_route_is_401_without_an_error_attribute() {
    let f = Fixture::start().await;
    f.missing("/req", &[], "no Authorization").await;
    f.missing("/req/deeper/path", &[], "no Authorization, sub-path")
        .await;
}

#[tokio::test]
async fn a_token_over_max_token_bytes_is_401_invalid_token_and_never_parsed() {
    let f = Fixture::with_server("max_token_bytes = 100\n", "tokengate").await;
    let jwks_hits = f.mock.hits("/jwks");
    // A well-signed token: its size alone refuses it.
    let good = f.good();
    assert!(good.len() > 100);
    let description = f.invalid("/req", &good, "valid but too long").await;
    assert!(
        description.contains("max_token_bytes") || description.contains("long"),
        "{description}"
    );
    // A token naming an unknown kid would make a parsing proxy refresh the JWKS.
    let unknown = f
        .mock
        .token_with_header("ES256", json!({"kid": "never-seen"}), json!({}));
    f.invalid("/req", &unknown, "unknown kid, too long").await;
    f.invalid("/opt", &unknown, "optional route, too long")
        .await;
    let junk = "a".repeat(101);
    f.invalid("/req", &junk, "101 bytes of junk").await;
    assert_eq!(
        f.mock.hits("/jwks"),
        jwks_hits,
        "an oversized token must not cause a JWKS fetch"
    );
    // At the limit the token is parsed (and refused for what it is, not its size).
    let exactly = "a".repeat(100);
    let description = f.invalid("/req", &exactly, "100 bytes").await;
    assert!(!description.contains("max_token_bytes"), "{description}");
}

#[tokio::test]
async fn an_optional_route_without_a_token_passes_without_identity_headers() {
    let f = Fixture::start().await;
    let sub = f.pass("/opt", &[], "no token").await;
    assert_eq!(sub, None);
    let sub = f.pass("/opt", &["Basic dXNlcjpwYXNz"], "Basic").await;
    assert_eq!(sub, None, "another scheme counts as no token");
    // A client-supplied identity header is stripped, not passed off as verified.
    let before = f.echo.seen().len();
    let answer = get(
        &f.proxy.url("/opt"),
        &[("x-auth-subject", "admin"), ("X_Auth_Subject", "admin")],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = f.echo.seen();
    assert_eq!(seen.len(), before + 1);
    let last = seen.last().expect("seen");
    assert!(last.all("x-auth-subject").is_empty(), "{:?}", last.headers);
    assert!(last.all("x_auth_subject").is_empty(), "{:?}", last.headers);
}

#[tokio::test]
async fn an_optional_route_with_a_bad_token_is_401_never_ignored() {
    let f = Fixture::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expired = f
        .mock
        .token("ES256", json!({"iat": now - 900, "exp": now - 600}));
    f.invalid("/opt", &expired, "expired").await;
    let wrong_aud = f.mock.token("ES256", json!({"aud": "someone-else"}));
    f.invalid("/opt", &wrong_aud, "wrong audience").await;
    let (h, p, _) = {
        let good = f.good();
        let mut it = good.split('.').map(str::to_owned);
        (
            it.next().expect("h"),
            it.next().expect("p"),
            it.next().expect("s"),
        )
    };
    let forged = format!("{h}.{p}.{}", MockIssuer::b64([1u8; 64]));
    f.invalid("/opt", &forged, "bad signature").await;
    f.invalid("/opt", "not-a-jwt", "not a JWT").await;
}

#[tokio::test]
async fn an_optional_route_with_a_good_token_forwards_the_identity() {
    let f = Fixture::start().await;
    let token = f.mock.token("EdDSA", json!({"sub": "opt-user"}));
    let value = format!("Bearer {token}");
    let sub = f.pass("/opt", &[&value], "good token").await;
    assert_eq!(sub.as_deref(), Some("opt-user"));
}

#[tokio::test]
async fn a_public_route_ignores_authorization_entirely() {
    let f = Fixture::start().await;
    let token = f.good();
    let expired = f.mock.token("ES256", json!({"exp": 1000, "iat": 900}));
    let good = format!("Bearer {token}");
    let old = format!("Bearer {expired}");
    let tab = format!("Bearer\t{token}");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("none", vec![]),
        ("a good token", vec![&good]),
        ("an expired token", vec![&old]),
        ("Bearer alone", vec!["Bearer"]),
        ("a tab", vec![&tab]),
        ("bad characters", vec!["Bearer a!b@c"]),
        ("two headers", vec![&good, &good]),
        ("Basic", vec!["Basic dXNlcjpwYXNz"]),
        ("not a JWT", vec!["Bearer not-a-jwt"]),
    ];
    for (why, authorization) in &cases {
        let sub = f.pass("/pub", authorization, why).await;
        assert_eq!(sub, None, "{why}: no identity on a public route");
    }
}

#[tokio::test]
async fn the_realm_follows_the_server_setting() {
    let f = Fixture::with_server("realm = \"orders-api\"\n", "orders-api").await;
    f.missing("/req", &[], "no token").await;
    f.missing("/req", &["Basic dXNlcjpwYXNz"], "Basic").await;
    f.invalid("/req", "not-a-jwt", "not a JWT").await;
    let wrong = f.mock.token("ES256", json!({"aud": "nope"}));
    f.invalid("/req", &wrong, "wrong audience").await;
    let value = format!("Bearer {}", f.good());
    let sub = f.pass("/req", &[&value], "good token").await;
    assert_eq!(sub.as_deref(), Some("alice"));
}
