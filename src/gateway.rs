//! The request pipeline: the only place that knows the order of the phases (SPEC §4).
//!
//! ```text
//! framing -> normalize path -> match route -> authenticate (extract, verify) -> scrub headers
//!   -> forward (stream) -> scrub response
//! ```
//!
//! Each phase is a short function that takes what the previous one produced and returns it
//! richer, or a `Rejection`. `handle` runs them and then always runs `finish` (request id on the
//! response, access line), success or not. Token verification, userinfo enrichment, policy and
//! identity minting slot in after `match_route`; authentication reads the client's
//! `Authorization` before `scrub` removes it, which is observably the same as SPEC's order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::authn::{self, Issuers, Principal, Verified};
use crate::config::{Config, Route};
use crate::forward::{self, UpstreamBody, UpstreamClient};
use crate::identity::assertion::{AssertionInput, Minter};
use crate::identity::headers as claim_headers;
use crate::token::claims::ClaimPath;
use crate::identity::jwks::PublishedJwks;
use crate::identity::signing::SigningKey;
use crate::policy::Decision;
use crate::rejection::Rejection;
use crate::route::host::Host;
use crate::route::{self, normalize::NormalizedPath};
use crate::scrub::{self, ScrubRules, X_REQUEST_ID};
use crate::server::framing_guard::HeadFlags;
use crate::telemetry::{self, AccessLine};
use crate::token::claims::{str_claim, Claims};
use crate::token::extract::{self, Credential};
use crate::userinfo::{Outcome, TokenRef, Userinfo};

mod checks;

use checks::{
    check_framing, check_head_size, check_method, is_websocket_upgrade, normalize, request_host,
};

/// Where the main listener publishes the identity verification keys (SPEC §5).
pub const JWKS_PATH: &str = "/.well-known/tokengate/jwks.json";

/// What a response body is: the upstream's, streamed, or one of our own small JSON answers.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Everything the proxy needs for one configuration generation, built once.
#[derive(Debug)]
pub struct Gateway {
    pub config: Arc<Config>,
    scrub: ScrubRules,
    upstream: UpstreamClient,
    issuers: Issuers,
    userinfo: Arc<Userinfo>,
    /// Signs identity assertions; `None` without `[identity] signing_key`.
    minter: Option<Minter>,
    /// The verification keys, serialized once (SPEC §5).
    jwks: PublishedJwks,
    /// `[identity.headers]` with each claim reference parsed once.
    claim_headers: Vec<(header::HeaderName, ClaimPath)>,
}

/// Facts about the client connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as an `X-Forwarded-For` value, built once per connection.
    pub peer_value: HeaderValue,
    /// The listener's scheme: `http` or `https`.
    pub scheme: &'static str,
    /// Set on HTTP/1 connections: what the framing guard saw in each request head.
    pub head_flags: Option<Arc<HeadFlags>>,
    /// base64url SHA-256 of the TLS client certificate, when one was presented (RFC 8705).
    pub client_cert: Option<String>,
    /// Index of the next request on this connection (HTTP/1 dispatches in order).
    next_request: AtomicU64,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, scheme: &'static str, head_flags: Option<Arc<HeadFlags>>) -> Self {
        ConnInfo {
            peer,
            peer_value: scrub::address_value(peer.ip()),
            scheme,
            head_flags,
            client_cert: None,
            next_request: AtomicU64::new(0),
        }
    }

    pub fn with_head_flags(mut self, flags: Arc<HeadFlags>) -> Self {
        self.head_flags = Some(flags);
        self
    }

    pub fn with_client_cert(mut self, thumbprint: Option<String>) -> Self {
        self.client_cert = thumbprint;
        self
    }
}

impl Gateway {
    /// Builds one configuration generation. `previous` (on reload) lends its issuers' key state
    /// for issuers whose settings did not change.
    pub fn new(config: Arc<Config>, previous: Option<&Gateway>) -> Result<Self, String> {
        let identity = &config.identity;
        let key = identity
            .signing_key
            .as_deref()
            .map(|path| SigningKey::load(path, identity.key_id.as_deref()))
            .transpose()?;
        let jwks = PublishedJwks::load(key.as_ref(), &identity.previous_keys)?;
        let minter = key.map(|key| Minter::new(identity, key));
        let issuers = Issuers::start(&config, previous.map(|p| &p.issuers))?;
        let userinfo = Userinfo::new(&config.userinfo);
        tokio::spawn(userinfo.clone().run_purger(issuers.stopped()));
        Ok(Gateway {
            scrub: ScrubRules::new(&config),
            upstream: UpstreamClient::new(&config.upstream, &config.routes)?,
            issuers,
            userinfo,
            minter,
            jwks,
            claim_headers: config
                .identity
                .headers
                .iter()
                .map(|(name, claim)| (name.clone(), ClaimPath::parse(claim)))
                .collect(),
            config,
        })
    }

