//! One test per check of RFC 9449 §4.3 as SPEC §4.8 words it. Proofs are built without josekit,
//! the JOSE library the checker verifies with: compact JWS assembled by hand (JSON, base64url)
//! and signed with `p256` (ES256) and `ed25519-dalek` (EdDSA) directly, or with `jsonwebtoken`
//! (RS256, PS256), so a mistake shared by signer and verifier cannot hide.

use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::nonce::NonceSource;
use super::replay::ReplayStore;
use super::verifiers::VerifierCache;
use super::*;
use crate::config::model::{Algorithm, Dpop};

const NOW: i64 = 1_700_000_000;
const SKEW: i64 = 5;
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1MSIsImNuZiI6e319.c2lnbmF0dXJl";
const HTU: &str = "https://api.example.com/orders/1";

// ---------------------------------------------------------------------------------------------
// Keys and proofs, built by hand.

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// A proof key: signs a signing input, and has a public JWK.
trait TestKey {
    fn alg(&self) -> &'static str;
    fn jwk(&self) -> Value;
    fn sign(&self, input: &[u8]) -> Vec<u8>;
}

struct Es256(p256::ecdsa::SigningKey);

impl Es256 {
    fn new(seed: u8) -> Es256 {
        Es256(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("p256 key"))
    }
}

impl TestKey for Es256 {
    fn alg(&self) -> &'static str {
        "ES256"
    }
    fn jwk(&self) -> Value {
        let point = self.0.verifying_key().to_encoded_point(false);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64(point.x().expect("x")),
            "y": b64(point.y().expect("y")),
        })
    }
    fn sign(&self, input: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = self.0.sign(input);
        sig.to_bytes().to_vec()
    }
}

struct Ed(ed25519_dalek::SigningKey);

impl Ed {
    fn new(seed: u8) -> Ed {
        Ed(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }
}

impl TestKey for Ed {
    fn alg(&self) -> &'static str {
        "EdDSA"
    }
    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64(self.0.verifying_key().to_bytes())})
    }
    fn sign(&self, input: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer;
        self.0.sign(input).to_bytes().to_vec()
    }
}

/// RSA through jsonwebtoken (key generated once; signing is jsonwebtoken's RustCrypto code).
struct Rsa {
    alg: jsonwebtoken::Algorithm,
    name: &'static str,
}

struct RsaFixture {
    key: jsonwebtoken::EncodingKey,
    jwk: Value,
}

fn rsa_fixture() -> &'static RsaFixture {
    static F: OnceLock<RsaFixture> = OnceLock::new();
    F.get_or_init(|| {
        use josekit::jwk::KeyPair as _;
        // Only the key generation uses OpenSSL; signing is jsonwebtoken's.
        let kp = josekit::jwk::alg::rsa::RsaKeyPair::generate(2048).expect("rsa");
        let public: Map<String, Value> = kp.to_jwk_public_key().into();
        RsaFixture {
            key: jsonwebtoken::EncodingKey::from_rsa_pem(&kp.to_pem_private_key())
                .expect("rsa pem"),
            jwk: json!({"kty": "RSA", "n": public["n"], "e": public["e"]}),
        }
    })
}

impl TestKey for Rsa {
    fn alg(&self) -> &'static str {
        self.name
    }
    fn jwk(&self) -> Value {
        rsa_fixture().jwk.clone()
    }
    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let sig = jsonwebtoken::crypto::sign(input, &rsa_fixture().key, self.alg).expect("sign");
        URL_SAFE_NO_PAD.decode(sig).expect("b64")
    }
}

fn ath(token: &str) -> String {
    b64(Sha256::digest(token.as_bytes()))
}

fn header_for(key: &dyn TestKey) -> Value {
    json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.jwk()})
}

fn claims_at(jti: &str, iat: i64) -> Value {
    json!({"jti": jti, "htm": "GET", "htu": HTU, "iat": iat, "ath": ath(TOKEN)})
}

/// A compact JWS over exactly these JSON texts.
fn sign_raw(key: &dyn TestKey, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(sig))
}

fn sign(key: &dyn TestKey, header: &Value, claims: &Value) -> String {
    sign_raw(key, &header.to_string(), &claims.to_string())
}

/// A valid proof with this jti, signed by `key`.
fn proof(key: &dyn TestKey, jti: &str) -> String {
    sign(key, &header_for(key), &claims_at(jti, NOW))
}

/// A valid ES256 proof whose header and claims were changed by `edit` before signing.
fn edited(edit: impl FnOnce(&mut Map<String, Value>, &mut Map<String, Value>)) -> String {
    let key = Es256::new(1);
    let mut header = obj(header_for(&key));
    let mut claims = obj(claims_at("edited", NOW));
    edit(&mut header, &mut claims);
    sign(&key, &Value::Object(header), &Value::Object(claims))
}

// ---------------------------------------------------------------------------------------------
// Checker and requests.

fn settings() -> Dpop {
    Dpop {
        algorithms: vec![
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
            Algorithm::RS256,
            Algorithm::PS256,
        ],
        max_age: Duration::from_secs(60),
        replay_cache_entries: 1000,
        require_nonce: false,
    }
}

