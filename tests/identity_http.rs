//! The identity forwarded upstream, end to end (SPEC §5): a verified request carries a signed
//! assertion that an independent JOSE library (`jsonwebtoken`) verifies with nothing but the
//! JWKS the proxy publishes; public and tokenless requests carry none; a client's is removed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use serde_json::{json, Map, Value};
use support::echo::Echo;
use support::issuer::MockIssuer;
use support::{get, Proxy};
use tokengate::keygen::{self, KeygenAlg};

struct World {
    issuer: MockIssuer,
    echo: Echo,
    proxy: Proxy,
    _keys: tempfile::TempDir,
}

async fn start(alg: KeygenAlg, previous: bool, identity_extra: &str) -> World {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let keys = tempfile::tempdir().unwrap();
    let active = keys.path().join("active.pem");
    keygen::run(alg, &active, false).unwrap();
    let previous_keys = if previous {
        let old = keys.path().join("old.pem");
        keygen::run(KeygenAlg::Es256, &old, false).unwrap();
        format!("previous_keys = [{:?}]\n", old.display().to_string())
    } else {
        String::new()
    };
    let proxy = Proxy::start(&support::config(
        echo.addr,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}\n\
             [identity]\nsigning_key = {:?}\n{previous_keys}{identity_extra}\n\
             [[route]]\nid = \"public\"\npath = \"/public\"\nauth = \"public\"\n\n\
             [[route]]\nid = \"maybe\"\npath = \"/maybe\"\nauth = \"optional\"\n\n\
             [[route]]\nid = \"orders\"\npath_prefix = \"/orders\"\naudience = \"orders-backend\"\n\n\
             [[route]]\nid = \"api\"\npath_prefix = \"/\"\n",
            issuer.config_toml("mock", &["api"]),
            active.display().to_string()
        ),
    ))
    .await;
    support::wait_ready(&proxy).await;
    World {
        issuer,
        echo,
        proxy,
        _keys: keys,
    }
}

impl World {
    async fn jwks(&self) -> Vec<u8> {
        let answer = get(&self.proxy.url("/.well-known/tokengate/jwks.json"), &[]).await;
        assert_eq!(answer.status, 200);
        assert!(answer
            .header("cache-control")
            .is_some_and(|v| v.contains("max-age=")));
        answer.body.to_vec()
    }

    /// The assertion the upstream received on its most recent request.
    fn last_assertion(&self) -> Option<String> {
        self.echo
            .seen()
            .last()
            .and_then(|s| s.header("x-identity-assertion").map(str::to_owned))
    }
}

fn verify(jwks: &[u8], assertion: &str, audience: &str) -> (String, Map<String, Value>) {
    let set: JwkSet = serde_json::from_slice(jwks).unwrap();
    let header = decode_header(assertion).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.unwrap();
    let key = DecodingKey::from_jwk(set.find(&kid).expect("kid in the JWKS")).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&["tokengate"]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = decode::<Map<String, Value>>(assertion, &key, &validation).unwrap();
    (kid, data.claims)
}

