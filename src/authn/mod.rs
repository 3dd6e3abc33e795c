//! Authentication: phases 3 and 4 of the request pipeline (SPEC §4 items 3, 4 and 8).
//!
//! - `credential`: phase 3, the credential in `Authorization` ([`Credential`], [`RawToken`]).
//! - this file: phase 4, [`Authenticator::verify`]: a JWT against its issuer's keys (behind the
//!   verified-token cache, `cache.rs`), or an opaque token through introspection
//!   (`token::introspect`), then the token's sender constraints (`binding.rs`), then the route's
//!   `issuers` list.
//! - `principal`: the values the later phases hand each other ([`Verified`], [`Principal`]).
//! - `issuers`: the issuers' key state and its background refresh.
//!
//! JOSE rules are `token::jwt`, keys `token::jwks`, DPoP proofs `token::dpop`; this module only
//! decides which of them applies and maps every failure to the `Rejection` a client sees.

mod binding;
mod cache;
mod credential;
mod issuers;
mod principal;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub use credential::{extract, Credential, RawToken};
pub use issuers::Issuers;
pub use principal::{Caller, ClaimsSource, Principal, Token, Verified};

use binding::{invalid, Senders};
use cache::{Entry, VerifiedCache};

use crate::config::{AuthMode, Config};
use crate::reason::{AuthMethod, Reason};
use crate::rejection::Rejection;
use crate::route::Routed;
use crate::telemetry::trace::Tracing;
use crate::telemetry::Metrics;
use crate::token::claims::{date_claim, Round};
use crate::token::dpop::DpopChecker;
use crate::token::introspect::Introspector;
use crate::token::jwt::{self, JwtError};

/// How long a client is told to wait when an issuer's keys are unavailable.
const RETRY_AFTER_SECS: u32 = 5;

/// Verified tokens remembered per configuration generation (see `cache.rs`). An entry keeps
/// its claims as compact JSON (about 0.6 KB with a dozen claims, measured), so the bound keeps
/// the cache near 60 MB; a miss costs only one verification.
const VERIFIED_CACHE_ENTRIES: usize = 100_000;

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Phase 4 for one configuration generation: everything needed to verify a credential.
pub struct Authenticator {
    config: Arc<Config>,
    issuers: Issuers,
    verified: VerifiedCache,
    introspector: Arc<Introspector>,
    senders: Senders,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds one generation and starts its background tasks. `previous` (a reload) lends the
    /// key state of unchanged issuers and the DPoP state (a reload must not forget which proofs
    /// were used).
    pub fn new(
        config: &Arc<Config>,
        previous: Option<&Authenticator>,
        metrics: &Arc<Metrics>,
        tracing: &Tracing,
    ) -> Result<Self, String> {
        let issuers = Issuers::start(config, previous.map(|p| &p.issuers), metrics, tracing)?;
        let dpop = match previous {
            Some(p) => Arc::new(p.senders.dpop().reconfigured(&config.dpop)),
            None => Arc::new(
                DpopChecker::new(&config.dpop)
                    .map_err(|e| format!("no randomness for DPoP nonces: {e}"))?,
            ),
        };
        let introspector = Introspector::with_metrics(metrics.clone());
        tokio::spawn(introspector.clone().run_purger(issuers.stopped()));
        Ok(Authenticator {
            senders: Senders::new(config, dpop, metrics.clone()),
            config: config.clone(),
            issuers,
            verified: VerifiedCache::new(VERIFIED_CACHE_ENTRIES),
            introspector,
        })
    }

    pub fn issuers(&self) -> &Issuers {
        &self.issuers
    }

    pub fn dpop(&self) -> &Arc<DpopChecker> {
        self.senders.dpop()
    }

    pub fn introspector(&self) -> &Arc<Introspector> {
        &self.introspector
    }

    /// With `[dpop].require_nonce`: the `DPoP-Nonce` for an answer to a DPoP request.
    pub fn dpop_nonce(&self) -> Option<http::HeaderValue> {
        self.senders.current_nonce(unix_now())
    }