fn checker_with(settings: &Dpop) -> DpopChecker {
    DpopChecker::assemble(
        settings,
        Arc::new(ReplayStore::new(settings.replay_cache_entries)),
        Arc::new(NonceSource::with_secret([9; 32], settings.max_age)),
        Arc::new(VerifierCache::new(16)),
    )
}

fn checker() -> DpopChecker {
    checker_with(&settings())
}

fn headers(proofs: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for p in proofs {
        h.append("dpop", HeaderValue::from_str(p).expect("header value"));
    }
    h
}

/// The request every proof is made for unless a test says otherwise.
struct Req {
    headers: HeaderMap,
    method: Method,
    scheme: &'static str,
    authority: &'static str,
    path: &'static str,
    token: &'static str,
    bound_jkt: Option<String>,
}

impl Req {
    fn new(proof: &str) -> Req {
        Req {
            headers: headers(&[proof]),
            method: Method::GET,
            scheme: "https",
            authority: "api.example.com",
            path: "/orders/1",
            token: TOKEN,
            bound_jkt: None,
        }
    }

    fn check(&self, checker: &DpopChecker, now: i64) -> Result<Proven, ProofError> {
        checker.check(
            &ProofRequest {
                headers: &self.headers,
                method: &self.method,
                htu: ExpectedHtu {
                    scheme: self.scheme,
                    authority: self.authority,
                    path: self.path,
                    allow_path_parameters: false,
                },
                access_token: self.token,
                clock_skew_secs: SKEW,
                bound_jkt: self.bound_jkt.as_deref(),
            },
            now,
        )
    }
}

/// Checks `proof` for the default request on a fresh checker.
fn verdict(proof: &str) -> Result<Proven, ProofError> {
    Req::new(proof).check(&checker(), NOW)
}

fn jkt_of(key: &dyn TestKey) -> String {
    thumbprint(&obj(key.jwk())).expect("thumbprint")
}

// ---------------------------------------------------------------------------------------------
// Accepted proofs.

#[test]
fn es256_proof_is_accepted_and_proves_its_key() {
    let key = Es256::new(1);
    let proven = verdict(&proof(&key, "a")).expect("valid proof");
    assert_eq!(proven.jkt, jkt_of(&key));
    assert_eq!(proven.jkt.len(), 43);
}

#[test]
fn eddsa_proof_is_accepted() {
    let key = Ed::new(2);
    assert_eq!(verdict(&proof(&key, "a")).map(|p| p.jkt), Ok(jkt_of(&key)));
}

#[test]
fn rs256_and_ps256_proofs_are_accepted() {
    for (alg, name) in [
        (jsonwebtoken::Algorithm::RS256, "RS256"),
        (jsonwebtoken::Algorithm::PS256, "PS256"),
    ] {
        let key = Rsa { alg, name };
        assert_eq!(
            verdict(&proof(&key, "a")).map(|p| p.jkt),
            Ok(jkt_of(&key)),
            "{name}"
        );
    }
}

#[test]
fn extra_jwk_members_do_not_change_the_thumbprint() {
    let key = Es256::new(1);
    let p = edited(|h, _| {
        h["jwk"]["kid"] = json!("client-key");
        h["jwk"]["alg"] = json!("ES256");
    });
    assert_eq!(verdict(&p).map(|p| p.jkt), Ok(jkt_of(&key)));
}

// ---------------------------------------------------------------------------------------------
// The DPoP header.

#[test]
fn missing_dpop_header_is_refused() {
    let mut req = Req::new("x");
    req.headers = HeaderMap::new();
    assert_eq!(req.check(&checker(), NOW), Err(ProofError::Missing));
}

#[test]
fn two_dpop_headers_are_refused() {
    let key = Es256::new(1);
    let (a, b) = (proof(&key, "a"), proof(&key, "b"));
    let mut req = Req::new(&a);
    req.headers = headers(&[&a, &b]);
    assert_eq!(req.check(&checker(), NOW), Err(ProofError::Multiple));
    // Also two copies of one valid proof.
    req.headers = headers(&[&a, &a]);
    assert_eq!(req.check(&checker(), NOW), Err(ProofError::Multiple));
}

#[test]
fn a_proof_that_is_not_a_compact_jws_is_refused() {
    let key = Es256::new(1);
    let good = proof(&key, "a");
    let (signing_input, _) = good.rsplit_once('.').expect("three parts");
    let not_json = format!("{}.{}.c2ln", b64("not json"), b64("{}"));
    let array_header = format!("{}.{}.c2ln", b64("[1]"), b64("{}"));
    let duplicate = sign_raw(
        &key,
        r#"{"typ":"dpop+jwt","typ":"dpop+jwt","alg":"ES256"}"#,
        "{}",
    );
    let list = format!("{good}, {good}");
    for bad in [
        signing_input,
        not_json.as_str(),
        array_header.as_str(),
        duplicate.as_str(),
        "a.b.c.d",
        list.as_str(),
    ] {
        assert!(
            matches!(verdict(bad), Err(ProofError::Malformed(_))),
            "{bad}: {:?}",
            verdict(bad)
        );
    }
}

