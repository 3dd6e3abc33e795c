//! Token verification through the proxy (SPEC §4 item 4, §3 "Keys:", §6 401 rows): one test per
//! rule, each over HTTP to the echo upstream, asserting the status, the exact `WWW-Authenticate`
//! challenge, the JSON `error`, that no error text repeats the token, and whether the upstream
//! saw the request. Real time: `jwks_min_refresh` is 1 s (the mock's `config_toml`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use support::echo::Echo;
use support::issuer::MockIssuer;
use support::{config, get, Answer, Proxy};

/// Every route needs a token; the verified `sub` is forwarded as `X-Auth-Subject`.
const ROUTES: &str = "\n[identity.headers]\nX-Auth-Subject = \"sub\"\n\n\
                      [[route]]\nid = \"api\"\npath_prefix = \"/api\"\n";

/// An echo upstream, a mock issuer and a ready proxy in front of them.
struct Fixture {
    echo: Echo,
    mock: MockIssuer,
    proxy: Proxy,
}

impl Fixture {
    /// `issuer_extra` is appended inside the mock's `[[issuer]]` table (audience `api`).
    async fn start(issuer_extra: &str) -> Fixture {
        let mock = MockIssuer::start().await;
        Fixture::with_mock(mock, issuer_extra).await
    }

    async fn with_mock(mock: MockIssuer, issuer_extra: &str) -> Fixture {
        let echo = Echo::start().await;
        let extra = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}{issuer_extra}\n{ROUTES}",
            mock.config_toml("mock", &["api"])
        );
        let proxy = Proxy::start(&config(echo.addr, &extra)).await;
        wait_ready(&proxy).await;
        Fixture { echo, mock, proxy }
    }

    async fn call(&self, token: &str) -> Answer {
        let value = format!("Bearer {token}");
        get(
            &self.proxy.url("/api/resource"),
            &[("authorization", value.as_str())],
        )
        .await
    }

    /// 200, and the upstream saw this request with `X-Auth-Subject: sub`.
    async fn accept(&self, token: &str, sub: &str, why: &str) {
        let before = self.echo.seen().len();
        let answer = self.call(token).await;
        assert_eq!(answer.status, 200, "{why}: {}", body(&answer));
        let seen = self.echo.seen();
        assert_eq!(seen.len(), before + 1, "{why}: the upstream saw it once");
        let last = seen.last().expect("seen");
        assert_eq!(last.header("x-auth-subject"), Some(sub), "{why}");
        assert_eq!(
            last.header("authorization"),
            None,
            "{why}: token not forwarded"
        );
    }

    /// 401 `invalid_token` with the exact challenge, and the upstream never saw the request.
    /// Returns the `error_description`.
    async fn reject(&self, token: &str, why: &str) -> String {
        let before = self.echo.seen().len();
        let answer = self.call(token).await;
        let description = assert_invalid_token(&answer, token, "tokengate", why);
        assert_eq!(
            self.echo.seen().len(),
            before,
            "{why}: nothing may reach the upstream"
        );
        description
    }
}

fn body(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

/// Checks a 401 `invalid_token` answer: the exact `WWW-Authenticate` (its description equal to
/// the body's), a JSON body, and no trace of the token. Returns the description.
fn assert_invalid_token(answer: &Answer, token: &str, realm: &str, why: &str) -> String {
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
        .unwrap_or_else(|| panic!("{why}: no error_description in {json}"))
        .to_owned();
    assert!(!description.is_empty(), "{why}");
    let expected = format!(
        "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""
    );
    assert_eq!(
        answer.header("www-authenticate"),
        Some(expected.as_str()),
        "{why}"
    );
    assert_token_absent(answer, token, why);
    description
}

/// Neither the body nor any response header contains the token (nor its signature part, the
/// one piece that identifies it).
fn assert_token_absent(answer: &Answer, token: &str, why: &str) {
    let text = body(answer);
    let mut needles = vec![token];
    if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() >= 16) {
        needles.push(signature);
    }
    for needle in needles.into_iter().filter(|n| !n.is_empty()) {
        assert!(!text.contains(needle), "{why}: body repeats the token");
        for (name, value) in &answer.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(!value.contains(needle), "{why}: {name} repeats the token");
        }
    }
}

