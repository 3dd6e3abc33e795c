//! The introspection client against the mock issuer (SPEC §3 `[issuer.introspection]`, §4 item
//! 4, §7 introspection counters): both client authentication methods, what active and inactive
//! answers mean, the positive and negative caches and their lifetimes, single-flight, outages
//! (a cached answer keeps serving, nothing else passes), the checks of an active answer, bad
//! bodies, and several issuers asked in order.
//!
//! Time: both clocks the introspector reads are injected ([`Clock`]: `now_unix` and the
//! monotonic instant of `Introspector::introspect_at`), so cache lifetimes are crossed exactly,
//! without waiting, and no assertion depends on how fast anything runs. (tokio's paused clock
//! would need its `test-util` feature, and cannot be paused while a call is on the wire.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use support::issuer::{IntrospectionAuth, IntrospectionFailure, MockIssuer, INTROSPECTION_CLIENT};
use tokengate::config::{ClientAuthMethod, Introspection, Issuer, Secret};
use tokengate::token::introspect::{
    Introspected, IntrospectionCounters, IntrospectionError, Introspector, MAX_INTROSPECTION_BYTES,
};
use tokengate::token::jwks::IssuerKeys;

const CACHE_TTL: Duration = Duration::from_secs(120);
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

fn now_unix() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    i64::try_from(secs).expect("time")
}

/// The two clocks the introspector reads, injected: a test's time starts at its real start and
/// moves only when the test says so.
#[derive(Debug, Clone, Copy)]
struct Clock {
    unix: i64,
    mono: Instant,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            unix: now_unix(),
            mono: Instant::now(),
        }
    }

    fn after(self, by: Duration) -> Clock {
        Clock {
            unix: self.unix + i64::try_from(by.as_secs()).expect("secs"),
            mono: self.mono + by,
        }
    }
}

/// `[[issuer]]` settings for `mock` with introspection at its `/introspect`: no clock skew,
/// audiences `["api"]`, the mock's client credentials.
fn config(mock: &MockIssuer, id: &str, method: ClientAuthMethod) -> Issuer {
    let (client_id, secret) = INTROSPECTION_CLIENT;
    Issuer {
        id: id.to_owned(),
        clock_skew: Duration::ZERO,
        introspection: Some(Introspection {
            endpoint: Some(format!("{}/introspect", mock.url())),
            client_id: client_id.to_owned(),
            client_secret: Secret(secret.to_owned()),
            auth_method: method,
            cache_ttl: CACHE_TTL,
            negative_cache_ttl: NEGATIVE_TTL,
        }),
        ..mock.settings()
    }
}

fn with_introspection(mut issuer: Issuer, change: impl FnOnce(&mut Introspection)) -> Issuer {
    if let Some(settings) = issuer.introspection.as_mut() {
        change(settings);
    }
    issuer
}

/// Key state for `config`, not started: the endpoint is configured, so no discovery is needed.
fn keys(config: Issuer) -> Arc<IssuerKeys> {
    IssuerKeys::new(config).expect("issuer keys")
}

fn one(mock: &MockIssuer) -> Vec<(usize, Arc<IssuerKeys>)> {
    vec![(
        0,
        keys(config(mock, "mock", ClientAuthMethod::ClientSecretBasic)),
    )]
}

async fn ask(
    introspector: &Introspector,
    token: &str,
    candidates: &[(usize, Arc<IssuerKeys>)],
    at: Clock,
) -> Result<Introspected, IntrospectionError> {
    let sha256: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let call = introspector.introspect_at(token, &sha256, candidates, at.unix, at.mono);
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("introspect returns within 10 s")
}

#[track_caller]
fn accepted(result: Result<Introspected, IntrospectionError>) -> Introspected {
    match result {
        Ok(introspected) => introspected,
        Err(e) => panic!("expected the token to be accepted, got {e:?}"),
    }
}

