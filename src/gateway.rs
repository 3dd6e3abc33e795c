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
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::authn::{self, Issuers, Principal, Verified};
use crate::config::{Config, Route};
use crate::forward::{self, UpstreamClient};
use crate::identity::assertion::{AssertionInput, Minter};
use crate::identity::headers::{self as claim_headers, ClaimPath};
use crate::identity::jwks::PublishedJwks;
use crate::identity::signing::SigningKey;
use crate::policy::Decision;
use crate::rejection::Rejection;
use crate::route::{self, normalize::NormalizedPath};
use crate::scrub::{self, ScrubRules, X_REQUEST_ID};
use crate::server::framing_guard::HeadFlags;
use crate::telemetry::{self, AccessLine};
use crate::token::claims::{str_claim, Claims};
use crate::token::extract::{self, Credential};
use crate::userinfo::{Outcome, Userinfo};

/// Where the main listener publishes the identity verification keys (SPEC §5).
pub const JWKS_PATH: &str = "/.well-known/tokengate/jwks.json";

/// What a response body is: the upstream's, streamed, or one of our own small JSON answers.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

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
            upstream: UpstreamClient::new(&config.upstream)?,
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

    async fn run(
        &self,
        conn: &ConnInfo,
        index: u64,
        req: Request<Incoming>,
        line: &mut AccessLine,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let (mut parts, body) = req.into_parts();
        check_framing(&parts, conn, index)?;
        check_head_size(&parts, self.config.server.max_header_bytes)?;
        let host = request_host(&parts)?;
        let path = normalize(&parts, self.config.server.allow_path_parameters)?;
        line.path = Some(path.match_path.clone());
        // The published keys take precedence over every route and are never authenticated.
        if path.match_path == JWKS_PATH && matches!(parts.method, Method::GET | Method::HEAD) {
            return Ok(self.jwks.response().map(Either::Right));
        }
        let route = self.match_route(&path, &parts.method, host.as_deref())?;
        line.route = Some(route.id.clone());
        let principal = authn::authenticate(
            route,
            &parts.headers,
            conn.client_cert.as_deref(),
            &self.config,
            &self.issuers,
        )
        .await?;
        let principal = self.enrich(route, principal, &parts, line).await?;
        if let Principal::Token(verified) = &principal {
            // Before the policy runs, so a 403 is logged with who was refused.
            line.auth = Some(verified.auth);
            line.sub = str_claim(&verified.claims, "sub").map(str::to_owned);
            line.client_id = str_claim(&verified.claims, "client_id").map(str::to_owned);
        }
        authorize(route, &principal)?;
        let upgrade = is_upgrade(&parts);
        let host_header = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok());
        scrub::request_headers(
            &mut parts.headers,
            &self.scrub,
            &scrub::Forwarding {
                peer: conn.peer.ip(),
                scheme: conn.scheme,
                host: host.as_deref(),
                upgrade,
            },
        );
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), line.request_id.clone());
        if let Principal::Token(verified) = &principal {
            claim_headers::apply(&mut parts.headers, &self.claim_headers, &verified.claims);
            if let Some(assertion) = self.mint(route, verified, &parts.method, &path)? {
                parts
                    .headers
                    .insert(self.config.identity.header.clone(), assertion);
            }
        }
        if let (false, Some(h)) = (parts.headers.contains_key(header::HOST), host_header) {
            // HTTP/2 carries the host in `:authority`; HTTP/1.1 upstreams need `Host`.
            parts.headers.insert(header::HOST, h);
        }
        self.forward(route, parts, body, &path, upgrade).await
    }

    fn match_route(
        &self,
        path: &NormalizedPath,
        method: &Method,
        host: Option<&str>,
    ) -> Result<&Route, Rejection> {
        route::find(&self.config.routes, &path.match_path, method, host).ok_or(Rejection::NoRoute)
    }

    /// Identity phase (SPEC §5): the signed assertion for a verified caller.
    fn mint(
        &self,
        route: &Route,
        verified: &Verified,
        method: &Method,
        path: &NormalizedPath,
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
            path: &path.forward_path,
            cache_key: Some(verified.token_sha256),
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

    /// Enrichment phase (SPEC §4.5): on `userinfo = true` routes, the userinfo answer merged
    /// over the token's claims (through the cache).
    async fn enrich(
        &self,
        route: &Route,
        principal: Principal,
        parts: &Parts,
        line: &mut AccessLine,
    ) -> Result<Principal, Rejection> {
        let Principal::Token(mut verified) = principal else {
            return Ok(principal);
        };
        if !route.userinfo {
            return Ok(Principal::Token(verified));
        }
        let (Ok(Credential::Bearer(token)), Some(issuer)) = (
            extract::extract(&parts.headers),
            self.issuers.get(verified.issuer),
        ) else {
            return Ok(Principal::Token(verified));
        };
        let outcome = self
            .userinfo
            .enrich(
                verified.issuer,
                issuer,
                token,
                &verified.claims,
                verified.exp,
                route.userinfo_max_age,
                false,
                authn::unix_now(),
            )
            .await?;
        match outcome {
            Outcome::Enriched(merged) => verified.claims = merged,
            Outcome::Skipped(reason) => line.reason = Some(reason),
        }
        Ok(Principal::Token(verified))
    }

    async fn forward(
        &self,
        route: &Route,
        mut parts: Parts,
        body: Incoming,
        path: &NormalizedPath,
        upgrade: bool,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let target = route
            .upstream
            .as_deref()
            .unwrap_or(&self.config.upstream.target);
        let uri = forward::upstream_uri(target, &path.forward_path, parts.uri.query())?;
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        let mut req = Request::from_parts(parts, body);
        forward::as_upstream_request(&mut req, uri);
        let mut response = self.upstream.send(req).await?;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        match client_upgrade {
            Some(on_upgrade) if switching => forward::splice_upgrade(on_upgrade, &mut response),
            _ if switching => return Err(Rejection::BadGateway),
            _ => {}
        }
        scrub::response_headers(response.headers_mut(), switching);
        Ok(response.map(Either::Left))
    }
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

/// Phase 0 (SPEC §4.0): what hyper's HTTP/1 parser lets through but a proxy must not.
fn check_framing(parts: &Parts, conn: &ConnInfo, index: u64) -> Result<(), Rejection> {
    if parts.method == Method::CONNECT {
        return Err(Rejection::bad_framing("CONNECT is not supported"));
    }
    if parts.version <= Version::HTTP_11 {
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            return Err(Rejection::bad_framing(
                "only origin-form request targets are accepted",
            ));
        }
        if conn
            .head_flags
            .as_ref()
            .is_some_and(|f| f.had_cl_and_te(index))
        {
            return Err(Rejection::bad_framing(
                "both Content-Length and Transfer-Encoding are present",
            ));
        }
        let mut codings = parts.headers.get_all(header::TRANSFER_ENCODING).iter();
        if let Some(first) = codings.next() {
            // hyper accepts `gzip, chunked` or two TE lines and drops the outer coding's meaning;
            // forwarding such a body re-framed would change it, so only plain `chunked` passes.
            if codings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Err(Rejection::bad_framing(
                    "Transfer-Encoding other than chunked is not accepted",
                ));
            }
        }
    }
    Ok(())
}

