//! Opaque tokens through the running proxy (SPEC §3 `[issuer.introspection]`, §4 item 4, §5
//! `auth`): an active answer is the token's claims (policy, assertion, claim headers), an
//! inactive one is 401, both client authentication methods, the positive and negative caches,
//! single-flight, outages (503, while a token cached before keeps working for its lifetime),
//! several issuers asked in file order, the endpoint from discovery, a route's `issuers` list,
//! and an answer's `cnf["x5t#S256"]` checked against the TLS client certificate.
//!
//! The introspection client's own rules are proven with injected clocks in
//! `introspection_client.rs`; here the proxy runs on real time, so the few lifetimes crossed are
//! seconds long and every wait leaves seconds of slack.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::echo::Echo;
use support::issuer::{IntrospectionAuth, IntrospectionFailure, MockIssuer, INTROSPECTION_CLIENT};
use support::pki::{pki, x5t_s256, Pki};
use support::{get, wait_ready, Answer, Proxy};

/// How one issuer introspects.
struct Intro<'a> {
    auth_method: &'a str,
    cache_ttl: &'a str,
    negative_cache_ttl: &'a str,
    /// `false`: no `endpoint`, so it comes from discovery.
    endpoint: bool,
}

const INTRO: Intro<'static> = Intro {
    auth_method: "client_secret_basic",
    cache_ttl: "2m",
    negative_cache_ttl: "10s",
    endpoint: true,
};

/// An `[[issuer]]` block for `mock` with `[issuer.introspection]`.
fn issuer_block(mock: &MockIssuer, id: &str, intro: &Intro<'_>) -> String {
    let (client_id, secret) = INTROSPECTION_CLIENT;
    let endpoint = if intro.endpoint {
        format!("endpoint = \"{}/introspect\"\n", mock.url())
    } else {
        String::new()
    };
    format!(
        "{}[issuer.introspection]\n{endpoint}client_id = \"{client_id}\"\n\
         client_secret = \"{secret}\"\nauth_method = \"{}\"\ncache_ttl = \"{}\"\n\
         negative_cache_ttl = \"{}\"\n\n",
        mock.config_toml(id, &["api"]),
        intro.auth_method,
        intro.cache_ttl,
        intro.negative_cache_ttl
    )
}

/// The whole configuration: `issuers` (blocks from [`issuer_block`], the first with id
/// `first`), an identity key and claim headers, and the routes `POST /orders` (scope
/// `orders:write`), `/admin` (`client_id` must be `svc-admin`), `/first-only` (issuer `first`)
/// and `/` (any caller).
fn config(echo: &Echo, issuers: &str, server_tls: &str, key: &std::path::Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_tls}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"http://{}\"\ntimeout = \"5s\"\n\n\
         {issuers}\
         [identity]\nsigning_key = {:?}\n\
         [identity.headers]\nX-Auth-Subject = \"sub\"\nX-Auth-Scope = \"scope\"\n\
         X-Auth-Client = \"client_id\"\n\n\
         [[route]]\nid = \"write\"\npath_prefix = \"/orders\"\nmethods = [\"POST\"]\n\
         scopes = [\"orders:write\"]\n\n\
         [[route]]\nid = \"admin\"\npath = \"/admin\"\n\
         [[route.claims]]\nclaim = \"client_id\"\nequals = \"svc-admin\"\n\n\
         [[route]]\nid = \"first-only\"\npath = \"/first-only\"\nissuers = [\"first\"]\n\n\
         [[route]]\nid = \"api\"\npath_prefix = \"/\"\n",
        echo.addr,
        key.display().to_string()
    )
}

struct World {
    issuer: MockIssuer,
    echo: Echo,
    proxy: Proxy,
    _keys: tempfile::TempDir,
}

async fn start_with(intro: &Intro<'_>) -> World {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let (keys, key) = support::identity_key();
    let issuers = issuer_block(&issuer, "first", intro);
    let proxy = Proxy::start(&config(&echo, &issuers, "", &key)).await;
    wait_ready(&proxy).await;
    World {
        issuer,
        echo,
        proxy,
        _keys: keys,
    }
}

async fn world() -> World {
    start_with(&INTRO).await
}

/// `GET path` with `Authorization: Bearer <token>`.
async fn bearer(proxy: &Proxy, path: &str, token: &str) -> Answer {
    let authorization = format!("Bearer {token}");
    get(&proxy.url(path), &[("authorization", &authorization)]).await
}

