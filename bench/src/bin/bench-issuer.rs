//! `bench-issuer`: the helper processes of `bench/run.sh`. NOT FOR PRODUCTION: it signs whatever
//! it is asked to, answers `/userinfo` for any token without verifying it, and vouches for any
//! token of the form `bench-opaque-<i>[-...]` at `/introspect`.
//!
//! ```text
//! bench-issuer serve --listen ADDR --key FILE [--issuer URL] [--userinfo-delay-ms N]
//!     a minimal OIDC issuer: GET /.well-known/openid-configuration, /jwks (the RSA-2048 public
//!     key, kid "bench-rs256", RS256), /userinfo (after the delay: {"sub": <the token's sub>,
//!     "email": ..., "name": "<the token's name> (userinfo)"}), POST /introspect (RFC 7662, client
//!     "tokengate-bench" / "bench-introspection-secret" by client_secret_basic, else 401:
//!     `bench-opaque-<i>[-...]` is active with the claims a minted token <i> has, anything else
//!     inactive), /stats ({"userinfo_calls": N, "introspection_calls": M})
//! bench-issuer mint --key FILE --issuer URL --count N --out FILE [--threads N] [--dpop-key FILE]
//!     pre-mints N distinct RS256 access tokens (one per line): sub user-<i>, unique jti, 1 h
//!     lifetime, aud "bench", scope "openid orders:read", email/name/groups/realm_access.roles...;
//!     with --dpop-key (a P-256 PKCS#8 PEM, generated when missing) each token is DPoP-bound to
//!     that key: "cnf": {"jkt": <its RFC 7638 thumbprint>}
//! bench-issuer proofs --dpop-key FILE --ath ATH --htu URL --count N --out FILE [--htm M] [--threads N]
//!     N DPoP proofs (RFC 9449 §4.2), one per line, ES256 with that key: typ dpop+jwt, its public
//!     jwk, a jti unique across calls, htm (default GET), htu, iat now, ath (base64url SHA-256 of
//!     the access token, computed by the caller: this crate has no SHA-256 of its own)
//! bench-issuer upstream LISTEN
//!     the upstream of every row: 200 with a small fixed body; a path ending in /echo answers with
//!     the request headers it received; PUT/POST .../stream echoes the request body (streamed)
//! bench-issuer conns ADDR N PATH [--hold-secs S]
//!     opens N keep-alive connections, sends one GET PATH on each (at most 64 in flight), prints
//!     "open N" and keeps them idle for S seconds (default 600) or until killed
//! bench-issuer ports N
//!     prints N distinct free loopback ports
//! ```
//!
//! `--key FILE` is an RSA-2048 PKCS#8 PEM private key shared by `serve` and `mint`; it is generated
//! (mode 0600) when missing, as is `--dpop-key FILE`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: bad input panics with its message

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::KeyPair;
use josekit::jws::{JwsHeader, JwsSigner as _, ES256, RS256};
use josekit::jwt::{self, JwtPayload};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KID: &str = "bench-rs256";
const AUDIENCE: &str = "bench";
const UPSTREAM_BODY: &[u8] = b"{\"ok\":true}\n";
/// The OAuth client tokengate authenticates as at `/introspect` (client_secret_basic).
const INTROSPECTION_CLIENT_ID: &str = "tokengate-bench";
const INTROSPECTION_SECRET: &str = "bench-introspection-secret";
/// Opaque tokens `/introspect` vouches for: this prefix, the user number, optionally `-` and more.
const OPAQUE_PREFIX: &str = "bench-opaque-";
/// Largest introspection request body read (a token and a hint; real ones are far smaller).
const MAX_FORM_BYTES: usize = 16 * 1024;

