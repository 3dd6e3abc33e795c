//! The enrichment phase against the mock issuer (SPEC §4.5, §7 userinfo counters): single-flight,
//! cache lifetimes (`cache_ttl`, `userinfo_max_age`, token `exp`), stale entries never served,
//! remembered 401s and their expiry, subject mismatch, signed answers, failures under both
//! `on_error` modes, the `max_entries` bound and the background purge.
//!
//! Lifetimes are crossed by jumping tokio's clock ([`pass`]), never by sleeping; the calls to the
//! mock issuer run on real time, with bounded waits. No assertion depends on how fast anything
//! runs beyond "a call to the mock on loopback takes less than a second".
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use support::issuer::MockIssuer;
use tokengate::config::{self, Issuer, OnError};
use tokengate::rejection::Rejection;
use tokengate::token::claims::Claims;
use tokengate::token::jwks::IssuerKeys;
use tokengate::token::jwt;
use tokengate::userinfo::{
    Outcome, TokenRef, Userinfo, UserinfoCounters, NEGATIVE_TTL, REJECTED_DESCRIPTION,
};

const USERINFO: &str = "/userinfo";
const LONG: Duration = Duration::from_secs(300);

/// An issuer's key state, loaded, with its background task (stopped when this is dropped).
struct Env {
    mock: MockIssuer,
    keys: Arc<IssuerKeys>,
    _stop: watch::Sender<bool>,
}

async fn env() -> Env {
    let mock = MockIssuer::start().await;
    let config = mock.settings();
    env_with(mock, config).await
}

async fn env_with(mock: MockIssuer, config: Issuer) -> Env {
    let keys = IssuerKeys::new(config).expect("issuer keys");
    let (stop, rx) = watch::channel(false);
    tokio::spawn(keys.clone().run(rx));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !keys.is_ready() {
        assert!(Instant::now() < deadline, "issuer not ready in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Env {
        mock,
        keys,
        _stop: stop,
    }
}

fn settings(on_error: OnError) -> config::Userinfo {
    config::Userinfo {
        cache_ttl: LONG,
        max_entries: 1000,
        timeout: Duration::from_secs(2),
        on_error,
    }
}

fn now_unix() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    i64::try_from(secs).expect("time")
}

