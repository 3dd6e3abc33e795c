//! The raw crypto cost of one request of `bench/run.sh` row 5 (a different token per request):
//! one RS256 (RSA-2048) signature verification of an access token, and one ES256 signature of an
//! identity assertion. Verifier and signer are built once, as `src/token/keys.rs` and
//! `src/identity/signing.rs` do, so only the per-request work is timed.
//!
//! `cargo bench --bench crypto` (add `-- --quick` for a shorter run). `bench/run.sh` reads the
//! middle estimate of each `time:` line and compares it with the end-to-end added CPU per request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

use std::hint::black_box;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::KeyPair;
use josekit::jws::{JwsSigner, JwsVerifier, ES256, RS256};

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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = crypto
}
criterion_main!(benches);
