//! One test per verification rule. Tokens are built by hand (JSON, base64url, josekit signers)
//! so that any malformed variant can be produced byte by byte.

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::ed::{EdCurve, EdKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::KeyPair;
use josekit::jws::{EdDSA, JwsSigner, ES256, ES384, HS256, HS384, HS512, PS256, RS256};
use serde_json::{json, Map, Value};

use super::{hmac_verify, parse, verify, JwtError};
use crate::config::model::{Algorithm, Issuer, Secret};
use crate::token::claims::Claims;
use crate::token::keys::KeySet;

const ISS: &str = "https://idp.example.com/";
const AUD: &str = "orders-api";
const NOW: i64 = 1_700_000_000;
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Keys {
    rsa: RsaKeyPair,
    p256: EcKeyPair,
    p256_other: EcKeyPair,
    p384: EcKeyPair,
    ed: EdKeyPair,
    /// Issuer B's key, published under the same kid as issuer A's P-256 key.
    b_p256: EcKeyPair,
    /// Issuer A's key set: every key above except `b_p256`.
    set_a: KeySet,
    set_b: KeySet,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let rsa = RsaKeyPair::generate(2048).expect("rsa");
        let p256 = EcKeyPair::generate(EcCurve::P256).expect("p256");
        let p256_other = EcKeyPair::generate(EcCurve::P256).expect("p256");
        let p384 = EcKeyPair::generate(EcCurve::P384).expect("p384");
        let ed = EdKeyPair::generate(EdCurve::Ed25519).expect("ed25519");
        let b_p256 = EcKeyPair::generate(EcCurve::P256).expect("p256");
        let set_a = key_set(&[
            (&rsa, "rsa-1"),
            (&p256, "ec-256"),
            (&p256_other, "ec-256-b"),
            (&p384, "ec-384"),
            (&ed, "ed-1"),
        ]);
        let set_b = key_set(&[(&b_p256, "ec-256")]);
        Keys {
            rsa,
            p256,
            p256_other,
            p384,
            ed,
            b_p256,
            set_a,
            set_b,
        }
    })
}

fn key_set(pairs: &[(&dyn KeyPair, &str)]) -> KeySet {
    let jwks: Vec<Value> = pairs
        .iter()
        .map(|(kp, kid)| {
            let mut m: Map<String, Value> = kp.to_jwk_public_key().into();
            m.insert("kid".into(), json!(kid));
            m.insert("use".into(), json!("sig"));
            Value::Object(m)
        })
        .collect();
    let doc = serde_json::to_vec(&json!({ "keys": jwks })).expect("json");
    let set = KeySet::from_jwks(&doc, &Algorithm::DEFAULT).expect("jwks");
    assert!(set.skipped().is_empty(), "{:?}", set.skipped());
    set
}