type Body = Either<Full<Bytes>, Incoming>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => runtime().block_on(serve(Flags::parse(&args[1..]))),
        Some("mint") => mint(&Flags::parse(&args[1..])),
        Some("proofs") => proofs(&Flags::parse(&args[1..])),
        Some("upstream") if args.len() == 2 => runtime().block_on(upstream(&args[1])),
        Some("conns") if args.len() >= 4 => {
            let flags = Flags::parse(&args[4..]);
            let hold = flags.num("hold-secs", 600);
            match args[2].parse() {
                Ok(n) => runtime().block_on(conns(&args[1], n, &args[3], hold)),
                Err(e) => Err(format!("bad N: {e}")),
            }
        }
        Some("ports") if args.len() == 2 => ports(&args[1]),
        _ => {
            eprintln!("usage: see the header of src/bin/bench-issuer.rs (serve | mint | proofs | upstream | conns | ports)");
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        eprintln!("bench-issuer: {error}");
        std::process::exit(1);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `--name value` pairs.
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Flags {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match (arg.strip_prefix("--"), it.next()) {
                (Some(name), Some(value)) => {
                    map.insert(name.to_owned(), value.clone());
                }
                _ => {
                    eprintln!("bench-issuer: expected --name value pairs, found {arg:?}");
                    std::process::exit(2);
                }
            }
        }
        Flags(map)
    }

    fn req(&self, name: &str) -> Result<&str, String> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn num(&self, name: &str, default: u64) -> u64 {
        self.0.get(name).map_or(default, |v| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("bench-issuer: --{name}: not a number: {v:?}");
                std::process::exit(2)
            })
        })
    }
}

/// The PEM in `path`, written first (mode 0600, atomically) by `generate` when the file does not
/// exist.
fn load_or_create_pem(
    path: &str,
    generate: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    let path = Path::new(path);
    if !path.exists() {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let pem = generate()?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        file.write_all(&pem).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads the RSA key from `path`, generating it when the file does not exist.
fn load_or_create_key(path: &str) -> Result<RsaKeyPair, String> {
    let pem = load_or_create_pem(path, || {
        RsaKeyPair::generate(2048)
            .map(|k| k.to_pem_private_key())
            .map_err(|e| e.to_string())
    })?;
    RsaKeyPair::from_pem(pem).map_err(|e| format!("{path}: {e}"))
}

/// Loads the P-256 DPoP key from `path`, generating it when the file does not exist.
fn load_or_create_dpop_key(path: &str) -> Result<EcKeyPair, String> {
    let pem = load_or_create_pem(path, || {
        EcKeyPair::generate(EcCurve::P256)
            .map(|k| k.to_pem_private_key())
            .map_err(|e| e.to_string())
    })?;
    EcKeyPair::from_pem(pem, Some(EcCurve::P256)).map_err(|e| format!("{path}: {e}"))
}

/// The public JWK of a DPoP key (kty, crv, x, y) and its RFC 7638 thumbprint (tokengate's own
/// function: the value `cnf.jkt` must equal).
fn dpop_public(key: &EcKeyPair) -> Result<(Value, String), String> {
    let jwk = key.to_jwk_public_key();
    let map = jwk.as_ref().clone();
    let jkt = tokengate::token::dpop::thumbprint(&map).map_err(|e| e.to_string())?;
    Ok((Value::Object(map), jkt))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// mint

fn claims(issuer: &str, i: u64, iat: u64) -> Value {
    json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": format!("user-{i}"),
        "jti": format!("bench-{iat}-{i}"),
        "iat": iat,
        "nbf": iat - 5,
        "exp": iat + 3600,
        "scope": "openid orders:read",
        "client_id": "bench-client",
        "email": format!("user{i}@bench.example"),
        "email_verified": true,
        "name": format!("Bench User {i}"),
        "groups": ["staff", "bench"],
        "realm_access": { "roles": ["user", "ops"] },
        "tenant": "t1",
        "org": { "dept": "eng", "site": "lab" },
    })
}

fn mint(flags: &Flags) -> Result<(), String> {
    let key = load_or_create_key(flags.req("key")?)?;
    let issuer = flags.req("issuer")?.to_owned();
    let out = flags.req("out")?;
    let count = flags.num("count", 100_000);
    let threads = threads(flags);
    let cnf = match flags.0.get("dpop-key") {
        Some(path) => Some(json!({ "jkt": dpop_public(&load_or_create_dpop_key(path)?)?.1 })),
        None => None,
    };
    let pem = key.to_pem_private_key();
    let iat = now();
    let per = count.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (pem, issuer, cnf) = (pem.clone(), issuer.clone(), cnf.clone());
            std::thread::spawn(move || -> Result<String, String> {
                let signer = RS256.signer_from_pem(&pem).map_err(|e| e.to_string())?;
                let mut header = JwsHeader::new();
                header.set_token_type("JWT");
                header.set_key_id(KID);
                let mut lines = String::new();
                for i in (t * per)..((t + 1) * per).min(count) {
                    let Value::Object(mut map) = claims(&issuer, i, iat) else {
                        unreachable!()
                    };
                    if let Some(cnf) = &cnf {
                        map.insert("cnf".into(), cnf.clone());
                    }
                    let payload = JwtPayload::from_map(map).map_err(|e| e.to_string())?;
                    let token = jwt::encode_with_signer(&payload, &header, &signer)
                        .map_err(|e| e.to_string())?;
                    lines.push_str(&token);
                    lines.push('\n');
                }
                Ok(lines)
            })
        })
        .collect();
    let mut all = String::new();
    for handle in handles {
        all.push_str(&handle.join().map_err(|_| "a mint thread panicked")??);
    }
    std::fs::write(out, all).map_err(|e| format!("{out}: {e}"))?;
    let bound = if cnf.is_some() { " DPoP-bound" } else { "" };
    eprintln!("bench-issuer: minted {count}{bound} tokens for {issuer} into {out}");
    Ok(())
}

