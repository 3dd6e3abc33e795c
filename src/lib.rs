//! tokengate: an authenticating reverse proxy.
//!
//! A request walks one straight line of phases (see `gateway.rs`):
//! normalize path -> match route -> scrub headers -> extract token -> verify -> enrich
//! -> authorize -> mint identity -> forward (stream) -> scrub response.
//!
//! - `authn`: the authentication phase (which issuer, which failure, which rejection).
//! - `config`: TOML schema, `${ENV}` expansion, validation with file/line/key path, compiled model.
//! - `route`: path normalization and the first-match route table.
//! - `server`: listeners, HTTP/1 + HTTP/2, connection limits, graceful shutdown.
//! - `gateway`: the phase line; the only place that knows the order.
//! - `scrub`: header hygiene in both directions (hop-by-hop, spoofed identity, X-Forwarded-*).
//! - `forward`: the pooled upstream client and streaming.
//! - `rejection`: every error a client can see, and how it is rendered.
//! - `token`: bearer extraction, JWT verification rules, issuer key sets.
//! - `identity`: what is forwarded upstream about the caller.
//! - `telemetry`: logging setup and the access line.
#![forbid(unsafe_code)]

pub mod authn;
pub mod config;
pub mod demo;
pub mod digest_hash;
pub mod forward;
pub mod gateway;
pub mod identity;
pub mod keygen;
pub mod policy;
pub mod rejection;
pub mod reload;
pub mod route;
pub mod scrub;
pub mod server;
pub mod telemetry;
pub mod token;
pub mod userinfo;