#[test]
fn oversized_proof_is_refused_unparsed() {
    let huge = "a".repeat(MAX_PROOF_BYTES + 1);
    assert_eq!(
        verdict(&huge),
        Err(ProofError::Malformed("DPoP proof is too large"))
    );
}

// ---------------------------------------------------------------------------------------------
// Header checks.

#[test]
fn typ_other_than_dpop_jwt_is_refused() {
    for typ in [
        json!("JWT"),
        json!("DPOP+JWT"),
        json!("application/dpop+jwt"),
        json!(1),
    ] {
        let p = edited(|h, _| {
            h.insert("typ".into(), typ.clone());
        });
        assert_eq!(verdict(&p), Err(ProofError::Typ), "{typ}");
    }
    let p = edited(|h, _| {
        h.remove("typ");
    });
    assert_eq!(verdict(&p), Err(ProofError::Typ));
}

#[test]
fn alg_none_is_refused() {
    let header = json!({"typ": "dpop+jwt", "alg": "none", "jwk": Es256::new(1).jwk()});
    let p = format!(
        "{}.{}.",
        b64(header.to_string()),
        b64(claims_at("a", NOW).to_string())
    );
    assert!(verdict(&p).is_err());
    let with_sig = format!("{p}c2ln");
    assert_eq!(verdict(&with_sig), Err(ProofError::Algorithm));
}

#[test]
fn hs256_is_refused_even_when_configured() {
    let mut s = settings();
    s.algorithms.push(Algorithm::HS256);
    let checker = checker_with(&s);
    assert!(!checker.algorithms().contains(&Algorithm::HS256));
    // A MAC under the jwk's `k`, the classic confusion: refused for its alg before anything else.
    let header = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}});
    let p = format!(
        "{}.{}.c2ln",
        b64(header.to_string()),
        b64(claims_at("a", NOW).to_string())
    );
    assert_eq!(
        Req::new(&p).check(&checker, NOW),
        Err(ProofError::Algorithm)
    );
}

#[test]
fn alg_missing_from_the_allow_list_is_refused() {
    let mut s = settings();
    s.algorithms = vec![Algorithm::ES256];
    let p = proof(&Ed::new(2), "a");
    assert_eq!(
        Req::new(&p).check(&checker_with(&s), NOW),
        Err(ProofError::Algorithm)
    );
}

#[test]
fn any_crit_is_refused() {
    for crit in [json!(["exp"]), json!([]), json!("exp")] {
        let p = edited(|h, _| {
            h.insert("crit".into(), crit.clone());
        });
        assert_eq!(verdict(&p), Err(ProofError::Crit), "{crit}");
    }
}

#[test]
fn missing_or_unfit_jwk_is_refused() {
    let no_jwk = edited(|h, _| {
        h.remove("jwk");
    });
    let string_jwk = edited(|h, _| {
        h.insert("jwk".into(), json!("key"));
    });
    let ed_key_for_es256 = edited(|h, _| {
        h.insert("jwk".into(), Ed::new(2).jwk());
    });
    let p384_for_es256 = edited(|h, _| {
        h["jwk"]["crv"] = json!("P-384");
    });
    for p in [no_jwk, string_jwk, ed_key_for_es256, p384_for_es256] {
        assert!(
            matches!(verdict(&p), Err(ProofError::Jwk(_))),
            "{:?}",
            verdict(&p)
        );
    }
}

#[test]
fn jwk_that_is_not_a_valid_key_is_refused() {
    let not_on_curve = edited(|h, _| {
        h["jwk"]["y"] = json!(b64([7u8; 32]));
    });
    let short_x = edited(|h, _| {
        h["jwk"]["x"] = json!(b64([7u8; 31]));
    });
    for p in [not_on_curve, short_x] {
        assert!(
            matches!(verdict(&p), Err(ProofError::Jwk(_))),
            "{:?}",
            verdict(&p)
        );
    }
}

#[test]
fn private_d_in_the_jwk_is_refused() {
    let p = edited(|h, _| {
        h["jwk"]["d"] = json!(b64([1u8; 32]));
    });
    assert_eq!(verdict(&p), Err(ProofError::PrivateKey));
    for member in ["p", "q", "dp", "dq", "qi", "oth", "k"] {
        let p = edited(|h, _| {
            h["jwk"][member] = json!("AQAB");
        });
        assert_eq!(verdict(&p), Err(ProofError::PrivateKey), "{member}");
    }
}

#[test]
fn private_d_is_refused_even_after_the_public_key_was_cached() {
    let checker = checker();
    let key = Es256::new(1);
    assert!(Req::new(&proof(&key, "a")).check(&checker, NOW).is_ok());
    let p = edited(|h, c| {
        h["jwk"]["d"] = json!(b64([1u8; 32]));
        c["jti"] = json!("b");
    });
    assert_eq!(
        Req::new(&p).check(&checker, NOW),
        Err(ProofError::PrivateKey)
    );
}

