//! DPoP (RFC 9449, SPEC §4.8) through the running proxy: every check of RFC 9449 §4.3 as a
//! client sees it — the status, the exact `WWW-Authenticate` challenge (`algs` in
//! `[dpop].algorithms` order), the JSON `error` — and that a refused request never reaches the
//! upstream, while an accepted one reaches it as `auth = "dpop"` without the `DPoP` and
//! `Authorization` headers. Also the URI the client addressed (`htu` through a trusted proxy,
//! `public_base_url`), server nonces, `require_sender_constrained`, a bound token on a userinfo
//! route (never sent there; the real binary's access log says so), and an opaque token bound
//! through its introspection answer.
//!
//! Proofs come from `support::dpop` (hand-built JWS, `p256` and `ed25519-dalek`), never from
//! josekit, which the proxy verifies with; tokens from the mock issuer, bound with `cnf.jkt`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use support::dpop::{cnf, Ed25519, Es256, Proof, ProofKey};
use support::echo::Echo;
use support::gate::Gate;
use support::issuer::{MockIssuer, INTROSPECTION_CLIENT};
use support::{get, wait_ready, Answer, Proxy};
use tokengate::keygen::{self, KeygenAlg};

/// `[dpop].algorithms` of every proxy here: not the default order, so the challenge's `algs`
/// shows it follows the configuration.
const ALGS: &str = "EdDSA ES256";

/// A running world: mock issuer, echo upstream, proxy with an identity key.
struct World {
    issuer: MockIssuer,
    echo: Echo,
    proxy: Proxy,
    _keys: tempfile::TempDir,
}

/// What a test changes in the configuration.
#[derive(Default)]
struct Setup<'a> {
    /// Lines added to `[server]`.
    server: &'a str,
    /// Lines added to `[dpop]`.
    dpop: &'a str,
    /// Give the issuer an `[issuer.introspection]` table.
    introspection: bool,
}

/// The configuration: one mock issuer, `[dpop]` with [`ALGS`], an identity key, and the routes
/// `/strict` (`require_sender_constrained`), `/profile` (`userinfo = true`) and `/` (the rest).
fn config(issuer: &MockIssuer, echo: &Echo, key: &std::path::Path, setup: &Setup<'_>) -> String {
    let introspection = if setup.introspection {
        let (id, secret) = INTROSPECTION_CLIENT;
        format!(
            "[issuer.introspection]\nendpoint = \"{}/introspect\"\nclient_id = \"{id}\"\n\
             client_secret = \"{secret}\"\n",
            issuer.url()
        )
    } else {
        String::new()
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"http://{echo}\"\ntimeout = \"5s\"\n\n\
         {issuer_toml}{introspection}\n\
         [dpop]\nalgorithms = [\"EdDSA\", \"ES256\"]\n{dpop}\n\
         [identity]\nsigning_key = {key:?}\n[identity.headers]\nX-Auth-Subject = \"sub\"\n\n\
         [[route]]\nid = \"strict\"\npath = \"/strict\"\nrequire_sender_constrained = true\n\n\
         [[route]]\nid = \"profile\"\npath = \"/profile\"\nuserinfo = true\n\n\
         [[route]]\nid = \"api\"\npath_prefix = \"/\"\n",
        server = setup.server,
        echo = echo.addr,
        issuer_toml = issuer.config_toml("mock", &["api"]),
        dpop = setup.dpop,
        key = key.display().to_string(),
    )
}

async fn start(setup: Setup<'_>) -> World {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("identity.pem");
    keygen::run(KeygenAlg::Es256, &key, false).unwrap();
    let proxy = Proxy::start(&config(&issuer, &echo, &key, &setup)).await;
    wait_ready(&proxy).await;
    World {
        issuer,
        echo,
        proxy,
        _keys: keys,
    }
}

async fn world() -> World {
    start(Setup::default()).await
}

