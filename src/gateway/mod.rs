//! The request pipeline: the only place that knows the order of the phases (SPEC §4; the
//! diagram is in the crate documentation). `Gateway::run` is that order, one line per phase,
//! each phase a function from the previous phase's value to the next one's, or a `Rejection`;
//! [`Gateway::handle`] runs it and then always finishes the request (request id on the answer,
//! access line), success or not.
//!
//! The values are typed so the order is the compiler's, not a comment's: minting the upstream
//! request takes an `Authorized`, which only `policy::authorize` makes, and forwarding takes the
//! `UpstreamRequest` only minting makes. Authentication reads the client's `Authorization` before
//! header hygiene removes it (at minting), which is observably the same as SPEC's order.

mod ctx;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

pub use ctx::RequestCtx;

use crate::authn::{self, Authenticator};
use crate::config::Config;
use crate::forward::{UpstreamBody, UpstreamClient};
use crate::identity::Identity;
use crate::inbound::{ConnInfo, Framing, Inbound};
use crate::policy;
use crate::reason::AuthMethod;
use crate::rejection::Rejection;
use crate::route::{self, Routed};
use crate::scrub::X_REQUEST_ID;
use crate::telemetry::trace::{
    self, CallKind, CallOutcome, ClientSpan, ServerSpan, TraceContext, Tracing,
};
use crate::telemetry::{self, LogSpan, Metrics, MetricsOptions, RouteMetrics};
use crate::token::dpop::DPOP_NONCE;
use crate::userinfo::Userinfo;

/// Where the main listener publishes the identity verification keys (SPEC §5).
pub const JWKS_PATH: &str = "/.well-known/tokengate/jwks.json";

/// What a response body is: the upstream's, streamed, or one of our own small JSON answers.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// One configuration generation: every phase's state, built once.
#[derive(Debug)]
pub struct Gateway {
    pub config: Arc<Config>,
    authn: Authenticator,
    userinfo: Arc<Userinfo>,
    identity: Identity,
    upstream: UpstreamClient,
    /// Process-wide, carried from generation to generation (counters never reset on reload).
    metrics: Arc<Metrics>,
    /// One handle per route, in configuration order; `no_route` for the rest.
    route_metrics: Vec<Arc<RouteMetrics>>,
    no_route: Arc<RouteMetrics>,
    /// Process-wide too: trace propagation, and span export with `[telemetry]`.
    tracing: Tracing,
}

impl Gateway {
    /// Builds one configuration generation. `previous` (on reload) lends its issuers' key state
    /// for issuers whose settings did not change, and its DPoP replay state.
    pub fn new(config: Arc<Config>, previous: Option<&Gateway>) -> Result<Self, String> {
        // Read at start only: the registry, the exporter thread and its queue outlive reloads.
        let (metrics, tracing) = match previous {
            Some(p) => (p.metrics.clone(), p.tracing.clone()),
            None => {
                let metrics = Metrics::new(MetricsOptions {
                    spans_dropped: config.telemetry.is_some(),
                    ..MetricsOptions::default()
                });
                let tracing = Tracing::start(config.telemetry.as_ref(), Some(metrics.clone()))?;
                (metrics, tracing)
            }
        };
        let identity = Identity::new(&config)?;
        let authn = Authenticator::new(&config, previous.map(|p| &p.authn), &metrics, &tracing)?;
        let userinfo = Userinfo::with_metrics(&config.userinfo, metrics.clone());
        tokio::spawn(userinfo.clone().run_purger(authn.issuers().stopped()));
        Ok(Gateway {
            route_metrics: config.routes.iter().map(|r| metrics.route(&r.id)).collect(),
            no_route: metrics.no_route(),
            metrics,
            tracing,
            upstream: UpstreamClient::new(
                &config.upstream,
                &config.routes,
                config.server.header_read_timeout,
            )?,
            authn,
            userinfo,
            identity,
            config,
        })
    }