#[track_caller]
fn refused_for(result: Result<Introspected, IntrospectionError>) -> &'static str {
    match result {
        Err(IntrospectionError::Invalid { reason, .. }) => reason.as_str(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn counters(
    hits: u64,
    misses: u64,
    coalesced: u64,
    active: u64,
    inactive: u64,
    error: u64,
) -> IntrospectionCounters {
    IntrospectionCounters {
        hits,
        misses,
        coalesced,
        active,
        inactive,
        error,
    }
}

#[tokio::test]
async fn client_secret_basic_sends_form_urlencoded_credentials_and_the_token() {
    let mock = MockIssuer::start().await;
    let client = ("tokengate client:1".to_owned(), "s3cr:t+/ é%".to_owned());
    mock.configure(|s| {
        s.introspection_auth = IntrospectionAuth::Basic;
        s.introspection_client = Some(client.clone());
    });
    let token = "opaque+/=token~1";
    mock.activate(token, json!({"sub": "svc"}));
    let issuer = with_introspection(
        config(&mock, "mock", ClientAuthMethod::ClientSecretBasic),
        |i| {
            i.client_id = client.0.clone();
            i.client_secret = Secret(client.1.clone());
        },
    );
    let introspector = Introspector::new();
    accepted(ask(&introspector, token, &[(0, keys(issuer))], Clock::start()).await);
    let requests = mock.introspection_requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.basic, Some(client));
    assert_eq!(request.form["token"], token);
    assert_eq!(request.form["token_type_hint"], "access_token");
    assert!(!request.form.contains_key("client_secret"));
    assert!(!request.form.contains_key("client_id"));
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_form_only() {
    let mock = MockIssuer::start().await;
    mock.configure(|s| s.introspection_auth = IntrospectionAuth::Post);
    mock.activate("opaque-1", json!({"sub": "svc"}));
    let issuer = config(&mock, "mock", ClientAuthMethod::ClientSecretPost);
    let introspector = Introspector::new();
    accepted(
        ask(
            &introspector,
            "opaque-1",
            &[(0, keys(issuer))],
            Clock::start(),
        )
        .await,
    );
    let request = &mock.introspection_requests()[0];
    let (id, secret) = INTROSPECTION_CLIENT;
    assert_eq!(request.basic, None);
    assert_eq!(request.form["client_id"], id);
    assert_eq!(request.form["client_secret"], secret);
    assert_eq!(request.form["token"], "opaque-1");
}

#[tokio::test]
async fn refused_client_credentials_are_unavailable_and_never_cached() {
    let mock = MockIssuer::start().await;
    mock.activate("opaque-1", json!({"sub": "svc"}));
    let wrong = with_introspection(
        config(&mock, "mock", ClientAuthMethod::ClientSecretBasic),
        |i| {
            i.client_secret = Secret("wrong".to_owned());
        },
    );
    let candidates = [(0, keys(wrong))];
    let introspector = Introspector::new();
    for _ in 0..2 {
        let result = ask(&introspector, "opaque-1", &candidates, Clock::start()).await;
        assert_eq!(result.err(), Some(IntrospectionError::Unavailable));
    }
    assert_eq!(mock.introspection_calls(), 2, "a failure is not cached");
    assert_eq!(introspector.counters(), counters(0, 2, 0, 0, 0, 2));

    // The right secret by the wrong method is refused the same way.
    mock.configure(|s| s.introspection_auth = IntrospectionAuth::Post);
    let basic = one(&mock);
    let result = ask(&introspector, "opaque-1", &basic, Clock::start()).await;
    assert_eq!(result.err(), Some(IntrospectionError::Unavailable));
}

#[tokio::test]
async fn an_active_answers_members_are_the_token_claims_without_active() {
    let mock = MockIssuer::start().await;
    let exp = now_unix() + 600;
    let members = json!({
        "sub": "alice", "scope": "orders:read orders:write", "client_id": "web",
        "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},
        "aud": ["other", "api"], "iss": mock.issuer(), "exp": exp,
        "realm_access": {"roles": ["admin"]},
    });
    mock.activate("opaque-1", members.clone());
    let introspector = Introspector::new();
    let got = accepted(ask(&introspector, "opaque-1", &one(&mock), Clock::start()).await);
    assert_eq!(got.issuer, 0);
    assert_eq!(got.exp, exp);
    assert_eq!(Value::Object((*got.claims).clone()), members);
    assert!(!got.claims.contains_key("active"));
    assert_eq!(introspector.counters(), counters(0, 1, 0, 1, 0, 0));
}

#[tokio::test]
async fn without_exp_the_token_is_good_for_cache_ttl_from_the_answer() {
    let mock = MockIssuer::start().await;
    mock.activate("opaque-1", json!({"sub": "svc"}));
    let introspector = Introspector::new();
    let at = Clock::start();
    let got = accepted(ask(&introspector, "opaque-1", &one(&mock), at).await);
    assert_eq!(got.exp, at.unix + 120);
}

#[tokio::test]
async fn an_inactive_answer_is_inactive() {
    let mock = MockIssuer::start().await;
    mock.configure(|s| {
        let answer = json!({"active": false, "sub": "svc", "scope": "all"});
        s.introspection.insert("revoked".to_owned(), answer);
    });
    let introspector = Introspector::new();
    let candidates = one(&mock);
    for token in ["revoked", "unknown"] {
        let result = ask(&introspector, token, &candidates, Clock::start()).await;
        assert_eq!(result.err(), Some(IntrospectionError::Inactive), "{token}");
    }
    let rejection = IntrospectionError::Inactive.into_rejection();
    assert_eq!(
        (rejection.status().as_u16(), rejection.reason().as_str()),
        (401, "inactive")
    );
    assert_eq!(introspector.counters(), counters(0, 2, 0, 0, 2, 0));
}

#[tokio::test]
async fn a_cached_active_answer_is_served_without_a_second_call() {
    let mock = MockIssuer::start().await;
    mock.activate("opaque-1", json!({"sub": "svc"}));
    let introspector = Introspector::new();
    let candidates = one(&mock);
    let first = accepted(ask(&introspector, "opaque-1", &candidates, Clock::start()).await);
    let second = accepted(ask(&introspector, "opaque-1", &candidates, Clock::start()).await);
    assert_eq!(mock.introspection_calls(), 1);
    assert!(Arc::ptr_eq(&first.claims, &second.claims), "parsed once");
    assert_eq!(introspector.counters(), counters(1, 1, 0, 1, 0, 0));
    assert_eq!(introspector.len(), (1, 0));
}

#[tokio::test]
async fn an_inactive_answer_is_remembered_for_negative_cache_ttl_only() {
    let mock = MockIssuer::start().await;
    let introspector = Introspector::new();
    let candidates = one(&mock);
    let t0 = Clock::start();
    assert_eq!(
        ask(&introspector, "opaque-1", &candidates, t0).await.err(),
        Some(IntrospectionError::Inactive)
    );
    // Active at the issuer now, but the remembered answer still says no, without a call.
    mock.activate("opaque-1", json!({"sub": "svc"}));
    let almost = t0.after(NEGATIVE_TTL - Duration::from_millis(1));
    assert_eq!(
        ask(&introspector, "opaque-1", &candidates, almost)
            .await
            .err(),
        Some(IntrospectionError::Inactive)
    );
    assert_eq!(mock.introspection_calls(), 1);
    accepted(
        ask(
            &introspector,
            "opaque-1",
            &candidates,
            t0.after(NEGATIVE_TTL),
        )
        .await,
    );
    assert_eq!(mock.introspection_calls(), 2);
    assert_eq!(introspector.len(), (1, 0), "the active answer replaced it");
}

#[tokio::test]
async fn an_active_answer_is_cached_no_longer_than_the_tokens_exp() {
    let mock = MockIssuer::start().await;
    let t0 = Clock::start();
    mock.activate("opaque-1", json!({"sub": "svc", "exp": t0.unix + 5}));
    let introspector = Introspector::new();
    let candidates = one(&mock);
    accepted(ask(&introspector, "opaque-1", &candidates, t0).await);
    let at = t0.after(Duration::from_secs(4));
    accepted(ask(&introspector, "opaque-1", &candidates, at).await);
    assert_eq!(mock.introspection_calls(), 1, "still cached before exp");
    let at = t0.after(Duration::from_secs(5));
    let result = ask(&introspector, "opaque-1", &candidates, at).await;
    assert_eq!(refused_for(result), "expired");
    assert_eq!(mock.introspection_calls(), 2, "asked again at exp");
}

#[tokio::test]
async fn an_active_answer_is_cached_no_longer_than_cache_ttl() {
    let mock = MockIssuer::start().await;
    let t0 = Clock::start();
    mock.activate("opaque-1", json!({"sub": "svc", "exp": t0.unix + 3600}));
    let introspector = Introspector::new();
    let candidates = one(&mock);
    accepted(ask(&introspector, "opaque-1", &candidates, t0).await);
    let almost = t0.after(CACHE_TTL - Duration::from_millis(1));
    accepted(ask(&introspector, "opaque-1", &candidates, almost).await);
    assert_eq!(mock.introspection_calls(), 1);
    accepted(ask(&introspector, "opaque-1", &candidates, t0.after(CACHE_TTL)).await);
    assert_eq!(mock.introspection_calls(), 2);
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_call() {
    let mock = MockIssuer::start().await;
    mock.activate("opaque-1", json!({"sub": "svc"}));
    mock.configure(|s| s.introspection_delay = Duration::from_millis(300));
    let introspector = Introspector::new();
    let candidates = Arc::new(one(&mock));
    let now = Clock::start();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (introspector, candidates) = (introspector.clone(), candidates.clone());
            tokio::spawn(async move { ask(&introspector, "opaque-1", &candidates, now).await })
        })
        .collect();
    for task in tasks {
        let got = accepted(task.await.expect("task"));
        assert_eq!(got.claims["sub"], "svc");
    }
    assert_eq!(mock.introspection_calls(), 1);
    assert_eq!(introspector.counters(), counters(0, 1, 49, 1, 0, 0));
}

/// Polls `condition` for up to 10 s.
async fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 10 s");
}