    /// Answers one request. Never fails: every problem becomes a `Rejection` response.
    pub async fn handle(&self, conn: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let index = conn.next_request.fetch_add(1, Ordering::Relaxed);
        let mut line = AccessLine::new(scrub::request_id(req.headers()), req.method().clone());
        let result = self.run(conn, index, req, &mut line).await;
        let mut response = match result {
            Ok(response) => response,
            Err(rejection) => {
                line.reason = Some(rejection.reason());
                rejection
                    .into_response(&self.config.server.realm)
                    .map(Either::Right)
            }
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), line.request_id.clone());
        telemetry::access(&line, response.status(), start.elapsed());
        response
    }

    /// The phases, in order. One async function with synchronous phases: each nested async
    /// layer would add its own copy of the request to a future that is moved on every request.
    async fn run(
        &self,
        conn: &ConnInfo,
        index: u64,
        req: Request<Incoming>,
        line: &mut AccessLine,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let (mut parts, body) = req.into_parts();
        check_framing(&parts, conn, index)?;
        check_method(&parts.method)?;
        check_head_size(&parts, self.config.server.max_header_bytes)?;
        let host = request_host(&parts)?;
        let NormalizedPath {
            match_path,
            forward_path,
        } = normalize(&parts, self.config.server.allow_path_parameters)?;
        // The published keys take precedence over every route and are never authenticated.
        let jwks = match_path == JWKS_PATH && matches!(parts.method, Method::GET | Method::HEAD);
        let route = (!jwks).then(|| self.match_route(&match_path, &parts.method, host.as_ref()));
        // The line takes the path once matching is done (no copy per request).
        line.path = Some(match_path);
        let Some(route) = route else {
            return Ok(self.jwks.response().map(Either::Right));
        };
        let route = route?;
        line.route = Some(route.id.clone());
        let principal = authn::authenticate(
            route,
            &parts.headers,
            conn.client_cert.as_deref(),
            &self.config,
            &self.issuers,
        )
        .await?;
        let principal = match principal {
            Principal::Token(verified) if route.userinfo => {
                let cached = self.userinfo.cached(
                    verified.issuer,
                    &verified.token_sha256,
                    &verified.claims,
                    route.userinfo_max_age,
                    false,
                );
                match cached {
                    Some(outcome) => enriched(verified, outcome?, line),
                    // Boxed: only a cache miss awaits, the other requests should not carry
                    // its size.
                    None => Box::pin(self.enrich(route, verified, &parts, line)).await?,
                }
            }
            other => other,
        };
        if let Principal::Token(verified) = &principal {
            // Before the policy runs, so a 403 is logged with who was refused.
            line.auth = Some(verified.auth);
            line.sub = str_claim(&verified.claims, "sub").map(str::to_owned);
            line.client_id = str_claim(&verified.claims, "client_id").map(str::to_owned);
        }
        authorize(route, &principal)?;
        let upgrade = is_websocket_upgrade(&parts);
        scrub::request_headers(
            &mut parts.headers,
            &self.scrub,
            &scrub::Forwarding {
                peer: conn.peer.ip(),
                peer_value: &conn.peer_value,
                scheme: conn.scheme,
                host: host.as_ref().map(Host::header_value),
                upgrade,
            },
        );
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), line.request_id.clone());
        if let Principal::Token(verified) = principal {
            claim_headers::apply(&mut parts.headers, &self.claim_headers, &verified.claims);
            if let Some(assertion) = self.mint(route, &verified, &parts.method, &forward_path)? {
                parts
                    .headers
                    .insert(self.config.identity.header.clone(), assertion);
            }
        }
        if let Some(host) = host {
            // The host the route was matched on, whatever spelling the client used (and HTTP/2
            // carries it in `:authority`, while HTTP/1.1 upstreams need `Host`).
            parts
                .headers
                .insert(header::HOST, host.header_value().clone());
        }
        let target = route
            .upstream
            .as_ref()
            .unwrap_or(&self.config.upstream.target);
        let (req, client_upgrade) = upstream_request(parts, body, forward_path, upgrade)?;
        let mut response = self.upstream.send(target, req).await?;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        match client_upgrade {
            Some(on_upgrade) if switching && forward::switched_to_websocket(&response) => {
                forward::splice_upgrade(on_upgrade, &mut response)
            }
            // A switch nobody asked for, or to another protocol than the one asked for.
            _ if switching => return Err(Rejection::BadGateway),
            _ => {}
        }
        scrub::response_headers(response.headers_mut(), switching);
        Ok(response.map(Either::Left))
    }

    fn match_route(
        &self,
        path: &str,
        method: &Method,
        host: Option<&Host>,
    ) -> Result<&Route, Rejection> {
        route::find(&self.config.routes, path, method, host).ok_or(Rejection::NoRoute)
    }

    /// Identity phase (SPEC §5): the signed assertion for a verified caller.
    fn mint(
        &self,
        route: &Route,
        verified: &Verified,
        method: &Method,
        forward_path: &str,
    ) -> Result<Option<HeaderValue>, Rejection> {
        let Some(minter) = &self.minter else {
            return Ok(None);
        };
        let audience = match &route.audience {
            Some(audience) => audience.as_str(),
            None => {
                &route
                    .upstream
                    .as_deref()
                    .unwrap_or(&self.config.upstream.target)
                    .origin
            }
        };
        let input = AssertionInput {
            claims: &verified.claims,
            token_exp: verified.exp,
            token_iss: &self.config.issuers[verified.issuer].issuer,
            auth: verified.auth,
            route_id: &route.id,
            audience,
            method: method.as_str(),
            path: forward_path,
            cache_key: Some(verified.token_sha256),
            claims_source: verified.userinfo_answer,
        };
        minter
            .mint(&input, authn::unix_now())
            .map(Some)
            .map_err(|error| {
                tracing::error!(%error, route = %route.id, "cannot sign the identity assertion");
                Rejection::Internal
            })
    }

    /// The identity verification keys, for the admin listener's `/jwks.json`.
    pub fn jwks(&self) -> &PublishedJwks {
        &self.jwks
    }

    /// Enrichment phase (SPEC §4.5), for `userinfo = true` routes whose token the cache could
    /// not answer for: the userinfo answer merged over the token's claims.
    async fn enrich(
        &self,
        route: &Route,
        verified: Verified,
        parts: &Parts,
        line: &mut AccessLine,
    ) -> Result<Principal, Rejection> {
        let (Ok(Credential::Bearer(token)), Some(issuer)) = (
            extract::extract(&parts.headers),
            self.issuers.get(verified.issuer),
        ) else {
            return Ok(Principal::Token(verified));
        };
        let token = TokenRef {
            raw: token,
            sha256: &verified.token_sha256,
            issuer: verified.issuer,
            claims: &verified.claims,
            exp: verified.exp,
        };
        let outcome = self
            .userinfo
            .enrich(
                token,
                issuer,
                route.userinfo_max_age,
                false,
                authn::unix_now(),
            )
            .await?;
        Ok(enriched(verified, outcome, line))
    }
}

