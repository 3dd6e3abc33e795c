//! tokengate: an authenticating reverse proxy.
//!
//! # The request pipeline
//!
//! Every request walks one line of phases (SPEC §4). Each phase is a function from the previous
//! phase's value to the next one's, or a `Rejection` (`rejection`), so the order is the
//! compiler's: `gateway::Gateway::run` is this diagram, line by line. The middle column is the
//! SPEC §4 item (or section) each phase implements; the phases' own docs and `Gateway::run`
//! number the phases 0 to 8 in this order (routing 2, minting 7, forwarding 8).
//!
//! ```text
//!  request (server: TLS, HTTP/1.1 or HTTP/2, framing observer)
//!    │ inbound::Inbound::admit         0, 1  framing, method, head size, canonical host, path
//!    ▼
//!  Inbound ──── route::find ─────────── §3   first matching route (404 no_route)
//!    ▼
//!  Routed ───── authn::extract ──────── 3    Authorization: Bearer | DPoP (raw token, no Debug)
//!    ▼
//!  Credential ─ Authenticator::verify ─ 4, 8 JWT or introspection; DPoP proof / mTLS binding
//!    ▼
//!  Verified ─── Userinfo::enrich_caller 5    userinfo merged over the token's claims
//!    ▼
//!  Principal ── policy::authorize ───── 6    scopes and claim rules; only it makes Authorized
//!    ▼
//!  Authorized ─ Identity::mint ──────── 2, 7 header hygiene, X-Forwarded-*, assertion, Host
//!    ▼
//!  UpstreamRequest ─ UpstreamClient::send 7  stream to the upstream and back
//!    ▼
//!  response ─── Gateway::finish         request id, access line (every request, every outcome)
//! ```
//!
//! # Modules
//!
//! - `app`: the one start-up path (`serve`, `demo`, the integration tests).
//! - `server`: listeners, protocol detection, connection deadlines, graceful shutdown; hands
//!   requests to a handler as `inbound::ConnInfo` + `inbound::Framing`.
//! - `inbound`, `route`, `authn`, `userinfo`, `policy`, `identity`, `forward`: the phases above.
//! - `gateway`: the phase line and the per-request context (request id, access-line fields,
//!   the request's log span, made on its first log event by `telemetry`).
//! - `token`: the JOSE rules, issuer key sets, introspection and DPoP proof checks.
//! - `scrub`: header hygiene in both directions. `rejection`, `reason`: every error a client can
//!   see, and the one enum of reasons behind the access line and the metrics.
//! - `cache`: the bounded TTL cache and the single-flight registry shared by userinfo and
//!   introspection; `digest_hash`: the table hash of the caches keyed by SHA-256 digests.
//! - `config`: TOML schema, `${ENV}`, validation with file/line/key path, the compiled model.
//! - `telemetry`: logging and the access line. `reload`: SIGHUP. `keygen`, `demo`: commands.
//! - `explain`: `tokengate explain`, the phases above run on a described request, with the why.
#![forbid(unsafe_code)]

pub mod app;
pub mod authn;
pub(crate) mod cache;
pub mod config;
pub mod demo;
pub(crate) mod digest_hash;
pub mod explain;
pub mod forward;
pub(crate) mod gateway;
pub mod identity;
pub mod inbound;
pub mod keygen;
pub(crate) mod percent;
pub mod policy;
pub mod reason;
pub mod rejection;
pub(crate) mod reload;
pub mod route;
pub(crate) mod scrub;
pub mod server;
pub mod telemetry;
pub mod token;
pub mod userinfo;