/// Polls the admin `/readyz` until it answers 200 (bounded).
async fn wait_ready(proxy: &Proxy) {
    let admin = proxy.admin.expect("admin listener");
    let url = format!("http://{admin}/readyz");
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

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    i64::try_from(secs).expect("now")
}

/// The three parts of a compact JWS.
fn parts(token: &str) -> (String, String, String) {
    let mut it = token.split('.').map(str::to_owned);
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        panic!("not a compact JWS");
    };
    (h, p, s)
}

fn b64url_decode(part: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url")
}

/// Claims a valid token for the mock would carry.
fn claims_for(mock: &MockIssuer, sub: &str) -> Value {
    let now = now();
    json!({"iss": mock.issuer(), "sub": sub, "aud": "api", "iat": now, "exp": now + 300})
}

// ---------------------------------------------------------------------------------------------
// Accepted algorithms
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rs256_ps256_es256_es384_and_eddsa_tokens_are_accepted() {
    let f = Fixture::start("").await;
    for alg in ["RS256", "PS256", "ES256", "ES384", "EdDSA"] {
        let sub = format!("user-{alg}");
        let token = f.mock.token(alg, json!({ "sub": sub }));
        f.accept(&token, &sub, alg).await;
    }
}

// ---------------------------------------------------------------------------------------------
// alg rules
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_alg_outside_the_issuer_allow_list_is_rejected() {
    let f = Fixture::start("algorithms = [\"RS256\", \"ES256\"]\n").await;
    f.accept(&f.mock.token("ES256", json!({})), "alice", "ES256 allowed")
        .await;
    for alg in ["EdDSA", "PS256", "ES384", "RS384"] {
        let token = f.mock.token(alg, json!({}));
        let description = f.reject(&token, alg).await;
        assert!(description.contains("alg"), "{alg}: {description}");
    }
}

#[tokio::test]
async fn an_alg_that_does_not_fit_the_key_named_by_kid_is_rejected() {
    let f = Fixture::start("").await;
    let payload = claims_for(&f.mock, "alice").to_string();
    // ES256 header naming the RSA key, signed with the P-256 key.
    let header = json!({"alg": "ES256", "kid": f.mock.kid("RS256"), "typ": "JWT"}).to_string();
    let token = f.mock.sign_raw(&header, &payload, "ES256");
    f.reject(&token, "ES256 with the RSA key's kid").await;
    // RS256 header naming the P-256 key, signed with the RSA key.
    let header = json!({"alg": "RS256", "kid": f.mock.kid("ES256"), "typ": "JWT"}).to_string();
    let token = f.mock.sign_raw(&header, &payload, "RS256");
    f.reject(&token, "RS256 with the P-256 key's kid").await;
    // EdDSA header naming the P-384 key.
    let header = json!({"alg": "EdDSA", "kid": f.mock.kid("ES384"), "typ": "JWT"}).to_string();
    let token = f.mock.sign_raw(&header, &payload, "EdDSA");
    f.reject(&token, "EdDSA with the P-384 key's kid").await;
}

#[tokio::test]
async fn alg_none_in_any_spelling_is_rejected() {
    let f = Fixture::start("").await;
    let payload = claims_for(&f.mock, "alice").to_string();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT"}).to_string();
        // An empty signature, as RFC 7519 §6 unsecured JWTs have.
        let unsigned = f.mock.sign_raw(&header, &payload, "none");
        assert!(unsigned.ends_with('.'));
        f.reject(&unsigned, &format!("{alg}, empty signature"))
            .await;
        // And with some signature bytes, in case emptiness alone is what gets it refused.
        let with_sig = format!("{unsigned}{}", MockIssuer::b64(b"signature"));
        f.reject(&with_sig, &format!("{alg}, with a signature"))
            .await;
        // And with a kid naming a real key.
        let header = json!({"alg": alg, "kid": f.mock.kid("RS256")}).to_string();
        let with_kid = format!("{}{}", f.mock.sign_raw(&header, &payload, "none"), "AAAA");
        f.reject(&with_kid, &format!("{alg}, with a kid")).await;
    }
}

#[tokio::test]
async fn hs256_is_rejected_when_not_configured() {
    let f = Fixture::start("").await;
    let token = f.mock.token("HS256", json!({}));
    let description = f.reject(&token, "HS256 with the default algorithms").await;
    assert!(description.contains("alg"), "{description}");
}

