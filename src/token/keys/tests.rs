use std::sync::OnceLock;

use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::ed::{EdCurve, EdKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::KeyPair;
use josekit::jws::{JwsSigner, ES256, RS256};
use serde_json::{json, Map, Value};

use super::{thumbprint, KeySet, MAX_KEYS};
use crate::config::model::Algorithm;

struct Fixture {
    rsa: RsaKeyPair,
    p256: EcKeyPair,
    p384: EcKeyPair,
    ed: EdKeyPair,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        rsa: RsaKeyPair::generate(2048).expect("rsa"),
        p256: EcKeyPair::generate(EcCurve::P256).expect("p256"),
        p384: EcKeyPair::generate(EcCurve::P384).expect("p384"),
        ed: EdKeyPair::generate(EdCurve::Ed25519).expect("ed25519"),
    })
}

/// The public JWK of a key pair, with extra members merged in.
fn public(kp: &dyn KeyPair, extra: Value) -> Value {
    let mut m: Map<String, Value> = kp.to_jwk_public_key().into();
    if let Value::Object(extra) = extra {
        m.extend(extra);
    }
    Value::Object(m)
}

fn jwks(keys: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).expect("json")
}

fn load(keys: Vec<Value>, allowed: &[Algorithm]) -> KeySet {
    KeySet::from_jwks(&jwks(keys), allowed).expect("a JWKS document")
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

#[test]
fn thumbprint_matches_rfc7638_example() {
    let jwk = obj(json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    }));
    assert_eq!(
        thumbprint(&jwk).as_deref(),
        Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
    );
}

#[test]
fn thumbprint_ignores_optional_members_and_member_order() {
    let f = fixture();
    let plain = obj(public(&f.p256, json!({})));
    let mut reordered = Map::new();
    for k in ["y", "x", "kty", "crv"] {
        reordered.insert(k.to_owned(), plain[k].clone());
    }
    reordered.insert("kid".into(), json!("k1"));
    reordered.insert("use".into(), json!("sig"));
    assert_eq!(thumbprint(&plain), thumbprint(&reordered));
    assert!(thumbprint(&obj(public(&f.ed, json!({})))).is_some());
}

#[test]
fn thumbprint_is_none_for_unsupported_or_incomplete_keys() {
    for jwk in [
        json!({"kty": "oct", "k": "c2VjcmV0"}),
        json!({"kty": "EC", "crv": "P-256", "x": "AA"}),
        json!({"kty": "RSA", "n": "AQAB"}),
        json!({"kty": "OKP", "crv": 1, "x": "AA"}),
        json!({"crv": "Ed25519", "x": "AA"}),
    ] {
        assert_eq!(thumbprint(&obj(jwk.clone())), None, "{jwk}");
    }
}

#[test]
fn document_without_keys_array_is_an_error() {
    for doc in [
        &b"[]"[..],
        b"{}",
        b"{\"keys\": {}}",
        b"not json",
        b"",
        b"\"keys\"",
    ] {
        assert!(KeySet::from_jwks(doc, &Algorithm::DEFAULT).is_err());
    }
    let empty = KeySet::from_jwks(b"{\"keys\": []}", &Algorithm::DEFAULT).expect("empty set");
    assert!(empty.is_empty());
    assert!(empty.skipped().is_empty());
}

#[test]
fn each_key_type_gets_verifiers_for_its_algorithms_only() {
    let f = fixture();
    let set = load(
        vec![
            public(&f.rsa, json!({"kid": "rsa"})),
            public(&f.p256, json!({"kid": "p256"})),
            public(&f.p384, json!({"kid": "p384"})),
            public(&f.ed, json!({"kid": "ed"})),
        ],
        &Algorithm::DEFAULT,
    );
    assert_eq!(set.len(), 4, "skipped: {:?}", set.skipped());
    let count = |alg, kid| set.candidates(alg, kid).count();
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        assert_eq!(count(alg, Some("rsa")), 1);
        assert_eq!(count(alg, None), 1);
        assert_eq!(count(alg, Some("p256")), 0);
    }
    assert_eq!(count(Algorithm::ES256, Some("p256")), 1);
    assert_eq!(count(Algorithm::ES384, Some("p256")), 0);
    assert_eq!(count(Algorithm::ES384, Some("p384")), 1);
    assert_eq!(count(Algorithm::ES256, Some("p384")), 0);
    assert_eq!(count(Algorithm::EdDSA, Some("ed")), 1);
    assert_eq!(count(Algorithm::EdDSA, None), 1);
    assert_eq!(count(Algorithm::HS256, None), 0);
    assert_eq!(count(Algorithm::ES256, Some("unknown")), 0);
    assert!(set.has_kid("rsa") && set.has_kid("ed") && !set.has_kid("RSA"));
}