#[tokio::test]
async fn a_leader_that_hangs_up_does_not_fail_the_waiters() {
    let mock = MockIssuer::start().await;
    mock.activate("opaque-1", json!({"sub": "svc"}));
    // The call stays in flight for 2 s (the waiters join within it), well inside fetch_timeout.
    mock.configure(|s| s.introspection_delay = Duration::from_secs(2));
    let issuer = Issuer {
        fetch_timeout: Duration::from_secs(10),
        ..config(&mock, "mock", ClientAuthMethod::ClientSecretBasic)
    };
    let introspector = Introspector::new();
    let candidates = Arc::new(vec![(0, keys(issuer))]);
    let now = Clock::start();
    let spawn = || {
        let (introspector, candidates) = (introspector.clone(), candidates.clone());
        tokio::spawn(async move { ask(&introspector, "opaque-1", &candidates, now).await })
    };
    let leader = spawn();
    wait_until(|| introspector.counters().misses == 1).await;
    let waiters: Vec<_> = (0..5).map(|_| spawn()).collect();
    wait_until(|| introspector.counters().coalesced == 5).await;
    leader.abort();
    for waiter in waiters {
        accepted(waiter.await.expect("waiter"));
    }
    assert_eq!(mock.introspection_calls(), 1);
}

#[tokio::test]
async fn a_cached_active_answer_keeps_serving_through_an_outage_until_it_expires() {
    let mock = MockIssuer::start().await;
    mock.activate("opaque-1", json!({"sub": "svc"}));
    mock.activate("opaque-2", json!({"sub": "other"}));
    let introspector = Introspector::new();
    let candidates = one(&mock);
    let t0 = Clock::start();
    accepted(ask(&introspector, "opaque-1", &candidates, t0).await);
    mock.set_down(true);
    let almost = t0.after(CACHE_TTL - Duration::from_millis(1));
    accepted(ask(&introspector, "opaque-1", &candidates, almost).await);
    let uncached = ask(&introspector, "opaque-2", &candidates, t0).await;
    assert_eq!(uncached.err(), Some(IntrospectionError::Unavailable));
    let expired = ask(&introspector, "opaque-1", &candidates, t0.after(CACHE_TTL)).await;
    assert_eq!(
        expired.err(),
        Some(IntrospectionError::Unavailable),
        "never stale"
    );
    assert_eq!(mock.introspection_calls(), 3);
    assert_eq!(introspector.counters(), counters(1, 3, 0, 1, 0, 2));
}