/// The RSA-public-key-as-HMAC-secret attack: HS256 signed with the issuer's public key PEM,
/// with the RSA key's kid, where HS256 is not allowed.
#[tokio::test]
async fn the_rsa_public_key_as_hmac_secret_attack_fails_without_hs256() {
    let f = Fixture::start("").await;
    let pem = f.mock.public_rsa_pem();
    f.mock.configure(|s| s.hmac_secret = pem);
    let header = json!({"kid": f.mock.kid("RS256")});
    let token = f.mock.token_with_header("HS256", header, json!({}));
    f.reject(&token, "HS256 signed with the RSA public key PEM")
        .await;
    let token = f.mock.token("HS256", json!({}));
    f.reject(&token, "HS256 signed with the PEM, no kid").await;
}

/// The same attack where HS256 is allowed with a different (the real) `hmac_secret`.
#[tokio::test]
async fn the_rsa_public_key_as_hmac_secret_attack_fails_with_hs256_allowed() {
    let configured = "an-unrelated-configured-secret-0123456789";
    let extra =
        format!("algorithms = [\"RS256\", \"ES256\", \"HS256\"]\nhmac_secret = \"{configured}\"\n");
    let f = Fixture::start(&extra).await;
    let pem = f.mock.public_rsa_pem();
    f.mock.configure(|s| s.hmac_secret = pem);
    let header = json!({"kid": f.mock.kid("RS256")});
    let token = f.mock.token_with_header("HS256", header, json!({}));
    f.reject(&token, "HS256 signed with the PEM, RSA kid").await;
    let token = f.mock.token("HS256", json!({}));
    f.reject(&token, "HS256 signed with the PEM, no kid").await;
    // Control: the configured secret does work, so the refusals above are about the key.
    f.mock
        .configure(|s| s.hmac_secret = configured.as_bytes().to_vec());
    f.accept(
        &f.mock.token("HS256", json!({})),
        "alice",
        "configured secret",
    )
    .await;
}

#[tokio::test]
async fn hs256_with_the_configured_secret_and_listed_is_accepted() {
    let mock = MockIssuer::start().await;
    let secret = String::from_utf8(mock.hmac_secret()).expect("ascii secret");
    let extra = format!("algorithms = [\"ES256\", \"HS256\"]\nhmac_secret = \"{secret}\"\n");
    let f = Fixture::with_mock(mock, &extra).await;
    let token = f.mock.token("HS256", json!({"sub": "hmac-user"}));
    f.accept(&token, "hmac-user", "HS256").await;
    // A tampered MAC is still refused.
    let (h, p, s) = parts(&token);
    let mut mac = b64url_decode(&s);
    mac[0] ^= 1;
    let tampered = format!("{h}.{p}.{}", MockIssuer::b64(mac));
    f.reject(&tampered, "HS256 with a flipped MAC bit").await;
}

// ---------------------------------------------------------------------------------------------
// Keys: unknown kid, rotation, header-supplied keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_kid_refreshes_the_jwks_once_then_is_rejected() {
    let f = Fixture::start("").await;
    // The first load (retried if it failed; normally exactly one fetch).
    let before = f.mock.hits("/jwks");
    assert!(before >= 1, "the first load");
    let header = json!({"kid": "no-such-kid"});
    let token = f.mock.token_with_header("ES256", header, json!({}));
    let description = f.reject(&token, "unknown kid").await;
    assert!(description.contains("key"), "{description}");
    assert_eq!(
        f.mock.hits("/jwks"),
        before + 1,
        "exactly one refresh for the unknown kid"
    );
}

