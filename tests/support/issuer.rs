//! A mock OpenID provider for integration tests, in-process on `127.0.0.1:0` (like `echo.rs`),
//! stopped when dropped.
//!
//! It serves:
//! - `…/.well-known/openid-configuration` (any path ending so): `issuer` (default
//!   `http://127.0.0.1:PORT`), `jwks_uri`, `userinfo_endpoint`, `introspection_endpoint`;
//! - `/jwks`: the public keys, or a failure ([`JwksMode`]: a status, a hang, garbage, any body);
//! - `/userinfo` (Bearer): JSON per token, a default, or `{"sub": <the token's sub>, …}`; a
//!   configurable delay, status, revoked tokens and a signed (`application/jwt`) mode;
//! - `/introspect` (POST form, RFC 7662): answers per token, `{"active": false}` otherwise, with
//!   client authentication (Basic or form) checked against [`INTROSPECTION_CLIENT`] (or other
//!   credentials, and one required method: [`IntrospectionAuth`]); a configurable delay and
//!   failure ([`IntrospectionFailure`]: a status, a hang, any body); every request is recorded
//!   ([`MockIssuer::introspection_requests`]).
//!
//! Behaviour is changed through [`Settings`] ([`MockIssuer::configure`]), or the shortcuts
//! [`MockIssuer::set_down`] (every endpoint 503), [`MockIssuer::set_jwks_mode`] and
//! [`MockIssuer::set_discovery_issuer`]. Every request is counted per path ([`MockIssuer::hits`]),
//! answered or not.
//!
//! Keys: RSA 2048 (RS*/PS*; published without `alg` so one key serves both), P-256 (ES256),
//! P-384 (ES384) and Ed25519 (EdDSA), each with a `kid` ending in the key generation;
//! [`MockIssuer::rotate`] replaces all four (new kids). HS* tokens use a shared secret.
//! Minting: [`MockIssuer::token`] fills in `iss`, `sub`, `aud`, `iat`, `exp`; a claim given as
//! `null` is left out. [`MockIssuer::sign_raw`] and [`MockIssuer::b64`] build malformed tokens.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use josekit::jwk::alg::ec::EcCurve;
use josekit::jwk::alg::ed::EdCurve;
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::{Jwk, KeyPair as _};
use josekit::jws::{self, JwsSigner};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const DISCOVERY: &str = "/.well-known/openid-configuration";

/// The client id and secret `/introspect` accepts.
pub const INTROSPECTION_CLIENT: (&str, &str) = ("tokengate", "introspection-secret");

/// What `/jwks` answers.
#[derive(Debug, Clone, Default)]
pub enum JwksMode {
    /// The current public keys.
    #[default]
    Normal,
    /// This status with a JSON error body.
    Status(u16),
    /// Waits this long (make it longer than `fetch_timeout`), then answers normally.
    Hang(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with exactly this body.
    Body(String),
}

/// Which client authentication `/introspect` accepts (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IntrospectionAuth {
    /// HTTP Basic, or `client_id`/`client_secret` in the form.
    #[default]
    Any,
    /// Only HTTP Basic (`client_secret_basic`).
    Basic,
    /// Only the form members, and no `Authorization` header (`client_secret_post`).
    Post,
}

/// How `/introspect` fails, for every request, before looking at credentials.
#[derive(Debug, Clone)]
pub enum IntrospectionFailure {
    /// This status with a JSON error body.
    Status(u16),
    /// Never answers (an hour; the caller's timeout ends it).
    Hang,
    /// 200 `application/json` with exactly this body.
    Body(String),
}

/// One request `/introspect` received, as it arrived (credentials decoded).
#[derive(Debug, Clone)]
pub struct IntrospectionRequest {
    pub method: String,
    pub content_type: Option<String>,
    /// (client id, secret) from an `Authorization: Basic` header, form-urldecoded.
    pub basic: Option<(String, String)>,
    /// The form members, decoded.
    pub form: HashMap<String, String>,
}