/// `--threads`, default: the CPUs this process may use.
fn threads(flags: &Flags) -> u64 {
    let default = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    flags.num("threads", default).clamp(1, 64)
}

// ---------------------------------------------------------------------------------------------
// proofs

fn proofs(flags: &Flags) -> Result<(), String> {
    let key = load_or_create_dpop_key(flags.req("dpop-key")?)?;
    let ath = flags.req("ath")?.to_owned();
    let htu = flags.req("htu")?.to_owned();
    let htm = flags.0.get("htm").map_or("GET", String::as_str).to_owned();
    let out = flags.req("out")?;
    let count = flags.num("count", 1);
    let threads = threads(flags);
    let (jwk, _) = dpop_public(&key)?;
    let header = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": jwk });
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    // The jti prefix of this call: no two calls of one run (or of runs sharing a key) repeat a
    // jti, so a proof is refused only if the same line is sent twice.
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let run = format!("{started:x}{:x}", std::process::id());
    let pem = key.to_pem_private_key();
    let iat = now();
    let per = count.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (pem, header, run) = (pem.clone(), header.clone(), run.clone());
            let (htm, htu, ath) = (htm.clone(), htu.clone(), ath.clone());
            std::thread::spawn(move || -> Result<String, String> {
                let signer = ES256.signer_from_pem(&pem).map_err(|e| e.to_string())?;
                let mut lines = String::new();
                for i in (t * per)..((t + 1) * per).min(count) {
                    let claims = json!({
                        "jti": format!("{run}-{i}"),
                        "htm": htm,
                        "htu": htu,
                        "iat": iat,
                        "ath": ath,
                    });
                    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
                    let signature = signer.sign(input.as_bytes()).map_err(|e| e.to_string())?;
                    lines.push_str(&input);
                    lines.push('.');
                    lines.push_str(&URL_SAFE_NO_PAD.encode(signature));
                    lines.push('\n');
                }
                Ok(lines)
            })
        })
        .collect();
    let mut all = String::new();
    for handle in handles {
        all.push_str(&handle.join().map_err(|_| "a proof thread panicked")??);
    }
    std::fs::write(out, all).map_err(|e| format!("{out}: {e}"))?;
    eprintln!("bench-issuer: made {count} DPoP proofs for {htm} {htu} into {out}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// serve

struct Issuer {
    url: String,
    jwks: Bytes,
    discovery: Bytes,
    userinfo_delay: Duration,
    userinfo_calls: AtomicU64,
    introspection_calls: AtomicU64,
    /// `Authorization` tokengate must send to `/introspect`.
    introspection_auth: String,
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The (unverified) claims of the bearer token in `req`.
fn bearer_claims(req: &Request<Incoming>) -> Option<Value> {
    let auth = req.headers().get("authorization")?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

impl Issuer {
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/.well-known/openid-configuration" => {
                json_response(StatusCode::OK, self.discovery.clone())
            }
            "/jwks" => json_response(StatusCode::OK, self.jwks.clone()),
            "/userinfo" => {
                self.userinfo_calls.fetch_add(1, Ordering::Relaxed);
                if !self.userinfo_delay.is_zero() {
                    tokio::time::sleep(self.userinfo_delay).await;
                }
                let Some(claims) = bearer_claims(&req) else {
                    return json_response(
                        StatusCode::UNAUTHORIZED,
                        Bytes::from_static(b"{\"error\":\"invalid_token\"}"),
                    );
                };
                let name = claims["name"].as_str().unwrap_or("nobody");
                let body = json!({
                    "sub": claims["sub"],
                    "email": claims["email"],
                    "name": format!("{name} (userinfo)"),
                });
                json_response(StatusCode::OK, Bytes::from(body.to_string()))
            }
            "/introspect" if req.method() == Method::POST => self.introspect(req).await,
            "/stats" => {
                let stats = json!({
                    "userinfo_calls": self.userinfo_calls.load(Ordering::Relaxed),
                    "introspection_calls": self.introspection_calls.load(Ordering::Relaxed),
                });
                json_response(StatusCode::OK, Bytes::from(stats.to_string()))
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"{\"error\":\"not_found\"}"),
            ),
        }
    }

    /// RFC 7662 §2: the client must authenticate; `bench-opaque-<i>[-...]` is active with the
    /// claims of minted token `<i>` (exp in 1 h), anything else inactive. Every call is counted,
    /// so run.sh can show that a warm cache makes none.
    async fn introspect(&self, req: Request<Incoming>) -> Response<Body> {
        self.introspection_calls.fetch_add(1, Ordering::Relaxed);
        let authorized = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == self.introspection_auth.as_bytes());
        if !authorized {
            return json_response(
                StatusCode::UNAUTHORIZED,
                Bytes::from_static(b"{\"error\":\"invalid_client\"}"),
            );
        }
        let Ok(body) = Limited::new(req.into_body(), MAX_FORM_BYTES)
            .collect()
            .await
        else {
            return json_response(
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"{\"error\":\"invalid_request\"}"),
            );
        };
        let body = body.to_bytes();
        let user = form_value(&body, "token")
            .and_then(|t| t.strip_prefix(OPAQUE_PREFIX).map(str::to_owned))
            .and_then(|rest| rest.split('-').next().and_then(|i| i.parse::<u64>().ok()));
        let answer = match user.map(|i| claims(&self.url, i, now())) {
            Some(Value::Object(mut claims)) => {
                claims.insert("active".into(), Value::Bool(true));
                claims.insert("token_type".into(), Value::from("Bearer"));
                Value::Object(claims)
            }
            _ => json!({ "active": false }),
        };
        json_response(StatusCode::OK, Bytes::from(answer.to_string()))
    }
}