#[tokio::test]
async fn every_bad_answer_is_unavailable_and_never_cached() {
    let over_cap = format!(
        "{{\"active\":true,\"pad\":\"{}\"}}",
        "x".repeat(MAX_INTROSPECTION_BYTES)
    );
    let failures = [
        IntrospectionFailure::Status(500),
        IntrospectionFailure::Status(404),
        IntrospectionFailure::Status(302),
        IntrospectionFailure::Status(403),
        IntrospectionFailure::Body("[{\"active\":true}]".to_owned()),
        IntrospectionFailure::Body("\"active\"".to_owned()),
        IntrospectionFailure::Body("<html>".to_owned()),
        IntrospectionFailure::Body("{\"sub\":\"svc\"}".to_owned()),
        IntrospectionFailure::Body("{\"active\":\"true\"}".to_owned()),
        IntrospectionFailure::Body(over_cap),
    ];
    let mock = MockIssuer::start().await;
    mock.activate("opaque-1", json!({"sub": "svc"}));
    let candidates = one(&mock);
    for failure in failures {
        let what = format!("{failure:?}").chars().take(60).collect::<String>();
        mock.configure(|s| s.introspection_failure = Some(failure));
        let introspector = Introspector::new();
        let calls = mock.introspection_calls();
        for _ in 0..2 {
            let result = ask(&introspector, "opaque-1", &candidates, Clock::start()).await;
            assert_eq!(
                result.err(),
                Some(IntrospectionError::Unavailable),
                "{what}"
            );
        }
        assert_eq!(mock.introspection_calls(), calls + 2, "{what}");
        assert_eq!(introspector.counters().error, 2, "{what}");
        assert!(introspector.is_empty(), "{what}");
    }
}