/// The four private keys of one generation, `kid` set.
struct Keys {
    rsa: Jwk,
    p256: Jwk,
    p384: Jwk,
    ed: Jwk,
}

impl Keys {
    fn generate(generation: u32) -> Keys {
        let named = |jwk: Result<Jwk, josekit::JoseError>, name: &str| {
            let mut jwk = jwk.expect("generate key");
            jwk.set_key_id(format!("{name}-{generation}"));
            jwk
        };
        Keys {
            rsa: named(Jwk::generate_rsa_key(2048), "rsa"),
            p256: named(Jwk::generate_ec_key(EcCurve::P256), "p256"),
            p384: named(Jwk::generate_ec_key(EcCurve::P384), "p384"),
            ed: named(Jwk::generate_ed_key(EdCurve::Ed25519), "ed25519"),
        }
    }

    fn for_alg(&self, alg: &str) -> &Jwk {
        match alg {
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => &self.rsa,
            "ES256" => &self.p256,
            "ES384" => &self.p384,
            "EdDSA" => &self.ed,
            _ => panic!("the mock issuer has no key for alg {alg:?}"),
        }
    }

    fn jwks(&self) -> Value {
        let public = |jwk: &Jwk, alg: Option<&str>| {
            let mut key = jwk.to_public_key().expect("public key");
            key.set_key_id(jwk.key_id().expect("kid"));
            key.set_key_use("sig");
            if let Some(alg) = alg {
                key.set_algorithm(alg);
            }
            Value::Object(key.as_ref().clone())
        };
        json!({"keys": [
            public(&self.rsa, None),
            public(&self.p256, Some("ES256")),
            public(&self.p384, Some("ES384")),
            public(&self.ed, Some("EdDSA")),
        ]})
    }

    fn sign(&self, alg: &str, hmac: &[u8], input: &[u8]) -> Vec<u8> {
        let signer: Box<dyn JwsSigner> = match alg {
            "HS256" => Box::new(jws::HS256.signer_from_bytes(hmac).expect("signer")),
            "HS384" => Box::new(jws::HS384.signer_from_bytes(hmac).expect("signer")),
            "HS512" => Box::new(jws::HS512.signer_from_bytes(hmac).expect("signer")),
            "RS256" => Box::new(jws::RS256.signer_from_jwk(&self.rsa).expect("signer")),
            "RS384" => Box::new(jws::RS384.signer_from_jwk(&self.rsa).expect("signer")),
            "RS512" => Box::new(jws::RS512.signer_from_jwk(&self.rsa).expect("signer")),
            "PS256" => Box::new(jws::PS256.signer_from_jwk(&self.rsa).expect("signer")),
            "PS384" => Box::new(jws::PS384.signer_from_jwk(&self.rsa).expect("signer")),
            "PS512" => Box::new(jws::PS512.signer_from_jwk(&self.rsa).expect("signer")),
            "ES256" => Box::new(jws::ES256.signer_from_jwk(&self.p256).expect("signer")),
            "ES384" => Box::new(jws::ES384.signer_from_jwk(&self.p384).expect("signer")),
            "EdDSA" => Box::new(jws::EdDSA.signer_from_jwk(&self.ed).expect("signer")),
            _ => panic!("the mock issuer cannot sign with alg {alg:?}"),
        };
        signer.sign(input).expect("sign")
    }
}