/// The first value of `name` in an `application/x-www-form-urlencoded` body, decoded.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| form_decode(v))
}

/// `+` is a space, `%XX` a byte; the result must be UTF-8.
fn form_decode(value: &str) -> Option<String> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

async fn serve(flags: Flags) -> Result<(), String> {
    let key = load_or_create_key(flags.req("key")?)?;
    let listen = flags.req("listen")?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let url = flags
        .0
        .get("issuer")
        .cloned()
        .unwrap_or_else(|| format!("http://{addr}"));
    let mut jwk = key.to_jwk_public_key();
    jwk.set_key_id(KID);
    jwk.set_algorithm("RS256");
    jwk.set_key_use("sig");
    let jwks = json!({ "keys": [Value::Object(jwk.as_ref().clone())] });
    let discovery = json!({
        "issuer": url,
        "jwks_uri": format!("{url}/jwks"),
        "userinfo_endpoint": format!("{url}/userinfo"),
        "introspection_endpoint": format!("{url}/introspect"),
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    let issuer = Arc::new(Issuer {
        url,
        jwks: Bytes::from(jwks.to_string()),
        discovery: Bytes::from(discovery.to_string()),
        userinfo_delay: Duration::from_millis(flags.num("userinfo-delay-ms", 0)),
        userinfo_calls: AtomicU64::new(0),
        introspection_calls: AtomicU64::new(0),
        introspection_auth: format!(
            "Basic {}",
            STANDARD.encode(format!("{INTROSPECTION_CLIENT_ID}:{INTROSPECTION_SECRET}"))
        ),
    });
    eprintln!(
        "bench-issuer: {} on {addr} (userinfo delay {:?})",
        issuer.url, issuer.userinfo_delay
    );
    serve_loop(listener, move |req| {
        let issuer = issuer.clone();
        async move { issuer.answer(req).await }
    })
    .await
}

async fn serve_loop<F, Fut>(listener: TcpListener, answer: F) -> Result<(), String>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let fut = answer(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// upstream

fn upstream_answer(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path.ends_with("/echo") {
        let mut text = format!("{} {}\n", req.method(), path);
        for (name, value) in req.headers() {
            text.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        let mut r = Response::new(Either::Left(Full::new(Bytes::from(text))));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return r;
    }
    if path.ends_with("/stream") && (req.method() == Method::PUT || req.method() == Method::POST) {
        return Response::new(Either::Right(req.into_body()));
    }
    let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(UPSTREAM_BODY))));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn upstream(listen: &str) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    eprintln!(
        "bench-issuer: upstream on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    serve_loop(listener, |req| async move { upstream_answer(req) }).await
}

// ---------------------------------------------------------------------------------------------
// conns

/// Sends one request on `tcp` and reads its whole response (Content-Length framing only).
async fn one_request(tcp: &mut TcpStream, request: &[u8]) -> Result<(), String> {
    tcp.write_all(request).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the response ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Ok(());
            }
        }
    }
}

async fn conns(addr: &str, n: usize, path: &str, hold_secs: u64) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("bad ADDR {addr}: {e}"))?;
    let request = Arc::new(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes());
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let closed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (request, closed) = (request.clone(), closed.clone());
        tasks.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            one_request(&mut tcp, &request).await?;
            drop(permit);
            // Keep the connection idle; note when the server closes it.
            let mut byte = [0u8; 1];
            let _ = tcp.read(&mut byte).await;
            closed.fetch_add(1, Ordering::Relaxed);
            Ok::<_, String>(tcp)
        }));
    }
    // Wait until every request was answered (the permits all came back).
    let all = permits.acquire_many(64).await.map_err(|e| e.to_string())?;
    drop(all);
    let finished = tasks.iter().filter(|t| t.is_finished()).count();
    println!(
        "open {} (failed or already closed: {finished})",
        n - finished
    );
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    println!(
        "closed by the server while idle: {}",
        closed.load(Ordering::Relaxed)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ports

fn ports(n: &str) -> Result<(), String> {
    let n: usize = n.parse().map_err(|e| format!("bad N: {e}"))?;
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    for l in &listeners {
        println!("{}", l.local_addr().map_err(|e| e.to_string())?.port());
    }
    Ok(())
}