#[tokio::test]
async fn after_rotation_a_token_with_a_new_kid_is_accepted() {
    let f = Fixture::start("").await;
    let old = f.mock.token("ES256", json!({"sub": "old"}));
    f.accept(&old, "old", "before rotation").await;
    f.mock.rotate();
    let new = f.mock.token("EdDSA", json!({"sub": "new"}));
    assert_ne!(f.mock.kid("EdDSA"), "ed25519-1");
    // The first load does not count against jwks_min_refresh, so one attempt should do; poll
    // (bounded) past one jwks_min_refresh in case something else refreshed first.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = f.echo.seen().len();
        let answer = f.call(&new).await;
        if answer.status == 200 {
            let seen = f.echo.seen();
            assert_eq!(seen.len(), before + 1);
            let last = seen.last().expect("seen");
            assert_eq!(last.header("x-auth-subject"), Some("new"));
            break;
        }
        assert_invalid_token(&answer, &new, "tokengate", "rotated kid not yet known");
        assert!(
            Instant::now() < deadline,
            "the rotated key was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(f.mock.hits("/jwks") >= 2, "the JWKS was fetched again");
    // The old keys are no longer published: the old token now names an unknown kid.
    f.reject(&old, "token of a retired key").await;
}

/// A tiny loopback HTTP server standing in for an attacker's key server: it answers every
/// request with `body` and counts the connections it accepted.
struct Attacker {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Attacker {
    async fn start(body: String) -> Attacker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tcp.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tcp.write_all(head.as_bytes()).await;
                    let _ = tcp.write_all(body.as_bytes()).await;
                });
            }
        });
        Attacker {
            addr,
            connections,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn jku_x5u_jwk_and_x5c_headers_are_never_used() {
    let f = Fixture::start("").await;
    // The attacker's own provider: only its keys and signing are used, never its server.
    let evil = MockIssuer::start().await;
    let evil_kid = "attacker-p256";
    let mut public = evil
        .jwks()
        .get("keys")
        .and_then(Value::as_array)
        .and_then(|keys| {
            keys.iter()
                .find(|k| k["kid"] == evil.kid("ES256").as_str())
                .cloned()
        })
        .expect("attacker's P-256 public key");
    public["kid"] = json!(evil_kid);
    let attacker = Attacker::start(json!({"keys": [public.clone()]}).to_string()).await;
    let jwks_url = attacker.url("/jwks.json");
    let x5u_url = attacker.url("/cert.pem");
    // Some base64 that is certainly not a certificate chaining anywhere trusted.
    let x5c = json!([MockIssuer::b64(b"not a certificate").replace('-', "+")]);
    let payload = claims_for(&f.mock, "mallory").to_string();
    let legit_kid = f.mock.kid("ES256");
    let headers = [
        (
            "jku, attacker kid",
            json!({"alg": "ES256", "kid": evil_kid, "jku": jwks_url}),
        ),
        (
            "jku, legitimate kid",
            json!({"alg": "ES256", "kid": legit_kid, "jku": jwks_url}),
        ),
        ("jku, no kid", json!({"alg": "ES256", "jku": jwks_url})),
        (
            "x5u, attacker kid",
            json!({"alg": "ES256", "kid": evil_kid, "x5u": x5u_url}),
        ),
        ("x5u, no kid", json!({"alg": "ES256", "x5u": x5u_url})),
        (
            "jwk, attacker kid",
            json!({"alg": "ES256", "kid": evil_kid, "jwk": public}),
        ),
        ("jwk, no kid", json!({"alg": "ES256", "jwk": public})),
        (
            "jwk, legitimate kid",
            json!({"alg": "ES256", "kid": legit_kid, "jwk": public}),
        ),
        (
            "x5c with jwk",
            json!({"alg": "ES256", "kid": evil_kid, "x5c": x5c, "jwk": public}),
        ),
        (
            "everything at once",
            json!({"alg": "ES256", "jku": jwks_url, "x5u": x5u_url, "jwk": public, "x5c": x5c}),
        ),
    ];
    for (why, header) in headers {
        let token = evil.sign_raw(&header.to_string(), &payload, "ES256");
        f.reject(&token, why).await;
    }
    assert_eq!(
        attacker.connections(),
        0,
        "the attacker's server must never be contacted"
    );
    // Control: the legitimate issuer's tokens still work with such headers present (ignored).
    let token = f.mock.token_with_header(
        "ES256",
        json!({"jku": jwks_url, "x5u": x5u_url}),
        json!({"sub": "bob"}),
    );
    f.accept(&token, "bob", "jku/x5u ignored on a good token")
        .await;
    assert_eq!(attacker.connections(), 0);
}

// ---------------------------------------------------------------------------------------------
// crit, typ
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_crit_parameter_is_rejected() {
    let f = Fixture::start("").await;
    let cases = [
        (
            "crit naming an unknown extension",
            json!({"crit": ["x-unknown"], "x-unknown": 1}),
        ),
        ("crit naming an absent member", json!({"crit": ["b64"]})),
        ("empty crit list", json!({"crit": []})),
        ("crit as a string", json!({"crit": "exp"})),
        ("crit naming exp", json!({"crit": ["exp"]})),
    ];
    for (why, header) in cases {
        let token = f.mock.token_with_header("ES256", header, json!({}));
        let description = f.reject(&token, why).await;
        assert!(description.contains("crit"), "{why}: {description}");
    }
}

#[tokio::test]
async fn require_typ_accepts_at_jwt_in_any_case_with_or_without_application_prefix() {
    let f = Fixture::start("require_typ = \"at+jwt\"\n").await;
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/At+JWT",
    ] {
        let token = f
            .mock
            .token_with_header("RS256", json!({ "typ": typ }), json!({"sub": typ}));
        f.accept(&token, typ, typ).await;
    }
}