impl World {
    /// The URI a client addressing the proxy directly signs.
    fn htu(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.addr)
    }

    /// A token from the mock issuer bound to `key`.
    fn bound_token(&self, key: &dyn ProofKey) -> String {
        self.issuer.token("ES256", json!({"cnf": cnf(key)}))
    }

    /// GET `path` with `Authorization: DPoP <token>`, the given `DPoP` headers and more.
    async fn dpop(
        &self,
        path: &str,
        token: &str,
        proofs: &[&str],
        more: &[(&str, &str)],
    ) -> Answer {
        let authorization = format!("DPoP {token}");
        let mut headers = vec![("authorization", authorization.as_str())];
        headers.extend(proofs.iter().map(|p| ("dpop", *p)));
        headers.extend_from_slice(more);
        get(&self.proxy.url(path), &headers).await
    }

    /// A valid proof by `key` for GET `path` on this proxy, presenting `token`.
    fn proof(&self, key: &dyn ProofKey, path: &str, token: &str) -> Proof {
        Proof::new(key, "GET", &self.htu(path), token)
    }
}

/// The exact `DPoP` challenge of a refusal.
fn challenge(error: &str, description: &str) -> String {
    format!(
        "DPoP realm=\"tokengate\", error=\"{error}\", error_description=\"{description}\", \
         algs=\"{ALGS}\""
    )
}

/// A 401 with exactly this `DPoP` challenge and JSON `error`, and nothing reached the upstream
/// (beyond the `forwarded` requests the test made before).
fn assert_refused(answer: &Answer, echo: &Echo, forwarded: usize, error: &str, description: &str) {
    let body = String::from_utf8_lossy(&answer.body);
    assert_eq!(answer.status, 401, "{body}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(challenge(error, description).as_str()),
        "{body}"
    );
    assert_eq!(answer.json()["error"], error);
    assert_eq!(answer.json()["error_description"], description);
    assert_eq!(
        echo.seen().len(),
        forwarded,
        "a refused request must not reach the upstream"
    );
}

fn assert_invalid_proof(answer: &Answer, echo: &Echo, description: &str) {
    assert_refused(answer, echo, 0, "invalid_dpop_proof", description);
}

/// The claims of a compact JWS, read without verification (the identity tests verify it).
fn jws_claims(jws: &str) -> Value {
    let payload = jws.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// A 200 whose upstream request carried an assertion with `auth` = `dpop` and neither the
/// proof nor the token.
fn assert_accepted_as_dpop(answer: &Answer, echo: &Echo) -> Value {
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let seen = echo.seen();
    let last = seen.last().expect("the request reached the upstream");
    assert_eq!(last.header("dpop"), None, "the proof is not forwarded");
    assert_eq!(
        last.header("authorization"),
        None,
        "the token is not forwarded"
    );
    let claims = jws_claims(last.header("x-identity-assertion").expect("an assertion"));
    assert_eq!(claims["auth"], "dpop");
    claims
}

// ---------------------------------------------------------------------------------------------
// Valid proofs.

#[tokio::test]
async fn a_valid_es256_proof_is_accepted_and_neither_proof_nor_token_goes_upstream() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = w.proof(&key, "/orders/1", &token).sign(&key);
    let answer = w.dpop("/orders/1", &token, &[&proof], &[]).await;
    let claims = assert_accepted_as_dpop(&answer, &w.echo);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["route"], "api");
    assert_eq!(w.echo.seen()[0].header("x-auth-subject"), Some("alice"));
    // Without require_nonce, no nonce is handed out.
    assert_eq!(answer.header("dpop-nonce"), None);
}

#[tokio::test]
async fn a_valid_eddsa_proof_is_accepted() {
    let w = world().await;
    let key = Ed25519::new(2);
    let token = w.bound_token(&key);
    let proof = w.proof(&key, "/orders/1", &token).sign(&key);
    let answer = w.dpop("/orders/1", &token, &[&proof], &[]).await;
    assert_accepted_as_dpop(&answer, &w.echo);
}

#[tokio::test]
async fn the_dpop_scheme_is_case_insensitive() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = w.proof(&key, "/orders/1", &token).sign(&key);
    let authorization = format!("dpop {token}");
    let answer = get(
        &w.proxy.url("/orders/1"),
        &[("authorization", &authorization), ("DPoP", &proof)],
    )
    .await;
    assert_accepted_as_dpop(&answer, &w.echo);
}