/// `POST path` with `Authorization: Bearer <token>`.
async fn post(proxy: &Proxy, path: &str, token: &str) -> Answer {
    let req = Request::post(proxy.url(path))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    support::send(req).await
}

/// The claims of the assertion on the upstream's latest request (read without verification;
/// `identity_http.rs` proves it verifies).
fn last_assertion(echo: &Echo) -> Value {
    let seen = echo.seen();
    let jws = seen
        .last()
        .and_then(|s| s.header("x-identity-assertion"))
        .expect("an assertion upstream");
    let payload = jws.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn body(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

/// 401 `invalid_token` with exactly this description, and nothing reached the upstream.
fn assert_invalid_token(answer: &Answer, echo: &Echo, forwarded: usize, description: &str) {
    assert_eq!(answer.status, 401, "{}", body(answer));
    let challenge = format!(
        "Bearer realm=\"tokengate\", error=\"invalid_token\", error_description=\"{description}\""
    );
    assert_eq!(answer.header("www-authenticate"), Some(challenge.as_str()));
    assert_eq!(answer.json()["error"], "invalid_token");
    assert_eq!(
        echo.seen().len(),
        forwarded,
        "a refused request never goes upstream"
    );
}

/// 503 `temporarily_unavailable` with `Retry-After`, and nothing reached the upstream.
fn assert_unavailable(answer: &Answer, echo: &Echo, forwarded: usize) {
    assert_eq!(answer.status, 503, "{}", body(answer));
    assert_eq!(answer.json()["error"], "temporarily_unavailable");
    let retry_after = answer.header("retry-after").expect("Retry-After");
    assert!(
        retry_after.parse::<u32>().is_ok_and(|s| s > 0),
        "{retry_after}"
    );
    assert_eq!(
        echo.seen().len(),
        forwarded,
        "a refused request never goes upstream"
    );
}

const TOKEN: &str = "opaque-token-2b7e151628aed2a6";

// ---------------------------------------------------------------------------------------------
// Active and inactive answers

#[tokio::test]
async fn an_active_opaque_token_is_forwarded_with_the_answers_claims() {
    let w = world().await;
    w.issuer.activate(
        TOKEN,
        json!({"sub": "frank", "scope": "orders:read orders:write", "client_id": "web-app",
               "username": "not copied"}),
    );
    let answer = bearer(&w.proxy, "/orders/1", TOKEN).await;
    assert_eq!(answer.status, 200, "{}", body(&answer));
    let claims = last_assertion(&w.echo);
    assert_eq!(claims["auth"], "introspection");
    assert_eq!(claims["sub"], "frank");
    assert_eq!(claims["scope"], "orders:read orders:write");
    assert_eq!(claims["client_id"], "web-app");
    assert_eq!(claims["token_iss"], w.issuer.issuer());
    assert!(claims.get("username").is_none());
    let seen = &w.echo.seen()[0];
    assert_eq!(seen.header("x-auth-subject"), Some("frank"));
    assert_eq!(
        seen.header("x-auth-scope"),
        Some("orders:read%20orders:write")
    );
    assert_eq!(seen.header("x-auth-client"), Some("web-app"));
    assert_eq!(seen.header("authorization"), None);
    // The introspection request: a form POST with the token, tokengate's credentials.
    let calls = w.issuer.introspection_requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].form.get("token").map(String::as_str), Some(TOKEN));
}

#[tokio::test]
async fn the_answers_scope_and_client_id_feed_the_policy() {
    let w = world().await;
    let reader = "opaque-reader-0001";
    let writer = "opaque-writer-0001";
    let admin = "opaque-admin-0001";
    w.issuer.activate(
        reader,
        json!({"sub": "r", "scope": "orders:read", "client_id": "web-app"}),
    );
    w.issuer.activate(
        writer,
        json!({"sub": "w", "scope": "orders:write", "client_id": "web-app"}),
    );
    w.issuer
        .activate(admin, json!({"sub": "a", "client_id": "svc-admin"}));

    let answer = post(&w.proxy, "/orders", reader).await;
    assert_eq!(answer.status, 403, "{}", body(&answer));
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Bearer realm=\"tokengate\", error=\"insufficient_scope\", scope=\"orders:write\"")
    );
    assert_eq!(answer.json()["error"], "insufficient_scope");
    assert!(w.echo.seen().is_empty());
    assert_eq!(post(&w.proxy, "/orders", writer).await.status, 200);

    let answer = bearer(&w.proxy, "/admin", writer).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json()["error"], "access_denied");
    assert_eq!(w.echo.seen().len(), 1);
    assert_eq!(bearer(&w.proxy, "/admin", admin).await.status, 200);
    assert_eq!(last_assertion(&w.echo)["client_id"], "svc-admin");
}