#[tokio::test]
async fn a_body_of_exactly_the_size_cap_is_read() {
    let mock = MockIssuer::start().await;
    let frame = "{\"active\":true,\"pad\":\"\"}".len();
    let body = format!(
        "{{\"active\":true,\"pad\":\"{}\"}}",
        "x".repeat(MAX_INTROSPECTION_BYTES - frame)
    );
    assert_eq!(body.len(), MAX_INTROSPECTION_BYTES);
    mock.configure(|s| s.introspection_failure = Some(IntrospectionFailure::Body(body)));
    let introspector = Introspector::new();
    accepted(ask(&introspector, "opaque-1", &one(&mock), Clock::start()).await);
}

#[tokio::test]
async fn a_hanging_endpoint_is_unavailable_after_fetch_timeout() {
    let mock = MockIssuer::start().await;
    mock.configure(|s| s.introspection_failure = Some(IntrospectionFailure::Hang));
    let introspector = Introspector::new();
    // fetch_timeout is 1 s (`MockIssuer::settings`); `ask` allows 10.
    let result = ask(&introspector, "opaque-1", &one(&mock), Clock::start()).await;
    assert_eq!(result.err(), Some(IntrospectionError::Unavailable));
    assert_eq!(introspector.counters().error, 1);
}

#[tokio::test]
async fn an_active_answer_failing_iss_aud_exp_or_nbf_is_invalid() {
    let mock = MockIssuer::start().await;
    let at = Clock::start();
    let now = at.unix;
    let cases = [
        (json!({"iss": "https://elsewhere.example"}), "wrong_issuer"),
        (json!({"iss": 7}), "malformed"),
        (json!({"aud": "someone-else"}), "wrong_audience"),
        (json!({"aud": ["a", "b"]}), "wrong_audience"),
        (json!({"exp": now - 1}), "expired"),
        (json!({"exp": "tomorrow"}), "malformed"),
        (json!({"nbf": now + 30}), "not_yet_valid"),
    ];
    let introspector = Introspector::new();
    let candidates = one(&mock);
    for (n, (members, reason)) in cases.iter().enumerate() {
        let token = format!("opaque-{n}");
        mock.activate(&token, members.clone());
        let result = ask(&introspector, &token, &candidates, at).await;
        assert_eq!(refused_for(result), *reason, "{members}");
    }
    // The passing forms of the same members.
    mock.activate(
        "good",
        json!({"iss": mock.issuer(), "aud": ["a", "api"], "exp": now + 60, "nbf": now}),
    );
    accepted(ask(&introspector, "good", &candidates, at).await);
    // A refused answer is still the issuer's answer: cached, refused again without a call.
    let calls = mock.introspection_calls();
    let again = ask(&introspector, "opaque-2", &candidates, at).await;
    assert_eq!(refused_for(again), "wrong_audience");
    assert_eq!(mock.introspection_calls(), calls);
}

