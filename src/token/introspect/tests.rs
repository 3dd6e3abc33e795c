//! Unit tests of the pure parts: form encoding, the answer's shape and checks, the implied `exp`,
//! cache lifetimes, error mapping. The cache's expiry and bound are the shared `TtlCache`'s
//! (`crate::cache` tests). Calls, single-flight and the walk over
//! several issuers are in `tests/introspection_client.rs`, against the mock issuer.

use std::time::Duration;

use serde_json::{json, Value};

use super::answer::{parse, Active, Answer, Shape, IMPLIED_EXP_MIN};
use super::client::{form_body, form_urlencode};
use super::*;
use crate::config::{Algorithm, Issuer};
use crate::token::jwt::JwtError;

const NOW: i64 = 1_800_000_000;
const MINUTE: Duration = Duration::from_secs(60);

fn claims(v: Value) -> Claims {
    match v {
        Value::Object(m) => m,
        _ => panic!("test claims must be an object"),
    }
}

fn issuer() -> Issuer {
    Issuer {
        id: "corp".to_owned(),
        issuer: "https://idp.example.com/".to_owned(),
        jwks_uri: None,
        userinfo_endpoint: None,
        audiences: vec!["orders-api".to_owned(), "billing".to_owned()],
        algorithms: Algorithm::DEFAULT.to_vec(),
        clock_skew: MINUTE,
        fetch_timeout: Duration::from_secs(1),
        ca_file: None,
        allow_any_audience: false,
        jwks_refresh: Duration::from_secs(600),
        jwks_min_refresh: Duration::from_secs(30),
        require_typ: None,
        allow_http: false,
        hmac_secret: None,
        introspection: None,
    }
}

fn active(members: Value) -> Active {
    Active::new(&claims(members), &issuer(), 2 * MINUTE, NOW)
}

fn check(members: Value, now: i64) -> Result<(), JwtError> {
    active(members).check(now, MINUTE)
}

#[test]
fn form_urlencoding_keeps_only_unreserved_bytes() {
    assert_eq!(form_urlencode("AZaz09*-._"), "AZaz09*-._");
    assert_eq!(form_urlencode("opaque+/="), "opaque%2B%2F%3D");
    assert_eq!(form_urlencode("a b~c"), "a+b%7Ec");
    assert_eq!(form_urlencode("s3cr:t&x=%"), "s3cr%3At%26x%3D%25");
    assert_eq!(form_urlencode("é"), "%C3%A9");
    assert_eq!(form_urlencode(""), "");
    assert_eq!(
        form_body(&[("token", "a+b"), ("token_type_hint", "access_token")]),
        "token=a%2Bb&token_type_hint=access_token"
    );
}

