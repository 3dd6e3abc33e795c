//! Unit tests for the timing rules (with a paused clock), discovery checks and construction.
//! Network behaviour (flood of unknown kids, stale keys, an issuer down at start) is tested
//! against the mock issuer in `tests/jwks_cache.rs`.

use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::config::{Algorithm, ClientAuthMethod, Introspection, Secret};

fn issuer(url: &str) -> Issuer {
    Issuer {
        id: "corp".to_owned(),
        issuer: url.to_owned(),
        jwks_uri: None,
        userinfo_endpoint: None,
        audiences: vec!["api".to_owned()],
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

fn introspection(endpoint: Option<&str>) -> Introspection {
    Introspection {
        endpoint: endpoint.map(str::to_owned),
        client_id: "tokengate".to_owned(),
        client_secret: Secret("s3cret".to_owned()),
        auth_method: ClientAuthMethod::ClientSecretBasic,
        cache_ttl: Duration::from_secs(120),
        negative_cache_ttl: Duration::from_secs(10),
    }
}

fn hmac_only(url: &str) -> Issuer {
    Issuer {
        algorithms: vec![Algorithm::HS256],
        hmac_secret: Some(Secret("k".repeat(32))),
        ..issuer(url)
    }
}

// The gate takes `now` as an argument: these inject the time instead of waiting for it.

#[test]
fn the_first_unknown_kid_after_the_initial_load_may_refresh_at_once() {
    let mut gate = Gate::default();
    let min = Duration::from_secs(30);
    let t0 = Instant::now();
    assert!(gate.try_background(t0, false), "initial load");
    gate.in_flight = false;
    assert!(gate.try_on_demand(t0 + Duration::from_millis(1), min));
}

#[test]
fn unknown_kid_refreshes_are_spaced_by_min_refresh_and_never_overlap() {
    let mut gate = Gate::default();
    let min = Duration::from_secs(30);
    let t0 = Instant::now();
    assert!(gate.try_on_demand(t0, min));
    assert!(!gate.try_on_demand(t0 + min * 2, min), "one is in flight");
    assert!(!gate.try_background(t0 + min * 2, true), "one is in flight");
    gate.in_flight = false;
    assert!(
        !gate.try_on_demand(t0 + Duration::from_secs(29), min),
        "29 s < 30 s"
    );
    assert!(
        gate.try_on_demand(t0 + Duration::from_secs(30), min),
        "30 s passed"
    );
    gate.in_flight = false;
    assert!(
        !gate.try_on_demand(t0 + Duration::from_secs(59), min),
        "measured from the last"
    );
}

#[test]
fn a_periodic_refresh_counts_against_the_interval_the_initial_load_does_not() {
    let min = Duration::from_secs(30);
    let mut gate = Gate::default();
    let t0 = Instant::now();
    assert!(gate.try_background(t0, true));
    gate.in_flight = false;
    assert!(!gate.try_on_demand(t0 + Duration::from_secs(10), min));
    assert!(gate.try_on_demand(t0 + Duration::from_secs(30), min));
}

#[test]
fn backoff_doubles_from_one_second_up_to_min_refresh() {
    let mut b = Backoff::new(Duration::from_secs(30));
    let got: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
    assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
    b.reset();
    assert_eq!(b.next_delay(), Duration::from_secs(1));
    let mut short = Backoff::new(Duration::from_millis(500));
    assert_eq!(short.next_delay(), Duration::from_millis(500));
    assert_eq!(short.next_delay(), Duration::from_millis(500));
}

#[test]
fn discovery_is_asked_at_the_issuer_without_its_trailing_slash() {
    assert_eq!(
        discovery_url("https://idp.example.com/"),
        "https://idp.example.com/.well-known/openid-configuration"
    );
    assert_eq!(
        discovery_url("https://idp.example.com/realms/corp"),
        "https://idp.example.com/realms/corp/.well-known/openid-configuration"
    );
}

#[test]
fn discovery_issuer_must_match_exactly() {
    let cfg = issuer("https://idp.example.com/");
    let doc = json!({"issuer": "https://idp.example.com", "jwks_uri": "https://idp.example.com/k"});
    let err = endpoints_from_discovery(&cfg, &doc, true).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"issuer mismatch: configured "https://idp.example.com/", discovery says "https://idp.example.com""#
    );
    let err =
        endpoints_from_discovery(&cfg, &json!({"jwks_uri": "https://x/k"}), true).unwrap_err();
    assert!(err.to_string().contains("no \"issuer\""), "{err}");
    assert!(endpoints_from_discovery(&cfg, &json!([1]), true).is_err());
}

#[test]
fn discovery_gives_the_endpoints_the_configuration_does_not() {
    let mut cfg = issuer("https://idp.example.com");
    cfg.introspection = Some(introspection(None));
    let doc = json!({
        "issuer": "https://idp.example.com",
        "jwks_uri": "https://idp.example.com/jwks",
        "userinfo_endpoint": "https://idp.example.com/userinfo",
        "introspection_endpoint": "https://idp.example.com/introspect",
    });
    let found = endpoints_from_discovery(&cfg, &doc, true).unwrap();
    assert_eq!(
        found.jwks_uri.as_deref(),
        Some("https://idp.example.com/jwks")
    );
    assert_eq!(
        found.userinfo.as_deref(),
        Some("https://idp.example.com/userinfo")
    );
    assert_eq!(
        found.introspection.as_deref(),
        Some("https://idp.example.com/introspect")
    );

    // Configured values win, and the discovered ones they replace are not even checked.
    cfg.userinfo_endpoint = Some("https://other.example.com/me".to_owned());
    cfg.introspection = Some(introspection(Some("https://other.example.com/i")));
    let doc = json!({
        "issuer": "https://idp.example.com",
        "jwks_uri": "https://idp.example.com/jwks",
        "userinfo_endpoint": "http://evil.example.com/userinfo",
        "introspection_endpoint": 7,
    });
    let found = endpoints_from_discovery(&cfg, &doc, true).unwrap();
    assert_eq!(
        found.userinfo.as_deref(),
        Some("https://other.example.com/me")
    );
    assert_eq!(
        found.introspection.as_deref(),
        Some("https://other.example.com/i")
    );
}

#[test]
fn discovered_urls_must_be_https_unless_loopback_or_allowed() {
    let mut cfg = issuer("https://idp.example.com");
    let doc =
        json!({"issuer": "https://idp.example.com", "jwks_uri": "http://idp.example.com/jwks"});
    let err = endpoints_from_discovery(&cfg, &doc, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("jwks_uri") && err.contains("https"), "{err}");
    let doc2 = json!({
        "issuer": "https://idp.example.com",
        "jwks_uri": "https://idp.example.com/jwks",
        "userinfo_endpoint": "http://idp.example.com/userinfo",
    });
    assert!(endpoints_from_discovery(&cfg, &doc2, true).is_err());
    cfg.allow_http = true;
    assert!(endpoints_from_discovery(&cfg, &doc, true).is_ok());
}

#[test]
fn a_discovery_document_without_jwks_uri_is_refused_when_keys_are_needed() {
    let cfg = issuer("https://idp.example.com");
    let doc = json!({"issuer": "https://idp.example.com"});
    assert!(endpoints_from_discovery(&cfg, &doc, true).is_err());
    assert!(endpoints_from_discovery(&cfg, &doc, false).is_ok());
}

#[tokio::test]
async fn a_new_issuer_is_unready_and_refuses_unknown_kid_refreshes_before_any_load() {
    let mut cfg = issuer("https://idp.example.com");
    cfg.userinfo_endpoint = Some("https://idp.example.com/me".to_owned());
    let keys = IssuerKeys::new(cfg).unwrap();
    assert!(!keys.is_ready());
    assert!(keys.keys().is_none());
    assert_eq!(
        keys.userinfo_endpoint().as_deref(),
        Some("https://idp.example.com/me")
    );
    assert_eq!(keys.introspection_endpoint(), None);
    assert!(keys.refresh_for_unknown_kid().await.is_none());
    assert_eq!(keys.refresh_counts(), (0, 0), "no fetch was made");
}

#[test]
fn configured_urls_are_checked_at_construction() {
    let mut cfg = issuer("https://idp.example.com");
    cfg.jwks_uri = Some("http://idp.example.com/jwks".to_owned());
    let err = IssuerKeys::new(cfg).err().unwrap_or_default();
    assert!(err.contains("\"corp\"") && err.contains("https"), "{err}");
    let mut cfg = issuer("https://idp.example.com");
    cfg.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
    assert!(IssuerKeys::new(cfg).is_err());
}

#[tokio::test]
async fn an_hmac_only_issuer_needs_no_jwks_and_is_ready_at_once() {
    let keys = IssuerKeys::new(hmac_only("https://idp.example.com")).unwrap();
    assert!(keys.is_ready());
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(keys.clone().run(rx));
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keys.refresh_counts(), (0, 0));
}

