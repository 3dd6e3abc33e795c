//! Unit tests of explain's own descriptions (the phases are tested where they live, and explain
//! end to end against a live proxy in `tests/explain.rs`).

use serde_json::Value;

use super::enrich::added_claims;
use super::*;

#[test]
fn default_host_is_what_a_local_client_would_send() {
    assert_eq!(
        default_host("0.0.0.0:8080".parse().unwrap()),
        "127.0.0.1:8080"
    );
    assert_eq!(default_host("127.0.0.1:0".parse().unwrap()), "127.0.0.1");
    assert_eq!(default_host("[::]:443".parse().unwrap()), "[::1]:443");
    assert_eq!(default_host("[::]:0".parse().unwrap()), "[::1]");
}

#[test]
fn durations_read_like_configuration_values() {
    assert_eq!(human(Duration::from_secs(0)), "0s");
    assert_eq!(human(Duration::from_secs(300)), "5m");
    assert_eq!(human(Duration::from_secs(3723)), "1h2m3s");
}

#[test]
fn added_claims_are_the_new_and_changed_ones() {
    let token: Claims = serde_json::from_str(r#"{"sub":"a","name":"old","scope":"x"}"#).unwrap();
    let merged: Claims =
        serde_json::from_str(r#"{"sub":"a","name":"new","scope":"x","email":"a@x"}"#).unwrap();
    let added = added_claims(Some(&token), &merged);
    assert_eq!(
        Value::Object(added),
        serde_json::json!({"name": "new", "email": "a@x"})
    );
}

#[test]
fn token_hash_prefix_is_sixteen_hex_digits_of_sha256() {
    // SHA-256("abc") = ba7816bf8f01cfea...
    assert_eq!(sha256_prefix("abc"), "ba7816bf8f01cfea");
}