#[tokio::test]
async fn a_valid_proof_over_http2_signs_the_authority() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = w.proof(&key, "/orders/1", &token).sign(&key);
    let req = http::Request::get(w.proxy.url("/orders/1"))
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let answer = support::send_h2(req).await;
    assert_accepted_as_dpop(&answer, &w.echo);
}

// ---------------------------------------------------------------------------------------------
// htm

#[tokio::test]
async fn a_proof_for_another_method_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = Proof::new(&key, "POST", &w.htu("/orders/1"), &token).sign(&key);
    let answer = w.dpop("/orders/1", &token, &[&proof], &[]).await;
    assert_invalid_proof(
        &answer,
        &w.echo,
        "DPoP proof htm does not match the request method",
    );
}

#[tokio::test]
async fn a_lower_case_htm_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = Proof::new(&key, "get", &w.htu("/orders/1"), &token).sign(&key);
    let answer = w.dpop("/orders/1", &token, &[&proof], &[]).await;
    assert_invalid_proof(
        &answer,
        &w.echo,
        "DPoP proof htm does not match the request method",
    );
}

// ---------------------------------------------------------------------------------------------
// htu

const HTU_MISMATCH: &str = "DPoP proof htu does not match the request URI";

/// A proof for GET /orders/1 whose `htu` is `htu`, sent to the proxy directly.
async fn with_htu(w: &World, htu: &str, more: &[(&str, &str)]) -> Answer {
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = Proof::new(&key, "GET", htu, &token).sign(&key);
    w.dpop("/orders/1", &token, &[&proof], more).await
}

#[tokio::test]
async fn an_htu_naming_another_host_is_refused() {
    let w = world().await;
    let htu = format!("http://localhost:{}/orders/1", w.proxy.addr.port());
    let answer = with_htu(&w, &htu, &[]).await;
    assert_invalid_proof(&answer, &w.echo, HTU_MISMATCH);
}

#[tokio::test]
async fn an_htu_with_another_scheme_is_refused() {
    let w = world().await;
    let htu = format!("https://{}/orders/1", w.proxy.addr);
    let answer = with_htu(&w, &htu, &[]).await;
    assert_invalid_proof(&answer, &w.echo, HTU_MISMATCH);
}

#[tokio::test]
async fn an_htu_path_compares_case_sensitively() {
    let w = world().await;
    let answer = with_htu(&w, &w.htu("/Orders/1"), &[]).await;
    assert_invalid_proof(&answer, &w.echo, HTU_MISMATCH);
}

#[tokio::test]
async fn an_htu_with_the_default_port_spelled_out_is_accepted() {
    let w = world().await;
    // The client addressed `http://api.test` (Host without a port) and signed `:80`.
    let answer = with_htu(&w, "http://api.test:80/orders/1", &[("host", "api.test")]).await;
    assert_accepted_as_dpop(&answer, &w.echo);
    // An explicit port that is not the default is another URI.
    let answer = with_htu(&w, "http://api.test:8080/orders/1", &[("host", "api.test")]).await;
    assert_refused(&answer, &w.echo, 1, "invalid_dpop_proof", HTU_MISMATCH);
}

#[tokio::test]
async fn the_query_takes_no_part_in_htu() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    // RFC 9449 §4.2: htu without query; the request has one.
    let proof = w.proof(&key, "/orders/1", &token).sign(&key);
    let answer = w.dpop("/orders/1?page=2", &token, &[&proof], &[]).await;
    assert_accepted_as_dpop(&answer, &w.echo);
    assert_eq!(w.echo.seen()[0].target, "/orders/1?page=2");
    // A client that signed the query anyway (another one) is not refused for it.
    let proof = Proof::new(&key, "GET", &w.htu("/orders/1?page=3"), &token).sign(&key);
    let answer = w.dpop("/orders/1?page=2", &token, &[&proof], &[]).await;
    assert_accepted_as_dpop(&answer, &w.echo);
}

#[tokio::test]
async fn htu_follows_a_trusted_proxys_forwarded_proto_and_host() {
    let w = start(Setup {
        server: "trusted_proxies = [\"127.0.0.1/32\"]\n",
        ..Setup::default()
    })
    .await;
    let forwarded = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example.com"),
    ];
    let answer = with_htu(&w, "https://api.example.com/orders/1", &forwarded).await;
    assert_accepted_as_dpop(&answer, &w.echo);
    // Behind that proxy, the proxy's own view is not what the client addressed.
    let answer = with_htu(&w, &w.htu("/orders/1"), &forwarded).await;
    assert_refused(&answer, &w.echo, 1, "invalid_dpop_proof", HTU_MISMATCH);
}