#[test]
fn an_hmac_only_issuer_with_introspection_but_no_endpoint_waits_for_discovery() {
    let mut cfg = hmac_only("https://idp.example.com");
    cfg.introspection = Some(introspection(None));
    assert!(!IssuerKeys::new(cfg).unwrap().is_ready());
}

/// Paused clock: the retry is a timer, so "stops without waiting for the retry" is exact.
#[tokio::test(start_paused = true)]
async fn run_stops_at_once_when_asked_while_the_issuer_is_unreachable() {
    // Nothing listens on port 1: the first load fails at once (connection refused), long
    // before fetch_timeout; then the task waits FIRST_BACKOFF for its retry.
    let mut cfg = issuer("http://127.0.0.1:1");
    cfg.fetch_timeout = Duration::from_secs(30);
    let keys = IssuerKeys::new(cfg).unwrap();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(keys.clone().run(rx));
    // Yielding lets the runtime poll the socket without moving the paused clock, so neither the
    // retry nor fetch_timeout can come into play while we look (bounded in real time).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while keys.refresh_counts() == (0, 0) && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert_eq!(keys.refresh_counts(), (0, 1), "one failed attempt");
    drop(tx);
    tokio::time::timeout(FIRST_BACKOFF / 2, task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keys.refresh_counts(), (0, 1), "no retry after the stop");
    assert!(!keys.is_ready());
    assert!(keys.last_error().is_some_and(|e| e.contains("discovery")));
}

#[tokio::test]
async fn fixed_keys_are_ready_at_once_and_never_fetch() {
    let doc = json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": "saved",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    }]});
    let set = KeySet::from_jwks(doc.to_string().as_bytes(), &Algorithm::DEFAULT).unwrap();
    // An unreachable issuer: any fetch would fail and count as an error.
    let keys = IssuerKeys::with_keys(issuer("http://127.0.0.1:1"), set).unwrap();
    assert!(keys.is_ready());
    assert_eq!(keys.keys().map(|k| k.len()), Some(1));
    assert!(keys.refresh_for_unknown_kid().await.is_none());
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(keys.clone().run(rx));
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keys.refresh_counts(), (0, 0), "nothing was fetched");
    assert_eq!(keys.last_error(), None);
}
