//! Unit tests: merging, lifetimes, freshness per route, remembered 401s, judging answers. The
//! cache's expiry and size bound are the shared `TtlCache`'s (`crate::cache` tests). Network
//! behaviour (single-flight, failures, signed answers) is in `tests/userinfo_cache.rs`.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::cache::{lifetime, Cache, Cached, Key, NEGATIVE_TTL};
use super::*;

fn claims(v: Value) -> Claims {
    match v {
        Value::Object(m) => m,
        _ => panic!("test claims must be an object"),
    }
}

fn key(n: u32) -> Key {
    let mut hash = [0u8; 32];
    hash[..4].copy_from_slice(&n.to_be_bytes());
    (0, hash)
}

fn answer(sub: &str) -> Cached {
    Cached::Answer(Answer::new(&claims(json!({"sub": sub}))))
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn merge_puts_userinfo_over_the_token_except_token_only_claims() {
    let token = claims(json!({
        "iss": "https://idp", "sub": "alice", "aud": "api", "exp": 100, "iat": 1,
        "scope": "read", "client_id": "web", "email": "old@example.com", "cnf": {"jkt": "t"},
    }));
    let userinfo = claims(json!({
        "iss": "https://evil", "sub": "mallory", "aud": "other", "exp": 999, "nbf": 0, "iat": 5,
        "jti": "j", "scope": "admin", "scp": ["admin"], "cnf": {"jkt": "x"}, "client_id": "evil",
        "email": "alice@example.com", "groups": ["ops"], "name": "Alice",
    }));
    let merged = merge(&token, &userinfo);
    for name in TOKEN_ONLY_CLAIMS {
        assert_eq!(merged.get(name), token.get(name), "{name}");
    }
    assert!(!merged.contains_key("nbf") && !merged.contains_key("jti"));
    assert!(!merged.contains_key("scp"));
    assert_eq!(merged["email"], "alice@example.com");
    assert_eq!(merged["groups"], json!(["ops"]));
    assert_eq!(merged["name"], "Alice");
    // The token's order first (a replaced value keeps its place), then new names.
    let names: Vec<&str> = merged.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "scope",
            "client_id",
            "email",
            "cnf",
            "groups",
            "name"
        ]
    );
}

#[test]
fn merge_lets_userinfo_null_out_an_ordinary_claim() {
    let merged = merge(
        &claims(json!({"sub": "a", "email": "x"})),
        &claims(json!({"sub": "a", "email": null})),
    );
    assert_eq!(merged["email"], Value::Null);
}

#[test]
fn lifetime_is_the_smaller_of_cache_ttl_and_time_to_exp() {
    let now = 1_700_000_000;
    assert_eq!(lifetime(5 * MINUTE, now + 3600, now), 5 * MINUTE);
    assert_eq!(lifetime(5 * MINUTE, now + 42, now), Duration::from_secs(42));
    assert_eq!(lifetime(5 * MINUTE, now, now), Duration::ZERO);
    assert_eq!(lifetime(5 * MINUTE, now - 10, now), Duration::ZERO);
    assert_eq!(lifetime(Duration::ZERO, now + 3600, now), Duration::ZERO);
    assert_eq!(lifetime(MINUTE, i64::MAX, i64::MIN), MINUTE);
    assert_eq!(lifetime(MINUTE, i64::MIN, i64::MAX), Duration::ZERO);
    assert!(lifetime(Duration::MAX, i64::MAX, 0) <= Duration::from_secs(366 * 24 * 3600));
}

#[test]
fn the_route_bound_applies_when_reading() {
    let cache = Cache::new(10);
    let t0 = Instant::now();
    cache.insert(key(1), answer("a"), t0, 5 * MINUTE);
    let later = t0 + Duration::from_secs(30);
    assert!(cache.get(&key(1), later, None).is_some());
    assert!(cache.get(&key(1), later, Some(MINUTE)).is_some());
    assert!(cache
        .get(&key(1), later, Some(Duration::from_secs(30)))
        .is_none());
    assert!(cache
        .get(&key(1), later, Some(Duration::from_secs(29)))
        .is_none());
    // "0s": never from the cache, not even at once.
    assert!(cache.get(&key(1), t0, Some(Duration::ZERO)).is_none());
    // The stale-for-one-route entry stays for the others.
    assert_eq!(cache.len(), 1);
    assert!(cache.get(&key(1), later, Some(Duration::MAX)).is_some());
}

#[test]
fn a_remembered_rejection_ignores_the_route_bound_but_not_its_own() {
    let cache = Cache::new(10);
    let t0 = Instant::now();
    cache.insert(key(1), Cached::Rejected, t0, NEGATIVE_TTL);
    let soon = t0 + Duration::from_secs(9);
    assert!(matches!(
        cache.get(&key(1), soon, Some(Duration::ZERO)),
        Some(Cached::Rejected)
    ));
    assert!(cache.get(&key(1), t0 + NEGATIVE_TTL, None).is_none());
}