#[tokio::test]
async fn forwarded_proto_and_host_from_an_untrusted_peer_do_not_change_htu() {
    let w = world().await;
    let forwarded = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example.com"),
    ];
    let answer = with_htu(&w, "https://api.example.com/orders/1", &forwarded).await;
    assert_invalid_proof(&answer, &w.echo, HTU_MISMATCH);
    // The proxy's own view still works for that client.
    let answer = with_htu(&w, &w.htu("/orders/1"), &forwarded).await;
    assert_accepted_as_dpop(&answer, &w.echo);
}

#[tokio::test]
async fn with_public_base_url_the_htu_must_use_it() {
    let w = start(Setup {
        server: "public_base_url = \"https://API.example.com\"\n",
        ..Setup::default()
    })
    .await;
    let answer = with_htu(&w, "https://api.example.com/orders/1", &[]).await;
    assert_accepted_as_dpop(&answer, &w.echo);
    // The listener's scheme and the Host header no longer count.
    let answer = with_htu(&w, &w.htu("/orders/1"), &[]).await;
    assert_refused(&answer, &w.echo, 1, "invalid_dpop_proof", HTU_MISMATCH);
}

// ---------------------------------------------------------------------------------------------
// iat, jti, ath

#[tokio::test]
async fn a_stale_iat_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    // max_age 60 s plus the issuer's clock_skew 60 s: 300 s ago is stale.
    let iat = support::issuer::now() - 300;
    let proof = w.proof(&key, "/orders/1", &token).claim("iat", json!(iat));
    let answer = w.dpop("/orders/1", &token, &[&proof.sign(&key)], &[]).await;
    assert_invalid_proof(&answer, &w.echo, "DPoP proof is too old (iat)");
}

#[tokio::test]
async fn a_future_iat_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let iat = support::issuer::now() + 300;
    let proof = w.proof(&key, "/orders/1", &token).claim("iat", json!(iat));
    let answer = w.dpop("/orders/1", &token, &[&proof.sign(&key)], &[]).await;
    assert_invalid_proof(&answer, &w.echo, "DPoP proof is issued in the future (iat)");
}

#[tokio::test]
async fn the_same_proof_twice_is_refused_the_second_time() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = w.proof(&key, "/orders/1", &token).sign(&key);
    assert_accepted_as_dpop(&w.dpop("/orders/1", &token, &[&proof], &[]).await, &w.echo);
    let again = w.dpop("/orders/1", &token, &[&proof], &[]).await;
    assert_refused(
        &again,
        &w.echo,
        1,
        "invalid_dpop_proof",
        "DPoP proof has already been used (jti)",
    );
}

#[tokio::test]
async fn the_same_jti_signed_again_is_refused() {
    let w = world().await;
    let key = Ed25519::new(3);
    let token = w.bound_token(&key);
    let first = w.proof(&key, "/orders/1", &token);
    assert_accepted_as_dpop(
        &w.dpop("/orders/1", &token, &[&first.sign(&key)], &[]).await,
        &w.echo,
    );
    // Another proof (other iat, so other bytes and signature) with the same jti.
    let iat = first.claims["iat"].as_u64().unwrap() - 1;
    let second = first.clone().claim("iat", json!(iat)).sign(&key);
    assert_ne!(second, first.sign(&key));
    let answer = w.dpop("/orders/1", &token, &[&second], &[]).await;
    assert_refused(
        &answer,
        &w.echo,
        1,
        "invalid_dpop_proof",
        "DPoP proof has already been used (jti)",
    );
}

#[tokio::test]
async fn an_ath_of_another_token_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let other = w.bound_token(&key).replace('.', "x");
    let proof = w.proof(&key, "/orders/1", &other).sign(&key);
    let answer = w.dpop("/orders/1", &token, &[&proof], &[]).await;
    assert_invalid_proof(
        &answer,
        &w.echo,
        "DPoP proof ath does not match the access token",
    );
}