#[test]
fn bad_signature_is_refused() {
    let key = Es256::new(1);
    let good = proof(&key, "a");
    let (input, _) = good.rsplit_once('.').expect("parts");
    // Signed by another key.
    let other = Es256::new(3).sign(input.as_bytes());
    assert_eq!(
        verdict(&format!("{input}.{}", b64(other))),
        Err(ProofError::BadSignature)
    );
    // A changed payload under the original signature.
    let (_, sig) = good.rsplit_once('.').expect("parts");
    let header = header_for(&key).to_string();
    let forged = format!(
        "{}.{}.{sig}",
        b64(header),
        b64(claims_at("b", NOW).to_string())
    );
    assert_eq!(verdict(&forged), Err(ProofError::BadSignature));
    // A DER-encoded or truncated signature.
    assert_eq!(
        verdict(&format!("{input}.{}", b64([0x30u8; 70]))),
        Err(ProofError::BadSignature)
    );
}

#[test]
fn eddsa_signature_by_another_key_is_refused() {
    let key = Ed::new(2);
    let good = proof(&key, "a");
    let (input, _) = good.rsplit_once('.').expect("parts");
    let other = Ed::new(4).sign(input.as_bytes());
    assert_eq!(
        verdict(&format!("{input}.{}", b64(other))),
        Err(ProofError::BadSignature)
    );
}

// ---------------------------------------------------------------------------------------------
// Claims.

#[test]
fn jti_must_be_a_short_non_empty_string() {
    for jti in [
        json!(""),
        json!(7),
        json!(null),
        json!("x".repeat(MAX_JTI_BYTES + 1)),
    ] {
        let p = edited(|_, c| {
            c.insert("jti".into(), jti.clone());
        });
        assert!(
            matches!(verdict(&p), Err(ProofError::Malformed(_))),
            "{jti}"
        );
    }
    let p = edited(|_, c| {
        c.remove("jti");
    });
    assert!(matches!(verdict(&p), Err(ProofError::Malformed(_))));
    let longest = edited(|_, c| {
        c.insert("jti".into(), json!("x".repeat(MAX_JTI_BYTES)));
    });
    assert!(verdict(&longest).is_ok());
}

#[test]
fn htm_must_equal_the_method_case_sensitively() {
    for htm in ["POST", "get", "Get"] {
        let p = edited(|_, c| {
            c.insert("htm".into(), json!(htm));
        });
        assert_eq!(verdict(&p), Err(ProofError::Htm), "{htm}");
    }
    let p = edited(|_, c| {
        c.remove("htm");
    });
    assert!(matches!(verdict(&p), Err(ProofError::Malformed(_))));
    // An extension method is compared as it is.
    let p = edited(|_, c| {
        c.insert("htm".into(), json!("M-SEARCH"));
    });
    let mut req = Req::new(&p);
    req.method = Method::from_bytes(b"M-SEARCH").expect("method");
    assert!(req.check(&checker(), NOW).is_ok());
}

fn with_htu(htu: &str) -> String {
    edited(|_, c| {
        c.insert("htu".into(), json!(htu));
    })
}

#[test]
fn htu_for_another_uri_is_refused() {
    for htu in [
        "https://api.example.com/Orders/1",
        "https://other.example.com/orders/1",
        "http://api.example.com/orders/1",
        "https://api.example.com:8443/orders/1",
        "https://api.example.com/orders/2",
        "https://api.example.com/orders",
        "/orders/1",
    ] {
        assert_eq!(verdict(&with_htu(htu)), Err(ProofError::Htu), "{htu}");
    }
    let p = edited(|_, c| {
        c.insert("htu".into(), json!(["https://api.example.com/orders/1"]));
    });
    assert!(matches!(verdict(&p), Err(ProofError::Malformed(_))));
}

#[test]
fn htu_spellings_of_the_same_uri_are_accepted() {
    for htu in [
        "https://api.example.com:443/orders/1",
        "https://api.example.com/orders/1?page=2",
        "https://api.example.com/orders/1#frag",
        "HTTPS://API.EXAMPLE.COM/orders/1",
        "https://api.example.com/orders/./2/../1",
        "https://api.example.com/orders/%31",
    ] {
        assert!(
            verdict(&with_htu(htu)).is_ok(),
            "{htu}: {:?}",
            verdict(&with_htu(htu))
        );
    }
}

#[test]
fn htu_is_compared_with_the_request_scheme_and_authority() {
    let p = with_htu("http://127.0.0.1:8080/orders/1");
    let mut req = Req::new(&p);
    req.scheme = "http";
    req.authority = "127.0.0.1:8080";
    assert!(req.check(&checker(), NOW).is_ok());
    req.authority = "127.0.0.1:8081";
    assert_eq!(req.check(&checker(), NOW), Err(ProofError::Htu));
}