    /// Phase 4: the credential verified for this request and route (SPEC §4.4, §4.8). A bad
    /// token is refused on an `optional` route too: it is never silently ignored.
    pub async fn verify<'r>(
        &self,
        credential: Credential<'r>,
        routed: &'r Routed<'_>,
    ) -> Result<Verified<'r>, Rejection> {
        let route = routed.route;
        let (raw, dpop) = match credential {
            Credential::None if route.auth != AuthMode::Required => return Ok(Verified::Anonymous),
            Credential::None => return Err(Rejection::MissingToken),
            Credential::Bearer(raw) => (raw, false),
            Credential::Dpop(raw) => (raw, true),
        };
        let now = unix_now();
        let mut token = match self.token(raw, now).await {
            Ok(token) => token,
            // A client that used the `DPoP` scheme is answered in it (RFC 9449 §7.1), whatever
            // is wrong with the token.
            Err(rejection) if dpop => return Err(self.senders.in_dpop_scheme(rejection)),
            Err(rejection) => return Err(rejection),
        };
        let inbound = &routed.inbound;
        token.auth = if dpop {
            let skew = self.issuer_skew(token.issuer);
            self.senders
                .dpop_proof(inbound, raw.expose(), &token.claims, skew, now)?
        } else {
            let cert = inbound.conn.client_cert.as_deref();
            self.senders
                .bearer(route, &token.claims, cert, token.auth)?
        };
        match &route.issuers {
            Some(allowed) if !allowed.contains(&token.issuer) => Err(invalid(
                Reason::WrongIssuer,
                "token issuer is not accepted on this route",
            )),
            _ => Ok(Verified::Token(token)),
        }
    }

    /// The token checked whatever the route: from the verified-token cache, by JWT
    /// verification, or by introspection (a token that is not a JWT).
    async fn token<'r>(&self, raw: RawToken<'r>, now: i64) -> Result<Token<'r>, Rejection> {
        if raw.len() > self.config.server.max_token_bytes {
            return Err(invalid(Reason::Malformed, "token exceeds max_token_bytes"));
        }
        let sha256: [u8; 32] = Sha256::digest(raw.expose().as_bytes()).into();
        let fingerprint = |index: usize| self.issuers.get(index)?.keys().map(|k| k.fingerprint());
        let entry = match self.verified.get(&sha256, now, fingerprint) {
            Some(hit) => hit,
            None if raw.is_jwt() => {
                // Boxed: a cache hit, the common case, should not carry this future's size.
                let (entry, claims_json) = Box::pin(self.verify_jwt(raw.expose(), now)).await?;
                self.verified.insert(sha256, entry, claims_json, now)
            }
            None => return Box::pin(self.introspect(raw, sha256, now)).await,
        };
        Ok(Token {
            raw,
            sha256,
            issuer: entry.issuer,
            claims: entry.claims,
            exp: entry.exp,
            auth: AuthMethod::Jwt,
        })
    }

    /// An opaque token: the introspection endpoints of the issuers that have one, in file order.
    async fn introspect<'r>(
        &self,
        raw: RawToken<'r>,
        sha256: [u8; 32],
        now: i64,
    ) -> Result<Token<'r>, Rejection> {
        let candidates = self.issuers.introspecting();
        let answer = self
            .introspector
            .introspect(raw.expose(), &sha256, candidates, now)
            .await
            .map_err(|e| e.into_rejection())?;
        Ok(Token {
            raw,
            sha256,
            issuer: answer.issuer,
            claims: answer.claims,
            exp: answer.exp,
            auth: AuthMethod::Introspection,
        })
    }

    /// The full SPEC §4.4 verification of one JWT, whatever route it is for.
    async fn verify_jwt(&self, token: &str, now: i64) -> Result<(Entry, Vec<u8>), Rejection> {
        let parsed = jwt::parse(token).map_err(reject)?;
        let index = self.select_issuer(parsed.unverified_issuer())?;
        let state = self
            .issuers
            .get(index)
            .ok_or_else(|| reject(JwtError::NoKeys))?;
        let mut keys = state.keys();
        let profile = jwt::Profile::AccessToken;
        match jwt::check(&parsed, keys.as_deref(), state.issuer(), now, profile) {
            Err(JwtError::UnknownKid) => {
                // A rotation the periodic refresh has not seen yet; at most one fetch per
                // jwks_min_refresh, and never a wait on someone else's refresh.
                let fresh = state
                    .refresh_for_unknown_kid()
                    .await
                    .ok_or_else(|| reject(JwtError::UnknownKid))?;
                let checked =
                    jwt::check(&parsed, Some(&fresh), state.issuer(), unix_now(), profile);
                keys = Some(fresh);
                checked.map_err(reject)?;
            }
            other => other.map_err(reject)?,
        }
        // An HMAC-verified token depends on the configured secret only, not on the key set.
        let keys = match parsed.alg().is_hmac() {
            true => None,
            false => keys.map(|k| k.fingerprint()),
        };
        let (claims, claims_json) = parsed.into_claims();
        // `check` refuses a token without a numeric `exp`, so this always finds one.
        let exp = date_claim(&claims, "exp", Round::Down)
            .ok()
            .flatten()
            .unwrap_or(now);
        let skew = self.issuer_skew(index);
        let entry = Entry {
            issuer: index,
            keys,
            exp,
            expires_at: exp.saturating_add(skew),
            claims: Arc::new(claims),
        };
        Ok((entry, claims_json))
    }

    /// The token's `iss` picks the issuer (exact match). Signature and every other claim are
    /// checked afterwards with that issuer's keys, so a token claiming issuer B but signed by
    /// A's key fails.
    fn select_issuer(&self, iss: Option<&str>) -> Result<usize, Rejection> {
        let iss = iss.ok_or_else(|| invalid(Reason::WrongIssuer, "token has no iss claim"))?;
        self.config
            .issuers
            .iter()
            .position(|i| i.issuer == iss)
            .ok_or_else(|| reject(JwtError::WrongIssuer))
    }

    fn issuer_skew(&self, index: usize) -> i64 {
        self.config.issuers.get(index).map_or(0, |i| {
            i64::try_from(i.clock_skew.as_secs()).unwrap_or(i64::MAX)
        })
    }
}

fn reject(error: JwtError) -> Rejection {
    match error {
        JwtError::NoKeys => Rejection::Unavailable {
            reason: Reason::Unavailable,
            description: "the issuer's signing keys are not available".into(),
            retry_after_secs: RETRY_AFTER_SECS,
        },
        other => Rejection::InvalidToken {
            reason: other.reason(),
            description: other.description().into(),
        },
    }
}
