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
//! [`Authenticator::verify_traced`] is the same phase reporting to a [`VerifyObserver`] which key
//! verified the token and what the token held (`tokengate explain`); `verify` passes `()`.
//!
//! JOSE rules are `token::jwt`, keys `token::jwks`, DPoP proofs `token::dpop`; this module only
//! decides which of them applies and maps every failure to the `Rejection` a client sees.

mod binding;
mod cache;
mod credential;
mod issuers;
mod principal;

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub use credential::{extract, Credential, RawToken};
pub use issuers::Issuers;
pub use principal::{Caller, ClaimsSource, Principal, Token, Verified};

use binding::{invalid, Senders};
use cache::{Entry, VerifiedCache};

use crate::config::{Algorithm, AuthMode, Config};
use crate::reason::{AuthMethod, Reason};
use crate::rejection::Rejection;
use crate::route::Routed;
use crate::telemetry::trace::Tracing;
use crate::telemetry::Metrics;
use crate::token::claims::{date_claim, Round};
use crate::token::dpop::DpopChecker;
use crate::token::introspect::Introspector;
use crate::token::jwt::{self, JwtError};
use crate::token::keys::KeyFacts;

/// How long a client is told to wait when an issuer's keys are unavailable.
const RETRY_AFTER_SECS: u32 = 5;

/// Verified tokens remembered per configuration generation (see `cache.rs`). An entry keeps
/// its claims as compact JSON (about 0.6 KB with a dozen claims, measured), so the bound keeps
/// the cache near 60 MB; a miss costs only one verification.
const VERIFIED_CACHE_ENTRIES: usize = 100_000;