/// Everything a test may change, through [`MockIssuer::configure`].
#[derive(Default)]
pub struct Settings {
    /// `iss` of minted tokens and discovery's `issuer` (default: [`MockIssuer::url`]).
    pub issuer: String,
    /// `Some`: discovery claims this `issuer` instead (the mismatch test).
    pub discovery_issuer: Option<String>,
    /// Discovery members added or replaced (`Value::Null` removes one).
    pub discovery_members: Map<String, Value>,
    pub jwks: JwksMode,
    /// Every endpoint answers 503.
    pub down: bool,
    /// The HS256/384/512 secret.
    pub hmac_secret: Vec<u8>,
    /// `/userinfo` answers per exact token.
    pub userinfo: HashMap<String, Value>,
    /// The answer for other tokens (`None`: `sub` from the token, `email`, `name`).
    pub userinfo_default: Option<Value>,
    /// `Some`: `/userinfo` answers this status (with an error body) for every token.
    pub userinfo_status: Option<u16>,
    pub userinfo_delay: Duration,
    /// `Some(alg)`: `/userinfo` answers a JWT (`application/jwt`) signed with that alg's key,
    /// its claims plus `iss` and `aud` = `"tokengate"`.
    pub userinfo_signed_alg: Option<String>,
    /// Tokens `/userinfo` answers 401 `invalid_token`.
    pub revoked: HashSet<String>,
    /// `/introspect` answers per token (others: `{"active": false}`).
    pub introspection: HashMap<String, Value>,
    /// Which client authentication `/introspect` accepts.
    pub introspection_auth: IntrospectionAuth,
    /// `Some`: the (client id, secret) `/introspect` accepts instead of [`INTROSPECTION_CLIENT`].
    pub introspection_client: Option<(String, String)>,
    /// Waited before every `/introspect` answer.
    pub introspection_delay: Duration,
    /// `Some`: every `/introspect` request fails this way.
    pub introspection_failure: Option<IntrospectionFailure>,
}