#[test]
fn candidates_with_kid_exclude_keys_without_kid() {
    let f = fixture();
    let set = load(
        vec![
            public(&f.p256, json!({})),
            public(&f.p256, json!({"kid": "a"})),
        ],
        &Algorithm::DEFAULT,
    );
    assert_eq!(set.candidates(Algorithm::ES256, None).count(), 2);
    assert_eq!(set.candidates(Algorithm::ES256, Some("a")).count(), 1);
    assert_eq!(set.candidates(Algorithm::ES256, Some("")).count(), 0);
}

#[test]
fn allowed_algorithms_limit_the_verifiers() {
    let f = fixture();
    let set = load(
        vec![public(&f.rsa, json!({"kid": "r"}))],
        &[Algorithm::RS256],
    );
    assert_eq!(set.candidates(Algorithm::RS256, Some("r")).count(), 1);
    assert_eq!(set.candidates(Algorithm::PS256, Some("r")).count(), 0);
    let set = load(vec![public(&f.p256, json!({}))], &[Algorithm::RS256]);
    assert!(set.is_empty());
    assert_eq!(set.skipped().len(), 1);
}

#[test]
fn jwk_alg_restricts_the_key_to_that_algorithm() {
    let f = fixture();
    let set = load(
        vec![public(&f.rsa, json!({"kid": "r", "alg": "PS256"}))],
        &Algorithm::DEFAULT,
    );
    assert_eq!(set.candidates(Algorithm::PS256, Some("r")).count(), 1);
    assert_eq!(set.candidates(Algorithm::RS256, Some("r")).count(), 0);
}

#[test]
fn unusable_keys_are_skipped_with_a_reason() {
    let f = fixture();
    let rsa = public(&f.rsa, json!({}));
    let ec = public(&f.p256, json!({}));
    let ed = public(&f.ed, json!({}));
    let mut short_n = obj(rsa.clone());
    // 1024-bit modulus (top bit set).
    short_n.insert("n".into(), json!(base64_url(&[0xC5; 128])));
    let mut padded_n = obj(rsa.clone());
    let n = padded_n["n"].as_str().unwrap_or_default().to_owned();
    padded_n.insert("n".into(), json!(format!("{n}=")));
    let mut short_x = obj(ec.clone());
    short_x.insert("x".into(), json!(base64_url(&[1; 31])));
    let mut off_curve = obj(ec.clone());
    off_curve.insert("y".into(), json!(base64_url(&[7; 32])));
    let mut even_e = obj(rsa.clone());
    even_e.insert("e".into(), json!("AQAA"));
    let merge = |base: &Value, extra: Value| {
        let mut m = obj(base.clone());
        m.extend(obj(extra));
        Value::Object(m)
    };
    let cases: Vec<(&str, Value)> = vec![
        ("not an object", json!("key")),
        ("use enc", merge(&ec, json!({"use": "enc"}))),
        ("use not a string", merge(&ec, json!({"use": 1}))),
        (
            "key_ops without verify",
            merge(&ec, json!({"key_ops": ["sign"]})),
        ),
        (
            "private EC key",
            Value::Object(f.p256.to_jwk_private_key().into()),
        ),
        (
            "private RSA key",
            Value::Object(f.rsa.to_jwk_private_key().into()),
        ),
        (
            "private OKP key",
            Value::Object(f.ed.to_jwk_private_key().into()),
        ),
        (
            "oct key",
            json!({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}),
        ),
        ("unknown kty", json!({"kty": "XYZ"})),
        ("no kty", json!({"n": "AQAB", "e": "AQAB"})),
        ("P-521", merge(&ec, json!({"crv": "P-521"}))),
        ("X25519", merge(&ed, json!({"crv": "X25519"}))),
        ("Ed448", merge(&ed, json!({"crv": "Ed448"}))),
        ("alg not allowed", merge(&ec, json!({"alg": "ES512"}))),
        ("alg none", merge(&ec, json!({"alg": "none"}))),
        ("HMAC alg on RSA", merge(&rsa, json!({"alg": "HS256"}))),
        (
            "alg of another key type",
            merge(&rsa, json!({"alg": "ES256"})),
        ),
        ("kid not a string", merge(&ec, json!({"kid": 7}))),
        ("RSA 1024", Value::Object(short_n)),
        ("padded base64", Value::Object(padded_n)),
        ("even exponent", Value::Object(even_e)),
        ("short EC coordinate", Value::Object(short_x)),
        ("point not on curve", Value::Object(off_curve)),
    ];
    for (name, key) in cases {
        let set = load(vec![key], &Algorithm::ALL);
        assert!(set.is_empty(), "{name} was accepted");
        assert_eq!(set.skipped().len(), 1, "{name}");
        assert!(
            set.skipped()[0].starts_with("key[0]"),
            "{name}: {:?}",
            set.skipped()
        );
    }
}

