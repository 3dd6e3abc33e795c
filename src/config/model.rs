//! The compiled configuration: typed, validated values built once at load time.
//!
//! Everything the request path reads lives here in its final form (socket addresses, `HeaderName`s,
//! durations, CIDRs, the route table), so no request ever parses a string from the config file.
//! Building these values from TOML is `load.rs`'s job; this file only declares them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use ipnet::IpNet;

/// One complete, immutable configuration generation. A reload builds a new one and swaps it in.
#[derive(Debug)]
pub struct Config {
    /// The file it was loaded from, as given on the command line (for messages).
    pub source: PathBuf,
    pub server: Server,
    pub admin: Option<Admin>,
    pub upstream: Upstream,
    pub issuers: Vec<Issuer>,
    pub dpop: Dpop,
    pub userinfo: Userinfo,
    pub identity: Identity,
    /// `None` when the file has no `[telemetry]` table (trace context is propagated anyway).
    pub telemetry: Option<Telemetry>,
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct Server {
    pub listen: SocketAddr,
    pub realm: String,
    pub max_header_bytes: usize,
    pub max_token_bytes: usize,
    /// From accept to a complete request head (TLS handshake and protocol detection included),
    /// and between requests on an HTTP/1.1 connection.
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection without an open stream for this long is closed (GOAWAY).
    pub idle_timeout: Duration,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to HTTP/2 clients.
    pub max_concurrent_streams: u32,
    /// Lower-cased, with `_` replaced by `-`, so a request header name normalized the same way can
    /// be compared with `starts_with`.
    pub strip_header_prefixes: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    /// Scheme + authority (no path), e.g. `https://api.example.com`.
    pub public_base_url: Option<String>,
    pub allow_path_parameters: bool,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Admin {
    pub listen: SocketAddr,
}

#[derive(Debug)]
pub struct Upstream {
    /// Default target of every route without its own `upstream`.
    pub target: Arc<UpstreamTarget>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Connections per upstream origin, busy or idle.
    pub max_connections: usize,
    pub ca_file: Option<PathBuf>,
    /// What routes without `upstream_protocol` speak to their upstream.
    pub protocol: UpstreamProtocol,
}

/// The protocol tokengate speaks to an upstream (SPEC §3 `[upstream].protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, one request per pooled connection at a time (the default).
    Http1,
    /// HTTP/2: prior knowledge (h2c) for `http://`, ALPN `h2` for `https://`; needed for gRPC.
    Http2,
}

impl UpstreamProtocol {
    /// `"http1"` or `"h2"`, as in the configuration.
    pub fn parse(text: &str) -> Result<UpstreamProtocol, String> {
        match text {
            "http1" => Ok(UpstreamProtocol::Http1),
            "h2" => Ok(UpstreamProtocol::Http2),
            other => Err(format!("expected \"http1\" or \"h2\", found {other:?}")),
        }
    }
}

/// Where requests go. The configured URL must be an origin (`scheme://host[:port]`, optional `/`):
/// the forwarded path is always the normalized request path, never rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// `scheme://authority`, the default `aud` of identity assertions.
    pub origin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    pub const DEFAULT: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The JOSE name, exactly as it appears in a token header.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }

    /// Exact, case-sensitive JOSE name lookup (`none` and unknown names give `None`).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    pub const ALL: [Algorithm; 12] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];

    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

/// A secret string from the config file: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    pub id: String,
    /// Exactly as configured; a token's `iss` must equal it byte for byte.
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew: Duration,
    pub fetch_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub allow_any_audience: bool,
    pub jwks_refresh: Duration,
    pub jwks_min_refresh: Duration,
    /// Lower-cased, without an `application/` prefix.
    pub require_typ: Option<String>,
    pub allow_http: bool,
    pub hmac_secret: Option<Secret>,
    pub introspection: Option<Introspection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    pub endpoint: Option<String>,
    pub client_id: String,
    pub client_secret: Secret,
    pub auth_method: ClientAuthMethod,
    pub cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
}

#[derive(Debug)]
pub struct Dpop {
    pub algorithms: Vec<Algorithm>,
    pub max_age: Duration,
    pub replay_cache_entries: usize,
    pub require_nonce: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Deny,
    Proceed,
}

#[derive(Debug)]
pub struct Userinfo {
    pub cache_ttl: Duration,
    pub max_entries: usize,
    pub timeout: Duration,
    pub on_error: OnError,
}

#[derive(Debug)]
pub struct Identity {
    pub header: HeaderName,
    pub issuer: String,
    pub signing_key: Option<PathBuf>,
    pub key_id: Option<String>,
    pub previous_keys: Vec<PathBuf>,
    pub ttl: Duration,
    pub claims: Vec<String>,
    pub forward_token: bool,
    pub bind_request: bool,
    /// `[identity.headers]` in file order: header name -> claim name (or JSON Pointer).
    pub headers: Vec<(HeaderName, String)>,
}

/// `[telemetry]` (SPEC §3, §8): trace export and the sampling of new traces.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// The OTLP/HTTP collector's base URL without a trailing `/`; spans go to
    /// [`Telemetry::traces_url`]. `None`: nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The fraction of traces started here that are sampled, 0.0..=1.0 (a continued trace
    /// keeps its caller's decision).
    pub sample_ratio: f64,
}

impl Telemetry {
    /// `<otlp_endpoint>/v1/traces`, where span batches are POSTed.
    pub fn traces_url(&self) -> Option<String> {
        self.otlp_endpoint
            .as_ref()
            .map(|base| format!("{base}/v1/traces"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Public,
    Optional,
    Required,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// `path`: the normalized request path must equal it.
    Exact(String),
    /// `path_prefix`, stored without a trailing `/` (empty for `/`): segment-aware.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMatch {
    /// The canonical host name without port (`crate::route::host`).
    pub name: String,
    /// Only compared when the rule names a port.
    pub port: Option<u16>,
}

#[derive(Debug)]
pub struct Route {
    pub id: Arc<str>,
    pub path: PathMatch,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    pub host: Option<HostMatch>,
    pub auth: AuthMode,
    /// Indices into `Config::issuers`; `None`: every issuer.
    pub issuers: Option<Vec<usize>>,
    pub userinfo: bool,
    pub userinfo_max_age: Option<Duration>,
    pub upstream: Option<Arc<UpstreamTarget>>,
    /// `upstream_protocol`: overrides `[upstream].protocol` for this route.
    pub upstream_protocol: Option<UpstreamProtocol>,
    pub audience: Option<String>,
    pub require_sender_constrained: bool,
    /// `scopes`, `[[route.claims]]` and `[[route.any_of]]`, compiled (SPEC §3, §4.6).
    pub policy: crate::policy::Policy,
    /// Line of the `[[route]]` header, for shadowing warnings.
    pub line: usize,
}
