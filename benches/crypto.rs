//! The raw crypto cost of one request of `bench/run.sh` row 5 (a different token per request):
//! one RS256 (RSA-2048) signature verification of an access token, and one ES256 signature of an
//! identity assertion. Verifier and signer are built once, as `src/token/keys.rs` and
//! `src/identity/signing.rs` do, so only the per-request work is timed.
//!
//! `cargo bench --bench crypto` (add `-- --quick` for a shorter run). `bench/run.sh` reads the
//! middle estimate of each `time:` line and compares it with the end-to-end added CPU per request.
//!
//! The `dpop/*` group (`cargo bench --bench crypto -- dpop`) times one DPoP proof check through
//! `token::dpop::DpopChecker` (every RFC 9449 §4.3 check, the replay record included) for ES256
//! and EdDSA proofs, next to the bare ES256 signature verification it contains: SPEC's target is
//! a DPoP request costing at most 1.3x that verification more than a bearer request. Each
//! iteration gets a freshly signed proof (signing is setup, not timed) with a new `jti`, and the
//! clock advances one second every 500 proofs, so the replay store holds ~30 000 live records
//! as it would under load. `es256_check_new_key` signs every proof with a new key: the cost when
//! the verifier cache misses.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

use std::hint::black_box;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::KeyPair;
use josekit::jws::{JwsSigner, JwsVerifier, ES256, RS256};
use tokengate::config::model::{Algorithm, Dpop};
use tokengate::token::dpop::{DpopChecker, ExpectedHtu, ProofRequest, Proven};

/// A token-shaped signing input: base64url(header) "." base64url(payload).
fn signing_input(header: &str, payload: &str) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

fn crypto(c: &mut Criterion) {
    // Access token: RS256 with a 2048-bit key, claims shaped like bench-issuer's tokens.
    let rsa = RsaKeyPair::generate(2048).expect("RSA key");
    let signer = RS256
        .signer_from_der(rsa.to_der_private_key())
        .expect("RS256 signer");
    let input = signing_input(
        r#"{"typ":"JWT","alg":"RS256","kid":"bench-rs256"}"#,
        r#"{"iss":"http://127.0.0.1:40000","aud":"bench","sub":"user-1","jti":"bench-1-1","iat":1700000000,"nbf":1699999995,"exp":1700003600,"scope":"openid orders:read","client_id":"bench-client","email":"user1@bench.example","email_verified":true,"name":"Bench User 1","groups":["staff","bench"],"realm_access":{"roles":["user","ops"]},"tenant":"t1","org":{"dept":"eng","site":"lab"}}"#,
    );
    let signature = signer.sign(input.as_bytes()).expect("sign");
    let verifier = RS256
        .verifier_from_jwk(&rsa.to_jwk_public_key())
        .expect("RS256 verifier");
    verifier
        .verify(input.as_bytes(), &signature)
        .expect("the signature verifies");
    c.bench_function("rs256_verify_2048", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(input.as_bytes()), black_box(&signature))
                .expect("verifies")
        })
    });

    // Identity assertion: ES256 (P-256), payload shaped like SPEC §5's.
    let ec = EcKeyPair::generate(EcCurve::P256).expect("P-256 key");
    let es_signer = ES256
        .signer_from_der(ec.to_der_private_key())
        .expect("ES256 signer");
    let assertion = signing_input(
        r#"{"alg":"ES256","kid":"k7sJqmOvbYfUAnWNMAbJ-VQfvLzjWChpBKlF6pNxOQM","typ":"JWT"}"#,
        r#"{"iss":"tokengate","aud":"http://127.0.0.1:3000","sub":"user-1","iat":1700000000,"exp":1700000060,"jti":"4f1c2b9a8e7d6c5b4a39281706f5e4d3","route":"api","token_iss":"http://127.0.0.1:40000","auth":"jwt","email":"user1@bench.example","name":"Bench User 1","groups":["staff","bench"],"scope":"openid orders:read","client_id":"bench-client"}"#,
    );
    c.bench_function("es256_sign", |b| {
        b.iter(|| {
            es_signer
                .sign(black_box(assertion.as_bytes()))
                .expect("signs")
        })
    });
}

/// The access token the proofs are bound to (`ath`), shaped like a real one.
const DPOP_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoLXJzMjU2IiwidHlwIjoiYXQrand0In0.eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xOjQwMDAwIiwiYXVkIjoiYmVuY2giLCJzdWIiOiJ1c2VyLTEiLCJleHAiOjE3MDAwMDM2MDAsImNuZiI6eyJqa3QiOiJ4In19.c2lnbmF0dXJl";
const DPOP_HTU: &str = "https://api.example.com/orders/1";
const DPOP_T0: i64 = 1_700_000_000;

