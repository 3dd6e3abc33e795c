//! `tokengate explain` (SPEC §2): what would happen to this request, and why — without serving.
//!
//! It runs the request pipeline itself, not a model of it: the described request becomes a real
//! `Request<Incoming>` (`request.rs`: hyper's own HTTP/1.1 parser reads its head), and then walks
//! the functions `gateway::Gateway::run` calls, in its order — `Inbound::admit`, `route::find`,
//! `authn::extract`, `Authenticator::verify`, `Userinfo::enrich_caller`, `policy::authorize`,
//! `Identity::mint` — stopping before `UpstreamClient::send`. Where a phase only returns a verdict,
//! explain asks the same phase through its observer for the why (`route::explain_match`,
//! `Authenticator::verify_traced`, `policy::authorize_traced`); the request path passes observers
//! that compile away. What explain adds itself is description only: a token's unverified header,
//! the kind of binding its `cnf` names, the claims userinfo added, the decoded assertion.
//!
//! State is built as `serve` builds it (`Authenticator::new` fetches discovery and JWKS with the
//! configured timeouts; `Userinfo` calls the endpoint as `serve` would) except with `--jwks FILE`
//! (`Authenticator::with_keys`: no fetch) and `--no-userinfo` (enrichment skipped, said so).
//! Keys are awaited only when a token must be verified, bounded by the issuers' `fetch_timeout`.
//!
//! Differences from `serve`, by construction: the request is HTTP/1.1 from 127.0.0.1 over the
//! main listener's scheme, without a TLS client certificate; caches start empty; a DPoP proof
//! given with `--header` is checked against a fresh replay cache and nonce (so a proof already used
//! at `serve` still passes here, and with `require_nonce` a real server's nonce does not).
//!
//! `report.rs` is the result, `text.rs` prints it; `--json` prints the report's serialization.

mod checks;
mod enrich;
mod outcome;
mod report;
mod request;
mod routes;
mod text;
mod verify;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use sha2::{Digest, Sha256};

pub use report::Report;
pub use request::{TokenText, Usage};

use checks::PolicyTrace;
use outcome::{description, finish};
use report::{Admission, CredentialStep, Outcome, PolicyStep, RequestSummary};
use request::Described;
use routes::routes_tried;
use verify::{credential_step, sender_step, verification_step, Seen};

use crate::authn::{self, Authenticator, Credential, Principal};
use crate::config::{self, Config};
use crate::gateway::JWKS_PATH;
use crate::identity::Identity;
use crate::inbound::{ConnInfo, Inbound, Scheme};
use crate::policy;
use crate::rejection::Rejection;
use crate::route::{self, Routed};
use crate::telemetry::trace::Tracing;
use crate::telemetry::{Metrics, MetricsOptions};
use crate::token::claims::Claims;
use crate::userinfo::Userinfo;

/// Slack on top of two issuer round trips (discovery, then the JWKS) when waiting for keys.
const KEYS_SLACK: Duration = Duration::from_secs(2);
/// How often the wait for keys looks again.
const KEYS_POLL: Duration = Duration::from_millis(20);

/// The command line of `tokengate explain`, parsed (see `main.rs` for the flags).
pub struct Args {
    pub config: PathBuf,
    pub token: Option<TokenArg>,
    pub method: String,
    pub host: Option<String>,
    /// `--header 'Name: value'`, as given.
    pub headers: Vec<String>,
    pub jwks: Option<PathBuf>,
    pub no_userinfo: bool,
    pub path: String,
}

/// Where the token comes from.
pub enum TokenArg {
    Text(String),
    File(PathBuf),
}

/// Why there is no report.
#[derive(Debug)]
pub enum Failure {
    /// Bad command-line input (exit 2).
    Usage(String),
    /// The configuration is invalid, or its state cannot be built (exit 1); one line each.
    Config(Vec<String>),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Config(_) => 1,
        }
    }
}

impl From<Usage> for Failure {
    fn from(usage: Usage) -> Failure {
        Failure::Usage(usage.0)
    }
}

impl Report {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        text::render(self)
    }
}

/// Explains one request (needs a tokio runtime: issuer keys are fetched in the background).
pub async fn explain(args: &Args) -> Result<Report, Failure> {
    // Usage first: a bad flag is reported whatever the configuration says.
    let token = match &args.token {
        None => None,
        Some(TokenArg::Text(text)) => {
            Some(TokenText::new(text).map_err(|e| Usage(format!("--token: {e}")))?)
        }
        Some(TokenArg::File(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Usage(format!(
                    "--token-file {}: cannot read it: {e}",
                    path.display()
                ))
            })?;
            Some(
                TokenText::new(&text)
                    .map_err(|e| Usage(format!("--token-file {}: {e}", path.display())))?,
            )
        }
    };
    let described = Described::new(
        &args.method,
        &args.path,
        args.host.as_deref(),
        &args.headers,
        token,
    )?;
    let jwks = match &args.jwks {
        None => None,
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| Usage(format!("--jwks {}: cannot read it: {e}", path.display())))?,
        ),
    };
    let loaded = config::load_file(&args.config).map_err(|problems| {
        let mut lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        lines.push(format!(
            "{}: {} problem(s) found; the configuration was not loaded",
            args.config.display(),
            lines.len()
        ));
        Failure::Config(lines)
    })?;
    let config = Arc::new(loaded.config);
    let state = State::new(&config, jwks.as_deref(), args)?;
    Ok(state.walk(described).await)
}

