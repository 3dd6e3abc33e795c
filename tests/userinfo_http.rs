//! Userinfo enrichment end to end (SPEC §4.5): through the proxy, merged claims feed the policy
//! and the identity headers; failures follow `on_error`; the cache spares the issuer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use serde_json::json;
use support::echo::Echo;
use support::issuer::MockIssuer;
use support::{get, Answer, Proxy};

async fn start(issuer: &MockIssuer, echo: &Echo, extra: &str) -> Proxy {
    let proxy = Proxy::start(&support::config(
        echo.addr,
        &format!(
            "{extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}\n\
             [identity.headers]\nX-Auth-Subject = \"sub\"\nX-Auth-Email = \"email\"\nX-Auth-Dept = \"department\"\n\n\
             [[route]]\nid = \"fresh\"\npath = \"/fresh\"\nuserinfo = true\nuserinfo_max_age = \"0s\"\n\n\
             [[route]]\nid = \"cached\"\npath = \"/cached\"\nuserinfo = true\n\n\
             [[route]]\nid = \"sales\"\npath = \"/sales\"\nuserinfo = true\n\
             claims = [{{ claim = \"department\", equals = \"sales\" }}]\n\n\
             [[route]]\nid = \"plain\"\npath = \"/plain\"\n",
            issuer.config_toml("mock", &["api"])
        ),
    ))
    .await;
    support::wait_ready(&proxy).await;
    proxy
}

async fn call(proxy: &Proxy, path: &str, token: &str) -> Answer {
    get(
        &proxy.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn userinfo_claims_are_merged_over_token_claims_except_protected_ones() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = start(&issuer, &echo, "").await;
    let token = issuer.token("RS256", json!({"email": "old@example.com"}));
    issuer.configure(|s| {
        s.userinfo.insert(
            token.clone(),
            json!({"sub": "alice", "email": "new@example.com", "department": "sales",
                   "iss": "https://evil.example", "scope": "admin"}),
        );
    });
    assert_eq!(call(&proxy, "/cached", &token).await.status, 200);
    let seen = &echo.seen()[0];
    assert_eq!(seen.header("x-auth-email"), Some("new@example.com"));
    assert_eq!(seen.header("x-auth-dept"), Some("sales"));
    // A route without userinfo keeps the token's claims.
    assert_eq!(call(&proxy, "/plain", &token).await.status, 200);
    assert_eq!(
        echo.seen()[1].header("x-auth-email"),
        Some("old@example.com")
    );
}

#[tokio::test]
async fn policy_is_evaluated_on_the_merged_claims() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = start(&issuer, &echo, "").await;
    let sales = issuer.token("RS256", json!({"sub": "bob"}));
    let other = issuer.token("RS256", json!({"sub": "carol", "department": "sales"}));
    issuer.configure(|s| {
        s.userinfo
            .insert(sales.clone(), json!({"sub": "bob", "department": "sales"}));
        s.userinfo
            .insert(other.clone(), json!({"sub": "carol", "department": "hr"}));
    });
    assert_eq!(call(&proxy, "/sales", &sales).await.status, 200);
    // The token says sales, the fresh userinfo says hr: the fresh answer wins.
    assert_eq!(call(&proxy, "/sales", &other).await.status, 403);
}

#[tokio::test]
async fn cached_route_asks_once_and_zero_max_age_always_asks() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = start(&issuer, &echo, "").await;
    let token = issuer.token("RS256", json!({}));
    for _ in 0..3 {
        assert_eq!(call(&proxy, "/cached", &token).await.status, 200);
    }
    assert_eq!(issuer.hits("/userinfo"), 1);
    for _ in 0..3 {
        assert_eq!(call(&proxy, "/fresh", &token).await.status, 200);
    }
    assert_eq!(issuer.hits("/userinfo"), 4);
}

#[tokio::test]
async fn userinfo_401_is_invalid_token_with_the_spec_description() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = start(&issuer, &echo, "").await;
    let token = issuer.token("RS256", json!({}));
    issuer.configure(|s| {
        s.revoked.insert(token.clone());
    });
    let answer = call(&proxy, "/cached", &token).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.json()["error_description"],
        "userinfo endpoint rejected the token"
    );
    assert!(answer
        .header("www-authenticate")
        .is_some_and(|v| v.contains("error=\"invalid_token\"")));
    // Remembered: the second request does not ask again.
    assert_eq!(call(&proxy, "/fresh", &token).await.status, 401);
    assert_eq!(issuer.hits("/userinfo"), 1);
    assert!(echo.seen().is_empty());
}

#[tokio::test]
async fn userinfo_subject_mismatch_is_invalid_token() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = start(&issuer, &echo, "").await;
    let token = issuer.token("RS256", json!({"sub": "alice"}));
    issuer.configure(|s| {
        s.userinfo.insert(token.clone(), json!({"sub": "mallory"}));
    });
    let answer = call(&proxy, "/cached", &token).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"], "invalid_token");
    assert!(echo.seen().is_empty());
}

#[tokio::test]
async fn userinfo_failure_denies_with_503_by_default() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = start(&issuer, &echo, "").await;
    issuer.configure(|s| s.userinfo_status = Some(500));
    let token = issuer.token("RS256", json!({}));
    let answer = call(&proxy, "/cached", &token).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["error"], "temporarily_unavailable");
    assert!(answer.header("retry-after").is_some());
    // Not cached: the next request asks again.
    let _ = call(&proxy, "/cached", &token).await;
    assert_eq!(issuer.hits("/userinfo"), 2);
}

#[tokio::test]
async fn userinfo_failure_proceeds_with_token_claims_when_configured() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = start(&issuer, &echo, "[userinfo]\non_error = \"proceed\"\n").await;
    issuer.configure(|s| s.userinfo_status = Some(502));
    let token = issuer.token("RS256", json!({"email": "token@example.com"}));
    assert_eq!(call(&proxy, "/cached", &token).await.status, 200);
    assert_eq!(
        echo.seen()[0].header("x-auth-email"),
        Some("token@example.com")
    );
}