/// The caller with the userinfo outcome applied.
fn enriched(mut verified: Verified, outcome: Outcome, line: &mut AccessLine) -> Principal {
    match outcome {
        Outcome::Enriched { claims, answer } => {
            verified.claims = claims;
            verified.userinfo_answer = answer;
        }
        Outcome::Skipped(reason) => line.reason = Some(reason),
    }
    Principal::Token(verified)
}

/// The upstream request: target URI, HTTP/1.1, and the client's upgrade handle (WebSocket).
fn upstream_request(
    mut parts: Parts,
    body: Incoming,
    forward_path: String,
    upgrade: bool,
) -> Result<(Request<Incoming>, Option<hyper::upgrade::OnUpgrade>), Rejection> {
    let uri = forward::upstream_uri(forward_path, parts.uri.query())?;
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let mut req = Request::from_parts(parts, body);
    forward::as_upstream_request(&mut req, uri);
    Ok((req, client_upgrade))
}

/// Policy phase (SPEC §4.6): the route's scopes and claim rules on the (merged) claims. A
/// tokenless request on an `optional` route carries no claims: if the route's policy cannot hold
/// without them, the client is asked for a token (401) rather than refused (403).
fn authorize(route: &Route, principal: &Principal) -> Result<(), Rejection> {
    let policy = &route.policy;
    if policy.is_empty() {
        return Ok(());
    }
    let decision = match principal {
        Principal::Token(verified) => policy.evaluate(&verified.claims),
        Principal::Anonymous => match policy.evaluate(&Claims::new()) {
            Decision::Allow => Decision::Allow,
            _ => return Err(Rejection::MissingToken),
        },
    };
    match decision {
        Decision::Allow => Ok(()),
        Decision::InsufficientScope => Err(Rejection::InsufficientScope {
            scope: policy.scope_challenge().to_owned(),
        }),
        Decision::AccessDenied => Err(Rejection::AccessDenied {
            route: route.id.to_string(),
        }),
    }
}

impl Gateway {
    /// Ids of issuers without a usable key set (for `/readyz`).
    pub fn not_ready_issuers(&self) -> Vec<String> {
        self.issuers.not_ready()
    }
}
