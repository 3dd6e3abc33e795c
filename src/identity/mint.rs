//! Phase 7 of the request pipeline (SPEC §4 item 2, §5): the request the upstream receives.
//!
//! [`Identity::mint`] takes an [`Authorized`] request — there is no other way to make an
//! [`UpstreamRequest`], and `forward` sends nothing else — then strips whatever the client sent
//! that could pass for identity or steer the hop (header hygiene, `scrub`), and adds tokengate's
//! own headers: `X-Forwarded-*`, `X-Request-Id`, the canonical `Host`, and for a verified caller
//! the plain claim headers and the signed assertion. "Strip, then add", in that order, always.
//!
//! ```compile_fail,E0308
//! // A principal that did not pass policy cannot be minted into an upstream request...
//! fn skip_policy(
//!     id: &tokengate::identity::Identity,
//!     p: tokengate::authn::Principal,
//!     r: tokengate::route::Routed<'_>,
//!     request_id: &http::HeaderValue,
//!     trace: &tokengate::telemetry::trace::TraceContext,
//! ) {
//!     let _ = id.mint(p, r, request_id, trace);
//! }
//! ```
//!
//! ```
//! // ...an authorized one can.
//! fn after_policy(
//!     id: &tokengate::identity::Identity,
//!     a: tokengate::policy::Authorized,
//!     r: tokengate::route::Routed<'_>,
//!     request_id: &http::HeaderValue,
//!     trace: &tokengate::telemetry::trace::TraceContext,
//! ) {
//!     let _ = id.mint(a, r, request_id, trace);
//! }
//! ```

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::assertion::{AssertionInput, Minter};
use super::headers as claim_headers;
use super::jwks::PublishedJwks;
use super::signing::SigningKey;
use crate::authn::{unix_now, Caller, ClaimsSource, Principal};
use crate::config::{Config, Route, UpstreamProtocol, UpstreamTarget};
use crate::forward::{self, BodyWait};
use crate::inbound::Inbound;
use crate::policy::Authorized;
use crate::rejection::Rejection;
use crate::route::Routed;
use crate::scrub::{self, ScrubRules, X_REQUEST_ID};
use crate::telemetry::trace::TraceContext;
use crate::token::claims::ClaimPath;

/// The identity phase's state for one configuration generation.
#[derive(Debug)]
pub struct Identity {
    config: Arc<Config>,
    scrub: Arc<ScrubRules>,
    /// Signs identity assertions; `None` without `[identity] signing_key`.
    minter: Option<Minter>,
    /// The verification keys, serialized once (SPEC §5).
    jwks: PublishedJwks,
    /// `[identity.headers]` with each claim reference parsed once.
    claim_headers: Vec<(HeaderName, ClaimPath)>,
}

/// A request ready for the upstream: only [`Identity::mint`] makes one.
pub struct UpstreamRequest(Outgoing);

/// An [`UpstreamRequest`] taken apart, by the forwarder and nowhere else.
pub(crate) struct Outgoing {
    /// The request head, rewritten for the upstream; kept apart from the body until the body is
    /// ready to go (`forward`), so neither is moved into a `Request` and out again.
    pub parts: Parts,
    pub body: Incoming,
    pub target: Arc<UpstreamTarget>,
    pub protocol: UpstreamProtocol,
    /// The client's side of an authorized WebSocket upgrade.
    pub upgrade: Option<OnUpgrade>,
    /// Applied to the request body's trailers as they stream through (`scrub::request_trailers`).
    pub trailer_rules: Arc<ScrubRules>,
    /// How much of the body must be here before the upstream is involved.
    pub body_wait: BodyWait,
}

impl UpstreamRequest {
    pub(crate) fn into_outgoing(self) -> Outgoing {
        self.0
    }
}

impl Identity {
    pub fn new(config: &Arc<Config>) -> Result<Identity, String> {
        let identity = &config.identity;
        let key = identity
            .signing_key
            .as_deref()
            .map(|path| SigningKey::load(path, identity.key_id.as_deref()))
            .transpose()?;
        let jwks = PublishedJwks::load(key.as_ref(), &identity.previous_keys)?;
        Ok(Identity {
            minter: key.map(|key| Minter::new(identity, key)),
            jwks,
            scrub: Arc::new(ScrubRules::new(config)),
            claim_headers: identity
                .headers
                .iter()
                .map(|(name, claim)| (name.clone(), ClaimPath::parse(claim)))
                .collect(),
            config: config.clone(),
        })
    }