// ---------------------------------------------------------------------------------------------
// The proof key

#[tokio::test]
async fn a_proof_by_another_key_than_cnf_jkt_is_an_invalid_token() {
    let w = world().await;
    let (bound, other) = (Es256::new(1), Es256::new(7));
    let token = w.bound_token(&bound);
    let proof = w.proof(&other, "/orders/1", &token).sign(&other);
    let answer = w.dpop("/orders/1", &token, &[&proof], &[]).await;
    assert_refused(
        &answer,
        &w.echo,
        0,
        "invalid_token",
        "access token is not bound to the DPoP proof key",
    );
}

#[tokio::test]
async fn a_jwk_with_the_private_key_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let mut jwk = key.jwk();
    jwk["d"] = json!(key.d());
    let proof = w.proof(&key, "/orders/1", &token).header("jwk", jwk);
    let answer = w.dpop("/orders/1", &token, &[&proof.sign(&key)], &[]).await;
    assert_invalid_proof(
        &answer,
        &w.echo,
        "DPoP proof jwk contains private key material",
    );
}

#[tokio::test]
async fn an_alg_none_proof_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = w
        .proof(&key, "/orders/1", &token)
        .header("alg", json!("none"));
    // As an attacker sends it, with an empty signature: not even a JWS.
    let answer = w.dpop("/orders/1", &token, &[&proof.unsigned()], &[]).await;
    assert_invalid_proof(
        &answer,
        &w.echo,
        "DPoP proof is not a compact JWS with a JSON object header and payload",
    );
    // With a signature after all: the alg is refused.
    let answer = w.dpop("/orders/1", &token, &[&proof.sign(&key)], &[]).await;
    assert_invalid_proof(&answer, &w.echo, "DPoP proof alg is not accepted");
}

#[tokio::test]
async fn an_hs256_proof_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = w
        .proof(&key, "/orders/1", &token)
        .header("alg", json!("HS256"));
    let answer = w
        .dpop(
            "/orders/1",
            &token,
            &[&proof.hmac(b"a-shared-secret-of-32-bytes-or-more")],
            &[],
        )
        .await;
    assert_invalid_proof(&answer, &w.echo, "DPoP proof alg is not accepted");
}

#[tokio::test]
async fn an_alg_outside_the_dpop_allow_list_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    // ES384 is a fine asymmetric alg, but not in this proxy's [dpop].algorithms.
    let proof = w
        .proof(&key, "/orders/1", &token)
        .header("alg", json!("ES384"));
    let answer = w.dpop("/orders/1", &token, &[&proof.sign(&key)], &[]).await;
    assert_invalid_proof(&answer, &w.echo, "DPoP proof alg is not accepted");
}

#[tokio::test]
async fn a_proof_with_typ_jwt_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = w
        .proof(&key, "/orders/1", &token)
        .header("typ", json!("JWT"));
    let answer = w.dpop("/orders/1", &token, &[&proof.sign(&key)], &[]).await;
    assert_invalid_proof(&answer, &w.echo, "DPoP proof typ is not dpop+jwt");
}

#[tokio::test]
async fn a_proof_with_a_bad_signature_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = w.proof(&key, "/orders/1", &token);
    // Signed by another key, the bound key's jwk in the header.
    let answer = w
        .dpop("/orders/1", &token, &[&proof.sign(&Es256::new(9))], &[])
        .await;
    assert_invalid_proof(&answer, &w.echo, "DPoP proof signature is invalid");
}

// ---------------------------------------------------------------------------------------------
// The DPoP header and the scheme

#[tokio::test]
async fn two_dpop_headers_are_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let (one, two) = (
        w.proof(&key, "/orders/1", &token).sign(&key),
        w.proof(&key, "/orders/1", &token).sign(&key),
    );
    let answer = w.dpop("/orders/1", &token, &[&one, &two], &[]).await;
    assert_invalid_proof(&answer, &w.echo, "more than one DPoP proof header");
}

#[tokio::test]
async fn a_dpop_request_without_a_proof_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let answer = w.dpop("/orders/1", &token, &[], &[]).await;
    assert_invalid_proof(&answer, &w.echo, "DPoP proof header is missing");
}

