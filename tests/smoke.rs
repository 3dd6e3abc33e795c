#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use support::echo::Echo;
use support::{config, get, Proxy};

#[tokio::test]
async fn public_route_is_proxied_with_the_normalized_path() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(&config(
        echo.addr,
        "[[route]]\nid = \"pub\"\npath_prefix = \"/\"\nauth = \"public\"\n",
    ))
    .await;
    let answer = get(&proxy.url("/a/./b/../c?x=1%2F"), &[]).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["target"], "/a/c?x=1%2F");
    assert!(answer.header("x-request-id").is_some());
    proxy.stop().await;
}