/// A proof key, signing with p256 / ed25519-dalek (not josekit, which verifies).
enum ProofKey {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
}

impl ProofKey {
    fn es256(seed: u64) -> ProofKey {
        let mut bytes = [1u8; 32];
        bytes[24..].copy_from_slice(&seed.to_be_bytes());
        ProofKey::Es256(p256::ecdsa::SigningKey::from_slice(&bytes).expect("P-256 key"))
    }

    fn eddsa() -> ProofKey {
        ProofKey::EdDsa(ed25519_dalek::SigningKey::from_bytes(&[2; 32]))
    }

    fn alg(&self) -> &'static str {
        match self {
            ProofKey::Es256(_) => "ES256",
            ProofKey::EdDsa(_) => "EdDSA",
        }
    }

    fn jwk(&self) -> serde_json::Value {
        match self {
            ProofKey::Es256(sk) => {
                let point = sk.verifying_key().to_encoded_point(false);
                serde_json::json!({
                    "kty": "EC", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(point.x().expect("x")),
                    "y": URL_SAFE_NO_PAD.encode(point.y().expect("y")),
                })
            }
            ProofKey::EdDsa(sk) => serde_json::json!({
                "kty": "OKP", "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(sk.verifying_key().to_bytes()),
            }),
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            ProofKey::Es256(sk) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = sk.sign(input);
                sig.to_bytes().to_vec()
            }
            ProofKey::EdDsa(sk) => {
                use ed25519_dalek::Signer;
                sk.sign(input).to_bytes().to_vec()
            }
        }
    }
}

/// A DPoP header holding a proof for GET DPOP_HTU with this jti and iat.
fn dpop_headers(key: &ProofKey, jti: u64, iat: i64) -> http::HeaderMap {
    use sha2::Digest as _;
    let ath = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(DPOP_TOKEN.as_bytes()));
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.jwk()});
    let claims = serde_json::json!({
        "jti": format!("bench-{jti:016x}"), "htm": "GET", "htu": DPOP_HTU, "iat": iat, "ath": ath,
    });
    let input = signing_input(&header.to_string(), &claims.to_string());
    let proof = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()))
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("dpop", http::HeaderValue::from_str(&proof).expect("header"));
    headers
}

fn dpop_check(checker: &DpopChecker, headers: &http::HeaderMap, now: i64) -> Proven {
    let req = ProofRequest {
        headers,
        method: &http::Method::GET,
        htu: ExpectedHtu {
            scheme: "https",
            authority: "api.example.com",
            path: "/orders/1",
            allow_path_parameters: false,
        },
        access_token: DPOP_TOKEN,
        clock_skew_secs: 60,
        bound_jkt: None,
    };
    checker.check(black_box(&req), now).expect("a valid proof")
}

fn dpop(c: &mut Criterion) {
    let settings = Dpop {
        algorithms: vec![Algorithm::ES256, Algorithm::EdDSA],
        max_age: Duration::from_secs(60),
        replay_cache_entries: 100_000,
        require_nonce: false,
    };
    let checker = DpopChecker::new(&settings, Duration::ZERO).expect("checker");
    let mut group = c.benchmark_group("dpop");

    // Baseline: the ES256 verification inside every ES256 proof check, verifier prebuilt.
    let key = ProofKey::es256(1);
    let proof = dpop_headers(&key, 0, DPOP_T0);
    let proof = proof["dpop"].to_str().expect("ascii").to_owned();
    let (input, sig) = proof.rsplit_once('.').expect("three parts");
    let sig = URL_SAFE_NO_PAD.decode(sig).expect("b64");
    let jwk: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(key.jwk()).expect("a JSON object");
    let jwk = josekit::jwk::Jwk::from_map(jwk).expect("jwk");
    let verifier = ES256.verifier_from_jwk(&jwk).expect("verifier");
    group.bench_function("es256_verify_only", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(input.as_bytes()), black_box(&sig))
                .expect("verifies")
        })
    });

    for (name, key) in [("es256_check", key), ("eddsa_check", ProofKey::eddsa())] {
        let mut n: u64 = 0;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let now = DPOP_T0 + (n / 500) as i64;
                    (dpop_headers(&key, n, now), now)
                },
                |(headers, now)| dpop_check(&checker, &headers, now),
                BatchSize::SmallInput,
            )
        });
    }

    let mut n: u64 = 1 << 32;
    group.bench_function("es256_check_new_key", |b| {
        b.iter_batched(
            || {
                n += 1;
                let now = DPOP_T0 + 10_000 + (n % (1 << 32) / 500) as i64;
                (dpop_headers(&ProofKey::es256(n), n, now), now)
            },
            |(headers, now)| dpop_check(&checker, &headers, now),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = crypto, dpop
}
criterion_main!(benches);