#[tokio::test]
async fn a_bound_token_sent_as_bearer_is_refused_even_with_a_valid_proof() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let proof = w.proof(&key, "/orders/1", &token).sign(&key);
    let authorization = format!("Bearer {token}");
    let answer = get(
        &w.proxy.url("/orders/1"),
        &[("authorization", &authorization), ("dpop", &proof)],
    )
    .await;
    assert_refused(
        &answer,
        &w.echo,
        0,
        "invalid_token",
        "the token is bound to a DPoP key and must be sent with the DPoP scheme",
    );
}

#[tokio::test]
async fn an_unbound_token_with_the_dpop_scheme_is_refused() {
    let w = world().await;
    let key = Es256::new(1);
    let token = w.issuer.token("ES256", json!({}));
    let proof = w.proof(&key, "/orders/1", &token).sign(&key);
    let answer = w.dpop("/orders/1", &token, &[&proof], &[]).await;
    assert_refused(
        &answer,
        &w.echo,
        0,
        "invalid_token",
        "the token is not bound to a DPoP key; send it with the Bearer scheme",
    );
}

/// The token is verified before its proof; a client that used the `DPoP` scheme gets the token's
/// `invalid_token` in a `DPoP` challenge (RFC 9449 §7.1), so it keeps talking DPoP.
#[tokio::test]
async fn an_expired_bound_token_is_refused_before_its_proof_is_looked_at() {
    let w = world().await;
    let key = Es256::new(1);
    let now = support::issuer::now();
    let token = w.issuer.token(
        "ES256",
        json!({"cnf": cnf(&key), "iat": now - 900, "exp": now - 600}),
    );
    let proof = w.proof(&key, "/orders/1", &token).sign(&key);
    let answer = w.dpop("/orders/1", &token, &[&proof], &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("www-authenticate"),
        Some("DPoP realm=\"tokengate\", error=\"invalid_token\", error_description=\"token has expired\", algs=\"EdDSA ES256\"")
    );
    assert_eq!(answer.json()["error"], "invalid_token");
    assert!(w.echo.seen().is_empty());
}

#[tokio::test]
async fn require_sender_constrained_refuses_bearer_and_accepts_dpop() {
    let w = world().await;
    let plain = w.issuer.token("ES256", json!({}));
    let authorization = format!("Bearer {plain}");
    let answer = get(
        &w.proxy.url("/strict"),
        &[("authorization", &authorization)],
    )
    .await;
    assert_refused(
        &answer,
        &w.echo,
        0,
        "invalid_token",
        "this route requires a sender-constrained token (DPoP or mTLS-bound)",
    );
    let key = Ed25519::new(4);
    let token = w.bound_token(&key);
    let proof = w.proof(&key, "/strict", &token).sign(&key);
    let answer = w.dpop("/strict", &token, &[&proof], &[]).await;
    let claims = assert_accepted_as_dpop(&answer, &w.echo);
    assert_eq!(claims["route"], "strict");
}

// ---------------------------------------------------------------------------------------------
// Nonces

#[tokio::test]
async fn with_require_nonce_the_server_nonce_round_trip_works() {
    let w = start(Setup {
        dpop: "require_nonce = true\n",
        ..Setup::default()
    })
    .await;
    let key = Es256::new(1);
    let token = w.bound_token(&key);
    let first = w.proof(&key, "/orders/1", &token).sign(&key);
    let answer = w.dpop("/orders/1", &token, &[&first], &[]).await;
    assert_refused(
        &answer,
        &w.echo,
        0,
        "use_dpop_nonce",
        "DPoP proof has no nonce; use the DPoP-Nonce provided",
    );
    let nonce = answer
        .header("dpop-nonce")
        .expect("a DPoP-Nonce")
        .to_owned();
    assert!(!nonce.is_empty());
    // A nonce the server never issued is not accepted either.
    let made_up = w
        .proof(&key, "/orders/1", &token)
        .claim("nonce", json!("made-up-nonce"))
        .sign(&key);
    let answer = w.dpop("/orders/1", &token, &[&made_up], &[]).await;
    assert_refused(
        &answer,
        &w.echo,
        0,
        "use_dpop_nonce",
        "DPoP proof nonce is not current; use the DPoP-Nonce provided",
    );
    let retry = w
        .proof(&key, "/orders/1", &token)
        .claim("nonce", json!(nonce))
        .sign(&key);
    let answer = w.dpop("/orders/1", &token, &[&retry], &[]).await;
    assert_accepted_as_dpop(&answer, &w.echo);
    assert!(
        answer.header("dpop-nonce").is_some_and(|n| !n.is_empty()),
        "a successful answer carries the nonce to use next"
    );
}

