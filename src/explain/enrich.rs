//! Phase 5 described: whether userinfo was asked (`Userinfo::enrich_caller`, as `serve` calls it)
//! or skipped (`--no-userinfo`, or the route does not ask), its endpoint and cache lifetime, and
//! the claims it added, with their values.

use std::time::Duration;

use serde_json::{Map, Value};

use super::report::UserinfoStep;
use super::{description, human, State};
use crate::authn::{unix_now, ClaimsSource, Principal, Verified};
use crate::config::Route;
use crate::reason::Reason;
use crate::rejection::Rejection;
use crate::token::claims::Claims;
use crate::token::fetch;

impl State {
    /// Phase 5, or its skipping with `--no-userinfo`.
    pub(super) async fn enrich(
        &self,
        verified: Verified<'_>,
        route: &Route,
        token_claims: Option<&Claims>,
    ) -> (Result<Principal, Rejection>, Option<UserinfoStep>) {
        let token = match &verified {
            Verified::Anonymous => None,
            Verified::Token(token) => Some((token.issuer, token.exp)),
        };
        let Some((issuer, exp)) = token else {
            let principal = self
                .userinfo
                .enrich_caller(verified, route, self.authn.issuers())
                .await;
            return (principal, None);
        };
        let endpoint = self
            .authn
            .issuers()
            .get(issuer)
            .and_then(|k| k.userinfo_endpoint())
            .map(|url| fetch::redact(&url));
        let mut step = UserinfoStep {
            requested_by_route: route.userinfo,
            status: "not_requested",
            detail: "the route does not ask for userinfo (userinfo = false)".to_owned(),
            endpoint: endpoint.clone(),
            cache: None,
            added_claims: None,
        };
        if route.userinfo {
            step.cache = Some(self.cache_policy(route, exp));
        }
        if route.userinfo && self.no_userinfo {
            step.status = "disabled";
            step.detail =
                format!(
                "skipped (--no-userinfo): policy and identity see the token's claims only; serve \
                 would call {}",
                endpoint.as_deref().unwrap_or("the issuer's userinfo endpoint")
            );
            let Verified::Token(token) = verified else {
                return (Ok(Principal::Anonymous), Some(step));
            };
            let claims = token.claims.clone();
            let caller = token.into_caller(claims, ClaimsSource::Token);
            return (Ok(Principal::Caller(caller)), Some(step));
        }
        if !route.userinfo {
            step.endpoint = None;
        }
        let result = self
            .userinfo
            .enrich_caller(verified, route, self.authn.issuers())
            .await;
        match &result {
            Ok(Principal::Caller(caller)) => match caller.source {
                ClaimsSource::Token => {}
                ClaimsSource::Userinfo(_) => {
                    step.status = "enriched";
                    step.detail = "the userinfo answer is merged over the token's claims (iss, \
                                   sub, aud, exp, nbf, iat, jti, scope, scp, cnf, client_id \
                                   always come from the token)"
                        .to_owned();
                    step.added_claims = Some(added_claims(token_claims, &caller.claims));
                }
                ClaimsSource::Skipped(reason) => {
                    step.status = "skipped";
                    step.detail = match reason {
                        Reason::DpopBoundToken => {
                            "a DPoP-bound token is never sent to userinfo: token claims only"
                        }
                        Reason::NoUserinfoEndpoint => {
                            "the issuer has no userinfo endpoint; on_error = \"proceed\": token \
                             claims only"
                        }
                        _ => {
                            "the userinfo call failed (the reason is logged on stderr); \
                             on_error = \"proceed\": token claims only"
                        }
                    }
                    .to_owned();
                }
            },
            Ok(Principal::Anonymous) => {}
            Err(rejection) => {
                let refused = matches!(rejection, Rejection::InvalidToken { .. });
                step.status = if refused { "refused" } else { "failed" };
                step.detail = description(rejection, &self.config.server.realm).await;
                if !refused {
                    step.detail.push_str(
                        " (on_error = \"deny\"; the reason of the failure is logged on stderr)",
                    );
                }
            }
        }
        (result, Some(step))
    }

    /// `min(cache_ttl, userinfo_max_age, token exp - now)`, spelled out.
    fn cache_policy(&self, route: &Route, exp: i64) -> String {
        let ttl = self.config.userinfo.cache_ttl;
        let left = Duration::from_secs(u64::try_from(exp - unix_now()).unwrap_or(0));
        let mut parts = vec![format!("cache_ttl {}", human(ttl))];
        if let Some(max_age) = route.userinfo_max_age {
            parts.push(format!("userinfo_max_age {}", human(max_age)));
        }
        parts.push(format!("token exp in {}", human(left)));
        let lifetime = [Some(ttl), route.userinfo_max_age, Some(left)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_default();
        format!(
            "an answer is served from the cache for {} = min({}); a 401 is remembered 10s",
            human(lifetime),
            parts.join(", ")
        )
    }
}

/// Claims the enriched set has that the token's lacks or holds differently.
pub(super) fn added_claims(token: Option<&Claims>, merged: &Claims) -> Map<String, Value> {
    merged
        .iter()
        .filter(|(name, value)| token.and_then(|t| t.get(*name)) != Some(*value))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}
