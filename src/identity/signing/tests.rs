use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::ecx::{EcxCurve, EcxKeyPair};
use josekit::jwk::alg::ed::{EdCurve, EdKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::{Jwk, KeyPair};
use josekit::jws::{EdDSA, JwsVerifier, ES256, RS256};
use serde_json::{json, Value};

use super::*;

struct Fixture {
    p256: EcKeyPair,
    p384: EcKeyPair,
    ed: EdKeyPair,
    ed448: EdKeyPair,
    rsa: RsaKeyPair,
    rsa1024: RsaKeyPair,
    x25519: EcxKeyPair,
}

fn fx() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        p256: EcKeyPair::generate(EcCurve::P256).expect("p256"),
        p384: EcKeyPair::generate(EcCurve::P384).expect("p384"),
        ed: EdKeyPair::generate(EdCurve::Ed25519).expect("ed25519"),
        ed448: EdKeyPair::generate(EdCurve::Ed448).expect("ed448"),
        rsa: RsaKeyPair::generate(2048).expect("rsa"),
        rsa1024: RsaKeyPair::generate(1024).expect("rsa1024"),
        x25519: EcxKeyPair::generate(EcxCurve::X25519).expect("x25519"),
    })
}

fn pairs() -> [(&'static dyn KeyPair, &'static str); 3] {
    let f = fx();
    [(&f.p256, "ES256"), (&f.ed, "EdDSA"), (&f.rsa, "RS256")]
}

fn verifier(alg: &str, jwk: &Map<String, Value>) -> Box<dyn JwsVerifier> {
    let jwk = Jwk::from_map(jwk.clone()).expect("jwk");
    match alg {
        "ES256" => Box::new(ES256.verifier_from_jwk(&jwk).expect("verifier")),
        "EdDSA" => Box::new(EdDSA.verifier_from_jwk(&jwk).expect("verifier")),
        "RS256" => Box::new(RS256.verifier_from_jwk(&jwk).expect("verifier")),
        other => panic!("unexpected alg {other}"),
    }
}

fn decode_part(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json")
}

fn keys_of(m: &Map<String, Value>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

#[test]
fn loads_each_supported_key_type() {
    for (kp, alg) in pairs() {
        let key = SigningKey::from_pem(&kp.to_pem_private_key(), None).expect(alg);
        assert_eq!(key.alg(), alg);
        let public: Map<String, Value> = kp.to_jwk_public_key().into();
        assert_eq!(key.thumbprint(), thumbprint(&public).expect("thumbprint"));
        assert_eq!(
            key.kid(),
            key.thumbprint(),
            "kid defaults to the thumbprint"
        );
        let jwk = key.public_jwk();
        let expected: &[&str] = match alg {
            "ES256" => &["kty", "crv", "x", "y", "kid", "alg", "use"],
            "EdDSA" => &["kty", "crv", "x", "kid", "alg", "use"],
            _ => &["kty", "n", "e", "kid", "alg", "use"],
        };
        assert_eq!(keys_of(jwk), expected, "{alg}");
        assert_eq!(jwk["alg"], alg);
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], key.kid());
        for member in ["kty", "crv", "x", "y", "n", "e"] {
            assert_eq!(jwk.get(member), public.get(member), "{alg} {member}");
        }
    }
}

#[test]
fn key_id_overrides_the_kid_but_not_the_thumbprint() {
    let key = SigningKey::from_pem(&fx().p256.to_pem_private_key(), Some("2026-11")).expect("key");
    assert_eq!(key.kid(), "2026-11");
    assert_ne!(key.thumbprint(), "2026-11");
    assert_eq!(key.public_jwk()["kid"], "2026-11");
    let err = SigningKey::from_pem(&fx().p256.to_pem_private_key(), Some("")).unwrap_err();
    assert!(err.contains("key_id"), "{err}");
}