// ---------------------------------------------------------------------------------------------
// Userinfo and introspection

/// The real binary: a bound token on a `userinfo = true` route is forwarded with its own
/// claims, the userinfo endpoint is never called, and the access line says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_bound_token_is_never_sent_to_userinfo() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("identity.pem");
    keygen::run(KeygenAlg::Es256, &key_file, false).unwrap();
    let toml = config(&issuer, &echo, &key_file, &Setup::default());
    let mut gate = Gate::start(&toml, &[("TOKENGATE_LOG_FORMAT", "json")]);
    gate.wait_ready().await;

    let key = Es256::new(5);
    let token = issuer.token("ES256", json!({"cnf": cnf(&key), "sub": "dana"}));
    let htu = format!("http://{}/profile", gate.addr);
    let proof = Proof::new(&key, "GET", &htu, &token).sign(&key);
    let authorization = format!("DPoP {token}");
    let answer = get(
        &gate.url("/profile"),
        &[("authorization", &authorization), ("dpop", &proof)],
    )
    .await;
    let claims = assert_accepted_as_dpop(&answer, &echo);
    assert_eq!(claims["sub"], "dana");
    assert_eq!(claims["route"], "profile");
    assert_eq!(issuer.hits("/userinfo"), 0, "userinfo must not be called");

    let logged = gate
        .process
        .wait_stderr_async(Duration::from_secs(10), |log| {
            access_lines(log).iter().any(|l| l["route"] == "profile")
        })
        .await;
    assert!(logged, "no access line for /profile:\n{}", gate.log());
    let log = gate.log();
    let lines = access_lines(&log);
    let line = lines.iter().find(|l| l["route"] == "profile").unwrap();
    assert_eq!(line["status"], 200);
    assert_eq!(line["auth"], "dpop");
    assert_eq!(line["reason"], "dpop_bound_token");
    assert!(!log.contains(&token), "the token is never logged");
}

/// The JSON access lines in a log.
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "request")
        .collect()
}

#[tokio::test]
async fn an_opaque_token_bound_through_introspection_needs_a_proof() {
    let w = start(Setup {
        introspection: true,
        ..Setup::default()
    })
    .await;
    let key = Ed25519::new(6);
    let token = "opaque-dpop-token-0001";
    w.issuer.activate(
        token,
        json!({"sub": "erin", "scope": "orders:read", "cnf": cnf(&key)}),
    );
    // As a bearer token it is refused like a bound JWT.
    let authorization = format!("Bearer {token}");
    let answer = get(
        &w.proxy.url("/orders/1"),
        &[("authorization", &authorization)],
    )
    .await;
    assert_refused(
        &answer,
        &w.echo,
        0,
        "invalid_token",
        "the token is bound to a DPoP key and must be sent with the DPoP scheme",
    );
    // Proven by another key: refused.
    let other = Ed25519::new(8);
    let proof = w.proof(&other, "/orders/1", token).sign(&other);
    let answer = w.dpop("/orders/1", token, &[&proof], &[]).await;
    assert_refused(
        &answer,
        &w.echo,
        0,
        "invalid_token",
        "access token is not bound to the DPoP proof key",
    );
    // Proven by its key: accepted, and the assertion says dpop.
    let proof = w.proof(&key, "/orders/1", token).sign(&key);
    let answer = w.dpop("/orders/1", token, &[&proof], &[]).await;
    let claims = assert_accepted_as_dpop(&answer, &w.echo);
    assert_eq!(claims["sub"], "erin");
    assert_eq!(claims["scope"], "orders:read");
    assert_eq!(w.issuer.introspection_calls(), 1, "the answer is cached");
}