#[tokio::test]
async fn require_typ_rejects_jwt_and_a_missing_typ() {
    let f = Fixture::start("require_typ = \"at+jwt\"\n").await;
    let cases = [
        ("typ JWT", json!({"typ": "JWT"})),
        ("typ missing", json!({"typ": null})),
        ("typ application/jwt", json!({"typ": "application/jwt"})),
        ("typ at+jwt with a suffix", json!({"typ": "at+jwt2"})),
        ("typ not a string", json!({"typ": ["at+jwt"]})),
    ];
    for (why, header) in cases {
        let token = f.mock.token_with_header("RS256", header, json!({}));
        let description = f.reject(&token, why).await;
        assert!(description.contains("typ"), "{why}: {description}");
    }
}

// ---------------------------------------------------------------------------------------------
// Time claims
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_without_exp_is_rejected() {
    let f = Fixture::start("").await;
    let token = f.mock.token("ES256", json!({"exp": null}));
    let description = f.reject(&token, "no exp").await;
    assert!(description.contains("exp"), "{description}");
}

#[tokio::test]
async fn an_expired_token_is_rejected_and_the_description_says_so() {
    let f = Fixture::start("clock_skew = \"60s\"\n").await;
    let now = now();
    let token = f
        .mock
        .token("ES256", json!({"iat": now - 600, "exp": now - 300}));
    let description = f.reject(&token, "expired 5 min ago").await;
    assert!(
        description.to_ascii_lowercase().contains("expire"),
        "{description}"
    );
}

#[tokio::test]
async fn a_token_expired_within_the_clock_skew_is_accepted() {
    let f = Fixture::start("clock_skew = \"60s\"\n").await;
    let now = now();
    let token = f.mock.token(
        "ES256",
        json!({"sub": "late", "iat": now - 300, "exp": now - 30}),
    );
    f.accept(&token, "late", "exp 30 s ago, skew 60 s").await;
}

#[tokio::test]
async fn nbf_in_the_future_beyond_the_skew_is_rejected() {
    let f = Fixture::start("clock_skew = \"60s\"\n").await;
    let now = now();
    let token = f.mock.token("ES256", json!({"nbf": now + 300}));
    let description = f.reject(&token, "nbf in 5 min").await;
    assert!(description.contains("nbf"), "{description}");
    // Control: within the skew it passes.
    let token = f
        .mock
        .token("ES256", json!({"sub": "soon", "nbf": now + 20}));
    f.accept(&token, "soon", "nbf in 20 s, skew 60 s").await;
}

#[tokio::test]
async fn iat_in_the_future_beyond_the_skew_is_rejected() {
    let f = Fixture::start("clock_skew = \"60s\"\n").await;
    let now = now();
    let token = f
        .mock
        .token("ES256", json!({"iat": now + 300, "exp": now + 900}));
    let description = f.reject(&token, "iat in 5 min").await;
    assert!(description.contains("iat"), "{description}");
    let token = f
        .mock
        .token("ES256", json!({"sub": "drift", "iat": now + 20}));
    f.accept(&token, "drift", "iat in 20 s, skew 60 s").await;
}

// ---------------------------------------------------------------------------------------------
// iss, aud
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_iss_differing_by_a_trailing_slash_or_suffix_is_rejected() {
    let f = Fixture::start("").await;
    let iss = f.mock.issuer();
    let variants = [
        format!("{iss}/"),
        format!("{iss}/evil"),
        format!("{iss}x"),
        iss.to_uppercase(),
        format!(" {iss}"),
        iss.trim_end_matches(|c: char| c.is_ascii_digit())
            .to_owned(),
    ];
    for variant in variants {
        let token = f.mock.token("ES256", json!({ "iss": variant }));
        let description = f.reject(&token, &format!("iss {variant:?}")).await;
        assert!(description.contains("iss"), "{variant:?}: {description}");
    }
    let token = f.mock.token("ES256", json!({"iss": null}));
    f.reject(&token, "no iss").await;
}

