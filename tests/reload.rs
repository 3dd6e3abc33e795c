//! SIGHUP reloads the configuration atomically (SPEC §8): a valid file takes effect for new
//! requests, an invalid one is rejected with a logged error while the old one keeps serving,
//! and an unchanged issuer keeps its keys (no refetch, never unready).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::echo::Echo;
use support::issuer::MockIssuer;
use support::process::Process;
use support::{get, Answer};

fn config(echo: &Echo, issuer: &MockIssuer, route: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"http://{}\"\n\n{}\n\
         [[route]]\nid = \"{route}\"\npath = \"/{route}\"\n",
        echo.addr,
        issuer.config_toml("mock", &["api"])
    )
}

async fn call(addr: std::net::SocketAddr, path: &str, token: &str) -> Answer {
    get(
        &format!("http://{addr}{path}"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Polls (bounded) until `path` answers `status`.
async fn eventually(addr: std::net::SocketAddr, path: &str, token: &str, status: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if call(addr, path, token).await.status == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_valid_file_and_rejects_an_invalid_one() {
    let (echo, issuer) = (Echo::start().await, MockIssuer::start().await);
    let (mut proxy, addr) = Process::serve_ready(&config(&echo, &issuer, "a"), &[]);
    let token = issuer.token("ES256", json!({}));
    assert!(
        eventually(addr, "/a", &token, 200).await,
        "{}",
        proxy.stderr()
    );
    assert_eq!(call(addr, "/b", &token).await.status, 404);
    let fetches = issuer.hits("/jwks");

    let file = proxy.dir().expect("config dir").join("tokengate.toml");
    std::fs::write(&file, config(&echo, &issuer, "b")).unwrap();
    proxy.signal("HUP");
    assert!(
        eventually(addr, "/b", &token, 200).await,
        "{}",
        proxy.stderr()
    );
    assert_eq!(call(addr, "/a", &token).await.status, 404);
    // The issuer did not change: its keys were kept, not fetched again.
    assert_eq!(issuer.hits("/jwks"), fetches);

    std::fs::write(&file, "[server]\nlisten = 42\n").unwrap();
    proxy.signal("HUP");
    assert!(
        proxy
            .wait_stderr_async(Duration::from_secs(20), |e| e
                .contains("configuration reload rejected"))
            .await,
        "{}",
        proxy.stderr()
    );
    assert!(
        proxy.stderr().contains("server.listen"),
        "every problem is logged"
    );
    assert_eq!(call(addr, "/b", &token).await.status, 200);

    proxy.sigterm();
    let status = proxy.wait_exit_async(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}