#[tokio::test]
async fn a_cached_answer_becomes_acceptable_when_its_nbf_comes() {
    let mock = MockIssuer::start().await;
    let t0 = Clock::start();
    mock.activate(
        "opaque-1",
        json!({"nbf": t0.unix + 5, "exp": t0.unix + 600}),
    );
    let introspector = Introspector::new();
    let candidates = one(&mock);
    assert_eq!(
        refused_for(ask(&introspector, "opaque-1", &candidates, t0).await),
        "not_yet_valid"
    );
    let at = t0.after(Duration::from_secs(5));
    accepted(ask(&introspector, "opaque-1", &candidates, at).await);
    assert_eq!(mock.introspection_calls(), 1);
}

#[tokio::test]
async fn allow_any_audience_skips_the_aud_check() {
    let mock = MockIssuer::start().await;
    mock.activate("opaque-1", json!({"aud": "someone-else"}));
    let issuer = Issuer {
        allow_any_audience: true,
        audiences: vec![],
        ..config(&mock, "mock", ClientAuthMethod::ClientSecretBasic)
    };
    let introspector = Introspector::new();
    accepted(
        ask(
            &introspector,
            "opaque-1",
            &[(0, keys(issuer))],
            Clock::start(),
        )
        .await,
    );
}

/// Two issuers, A (index 0) then B (index 3, as if a JWT-only issuer sat between them).
struct Two {
    a: MockIssuer,
    b: MockIssuer,
    candidates: Vec<(usize, Arc<IssuerKeys>)>,
}

async fn two() -> Two {
    let a = MockIssuer::start().await;
    let b = MockIssuer::start().await;
    let candidates = vec![
        (
            0,
            keys(config(&a, "a", ClientAuthMethod::ClientSecretBasic)),
        ),
        (3, keys(config(&b, "b", ClientAuthMethod::ClientSecretPost))),
    ];
    Two { a, b, candidates }
}

#[tokio::test]
async fn issuers_are_asked_in_order_until_one_says_active() {
    let two = two().await;
    two.a.activate("of-a", json!({"sub": "from-a"}));
    two.b.activate("of-b", json!({"sub": "from-b"}));
    let introspector = Introspector::new();
    let now = Clock::start();

    let got = accepted(ask(&introspector, "of-a", &two.candidates, now).await);
    assert_eq!(
        (got.issuer, got.claims["sub"].clone()),
        (0, json!("from-a"))
    );
    assert_eq!(
        two.b.introspection_calls(),
        0,
        "B is not asked after A said active"
    );

    let got = accepted(ask(&introspector, "of-b", &two.candidates, now).await);
    assert_eq!(
        (got.issuer, got.claims["sub"].clone()),
        (3, json!("from-b"))
    );
    assert_eq!(
        (two.a.introspection_calls(), two.b.introspection_calls()),
        (2, 1)
    );

    let nobody = ask(&introspector, "nobody", &two.candidates, now).await;
    assert_eq!(nobody.err(), Some(IntrospectionError::Inactive));
    assert_eq!(
        (two.a.introspection_calls(), two.b.introspection_calls()),
        (3, 2)
    );

    // B's cached answer is served without asking A again, even after A's "no" expired.
    let later = now.after(NEGATIVE_TTL);
    let got = accepted(ask(&introspector, "of-b", &two.candidates, later).await);
    assert_eq!(got.issuer, 3);
    assert_eq!(
        (two.a.introspection_calls(), two.b.introspection_calls()),
        (3, 2)
    );
}

