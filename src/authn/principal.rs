//! The values the phases after extraction hand each other: a [`Verified`] caller (phase 4),
//! which enrichment turns into a [`Principal`] (phase 5), which policy authorizes (phase 6).
//!
//! A [`Token`] still holds the raw token, because enrichment may have to send it to the
//! issuer's userinfo endpoint; a [`Caller`] no longer does, so nothing after enrichment can
//! leak it, and the request's headers are free to be rewritten.

use std::sync::Arc;

use super::credential::RawToken;
use crate::reason::{AuthMethod, Reason};
use crate::token::claims::{str_claim, Claims};

/// A token that passed every check of SPEC §4.4 (and §4.8) for this request.
pub struct Token<'r> {
    pub raw: RawToken<'r>,
    /// SHA-256 of the whole token: the cache key of anything derived from it.
    pub sha256: [u8; 32],
    /// Index into `Config::issuers`.
    pub issuer: usize,
    /// The token's claims (a JWT's payload, or an introspection answer's members).
    pub claims: Arc<Claims>,
    /// The token's `exp` (unix seconds).
    pub exp: i64,
    pub auth: AuthMethod,
}

impl Token<'_> {
    /// The caller without the raw token, with its (possibly enriched) `claims`.
    pub fn into_caller(self, claims: Arc<Claims>, source: ClaimsSource) -> Caller {
        Caller {
            claims,
            exp: self.exp,
            issuer: self.issuer,
            token_sha256: self.sha256,
            auth: self.auth,
            source,
        }
    }
}

/// Phase 4's result.
pub enum Verified<'r> {
    /// A public route, or an optional one without a token.
    Anonymous,
    Token(Token<'r>),
}

/// Where a caller's claims come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimsSource {
    /// The token's own claims (no userinfo on this route).
    Token,
    /// The token's claims with this userinfo answer merged over them; the id is unique in the
    /// process, so for one token equal ids mean equal claims.
    Userinfo(u64),
    /// The token's own claims, because userinfo was skipped; the reason goes to the access line.
    Skipped(Reason),
}

/// A verified, enriched caller.
#[derive(Debug)]
pub struct Caller {
    pub claims: Arc<Claims>,
    pub exp: i64,
    pub issuer: usize,
    pub token_sha256: [u8; 32],
    pub auth: AuthMethod,
    pub source: ClaimsSource,
}

impl Caller {
    pub fn sub(&self) -> Option<&str> {
        str_claim(&self.claims, "sub")
    }

    pub fn client_id(&self) -> Option<&str> {
        str_claim(&self.claims, "client_id")
    }
}

/// Phase 5's result: who the caller is, as far as the route needed to know.
#[derive(Debug)]
pub enum Principal {
    /// A public route, or an optional one without a token: no identity is forwarded.
    Anonymous,
    Caller(Caller),
}
