//! Phase 5 of the request pipeline (SPEC §4.5): a [`Verified`] caller becomes a [`Principal`],
//! with the userinfo answer merged over the token's claims on routes with `userinfo = true`.
//!
//! The warm path (a cached answer, or a route without userinfo) is synchronous; only a cache
//! miss awaits the issuer, in a boxed future, so the common request does not carry its size.

use crate::authn::{ClaimsSource, Issuers, Principal, Token, Verified};
use crate::config::Route;
use crate::reason::{AuthMethod, Reason};
use crate::rejection::Rejection;

use super::{Outcome, TokenRef, Userinfo};

impl Userinfo {
    /// Phase 5: the caller's claims, enriched when the route asks for it. A DPoP-bound token is
    /// never sent to userinfo (its proof is bound to this request, not to that endpoint).
    pub async fn enrich_caller(
        &self,
        verified: Verified<'_>,
        route: &Route,
        issuers: &Issuers,
    ) -> Result<Principal, Rejection> {
        let token = match verified {
            Verified::Anonymous => return Ok(Principal::Anonymous),
            Verified::Token(token) => token,
        };
        if !route.userinfo {
            let claims = token.claims.clone();
            return Ok(Principal::Caller(
                token.into_caller(claims, ClaimsSource::Token),
            ));
        }
        let dpop_bound = token.auth == AuthMethod::Dpop;
        let cached = self.cached(
            token.issuer,
            &token.sha256,
            &token.claims,
            route.userinfo_max_age,
            dpop_bound,
        );
        let outcome = match cached {
            Some(outcome) => outcome?,
            None => Box::pin(self.ask(&token, route, issuers)).await?,
        };
        Ok(Principal::Caller(match outcome {
            Outcome::Enriched { claims, answer } => {
                token.into_caller(claims, ClaimsSource::Userinfo(answer))
            }
            Outcome::Skipped(reason) => {
                let claims = token.claims.clone();
                token.into_caller(claims, ClaimsSource::Skipped(reason))
            }
        }))
    }

    /// A cache miss: ask the token issuer's userinfo endpoint (single-flight).
    async fn ask(
        &self,
        token: &Token<'_>,
        route: &Route,
        issuers: &Issuers,
    ) -> Result<Outcome, Rejection> {
        let Some(issuer) = issuers.get(token.issuer) else {
            return Ok(Outcome::Skipped(Reason::NoUserinfoEndpoint));
        };
        let token_ref = TokenRef {
            raw: token.raw.expose(),
            sha256: &token.sha256,
            issuer: token.issuer,
            claims: &token.claims,
            exp: token.exp,
        };
        let now = crate::authn::unix_now();
        self.enrich(token_ref, issuer, route.userinfo_max_age, false, now)
            .await
    }
}