#[test]
fn stale_iat_is_refused() {
    let limit = NOW - 60 - SKEW;
    let at_limit = edited(|_, c| {
        c.insert("iat".into(), json!(limit));
    });
    assert!(verdict(&at_limit).is_ok());
    for iat in [json!(limit - 1), json!(limit as f64 - 0.5), json!(0)] {
        let p = edited(|_, c| {
            c.insert("iat".into(), iat.clone());
        });
        assert_eq!(verdict(&p), Err(ProofError::Stale), "{iat}");
    }
}

#[test]
fn future_iat_is_refused() {
    let limit = NOW + SKEW;
    let at_limit = edited(|_, c| {
        c.insert("iat".into(), json!(limit));
    });
    assert!(verdict(&at_limit).is_ok());
    for iat in [
        json!(limit + 1),
        json!(limit as f64 + 0.5),
        json!(NOW + 3600),
    ] {
        let p = edited(|_, c| {
            c.insert("iat".into(), iat.clone());
        });
        assert_eq!(verdict(&p), Err(ProofError::Future), "{iat}");
    }
}

#[test]
fn iat_must_be_a_numeric_date() {
    for iat in [json!("1700000000"), json!(null), json!(-1)] {
        let p = edited(|_, c| {
            c.insert("iat".into(), iat.clone());
        });
        assert!(
            matches!(verdict(&p), Err(ProofError::Malformed(_))),
            "{iat}"
        );
    }
    let p = edited(|_, c| {
        c.remove("iat");
    });
    assert!(matches!(verdict(&p), Err(ProofError::Malformed(_))));
}

#[test]
fn wrong_ath_is_refused() {
    let padded = format!("{}=", ath(TOKEN));
    let standard = ath(TOKEN).replace('-', "+").replace('_', "/");
    let other = ath("another.token.value");
    for bad in [other.as_str(), padded.as_str(), &ath(TOKEN)[..42], ""] {
        let p = edited(|_, c| {
            c.insert("ath".into(), json!(bad));
        });
        assert_eq!(verdict(&p), Err(ProofError::Ath), "{bad}");
    }
    if standard != ath(TOKEN) {
        let p = edited(|_, c| {
            c.insert("ath".into(), json!(standard));
        });
        assert_eq!(verdict(&p), Err(ProofError::Ath));
    }
    let p = edited(|_, c| {
        c.remove("ath");
    });
    assert!(matches!(verdict(&p), Err(ProofError::Malformed(_))));
    // The right ath for another token presented with this proof.
    let mut req = Req::new(&proof(&Es256::new(1), "a"));
    req.token = "another.token.value";
    assert_eq!(req.check(&checker(), NOW), Err(ProofError::Ath));
}

// ---------------------------------------------------------------------------------------------
// Replay.

#[test]
fn replayed_proof_is_refused() {
    let checker = checker();
    let req = Req::new(&proof(&Es256::new(1), "a"));
    assert!(req.check(&checker, NOW).is_ok());
    assert_eq!(req.check(&checker, NOW + 1), Err(ProofError::Replayed));
    assert_eq!(ProofError::Replayed.outcome(), "replayed");
}

#[test]
fn same_jti_re_signed_with_the_same_key_is_refused() {
    let checker = checker();
    let key = Es256::new(1);
    let first = sign(&key, &header_for(&key), &claims_at("a", NOW));
    let again = sign(&key, &header_for(&key), &claims_at("a", NOW + 2));
    assert_ne!(first, again);
    assert!(Req::new(&first).check(&checker, NOW).is_ok());
    assert_eq!(
        Req::new(&again).check(&checker, NOW + 2),
        Err(ProofError::Replayed)
    );
}

#[test]
fn same_jti_under_another_key_is_another_proof() {
    let checker = checker();
    assert!(Req::new(&proof(&Es256::new(1), "a"))
        .check(&checker, NOW)
        .is_ok());
    assert!(Req::new(&proof(&Ed::new(2), "a"))
        .check(&checker, NOW)
        .is_ok());
}

#[test]
fn malleated_ecdsa_signature_is_still_a_replay() {
    use p256::elliptic_curve::ops::Reduce;
    let checker = checker();
    let key = Es256::new(1);
    let good = proof(&key, "a");
    assert!(Req::new(&good).check(&checker, NOW).is_ok());
    let (input, sig) = good.rsplit_once('.').expect("parts");
    let sig = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).expect("b64"))
        .expect("signature");
    let (r, s) = sig.split_scalars();
    let s = <p256::Scalar as Reduce<p256::U256>>::reduce_bytes(&s.to_bytes());
    let flipped =
        p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-s).to_bytes()).expect("(r, n - s)");
    let malleated = format!("{input}.{}", b64(flipped.to_bytes()));
    assert_ne!(malleated, good);
    // The flipped signature is valid (a fresh checker accepts it) ...
    assert!(Req::new(&malleated).check(&self::checker(), NOW).is_ok());
    // ... and is the same proof to the replay check.
    assert_eq!(
        Req::new(&malleated).check(&checker, NOW),
        Err(ProofError::Replayed)
    );
}