#[test]
fn signs_a_compact_jws_with_the_expected_header() {
    for (kp, alg) in pairs() {
        let key = SigningKey::from_pem(&kp.to_pem_private_key(), None).expect(alg);
        let jws = key.sign_compact(br#"{"sub":"alice"}"#).expect("sign");
        let parts: Vec<&str> = jws.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode_part(parts[0]);
        assert_eq!(header, json!({"alg": alg, "kid": key.kid(), "typ": "JWT"}));
        let header_text =
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("utf8");
        assert_eq!(
            header_text,
            format!(r#"{{"alg":"{alg}","kid":"{}","typ":"JWT"}}"#, key.kid())
        );
        assert_eq!(decode_part(parts[1]), json!({"sub": "alice"}));
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
        let signed = format!("{}.{}", parts[0], parts[1]);
        verifier(alg, key.public_jwk())
            .verify(signed.as_bytes(), &signature)
            .expect("the signature verifies with the published JWK");
        if alg == "ES256" {
            assert_eq!(signature.len(), 64, "JOSE r||s, not DER");
        }
    }
}

#[test]
fn debug_shows_no_key_material() {
    let kp = &fx().p256;
    let key = SigningKey::from_pem(&kp.to_pem_private_key(), None).expect("key");
    let debug = format!("{key:?}");
    assert!(
        debug.contains("ES256") && debug.contains(key.kid()),
        "{debug}"
    );
    let private: Map<String, Value> = kp.to_jwk_private_key().into();
    let d = private["d"].as_str().expect("d");
    assert!(!debug.contains(d));
    assert!(!debug.contains("PRIVATE"));
}

#[test]
fn refuses_unsupported_keys_with_a_clear_message() {
    let f = fx();
    let cases: [(Vec<u8>, &str); 5] = [
        (f.p384.to_pem_private_key(), "P-384"),
        (f.ed448.to_pem_private_key(), "Ed448"),
        (f.rsa1024.to_pem_private_key(), "1024 bits"),
        (f.x25519.to_pem_private_key(), "key agreement"),
        (f.p256.to_traditional_pem_private_key(), "PKCS#8"),
    ];
    for (pem, needle) in cases {
        let err = SigningKey::from_pem(&pem, None).unwrap_err();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    for (pem, needle) in [
        (&b"hello"[..], "not a PEM file"),
        (b"\xff\xfe", "not a PEM file"),
        (
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "encrypted",
        ),
        (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n",
            "no END line",
        ),
        (
            b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
            "base64",
        ),
        (
            b"-----BEGIN PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END PRIVATE KEY-----\n",
            "encrypted",
        ),
        (
            b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
            "not a PKCS#8 key",
        ),
    ] {
        let err = SigningKey::from_pem(pem, None).unwrap_err();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let public_only = f.p256.to_pem_public_key();
    let err = SigningKey::from_pem(&public_only, None).unwrap_err();
    assert!(err.contains("PUBLIC KEY"), "{err}");
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p384.pem");
    std::fs::write(&path, fx().p384.to_pem_private_key()).expect("write");
    let err = SigningKey::load(&path, None).unwrap_err();
    assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
    assert!(err.contains("P-384") && err.contains("ES256"), "{err}");
    let missing = dir.path().join("missing.pem");
    let err = SigningKey::load(&missing, None).unwrap_err();
    assert!(
        err.starts_with(&format!("{}: ", missing.display())),
        "{err}"
    );
    let err = public_jwk_from_pem(&missing).unwrap_err();
    assert!(
        err.starts_with(&format!("{}: ", missing.display())),
        "{err}"
    );
}

#[test]
fn a_pem_with_several_blocks_uses_the_key_block() {
    let mut pem = b"# comment\n-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n".to_vec();
    pem.extend(fx().p256.to_pem_private_key());
    let key = SigningKey::from_pem(&pem, None).expect("key");
    assert_eq!(key.alg(), "ES256");
}

#[test]
fn previous_keys_from_public_or_private_pem_match_the_signing_key() {
    for (kp, alg) in pairs() {
        let key = SigningKey::from_pem(&kp.to_pem_private_key(), None).expect(alg);
        let from_public = public_jwk_from_pem_bytes(&kp.to_pem_public_key()).expect(alg);
        let from_private = public_jwk_from_pem_bytes(&kp.to_pem_private_key()).expect(alg);
        assert_eq!(&from_public, key.public_jwk(), "{alg}");
        assert_eq!(&from_private, key.public_jwk(), "{alg}");
        assert_eq!(keys_of(&from_public), keys_of(key.public_jwk()), "{alg}");
    }
}

#[test]
fn previous_keys_are_published_under_their_thumbprint_even_with_a_key_id() {
    let kp = &fx().ed;
    let key = SigningKey::from_pem(&kp.to_pem_private_key(), Some("old-custom")).expect("key");
    let jwk = public_jwk_from_pem_bytes(&kp.to_pem_private_key()).expect("jwk");
    assert_eq!(jwk["kid"], key.thumbprint());
}

#[test]
fn previous_keys_refuse_unsupported_or_malformed_public_keys() {
    let f = fx();
    for (pem, needle) in [
        (f.p384.to_pem_public_key(), "P-384"),
        (f.rsa1024.to_pem_public_key(), "1024 bits"),
        (f.ed448.to_pem_public_key(), "Ed448"),
        (f.x25519.to_pem_public_key(), "key agreement"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            "CERTIFICATE",
        ),
    ] {
        let err = public_jwk_from_pem_bytes(&pem).unwrap_err();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // A P-256 SPKI whose point is not on the curve.
    let good = f.p256.to_der_public_key();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&bad)
    );
    assert!(public_jwk_from_pem_bytes(pem.as_bytes()).is_err());
    // Truncated.
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&good[..good.len() - 5])
    );
    assert!(public_jwk_from_pem_bytes(pem.as_bytes()).is_err());
}

#[test]
fn der_helpers_handle_edge_cases() {
    assert_eq!(tlv(&[]), None);
    assert_eq!(tlv(&[0x30]), None);
    assert_eq!(tlv(&[0x30, 0x03, 1, 2]), None, "length beyond the input");
    assert_eq!(tlv(&[0x30, 0x80]), None, "indefinite length");
    assert_eq!(tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]), None, "length of 5 bytes");
    assert_eq!(
        tlv(&[0x02, 0x81, 0x02, 7, 8, 9]),
        Some((0x02, &[7u8, 8][..], &[9u8][..]))
    );
    assert_eq!(unsigned(&[0, 0, 0x80]), &[0x80]);
    assert_eq!(unsigned(&[0]), &[0]);
    assert_eq!(unsigned(&[]), &[] as &[u8]);
    assert_eq!(spki_key_bits(&[0x30, 0x00]), None);
}

#[test]
fn crlf_line_endings_are_accepted() {
    let pem = String::from_utf8(fx().ed.to_pem_private_key()).expect("utf8");
    let crlf = pem.replace('\n', "\r\n");
    let a = SigningKey::from_pem(pem.as_bytes(), None).expect("lf");
    let b = SigningKey::from_pem(crlf.as_bytes(), None).expect("crlf");
    assert_eq!(a.kid(), b.kid());
}
