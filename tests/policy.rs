//! Per-route claim policies over HTTP (SPEC §3, §4.6, §6): `config/orders-api.toml` with its
//! issuer pointed at the mock, each route type answering 200 or 403 as documented.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use serde_json::{json, Value};
use support::echo::Echo;
use support::issuer::MockIssuer;
use support::{get, send, Answer, Proxy};

struct World {
    issuer: MockIssuer,
    echo: Echo,
    proxy: Proxy,
}

async fn orders_api() -> World {
    let issuer = MockIssuer::start().await;
    let echo = Echo::start().await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/orders-api.toml"
    ))
    .expect("config/orders-api.toml");
    let text = text
        .replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("http://127.0.0.1:3000", &format!("http://{}", echo.addr))
        .replace("https://login.example.com/realms/corp", &issuer.issuer());
    let proxy = Proxy::start(&text).await;
    let world = World {
        issuer,
        echo,
        proxy,
    };
    world.wait_ready().await;
    world
}

impl World {
    /// Polls (bounded) until the issuer's keys are loaded and a valid token passes.
    async fn wait_ready(&self) {
        let token = self.token(json!({"scope": "orders:read"}));
        for _ in 0..200 {
            if self.call("GET", "/orders", &token).await.status != 503 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("issuer never became ready");
    }

    fn token(&self, claims: Value) -> String {
        let mut all = json!({"aud": "orders-api"});
        if let (Some(all), Value::Object(extra)) = (all.as_object_mut(), claims) {
            all.extend(extra);
        }
        self.issuer.token("RS256", all)
    }

    async fn call(&self, method: &str, path: &str, token: &str) -> Answer {
        let req = http::Request::builder()
            .method(method)
            .uri(self.proxy.url(path))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        send(req).await
    }
}

fn error_of(answer: &Answer) -> String {
    answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn public_health_route_needs_no_token() {
    let w = orders_api().await;
    assert_eq!(get(&w.proxy.url("/healthz"), &[]).await.status, 200);
}

#[tokio::test]
async fn read_route_requires_orders_read_scope() {
    let w = orders_api().await;
    let ok = w.token(json!({"scope": "openid orders:read"}));
    assert_eq!(w.call("GET", "/orders/42", &ok).await.status, 200);
    let scp = w.token(json!({"scp": ["orders:read"]}));
    assert_eq!(w.call("GET", "/orders", &scp).await.status, 200);

    let before = w.echo.seen().len();
    let none = w.token(json!({"scope": "openid"}));
    let answer = w.call("GET", "/orders/42", &none).await;
    assert_eq!(answer.status, 403);
    assert_eq!(error_of(&answer), "insufficient_scope");
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Bearer realm=\"tokengate\", error=\"insufficient_scope\", scope=\"orders:read\"")
    );
    assert_eq!(
        w.echo.seen().len(),
        before,
        "a denied request reached the upstream"
    );
}

#[tokio::test]
async fn write_route_requires_scope_and_verified_email_as_a_boolean() {
    let w = orders_api().await;
    let good = w.token(json!({"scope": "orders:write", "email_verified": true}));
    assert_eq!(w.call("POST", "/orders", &good).await.status, 200);

    let string_true = w.token(json!({"scope": "orders:write", "email_verified": "true"}));
    let answer = w.call("POST", "/orders", &string_true).await;
    assert_eq!(answer.status, 403);
    assert_eq!(error_of(&answer), "access_denied");
    assert!(answer.header("www-authenticate").is_none());

    let unverified = w.token(json!({"scope": "orders:write", "email_verified": false}));
    assert_eq!(w.call("DELETE", "/orders/7", &unverified).await.status, 403);

    let no_scope = w.token(json!({"scope": "orders:read", "email_verified": true}));
    let answer = w.call("PUT", "/orders/7", &no_scope).await;
    assert_eq!(error_of(&answer), "insufficient_scope");
}

#[tokio::test]
async fn admin_route_accepts_any_one_alternative_and_names_no_claim_values() {
    let w = orders_api().await;
    let by_group = w.token(json!({"groups": ["staff", "admin"]}));
    assert_eq!(w.call("GET", "/admin/users", &by_group).await.status, 200);
    let by_role = w.token(json!({"realm_access": {"roles": ["ops"]}}));
    assert_eq!(w.call("DELETE", "/admin", &by_role).await.status, 200);
    let service = w.token(json!({"client_id": "svc-billing", "scope": "billing"}));
    assert_eq!(
        w.call("POST", "/admin/invoices", &service).await.status,
        200
    );

    // The service account without its scope, or another client with the scope: denied.
    let no_scope = w.token(json!({"client_id": "svc-billing", "scope": "orders:read"}));
    let other =
        w.token(json!({"client_id": "svc-other", "scope": "billing", "groups": ["secret-group"]}));
    for token in [no_scope, other] {
        let answer = w.call("GET", "/admin", &token).await;
        assert_eq!(answer.status, 403);
        assert_eq!(error_of(&answer), "access_denied");
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        assert!(
            body.contains("admin"),
            "the description names the route: {body}"
        );
        assert!(
            !body.contains("secret-group") && !body.contains("svc-"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn methods_outside_every_route_get_404() {
    let w = orders_api().await;
    let token = w.token(json!({"scope": "orders:read orders:write"}));
    let answer = w.call("OPTIONS", "/orders", &token).await;
    assert_eq!(answer.status, 404);
    assert_eq!(error_of(&answer), "no_route");
}

#[tokio::test]
async fn optional_route_with_a_policy_asks_a_tokenless_client_for_a_token() {
    let issuer = MockIssuer::start().await;
    let echo = Echo::start().await;
    let proxy = Proxy::start(&support::config(
        echo.addr,
        &format!(
            "{}\n[[route]]\nid = \"opt\"\npath = \"/opt\"\nauth = \"optional\"\nscopes = [\"read\"]\n",
            issuer.config_toml("mock", &["api"])
        ),
    ))
    .await;
    let answer = get(&proxy.url("/opt"), &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Bearer realm=\"tokengate\"")
    );
    assert!(echo.seen().is_empty());
}
