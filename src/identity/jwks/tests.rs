use std::sync::OnceLock;

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http_body_util::BodyExt as _;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::ed::{EdCurve, EdKeyPair};
use josekit::jwk::KeyPair;
use serde_json::Value;

use super::*;
use crate::identity::signing::public_jwk_from_pem_bytes;

struct Fixture {
    a: EcKeyPair,
    b: EdKeyPair,
}

fn fx() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        a: EcKeyPair::generate(EcCurve::P256).expect("p256"),
        b: EdKeyPair::generate(EdCurve::Ed25519).expect("ed25519"),
    })
}

fn doc(jwks: &PublishedJwks) -> Value {
    serde_json::from_slice(jwks.body()).expect("json")
}

#[test]
fn publishes_the_active_key_first_then_previous_keys() {
    let active = SigningKey::from_pem(&fx().a.to_pem_private_key(), None).expect("key");
    let old = public_jwk_from_pem_bytes(&fx().b.to_pem_public_key()).expect("old");
    let jwks = PublishedJwks::new(Some(&active), std::slice::from_ref(&old)).expect("jwks");
    let d = doc(&jwks);
    let keys = d["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], Value::Object(active.public_jwk().clone()));
    assert_eq!(keys[1], Value::Object(old.clone()));
    assert_eq!(
        jwks.kids(),
        [active.kid(), old["kid"].as_str().expect("kid")]
    );
    for key in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(key.get(private).is_none());
        }
        assert_eq!(key["use"], "sig");
    }
}

#[tokio::test]
async fn response_is_json_with_a_short_public_cache_lifetime() {
    let active = SigningKey::from_pem(&fx().a.to_pem_private_key(), None).expect("key");
    let jwks = PublishedJwks::new(Some(&active), &[]).expect("jwks");
    assert_eq!(jwks.max_age(), MAX_AGE_SECS);
    let resp = jwks.response();
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    assert_eq!(resp.headers()[CACHE_CONTROL], "public, max-age=300");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body, jwks.body());
    assert!(body.starts_with(b"{\"keys\":[{\"kty\":\"EC\""));
}

#[test]
fn the_same_key_listed_twice_is_published_once() {
    let active = SigningKey::from_pem(&fx().a.to_pem_private_key(), None).expect("key");
    let same = public_jwk_from_pem_bytes(&fx().a.to_pem_private_key()).expect("same");
    let jwks = PublishedJwks::new(Some(&active), &[same.clone(), same]).expect("jwks");
    assert_eq!(jwks.kids().len(), 1);
}

#[test]
fn the_same_key_under_a_custom_kid_is_published_under_both() {
    let active = SigningKey::from_pem(&fx().a.to_pem_private_key(), Some("2026-11")).expect("key");
    let same = public_jwk_from_pem_bytes(&fx().a.to_pem_private_key()).expect("same");
    let jwks = PublishedJwks::new(Some(&active), &[same]).expect("jwks");
    assert_eq!(jwks.kids(), ["2026-11", active.thumbprint()]);
}

#[test]
fn two_keys_under_one_kid_are_an_error() {
    let other = public_jwk_from_pem_bytes(&fx().b.to_pem_public_key()).expect("other");
    let kid = other["kid"].as_str().expect("kid").to_owned();
    let active = SigningKey::from_pem(&fx().a.to_pem_private_key(), Some(&kid)).expect("key");
    let err = PublishedJwks::new(Some(&active), &[other]).unwrap_err();
    assert!(err.contains(&kid), "{err}");
}

#[test]
fn without_an_active_key_only_previous_keys_are_listed() {
    let jwks = PublishedJwks::new(None, &[]).expect("jwks");
    assert_eq!(jwks.body().as_ref(), br#"{"keys":[]}"#);
    let mut no_kid = public_jwk_from_pem_bytes(&fx().b.to_pem_public_key()).expect("jwk");
    no_kid.remove("kid");
    assert!(PublishedJwks::new(None, &[no_kid]).is_err());
}

#[test]
fn load_reads_previous_key_files_and_names_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("old.pub.pem");
    std::fs::write(&good, fx().b.to_pem_public_key()).expect("write");
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").expect("write");
    let jwks = PublishedJwks::load(None, &[&good]).expect("jwks");
    assert_eq!(jwks.kids().len(), 1);
    let err = PublishedJwks::load(None, &[&good, &bad]).unwrap_err();
    assert!(err.starts_with(&format!("{}: ", bad.display())), "{err}");
}