/// The phases' state, built as `serve` builds it for one configuration generation.
struct State {
    config: Arc<Config>,
    authn: Authenticator,
    userinfo: Arc<Userinfo>,
    identity: Identity,
    /// `--jwks` was given: keys come from a file.
    offline_keys: bool,
    no_userinfo: bool,
}

impl State {
    fn new(config: &Arc<Config>, jwks: Option<&[u8]>, args: &Args) -> Result<State, Failure> {
        let fail = |e: String| Failure::Config(vec![format!("{}: {e}", config.source.display())]);
        let identity = Identity::new(config).map_err(fail)?;
        // Counted and traced nowhere: explain serves no one.
        let metrics = Metrics::new(MetricsOptions::default());
        let authn = match jwks {
            Some(jwks) => Authenticator::with_keys(config, jwks, &metrics).map_err(|e| {
                let path = args.jwks.as_deref().unwrap_or(std::path::Path::new("-"));
                Failure::Config(vec![format!("--jwks {}: {e}", path.display())])
            })?,
            None => {
                Authenticator::new(config, None, &metrics, &Tracing::disabled()).map_err(fail)?
            }
        };
        Ok(State {
            config: config.clone(),
            authn,
            userinfo: Userinfo::new(&config.userinfo),
            identity,
            offline_keys: jwks.is_some(),
            no_userinfo: args.no_userinfo,
        })
    }

