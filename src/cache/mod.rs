//! The two building blocks behind every per-token cache that asks an issuer (userinfo,
//! introspection): a bounded map of entries with a hard expiry ([`TtlCache`], `ttl.rs`), and
//! single-flight for its misses ([`Flights`], `flight.rs`).
//!
//! Both are generic over the key and the value and know nothing of tokens, issuers or HTTP:
//! what a value means, how long it may live and what to count is the caller's business. Both
//! hash with [`DigestHash`](crate::digest_hash::DigestHash) by default, because both callers key
//! by (issuer index, SHA-256 of the token); a cache keyed by anything else must pass another
//! hasher.

mod flight;
mod ttl;

pub(crate) use flight::{Flights, Joined};
pub(crate) use ttl::{TtlCache, MAX_LIFETIME};

#[cfg(test)]
mod tests;
