//! `tokengate demo`: a zero-setup local trial. NOT FOR PRODUCTION.
//!
//! Starts, all on loopback: a development OpenID issuer (discovery, JWKS, userinfo; its signing
//! key is generated at start and lives only in memory), an echo upstream that answers with what
//! it received, and the proxy itself. The proxy is configured through a generated TOML file
//! written to a temp directory and loaded with `config::load_file`, exactly as `serve` does; no
//! part of the request pipeline knows it is a demo. Then it prints tokens, curl commands and one
//! `tokengate explain` command for the denied request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jws::{JwsHeader, ES256};
use josekit::jwt::{self, JwtPayload};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config;

const AUDIENCE: &str = "demo-api";
const KID: &str = "demo-key-1";

/// The development issuer's state: its URL and signing key.
struct DevIssuer {
    url: String,
    key: EcKeyPair,
}

impl DevIssuer {
    fn jwks(&self) -> Value {
        let mut jwk = self.key.to_jwk_public_key();
        jwk.set_key_id(KID);
        jwk.set_algorithm("ES256");
        jwk.set_key_use("sig");
        json!({ "keys": [Value::Object(jwk.as_ref().clone())] })
    }

    fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/jwks", self.url),
            "userinfo_endpoint": format!("{}/userinfo", self.url),
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// Mints an access token for `sub` with these extra claims, valid for one hour.
    fn mint(&self, claims: Value) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let mut payload = JwtPayload::new();
        let mut all = json!({
            "iss": self.url,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 3600,
        });
        if let (Some(all), Value::Object(extra)) = (all.as_object_mut(), claims) {
            all.extend(extra);
        }
        if let Value::Object(map) = all {
            for (name, value) in map {
                payload
                    .set_claim(&name, Some(value))
                    .map_err(|e| e.to_string())?;
            }
        }
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id(KID);
        let signer = ES256
            .signer_from_jwk(&self.key.to_jwk_private_key())
            .map_err(|e| e.to_string())?;
        jwt::encode_with_signer(&payload, &header, &signer).map_err(|e| e.to_string())
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/.well-known/openid-configuration" => json_response(StatusCode::OK, &self.discovery()),
            "/jwks" => json_response(StatusCode::OK, &self.jwks()),
            "/userinfo" => {
                // The demo userinfo answers for whoever the token names, with "fresh" profile data.
                let sub = bearer_sub(req).unwrap_or_else(|| "unknown".into());
                json_response(
                    StatusCode::OK,
                    &json!({"sub": sub, "name": "Demo User (from /userinfo)", "email": "demo@example.com"}),
                )
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }
}