    /// Gateway::run's phases, in its order, each noted in the report.
    async fn walk(&self, described: Described) -> Report {
        let config = &self.config;
        let default_host = default_host(config.server.listen);
        let scheme = if config.server.tls.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let mut report = Report {
            request: RequestSummary {
                method: described.method.clone(),
                target: described.target.clone(),
                host: match (&described.host, described.has_host_header()) {
                    (_, true) => described
                        .headers
                        .iter()
                        .find(|(n, _)| n == http::header::HOST)
                        .and_then(|(_, v)| v.to_str().ok())
                        .map(str::to_owned),
                    (Some(host), false) => Some(host.clone()),
                    (None, false) => Some(default_host.clone()),
                },
                scheme: scheme.as_str(),
                headers: described.header_names(),
                token_sha256: described.token.as_ref().map(|t| sha256_prefix(t.expose())),
            },
            admission: None,
            routes: None,
            credential: None,
            issuers: None,
            verification: None,
            sender_constraint: None,
            userinfo: None,
            policy: None,
            outcome: Outcome::new("rejected"),
            exit_code: 3,
        };

        // The bytes a client would send, through hyper's parser.
        let framing = described.framing();
        let head = described.head(&default_host);
        let req = match request::parse(head, config.server.max_header_bytes).await {
            Ok(req) => req,
            Err(answer) => {
                let mut outcome = Outcome::new("rejected");
                outcome.status = answer.status;
                outcome.error_description = Some(
                    "refused by the HTTP parser before tokengate saw it (the connection is closed)"
                        .to_owned(),
                );
                report.admission = Some(Admission {
                    normalized_path: None,
                    forwarded_path: None,
                    host: None,
                    refused: outcome.error_description.clone(),
                    answered_by_tokengate: None,
                });
                return finish(report, outcome);
            }
        };
        let original_headers: Vec<String> = req
            .headers()
            .keys()
            .map(|n| n.as_str().to_owned())
            .collect();
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let conn = Arc::new(ConnInfo::new(peer, scheme, None, tracing::Span::none()));

        // 0, 1: framing, method, host, path.
        let inbound = match Inbound::admit(req, conn, framing, &config.server) {
            Ok(inbound) => inbound,
            Err(rejection) => {
                report.admission = Some(Admission {
                    normalized_path: None,
                    forwarded_path: None,
                    host: None,
                    refused: Some(description(&rejection, &config.server.realm).await),
                    answered_by_tokengate: None,
                });
                return self.rejected(report, &rejection, None).await;
            }
        };
        let published = inbound.path.match_path == JWKS_PATH
            && matches!(inbound.parts.method, Method::GET | Method::HEAD);
        report.admission = Some(Admission {
            normalized_path: Some(inbound.path.match_path.clone()),
            forwarded_path: Some(inbound.path.forward_path.clone()),
            host: inbound.host.as_ref().map(ToString::to_string),
            refused: None,
            answered_by_tokengate: published.then(|| {
                "the identity verification keys (public, never authenticated; before any route)"
                    .to_owned()
            }),
        });
        if published {
            let mut outcome = Outcome::new("answered");
            outcome.status = Some(200);
            report.exit_code = 0;
            report.outcome = outcome;
            return report;
        }

        // 2: the first matching route; the ones before it, and why they did not match.
        let found = route::find(
            &config.routes,
            &inbound.path.match_path,
            &inbound.parts.method,
            inbound.host.as_ref(),
        );
        report.routes = Some(routes_tried(&config.routes, &inbound, found));
        let Some(route) = found else {
            return self.rejected(report, &Rejection::NoRoute, None).await;
        };
        let routed = Routed { inbound, route };

        // 3: the credential.
        let credential = match authn::extract(&routed) {
            Ok(credential) => credential,
            Err(rejection) => {
                report.credential = Some(CredentialStep {
                    scheme: "none",
                    token_sha256: None,
                    format: None,
                    unverified: None,
                    refused: Some(description(&rejection, &config.server.realm).await),
                });
                return self.rejected(report, &rejection, Some(route)).await;
            }
        };
        report.credential = Some(credential_step(&credential, route));
        let presented = match &credential {
            Credential::None => None,
            Credential::Bearer(_) => Some("bearer"),
            Credential::Dpop(_) => Some("dpop"),
        };
        if presented.is_some() {
            report.issuers = Some(self.await_keys().await);
        }

        // 4: verification, with what the phase saw.
        let mut seen = Seen::default();
        let verified = self
            .authn
            .verify_traced(credential, &routed, &mut seen)
            .await;
        if let Some(scheme) = presented {
            let refused = match &verified {
                Err(rejection) => Some((
                    rejection.reason(),
                    description(rejection, &config.server.realm).await,
                )),
                Ok(_) => None,
            };
            report.verification = Some(verification_step(config, &seen, refused));
            report.sender_constraint = seen
                .token
                .as_ref()
                .map(|(_, claims, _)| sender_step(scheme, claims, route, verified.as_ref().err()));
        }
        let verified = match verified {
            Ok(verified) => verified,
            Err(rejection) => return self.rejected(report, &rejection, Some(route)).await,
        };

        // 5: userinfo (or not).
        let token_claims = seen.token.as_ref().map(|(_, claims, _)| claims.clone());
        let (enriched, userinfo) = self.enrich(verified, route, token_claims.as_deref()).await;
        report.userinfo = userinfo;
        let principal = match enriched {
            Ok(principal) => principal,
            Err(rejection) => return self.rejected(report, &rejection, Some(route)).await,
        };
        let auth = match &principal {
            Principal::Caller(caller) => Some(caller.auth.as_str()),
            Principal::Anonymous => None,
        };

        // 6: the route's policy, every check.
        let evaluated = match &principal {
            Principal::Caller(caller) => caller.claims.clone(),
            Principal::Anonymous => Arc::new(Claims::new()),
        };
        let mut trace = PolicyTrace(Vec::new());
        let authorized = policy::authorize_traced(route, principal, &mut trace);
        if let Some((claim, value)) = policy::scope_claim(&evaluated) {
            for check in trace.0.iter_mut().filter(|c| c.kind == "scope") {
                check.claim = Some(claim.to_owned());
                check.value = Some(value.clone());
            }
        }
        report.policy = Some(PolicyStep {
            decision: match &authorized {
                Ok(_) => "allow",
                Err(Rejection::InsufficientScope { .. }) => "insufficient_scope",
                Err(Rejection::MissingToken) => "missing_token",
                Err(_) => "access_denied",
            },
            empty: route.policy.is_empty(),
            checks: trace.0,
        });
        let authorized = match authorized {
            Ok(authorized) => authorized,
            Err(rejection) => return self.rejected(report, &rejection, Some(route)).await,
        };

        // 7: header hygiene and the identity the upstream would receive.
        let request_id = crate::scrub::request_id(&routed.inbound.parts.headers);
        let trace = Tracing::disabled().incoming(&routed.inbound.parts.headers);
        let upstream = match self.identity.mint(authorized, routed, &request_id, &trace) {
            Ok(upstream) => upstream,
            Err(rejection) => return self.rejected(report, &rejection, Some(route)).await,
        };
        let outcome = outcome::forwarded(config, route, auth, upstream, original_headers);
        finish(report, outcome)
    }
}

/// What a local client would send as `Host` for the main listener: its address, an unspecified
/// IP as loopback, without a port when it is 0 (an ephemeral port is not addressable here).
fn default_host(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match (listen.port(), ip) {
        (0, IpAddr::V6(ip)) => format!("[{ip}]"),
        (0, ip) => ip.to_string(),
        (port, ip) => SocketAddr::new(ip, port).to_string(),
    }
}

/// The first 16 hex digits of the SHA-256 of `token`: enough to tell tokens apart in a report,
/// nothing of the token itself.
fn sha256_prefix(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn secs(n: i64) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

/// `1h2m3s`, `5m`, `0s`.
fn human(d: Duration) -> String {
    let total = d.as_secs();
    if total == 0 {
        return if d.is_zero() {
            "0s".to_owned()
        } else {
            format!("{}ms", d.as_millis())
        };
    }
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests;