    /// Answers one request. Never fails: every problem becomes a `Rejection` response. Takes its
    /// generation by `Arc` so that the listener's handler can return this future as it is.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
        framing: Framing,
    ) -> Response<ProxyBody> {
        let mut ctx = RequestCtx::new(req.headers(), req.method(), &self.tracing);
        // The request's log span, a child of the connection's (its events name the peer too).
        let log = LogSpan::new(ctx.request_id().clone(), conn.clone());
        let trace = ctx.trace.clone();
        // Pinned here and wrapped by reference: the phases' future is the request's largest
        // value, and a wrapper taking it by value would copy it.
        let result = {
            let run = std::pin::pin!(self.run(req, conn, framing, &mut ctx));
            trace::scope(&self.tracing, trace, Some(log), run).await
        };
        self.finish(result, ctx)
    }

    /// The phases, in SPEC §4's order. One async function with synchronous phases and boxed
    /// slow paths: each nested async layer would add its own copy of the request to a future
    /// that is moved on every request. The blocks end each value's storage before the next
    /// `await`, so the future does not keep room for values already moved on.
    async fn run(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
        framing: Framing,
        ctx: &mut RequestCtx,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let (upstream, call) = {
            let routed = {
                // 0, 1: framing, method, host, path.
                let inbound = Inbound::admit(req, conn, framing, &self.config.server)?;
                // The published keys take precedence over every route and are never authenticated.
                if is_published_keys(&inbound) {
                    return Ok(self.identity.jwks().response().map(Either::Right));
                }
                // 2: the first matching route.
                self.route(inbound, ctx)?
            };
            // 3, 4: the credential, verified (signature or introspection, sender constraints).
            let credential = authn::extract(&routed)?;
            let verified = self.authn.verify(credential, &routed).await?;
            // 5: userinfo enrichment.
            let issuers = self.authn.issuers();
            let principal = self
                .userinfo
                .enrich_caller(verified, routed.route, issuers)
                .await?;
            ctx.caller(&principal);
            // 6: the route's policy.
            let authorized = policy::authorize(routed.route, principal)?;
            // 7: header hygiene and the identity the upstream receives.
            // The upstream's `traceparent` names the request's span (SPEC §8); when spans are
            // exported, the upstream call is recorded as a CLIENT child of it.
            let upstream = self
                .identity
                .mint(authorized, routed, ctx.request_id(), &ctx.trace)?;
            (
                upstream,
                self.tracing.exporting().then(|| ctx.trace.child()),
            )
        };
        // 8: forward and stream back.
        let sent = Instant::now();
        let response = self.upstream.send(upstream).await;
        self.upstream_sent(ctx, call.as_ref(), sent.elapsed(), &response);
        Ok(response?.map(Either::Left))
    }

    /// Phase 2, with the route and the normalized path noted for the access line.
    fn route<'g>(
        &'g self,
        mut inbound: Box<Inbound>,
        ctx: &mut RequestCtx,
    ) -> Result<Routed<'g>, Rejection> {
        let found = route::find_index(
            &self.config.routes,
            &inbound.path.match_path,
            &inbound.parts.method,
            inbound.host.as_ref(),
        );
        ctx.line.path = Some(std::mem::take(&mut inbound.path.match_path));
        let (index, route) = found
            .and_then(|i| Some((i, self.config.routes.get(i)?)))
            .ok_or(Rejection::NoRoute)?;
        ctx.route = Some(index);
        ctx.line.route = Some(route.id.clone());
        Ok(Routed { inbound, route })
    }

    /// The upstream exchange, for the route's metrics and, when spans are exported (`call`), as
    /// the request span's CLIENT child.
    fn upstream_sent(
        &self,
        ctx: &RequestCtx,
        call: Option<&TraceContext>,
        elapsed: Duration,
        response: &Result<Response<UpstreamBody>, Rejection>,
    ) {
        self.route_metrics(ctx).upstream(elapsed);
        if let Some(call) = call {
            let outcome = match response {
                Ok(response) => CallOutcome::Status(response.status().as_u16()),
                Err(rejection) => CallOutcome::Failed(rejection.reason().as_str()),
            };
            let span = ClientSpan::new(&ctx.line.method, outcome);
            self.tracing
                .client_span(call, CallKind::Upstream, elapsed, &span);
        }
    }

    fn route_metrics(&self, ctx: &RequestCtx) -> &RouteMetrics {
        ctx.route
            .and_then(|i| self.route_metrics.get(i))
            .unwrap_or(&self.no_route)
    }

    /// Always runs: the rejection rendered, `X-Request-Id` (and a DPoP caller's next nonce) on
    /// the answer, the access line.
    fn finish(
        &self,
        result: Result<Response<ProxyBody>, Rejection>,
        mut ctx: RequestCtx,
    ) -> Response<ProxyBody> {
        let mut response = match result {
            Ok(response) => response,
            Err(rejection) => {
                let reason = rejection.reason();
                self.metrics.auth_failure(reason);
                ctx.line.reason = Some(reason);
                let realm = &self.config.server.realm;
                match ctx.grpc {
                    true => rejection.into_grpc_response(realm),
                    false => rejection.into_response(realm),
                }
                .map(Either::Right)
            }
        };
        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), ctx.request_id().clone());
        if ctx.line.auth == Some(AuthMethod::Dpop) {
            if let Some(nonce) = self.authn.dpop_nonce() {
                headers.insert(DPOP_NONCE.clone(), nonce);
            }
        }
        let elapsed = ctx.start.elapsed();
        let status = response.status();
        self.route_metrics(&ctx).request(status.as_u16(), elapsed);
        self.tracing.server_span(
            &ctx.trace,
            elapsed,
            &ServerSpan::from_access(&ctx.line, status),
        );
        telemetry::access(&ctx.line, status, elapsed);
        response
    }

    /// The process's metrics registry (`/metrics`, the accept loop, reloads).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The process's tracing (flushed at exit).
    pub fn tracing(&self) -> &Tracing {
        &self.tracing
    }

    /// The identity verification keys, for the admin listener's `/jwks.json`.
    pub fn jwks_response(&self) -> Response<Full<Bytes>> {
        self.identity.jwks().response()
    }

    /// Ids of issuers without a usable key set (for `/readyz`).
    pub fn not_ready_issuers(&self) -> Vec<String> {
        self.authn.issuers().not_ready()
    }
}

fn is_published_keys(inbound: &Inbound) -> bool {
    inbound.path.match_path == JWKS_PATH
        && matches!(inbound.parts.method, Method::GET | Method::HEAD)
}
