//! Sender-constrained tokens presented as bearer tokens (SPEC §4.8): a DPoP-bound token is
//! refused with a DPoP challenge, an mTLS-bound token is accepted only over TLS with the bound
//! client certificate, and `require_sender_constrained` refuses plain bearer tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::json;
use support::echo::Echo;
use support::issuer::MockIssuer;
use support::pki::{connect, pki, x5t_s256, Pki};
use support::{get, wait_ready, Proxy};

const ROUTES: &str =
    "[[route]]\nid = \"strict\"\npath = \"/strict\"\nrequire_sender_constrained = true\n\n\
                      [[route]]\nid = \"api\"\npath_prefix = \"/\"\n";

async fn plain(issuer: &MockIssuer, echo: &Echo) -> Proxy {
    let proxy = Proxy::start(&support::config(
        echo.addr,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}\n{ROUTES}",
            issuer.config_toml("mock", &["api"])
        ),
    ))
    .await;
    wait_ready(&proxy).await;
    proxy
}

async fn over_tls(issuer: &MockIssuer, echo: &Echo, pki: &Pki, dir: &tempfile::TempDir) -> Proxy {
    let proxy = Proxy::start(
        &support::config(
            echo.addr,
            &format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}\n{ROUTES}",
                issuer.config_toml("mock", &["api"])
            ),
        )
        .replace(
            "[upstream]",
            &format!("{}\n[upstream]", pki.server_tls_toml(dir)),
        ),
    )
    .await;
    wait_ready(&proxy).await;
    proxy
}

/// One GET over a fresh TLS connection (optionally with a client certificate); the status.
async fn tls_get(
    proxy: &Proxy,
    pki: &Pki,
    path: &str,
    token: &str,
    cert: Option<(&str, &str)>,
) -> u16 {
    let tls = connect(proxy, pki, &[b"http/1.1"], cert)
        .await
        .expect("TLS");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    sender
        .send_request(req)
        .await
        .expect("response")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_dpop_bound_token_sent_as_bearer_gets_a_dpop_challenge() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = plain(&issuer, &echo).await;
    let token = issuer.token(
        "ES256",
        json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
    );
    let answer = get(
        &proxy.url("/x"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"], "invalid_token");
    let challenge = answer
        .header("www-authenticate")
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.starts_with("DPoP realm=\"tokengate\", error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(
        challenge.ends_with("algs=\"ES256 ES384 EdDSA RS256 PS256\""),
        "{challenge}"
    );
    assert!(echo.seen().is_empty());
}

#[tokio::test]
async fn require_sender_constrained_refuses_a_plain_bearer_token() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = plain(&issuer, &echo).await;
    let token = issuer.token("ES256", json!({}));
    let auth = format!("Bearer {token}");
    assert_eq!(
        get(&proxy.url("/other"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let answer = get(&proxy.url("/strict"), &[("authorization", &auth)]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"], "invalid_token");
}

#[tokio::test]
async fn an_unknown_confirmation_method_is_refused() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = plain(&issuer, &echo).await;
    for cnf in [json!({"jwk": {"kty": "EC"}}), json!("bound"), json!({})] {
        let token = issuer.token("ES256", json!({ "cnf": cnf }));
        let answer = get(
            &proxy.url("/x"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(answer.status, 401, "cnf {cnf}");
    }
    assert!(echo.seen().is_empty());
}

#[tokio::test]
async fn an_mtls_bound_token_needs_the_bound_client_certificate() {
    let (issuer, echo, pki, dir) = (
        MockIssuer::start().await,
        Echo::start().await,
        pki(),
        tempfile::tempdir().unwrap(),
    );
    let proxy = over_tls(&issuer, &echo, &pki, &dir).await;
    let bound = issuer.token(
        "ES256",
        json!({"cnf": {"x5t#S256": x5t_s256(&pki.client_cert)}}),
    );
    let client = Some((pki.client_cert.as_str(), pki.client_key.as_str()));
    assert_eq!(tls_get(&proxy, &pki, "/x", &bound, client).await, 200);
    // Bound and proven: it also satisfies require_sender_constrained.
    assert_eq!(tls_get(&proxy, &pki, "/strict", &bound, client).await, 200);
    // Without a client certificate the token is refused.
    assert_eq!(tls_get(&proxy, &pki, "/x", &bound, None).await, 401);
    // Bound to another certificate than the one presented.
    let other = issuer.token(
        "ES256",
        json!({"cnf": {"x5t#S256": x5t_s256(&pki.server_cert)}}),
    );
    assert_eq!(tls_get(&proxy, &pki, "/x", &other, client).await, 401);
    assert_eq!(echo.seen().len(), 2);
}

#[tokio::test]
async fn an_mtls_bound_token_is_refused_over_plain_http() {
    let (issuer, echo) = (MockIssuer::start().await, Echo::start().await);
    let proxy = plain(&issuer, &echo).await;
    let token = issuer.token("ES256", json!({"cnf": {"x5t#S256": "AAAA"}}));
    let answer = get(
        &proxy.url("/x"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(answer.status, 401);
    assert!(echo.seen().is_empty());
}