fn issuer() -> Issuer {
    Issuer {
        id: "corp".into(),
        issuer: ISS.into(),
        jwks_uri: None,
        userinfo_endpoint: None,
        audiences: vec![AUD.into()],
        algorithms: Algorithm::DEFAULT.to_vec(),
        clock_skew: Duration::from_secs(60),
        fetch_timeout: Duration::from_secs(5),
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

fn hmac_issuer(secret: &str) -> Issuer {
    let mut i = issuer();
    i.algorithms
        .extend([Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]);
    i.hmac_secret = Some(Secret(secret.into()));
    i
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn claims() -> Value {
    json!({ "iss": ISS, "aud": AUD, "sub": "user-1", "exp": NOW + 300, "iat": NOW })
}

fn with(base: Value, extra: Value) -> Value {
    let (Value::Object(mut m), Value::Object(extra)) = (base, extra) else {
        panic!("objects only");
    };
    m.extend(extra);
    Value::Object(m)
}

fn without(base: Value, name: &str) -> Value {
    let Value::Object(mut m) = base else {
        panic!("objects only");
    };
    m.shift_remove(name);
    Value::Object(m)
}

/// A token over exactly these header and payload bytes.
fn sign_raw(header: &[u8], payload: &[u8], signer: &dyn JwsSigner) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = signer.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", b64(&sig))
}

fn sign(header: Value, payload: Value, signer: &dyn JwsSigner) -> String {
    sign_raw(
        header.to_string().as_bytes(),
        payload.to_string().as_bytes(),
        signer,
    )
}

fn rs256() -> Box<dyn JwsSigner> {
    Box::new(
        RS256
            .signer_from_jwk(&keys().rsa.to_jwk_private_key())
            .expect("signer"),
    )
}

fn es256(kp: &EcKeyPair) -> Box<dyn JwsSigner> {
    Box::new(
        ES256
            .signer_from_jwk(&kp.to_jwk_private_key())
            .expect("signer"),
    )
}

/// A valid RS256 token for issuer A with these claims.
fn rs_token(payload: Value) -> String {
    sign(
        json!({"alg": "RS256", "kid": "rsa-1"}),
        payload,
        rs256().as_ref(),
    )
}

fn check_with(token: &str, issuer: &Issuer, keys: Option<&KeySet>) -> Result<Claims, JwtError> {
    let parsed = parse(token)?;
    verify(&parsed, keys, issuer, NOW)
}

fn check(token: &str) -> Result<Claims, JwtError> {
    check_with(token, &issuer(), Some(&keys().set_a))
}

fn malformed(r: Result<Claims, JwtError>) -> bool {
    matches!(r, Err(JwtError::Malformed(_)))
}

// ---- accepted tokens -------------------------------------------------------------------------

#[test]
fn rs256_token_verifies_and_returns_the_claims() {
    let verified = check(&rs_token(claims())).expect("valid");
    assert_eq!(verified.get("sub"), Some(&json!("user-1")));
    let token = rs_token(claims());
    let parsed = parse(&token).expect("parse");
    assert_eq!(parsed.unverified_issuer(), Some(ISS));
    assert_eq!(parsed.kid(), Some("rsa-1"));
    assert_eq!(parsed.alg(), Algorithm::RS256);
}

#[test]
fn ps256_token_verifies() {
    let signer = PS256
        .signer_from_jwk(&keys().rsa.to_jwk_private_key())
        .expect("signer");
    let t = sign(json!({"alg": "PS256", "kid": "rsa-1"}), claims(), &signer);
    assert!(check(&t).is_ok());
}

#[test]
fn es256_token_verifies() {
    let t = sign(
        json!({"alg": "ES256", "kid": "ec-256"}),
        claims(),
        es256(&keys().p256).as_ref(),
    );
    assert!(check(&t).is_ok());
}

#[test]
fn es384_token_verifies() {
    let signer = ES384
        .signer_from_jwk(&keys().p384.to_jwk_private_key())
        .expect("signer");
    let t = sign(json!({"alg": "ES384", "kid": "ec-384"}), claims(), &signer);
    assert!(check(&t).is_ok());
}

#[test]
fn eddsa_token_verifies() {
    let signer = EdDSA
        .signer_from_jwk(&keys().ed.to_jwk_private_key())
        .expect("signer");
    let t = sign(json!({"alg": "EdDSA", "kid": "ed-1"}), claims(), &signer);
    assert!(check(&t).is_ok());
}

#[test]
fn token_without_kid_is_verified_against_the_matching_key_among_several() {
    // Two P-256 keys in the set: the second one signed.
    let t = sign(
        json!({"alg": "ES256"}),
        claims(),
        es256(&keys().p256_other).as_ref(),
    );
    assert!(check(&t).is_ok());
    let t = sign(
        json!({"alg": "ES256"}),
        claims(),
        es256(&keys().p256).as_ref(),
    );
    assert!(check(&t).is_ok());
}

#[test]
fn hmac_tokens_verify_with_the_configured_secret() {
    let issuer = hmac_issuer(SECRET);
    let signers: [(&str, Box<dyn JwsSigner>); 3] = [
        (
            "HS256",
            Box::new(HS256.signer_from_bytes(SECRET).expect("hs256")),
        ),
        (
            "HS384",
            Box::new(HS384.signer_from_bytes(SECRET).expect("hs384")),
        ),
        (
            "HS512",
            Box::new(HS512.signer_from_bytes(SECRET).expect("hs512")),
        ),
    ];
    for (alg, signer) in signers {
        let t = sign(json!({ "alg": alg }), claims(), signer.as_ref());
        assert!(check_with(&t, &issuer, None).is_ok(), "{alg}");
        // A key set is irrelevant to HS*.
        assert!(
            check_with(&t, &issuer, Some(&keys().set_a)).is_ok(),
            "{alg}"
        );
    }
}

#[test]
fn hmac_matches_the_rfc7515_appendix_a1_example() {
    let key = URL_SAFE_NO_PAD
        .decode(
            "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
        )
        .expect("key");
    let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let parsed = parse(token).expect("parse");
    assert_eq!(parsed.alg(), Algorithm::HS256);
    let sig = parsed.signature().to_vec();
    let input = parsed.signing_input().as_bytes();
    assert_eq!(hmac_verify(Algorithm::HS256, &key, input, &sig), Ok(()));
    let mut bad = sig.clone();
    bad[31] ^= 1;
    assert_eq!(
        hmac_verify(Algorithm::HS256, &key, input, &bad),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        hmac_verify(Algorithm::HS256, &key, input, &sig[..31]),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn hmac_secret_shorter_than_the_hash_refuses_that_alg() {
    let short = "0123456789abcdef0123456789abcdef"; // 32 bytes: enough for HS256 only
    let issuer = hmac_issuer(short);
    let signer = HS384.signer_from_bytes(SECRET).expect("hs384");
    let t = sign(json!({"alg": "HS384"}), claims(), &signer);
    assert_eq!(
        check_with(&t, &issuer, None),
        Err(JwtError::Algorithm("HS384".into()))
    );
    let signer = HS256.signer_from_bytes(short).expect("hs256");
    let t = sign(json!({"alg": "HS256"}), claims(), &signer);
    assert!(check_with(&t, &issuer, None).is_ok());
}

// ---- header rules ----------------------------------------------------------------------------

#[test]
fn alg_outside_the_issuer_allow_list_is_rejected() {
    let mut issuer = issuer();
    issuer.algorithms = vec![Algorithm::ES256];
    assert_eq!(
        check_with(&rs_token(claims()), &issuer, Some(&keys().set_a)),
        Err(JwtError::Algorithm("RS256".into()))
    );
}

#[test]
fn none_and_case_variants_of_alg_are_rejected() {
    for alg in [
        "none", "None", "NONE", "rs256", "Rs256", "RS256 ", "ES512", "", "HS256",
    ] {
        // A non-empty signature, so the alg rule (not the empty-part rule) is what fails.
        let t = sign(json!({ "alg": alg }), claims(), rs256().as_ref());
        let r = check(&t);
        assert!(matches!(r, Err(JwtError::Algorithm(_))), "{alg:?}: {r:?}");
    }
    // The classic unsigned token has an empty signature part.
    let t = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(claims().to_string().as_bytes())
    );
    assert!(malformed(check(&t)));
}

#[test]
fn alg_missing_or_not_a_string_is_malformed() {
    for header in [
        json!({}),
        json!({"alg": null}),
        json!({"alg": ["RS256"]}),
        json!({"alg": 1}),
    ] {
        let t = sign(header.clone(), claims(), rs256().as_ref());
        assert!(malformed(check(&t)), "{header}");
    }
}

#[test]
fn hmac_alg_needs_a_configured_secret() {
    let mut issuer = issuer();
    issuer.algorithms.push(Algorithm::HS256);
    let signer = HS256.signer_from_bytes(SECRET).expect("hs256");
    let t = sign(json!({"alg": "HS256"}), claims(), &signer);
    assert_eq!(
        check_with(&t, &issuer, Some(&keys().set_a)),
        Err(JwtError::Algorithm("HS256".into()))
    );
}

/// The RSA public key (as anyone can download it) used as the HMAC secret.
fn key_confusion_tokens() -> Vec<String> {
    let rsa = &keys().rsa;
    let n = rsa.to_jwk_public_key();
    let n = n
        .parameter("n")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let secrets: Vec<Vec<u8>> = vec![
        rsa.to_pem_public_key(),
        rsa.to_der_public_key(),
        rsa.to_traditional_pem_public_key(),
        n.into_bytes(),
    ];
    secrets
        .iter()
        .map(|secret| {
            let signer = HS256.signer_from_bytes(secret).expect("hs256");
            sign(json!({"alg": "HS256", "kid": "rsa-1"}), claims(), &signer)
        })
        .collect()
}

#[test]
fn rsa_public_key_as_hmac_secret_is_rejected_when_hs256_is_not_allowed() {
    for t in key_confusion_tokens() {
        assert_eq!(check(&t), Err(JwtError::Algorithm("HS256".into())));
    }
}

#[test]
fn rsa_public_key_as_hmac_secret_is_rejected_when_hs256_uses_another_secret() {
    let issuer = hmac_issuer(SECRET);
    for t in key_confusion_tokens() {
        assert_eq!(
            check_with(&t, &issuer, Some(&keys().set_a)),
            Err(JwtError::BadSignature)
        );
    }
}

#[test]
fn crit_in_any_form_is_rejected() {
    for crit in [
        json!(["exp"]),
        json!("exp"),
        json!([]),
        json!(null),
        json!({}),
        json!(["b64"]),
    ] {
        let header = json!({"alg": "RS256", "kid": "rsa-1", "crit": crit.clone(), "exp": 1});
        let t = sign(header, claims(), rs256().as_ref());
        assert_eq!(check(&t), Err(JwtError::Crit), "crit: {crit}");
    }
}

#[test]
fn jku_x5u_jwk_x5c_are_ignored() {
    let attacker = EcKeyPair::generate(EcCurve::P256).expect("p256");
    let mut jwk: Map<String, Value> = attacker.to_jwk_public_key().into();
    jwk.insert("kid".into(), json!("ec-256"));
    let header = json!({
        "alg": "ES256",
        "kid": "ec-256",
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "jwk": jwk,
        "x5c": [STANDARD.encode(b"not a certificate")],
    });
    // Signed by the key the header points to: refused.
    let t = sign(header.clone(), claims(), es256(&attacker).as_ref());
    assert_eq!(check(&t), Err(JwtError::BadSignature));
    let t = sign(
        without(header.clone(), "kid"),
        claims(),
        es256(&attacker).as_ref(),
    );
    assert_eq!(check(&t), Err(JwtError::BadSignature));
    // Signed by the issuer's key: those members change nothing.
    let t = sign(header, claims(), es256(&keys().p256).as_ref());
    assert!(check(&t).is_ok());
}

#[test]
fn typ_is_compared_case_insensitively_without_application_prefix() {
    let mut issuer = issuer();
    issuer.require_typ = Some("at+jwt".into());
    let typed = |typ: Value| {
        let t = sign(
            json!({"alg": "RS256", "kid": "rsa-1", "typ": typ}),
            claims(),
            rs256().as_ref(),
        );
        check_with(&t, &issuer, Some(&keys().set_a))
    };
    for ok in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/At+JWT",
    ] {
        assert!(typed(json!(ok)).is_ok(), "{ok}");
    }
    for bad in [
        json!("JWT"),
        json!("text/at+jwt"),
        json!("at+jwt "),
        json!(""),
        json!(1),
        json!(null),
    ] {
        assert_eq!(typed(bad.clone()), Err(JwtError::Typ), "{bad}");
    }
    let t = rs_token(claims());
    assert_eq!(
        check_with(&t, &issuer, Some(&keys().set_a)),
        Err(JwtError::Typ)
    );
}

#[test]
fn typ_is_ignored_when_not_required() {
    let t = sign(
        json!({"alg": "RS256", "kid": "rsa-1", "typ": "whatever"}),
        claims(),
        rs256().as_ref(),
    );
    assert!(check(&t).is_ok());
}

// ---- key selection and signatures ------------------------------------------------------------

#[test]
fn kid_limits_candidates_to_that_key() {
    // Signed with the second P-256 key but naming the first one.
    let t = sign(
        json!({"alg": "ES256", "kid": "ec-256"}),
        claims(),
        es256(&keys().p256_other).as_ref(),
    );
    assert_eq!(check(&t), Err(JwtError::BadSignature));
}

#[test]
fn unknown_kid_is_reported_so_the_caller_can_refresh() {
    let t = sign(
        json!({"alg": "ES256", "kid": "rotated"}),
        claims(),
        es256(&keys().p256).as_ref(),
    );
    assert_eq!(check(&t), Err(JwtError::UnknownKid));
}

#[test]
fn kidless_token_without_a_fitting_key_is_unknown_kid() {
    let set = key_set(&[(&keys().ed, "ed-1")]);
    let t = sign(
        json!({"alg": "ES256"}),
        claims(),
        es256(&keys().p256).as_ref(),
    );
    assert_eq!(
        check_with(&t, &issuer(), Some(&set)),
        Err(JwtError::UnknownKid)
    );
}

#[test]
fn issuer_without_key_set_is_no_keys() {
    assert_eq!(
        check_with(&rs_token(claims()), &issuer(), None),
        Err(JwtError::NoKeys)
    );
}

#[test]
fn es256_header_with_an_rsa_keys_kid_fails() {
    let t = sign(
        json!({"alg": "ES256", "kid": "rsa-1"}),
        claims(),
        es256(&keys().p256).as_ref(),
    );
    assert_eq!(check(&t), Err(JwtError::Algorithm("ES256".into())));
    // And the RSA signature itself relabelled as ES256.
    let rs = rs_token(claims());
    let sig = rs.rsplit('.').next().unwrap_or_default();
    let t = format!(
        "{}.{}.{sig}",
        b64(br#"{"alg":"ES256","kid":"rsa-1"}"#),
        b64(claims().to_string().as_bytes())
    );
    assert_eq!(check(&t), Err(JwtError::Algorithm("ES256".into())));
}

#[test]
fn es384_token_with_a_p256_key_fails() {
    // An ES256 signature by the P-256 key, labelled ES384 and naming that key.
    let t = sign(
        json!({"alg": "ES384", "kid": "ec-256"}),
        claims(),
        es256(&keys().p256).as_ref(),
    );
    assert_eq!(check(&t), Err(JwtError::Algorithm("ES384".into())));
    // Without kid only the P-384 key is a candidate, and it does not match.
    let t = sign(
        json!({"alg": "ES384"}),
        claims(),
        es256(&keys().p256).as_ref(),
    );
    assert_eq!(check(&t), Err(JwtError::BadSignature));
}

#[test]
fn token_of_issuer_a_claiming_issuer_b_fails_against_b_keys() {
    let mut b = issuer();
    b.id = "partner".into();
    b.issuer = "https://partner.example.com/".into();
    let payload = with(claims(), json!({"iss": "https://partner.example.com/"}));
    let t = sign(
        json!({"alg": "ES256", "kid": "ec-256"}),
        payload.clone(),
        es256(&keys().p256).as_ref(),
    );
    assert_eq!(
        check_with(&t, &b, Some(&keys().set_b)),
        Err(JwtError::BadSignature)
    );
    let t = sign(
        json!({"alg": "ES256"}),
        payload.clone(),
        es256(&keys().p256).as_ref(),
    );
    assert_eq!(
        check_with(&t, &b, Some(&keys().set_b)),
        Err(JwtError::BadSignature)
    );
    // B's own key does sign valid B tokens.
    let t = sign(
        json!({"alg": "ES256", "kid": "ec-256"}),
        payload,
        es256(&keys().b_p256).as_ref(),
    );
    assert!(check_with(&t, &b, Some(&keys().set_b)).is_ok());
}

#[test]
fn tampered_payload_fails_the_signature() {
    let t = rs_token(claims());
    let parts: Vec<&str> = t.split('.').collect();
    let forged = b64(with(claims(), json!({"sub": "admin"}))
        .to_string()
        .as_bytes());
    let t = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_eq!(check(&t), Err(JwtError::BadSignature));
}

/// `(r, s)` as a DER `SEQUENCE { INTEGER r, INTEGER s }`.
fn der_signature(raw: &[u8]) -> Vec<u8> {
    let int = |bytes: &[u8]| {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        let mut v = trimmed;
        if v.first().is_none_or(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[test]
fn es256_signature_in_der_form_is_rejected() {
    let t = sign(
        json!({"alg": "ES256", "kid": "ec-256"}),
        claims(),
        es256(&keys().p256).as_ref(),
    );
    let (input, sig) = t.rsplit_once('.').unwrap_or_default();
    let raw = URL_SAFE_NO_PAD.decode(sig).expect("sig");
    assert_eq!(raw.len(), 64);
    let der = format!("{input}.{}", b64(&der_signature(&raw)));
    assert_eq!(check(&der), Err(JwtError::BadSignature));
}

#[test]
fn es256_zero_signature_is_rejected() {
    let t = sign(
        json!({"alg": "ES256", "kid": "ec-256"}),
        claims(),
        es256(&keys().p256).as_ref(),
    );
    let (input, _) = t.rsplit_once('.').unwrap_or_default();
    assert_eq!(
        check(&format!("{input}.{}", b64(&[0; 64]))),
        Err(JwtError::BadSignature)
    );
    let rs = rs_token(claims());
    let (input, _) = rs.rsplit_once('.').unwrap_or_default();
    assert_eq!(
        check(&format!("{input}.{}", b64(&[0; 256]))),
        Err(JwtError::BadSignature)
    );
}

// ---- shape and encoding ----------------------------------------------------------------------

#[test]
fn exactly_three_parts_are_required() {
    let t = rs_token(claims());
    let parts: Vec<&str> = t.split('.').collect();
    for bad in [
        parts[0].to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{t}.{}", parts[2]),
        format!("{t}."),
        format!(
            "{}.{}.{}.{}.{}",
            parts[0], "AA", parts[1], parts[1], parts[2]
        ),
        String::new(),
    ] {
        assert!(malformed(check(&bad)), "{bad}");
    }
}

#[test]
fn empty_parts_are_malformed() {
    let t = rs_token(claims());
    let p: Vec<&str> = t.split('.').collect();
    for bad in [
        format!(".{}.{}", p[1], p[2]),
        format!("{}..{}", p[0], p[2]),
        format!("{}.{}.", p[0], p[1]),
        "..".to_owned(),
    ] {
        assert_eq!(check(&bad), Err(JwtError::Malformed("empty part")), "{bad}");
    }
}

/// The same part with the lowest bit of its last character set: non-canonical trailing bits.
fn with_trailing_bits(part: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert_ne!(part.len() % 4, 0, "needs a partial final quantum");
    let last = part.as_bytes()[part.len() - 1];
    let index = ALPHABET.iter().position(|&c| c == last).unwrap_or(0);
    let mut s = part[..part.len() - 1].to_owned();
    s.push(ALPHABET[index | 1] as char);
    s
}

#[test]
fn base64url_must_be_strict() {
    let header = br#"{"alg":"RS256","kid":"rsa-1"}"#; // 29 bytes: partial final quantum
    let t = sign_raw(header, claims().to_string().as_bytes(), rs256().as_ref());
    assert!(check(&t).is_ok());
    let p: Vec<&str> = t.split('.').collect();
    assert_ne!(p[2].len() % 4, 0);
    let padded = |s: &str| format!("{s}{}", "=".repeat((4 - s.len() % 4) % 4));
    let std_alphabet = |s: &str| s.replace('-', "+").replace('_', "/");
    let bad_parts = [
        [padded(p[0]), p[1].into(), p[2].into()],
        [p[0].into(), p[1].into(), padded(p[2])],
        [with_trailing_bits(p[0]), p[1].into(), p[2].into()],
        [p[0].into(), p[1].into(), with_trailing_bits(p[2])],
        [format!(" {}", p[0]), p[1].into(), p[2].into()],
        [p[0].into(), format!("{}\n", p[1]), p[2].into()],
        [p[0].into(), p[1].into(), format!("{} ", p[2])],
        [format!("{}*", p[0]), p[1].into(), p[2].into()],
        [p[0].into(), format!("{}A", p[1]), p[2].into()],
    ];
    for [h, pl, s] in &bad_parts {
        assert!(malformed(check(&format!("{h}.{pl}.{s}"))), "{h}.{pl}.{s}");
    }
    // `+`/`/` instead of `-`/`_`, in a signature that has some.
    let sig = (0..20)
        .map(|i| rs_token(with(claims(), json!({ "n": i }))))
        .find(|t| t.rsplit('.').next().is_some_and(|s| s.contains(['-', '_'])))
        .expect("a signature with - or _");
    let (input, s) = sig.rsplit_once('.').unwrap_or_default();
    assert!(malformed(check(&format!("{input}.{}", std_alphabet(s)))));
}

#[test]
fn header_and_payload_must_be_json_objects() {
    let signer = rs256();
    let header = br#"{"alg":"RS256","kid":"rsa-1"}"#;
    let payload = claims().to_string();
    for bad in [
        &b"[]"[..],
        b"\"RS256\"",
        b"1",
        b"null",
        b"{",
        b"{} {}",
        b"{\"alg\":\"RS256\"}x",
        b"\xff",
    ] {
        let t = sign_raw(bad, payload.as_bytes(), signer.as_ref());
        assert!(
            malformed(check(&t)),
            "header {:?}",
            String::from_utf8_lossy(bad)
        );
        let t = sign_raw(header, bad, signer.as_ref());
        assert!(
            malformed(check(&t)),
            "payload {:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn duplicate_member_names_are_malformed() {
    let signer = rs256();
    let payload = claims().to_string();
    let t = sign_raw(
        br#"{"alg":"RS256","kid":"rsa-1","alg":"none"}"#,
        payload.as_bytes(),
        signer.as_ref(),
    );
    assert!(malformed(check(&t)));
    let dup = format!(r#"{{"iss":"https://evil.example/",{}"#, &payload[1..]);
    let t = sign_raw(
        br#"{"alg":"RS256","kid":"rsa-1"}"#,
        dup.as_bytes(),
        signer.as_ref(),
    );
    assert!(malformed(check(&t)));
}

#[test]
fn kid_must_be_a_string() {
    for kid in [json!(1), json!(null), json!(["rsa-1"])] {
        let t = sign(
            json!({"alg": "RS256", "kid": kid}),
            claims(),
            rs256().as_ref(),
        );
        assert!(malformed(check(&t)));
    }
}

// ---- claims ----------------------------------------------------------------------------------

#[test]
fn exp_is_required() {
    assert_eq!(
        check(&rs_token(without(claims(), "exp"))),
        Err(JwtError::MissingExp)
    );
}

#[test]
fn exp_must_be_a_numeric_date() {
    for exp in [
        json!("1700000300"),
        json!(null),
        json!(-1),
        json!(true),
        json!(1e20),
    ] {
        let r = check(&rs_token(with(claims(), json!({ "exp": exp.clone() }))));
        assert!(malformed(r), "{exp}");
    }
    assert!(check(&rs_token(with(claims(), json!({"exp": NOW as f64 + 10.5})))).is_ok());
}

#[test]
fn expired_token_is_accepted_only_within_clock_skew() {
    let at = |exp: i64| check(&rs_token(with(claims(), json!({ "exp": exp }))));
    assert!(at(NOW + 1).is_ok());
    assert!(at(NOW - 59).is_ok());
    assert_eq!(at(NOW - 60), Err(JwtError::Expired));
    assert_eq!(at(NOW - 3600), Err(JwtError::Expired));
    assert_eq!(at(0), Err(JwtError::Expired));
}

#[test]
fn nbf_in_the_future_beyond_clock_skew_is_rejected() {
    let at = |nbf: Value| check(&rs_token(with(claims(), json!({ "nbf": nbf }))));
    assert!(at(json!(NOW + 60)).is_ok());
    assert_eq!(at(json!(NOW + 61)), Err(JwtError::NotYetValid));
    assert_eq!(at(json!(NOW as f64 + 60.5)), Err(JwtError::NotYetValid));
    assert!(malformed(at(json!("now"))));
    assert!(malformed(at(json!(null))));
}

#[test]
fn iat_in_the_future_beyond_clock_skew_is_rejected() {
    let at = |iat: Value| check(&rs_token(with(claims(), json!({ "iat": iat }))));
    assert!(at(json!(NOW + 60)).is_ok());
    assert_eq!(at(json!(NOW + 61)), Err(JwtError::IssuedInFuture));
    assert!(malformed(at(json!("1700000000"))));
    assert!(check(&rs_token(without(claims(), "iat"))).is_ok());
}

#[test]
fn iss_must_equal_the_issuer_byte_for_byte() {
    for iss in [
        "https://idp.example.com",
        "https://idp.example.com//",
        "https://IDP.example.com/",
        "https://idp.example.com/x",
        "https://idp.example.com/ ",
        "http://idp.example.com/",
        "",
    ] {
        let r = check(&rs_token(with(claims(), json!({ "iss": iss }))));
        assert_eq!(r, Err(JwtError::WrongIssuer), "{iss:?}");
    }
    assert_eq!(
        check(&rs_token(without(claims(), "iss"))),
        Err(JwtError::WrongIssuer)
    );
    assert!(malformed(check(&rs_token(with(
        claims(),
        json!({"iss": [ISS]})
    )))));
}

#[test]
fn aud_must_contain_a_configured_audience() {
    let at = |aud: Value| check(&rs_token(with(claims(), json!({ "aud": aud }))));
    assert!(at(json!(AUD)).is_ok());
    assert!(at(json!(["other", AUD])).is_ok());
    assert_eq!(at(json!("other")), Err(JwtError::WrongAudience));
    assert_eq!(at(json!("Orders-API")), Err(JwtError::WrongAudience));
    assert_eq!(at(json!([])), Err(JwtError::WrongAudience));
    assert_eq!(
        check(&rs_token(without(claims(), "aud"))),
        Err(JwtError::WrongAudience)
    );
    assert!(malformed(at(json!(1))));
    assert!(malformed(at(json!([AUD, 1]))));
    assert!(malformed(at(json!({ "aud": AUD }))));
}

#[test]
fn allow_any_audience_skips_the_audience_check_but_not_its_type() {
    let mut issuer = issuer();
    issuer.allow_any_audience = true;
    issuer.audiences.clear();
    let run = |payload| check_with(&rs_token(payload), &issuer, Some(&keys().set_a));
    assert!(run(claims()).is_ok());
    assert!(run(with(claims(), json!({"aud": "anything"}))).is_ok());
    assert!(run(without(claims(), "aud")).is_ok());
    assert!(malformed(run(with(claims(), json!({"aud": 7})))));
}

// ---- robustness and error text ---------------------------------------------------------------

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn a_flood_of_malformed_input_never_panics_or_verifies() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let valid = rs_token(claims());
    let pieces = [
        "eyJ", ".", "=", "+", "/", "-", "_", "A", "\u{e9}", " ", "\"", "{", "}",
    ];
    let issuers = [issuer(), hmac_issuer(SECRET)];
    for i in 0..1000 {
        let input: String = match i % 4 {
            // Arbitrary bytes (made UTF-8 lossily).
            0 => {
                let len = rng.below(200);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            // Token-ish fragments.
            1 => (0..rng.below(60))
                .map(|_| pieces[rng.below(pieces.len())])
                .collect(),
            // Three parts of random JSON-ish or random base64url.
            2 => {
                let part = |rng: &mut Rng| {
                    let len = rng.below(40);
                    let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    match rng.below(3) {
                        0 => b64(&bytes),
                        1 => b64(format!(
                            "{{\"alg\":\"{}\",\"exp\":{}}}",
                            ["RS256", "ES256", "HS256", "none"][rng.below(4)],
                            rng.next() as i64
                        )
                        .as_bytes()),
                        _ => b64(b"{\"alg\":\"EdDSA\",\"crit\":[]}"),
                    }
                };
                format!("{}.{}.{}", part(&mut rng), part(&mut rng), part(&mut rng))
            }
            // A valid token with one character replaced.
            _ => {
                let mut bytes = valid.clone().into_bytes();
                let at = rng.below(bytes.len());
                let old = bytes[at];
                let mut new = b"ABCxyz019-_.=+/ "[rng.below(16)];
                if new == old {
                    new = if old == b'A' { b'B' } else { b'A' };
                }
                bytes[at] = new;
                String::from_utf8_lossy(&bytes).into_owned()
            }
        };
        for issuer in &issuers {
            if let Ok(parsed) = parse(&input) {
                let _ = parsed.unverified_issuer();
                let r = verify(&parsed, Some(&keys().set_a), issuer, NOW);
                assert!(r.is_err(), "input {i} verified: {input:?}");
            }
        }
    }
}

#[test]
fn alg_names_in_errors_are_sanitized() {
    for (alg, shown) in [
        ("none", "none"),
        ("<script>", "(unrecognized)"),
        ("RS256\"", "(unrecognized)"),
        (
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "(unrecognized)",
        ),
        ("", "(unrecognized)"),
        ("r\u{e9}s", "(unrecognized)"),
    ] {
        let t = sign(json!({ "alg": alg }), claims(), rs256().as_ref());
        assert_eq!(check(&t), Err(JwtError::Algorithm(shown.into())), "{alg:?}");
    }
    // Even a hand-built variant cannot smuggle text into the description.
    let e = JwtError::Algorithm("x\" y".into());
    assert!(!e.description().contains('"'));
}

#[test]
fn descriptions_and_reasons_are_plain_and_never_echo_claims() {
    let all = [
        JwtError::Malformed("header has no alg"),
        JwtError::algorithm("PS512"),
        JwtError::UnknownKid,
        JwtError::NoKeys,
        JwtError::BadSignature,
        JwtError::Crit,
        JwtError::Typ,
        JwtError::MissingExp,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::IssuedInFuture,
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
    ];
    for e in &all {
        let d = e.description();
        assert!(d.is_ascii() && !d.contains(['"', '\\', '\r', '\n']), "{d}");
        assert_eq!(e.to_string(), d);
        assert!(e
            .reason()
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_'));
    }
    assert_eq!(JwtError::Expired.reason().as_str(), "expired");
    assert_eq!(JwtError::BadSignature.reason().as_str(), "bad_signature");
    assert_eq!(JwtError::UnknownKid.reason().as_str(), "unknown_kid");
    assert_eq!(JwtError::WrongIssuer.reason().as_str(), "wrong_issuer");
    assert_eq!(JwtError::WrongAudience.reason().as_str(), "wrong_audience");
    assert_eq!(JwtError::NotYetValid.reason().as_str(), "not_yet_valid");
    assert_eq!(JwtError::Malformed("x").reason().as_str(), "malformed");
    // A rejected token's claim values do not appear in the error.
    let secret_sub = "user-with-a-very-identifiable-name";
    let t = rs_token(with(
        claims(),
        json!({"sub": secret_sub, "aud": secret_sub}),
    ));
    let e = check(&t).expect_err("wrong audience");
    assert!(!e.description().contains(secret_sub));
    assert!(!format!("{e:?}").contains(secret_sub));
    let parsed = parse(&t).expect("parse");
    assert!(!format!("{parsed:?}").contains(secret_sub));
}

// ---- which key verified (`check_signed`, for `tokengate explain`) ----------------------------

#[test]
fn check_signed_names_the_key_that_verified_the_signature() {
    let set = &keys().set_a;
    let signed_by = |token: &str| {
        let parsed = parse(token).expect("parse");
        super::check_signed(
            &parsed,
            Some(set),
            &issuer(),
            NOW,
            super::Profile::AccessToken,
        )
    };
    // Without a kid, the second P-256 key of the set verifies: its index is reported.
    let t = sign(
        json!({"alg": "ES256"}),
        claims(),
        es256(&keys().p256_other).as_ref(),
    );
    let super::SignedBy::Key(index) = signed_by(&t).expect("verified") else {
        panic!("an ES256 token is verified by a key, not a secret");
    };
    let facts = set.describe(index).expect("a key at that index");
    assert_eq!(facts.kid, Some("ec-256-b"));
    assert_eq!(facts.thumbprint.len(), 43);
    // An HS256 token is verified by the issuer's secret.
    let hs = sign(
        json!({"alg": "HS256"}),
        claims(),
        &HS256.signer_from_bytes(SECRET).expect("hs256"),
    );
    let parsed = parse(&hs).expect("parse");
    let by = super::check_signed(
        &parsed,
        None,
        &hmac_issuer(SECRET),
        NOW,
        super::Profile::AccessToken,
    );
    assert_eq!(by, Ok(super::SignedBy::Secret));
    // A failure is the same error `check` gives.
    let expired = sign(
        json!({"alg": "ES256", "kid": "ec-256"}),
        with(claims(), json!({"exp": NOW - 3600})),
        es256(&keys().p256).as_ref(),
    );
    assert_eq!(signed_by(&expired), Err(JwtError::Expired));
}