#[test]
fn refused_proof_does_not_consume_its_jti() {
    let checker = checker();
    let key = Es256::new(1);
    let p = proof(&key, "a");
    let mut wrong_method = Req::new(&p);
    wrong_method.method = Method::POST;
    assert_eq!(wrong_method.check(&checker, NOW), Err(ProofError::Htm));
    assert!(Req::new(&p).check(&checker, NOW).is_ok());
}

#[test]
fn jti_can_be_reused_once_its_proof_window_has_passed() {
    let checker = checker();
    let key = Es256::new(1);
    assert!(Req::new(&proof(&key, "a")).check(&checker, NOW).is_ok());
    let later = NOW + 60 + SKEW + 1;
    let p = sign(&key, &header_for(&key), &claims_at("a", later));
    assert!(Req::new(&p).check(&checker, later).is_ok());
}

#[test]
fn fifty_threads_presenting_one_proof_get_exactly_one_success() {
    let checker = checker();
    let p = proof(&Es256::new(1), "race");
    let barrier = Barrier::new(50);
    let results: Vec<Result<Proven, ProofError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                scope.spawn(|| {
                    let req = Req::new(&p);
                    barrier.wait();
                    req.check(&checker, NOW)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(
        results
            .iter()
            .filter(|r| **r == Err(ProofError::Replayed))
            .count(),
        49
    );
}

#[test]
fn full_replay_store_fails_closed() {
    let mut s = settings();
    s.replay_cache_entries = 2;
    let checker = checker_with(&s);
    let key = Es256::new(1);
    assert!(Req::new(&proof(&key, "a")).check(&checker, NOW).is_ok());
    assert!(Req::new(&proof(&key, "b")).check(&checker, NOW).is_ok());
    let err = Req::new(&proof(&key, "c")).check(&checker, NOW);
    assert_eq!(err, Err(ProofError::StoreFull));
    let err = err.expect_err("error");
    assert!(err.is_store_problem() && err.kind() == ProofErrorKind::Unavailable);
    // Once the first records' window has passed, there is room again.
    let later = NOW + 60 + SKEW + 1;
    let p = sign(&key, &header_for(&key), &claims_at("c", later));
    assert!(Req::new(&p).check(&checker, later).is_ok());
}

#[test]
fn reconfigured_checker_remembers_used_proofs() {
    let old = checker();
    let p = proof(&Es256::new(1), "a");
    assert!(Req::new(&p).check(&old, NOW).is_ok());
    let mut s = settings();
    s.replay_cache_entries = 500;
    let new = old.reconfigured(&s, Duration::from_secs(SKEW as u64), NOW);
    assert_eq!(Req::new(&p).check(&new, NOW), Err(ProofError::Replayed));
    assert_eq!(new.replay_store().capacity(), 500);
}

#[test]
fn used_proof_stays_used_after_a_reload_that_lengthens_max_age() {
    let old = checker();
    let p = proof(&Es256::new(1), "a");
    assert!(Req::new(&p).check(&old, NOW).is_ok());
    let mut s = settings();
    s.max_age = Duration::from_secs(600);
    let new = old.reconfigured(&s, Duration::from_secs(SKEW as u64), NOW + 1);
    // Past the old window (60 s + skew), inside the new one: still a replay.
    let later = NOW + 60 + SKEW + 30;
    assert_eq!(Req::new(&p).check(&new, later), Err(ProofError::Replayed));
}

#[test]
fn proof_older_than_the_old_window_is_stale_after_a_reload_that_lengthens_it() {
    let old = checker();
    let mut s = settings();
    s.max_age = Duration::from_secs(600);
    let reload_at = NOW + 200;
    let new = old.reconfigured(&s, Duration::from_secs(SKEW as u64), reload_at);
    // Issued before the reload minus the old window: if it was used then, its record is gone.
    let key = Es256::new(1);
    let early = sign(&key, &header_for(&key), &claims_at("e", NOW));
    assert_eq!(
        Req::new(&early).check(&new, reload_at),
        Err(ProofError::Stale)
    );
    // A proof issued inside the old window at the reload is checked as usual.
    let recent = sign(&key, &header_for(&key), &claims_at("r", reload_at - 30));
    assert!(Req::new(&recent).check(&new, reload_at).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Key binding.

#[test]
fn proof_for_another_key_than_the_token_names_is_refused_early_and_keeps_its_jti() {
    let checker = checker();
    let key = Es256::new(1);
    let mut req = Req::new(&proof(&key, "a"));
    req.bound_jkt = Some(jkt_of(&Ed::new(2)));
    let err = req.check(&checker, NOW);
    assert_eq!(err, Err(ProofError::KeyMismatch));
    assert_eq!(
        err.err().map(|e| e.kind()),
        Some(ProofErrorKind::InvalidToken)
    );
    // Refused before any verifier was built for the proof's key.
    assert!(checker.verifiers.is_empty());
    req.bound_jkt = Some(jkt_of(&key));
    assert!(req.check(&checker, NOW).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Nonces.

fn nonce_checker() -> DpopChecker {
    let mut s = settings();
    s.require_nonce = true;
    checker_with(&s)
}

fn with_nonce(jti: &str, nonce: Option<&str>, iat: i64) -> String {
    let key = Es256::new(1);
    let mut claims = obj(claims_at(jti, iat));
    if let Some(n) = nonce {
        claims.insert("nonce".into(), json!(n));
    }
    sign(&key, &header_for(&key), &Value::Object(claims))
}

fn nonce_at(checker: &DpopChecker, now: i64) -> String {
    checker
        .current_nonce(now)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .expect("a nonce")
}

#[test]
fn missing_nonce_is_refused_when_required() {
    let checker = nonce_checker();
    let err = Req::new(&with_nonce("a", None, NOW)).check(&checker, NOW);
    assert_eq!(err, Err(ProofError::NonceMissing));
    let err = err.expect_err("error");
    assert!(err.is_nonce_problem());
    assert_eq!(err.outcome(), "nonce_required");
}

#[test]
fn current_nonce_is_accepted() {
    let checker = nonce_checker();
    let nonce = nonce_at(&checker, NOW);
    assert!(Req::new(&with_nonce("a", Some(&nonce), NOW))
        .check(&checker, NOW)
        .is_ok());
}

#[test]
fn stale_or_made_up_nonce_is_refused() {
    let checker = nonce_checker();
    let old = nonce_at(&checker, NOW - 60);
    let err = Req::new(&with_nonce("a", Some(&old), NOW)).check(&checker, NOW);
    assert_eq!(err, Err(ProofError::NonceStale));
    let err = Req::new(&with_nonce("b", Some("made-up"), NOW)).check(&checker, NOW);
    assert_eq!(err, Err(ProofError::NonceStale));
}

#[test]
fn previous_nonce_stays_valid_for_one_period() {
    let checker = nonce_checker();
    let period = 30;
    let start = NOW - NOW.rem_euclid(period);
    let nonce = nonce_at(&checker, start);
    let next = start + period;
    assert_ne!(nonce_at(&checker, next), nonce, "rotated");
    let p = with_nonce("a", Some(&nonce), next);
    assert!(Req::new(&p).check(&checker, next).is_ok());
    let after = start + 2 * period;
    let p = with_nonce("b", Some(&nonce), after);
    assert_eq!(
        Req::new(&p).check(&checker, after),
        Err(ProofError::NonceStale)
    );
}

#[test]
fn nonce_is_ignored_and_not_offered_unless_required() {
    let checker = checker();
    assert_eq!(checker.current_nonce(NOW), None);
    assert!(Req::new(&with_nonce("a", Some("anything"), NOW))
        .check(&checker, NOW)
        .is_ok());
}

#[test]
fn nonce_error_comes_only_for_an_otherwise_valid_proof() {
    let checker = nonce_checker();
    let mut req = Req::new(&with_nonce("a", None, NOW));
    req.method = Method::POST;
    assert_eq!(req.check(&checker, NOW), Err(ProofError::Htm));
}

// ---------------------------------------------------------------------------------------------
// Errors, thumbprints, caches.

#[test]
fn error_texts_never_echo_the_proof_and_map_to_three_outcomes() {
    let all = [
        ProofError::Missing,
        ProofError::Multiple,
        ProofError::Malformed("DPoP proof is too large"),
        ProofError::Typ,
        ProofError::Algorithm,
        ProofError::Crit,
        ProofError::Jwk("DPoP proof header has no jwk object"),
        ProofError::PrivateKey,
        ProofError::BadSignature,
        ProofError::Htm,
        ProofError::Htu,
        ProofError::Stale,
        ProofError::Future,
        ProofError::Ath,
        ProofError::NonceMissing,
        ProofError::NonceStale,
        ProofError::Replayed,
        ProofError::KeyMismatch,
        ProofError::StoreFull,
    ];
    for e in all {
        let text = e.description();
        assert!(
            !text.is_empty() && text.is_ascii() && !text.contains('"'),
            "{e:?}"
        );
        assert!(["invalid", "replayed", "nonce_required"].contains(&e.outcome()));
    }
    // A refused proof's text holds nothing of the proof.
    let p = edited(|_, c| {
        c.insert("htm".into(), json!("SECRET-METHOD"));
    });
    let err = verdict(&p).expect_err("refused");
    assert!(!err.description().contains("SECRET") && !format!("{err:?}").contains("SECRET"));
}

#[test]
fn proof_request_debug_shows_no_credentials() {
    let p = proof(&Es256::new(1), "a");
    let headers = headers(&[&p]);
    let req = ProofRequest {
        headers: &headers,
        method: &Method::GET,
        htu: ExpectedHtu {
            scheme: "https",
            authority: "api.example.com",
            path: "/orders/1",
            allow_path_parameters: false,
        },
        access_token: TOKEN,
        clock_skew_secs: SKEW,
        bound_jkt: None,
    };
    let text = format!("{req:?}");
    assert!(!text.contains(TOKEN) && !text.contains(&p[..20]), "{text}");
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
        Ok("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
    );
}

#[test]
fn thumbprint_of_ec_okp_and_rsa_keys_agrees_with_the_issuer_key_code() {
    let rsa = Rsa {
        alg: jsonwebtoken::Algorithm::RS256,
        name: "RS256",
    };
    for jwk in [Es256::new(1).jwk(), Ed::new(2).jwk(), rsa.jwk()] {
        let jwk = obj(jwk);
        let ours = thumbprint(&jwk).expect("thumbprint");
        assert_eq!(Some(ours), crate::token::keys::thumbprint(&jwk), "{jwk:?}");
    }
    // EC by hand: the canonical JSON of RFC 7638 §3.2, hashed.
    let jwk = obj(Es256::new(1).jwk());
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y")
    );
    assert_eq!(
        thumbprint(&jwk),
        Ok(b64(Sha256::digest(canonical.as_bytes())))
    );
    // OKP by hand.
    let jwk = obj(Ed::new(2).jwk());
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        jwk["x"].as_str().expect("x")
    );
    assert_eq!(
        thumbprint(&jwk),
        Ok(b64(Sha256::digest(canonical.as_bytes())))
    );
}

#[test]
fn thumbprint_refuses_unknown_types_and_missing_members() {
    assert_eq!(
        thumbprint(&obj(json!({"kty": "oct", "k": "c2VjcmV0"}))),
        Err(ThumbprintError::UnsupportedKeyType)
    );
    assert_eq!(
        thumbprint(&obj(json!({"kty": "EC", "crv": "P-256", "x": "AA"}))),
        Err(ThumbprintError::MissingMember("y"))
    );
    assert_eq!(
        thumbprint(&obj(json!({"kty": "RSA", "n": "AA", "e": 3}))),
        Err(ThumbprintError::MissingMember("e"))
    );
}

#[test]
fn verifier_is_built_once_per_key() {
    let checker = checker();
    let key = Es256::new(1);
    for jti in ["a", "b", "c"] {
        assert!(Req::new(&proof(&key, jti)).check(&checker, NOW).is_ok());
    }
    assert_eq!(checker.verifiers.len(), 1);
    assert!(Req::new(&proof(&Ed::new(2), "a"))
        .check(&checker, NOW)
        .is_ok());
    assert_eq!(checker.verifiers.len(), 2);
}

#[test]
fn verifier_cache_stays_within_its_bound() {
    let s = settings();
    let checker = DpopChecker::assemble(
        &s,
        Arc::new(ReplayStore::new(100)),
        Arc::new(NonceSource::with_secret([9; 32], s.max_age)),
        Arc::new(VerifierCache::new(3)),
    );
    for seed in 1..=6 {
        let key = Es256::new(seed);
        assert!(Req::new(&proof(&key, "a")).check(&checker, NOW).is_ok());
        assert!(checker.verifiers.len() <= 3);
    }
    // An evicted key still verifies (it is rebuilt).
    assert!(Req::new(&proof(&Es256::new(1), "b"))
        .check(&checker, NOW)
        .is_ok());
}

/// Memory of the replay records at 100 000 entries: the computed heap size, and the process RSS
/// growth while filling (`cargo test --lib token::dpop -- --ignored --nocapture
/// --test-threads=1 replay_store_memory`).
#[test]
#[ignore = "measurement; run alone for a meaningful RSS delta"]
fn replay_store_memory_at_100k_entries() {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
    // The keys first, so the delta below is the store alone.
    let keys: Vec<replay::ReplayKey> = (0u32..100_000)
        .map(|n| replay::replay_key(&[1; 32], &n.to_string()))
        .collect();
    let store = ReplayStore::new(100_000);
    let before = rss_kib();
    for key in keys {
        assert_eq!(store.record(key, NOW + 120, NOW), Ok(()));
    }
    let after = rss_kib();
    assert_eq!(store.len(), 100_000);
    println!(
        "replay store, 100000 entries: computed {} bytes ({:.2} MiB); RSS +{} KiB",
        store.approx_heap_bytes(),
        store.approx_heap_bytes() as f64 / 1_048_576.0,
        after.saturating_sub(before)
    );
}

/// Memory of cached verifiers: RSS growth while building 2000 ES256 ones.
#[test]
#[ignore = "measurement; run alone for a meaningful RSS delta"]
fn verifier_cache_memory() {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
    let keys: Vec<(String, [u8; 32])> = (1..=2000u32)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            seed[31] = 1;
            let sk = p256::ecdsa::SigningKey::from_slice(&seed).expect("key");
            let point = sk.verifying_key().to_encoded_point(false);
            let jwk = obj(json!({
                "kty": "EC", "crv": "P-256",
                "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y")),
            }));
            let canonical = thumbprint::canonical_json(&jwk).expect("json");
            let digest: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
            (canonical, digest)
        })
        .collect();
    let cache = VerifierCache::new(10_000);
    let before = rss_kib();
    for (canonical, digest) in &keys {
        assert!(cache.get(digest, canonical, Algorithm::ES256).is_ok());
    }
    let after = rss_kib();
    println!(
        "verifier cache, 2000 ES256 keys: RSS +{} KiB ({} bytes per key)",
        after.saturating_sub(before),
        after.saturating_sub(before) * 1024 / 2000
    );
}