#[tokio::test]
async fn aud_containing_a_configured_audience_is_accepted() {
    let f = Fixture::start("").await;
    let token = f.mock.token("ES256", json!({"sub": "s", "aud": "api"}));
    f.accept(&token, "s", "aud string").await;
    let token = f
        .mock
        .token("ES256", json!({"sub": "a", "aud": ["other", "api"]}));
    f.accept(&token, "a", "aud array").await;
}

#[tokio::test]
async fn aud_not_containing_a_configured_audience_is_rejected() {
    let f = Fixture::start("").await;
    let cases = [
        ("aud other string", json!({"aud": "other"})),
        ("aud array without api", json!({"aud": ["other", "apix"]})),
        ("aud empty array", json!({"aud": []})),
        ("aud missing", json!({"aud": null})),
        ("aud prefix of api", json!({"aud": "ap"})),
    ];
    for (why, claims) in cases {
        let token = f.mock.token("ES256", claims);
        let description = f.reject(&token, why).await;
        assert!(description.contains("aud"), "{why}: {description}");
    }
}

#[tokio::test]
async fn allow_any_audience_accepts_any_aud() {
    let f = Fixture::start("allow_any_audience = true\n").await;
    let token = f
        .mock
        .token("ES256", json!({"sub": "any", "aud": "somebody-else"}));
    f.accept(&token, "any", "aud not configured").await;
}

// ---------------------------------------------------------------------------------------------
// Signature encodings
// ---------------------------------------------------------------------------------------------

/// DER `INTEGER` of an unsigned big-endian number.
fn der_integer(bytes: &[u8]) -> Vec<u8> {
    let mut n = bytes;
    while n.len() > 1 && n[0] == 0 {
        n = &n[1..];
    }
    let mut value = Vec::new();
    if n[0] & 0x80 != 0 {
        value.push(0);
    }
    value.extend_from_slice(n);
    let mut out = vec![0x02, u8::try_from(value.len()).expect("short")];
    out.extend(value);
    out
}

#[tokio::test]
async fn an_es256_signature_in_der_form_is_rejected() {
    let f = Fixture::start("").await;
    let token = f.mock.token("ES256", json!({"sub": "raw"}));
    f.accept(&token, "raw", "raw r||s control").await;
    let (h, p, s) = parts(&token);
    let raw = b64url_decode(&s);
    assert_eq!(raw.len(), 64);
    let mut seq = der_integer(&raw[..32]);
    seq.extend(der_integer(&raw[32..]));
    let mut der = vec![0x30, u8::try_from(seq.len()).expect("short")];
    der.extend(seq);
    let token = format!("{h}.{p}.{}", MockIssuer::b64(der));
    let description = f.reject(&token, "DER-encoded ECDSA signature").await;
    assert!(description.contains("signature"), "{description}");
}

