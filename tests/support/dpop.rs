//! DPoP proofs (RFC 9449 §4.2) made the way a client would, for black-box tests: compact JWS
//! assembled by hand (JSON, base64url) and signed with `p256` (ES256) or `ed25519-dalek`
//! (EdDSA) directly, never with josekit, the JOSE library the proxy verifies with, so a mistake
//! shared by signer and verifier cannot hide. The RFC 7638 thumbprint a token's `cnf.jkt` names
//! is computed here by hand too.
//!
//! Minting the access token itself is the mock issuer's job (`issuer.rs`); this module only
//! knows the proof side.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// base64url without padding, as JOSE uses.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `ath`: base64url(SHA-256(access token)).
pub fn ath(token: &str) -> String {
    b64(Sha256::digest(token.as_bytes()))
}

/// A `jti` no other proof of this test process uses.
pub fn fresh_jti() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("jti-{}-{}-{n}", std::process::id(), super::issuer::now())
}

/// A client's proof key.
pub trait ProofKey {
    /// The JOSE `alg` it signs with.
    fn alg(&self) -> &'static str;
    /// The public JWK (required members only, as a client would send it).
    fn jwk(&self) -> Value;
    /// The signature of a JWS signing input, in JOSE form (ES256: raw `r‖s`).
    fn sign(&self, input: &[u8]) -> Vec<u8>;
}

/// A P-256 key for ES256 proofs.
pub struct Es256(p256::ecdsa::SigningKey);

impl Es256 {
    /// A deterministic key from a seed byte (1..=255), so tests can name "another key".
    pub fn new(seed: u8) -> Es256 {
        Es256(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("p256 key"))
    }

    /// The private scalar, for the "private key in the jwk" test.
    pub fn d(&self) -> String {
        b64(self.0.to_bytes())
    }
}

impl ProofKey for Es256 {
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
        let signature: p256::ecdsa::Signature = self.0.sign(input);
        signature.to_bytes().to_vec()
    }
}

/// An Ed25519 key for EdDSA proofs.
pub struct Ed25519(ed25519_dalek::SigningKey);

impl Ed25519 {
    pub fn new(seed: u8) -> Ed25519 {
        Ed25519(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }
}

impl ProofKey for Ed25519 {
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

/// The RFC 7638 thumbprint of a public EC or OKP JWK: SHA-256 over the required members in
/// lexicographic order, compact, base64url. What a bound token's `cnf.jkt` holds.
pub fn thumbprint(jwk: &Value) -> String {
    let member = |name: &str| jwk[name].as_str().expect("jwk member").to_owned();
    let canonical = match jwk["kty"].as_str() {
        Some("EC") => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            member("crv"),
            member("x"),
            member("y")
        ),
        Some("OKP") => format!(
            r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
            member("crv"),
            member("x")
        ),
        other => panic!("no thumbprint for kty {other:?} in these tests"),
    };
    b64(Sha256::digest(canonical.as_bytes()))
}

/// The `cnf` claim that binds a token to `key`.
pub fn cnf(key: &dyn ProofKey) -> Value {
    json!({"jkt": thumbprint(&key.jwk())})
}

/// A proof under construction: the header and claims a well-behaved client sends, which a test
/// then changes member by member before signing.
#[derive(Debug, Clone)]
pub struct Proof {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

impl Proof {
    /// A valid proof for `method` on `htu`, presenting `token`: header `typ`, `alg`, `jwk`;
    /// claims `jti` (fresh), `htm`, `htu`, `iat` (now), `ath`.
    pub fn new(key: &dyn ProofKey, method: &str, htu: &str, token: &str) -> Proof {
        let header = json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.jwk()});
        let claims = json!({
            "jti": fresh_jti(),
            "htm": method,
            "htu": htu,
            "iat": super::issuer::now(),
            "ath": ath(token),
        });
        Proof {
            header: object(header),
            claims: object(claims),
        }
    }

    /// Sets (or, with `Value::Null`, removes) a header member.
    pub fn header(mut self, name: &str, value: Value) -> Proof {
        set(&mut self.header, name, value);
        self
    }

    /// Sets (or, with `Value::Null`, removes) a claim.
    pub fn claim(mut self, name: &str, value: Value) -> Proof {
        set(&mut self.claims, name, value);
        self
    }

    /// The compact JWS, signed by `key` whatever the header says.
    pub fn sign(&self, key: &dyn ProofKey) -> String {
        sign_raw(
            key,
            &Value::Object(self.header.clone()).to_string(),
            &Value::Object(self.claims.clone()).to_string(),
        )
    }

    /// The compact JWS with an empty signature (`alg: none` as an attacker sends it).
    pub fn unsigned(&self) -> String {
        format!(
            "{}.{}.",
            b64(Value::Object(self.header.clone()).to_string()),
            b64(Value::Object(self.claims.clone()).to_string())
        )
    }

    /// The compact JWS with an HS256 signature under `secret` (jsonwebtoken's HMAC).
    pub fn hmac(&self, secret: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            b64(Value::Object(self.header.clone()).to_string()),
            b64(Value::Object(self.claims.clone()).to_string())
        );
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .expect("hmac");
        format!("{input}.{signature}")
    }
}

/// `b64(header).b64(payload).b64(signature by key)` over exactly these JSON texts.
pub fn sign_raw(key: &dyn ProofKey, header_json: &str, payload_json: &str) -> String {
    let input = format!("{}.{}", b64(header_json), b64(payload_json));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(signature))
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not a JSON object: {other}"),
    }
}

fn set(map: &mut Map<String, Value>, name: &str, value: Value) {
    if value.is_null() {
        map.remove(name);
    } else {
        map.insert(name.to_owned(), value);
    }
}