/// Through `Userinfo::cached`, which reads tokio's clock: paused here, so the ten seconds pass
/// at once and exactly.
#[tokio::test(start_paused = true)]
async fn a_remembered_401_is_served_for_ten_seconds_and_then_the_endpoint_is_asked_again() {
    let ui = Userinfo::new(&config::Userinfo {
        cache_ttl: MINUTE,
        max_entries: 10,
        timeout: Duration::from_secs(1),
        on_error: OnError::Proceed,
    });
    let token = claims(json!({"sub": "alice"}));
    let (issuer, sha256) = key(1);
    ui.cache
        .insert(key(1), Cached::Rejected, Instant::now(), NEGATIVE_TTL);
    let ask = || ui.cached(issuer, &sha256, &token, Some(Duration::ZERO), false);
    for second in 0..10 {
        match ask() {
            Some(Err(rejection)) => assert_eq!(rejection.reason(), Reason::UserinfoRejected),
            other => panic!("second {second}: expected the remembered 401, got {other:?}"),
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // Ten seconds on: `None`, so `enrich` calls the endpoint; and the entry is gone.
    assert!(ask().is_none());
    assert_eq!(ui.len(), 0);
    assert_eq!(ui.counters().hits, 10);
}

#[test]
fn purge_period_is_bounded() {
    assert_eq!(
        purge_period(Duration::from_secs(300)),
        Duration::from_secs(30)
    );
    assert_eq!(purge_period(Duration::from_secs(5)), Duration::from_secs(5));
    assert_eq!(purge_period(Duration::ZERO), Duration::from_secs(1));
}

#[test]
fn debug_shows_no_cache_contents() {
    let ui = Userinfo::new(&config::Userinfo {
        cache_ttl: MINUTE,
        max_entries: 10,
        timeout: Duration::from_secs(1),
        on_error: OnError::Deny,
    });
    let t0 = Instant::now();
    ui.cache
        .insert(key(1), answer("secret-subject"), t0, MINUTE);
    let text = format!("{ui:?}");
    assert!(text.contains("entries: 1"), "{text}");
    assert!(!text.contains("secret-subject"), "{text}");
}

#[test]
fn judge_compares_subjects_and_maps_failures() {
    let deny = Userinfo::new(&config::Userinfo {
        cache_ttl: MINUTE,
        max_entries: 10,
        timeout: Duration::from_secs(1),
        on_error: OnError::Deny,
    });
    let token = claims(json!({"sub": "alice", "scope": "read"}));
    let ok = Fetched::Answer(Answer::new(&claims(
        json!({"sub": "alice", "email": "a@x"}),
    )));
    match deny.judge(&key(1), ok, &token) {
        Ok(Outcome::Enriched { claims, .. }) => assert_eq!(claims["email"], "a@x"),
        other => panic!("{other:?}"),
    }
    let wrong = Fetched::Answer(Answer::new(&claims(json!({"sub": "bob"}))));
    let err = deny.judge(&key(1), wrong, &token).unwrap_err();
    assert_eq!(err.status(), 401);
    assert_eq!(err.reason(), Reason::UserinfoWrongSubject);
    let no_sub = Fetched::Answer(Answer::new(&claims(json!({"email": "a@x"}))));
    assert!(deny.judge(&key(1), no_sub.clone(), &token).is_err());
    // A token without `sub` never matches, not even an answer without one.
    assert!(deny
        .judge(&key(1), no_sub, &claims(json!({"client_id": "c"})))
        .is_err());
    let numeric = Fetched::Answer(Answer::new(&claims(json!({"sub": 1}))));
    assert!(deny
        .judge(&key(1), numeric, &claims(json!({"sub": 1})))
        .is_err());

    let rejected = deny.judge(&key(1), Fetched::Rejected, &token).unwrap_err();
    assert_eq!(
        rejected,
        Rejection::InvalidToken {
            reason: Reason::UserinfoRejected,
            description: REJECTED_DESCRIPTION.into(),
        }
    );
    let failed = Fetched::Failed(Failure::Status(500));
    let err = deny.judge(&key(1), failed.clone(), &token).unwrap_err();
    assert_eq!(err.status(), 503);

    let proceed = Userinfo::new(&config::Userinfo {
        cache_ttl: MINUTE,
        max_entries: 10,
        timeout: Duration::from_secs(1),
        on_error: OnError::Proceed,
    });
    assert!(matches!(
        proceed.judge(&key(1), failed, &token),
        Ok(Outcome::Skipped(Reason::UserinfoUnavailable))
    ));
}
