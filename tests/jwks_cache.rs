//! The per-issuer key cache against the mock issuer (SPEC §3 "Keys:" and "Issuers:", §7
//! `/readyz`): discovery, the unknown-`kid` refresh limit, stale keys on failure, recovery of an
//! issuer that was down at start, refused discovery documents, and the fetch helpers' error
//! classes. Real time, with `jwks_min_refresh` = 1 s; a current-thread test that only waits for
//! that interval to pass jumps tokio's clock instead ([`pass`]), and none sleeps to wait for a
//! load attempt to end ([`first_error`]).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use josekit::jwk::Jwk;
use serde_json::{json, Value};
use tokio::sync::watch;

use support::issuer::{JwksMode, MockIssuer};
use tokengate::config::Issuer;
use tokengate::telemetry::trace::CallKind;
use tokengate::token::fetch::{self, FetchErrorKind, MAX_DOCUMENT_BYTES};
use tokengate::token::jwks::{IssuerKeys, DISCOVERY_PATH};

/// The key state with its background task; the task stops when this is dropped.
struct Running {
    keys: Arc<IssuerKeys>,
    _stop: watch::Sender<bool>,
}

fn start(config: Issuer) -> Running {
    let keys = IssuerKeys::new(config).expect("issuer keys");
    let (stop, rx) = watch::channel(false);
    tokio::spawn(keys.clone().run(rx));
    Running { keys, _stop: stop }
}

async fn ready_within(keys: &IssuerKeys, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if keys.is_ready() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    keys.is_ready()
}