    /// The identity verification keys (SPEC §5), for both listeners.
    pub fn jwks(&self) -> &PublishedJwks {
        &self.jwks
    }

    /// Phase 7: strip, then add (module docs).
    pub fn mint(
        &self,
        authorized: Authorized,
        routed: Routed<'_>,
        request_id: &HeaderValue,
        trace: &TraceContext,
    ) -> Result<UpstreamRequest, Rejection> {
        let Routed { inbound, route } = routed;
        let websocket = inbound.is_websocket_upgrade();
        let Inbound {
            mut parts,
            body,
            conn,
            host,
            path,
        } = *inbound;
        scrub::request_headers(
            &mut parts.headers,
            &self.scrub,
            &scrub::Forwarding {
                peer: conn.peer.ip(),
                peer_value: &conn.peer_value,
                scheme: conn.scheme.as_str(),
                host: host.as_ref().map(|h| h.header_value()),
                upgrade: websocket,
            },
        );
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        // The upstream call is a child of the request's span (`traceparent`), with the
        // client's `tracestate` passed on unchanged.
        trace.inject(&mut parts.headers);
        let (target, protocol) = forward::target_of(route, &self.config.upstream);
        let target = target.clone();
        let forward_path = path.forward_path;
        let body_wait = body_wait(&parts, authorized.principal());
        if let Principal::Caller(caller) = authorized.principal() {
            claim_headers::apply(&mut parts.headers, &self.claim_headers, &caller.claims);
            let assertion = self.assertion(route, &target, caller, &parts.method, &forward_path)?;
            if let Some(assertion) = assertion {
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
        // Most requests are already in origin form with a normal path: their target is sent as
        // it came (the same bytes `upstream_uri` would build, without parsing them again).
        let as_sent = parts.uri.scheme().is_none() && parts.uri.path() == forward_path;
        if !as_sent {
            parts.uri = forward::upstream_uri(forward_path, parts.uri.query())?;
        }
        parts.version = Version::HTTP_11;
        let upgrade = websocket
            .then(|| parts.extensions.remove::<OnUpgrade>())
            .flatten();
        Ok(UpstreamRequest(Outgoing {
            parts,
            body,
            target,
            protocol,
            upgrade,
            trailer_rules: self.scrub.clone(),
            body_wait,
        }))
    }

    /// The signed assertion for a verified caller (SPEC §5); `None` without a signing key.
    fn assertion(
        &self,
        route: &Route,
        target: &UpstreamTarget,
        caller: &Caller,
        method: &http::Method,
        forward_path: &str,
    ) -> Result<Option<HeaderValue>, Rejection> {
        let Some(minter) = &self.minter else {
            return Ok(None);
        };
        let token_iss = self
            .config
            .issuers
            .get(caller.issuer)
            .map_or("", |i| i.issuer.as_str());
        let input = AssertionInput {
            claims: &caller.claims,
            token_exp: caller.exp,
            token_iss,
            auth: caller.auth.as_str(),
            route_id: &route.id,
            audience: route.audience.as_deref().unwrap_or(&target.origin),
            method: method.as_str(),
            path: forward_path,
            cache_key: Some(caller.token_sha256),
            claims_source: match caller.source {
                ClaimsSource::Userinfo(answer) => answer,
                ClaimsSource::Token | ClaimsSource::Skipped(_) => 0,
            },
        };
        minter.mint(&input, unix_now()).map(Some).map_err(|error| {
            tracing::error!(%error, route = %route.id, "cannot sign the identity assertion");
            Rejection::Internal
        })
    }
}

/// A gRPC call (an HTTP/2 `POST` with a gRPC content type) may reach the upstream before its body
/// does: at once for an authenticated caller, once its first message has started for an anonymous
/// one. Everything else is read ahead (`forward::request_body`).
fn body_wait(parts: &Parts, principal: &Principal) -> BodyWait {
    let grpc = parts.version == Version::HTTP_2
        && parts.method == Method::POST
        && forward::is_grpc_call(&parts.headers);
    match principal {
        _ if !grpc => BodyWait::ReadAhead,
        Principal::Caller(_) => BodyWait::Nothing,
        _ => BodyWait::Start,
    }
}