/// Receives what phase 4 finds out as it goes (`tokengate explain`). The request path passes
/// `()`, which ignores everything: the calls compile away.
pub trait VerifyObserver: Send {
    /// A JWT's signature and claims were verified (on a verified-token cache hit this is not
    /// called: nothing was verified).
    fn signed(&mut self, _signed: SignedWith<'_>) {}
    /// The token passed verification, before its sender constraints and the route's `issuers`
    /// are checked.
    fn token(&mut self, _token: &Token<'_>) {}
}

impl VerifyObserver for () {}

impl<O: VerifyObserver> VerifyObserver for &mut O {
    fn signed(&mut self, signed: SignedWith<'_>) {
        (**self).signed(signed);
    }
    fn token(&mut self, token: &Token<'_>) {
        (**self).token(token);
    }
}

/// How a JWT's signature was verified.
#[derive(Debug, Clone, Copy)]
pub struct SignedWith<'a> {
    /// Index into `Config::issuers`.
    pub issuer: usize,
    pub alg: Algorithm,
    /// The key of the issuer's set that verified it; `None`: the issuer's `hmac_secret`.
    pub key: Option<KeyFacts<'a>>,
}

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
        Authenticator::assemble(config, issuers, previous, metrics)
    }

    /// A generation whose issuers all use the key set of `jwks` (a saved JWKS document) and
    /// fetch nothing (`tokengate explain --jwks`, offline). Introspection and userinfo still go
    /// to the endpoints the configuration names.
    pub fn with_keys(
        config: &Arc<Config>,
        jwks: &[u8],
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        let issuers = Issuers::with_keys(config, jwks)?;
        Authenticator::assemble(config, issuers, None, metrics)
    }

    fn assemble(
        config: &Arc<Config>,
        issuers: Issuers,
        previous: Option<&Authenticator>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        let max_skew = config
            .issuers
            .iter()
            .map(|i| i.clock_skew)
            .max()
            .unwrap_or_default();
        let dpop = match previous {
            Some(p) => Arc::new(
                p.senders
                    .dpop()
                    .reconfigured(&config.dpop, max_skew, unix_now()),
            ),
            None => Arc::new(
                DpopChecker::new(&config.dpop, max_skew)
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
    ///
    /// [`Authenticator::verify_traced`] with the observer that sees nothing; not an `async fn`
    /// of its own, so the request path's future gains no layer.
    pub fn verify<'s, 'r, 'g>(
        &'s self,
        credential: Credential<'r>,
        routed: &'r Routed<'g>,
    ) -> impl Future<Output = Result<Verified<'r>, Rejection>> + Send + use<'s, 'r, 'g> {
        self.verify_traced(credential, routed, ())
    }

    /// [`Authenticator::verify`], telling `observer` what it found (`tokengate explain`).
    pub async fn verify_traced<'r, O: VerifyObserver>(
        &self,
        credential: Credential<'r>,
        routed: &'r Routed<'_>,
        observer: O,
    ) -> Result<Verified<'r>, Rejection> {
        let route = routed.route;
        let (raw, dpop) = match credential {
            Credential::None if route.auth != AuthMode::Required => return Ok(Verified::Anonymous),
            Credential::None => return Err(Rejection::MissingToken),
            Credential::Bearer(raw) => (raw, false),
            Credential::Dpop(raw) => (raw, true),
        };
        let now = unix_now();
        // The observer moves on: by value, so the request path's `()` takes no room in the
        // future (a reference to it would).
        let mut token = match self.token(raw, now, observer).await {
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
    async fn token<'r, O: VerifyObserver>(
        &self,
        raw: RawToken<'r>,
        now: i64,
        mut observer: O,
    ) -> Result<Token<'r>, Rejection> {
        if raw.len() > self.config.server.max_token_bytes {
            return Err(invalid(Reason::Malformed, "token exceeds max_token_bytes"));
        }
        let sha256: [u8; 32] = Sha256::digest(raw.expose().as_bytes()).into();
        let fingerprint = |index: usize| self.issuers.get(index)?.keys().map(|k| k.fingerprint());
        let entry = match self.verified.get(&sha256, now, fingerprint) {
            Some(hit) => hit,
            None if raw.is_jwt() => {
                // Boxed: a cache hit, the common case, should not carry this future's size.
                let verified = Box::pin(self.verify_jwt(raw.expose(), now, &mut observer));
                let (entry, claims_json) = verified.await?;
                self.verified.insert(sha256, entry, claims_json, now)
            }
            None => {
                let token = Box::pin(self.introspect(raw, sha256, now)).await?;
                observer.token(&token);
                return Ok(token);
            }
        };
        let token = Token {
            raw,
            sha256,
            issuer: entry.issuer,
            claims: entry.claims,
            exp: entry.exp,
            auth: AuthMethod::Jwt,
        };
        observer.token(&token);
        Ok(token)
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
    async fn verify_jwt<O: VerifyObserver>(
        &self,
        token: &str,
        now: i64,
        observer: &mut O,
    ) -> Result<(Entry, Vec<u8>), Rejection> {
        let parsed = jwt::parse(token).map_err(reject)?;
        let index = self.select_issuer(parsed.unverified_issuer())?;
        let state = self
            .issuers
            .get(index)
            .ok_or_else(|| reject(JwtError::NoKeys))?;
        let mut keys = state.keys();
        let profile = jwt::Profile::AccessToken;
        let signed_by =
            match jwt::check_signed(&parsed, keys.as_deref(), state.issuer(), now, profile) {
                Err(JwtError::UnknownKid) => {
                    // A rotation the periodic refresh has not seen yet; at most one fetch per
                    // jwks_min_refresh, and never a wait on someone else's refresh.
                    let fresh = state
                        .refresh_for_unknown_kid()
                        .await
                        .ok_or_else(|| reject(JwtError::UnknownKid))?;
                    let checked = jwt::check_signed(
                        &parsed,
                        Some(&fresh),
                        state.issuer(),
                        unix_now(),
                        profile,
                    );
                    keys = Some(fresh);
                    checked.map_err(reject)?
                }
                other => other.map_err(reject)?,
            };
        observer.signed(SignedWith {
            issuer: index,
            alg: parsed.alg(),
            key: match signed_by {
                jwt::SignedBy::Secret => None,
                jwt::SignedBy::Key(key) => keys.as_deref().and_then(|k| k.describe(key)),
            },
        });
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