/// The request head's size as it was on the wire (HTTP/1 request line and header lines), against
/// `max_header_bytes`. hyper's own limit is set looser and only catches what never parses.
fn check_head_size(parts: &Parts, max: usize) -> Result<(), Rejection> {
    let line = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    let mut size = line + 2;
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + 4;
    }
    if size > max {
        Err(Rejection::HeaderTooLarge)
    } else {
        Ok(())
    }
}

/// The host the client addressed: `:authority` for HTTP/2, the single `Host` header for HTTP/1.1
/// (missing or repeated → 400, RFC 9112 §3.2).
fn request_host(parts: &Parts) -> Result<Option<String>, Rejection> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(Rejection::bad_request("several Host headers"));
    }
    if parts.version >= Version::HTTP_2 {
        if let Some(authority) = parts.uri.authority() {
            return Ok(Some(authority.as_str().to_owned()));
        }
    }
    match first {
        Some(value) => match value.to_str() {
            Ok(host) if !host.is_empty() => Ok(Some(host.to_owned())),
            _ => Err(Rejection::bad_request("invalid Host header")),
        },
        None if parts.version == Version::HTTP_11 => Err(Rejection::bad_request(
            "HTTP/1.1 requests need a Host header",
        )),
        None => Ok(None),
    }
}

fn normalize(parts: &Parts, allow_path_parameters: bool) -> Result<NormalizedPath, Rejection> {
    route::normalize::normalize(parts.uri.path(), allow_path_parameters)
        .map_err(|e| Rejection::bad_request(e.description()))
}

/// An HTTP/1.1 protocol upgrade request (WebSocket): `Upgrade` plus `Connection: upgrade`.
fn is_upgrade(parts: &Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

impl Gateway {
    /// Ids of issuers without a usable key set (for `/readyz`).
    pub fn not_ready_issuers(&self) -> Vec<String> {
        self.issuers.not_ready()
    }
}