/// Moves tokio's clock (the one `jwks_min_refresh` is measured on) `by` forward at once. It is
/// paused only for the jump: a fetch on a paused clock could time out spuriously, because an idle
/// runtime jumps ahead to its next timer while a socket is pending. Current-thread runtime only.
async fn pass(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// The error of the first load attempt, once it has ended (bounded: 5 s).
async fn first_error(keys: &IssuerKeys) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(error) = keys.last_error() {
            return error;
        }
        assert!(
            Instant::now() < deadline,
            "no load attempt ended within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const ALGS: [&str; 5] = ["RS256", "PS256", "ES256", "ES384", "EdDSA"];

#[tokio::test]
async fn discovery_then_jwks_makes_the_issuer_ready_with_every_key() {
    let mock = MockIssuer::start().await;
    let run = start(mock.settings());
    assert!(ready_within(&run.keys, Duration::from_secs(5)).await);
    let set = run.keys.keys().expect("keys");
    for alg in ALGS {
        assert!(set.has_kid(&mock.kid(alg)), "{alg}");
    }
    let url = mock.url();
    assert_eq!(
        run.keys.userinfo_endpoint(),
        Some(format!("{url}/userinfo"))
    );
    assert_eq!(
        run.keys.introspection_endpoint(),
        Some(format!("{url}/introspect"))
    );
    assert_eq!((mock.hits(DISCOVERY_PATH), mock.hits("/jwks")), (1, 1));
    assert_eq!(run.keys.refresh_counts(), (1, 0));
    assert_eq!(run.keys.last_error(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_min_refresh() {
    let mock = MockIssuer::start().await;
    let run = start(mock.settings());
    assert!(ready_within(&run.keys, Duration::from_secs(5)).await);
    mock.rotate();
    let new_kid = mock.kid("ES256");
    let flood = |keys: Arc<IssuerKeys>| async move {
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                tokio::spawn({
                    let keys = keys.clone();
                    async move { keys.refresh_for_unknown_kid().await }
                })
            })
            .collect();
        let mut refreshed = Vec::new();
        for task in tasks {
            refreshed.extend(task.await.expect("task"));
        }
        refreshed
    };
    // The first load does not count: the first flood may refresh at once, exactly once.
    let refreshed = flood(run.keys.clone()).await;
    assert_eq!(
        refreshed.len(),
        1,
        "one request refreshed, the others returned None at once"
    );
    assert!(refreshed[0].has_kid(&new_kid));
    assert!(run.keys.keys().expect("keys").has_kid(&new_kid));
    assert_eq!(mock.hits("/jwks"), 2);
    // Within jwks_min_refresh of that refresh: nothing more is fetched.
    assert!(flood(run.keys.clone()).await.is_empty());
    assert_eq!(mock.hits("/jwks"), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(flood(run.keys.clone()).await.len(), 1);
    assert_eq!(mock.hits("/jwks"), 3);
    assert_eq!(
        mock.hits(DISCOVERY_PATH),
        1,
        "unknown kids refresh the JWKS only"
    );
}

#[tokio::test]
async fn a_failing_jwks_endpoint_keeps_the_last_good_set() {
    let mock = MockIssuer::start().await;
    let run = start(mock.settings());
    assert!(ready_within(&run.keys, Duration::from_secs(5)).await);
    let good = run.keys.keys().expect("keys");
    let old_kid = mock.kid("RS256");
    mock.rotate();
    let modes = [
        (JwksMode::Status(500), "500"),
        (JwksMode::Garbage, "JWKS refused"),
        (JwksMode::Hang(Duration::from_secs(3)), "timed out"),
        (
            JwksMode::Body("x".repeat(MAX_DOCUMENT_BYTES + 1)),
            "too large",
        ),
    ];
    for (i, (mode, why)) in modes.into_iter().enumerate() {
        if i > 0 {
            pass(Duration::from_millis(1050)).await;
        }
        mock.set_jwks_mode(mode);
        let started = Instant::now();
        assert!(run.keys.refresh_for_unknown_kid().await.is_none(), "{why}");
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "fetch_timeout bounds it"
        );
        let kept = run.keys.keys().expect("stale keys kept");
        assert!(Arc::ptr_eq(&kept, &good) && kept.has_kid(&old_kid), "{why}");
        assert!(run.keys.is_ready());
        let error = run.keys.last_error().unwrap_or_default();
        assert!(error.contains(why), "{why}: {error}");
        assert_eq!(run.keys.refresh_counts(), (1, i as u64 + 1));
    }
    pass(Duration::from_millis(1050)).await;
    mock.set_jwks_mode(JwksMode::Normal);
    let fresh = run.keys.refresh_for_unknown_kid().await.expect("refreshed");
    assert!(fresh.has_kid(&mock.kid("RS256")) && !fresh.has_kid(&old_kid));
    assert_eq!(run.keys.last_error(), None);
}

#[tokio::test]
async fn an_issuer_down_at_start_becomes_ready_once_it_comes_up() {
    let mock = MockIssuer::start().await;
    mock.set_down(true);
    let run = start(mock.settings());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!run.keys.is_ready());
    assert!(run.keys.keys().is_none());
    assert!(run.keys.refresh_for_unknown_kid().await.is_none());
    // Retried with backoff capped at jwks_min_refresh (1 s): attempts at 0 s and 1 s.
    let attempts = mock.hits(DISCOVERY_PATH);
    assert!((2..=3).contains(&attempts), "{attempts} attempts in 1.5 s");
    assert!(run.keys.last_error().unwrap_or_default().contains("503"));
    mock.set_down(false);
    assert!(ready_within(&run.keys, Duration::from_secs(3)).await);
    let (ok, errors) = run.keys.refresh_counts();
    assert_eq!(ok, 1);
    assert!(errors >= 2);
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_leaves_the_issuer_unready() {
    let mock = MockIssuer::start().await;
    mock.set_discovery_issuer(Some("https://evil.example.com"));
    let run = start(mock.settings());
    let error = first_error(&run.keys).await;
    assert!(!run.keys.is_ready());
    let expected = format!(
        "issuer mismatch: configured \"{}\", discovery says \"https://evil.example.com\"",
        mock.issuer()
    );
    assert_eq!(error, expected);
    assert_eq!(
        mock.hits("/jwks"),
        0,
        "keys named by a mismatching document are never fetched"
    );
}

#[tokio::test]
async fn the_issuer_must_match_discovery_to_the_trailing_slash() {
    let mock = MockIssuer::start().await;
    let with_slash = format!("{}/", mock.url());
    mock.configure(|s| s.issuer = with_slash);
    let run = start(mock.settings());
    assert!(ready_within(&run.keys, Duration::from_secs(5)).await);
    assert_eq!(
        mock.hits(DISCOVERY_PATH),
        1,
        "asked without the trailing '/'"
    );

    let mut config = mock.settings();
    config.issuer = mock.url();
    let run = start(config);
    let error = first_error(&run.keys).await;
    assert!(!run.keys.is_ready());
    assert!(error.starts_with("issuer mismatch"), "{error}");
}

#[tokio::test]
async fn a_discovered_plain_http_jwks_uri_on_a_public_host_is_refused() {
    let mock = MockIssuer::start().await;
    mock.configure(|s| {
        let jwks_uri = json!("http://idp.example.com/jwks");
        s.discovery_members.insert("jwks_uri".to_owned(), jwks_uri);
    });
    let run = start(mock.settings());
    let error = first_error(&run.keys).await;
    assert!(!run.keys.is_ready());
    assert!(
        error.contains("jwks_uri") && error.contains("must use https"),
        "{error}"
    );
    assert_eq!(mock.hits("/jwks"), 0);
}

#[tokio::test]
async fn a_configured_jwks_uri_skips_discovery() {
    let mock = MockIssuer::start().await;
    let mut config = mock.settings();
    config.jwks_uri = Some(format!("{}/jwks", mock.url()));
    let run = start(config);
    assert!(ready_within(&run.keys, Duration::from_secs(5)).await);
    assert_eq!(mock.hits(DISCOVERY_PATH), 0);
    assert_eq!(
        run.keys.userinfo_endpoint(),
        None,
        "no discovery, so only configured endpoints"
    );
}

#[tokio::test]
async fn the_periodic_refresh_picks_up_rotated_keys() {
    let mock = MockIssuer::start().await;
    let mut config = mock.settings();
    config.jwks_refresh = Duration::from_secs(1);
    let run = start(config);
    assert!(ready_within(&run.keys, Duration::from_secs(5)).await);
    mock.rotate();
    let kid = mock.kid("EdDSA");
    let deadline = Instant::now() + Duration::from_secs(4);
    while !run.keys.keys().is_some_and(|k| k.has_kid(&kid)) {
        assert!(Instant::now() < deadline, "rotation not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        mock.hits(DISCOVERY_PATH) >= 2,
        "each periodic refresh repeats discovery"
    );
}

#[tokio::test]
async fn fetch_errors_are_classified_and_bodies_capped() {
    let mock = MockIssuer::start().await;
    let client = fetch::issuer_client(&mock.settings()).expect("client");
    let jwks = format!("{}/jwks", mock.url());
    let doc = fetch::get_json(&client, &jwks, MAX_DOCUMENT_BYTES, CallKind::Jwks)
        .await
        .expect("jwks");
    assert_eq!(doc["keys"].as_array().map(Vec::len), Some(4));
    let kind = |r: Result<Value, fetch::FetchError>| r.expect_err("must fail").kind;
    assert_eq!(
        kind(fetch::get_json(&client, &jwks, 100, CallKind::Jwks).await),
        FetchErrorKind::TooLarge
    );
    mock.set_jwks_mode(JwksMode::Garbage);
    assert_eq!(
        kind(fetch::get_json(&client, &jwks, 1000, CallKind::Jwks).await),
        FetchErrorKind::NotJson
    );
    mock.set_jwks_mode(JwksMode::Status(500));
    assert_eq!(
        kind(fetch::get_json(&client, &jwks, 1000, CallKind::Jwks).await),
        FetchErrorKind::Status(500)
    );
    mock.set_jwks_mode(JwksMode::Hang(Duration::from_secs(3)));
    assert_eq!(
        kind(fetch::get_json(&client, &jwks, 1000, CallKind::Jwks).await),
        FetchErrorKind::Timeout
    );
    let missing = format!("{}/nothing?secret=hunter2", mock.url());
    let err = fetch::get_json(&client, &missing, 1000, CallKind::Jwks)
        .await
        .expect_err("404");
    assert_eq!(err.kind, FetchErrorKind::Status(404));
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let closed_url = format!("http://{}/jwks", closed.local_addr().expect("addr"));
    drop(closed);
    assert_eq!(
        kind(fetch::get_json(&client, &closed_url, 1000, CallKind::Jwks).await),
        FetchErrorKind::Connect
    );
}

/// The mock's own contract: its tokens verify with its published JWKS (and HS* with its secret).
#[tokio::test]
async fn mock_tokens_verify_against_the_published_keys() {
    let mock = MockIssuer::start().await;
    let jwks = mock.jwks();
    for alg in [
        "RS256", "RS384", "PS256", "PS512", "ES256", "ES384", "EdDSA",
    ] {
        let token = mock.token(alg, json!({"scope": "read"}));
        let kid = mock.kid(alg);
        let jwk = jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
            .and_then(|k| Jwk::from_map(k.as_object().cloned()?).ok())
            .expect("published key");
        let verifier: Box<dyn josekit::jws::JwsVerifier> = match alg {
            "RS256" => Box::new(josekit::jws::RS256.verifier_from_jwk(&jwk).expect("v")),
            "RS384" => Box::new(josekit::jws::RS384.verifier_from_jwk(&jwk).expect("v")),
            "PS256" => Box::new(josekit::jws::PS256.verifier_from_jwk(&jwk).expect("v")),
            "PS512" => Box::new(josekit::jws::PS512.verifier_from_jwk(&jwk).expect("v")),
            "ES256" => Box::new(josekit::jws::ES256.verifier_from_jwk(&jwk).expect("v")),
            "ES384" => Box::new(josekit::jws::ES384.verifier_from_jwk(&jwk).expect("v")),
            _ => Box::new(josekit::jws::EdDSA.verifier_from_jwk(&jwk).expect("v")),
        };
        let (payload, header) = josekit::jwt::decode_with_verifier(&token, &*verifier).expect(alg);
        assert_eq!(header.key_id(), Some(kid.as_str()));
        assert_eq!(header.token_type(), Some("JWT"));
        assert_eq!(payload.issuer(), Some(mock.issuer().as_str()));
        assert_eq!(payload.subject(), Some("alice"));
        assert_eq!(payload.claim("aud"), Some(&json!("api")));
        assert_eq!(payload.claim("scope"), Some(&json!("read")));
        assert!(payload.expires_at().is_some());
    }
    let token = mock.token("HS256", json!({"exp": null, "sub": "bob"}));
    let verifier = josekit::jws::HS256
        .verifier_from_bytes(mock.hmac_secret())
        .expect("v");
    let (payload, _) = josekit::jwt::decode_with_verifier(&token, &verifier).expect("HS256");
    assert_eq!(
        (payload.subject(), payload.expires_at()),
        (Some("bob"), None)
    );
    assert!(mock.token("none", json!({})).ends_with('.'));
}

#[tokio::test]
async fn config_toml_gives_a_loadable_issuer_that_becomes_ready() {
    let mock = MockIssuer::start().await;
    let upstream = "127.0.0.1:9".parse().expect("addr");
    let text = support::config(upstream, &mock.config_toml("corp", &["api", "other"]));
    let loaded = tokengate::config::load_str(Path::new("test.toml"), &text, &|_| None)
        .unwrap_or_else(|problems| panic!("{}", problems.len()));
    let issuer = loaded.config.issuers.into_iter().next().expect("issuer");
    assert_eq!((issuer.id.as_str(), issuer.audiences.len()), ("corp", 2));
    assert_eq!(issuer.jwks_min_refresh, Duration::from_secs(1));
    let run = start(issuer);
    assert!(ready_within(&run.keys, Duration::from_secs(5)).await);
}

/// The mock's userinfo and introspection endpoints, as other test files will use them.
#[tokio::test]
async fn mock_userinfo_and_introspection_answer_as_configured() {
    let mock = MockIssuer::start().await;
    let http = reqwest::Client::new();
    let userinfo = format!("{}/userinfo", mock.url());
    let ask = |token: &str| http.get(&userinfo).bearer_auth(token).send();
    let token = mock.token("ES256", json!({"sub": "carol"}));
    let answer: Value = ask(&token).await.expect("send").json().await.expect("json");
    assert_eq!(answer["sub"], "carol");
    mock.configure(|s| {
        s.userinfo
            .insert(token.clone(), json!({"sub": "carol", "groups": ["a"]}));
        s.revoked.insert("revoked".to_owned());
    });
    let answer: Value = ask(&token).await.expect("send").json().await.expect("json");
    assert_eq!(answer["groups"], json!(["a"]));
    assert_eq!(ask("revoked").await.expect("send").status(), 401);
    mock.configure(|s| s.userinfo_signed_alg = Some("EdDSA".to_owned()));
    let signed = ask(&token).await.expect("send");
    assert_eq!(signed.headers()["content-type"], "application/jwt");
    assert_eq!(signed.text().await.expect("body").split('.').count(), 3);
    assert_eq!(mock.hits("/userinfo"), 4);

    let introspect = format!("{}/introspect", mock.url());
    mock.configure(|s| {
        let answer = json!({"active": true, "sub": "svc"});
        s.introspection.insert("opaque+/=".to_owned(), answer);
    });
    let (id, secret) = support::issuer::INTROSPECTION_CLIENT;
    let post = |secret: &'static str, token: &'static str| {
        let form = [("token", token)];
        http.post(&introspect)
            .basic_auth(id, Some(secret))
            .form(&form)
            .send()
    };
    let active: Value = post(secret, "opaque+/=")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(active["sub"], "svc");
    let inactive: Value = post(secret, "other")
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(inactive, json!({"active": false}));
    assert_eq!(
        post("wrong", "opaque+/=").await.expect("send").status(),
        401
    );
}