struct State {
    url: String,
    settings: Settings,
    generation: u32,
    keys: Arc<Keys>,
    hits: HashMap<String, usize>,
    introspection_requests: Vec<IntrospectionRequest>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running mock provider; dropping it stops accepting connections.
pub struct MockIssuer {
    pub addr: SocketAddr,
    state: Shared,
    task: JoinHandle<()>,
}

impl Drop for MockIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockIssuer {
    pub async fn start() -> MockIssuer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind issuer");
        let addr = listener.local_addr().expect("addr");
        let settings = Settings {
            issuer: format!("http://{addr}"),
            hmac_secret: b"mock-issuer-hmac-secret-0123456789abcdef".to_vec(),
            ..Settings::default()
        };
        let state = Arc::new(Mutex::new(State {
            url: format!("http://{addr}"),
            settings,
            generation: 1,
            keys: Arc::new(Keys::generate(1)),
            hits: HashMap::new(),
            introspection_requests: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        MockIssuer { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`, the base of every endpoint.
    pub fn url(&self) -> String {
        lock(&self.state).url.clone()
    }

    /// The issuer identifier ([`Settings::issuer`]).
    pub fn issuer(&self) -> String {
        lock(&self.state).settings.issuer.clone()
    }

    /// Changes any [`Settings`], e.g. `mock.configure(|s| s.userinfo_status = Some(500))`.
    pub fn configure(&self, change: impl FnOnce(&mut Settings)) {
        change(&mut lock(&self.state).settings);
    }

    /// `true`: every endpoint answers 503.
    pub fn set_down(&self, down: bool) {
        self.configure(|s| s.down = down);
    }

    pub fn set_jwks_mode(&self, mode: JwksMode) {
        self.configure(|s| s.jwks = mode);
    }

    /// `Some`: discovery claims this `issuer` instead of the real one.
    pub fn set_discovery_issuer(&self, issuer: Option<&str>) {
        self.configure(|s| s.discovery_issuer = issuer.map(str::to_owned));
    }

    /// How many requests reached `path` (query excluded), whatever was answered.
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.state).hits.get(path).copied().unwrap_or(0)
    }

    /// `/introspect` answers `{"active": true}` plus `members` for `token` from now on.
    pub fn activate(&self, token: &str, members: Value) {
        let mut answer = object(json!({"active": true}));
        merge(&mut answer, members);
        let answer = Value::Object(answer);
        self.configure(|s| {
            s.introspection.insert(token.to_owned(), answer);
        });
    }

    /// `/introspect` answers `{"active": false}` for `token` from now on.
    pub fn deactivate(&self, token: &str) {
        self.configure(|s| {
            s.introspection.remove(token);
        });
    }

    /// How many requests reached `/introspect`, whatever was answered.
    pub fn introspection_calls(&self) -> usize {
        self.hits("/introspect")
    }

    /// Every request `/introspect` received while not `down`, oldest first.
    pub fn introspection_requests(&self) -> Vec<IntrospectionRequest> {
        lock(&self.state).introspection_requests.clone()
    }

    /// Replaces the four keys with new ones (new kids); the old ones are no longer published.
    pub fn rotate(&self) {
        let generation = lock(&self.state).generation + 1;
        let keys = Arc::new(Keys::generate(generation));
        let mut state = lock(&self.state);
        state.generation = generation;
        state.keys = keys;
    }

    /// The current `kid` of the key `alg` uses.
    pub fn kid(&self, alg: &str) -> String {
        let keys = lock(&self.state).keys.clone();
        keys.for_alg(alg).key_id().expect("kid").to_owned()
    }

    /// The JWKS `/jwks` serves in normal mode.
    pub fn jwks(&self) -> Value {
        lock(&self.state).keys.jwks()
    }

    /// The current RSA public key as SPKI PEM (for the RS256-as-HMAC-secret confusion test).
    pub fn public_rsa_pem(&self) -> Vec<u8> {
        let keys = lock(&self.state).keys.clone();
        let pair = RsaKeyPair::from_jwk(&keys.rsa).expect("rsa");
        pair.to_pem_public_key()
    }

    /// The secret HS256/384/512 tokens are signed with.
    pub fn hmac_secret(&self) -> Vec<u8> {
        lock(&self.state).settings.hmac_secret.clone()
    }

    /// A signed token: header `{alg, kid, typ: "JWT"}` (no `kid` for HS* and `none`), claims
    /// defaulting to `iss` = the issuer, `sub` = "alice", `aud` = "api", `iat` = now,
    /// `exp` = now + 300; a claim given as `null` is left out.
    pub fn token(&self, alg: &str, claims: Value) -> String {
        self.token_with_header(alg, json!({}), claims)
    }

    /// [`Self::token`] with header members added or replaced (`null` removes one).
    pub fn token_with_header(&self, alg: &str, header: Value, claims: Value) -> String {
        let kid = (!alg.starts_with("HS") && alg != "none").then(|| self.kid(alg));
        let mut head = object(json!({"alg": alg, "kid": kid, "typ": "JWT"}));
        merge(&mut head, header);
        let now = now();
        let defaults = json!({"iss": self.issuer(), "sub": "alice", "aud": "api", "iat": now, "exp": now + 300});
        let mut body = object(defaults);
        merge(&mut body, claims);
        let (head, body) = (Value::Object(head), Value::Object(body));
        self.sign_raw(&head.to_string(), &body.to_string(), alg)
    }

    /// `b64(header).b64(payload).b64(signature)`, signed with the key for `alg` (`"none"`: an
    /// empty signature), whatever the header says.
    pub fn sign_raw(&self, header_json: &str, payload_json: &str, alg: &str) -> String {
        let (keys, hmac) = {
            let state = lock(&self.state);
            (state.keys.clone(), state.settings.hmac_secret.clone())
        };
        sign_compact(&keys, &hmac, alg, header_json, payload_json)
    }

    /// base64url without padding, as JOSE uses.
    pub fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `Issuer` settings pointing at this mock (discovery on loopback, short refresh limits),
    /// for tests that drive `IssuerKeys` directly.
    pub fn settings(&self) -> tokengate::config::Issuer {
        tokengate::config::Issuer {
            id: "mock".to_owned(),
            issuer: self.issuer(),
            jwks_uri: None,
            userinfo_endpoint: None,
            audiences: vec!["api".to_owned()],
            algorithms: tokengate::config::Algorithm::DEFAULT.to_vec(),
            clock_skew: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(1),
            ca_file: None,
            allow_any_audience: false,
            jwks_refresh: Duration::from_secs(600),
            jwks_min_refresh: Duration::from_secs(1),
            require_typ: None,
            allow_http: false,
            hmac_secret: None,
            introspection: None,
        }
    }

    /// An `[[issuer]]` block for this provider: discovery (http is fine: loopback), and short
    /// `fetch_timeout` (1 s) and `jwks_min_refresh` (1 s) for tests.
    pub fn config_toml(&self, id: &str, audiences: &[&str]) -> String {
        let audiences = serde_json::to_string(audiences).expect("audiences");
        format!(
            "[[issuer]]\nid = {id:?}\nissuer = {:?}\naudiences = {audiences}\n\
             fetch_timeout = \"1s\"\njwks_refresh = \"5m\"\njwks_min_refresh = \"1s\"\n",
            self.issuer()
        )
    }
}

fn sign_compact(keys: &Keys, hmac: &[u8], alg: &str, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", MockIssuer::b64(header), MockIssuer::b64(payload));
    if alg == "none" {
        return format!("{input}.");
    }
    let signature = keys.sign(alg, hmac, input.as_bytes());
    format!("{input}.{}", MockIssuer::b64(signature))
}

fn object(value: Value) -> Map<String, Value> {
    let Value::Object(mut map) = value else {
        panic!("header and claims must be JSON objects")
    };
    map.retain(|_, v| !v.is_null());
    map
}

/// Adds `extra`'s members to `base`; a `null` member removes that name.
fn merge(base: &mut Map<String, Value>, extra: Value) {
    let Value::Object(extra) = extra else {
        panic!("header and claims must be JSON objects")
    };
    for (name, value) in extra {
        if value.is_null() {
            base.remove(&name);
        } else {
            base.insert(name, value);
        }
    }
}

/// Current unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    let value = content_type.parse().expect("content type");
    response.headers_mut().insert("content-type", value);
    response
}

fn json_answer(status: u16, body: &Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", body.to_string())
}

async fn handle(
    state: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let down = {
        let mut s = lock(&state);
        *s.hits.entry(path.clone()).or_default() += 1;
        s.settings.down
    };
    if down {
        return Ok(json_answer(
            503,
            &json!({"error": "temporarily_unavailable"}),
        ));
    }
    Ok(match path.as_str() {
        p if p.ends_with(DISCOVERY) => json_answer(200, &discovery(&lock(&state))),
        "/jwks" => jwks(&state).await,
        "/userinfo" => userinfo(&state, req.headers()).await,
        "/introspect" => introspect(&state, req).await,
        _ => json_answer(404, &json!({"error": "not_found"})),
    })
}

fn discovery(state: &State) -> Value {
    let (url, s) = (&state.url, &state.settings);
    let mut doc = object(json!({
        "issuer": s.discovery_issuer.as_ref().unwrap_or(&s.issuer),
        "jwks_uri": format!("{url}/jwks"),
        "userinfo_endpoint": format!("{url}/userinfo"),
        "introspection_endpoint": format!("{url}/introspect"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }));
    merge(&mut doc, Value::Object(s.discovery_members.clone()));
    Value::Object(doc)
}

async fn jwks(state: &Shared) -> Response<Full<Bytes>> {
    let mode = lock(state).settings.jwks.clone();
    match mode {
        JwksMode::Status(status) => json_answer(status, &json!({"error": "server_error"})),
        JwksMode::Garbage => respond(200, "application/json", "<html>not json{"),
        JwksMode::Body(body) => respond(200, "application/json", body),
        JwksMode::Normal | JwksMode::Hang(_) => {
            if let JwksMode::Hang(delay) = mode {
                tokio::time::sleep(delay).await;
            }
            json_answer(200, &lock(state).keys.jwks())
        }
    }
}

async fn userinfo(state: &Shared, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let (delay, answer, signed) = {
        let state = lock(state);
        let s = &state.settings;
        let answer = match (&token, s.userinfo_status) {
            (_, Some(status)) => Err((status, "server_error")),
            (None, _) => Err((401, "invalid_request")),
            (Some(t), _) if s.revoked.contains(t) => Err((401, "invalid_token")),
            (Some(t), _) => Ok(s.userinfo.get(t).or(s.userinfo_default.as_ref()).cloned()),
        };
        let signed = s.userinfo_signed_alg.clone().map(|alg| {
            (
                alg,
                s.issuer.clone(),
                state.keys.clone(),
                s.hmac_secret.clone(),
            )
        });
        (s.userinfo_delay, answer, signed)
    };
    tokio::time::sleep(delay).await;
    let claims = match answer {
        Ok(Some(claims)) => claims,
        Ok(None) => {
            let sub = token.as_deref().and_then(token_sub);
            let sub = sub.unwrap_or_else(|| "alice".to_owned());
            json!({"sub": sub, "email": format!("{sub}@example.com"), "name": "Mock User"})
        }
        Err((status, error)) => {
            let mut response = json_answer(status, &json!({"error": error}));
            let challenge = format!("Bearer error=\"{error}\"")
                .parse()
                .expect("challenge");
            response.headers_mut().insert("www-authenticate", challenge);
            return response;
        }
    };
    let Some((alg, issuer, keys, hmac)) = signed else {
        return json_answer(200, &claims);
    };
    let mut body = object(json!({"iss": issuer, "aud": "tokengate"}));
    merge(&mut body, claims);
    let kid = (!alg.starts_with("HS"))
        .then(|| keys.for_alg(&alg).key_id())
        .flatten();
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string();
    let jwt = sign_compact(
        &keys,
        &hmac,
        &alg,
        &header,
        &Value::Object(body).to_string(),
    );
    respond(200, "application/jwt", jwt)
}

/// The `sub` of a JWT's payload, read without verification.
fn token_sub(token: &str) -> Option<String> {
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    let claims: Value = serde_json::from_slice(&payload).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

async fn introspect(state: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type");
    let basic = header("authorization")
        .as_deref()
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let basic = basic.and_then(|pair| {
        let (id, secret) = pair.split_once(':')?;
        Some((form_decode(id), form_decode(secret)))
    });
    let Ok(body) = req.into_body().collect().await else {
        return json_answer(400, &json!({"error": "invalid_request"}));
    };
    let form: HashMap<String, String> = String::from_utf8_lossy(&body.to_bytes())
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect();
    let (delay, failure, auth, client, answer) = {
        let mut state = lock(state);
        state.introspection_requests.push(IntrospectionRequest {
            method,
            content_type,
            basic: basic.clone(),
            form: form.clone(),
        });
        let s = &state.settings;
        let (id, secret) = INTROSPECTION_CLIENT;
        let client = s
            .introspection_client
            .clone()
            .unwrap_or_else(|| (id.to_owned(), secret.to_owned()));
        let answer = form.get("token").map(|t| s.introspection.get(t).cloned());
        let failure = s.introspection_failure.clone();
        (
            s.introspection_delay,
            failure,
            s.introspection_auth,
            client,
            answer,
        )
    };
    tokio::time::sleep(delay).await;
    match failure {
        Some(IntrospectionFailure::Status(status)) => {
            return json_answer(status, &json!({"error": "server_error"}))
        }
        Some(IntrospectionFailure::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return json_answer(503, &json!({"error": "temporarily_unavailable"}));
        }
        Some(IntrospectionFailure::Body(body)) => return respond(200, "application/json", body),
        None => {}
    }
    let field = |name: &str| form.get(name).cloned();
    let posted = || Some((field("client_id")?, field("client_secret")?));
    let credentials = match auth {
        IntrospectionAuth::Any => basic.or_else(posted),
        IntrospectionAuth::Basic => basic,
        IntrospectionAuth::Post if basic.is_some() => None,
        IntrospectionAuth::Post => posted(),
    };
    if credentials != Some(client) {
        return json_answer(401, &json!({"error": "invalid_client"}));
    }
    match answer {
        None => json_answer(400, &json!({"error": "invalid_request"})),
        Some(answer) => json_answer(200, &answer.unwrap_or_else(|| json!({"active": false}))),
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: Vec<u8> = bytes.clone().take(2).collect();
                match std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(byte) if hex.len() == 2 => {
                        out.push(byte);
                        bytes.nth(1);
                    }
                    _ => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