/// The (unverified: the dev issuer only echoes it) `sub` of a bearer token.
fn bearer_sub(req: &Request<Incoming>) -> Option<String> {
    let auth = req.headers().get("authorization")?.to_str().ok()?;
    let token = auth.split_whitespace().nth(1)?;
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The echo upstream: answers with the method, path and headers it received, so the demo shows
/// exactly what a backend behind tokengate sees.
fn echo(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    // Shown decoded for the demo only; a real backend verifies it with the proxy's JWKS.
    let assertion = req
        .headers()
        .get("x-identity-assertion")
        .and_then(|v| v.to_str().ok())
        .and_then(|jws| jws.split('.').nth(1))
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    json_response(
        StatusCode::OK,
        &json!({
            "upstream_saw": {
                "method": req.method().as_str(),
                "path": req.uri().path_and_query().map(|p| p.as_str()),
                "headers": headers,
                "identity_assertion_decoded": assertion,
            }
        }),
    )
}

/// The generated configuration: ordinary TOML, the same loader as `serve`.
fn demo_config(issuer: &str, upstream: SocketAddr) -> String {
    format!(
        r#"# Generated by `tokengate demo` -- for local trial only, NOT for production.
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[upstream]
url = "http://{upstream}"

[[issuer]]
id = "demo"
issuer = "{issuer}"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]

[identity]
signing_key = "identity.pem"

[identity.headers]
X-Auth-Subject = "sub"
X-Auth-Email = "email"
X-Auth-Groups = "groups"

[[route]]
id = "health"
path = "/healthz"
auth = "public"

[[route]]
id = "admin"
path_prefix = "/admin"
auth = "required"
scopes = ["admin"]

[[route]]
id = "orders"
path_prefix = "/orders"
auth = "required"
scopes = ["orders:read"]

[[route]]
id = "profile"
path = "/profile"
auth = "required"
userinfo = true                  # fresh name/email from the issuer, cached
userinfo_max_age = "30s"
"#
    )
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let key = EcKeyPair::generate(EcCurve::P256).map_err(|e| e.to_string())?;
    // The issuer's URL names its port, so bind before building it.
    let (issuer_listener, issuer_addr) = loopback().await?;
    let issuer = Arc::new(DevIssuer {
        url: format!("http://{issuer_addr}"),
        key,
    });
    let served = issuer.clone();
    serve_on(issuer_listener, move |req| served.answer(req));
    let (upstream_listener, upstream) = loopback().await?;
    serve_on(upstream_listener, echo);

    let dir = std::env::temp_dir().join(format!("tokengate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path: PathBuf = dir.join("tokengate.toml");
    std::fs::write(&path, demo_config(&issuer.url, upstream)).map_err(|e| e.to_string())?;
    crate::keygen::run(
        crate::keygen::KeygenAlg::Es256,
        &dir.join("identity.pem"),
        true,
    )
    .map_err(|e| e.to_string())?;
    let loaded = config::load_file(&path).map_err(|problems| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let running = crate::app::start(loaded.config, shutdown).await?;
    let reader = issuer.mint(json!({
        "sub": "demo-user",
        "email": "demo@example.com",
        "groups": ["staff"],
        "scope": "openid orders:read",
        "client_id": "demo-client",
    }))?;
    print_instructions(
        &path,
        running.addr,
        running.admin,
        &issuer.url,
        upstream,
        &reader,
    );
    running.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Serves `answer` on `listener` until the process ends.
fn serve_on<F>(listener: TcpListener, answer: F)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let response = answer(&req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
}

async fn loopback() -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener, addr))
}

/// How the user started this binary (`tokengate`, `./target/release/tokengate`), so the printed
/// `explain` command runs as pasted.
fn program() -> String {
    std::env::args()
        .next()
        .filter(|arg| !arg.is_empty() && !arg.contains(char::is_whitespace))
        .unwrap_or_else(|| "tokengate".to_owned())
}

fn print_instructions(
    config: &std::path::Path,
    proxy: SocketAddr,
    admin: Option<SocketAddr>,
    issuer: &str,
    upstream: SocketAddr,
    token: &str,
) {
    println!("tokengate demo -- FOR LOCAL TRIAL ONLY, NOT FOR PRODUCTION");
    println!("(the issuer's signing key is generated at start and lives only in memory)");
    println!();
    println!("  proxy     http://{proxy}");
    if let Some(admin) = admin {
        println!("  admin     http://{admin}  (/healthz, /readyz)");
    }
    println!("  issuer    {issuer}  (development issuer: discovery, JWKS, userinfo)");
    println!("  upstream  http://{upstream}  (echo: answers with what it received)");
    println!("  config    {}", config.display());
    println!();
    println!("A valid access token (sub=demo-user, scope=\"openid orders:read\", 1 hour):");
    println!("TOKEN={token}");
    println!();
    println!("Allowed (200; the upstream echoes what it received, the signed identity assertion");
    println!("decoded, and the plain X-Auth-* claim headers):");
    println!("curl -s -H \"Authorization: Bearer {token}\" http://{proxy}/orders/42");
    println!();
    println!("Allowed, enriched from the issuer's /userinfo (cached for 30 s):");
    println!("curl -s -H \"Authorization: Bearer {token}\" http://{proxy}/profile");
    println!();
    println!("The keys a backend uses to verify the assertion:");
    println!("curl -s http://{proxy}/.well-known/tokengate/jwks.json");
    println!();
    println!("Denied (403 insufficient_scope: /admin needs scope \"admin\"):");
    println!("curl -s -i -H \"Authorization: Bearer {token}\" http://{proxy}/admin/users");
    println!();
    println!("Unauthenticated (401, WWW-Authenticate: Bearer realm=\"tokengate\"):");
    println!("curl -s -i http://{proxy}/orders/42");
    println!();
    println!("Why was it denied? Every step of the decision, without sending the request (add");
    println!("--json for one JSON object; the output never shows the token):");
    println!(
        "{} explain --config {} --token {token} /admin/users",
        program(),
        config.display()
    );
    println!();
    println!("Press Ctrl-C to stop.");
}