#[test]
fn an_answer_is_an_object_with_a_boolean_active() {
    match parse(br#"{"sub":"svc","active":true,"scope":"a b"}"#) {
        Ok(Answer::Active(members)) => {
            let names: Vec<&str> = members.keys().map(String::as_str).collect();
            assert_eq!(names, ["sub", "scope"], "active removed, order kept");
        }
        other => panic!("expected an active answer, got {other:?}"),
    }
    assert!(matches!(
        parse(br#"{"active":false,"sub":"x"}"#),
        Ok(Answer::Inactive)
    ));
    for body in [
        &b"[1]"[..],
        b"\"active\"",
        b"null",
        b"<html>",
        b"",
        b"{\"active\":",
    ] {
        assert_eq!(parse(body).err(), Some(Shape::NotObject), "{body:?}");
    }
    for body in [
        &br#"{"sub":"x"}"#[..],
        br#"{"active":"true"}"#,
        br#"{"active":1}"#,
        br#"{"active":null}"#,
    ] {
        assert_eq!(parse(body).err(), Some(Shape::NoBooleanActive), "{body:?}");
    }
}

#[test]
fn an_active_answer_without_claims_to_check_passes() {
    assert_eq!(check(json!({}), NOW), Ok(()));
    assert_eq!(check(json!({"sub": "svc", "scope": "a"}), NOW), Ok(()));
}

#[test]
fn iss_when_present_must_equal_the_configured_issuer_exactly() {
    assert_eq!(
        check(json!({"iss": "https://idp.example.com/"}), NOW),
        Ok(())
    );
    for other in ["https://idp.example.com", "https://IDP.example.com/", ""] {
        assert_eq!(
            check(json!({ "iss": other }), NOW),
            Err(JwtError::WrongIssuer),
            "{other}"
        );
    }
    assert!(matches!(
        check(json!({"iss": 1}), NOW),
        Err(JwtError::Malformed(_))
    ));
}

#[test]
fn aud_when_present_must_contain_a_configured_audience() {
    assert_eq!(check(json!({"aud": "billing"}), NOW), Ok(()));
    assert_eq!(check(json!({"aud": ["x", "orders-api"]}), NOW), Ok(()));
    assert_eq!(
        check(json!({"aud": "other"}), NOW),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(check(json!({"aud": []}), NOW), Err(JwtError::WrongAudience));
    assert!(matches!(
        check(json!({"aud": 3}), NOW),
        Err(JwtError::Malformed(_))
    ));
    let any = Issuer {
        allow_any_audience: true,
        ..issuer()
    };
    let answer = Active::new(&claims(json!({"aud": "other"})), &any, MINUTE, NOW);
    assert_eq!(answer.check(NOW, MINUTE), Ok(()));
}

#[test]
fn exp_and_nbf_are_checked_with_the_clock_skew() {
    let exp = json!({"exp": NOW});
    assert_eq!(check(exp.clone(), NOW + 59), Ok(()), "within the skew");
    assert_eq!(check(exp, NOW + 60), Err(JwtError::Expired));
    let nbf = json!({"nbf": NOW + 60});
    assert_eq!(check(nbf.clone(), NOW), Ok(()), "within the skew");
    assert_eq!(check(nbf, NOW - 1), Err(JwtError::NotYetValid));
    for bad in [
        json!({"exp": "soon"}),
        json!({"nbf": -1}),
        json!({"exp": null}),
    ] {
        assert!(
            matches!(check(bad.clone(), NOW), Err(JwtError::Malformed(_))),
            "{bad}"
        );
    }
}

#[test]
fn reasons_match_the_jwt_ones() {
    let refused = |members: Value| check(members, NOW).map_err(|e| e.reason().as_str());
    assert_eq!(refused(json!({"exp": 1})), Err("expired"));
    assert_eq!(refused(json!({"nbf": NOW + 3600})), Err("not_yet_valid"));
    assert_eq!(refused(json!({"iss": "x"})), Err("wrong_issuer"));
    assert_eq!(refused(json!({"aud": "x"})), Err("wrong_audience"));
    assert_eq!(refused(json!({"exp": "x"})), Err("malformed"));
}

#[test]
fn exp_is_the_answers_or_implied_from_cache_ttl_with_a_floor() {
    assert_eq!(active(json!({"exp": NOW + 30})).exp(), NOW + 30);
    // No exp: answered + cache_ttl (2 minutes here) ...
    assert_eq!(active(json!({})).exp(), NOW + 120);
    // ... but never less than IMPLIED_EXP_MIN, so cache_ttl = 0 still yields a usable exp.
    let no_cache = Active::new(&claims(json!({})), &issuer(), Duration::ZERO, NOW);
    assert_eq!(no_cache.exp(), NOW + IMPLIED_EXP_MIN.as_secs() as i64);
    // A malformed exp is refused; the implied one still bounds the cache entry.
    assert_eq!(active(json!({"exp": "x"})).exp(), NOW + 120);
}

#[test]
fn an_active_answer_is_cached_until_cache_ttl_or_exp_whichever_is_first() {
    let ttl = 2 * MINUTE;
    let lifetime = |members: Value, now: i64| active(members).lifetime(ttl, now);
    assert_eq!(
        lifetime(json!({"exp": NOW + 30}), NOW),
        Duration::from_secs(30)
    );
    assert_eq!(lifetime(json!({"exp": NOW + 3600}), NOW), ttl);
    assert_eq!(lifetime(json!({"exp": NOW}), NOW), Duration::ZERO);
    assert_eq!(lifetime(json!({"exp": NOW - 5}), NOW), Duration::ZERO);
    assert_eq!(
        lifetime(json!({}), NOW),
        ttl,
        "implied exp: exactly cache_ttl"
    );
    let no_cache = Active::new(&claims(json!({})), &issuer(), Duration::ZERO, NOW);
    assert_eq!(no_cache.lifetime(Duration::ZERO, NOW), Duration::ZERO);
}

#[test]
fn claims_survive_the_compact_form_in_order() {
    let members = json!({"sub": "svc", "scope": "a b", "cnf": {"jkt": "t"}, "n": 1.5});
    let answer = active(members.clone());
    assert_eq!(Value::Object(answer.claims()), members);
    let names: Vec<String> = answer.claims().keys().cloned().collect();
    assert_eq!(names, ["sub", "scope", "cnf", "n"]);
    // A typical answer (RFC 7662 §2.2 example plus cnf) stays well under 1 KiB.
    let typical = active(json!({
        "scope": "read write dolphin", "client_id": "l238j323ds-23ij4",
        "username": "jdoe", "token_type": "Bearer", "exp": NOW + 3600, "iat": NOW,
        "nbf": NOW, "sub": "Z5O3upPC88QrAjx00dis", "aud": "https://protected.example.net/resource",
        "iss": "https://server.example.com/", "jti": "JlbmMiOiJBMTI4Q0JDLUhTMjU2In",
        "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},
    }));
    assert!(typical.json_len() < 512, "{}", typical.json_len());
}

#[test]
fn errors_map_to_401_invalid_token_or_503() {
    let inactive = IntrospectionError::Inactive;
    assert_eq!(inactive.reason(), Reason::Inactive);
    let rejection = inactive.into_rejection();
    assert_eq!(rejection.status(), 401);
    assert_eq!(rejection.reason(), Reason::Inactive);
    let invalid = IntrospectionError::Invalid {
        reason: Reason::WrongAudience,
        description: "token audience is not accepted".into(),
    };
    assert_eq!(invalid.clone().into_rejection().status(), 401);
    assert_eq!(invalid.into_rejection().reason(), Reason::WrongAudience);
    let unavailable = IntrospectionError::Unavailable.into_rejection();
    assert_eq!(unavailable.status(), 503);
    let response = unavailable.into_response("tokengate");
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_token_no_issuer_can_introspect_is_refused_without_a_call() {
    let introspector = Introspector::new();
    let keys = IssuerKeys::new(issuer()).expect("issuer keys");
    let refused = introspector
        .introspect("opaque", &[0; 32], &[(0, keys)], NOW)
        .await;
    assert!(
        matches!(
            refused,
            Err(IntrospectionError::Invalid {
                reason: Reason::Malformed,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(introspector.counters(), IntrospectionCounters::default());
}
