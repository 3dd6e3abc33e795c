//! Phase 6 of the request pipeline (SPEC §4.6): the route's policy on the caller's (merged)
//! claims. An [`Authorized`] request can only be made here, and minting the identity forwarded
//! upstream takes one, so no request reaches the upstream without passing its route's policy:
//!
//! ```compile_fail,E0451
//! // Outside this module an `Authorized` cannot be built from a principal...
//! fn forge(p: tokengate::authn::Principal) -> tokengate::policy::Authorized {
//!     tokengate::policy::Authorized { principal: p }
//! }
//! ```
//!
//! ```
//! // ...only `authorize` makes one, from a route and a principal.
//! fn pass(
//!     route: &tokengate::config::Route,
//!     p: tokengate::authn::Principal,
//! ) -> Result<tokengate::policy::Authorized, tokengate::rejection::Rejection> {
//!     tokengate::policy::authorize(route, p)
//! }
//! ```

use super::{Decision, Observer};
use crate::authn::Principal;
use crate::config::Route;
use crate::rejection::Rejection;
use crate::token::claims::Claims;

/// A principal that passed its route's policy.
#[derive(Debug)]
pub struct Authorized {
    principal: Principal,
}

impl Authorized {
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
}

/// Phase 6: the route's scopes and claim rules on the caller's claims. A tokenless request on an
/// `optional` route carries no claims: if the route's policy cannot hold without them, the client
/// is asked for a token (401) rather than refused (403).
#[inline]
pub fn authorize(route: &Route, principal: Principal) -> Result<Authorized, Rejection> {
    authorize_traced(route, principal, &mut ())
}

/// [`authorize`], reporting every check of the policy to `observer` (`tokengate explain`).
pub fn authorize_traced<O: Observer>(
    route: &Route,
    principal: Principal,
    observer: &mut O,
) -> Result<Authorized, Rejection> {
    let policy = &route.policy;
    if policy.is_empty() {
        return Ok(Authorized { principal });
    }
    let decision = match &principal {
        Principal::Caller(caller) => policy.evaluate_traced(&caller.claims, observer),
        Principal::Anonymous => match policy.evaluate_traced(&Claims::new(), observer) {
            Decision::Allow => Decision::Allow,
            _ => return Err(Rejection::MissingToken),
        },
    };
    match decision {
        Decision::Allow => Ok(Authorized { principal }),
        Decision::InsufficientScope => Err(Rejection::InsufficientScope {
            scope: policy.scope_challenge().to_owned(),
        }),
        Decision::AccessDenied => Err(Rejection::AccessDenied {
            route: route.id.to_string(),
        }),
    }
}