#[tokio::test]
async fn an_inactive_token_is_an_invalid_token() {
    let w = world().await;
    let answer = bearer(&w.proxy, "/orders/1", "opaque-never-issued").await;
    assert_invalid_token(&answer, &w.echo, 0, "token is not active");
    assert_eq!(w.issuer.introspection_calls(), 1);
    // An answer with more members than `active: false` is just as inactive.
    w.issuer.configure(|s| {
        s.introspection_failure = Some(IntrospectionFailure::Body(
            r#"{"active": false, "sub": "gina", "scope": "orders:write"}"#.to_owned(),
        ))
    });
    let answer = bearer(&w.proxy, "/orders/1", TOKEN).await;
    assert_invalid_token(&answer, &w.echo, 0, "token is not active");
}

// ---------------------------------------------------------------------------------------------
// Client authentication

#[tokio::test]
async fn client_secret_basic_sends_the_credentials_in_the_authorization_header() {
    let w = world().await;
    w.issuer
        .configure(|s| s.introspection_auth = IntrospectionAuth::Basic);
    w.issuer.activate(TOKEN, json!({"sub": "hugo"}));
    assert_eq!(bearer(&w.proxy, "/x", TOKEN).await.status, 200);
    let call = &w.issuer.introspection_requests()[0];
    let (id, secret) = INTROSPECTION_CLIENT;
    assert_eq!(call.basic, Some((id.to_owned(), secret.to_owned())));
    assert_eq!(
        call.form.get("client_secret"),
        None,
        "never in the form too"
    );
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_form() {
    let w = start_with(&Intro {
        auth_method: "client_secret_post",
        ..INTRO
    })
    .await;
    w.issuer
        .configure(|s| s.introspection_auth = IntrospectionAuth::Post);
    w.issuer.activate(TOKEN, json!({"sub": "ida"}));
    assert_eq!(bearer(&w.proxy, "/x", TOKEN).await.status, 200);
    let call = &w.issuer.introspection_requests()[0];
    let (id, secret) = INTROSPECTION_CLIENT;
    assert_eq!(call.basic, None);
    assert_eq!(call.form.get("client_id").map(String::as_str), Some(id));
    assert_eq!(
        call.form.get("client_secret").map(String::as_str),
        Some(secret)
    );
}

// ---------------------------------------------------------------------------------------------
// Caching

#[tokio::test]
async fn a_second_request_with_the_token_makes_no_call() {
    let w = world().await;
    w.issuer.activate(TOKEN, json!({"sub": "jan"}));
    for _ in 0..3 {
        assert_eq!(bearer(&w.proxy, "/x", TOKEN).await.status, 200);
    }
    assert_eq!(w.issuer.introspection_calls(), 1);
    assert_eq!(w.echo.seen().len(), 3);
}

#[tokio::test]
async fn an_inactive_answer_is_remembered_for_negative_cache_ttl() {
    let w = start_with(&Intro {
        negative_cache_ttl: "3s",
        ..INTRO
    })
    .await;
    let answer = bearer(&w.proxy, "/x", TOKEN).await;
    assert_invalid_token(&answer, &w.echo, 0, "token is not active");
    // The issuer now says active, but the inactive answer is still remembered.
    w.issuer.activate(TOKEN, json!({"sub": "kim"}));
    let answer = bearer(&w.proxy, "/x", TOKEN).await;
    assert_invalid_token(&answer, &w.echo, 0, "token is not active");
    assert_eq!(w.issuer.introspection_calls(), 1);
    // Once negative_cache_ttl has passed, the issuer is asked again.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(bearer(&w.proxy, "/x", TOKEN).await.status, 200);
    assert_eq!(w.issuer.introspection_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_with_one_new_token_make_one_call() {
    let w = world().await;
    w.issuer.activate(TOKEN, json!({"sub": "lea"}));
    // Slow enough that the requests overlap the call; a late one is a cache hit anyway.
    w.issuer
        .configure(|s| s.introspection_delay = Duration::from_millis(300));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let url = w.proxy.url("/x");
        requests.spawn(async move {
            let authorization = format!("Bearer {TOKEN}");
            get(&url, &[("authorization", &authorization)]).await.status
        });
    }
    let statuses = requests.join_all().await;
    assert_eq!(statuses, vec![200; 50]);
    assert_eq!(w.issuer.introspection_calls(), 1);
}

// ---------------------------------------------------------------------------------------------
// Outages

#[tokio::test]
async fn a_failing_endpoint_is_503_and_nothing_is_cached() {
    let w = world().await;
    w.issuer.activate(TOKEN, json!({"sub": "max"}));
    for failure in [
        IntrospectionFailure::Status(500),
        IntrospectionFailure::Body("<html>".to_owned()),
    ] {
        w.issuer
            .configure(|s| s.introspection_failure = Some(failure));
        assert_unavailable(&bearer(&w.proxy, "/x", TOKEN).await, &w.echo, 0);
    }
    w.issuer.set_down(true);
    assert_unavailable(&bearer(&w.proxy, "/x", TOKEN).await, &w.echo, 0);
    // Back up: the token is accepted at once (the failures were not remembered).
    w.issuer.set_down(false);
    w.issuer.configure(|s| s.introspection_failure = None);
    assert_eq!(bearer(&w.proxy, "/x", TOKEN).await.status, 200);
}

#[tokio::test]
async fn refused_client_credentials_are_503() {
    let w = world().await;
    w.issuer.activate(TOKEN, json!({"sub": "nia"}));
    w.issuer.configure(|s| {
        s.introspection_client = Some(("tokengate".to_owned(), "rotated-secret".to_owned()))
    });
    assert_unavailable(&bearer(&w.proxy, "/x", TOKEN).await, &w.echo, 0);
    // The wrong method counts the same: the issuer refuses tokengate, not the token.
    w.issuer.configure(|s| {
        s.introspection_client = None;
        s.introspection_auth = IntrospectionAuth::Post;
    });
    assert_unavailable(&bearer(&w.proxy, "/x", TOKEN).await, &w.echo, 0);
}

#[tokio::test]
async fn a_token_cached_before_an_outage_keeps_working_until_its_lifetime_ends() {
    let w = world().await;
    // exp bounds the cache entry (cache_ttl is 2 minutes).
    let exp = support::issuer::now() + 4;
    w.issuer.activate(TOKEN, json!({"sub": "omar", "exp": exp}));
    assert_eq!(bearer(&w.proxy, "/x", TOKEN).await.status, 200);
    w.issuer.set_down(true);
    let answer = bearer(&w.proxy, "/x", TOKEN).await;
    assert_eq!(answer.status, 200, "{}", body(&answer));
    assert_eq!(w.issuer.introspection_calls(), 1);
    // After exp the entry is gone, and the issuer cannot be asked.
    while support::issuer::now() <= exp {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_unavailable(&bearer(&w.proxy, "/x", TOKEN).await, &w.echo, 2);
}

// ---------------------------------------------------------------------------------------------
// Several issuers, discovery, route issuers

struct Two {
    first: MockIssuer,
    second: MockIssuer,
    echo: Echo,
    proxy: Proxy,
    _keys: tempfile::TempDir,
}

async fn two() -> Two {
    let (first, second, echo) = (
        MockIssuer::start().await,
        MockIssuer::start().await,
        Echo::start().await,
    );
    let (keys, key) = support::identity_key();
    let issuers = format!(
        "{}{}",
        issuer_block(&first, "first", &INTRO),
        issuer_block(&second, "second", &INTRO)
    );
    let proxy = Proxy::start(&config(&echo, &issuers, "", &key)).await;
    wait_ready(&proxy).await;
    Two {
        first,
        second,
        echo,
        proxy,
        _keys: keys,
    }
}

#[tokio::test]
async fn issuers_are_asked_in_file_order_until_one_says_active() {
    let t = two().await;
    let of_second = "opaque-of-second-0001";
    t.second.activate(of_second, json!({"sub": "pia"}));
    assert_eq!(bearer(&t.proxy, "/x", of_second).await.status, 200);
    assert_eq!(last_assertion(&t.echo)["token_iss"], t.second.issuer());
    assert_eq!(
        (
            t.first.introspection_calls(),
            t.second.introspection_calls()
        ),
        (1, 1)
    );
    // Active at the first: it decides, the second is not asked.
    let of_first = "opaque-of-first-0001";
    t.first.activate(of_first, json!({"sub": "quinn"}));
    t.second.activate(of_first, json!({"sub": "someone-else"}));
    assert_eq!(bearer(&t.proxy, "/x", of_first).await.status, 200);
    let claims = last_assertion(&t.echo);
    assert_eq!(claims["token_iss"], t.first.issuer());
    assert_eq!(claims["sub"], "quinn");
    assert_eq!(
        (
            t.first.introspection_calls(),
            t.second.introspection_calls()
        ),
        (2, 1)
    );
    // Inactive everywhere: both asked, 401.
    let answer = bearer(&t.proxy, "/x", "opaque-of-nobody-0001").await;
    assert_invalid_token(&answer, &t.echo, 2, "token is not active");
    assert_eq!(
        (
            t.first.introspection_calls(),
            t.second.introspection_calls()
        ),
        (3, 2)
    );
}

#[tokio::test]
async fn a_routes_issuers_list_applies_to_introspected_tokens() {
    let t = two().await;
    let of_second = "opaque-of-second-0002";
    t.second.activate(of_second, json!({"sub": "rita"}));
    let answer = bearer(&t.proxy, "/first-only", of_second).await;
    assert_invalid_token(
        &answer,
        &t.echo,
        0,
        "token issuer is not accepted on this route",
    );
    let of_first = "opaque-of-first-0002";
    t.first.activate(of_first, json!({"sub": "sam"}));
    assert_eq!(bearer(&t.proxy, "/first-only", of_first).await.status, 200);
    // The token of the second issuer is fine elsewhere.
    assert_eq!(bearer(&t.proxy, "/x", of_second).await.status, 200);
}

#[tokio::test]
async fn the_endpoint_comes_from_discovery_when_not_configured() {
    let w = start_with(&Intro {
        endpoint: false,
        ..INTRO
    })
    .await;
    w.issuer.activate(TOKEN, json!({"sub": "tom"}));
    assert_eq!(bearer(&w.proxy, "/x", TOKEN).await.status, 200);
    assert_eq!(w.issuer.introspection_calls(), 1);
    assert_eq!(last_assertion(&w.echo)["auth"], "introspection");
}

// ---------------------------------------------------------------------------------------------
// Certificate-bound opaque tokens (RFC 8705)

/// One GET over a fresh TLS connection, optionally with the client certificate.
async fn tls_get(proxy: &Proxy, pki: &Pki, token: &str, cert: Option<(&str, &str)>) -> u16 {
    let tls = support::pki::connect(proxy, pki, &[b"http/1.1"], cert)
        .await
        .expect("TLS");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get("/x")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender
        .send_request(req)
        .await
        .expect("response")
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_answers_x5t_s256_is_checked_against_the_tls_client_certificate() {
    let (issuer, echo, pki, dir) = (
        MockIssuer::start().await,
        Echo::start().await,
        pki(),
        tempfile::tempdir().unwrap(),
    );
    let (_keys, key) = support::identity_key();
    let issuers = issuer_block(&issuer, "first", &INTRO);
    let proxy = Proxy::start(&config(&echo, &issuers, &pki.server_tls_toml(&dir), &key)).await;
    wait_ready(&proxy).await;
    let bound = "opaque-mtls-bound-0001";
    issuer.activate(
        bound,
        json!({"sub": "uma", "cnf": {"x5t#S256": x5t_s256(&pki.client_cert)}}),
    );
    let client = Some((pki.client_cert.as_str(), pki.client_key.as_str()));
    assert_eq!(tls_get(&proxy, &pki, bound, client).await, 200);
    assert_eq!(tls_get(&proxy, &pki, bound, None).await, 401);
    // Bound to another certificate than the one presented.
    let other = "opaque-mtls-other-0001";
    issuer.activate(
        other,
        json!({"sub": "uma", "cnf": {"x5t#S256": x5t_s256(&pki.server_cert)}}),
    );
    assert_eq!(tls_get(&proxy, &pki, other, client).await, 401);
    assert_eq!(echo.seen().len(), 1);
    assert_eq!(last_assertion(&echo)["auth"], "introspection");
}