#[tokio::test]
async fn a_psychic_signature_r_s_zero_is_rejected() {
    let f = Fixture::start("").await;
    for (alg, len) in [("ES256", 64), ("ES384", 96)] {
        let token = f.mock.token(alg, json!({}));
        let (h, p, _) = parts(&token);
        let zero = format!("{h}.{p}.{}", MockIssuer::b64(vec![0u8; len]));
        let description = f.reject(&zero, &format!("{alg} r = s = 0")).await;
        assert!(description.contains("signature"), "{alg}: {description}");
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed compact serializations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_compact_serializations_are_401_invalid_token_never_500() {
    let f = Fixture::start("").await;
    let good = f.mock.token("ES256", json!({}));
    let (h, p, s) = parts(&good);
    let b64 = MockIssuer::b64;
    let payload = claims_for(&f.mock, "alice").to_string();
    let signed_with_header = |header: &str| f.mock.sign_raw(header, &payload, "ES256");
    let header_json = json!({"alg": "ES256", "kid": f.mock.kid("ES256")}).to_string();
    let cases: Vec<(&str, String)> = vec![
        ("two parts", format!("{h}.{p}")),
        ("four parts", format!("{h}.{p}.{s}.{s}")),
        ("one part", h.clone()),
        ("empty header", format!(".{p}.{s}")),
        ("empty payload", format!("{h}..{s}")),
        ("empty signature", format!("{h}.{p}.")),
        ("only dots", "..".to_owned()),
        ("trailing dot", format!("{h}.{p}.{s}.")),
        ("padded signature", format!("{h}.{p}.{s}=")),
        ("double-padded signature", format!("{h}.{p}.{s}==")),
        (
            "'+' in the header",
            format!("{}+.{p}.{s}", &h[..h.len() - 1]),
        ),
        (
            "'/' in the payload",
            format!("{h}.{}/.{s}", &p[..p.len() - 1]),
        ),
        ("'~' in the signature", format!("{h}.{p}.~{s}")),
        ("not base64 at all", "not.a~jwt.at+all".to_owned()),
        ("header not JSON", format!("{}.{p}.{s}", b64("not json"))),
        (
            "header a JSON array",
            format!("{}.{p}.{s}", b64(r#"[{"alg":"ES256"}]"#)),
        ),
        (
            "header a JSON string",
            format!("{}.{p}.{s}", b64(r#""ES256""#)),
        ),
        ("header empty JSON object", format!("{}.{p}.{s}", b64("{}"))),
        (
            "header truncated JSON",
            format!("{}.{p}.{s}", b64(r#"{"alg":"ES256""#)),
        ),
        ("payload not JSON", format!("{h}.{}.{s}", b64("hello"))),
        (
            "payload a JSON array",
            format!("{h}.{}.{s}", b64("[1,2,3]")),
        ),
        (
            "signature bytes garbage",
            format!("{h}.{p}.{}", MockIssuer::b64([7u8; 3])),
        ),
        (
            "duplicate alg member",
            signed_with_header(r#"{"alg":"ES256","alg":"none"}"#),
        ),
        (
            "alg not a string",
            signed_with_header(r#"{"alg":["ES256"]}"#),
        ),
        (
            "kid not a string",
            signed_with_header(r#"{"alg":"ES256","kid":7}"#),
        ),
        ("unknown alg", signed_with_header(r#"{"alg":"ES257"}"#)),
        (
            "header with a BOM",
            format!(
                "{}.{p}.{s}",
                MockIssuer::b64(format!("\u{feff}{header_json}"))
            ),
        ),
    ];
    for (why, token) in &cases {
        let before = f.echo.seen().len();
        let answer = f.call(token).await;
        assert_ne!(answer.status, 500, "{why}");
        assert_invalid_token(&answer, token, "tokengate", why);
        assert_eq!(f.echo.seen().len(), before, "{why}");
    }
    // Padding or '=' inside the token breaks RFC 6750 b64token itself: §4.3 makes that 400.
    for (why, token) in [
        ("padded header", format!("{h}=.{p}.{s}")),
        ("padded payload", format!("{h}.{p}==.{s}")),
    ] {
        let answer = f.call(&token).await;
        assert_eq!(answer.status, 400, "{why}: {}", body(&answer));
        assert_eq!(answer.json()["error"], "invalid_request", "{why}");
        assert_token_absent(&answer, &token, why);
    }
    // Control: the untouched token passes.
    f.accept(&good, "alice", "the original").await;
}

// ---------------------------------------------------------------------------------------------
// JWKS key rules (SPEC §3 "Keys:")
// ---------------------------------------------------------------------------------------------

/// The mock's JWKS with `change` applied to the key whose `kid` is `kid`.
fn jwks_with(mock: &MockIssuer, kid: &str, change: impl FnOnce(&mut Value)) -> String {
    let mut jwks = mock.jwks();
    let key = jwks["keys"]
        .as_array_mut()
        .and_then(|keys| keys.iter_mut().find(|k| k["kid"] == kid))
        .expect("key");
    change(key);
    jwks.to_string()
}

#[tokio::test]
async fn a_jwk_whose_use_is_not_sig_is_never_used() {
    let mock = MockIssuer::start().await;
    let body = jwks_with(&mock, &mock.kid("ES256"), |k| k["use"] = json!("enc"));
    mock.set_jwks_mode(support::issuer::JwksMode::Body(body));
    let f = Fixture::with_mock(mock, "").await;
    let token = f.mock.token("ES256", json!({}));
    f.reject(&token, "ES256 key published with use = enc").await;
    let token = f
        .mock
        .token_with_header("ES256", json!({"kid": null}), json!({}));
    f.reject(&token, "kid-less ES256, the only P-256 key is enc")
        .await;
    // The other keys of the set still serve.
    let token = f.mock.token("ES384", json!({"sub": "p384"}));
    f.accept(&token, "p384", "ES384 key (use = sig)").await;
}

#[tokio::test]
async fn a_jwk_without_use_is_used() {
    let mock = MockIssuer::start().await;
    let body = jwks_with(&mock, &mock.kid("EdDSA"), |k| {
        k.as_object_mut().expect("object").remove("use");
    });
    mock.set_jwks_mode(support::issuer::JwksMode::Body(body));
    let f = Fixture::with_mock(mock, "").await;
    let token = f.mock.token("EdDSA", json!({"sub": "ed"}));
    f.accept(&token, "ed", "Ed25519 key without use").await;
}

#[tokio::test]
async fn a_jwk_alg_must_equal_the_token_alg() {
    let mock = MockIssuer::start().await;
    let body = jwks_with(&mock, &mock.kid("RS256"), |k| k["alg"] = json!("RS256"));
    mock.set_jwks_mode(support::issuer::JwksMode::Body(body));
    let f = Fixture::with_mock(mock, "").await;
    let token = f.mock.token("RS256", json!({"sub": "rs"}));
    f.accept(&token, "rs", "RS256 with an RS256 key").await;
    for alg in ["PS256", "RS384", "RS512", "PS512"] {
        let token = f.mock.token(alg, json!({}));
        f.reject(&token, &format!("{alg} with a key restricted to RS256"))
            .await;
    }
}

#[tokio::test]
async fn a_token_without_kid_is_tried_against_each_key_fitting_its_alg() {
    let f = Fixture::start("").await;
    for alg in ["RS256", "PS384", "ES256", "ES384", "EdDSA"] {
        let sub = format!("nokid-{alg}");
        let token = f
            .mock
            .token_with_header(alg, json!({"kid": null}), json!({ "sub": sub }));
        f.accept(&token, &sub, &format!("{alg} without kid")).await;
    }
}

// ---------------------------------------------------------------------------------------------
// alg spelling, claim types
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn alg_names_are_case_sensitive_and_never_echoed_raw() {
    let f = Fixture::start("").await;
    let payload = claims_for(&f.mock, "alice").to_string();
    let kid = f.mock.kid("ES256");
    let names = [
        "es256",
        "Es256",
        "ES256 ",
        "ES-256",
        "ES256\", error=\"none",
        "ES256\r\nX-Injected: 1",
        "A-very-long-algorithm-name-that-goes-on",
    ];
    for name in names {
        let header = json!({"alg": name, "kid": kid}).to_string();
        let token = f.mock.sign_raw(&header, &payload, "ES256");
        let description = f.reject(&token, &format!("alg {name:?}")).await;
        assert!(
            !description.contains('"') && !description.contains('\r'),
            "{name:?}: {description}"
        );
    }
}

#[tokio::test]
async fn numeric_dates_may_be_fractional_and_must_be_numbers() {
    let f = Fixture::start("").await;
    let now = now();
    // RFC 7519 §2: a NumericDate may be non-integer.
    let exp = serde_json::Number::from_f64(now as f64 + 300.5).expect("finite");
    let token = f.mock.token(
        "ES256",
        json!({"sub": "frac", "exp": exp, "iat": now as f64 + 0.25}),
    );
    f.accept(&token, "frac", "fractional exp and iat").await;
    let cases = [
        ("exp as a string", json!({"exp": (now + 300).to_string()})),
        ("exp as a boolean", json!({"exp": true})),
        ("exp as an object", json!({"exp": {"at": now + 300}})),
        ("exp far in the past", json!({"exp": -1e300})),
        ("nbf as a string", json!({"nbf": now.to_string()})),
        ("iat as a string", json!({"iat": now.to_string()})),
        ("iss not a string", json!({"iss": ["x"]})),
        ("aud a number", json!({"aud": 1})),
    ];
    for (why, claims) in cases {
        let token = f.mock.token("ES256", claims);
        f.reject(&token, why).await;
    }
    // Far-future values are just far-future, not an overflow into the past or a 500.
    let token = f.mock.token("ES256", json!({"sub": "far", "exp": 1e300}));
    let answer = f.call(&token).await;
    assert!(
        answer.status == 200 || answer.status == 401,
        "exp 1e300: {} {}",
        answer.status,
        body(&answer)
    );
}