#[tokio::test]
async fn an_issuer_that_cannot_be_asked_blocks_an_inactive_conclusion_but_not_an_active_one() {
    let two = two().await;
    two.b.activate("of-b", json!({"sub": "from-b"}));
    two.a.set_down(true);
    let introspector = Introspector::new();
    let now = Clock::start();
    let unknown = ask(&introspector, "unknown", &two.candidates, now).await;
    assert_eq!(unknown.err(), Some(IntrospectionError::Unavailable));
    let got = accepted(ask(&introspector, "of-b", &two.candidates, now).await);
    assert_eq!(got.issuer, 3);
    assert_eq!(two.b.introspection_calls(), 2);
}

#[tokio::test]
async fn the_first_issuer_that_says_active_decides_even_when_its_answer_fails() {
    let two = two().await;
    two.a.activate("shared", json!({"aud": "someone-else"}));
    two.b.activate("shared", json!({"aud": "api"}));
    let introspector = Introspector::new();
    let result = ask(&introspector, "shared", &two.candidates, Clock::start()).await;
    assert_eq!(refused_for(result), "wrong_audience");
    assert_eq!(two.b.introspection_calls(), 0);
}

#[tokio::test]
async fn the_endpoint_comes_from_discovery_when_not_configured() {
    let mock = MockIssuer::start().await;
    mock.activate("opaque-1", json!({"sub": "svc"}));
    let issuer = with_introspection(
        config(&mock, "mock", ClientAuthMethod::ClientSecretBasic),
        |i| {
            i.endpoint = None;
        },
    );
    let state = keys(issuer);
    let introspector = Introspector::new();
    let candidates = [(0, state.clone())];
    // Before discovery ran, the endpoint is unknown: unavailable, not inactive.
    let early = ask(&introspector, "opaque-1", &candidates, Clock::start()).await;
    assert_eq!(early.err(), Some(IntrospectionError::Unavailable));
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(state.clone().run(stop_rx));
    wait_until(|| state.introspection_endpoint().is_some()).await;
    assert_eq!(
        state.introspection_endpoint(),
        Some(format!("{}/introspect", mock.url()))
    );
    accepted(ask(&introspector, "opaque-1", &candidates, Clock::start()).await);
    assert_eq!(mock.introspection_calls(), 1);
}

/// Collects formatted log output for the current thread (the runtime is single-threaded, so the
/// flight's task logs here too).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_call_is_logged_as_an_error_without_token_or_credentials() {
    let mock = MockIssuer::start().await;
    mock.configure(|s| s.introspection_failure = Some(IntrospectionFailure::Status(500)));
    let (_, secret) = INTROSPECTION_CLIENT;
    let addr = mock.addr;
    let endpoint = format!("http://user:url-password@{addr}/introspect?api_key=query-secret");
    let issuer = with_introspection(
        config(&mock, "corp-idp", ClientAuthMethod::ClientSecretPost),
        |i| {
            i.endpoint = Some(endpoint);
        },
    );
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let introspector = Introspector::new();
    let token = "opaque-token-value-42";
    let result = ask(
        &introspector,
        token,
        &[(0, keys(issuer.clone()))],
        Clock::start(),
    )
    .await;
    assert_eq!(result.err(), Some(IntrospectionError::Unavailable));

    let logs = String::from_utf8(capture.0.lock().expect("log buffer").clone()).expect("utf-8");
    let line = logs
        .lines()
        .find(|l| l.contains("introspection call failed"))
        .unwrap_or_else(|| panic!("no failure line in:\n{logs}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("corp-idp"), "{line}");
    assert!(
        line.contains(&format!("http://{addr}/introspect")),
        "{line}"
    );
    assert!(line.contains("500"), "{line}");
    for leak in [token, secret, "url-password", "query-secret"] {
        assert!(!logs.contains(leak), "{leak} leaked into:\n{logs}");
    }
    let debug = format!(
        "{introspector:?} {issuer:?} {:?}",
        IntrospectionError::Unavailable
    );
    for leak in [token, secret] {
        assert!(!debug.contains(leak), "{leak} leaked into {debug}");
    }
}