async fn verified_request(alg: KeygenAlg) {
    let w = start(alg, false, "").await;
    let exp = support::issuer::now() as i64 + 120;
    let token = w.issuer.token(
        "RS256",
        json!({"sub": "alice", "email": "a@example.com", "groups": ["admin"], "exp": exp,
               "scope": "read", "client_id": "web", "secret_claim": "not copied"}),
    );
    let answer = get(
        &w.proxy.url("/items?x=1"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(answer.status, 200);
    let assertion = w.last_assertion().expect("an assertion upstream");
    let (_, claims) = verify(
        &w.jwks().await,
        &assertion,
        &format!("http://{}", w.echo.addr),
    );
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["route"], "api");
    assert_eq!(claims["token_iss"], w.issuer.issuer());
    assert_eq!(claims["auth"], "jwt");
    assert_eq!(claims["email"], "a@example.com");
    assert_eq!(claims["groups"], json!(["admin"]));
    assert_eq!(claims["scope"], "read");
    assert_eq!(claims["client_id"], "web");
    assert!(claims.get("secret_claim").is_none());
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    let (iat, aexp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(
        aexp <= iat + 60 && aexp <= exp,
        "exp = min(now + ttl, token exp)"
    );
    assert!(claims.get("htm").is_none() && claims.get("htp").is_none());
}

#[tokio::test]
async fn es256_assertion_verifies_with_only_the_published_jwks() {
    verified_request(KeygenAlg::Es256).await;
}

#[tokio::test]
async fn eddsa_assertion_verifies_with_only_the_published_jwks() {
    verified_request(KeygenAlg::EdDsa).await;
}

#[tokio::test]
async fn rs256_assertion_verifies_with_only_the_published_jwks() {
    verified_request(KeygenAlg::Rs256).await;
}

#[tokio::test]
async fn assertion_exp_never_outlives_the_access_token() {
    let w = start(KeygenAlg::Es256, false, "ttl = \"1h\"\n").await;
    let exp = support::issuer::now() as i64 + 30;
    let token = w.issuer.token("RS256", json!({"exp": exp}));
    let auth = format!("Bearer {token}");
    assert_eq!(
        get(&w.proxy.url("/x"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let (_, claims) = verify(
        &w.jwks().await,
        &w.last_assertion().unwrap(),
        &format!("http://{}", w.echo.addr),
    );
    assert_eq!(claims["exp"].as_i64(), Some(exp));
}

#[tokio::test]
async fn route_audience_and_bound_request_claims() {
    let w = start(KeygenAlg::Es256, false, "bind_request = true\n").await;
    let token = w.issuer.token("RS256", json!({}));
    let auth = format!("Bearer {token}");
    assert_eq!(
        get(&w.proxy.url("/orders/./7?q=1"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let (_, claims) = verify(
        &w.jwks().await,
        &w.last_assertion().unwrap(),
        "orders-backend",
    );
    assert_eq!(claims["aud"], "orders-backend");
    assert_eq!(claims["htm"], "GET");
    assert_eq!(claims["htp"], "/orders/7");
    // Another path with the same token gets its own assertion, bound to that path.
    assert_eq!(
        get(&w.proxy.url("/orders/8"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let (_, claims) = verify(
        &w.jwks().await,
        &w.last_assertion().unwrap(),
        "orders-backend",
    );
    assert_eq!(claims["htp"], "/orders/8");
}

#[tokio::test]
async fn a_token_without_sub_is_identified_by_client_id() {
    let w = start(KeygenAlg::Es256, false, "").await;
    let token = w
        .issuer
        .token("RS256", json!({"sub": null, "client_id": "svc-billing"}));
    let auth = format!("Bearer {token}");
    assert_eq!(
        get(&w.proxy.url("/x"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let assertion = w.last_assertion().unwrap();
    let payload = assertion.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "svc-billing");
}

#[tokio::test]
async fn public_and_tokenless_requests_carry_no_assertion_and_a_forged_one_is_removed() {
    let w = start(KeygenAlg::Es256, false, "").await;
    let forged = [
        ("x-identity-assertion", "forged"),
        ("X_Identity_Assertion", "forged"),
    ];
    assert_eq!(get(&w.proxy.url("/public"), &forged).await.status, 200);
    assert_eq!(w.last_assertion(), None);
    assert_eq!(get(&w.proxy.url("/maybe"), &forged).await.status, 200);
    assert_eq!(w.last_assertion(), None);
    assert!(w
        .echo
        .seen()
        .iter()
        .all(|s| s.header("x_identity_assertion").is_none()));
    // With a token, the proxy's own assertion replaces the forged one.
    let token = w.issuer.token("RS256", json!({}));
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), forged[0]];
    assert_eq!(get(&w.proxy.url("/maybe"), &headers).await.status, 200);
    let seen = w.echo.seen();
    let all = seen.last().unwrap().all("x-identity-assertion");
    assert_eq!(all.len(), 1);
    assert_ne!(all[0], "forged");
}

#[tokio::test]
async fn jwks_is_published_on_both_listeners_with_previous_keys_during_rotation() {
    let w = start(KeygenAlg::Es256, true, "").await;
    let main = w.jwks().await;
    let admin = get(&format!("http://{}/jwks.json", w.proxy.admin.unwrap()), &[]).await;
    assert_eq!(admin.status, 200);
    assert_eq!(admin.body.to_vec(), main);
    let set: JwkSet = serde_json::from_slice(&main).unwrap();
    assert_eq!(set.keys.len(), 2, "active and previous key");
    // The assertion is signed by the active (first) key, never the previous one.
    let token = w.issuer.token("RS256", json!({}));
    let auth = format!("Bearer {token}");
    assert_eq!(
        get(&w.proxy.url("/x"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let (kid, _) = verify(
        &main,
        &w.last_assertion().unwrap(),
        &format!("http://{}", w.echo.addr),
    );
    assert_eq!(Some(kid.as_str()), set.keys[0].common.key_id.as_deref());
    // The JWKS route takes precedence over the catch-all route and needs no token.
    assert!(w.echo.seen().iter().all(|s| !s.target.contains("jwks")));
}

/// The assertion is reused only while the claims it carries stay the same: a cached userinfo
/// answer keeps it, a fresh answer that changed a claim gets a new one (on every route).
#[tokio::test]
async fn a_changed_userinfo_answer_gets_a_new_assertion_and_a_cached_one_keeps_it() {
    let w = start(
        KeygenAlg::Es256,
        false,
        "\n[[route]]\nid = \"fresh\"\npath = \"/fresh\"\nuserinfo = true\nuserinfo_max_age = \"0s\"\n\n\
         [[route]]\nid = \"cached\"\npath = \"/cached\"\nuserinfo = true\n",
    )
    .await;
    let token = w.issuer.token("RS256", json!({"sub": "alice"}));
    let answer_with = |email: &'static str| {
        let token = token.clone();
        move |s: &mut support::issuer::Settings| {
            s.userinfo
                .insert(token, json!({"sub": "alice", "email": email}));
        }
    };
    let bearer = format!("Bearer {token}");
    let audience = format!("http://{}", w.echo.addr);
    let jwks = w.jwks().await;
    let send = async |path: &str| {
        let answer = get(&w.proxy.url(path), &[("authorization", &bearer)]).await;
        assert_eq!(answer.status, 200, "{path}");
        let assertion = w.last_assertion().expect("an assertion upstream");
        let (_, claims) = verify(&jwks, &assertion, &audience);
        (assertion, claims["email"].clone())
    };

    w.issuer.configure(answer_with("old@example.com"));
    let (cached, email) = send("/cached").await;
    assert_eq!(email, "old@example.com");
    assert_eq!(
        send("/cached").await.0,
        cached,
        "same answer, same assertion"
    );
    let (fresh, email) = send("/fresh").await;
    assert_eq!(email, "old@example.com");

    w.issuer.configure(answer_with("new@example.com"));
    let (refreshed, email) = send("/fresh").await;
    assert_eq!(email, "new@example.com");
    assert_ne!(refreshed, fresh);
    // The refreshed answer replaced the cached one, for every route: so did the assertion.
    let (recached, email) = send("/cached").await;
    assert_eq!(email, "new@example.com");
    assert_ne!(recached, cached);
    assert_eq!(send("/cached").await.0, recached);
}
