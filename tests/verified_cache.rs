//! The verified-token cache never serves a wrong answer: per-route issuer restrictions and
//! policies still apply to a cached token, an expired token is refused even when cached, and a
//! key rotation drops cached verifications made with the old keys.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use std::time::Duration;

use serde_json::json;
use support::echo::Echo;
use support::issuer::MockIssuer;
use support::{get, Answer, Proxy};

/// Two issuers, an upstream, and a proxy with routes for either issuer, for `b` only, and for
/// a scope. Bind every field (`b: _b`, `_echo`), never `..`: a field left out is dropped at
/// once, and the proxy needs both issuers and the upstream for the whole test.
struct World {
    a: MockIssuer,
    b: MockIssuer,
    proxy: Proxy,
    _echo: Echo,
}

async fn start() -> World {
    let (a, b, echo) = (
        MockIssuer::start().await,
        MockIssuer::start().await,
        Echo::start().await,
    );
    let proxy = Proxy::start(&support::config(
        echo.addr,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}clock_skew = \"0s\"\n\n{}\n\
             [[route]]\nid = \"only-b\"\npath = \"/b\"\nissuers = [\"b\"]\n\n\
             [[route]]\nid = \"scoped\"\npath = \"/scoped\"\nscopes = [\"admin\"]\n\n\
             [[route]]\nid = \"any\"\npath_prefix = \"/\"\n",
            a.config_toml("a", &["api"]),
            b.config_toml("b", &["api"]),
        ),
    ))
    .await;
    support::wait_ready(&proxy).await;
    World {
        a,
        b,
        proxy,
        _echo: echo,
    }
}

async fn call(proxy: &Proxy, path: &str, token: &str) -> Answer {
    get(
        &proxy.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn a_cached_token_still_meets_each_routes_issuer_list_and_policy() {
    let World { a, b, proxy, _echo } = start().await;
    let token = a.token("ES256", json!({"scope": "read"}));
    assert_eq!(call(&proxy, "/x", &token).await.status, 200);
    assert_eq!(call(&proxy, "/x", &token).await.status, 200);
    assert_eq!(call(&proxy, "/b", &token).await.status, 401);
    assert_eq!(call(&proxy, "/scoped", &token).await.status, 403);
    let b_token = b.token("ES256", json!({"scope": "admin"}));
    assert_eq!(call(&proxy, "/b", &b_token).await.status, 200);
    assert_eq!(call(&proxy, "/scoped", &b_token).await.status, 200);
}

#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let World {
        a,
        b: _b,
        proxy,
        _echo,
    } = start().await;
    let exp = support::issuer::now() + 2;
    let token = a.token("ES256", json!({"exp": exp}));
    assert_eq!(call(&proxy, "/x", &token).await.status, 200);
    while support::issuer::now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = call(&proxy, "/x", &token).await;
    assert_eq!(answer.status, 401);
    assert!(answer.json()["error_description"]
        .as_str()
        .is_some_and(|d| d.contains("expired")));
}

#[tokio::test]
async fn a_key_rotation_drops_verifications_made_with_the_old_keys() {
    let World {
        a,
        b: _b,
        proxy,
        _echo,
    } = start().await;
    let old = a.token("ES256", json!({}));
    assert_eq!(call(&proxy, "/x", &old).await.status, 200);
    // The issuer rotates: the old key disappears from its JWKS. A token with a new kid makes
    // the proxy refresh (the first load does not count against jwks_min_refresh).
    a.rotate();
    let new = a.token("ES256", json!({}));
    let mut status = 0;
    for _ in 0..50 {
        status = call(&proxy, "/x", &new).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the rotated key was never picked up");
    // The old token was cached, but its key is gone: it must be refused now.
    assert_eq!(call(&proxy, "/x", &old).await.status, 401);
}

/// Past the small tier of parsed claims, a cached token's claims are read back from the payload
/// JSON it was verified with: policies still see exactly that token's claims.
#[tokio::test]
async fn claims_read_back_after_many_other_tokens_are_the_tokens_own() {
    let World {
        a,
        b: _b,
        proxy,
        _echo,
    } = start().await;
    let admin = a.token("ES256", json!({"sub": "root", "scope": "admin"}));
    let reader = a.token("ES256", json!({"sub": "ann", "scope": "read"}));
    assert_eq!(call(&proxy, "/scoped", &admin).await.status, 200);
    assert_eq!(call(&proxy, "/scoped", &reader).await.status, 403);
    // More distinct tokens than the parsed tier holds (512).
    for i in 0..600 {
        let other = a.token(
            "ES256",
            json!({"sub": format!("user-{i}"), "scope": "read"}),
        );
        assert_eq!(call(&proxy, "/x", &other).await.status, 200);
    }
    assert_eq!(call(&proxy, "/scoped", &admin).await.status, 200);
    assert_eq!(call(&proxy, "/scoped", &reader).await.status, 403);
    assert_eq!(
        call(&proxy, "/b", &admin).await.status,
        401,
        "issuer list still applies"
    );
}