/// Moves tokio's clock (the one the userinfo cache reads) `by` forward at once. It is paused only
/// for the jump: a call to the mock issuer (real sockets) on a paused clock could time out
/// spuriously, because an idle runtime jumps ahead to its next timer while a socket is pending.
/// Needs the current-thread runtime (`#[tokio::test]`'s default).
async fn pass(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// A token as the gateway holds it after verification: raw text, claims, `exp`.
struct Token {
    raw: String,
    claims: Claims,
    exp: i64,
}

fn token(env: &Env, claims: Value) -> Token {
    let raw = env.mock.token("ES256", claims);
    let claims = jwt::parse(&raw).expect("parse").unverified_claims().clone();
    let exp = claims["exp"].as_i64().expect("exp");
    Token { raw, claims, exp }
}

fn alice(env: &Env) -> Token {
    token(env, json!({"sub": "alice"}))
}

async fn enrich(
    ui: &Userinfo,
    env: &Env,
    token: &Token,
    max_age: Option<Duration>,
) -> Result<Outcome, Rejection> {
    enrich_at(ui, 0, &env.keys, token, token.exp, now_unix(), max_age).await
}

/// [`enrich`] with the issuer index, the token's `exp` and the unix time given.
async fn enrich_at(
    ui: &Userinfo,
    issuer_index: usize,
    keys: &Arc<IssuerKeys>,
    token: &Token,
    token_exp: i64,
    now_unix: i64,
    max_age: Option<Duration>,
) -> Result<Outcome, Rejection> {
    let sha256: [u8; 32] = Sha256::digest(token.raw.as_bytes()).into();
    let token = TokenRef {
        raw: &token.raw,
        sha256: &sha256,
        issuer: issuer_index,
        claims: &token.claims,
        exp: token_exp,
    };
    let call = ui.enrich(token, keys, max_age, false, now_unix);
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("enrich returns within 10 s")
}

#[track_caller]
fn enriched(outcome: Result<Outcome, Rejection>) -> Arc<Claims> {
    match outcome {
        Ok(Outcome::Enriched { claims, .. }) => claims,
        other => panic!("expected enriched claims, got {other:?}"),
    }
}

#[track_caller]
fn refused_as_rejected_by_userinfo(outcome: Result<Outcome, Rejection>) {
    match outcome {
        Err(rejection @ Rejection::InvalidToken { .. }) => {
            assert_eq!(rejection.status(), 401);
            assert_eq!(rejection.reason().as_str(), "userinfo_rejected");
            let Rejection::InvalidToken { description, .. } = rejection else {
                unreachable!()
            };
            assert_eq!(description, REJECTED_DESCRIPTION);
        }
        other => panic!("expected 401, got {other:?}"),
    }
}

#[track_caller]
fn unavailable(outcome: Result<Outcome, Rejection>) {
    match outcome {
        Err(rejection @ Rejection::Unavailable { .. }) => {
            assert_eq!(rejection.status(), 503);
            let response = rejection.into_response("tokengate");
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503, got {other:?}"),
    }
}

#[track_caller]
fn skipped(outcome: Result<Outcome, Rejection>, reason: &str) {
    match outcome {
        Ok(Outcome::Skipped(why)) => assert_eq!(why.as_str(), reason),
        other => panic!("expected Skipped({reason}), got {other:?}"),
    }
}

/// A tiny HTTP/1.1 server that answers every request with one response (changeable with
/// [`Fixed::set`]) and counts them.
struct Fixed {
    url: String,
    hits: Arc<AtomicUsize>,
    response: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fixed(status: u16, content_type: &str, body: &str) -> Fixed {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/userinfo", listener.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let response = Arc::new(Mutex::new(String::new()));
    let (counter, current) = (hits.clone(), response.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let response = current.lock().expect("lock").clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    let server = Fixed {
        url,
        hits,
        response,
        task,
    };
    server.set(status, content_type, body);
    server
}

impl Fixed {
    fn set(&self, status: u16, content_type: &str, body: &str) {
        *self.response.lock().expect("lock") = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The mock's issuer, with its userinfo endpoint replaced by `url`.
async fn env_with_endpoint(url: &str) -> Env {
    let mock = MockIssuer::start().await;
    let config = Issuer {
        userinfo_endpoint: Some(url.to_owned()),
        ..mock.settings()
    };
    env_with(mock, config).await
}

// --- single-flight ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_for_one_uncached_token_make_one_call() {
    let env = env().await;
    env.mock
        .configure(|s| s.userinfo_delay = Duration::from_millis(300));
    let ui = Userinfo::new(&settings(OnError::Deny));
    let env = Arc::new(env);
    let token = Arc::new(alice(&env));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (ui, env, token) = (ui.clone(), env.clone(), token.clone());
            tokio::spawn(async move { enrich(&ui, &env, &token, None).await })
        })
        .collect();
    for task in tasks {
        let claims = enriched(task.await.expect("task"));
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["sub"], "alice");
    }
    assert_eq!(env.mock.hits(USERINFO), 1);
    let c = ui.counters();
    assert_eq!((c.misses, c.ok, c.error), (1, 1, 0));
    assert_eq!(c.coalesced + c.hits, 49, "{c:?}");
    // And the answer is now cached.
    enriched(enrich(&ui, &env, &token, None).await);
    assert_eq!(env.mock.hits(USERINFO), 1);
    assert_eq!(ui.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_hangs_up_does_not_fail_the_waiters() {
    let env = Arc::new(env().await);
    env.mock
        .configure(|s| s.userinfo_delay = Duration::from_millis(500));
    let ui = Userinfo::new(&settings(OnError::Deny));
    let token = Arc::new(alice(&env));
    let leader = tokio::spawn({
        let (ui, env, token) = (ui.clone(), env.clone(), token.clone());
        async move { enrich(&ui, &env, &token, None).await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.mock.hits(USERINFO) == 0 {
        assert!(Instant::now() < deadline, "the leader never called");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let (ui, env, token) = (ui.clone(), env.clone(), token.clone());
            tokio::spawn(async move { enrich(&ui, &env, &token, None).await })
        })
        .collect();
    leader.abort();
    for waiter in waiters {
        enriched(waiter.await.expect("waiter"));
    }
    assert_eq!(env.mock.hits(USERINFO), 1);
    assert_eq!(ui.len(), 1, "the leader's call was cached all the same");
}

// --- lifetimes ---------------------------------------------------------------------------------

#[tokio::test]
async fn answers_are_served_from_the_cache_until_the_route_max_age() {
    let env = env().await;
    let ui = Userinfo::new(&settings(OnError::Deny));
    let token = alice(&env);
    enriched(enrich(&ui, &env, &token, None).await);
    enriched(enrich(&ui, &env, &token, None).await);
    enriched(enrich(&ui, &env, &token, Some(Duration::from_secs(60))).await);
    assert_eq!(env.mock.hits(USERINFO), 1);
    assert_eq!(
        ui.counters(),
        UserinfoCounters {
            hits: 2,
            misses: 1,
            ok: 1,
            ..UserinfoCounters::default()
        }
    );
    // Once older than a route's userinfo_max_age, that route asks again ...
    pass(Duration::from_secs(2)).await;
    enriched(enrich(&ui, &env, &token, Some(Duration::from_secs(1))).await);
    assert_eq!(env.mock.hits(USERINFO), 2);
    // ... and the fresh answer serves everyone.
    enriched(enrich(&ui, &env, &token, Some(Duration::from_secs(1))).await);
    enriched(enrich(&ui, &env, &token, None).await);
    assert_eq!(env.mock.hits(USERINFO), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_age_zero_always_asks_but_concurrent_requests_share_the_call() {
    let env = Arc::new(env().await);
    let ui = Userinfo::new(&settings(OnError::Deny));
    let token = Arc::new(alice(&env));
    for expected in 1..=3 {
        enriched(enrich(&ui, &env, &token, Some(Duration::ZERO)).await);
        assert_eq!(env.mock.hits(USERINFO), expected);
    }
    env.mock
        .configure(|s| s.userinfo_delay = Duration::from_millis(300));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (ui, env, token) = (ui.clone(), env.clone(), token.clone());
            tokio::spawn(async move { enrich(&ui, &env, &token, Some(Duration::ZERO)).await })
        })
        .collect();
    for task in tasks {
        enriched(task.await.expect("task"));
    }
    assert_eq!(env.mock.hits(USERINFO), 4);
}

#[tokio::test]
async fn an_entry_never_outlives_the_token() {
    let env = env().await;
    let ui = Userinfo::new(&settings(OnError::Deny));
    let token = alice(&env);
    // exp 42 s from now: the entry lives 42 s, whatever cache_ttl says. The unix time given to
    // each call moves with tokio's clock.
    let now = now_unix();
    let exp = now + 42;
    enriched(enrich_at(&ui, 0, &env.keys, &token, exp, now, None).await);
    pass(Duration::from_secs(40)).await;
    enriched(enrich_at(&ui, 0, &env.keys, &token, exp, now + 40, None).await);
    assert_eq!(env.mock.hits(USERINFO), 1);
    pass(Duration::from_secs(2)).await;
    enriched(enrich_at(&ui, 0, &env.keys, &token, exp, now + 42, None).await);
    assert_eq!(env.mock.hits(USERINFO), 2);
    // A token at (or within clock skew past) its exp is never cached at all.
    for (expected, at) in [(3, exp), (4, exp + 5)] {
        enriched(enrich_at(&ui, 0, &env.keys, &token, exp, at, None).await);
        assert_eq!(env.mock.hits(USERINFO), expected);
    }
    assert_eq!(ui.len(), 0);
}

#[tokio::test]
async fn a_cached_entry_outlives_an_issuer_outage_only_until_its_lifetime_ends() {
    let env = env().await;
    let short = |on_error| config::Userinfo {
        cache_ttl: Duration::from_secs(1),
        ..settings(on_error)
    };
    let deny = Userinfo::new(&short(OnError::Deny));
    let proceed = Userinfo::new(&short(OnError::Proceed));
    let token = alice(&env);
    enriched(enrich(&deny, &env, &token, None).await);
    enriched(enrich(&proceed, &env, &token, None).await);
    assert_eq!(env.mock.hits(USERINFO), 2);
    env.mock.set_down(true);
    enriched(enrich(&deny, &env, &token, None).await);
    enriched(enrich(&proceed, &env, &token, None).await);
    assert_eq!(env.mock.hits(USERINFO), 2, "served from the cache");
    pass(Duration::from_secs(2)).await;
    unavailable(enrich(&deny, &env, &token, None).await);
    skipped(
        enrich(&proceed, &env, &token, None).await,
        "userinfo_unavailable",
    );
    assert_eq!(env.mock.hits(USERINFO), 4);
    // Failures are not cached: each request asks again (and recovers with the issuer).
    unavailable(enrich(&deny, &env, &token, None).await);
    assert_eq!(env.mock.hits(USERINFO), 5);
    env.mock.set_down(false);
    enriched(enrich(&deny, &env, &token, None).await);
    assert_eq!(deny.counters().error, 2);
}

// --- rejections ------------------------------------------------------------------------------

#[tokio::test]
async fn a_401_is_remembered_for_ten_seconds_and_then_asked_again() {
    assert_eq!(NEGATIVE_TTL, Duration::from_secs(10), "SPEC §4.5");
    let env = env().await;
    let ui = Userinfo::new(&settings(OnError::Proceed));
    let revoked = alice(&env);
    env.mock.configure(|s| {
        s.revoked.insert(revoked.raw.clone());
    });
    // Remembered even on a route that never serves answers from the cache.
    for _ in 0..3 {
        refused_as_rejected_by_userinfo(enrich(&ui, &env, &revoked, Some(Duration::ZERO)).await);
    }
    assert_eq!(env.mock.hits(USERINFO), 1, "the 401 was remembered");
    let c = ui.counters();
    assert_eq!((c.misses, c.hits, c.unauthorized), (1, 2, 1));
    // Another token of the same user is not affected.
    let other = token(&env, json!({"sub": "alice", "jti": "second"}));
    enriched(enrich(&ui, &env, &other, None).await);
    assert_eq!(env.mock.hits(USERINFO), 2);
    // Still remembered 8 s after the call (2 s of slack for the call itself) ...
    pass(Duration::from_secs(8)).await;
    refused_as_rejected_by_userinfo(enrich(&ui, &env, &revoked, None).await);
    assert_eq!(env.mock.hits(USERINFO), 2);
    // ... forgotten in the eleventh second: the endpoint is asked again (and remembered again).
    pass(Duration::from_secs(3)).await;
    refused_as_rejected_by_userinfo(enrich(&ui, &env, &revoked, None).await);
    assert_eq!(
        env.mock.hits(USERINFO),
        3,
        "the 401 expired after NEGATIVE_TTL"
    );
    refused_as_rejected_by_userinfo(enrich(&ui, &env, &revoked, None).await);
    assert_eq!(env.mock.hits(USERINFO), 3);
    let c = ui.counters();
    assert_eq!((c.misses, c.hits, c.unauthorized), (3, 4, 2));
}

#[tokio::test]
async fn a_userinfo_subject_other_than_the_tokens_is_refused() {
    let env = env().await;
    let ui = Userinfo::new(&settings(OnError::Proceed));
    let token = alice(&env);
    env.mock.configure(|s| {
        s.userinfo
            .insert(token.raw.clone(), json!({"sub": "mallory", "email": "m@x"}));
    });
    for _ in 0..2 {
        let rejection = enrich(&ui, &env, &token, None).await.unwrap_err();
        assert_eq!(rejection.status(), 401);
        assert_eq!(rejection.reason().as_str(), "userinfo_wrong_subject");
    }
    assert_eq!(env.mock.hits(USERINFO), 1);
}

#[tokio::test]
async fn userinfo_never_overrides_token_only_claims() {
    let env = env().await;
    let ui = Userinfo::new(&settings(OnError::Deny));
    let token = token(
        &env,
        json!({"sub": "alice", "scope": "read", "client_id": "web"}),
    );
    env.mock.configure(|s| {
        s.userinfo.insert(
            token.raw.clone(),
            json!({"sub": "alice", "scope": "admin", "client_id": "evil", "aud": "x",
                   "iss": "https://evil", "exp": 1, "groups": ["ops"]}),
        );
    });
    let merged = enriched(enrich(&ui, &env, &token, None).await);
    for name in ["scope", "client_id", "aud", "iss", "exp", "iat", "sub"] {
        assert_eq!(merged.get(name), token.claims.get(name), "{name}");
    }
    assert_eq!(merged["groups"], json!(["ops"]));
}

// --- signed answers --------------------------------------------------------------------------

#[tokio::test]
async fn a_signed_answer_is_verified_with_the_issuers_keys() {
    let mock = MockIssuer::start().await;
    // `require_typ` is an access-token rule: a signed answer with typ "JWT" still passes.
    let config = Issuer {
        require_typ: Some("at+jwt".to_owned()),
        ..mock.settings()
    };
    let env = env_with(mock, config).await;
    let ui = Userinfo::new(&settings(OnError::Proceed));
    for alg in ["ES256", "RS256", "EdDSA"] {
        env.mock
            .configure(|s| s.userinfo_signed_alg = Some(alg.to_owned()));
        let token = token(&env, json!({"sub": "alice", "jti": alg}));
        let claims = enriched(enrich(&ui, &env, &token, None).await);
        assert_eq!(claims["email"], "alice@example.com", "{alg}");
        assert_eq!(claims["aud"], "api", "the answer's aud is not taken");
    }
    // An answer signed with a key published after the last JWKS load: one refresh, then OK.
    env.mock.rotate();
    env.mock
        .configure(|s| s.userinfo_signed_alg = Some("ES256".to_owned()));
    let token = token(&env, json!({"sub": "alice", "jti": "rotated"}));
    enriched(enrich(&ui, &env, &token, None).await);
}

#[tokio::test]
async fn a_signed_answers_iss_and_exp_are_checked_when_present() {
    let env = env().await;
    let ui = Userinfo::new(&settings(OnError::Proceed));
    env.mock
        .configure(|s| s.userinfo_signed_alg = Some("ES256".to_owned()));
    let cases = [
        (json!({"iss": "https://evil.example"}), false),
        (json!({"exp": 1_000_000}), false),
        (json!({"nbf": now_unix() + 3600}), false),
        (json!({"exp": now_unix() + 60}), true),
    ];
    for (n, (extra, accepted)) in cases.into_iter().enumerate() {
        let token = token(&env, json!({"sub": "alice", "jti": n}));
        let mut answer = json!({"sub": "alice", "email": "a@x"});
        for (name, value) in extra.as_object().expect("object") {
            answer[name] = value.clone();
        }
        env.mock.configure(|s| {
            s.userinfo.insert(token.raw.clone(), answer.clone());
        });
        let outcome = enrich(&ui, &env, &token, None).await;
        if accepted {
            enriched(outcome);
        } else {
            skipped(outcome, "userinfo_unavailable");
        }
    }
}

#[tokio::test]
async fn a_tampered_or_unsigned_jwt_answer_is_a_failure_and_not_cached() {
    let server = fixed(200, "application/json", "{}").await;
    let env = env_with_endpoint(&server.url).await;
    let kid = env.mock.kid("ES256");
    let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"}).to_string();
    let payload = json!({"sub": "alice", "email": "a@x"}).to_string();
    let good = env.mock.sign_raw(&header, &payload, "ES256");
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = MockIssuer::b64(json!({"sub": "alice", "email": "admin@x"}).to_string());
    parts[1] = &forged;
    let tampered = parts.join(".");
    let none = json!({"alg": "none"}).to_string();
    let unsigned = env.mock.sign_raw(&none, &payload, "none");
    let hs = json!({"alg": "HS256"}).to_string();
    let hs256 = env.mock.sign_raw(&hs, &payload, "HS256");
    let token = alice(&env);
    let mut expected_hits = 0;
    for (name, body) in [
        ("tampered", &tampered),
        ("unsigned", &unsigned),
        ("hs256 (not allowed)", &hs256),
        ("a JSON object sent as application/jwt", &payload),
    ] {
        server.set(200, "application/jwt", body);
        let deny = Userinfo::new(&settings(OnError::Deny));
        unavailable(enrich(&deny, &env, &token, None).await);
        unavailable(enrich(&deny, &env, &token, None).await);
        expected_hits += 2;
        assert_eq!(server.hits(), expected_hits, "{name}: not cached");
        assert!(deny.is_empty(), "{name}");
    }
    // The untampered one, served the same way, passes.
    server.set(200, "application/jwt; charset=utf-8", &good);
    let ui = Userinfo::new(&settings(OnError::Deny));
    let claims = enriched(enrich(&ui, &env, &token, None).await);
    assert_eq!(claims["email"], "a@x");
}

// --- failures --------------------------------------------------------------------------------

#[tokio::test]
async fn failures_go_to_on_error_and_are_never_cached() {
    let env = env().await;
    let deny = Userinfo::new(&config::Userinfo {
        timeout: Duration::from_millis(200),
        ..settings(OnError::Deny)
    });
    let proceed = Userinfo::new(&config::Userinfo {
        timeout: Duration::from_millis(200),
        ..settings(OnError::Proceed)
    });
    let token = alice(&env);
    type Change = Box<dyn Fn(&mut support::issuer::Settings)>;
    let cases: Vec<(&str, Change)> = vec![
        ("500", Box::new(|s| s.userinfo_status = Some(500))),
        ("503", Box::new(|s| s.userinfo_status = Some(503))),
        ("403", Box::new(|s| s.userinfo_status = Some(403))),
        ("404", Box::new(|s| s.userinfo_status = Some(404))),
        (
            "array",
            Box::new(|s| s.userinfo_default = Some(json!([{"sub": "alice"}]))),
        ),
        (
            "string",
            Box::new(|s| s.userinfo_default = Some(json!("alice"))),
        ),
        (
            "timeout",
            Box::new(|s| s.userinfo_delay = Duration::from_millis(1500)),
        ),
    ];
    let mut expected_hits = 0;
    for (name, change) in cases {
        env.mock.configure(|s| {
            s.userinfo_status = None;
            s.userinfo_default = None;
            s.userinfo_delay = Duration::ZERO;
            change(s);
        });
        for _ in 0..2 {
            unavailable(enrich(&deny, &env, &token, None).await);
            skipped(
                enrich(&proceed, &env, &token, None).await,
                "userinfo_unavailable",
            );
            expected_hits += 2;
            assert_eq!(env.mock.hits(USERINFO), expected_hits, "{name}: not cached");
        }
    }
    assert!(deny.is_empty() && proceed.is_empty());
    let c = deny.counters();
    assert_eq!((c.misses, c.error, c.ok, c.hits), (14, 14, 0, 0));
}

#[tokio::test]
async fn garbage_and_unreachable_endpoints_go_to_on_error() {
    let garbage = fixed(200, "application/json", "<html>not json{").await;
    let env = env_with_endpoint(&garbage.url).await;
    let ui = Userinfo::new(&settings(OnError::Deny));
    unavailable(enrich(&ui, &env, &alice(&env), None).await);
    assert_eq!(garbage.hits(), 1);

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let env = env_with_endpoint(&format!("http://{closed}/userinfo")).await;
    let ui = Userinfo::new(&settings(OnError::Proceed));
    skipped(
        enrich(&ui, &env, &alice(&env), None).await,
        "userinfo_unavailable",
    );
    assert_eq!(ui.counters().error, 1);
}

#[tokio::test]
async fn an_issuer_without_a_userinfo_endpoint_is_a_failure() {
    let mock = MockIssuer::start().await;
    // With jwks_uri configured there is no discovery, so no userinfo endpoint either.
    let config = Issuer {
        jwks_uri: Some(format!("{}/jwks", mock.url())),
        ..mock.settings()
    };
    let env = env_with(mock, config).await;
    assert_eq!(env.keys.userinfo_endpoint(), None);
    let deny = Userinfo::new(&settings(OnError::Deny));
    let proceed = Userinfo::new(&settings(OnError::Proceed));
    let token = alice(&env);
    unavailable(enrich(&deny, &env, &token, None).await);
    skipped(
        enrich(&proceed, &env, &token, None).await,
        "no_userinfo_endpoint",
    );
    assert_eq!(env.mock.hits(USERINFO), 0);
    assert_eq!(deny.counters().error, 1);
}

#[tokio::test]
async fn dpop_bound_tokens_are_never_sent_to_userinfo() {
    let env = env().await;
    let ui = Userinfo::new(&settings(OnError::Deny));
    let token = token(&env, json!({"sub": "alice", "cnf": {"jkt": "abc"}}));
    let sha256: [u8; 32] = Sha256::digest(token.raw.as_bytes()).into();
    let bound = TokenRef {
        raw: &token.raw,
        sha256: &sha256,
        issuer: 0,
        claims: &token.claims,
        exp: token.exp,
    };
    let outcome = ui.enrich(bound, &env.keys, None, true, now_unix()).await;
    skipped(outcome, "dpop_bound_token");
    assert_eq!(env.mock.hits(USERINFO), 0);
    assert_eq!(ui.counters(), UserinfoCounters::default());
}

#[tokio::test]
async fn the_same_token_at_two_issuers_is_two_entries() {
    let env = env().await;
    let ui = Userinfo::new(&settings(OnError::Deny));
    let token = alice(&env);
    let now = now_unix();
    enriched(enrich_at(&ui, 0, &env.keys, &token, token.exp, now, None).await);
    enriched(enrich_at(&ui, 1, &env.keys, &token, token.exp, now, None).await);
    assert_eq!(env.mock.hits(USERINFO), 2);
    assert_eq!(ui.len(), 2);
}

// --- bound and purge -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_entries_holds_under_ten_times_as_many_distinct_tokens() {
    let env = Arc::new(env().await);
    let ui = Userinfo::new(&config::Userinfo {
        max_entries: 10,
        ..settings(OnError::Deny)
    });
    let tokens: Vec<Arc<Token>> = (0..100)
        .map(|n| Arc::new(token(&env, json!({"sub": format!("user{n}")}))))
        .collect();
    for batch in tokens.chunks(20) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|token| {
                let (ui, env, token) = (ui.clone(), env.clone(), token.clone());
                tokio::spawn(async move { enrich(&ui, &env, &token, None).await })
            })
            .collect();
        for task in tasks {
            enriched(task.await.expect("task"));
        }
        assert!(ui.len() <= 10, "{} entries", ui.len());
    }
    assert_eq!(ui.len(), 10);
    assert_eq!(ui.counters().misses, 100);
    // One at a time, the newest answers are the ones kept.
    let last: Vec<Token> = (0..10)
        .map(|n| token(&env, json!({"sub": format!("late{n}")})))
        .collect();
    for token in &last {
        enriched(enrich(&ui, &env, token, None).await);
    }
    for token in &last {
        enriched(enrich(&ui, &env, token, None).await);
    }
    assert_eq!(env.mock.hits(USERINFO), 110);
    assert_eq!(ui.len(), 10);
}

#[tokio::test]
async fn the_purger_removes_expired_entries_and_stops() {
    let env = env().await;
    let ui = Userinfo::new(&config::Userinfo {
        cache_ttl: Duration::from_secs(1),
        ..settings(OnError::Deny)
    });
    for n in 0..3 {
        let token = token(&env, json!({"sub": format!("user{n}")}));
        enriched(enrich(&ui, &env, &token, None).await);
    }
    assert_eq!(ui.len(), 3);
    let (stop, rx) = watch::channel(false);
    let purger = tokio::spawn(ui.clone().run_purger(rx));
    // Let it start its one-second period, then jump past that and the entries' lifetime.
    tokio::task::yield_now().await;
    pass(Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ui.is_empty() {
        assert!(Instant::now() < deadline, "not purged in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).expect("send");
    tokio::time::timeout(Duration::from_secs(5), purger)
        .await
        .expect("purger stops")
        .expect("purger task");
}

/// Run by hand: `cargo test --release --test userinfo_cache -- --ignored --nocapture`.
/// Prints the resident memory growth for 100 000 cached answers (typical small profiles).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement, run by hand"]
async fn rss_for_100k_cached_entries() {
    const N: usize = 100_000;
    let env = Arc::new(env().await);
    let ui = Userinfo::new(&config::Userinfo {
        max_entries: N,
        ..settings(OnError::Deny)
    });
    // Unsigned look-alike tokens: enrichment neither verifies nor parses them, and the mock
    // answers with the payload's `sub`, an email and a name.
    let header = MockIssuer::b64(r#"{"alg":"ES256","typ":"JWT"}"#);
    let exp = now_unix() + 3600;
    let make = |n: usize| {
        let sub = format!("user-{n:08}");
        let payload = json!({"iss": env.mock.issuer(), "sub": sub, "exp": exp});
        let raw = format!(
            "{header}.{}.{}",
            MockIssuer::b64(payload.to_string()),
            MockIssuer::b64([7u8; 64])
        );
        let claims = payload.as_object().expect("object").clone();
        Token { raw, claims, exp }
    };
    let workers = 64;
    let batches: Vec<Vec<Token>> = (0..workers)
        .map(|w| (0..N).filter(|n| n % workers == w).map(make).collect())
        .collect();
    // Warm up allocator and connection pool before the baseline.
    enriched(enrich(&ui, &env, &make(usize::MAX), None).await);
    let before = rss_kib();
    let started = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|tokens| {
            let (ui, env) = (ui.clone(), env.clone());
            tokio::spawn(async move {
                for token in tokens {
                    enriched(enrich(&ui, &env, &token, None).await);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let after = rss_kib();
    let entries = ui.len();
    let grown = after.saturating_sub(before);
    println!(
        "userinfo cache: {entries} entries in {:?}; RSS {before} KiB -> {after} KiB, \
         +{grown} KiB, ~{} bytes/entry",
        started.elapsed(),
        grown * 1024 / entries.max(1) as u64
    );
    assert_eq!(entries, N);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_cached_answer_is_merged_once_and_keeps_its_id_until_asked_again() {
    let env = env().await;
    let ui = Userinfo::new(&settings(OnError::Deny));
    let token = alice(&env);
    let id_of = |outcome: Result<Outcome, Rejection>| match outcome {
        Ok(Outcome::Enriched { claims, answer }) => (claims, answer),
        other => panic!("expected enriched claims, got {other:?}"),
    };
    let (first, first_id) = id_of(enrich(&ui, &env, &token, None).await);
    let (again, again_id) = id_of(enrich(&ui, &env, &token, None).await);
    assert!(Arc::ptr_eq(&first, &again), "the merge is reused");
    assert_eq!(first_id, again_id);
    assert_ne!(first_id, 0, "0 means the token's own claims");
    // `userinfo_max_age = 0s` asks again: a new answer, a new id.
    let (_, fresh_id) = id_of(enrich(&ui, &env, &token, Some(Duration::ZERO)).await);
    assert_ne!(fresh_id, first_id);
    assert_eq!(env.mock.hits(USERINFO), 2);
}
