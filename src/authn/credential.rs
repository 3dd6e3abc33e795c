//! Phase 3 (SPEC §4.3): the caller's credential, as the phases after extraction see it.
//!
//! The `Authorization` grammar is `token::extract`'s; this file types its answer. The raw token
//! is a [`RawToken`]: it has no `Debug` and no `Display`, so it cannot reach a log line or an
//! error by accident, and it borrows from the request's headers, so it dies with the request.
//! Code that needs the bytes (hashing, the userinfo and introspection calls, DPoP's `ath`) asks
//! for them with [`RawToken::expose`], which is easy to find in a review.

use std::fmt;

use http::HeaderMap;

use crate::config::AuthMode;
use crate::rejection::Rejection;
use crate::route::Routed;
use crate::token::extract::{self, Found};

/// An access token exactly as the client sent it.
#[derive(Clone, Copy)]
pub struct RawToken<'r>(&'r str);

impl<'r> RawToken<'r> {
    /// The token's text, for the few places that must send or hash it.
    pub fn expose(&self) -> &'r str {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A JWS compact serialization has exactly three dot-separated parts; anything else is an
    /// opaque token, for introspection (SPEC §4 item 4).
    pub fn is_jwt(&self) -> bool {
        self.0.bytes().filter(|&b| b == b'.').count() == 2
    }
}

/// What the caller presented.
pub enum Credential<'r> {
    /// No token: no `Authorization` header, another scheme (`Basic`), or a public route, which
    /// never looks.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(RawToken<'r>),
    /// `Authorization: DPoP <token>`; the proof is in the `DPoP` header (RFC 9449).
    Dpop(RawToken<'r>),
}

impl fmt::Debug for Credential<'_> {
    /// The scheme only, never the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::None => "Credential::None",
            Credential::Bearer(_) => "Credential::Bearer(..)",
            Credential::Dpop(_) => "Credential::Dpop(..)",
        })
    }
}

/// Phase 3: the credential of a routed request. `public` routes never examine `Authorization`.
pub fn extract<'r>(routed: &'r Routed<'_>) -> Result<Credential<'r>, Rejection> {
    if routed.route.auth == AuthMode::Public {
        return Ok(Credential::None);
    }
    from_headers(&routed.inbound.parts.headers)
}

fn from_headers(headers: &HeaderMap) -> Result<Credential<'_>, Rejection> {
    match extract::extract(headers) {
        Err(error) => Err(Rejection::bad_request(error.description())),
        Ok(Found::None) => Ok(Credential::None),
        Ok(Found::Bearer(token)) => Ok(Credential::Bearer(RawToken(token))),
        Ok(Found::Dpop(token)) => Ok(Credential::Dpop(RawToken(token))),
    }
}