#[test]
fn a_bad_key_does_not_spoil_the_good_ones() {
    let f = fixture();
    let set = load(
        vec![
            json!({"kty": "oct", "k": "AA"}),
            public(&f.p256, json!({"kid": "good"})),
        ],
        &Algorithm::DEFAULT,
    );
    assert_eq!(set.len(), 1);
    assert_eq!(set.skipped().len(), 1);
    assert!(set.has_kid("good"));
}

#[test]
fn cached_verifiers_verify_real_signatures() {
    let f = fixture();
    let set = load(
        vec![
            public(&f.rsa, json!({"kid": "r"})),
            public(&f.p256, json!({"kid": "e"})),
        ],
        &Algorithm::DEFAULT,
    );
    let rs = RS256
        .signer_from_jwk(&f.rsa.to_jwk_private_key())
        .expect("rsa signer");
    let es = ES256
        .signer_from_jwk(&f.p256.to_jwk_private_key())
        .expect("ec signer");
    for (alg, kid, signer) in [
        (Algorithm::RS256, "r", &rs as &dyn JwsSigner),
        (Algorithm::ES256, "e", &es as &dyn JwsSigner),
    ] {
        let sig = signer.sign(b"message").expect("sign");
        let mut c = set.candidates(alg, Some(kid));
        let v = c.next().expect("a verifier");
        assert!(v.verify(b"message", &sig).is_ok());
        assert!(v.verify(b"other", &sig).is_err());
    }
}

#[test]
fn fingerprint_ignores_order_but_sees_key_and_kid_changes() {
    let f = fixture();
    let a = public(&f.p256, json!({"kid": "a"}));
    let b = public(&f.ed, json!({"kid": "b"}));
    let ab = load(vec![a.clone(), b.clone()], &Algorithm::DEFAULT).fingerprint();
    let ba = load(vec![b.clone(), a.clone()], &Algorithm::DEFAULT).fingerprint();
    assert_eq!(ab, ba);
    let renamed = public(&f.ed, json!({"kid": "c"}));
    assert_ne!(
        ab,
        load(vec![a.clone(), renamed], &Algorithm::DEFAULT).fingerprint()
    );
    let other_key = public(&f.p384, json!({"kid": "b"}));
    assert_ne!(
        ab,
        load(vec![a.clone(), other_key], &Algorithm::DEFAULT).fingerprint()
    );
    assert_ne!(ab, load(vec![a], &Algorithm::DEFAULT).fingerprint());
    let rsa = public(&f.rsa, json!({"kid": "r"}));
    let restricted = public(&f.rsa, json!({"kid": "r", "alg": "RS256"}));
    assert_ne!(
        load(vec![rsa], &Algorithm::DEFAULT).fingerprint(),
        load(vec![restricted], &Algorithm::DEFAULT).fingerprint()
    );
}

#[test]
fn debug_output_has_no_key_material() {
    let f = fixture();
    let jwk = public(&f.rsa, json!({"kid": "r"}));
    let n = jwk["n"].as_str().unwrap_or_default().to_owned();
    let set = load(vec![jwk], &Algorithm::DEFAULT);
    let text = format!("{set:?}");
    assert!(text.contains("\"r\""));
    assert!(!text.contains(&n[..20]));
}

#[test]
fn key_count_is_bounded() {
    let f = fixture();
    let keys: Vec<Value> = (0..=MAX_KEYS)
        .map(|i| public(&f.p256, json!({ "kid": format!("k{i}") })))
        .collect();
    let set = load(keys, &Algorithm::DEFAULT);
    assert_eq!(set.len(), MAX_KEYS);
    assert_eq!(set.skipped().len(), 1);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
