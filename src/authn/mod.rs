//! Authentication phase: from the request's `Authorization` header to a verified principal
//! (SPEC §4 items 3-4). Extraction is `token::extract`, the JOSE rules are `token::jwt`, keys come
//! from `token::jwks`; this file only decides which issuer applies and maps every failure to the
//! `Rejection` a client sees.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

mod cache;

use cache::{Entry, VerifiedCache};

use crate::config::{AuthMode, Config, Route};
use crate::rejection::Rejection;
use crate::token::claims::{date_claim, Claims, Round};
use crate::token::extract::{self, Credential};
use crate::token::jwks::IssuerKeys;
use crate::token::jwt::{self, JwtError};

/// How long a client is told to wait when an issuer's keys are unavailable.
const RETRY_AFTER_SECS: u32 = 5;

/// Verified tokens remembered per configuration generation (see `cache.rs`). An entry keeps
/// its claims as compact JSON (about 0.6 KB with a dozen claims, measured), so the bound keeps
/// the cache near 60 MB; a miss costs only one verification.
const VERIFIED_CACHE_ENTRIES: usize = 100_000;

/// A caller whose token passed every check of SPEC §4.4.
#[derive(Debug)]
pub struct Verified {
    /// The token's claims; after userinfo enrichment, the merged claims.
    pub claims: Arc<Claims>,
    /// The token's `exp` (unix seconds).
    pub exp: i64,
    /// Index into `Config::issuers`.
    pub issuer: usize,
    /// SHA-256 of the whole token: the cache key of anything derived from this token.
    pub token_sha256: [u8; 32],
    /// `"jwt"` (introspection and DPoP come later).
    pub auth: &'static str,
    /// The userinfo answer merged into `claims` (`Outcome::Enriched::answer`); 0 when the claims
    /// are the token's own. With the token hash it identifies the claims' content.
    pub userinfo_answer: u64,
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Who the caller is, as far as the route needed to know.
#[derive(Debug)]
pub enum Principal {
    /// A public route, or an optional one without a token: no identity is forwarded.
    Anonymous,
    Token(Verified),
}

/// The key state of every configured issuer, in config order, and the background tasks that keep
/// it fresh. Dropping it stops the tasks.
pub struct Issuers {
    keys: Vec<Arc<IssuerKeys>>,
    stop: watch::Sender<bool>,
    verified: VerifiedCache,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.issuer().id))
            .finish()
    }
}

impl Issuers {
    /// Builds the per-issuer state and starts the refresh tasks (must run inside a tokio runtime).
    /// The key state of an issuer whose settings equal one in `previous` (a reload) is carried
    /// over, so its keys stay loaded and no request waits for them (SPEC §8).
    pub fn start(config: &Config, previous: Option<&Issuers>) -> Result<Issuers, String> {
        let (stop, stop_rx) = watch::channel(false);
        let mut keys = Vec::with_capacity(config.issuers.len());
        for issuer in &config.issuers {
            let kept = previous.and_then(|p| p.keys.iter().find(|k| k.issuer() == issuer));
            let state = match kept {
                Some(state) => state.clone(),
                None => IssuerKeys::new(issuer.clone())
                    .map_err(|e| format!("issuer {}: {e}", issuer.id))?,
            };
            // A carried-over state gets a refresher tied to this generation; the previous
            // generation's stops when that generation is dropped.
            tokio::spawn(state.clone().run(stop_rx.clone()));
            keys.push(state);
        }
        Ok(Issuers {
            keys,
            stop,
            verified: VerifiedCache::new(VERIFIED_CACHE_ENTRIES),
        })
    }

    /// A receiver that turns `true` when these issuers are dropped (for tasks tied to them).
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn get(&self, index: usize) -> Option<&Arc<IssuerKeys>> {
        self.keys.get(index)
    }

    /// Ids of issuers without a usable key set yet.
    pub fn not_ready(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter(|k| !k.is_ready())
            .map(|k| k.issuer().id.clone())
            .collect()
    }
}

impl Drop for Issuers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Runs extraction and verification for `route`.
pub async fn authenticate(
    route: &Route,
    headers: &HeaderMap,
    client_cert: Option<&str>,
    config: &Config,
    issuers: &Issuers,
) -> Result<Principal, Rejection> {
    if route.auth == AuthMode::Public {
        return Ok(Principal::Anonymous);
    }
    let token = match extract::extract(headers) {
        Err(error) => return Err(Rejection::bad_request(error.description())),
        Ok(Credential::None) if route.auth == AuthMode::Optional => {
            return Ok(Principal::Anonymous)
        }
        Ok(Credential::None) => return Err(Rejection::MissingToken),
        Ok(Credential::Bearer(token)) => token,
        Ok(Credential::Dpop(_)) => {
            return Err(invalid(
                "malformed",
                "DPoP-bound tokens are not supported yet".into(),
            ))
        }
    };
    if token.len() > config.server.max_token_bytes {
        return Err(invalid("malformed", "token exceeds max_token_bytes".into()));
    }
    let hash = token_sha256(token.as_bytes());
    let now = unix_now();
    let fingerprint = |index: usize| issuers.get(index)?.keys().map(|k| k.fingerprint());
    let entry = match issuers.verified.get(&hash, now, fingerprint) {
        Some(hit) => hit,
        None => {
            // Boxed: a cache hit, the common case, should not carry this future's size.
            let (entry, claims_json) = Box::pin(verify(token, config, issuers, now)).await?;
            issuers.verified.insert(hash, entry, claims_json, now)
        }
    };
    // Per route and per connection, on every request, cached or not.
    allowed_on(route, entry.issuer)?;
    check_binding(route, &entry.claims, client_cert, config)?;
    Ok(Principal::Token(Verified {
        claims: entry.claims.clone(),
        exp: entry.exp,
        issuer: entry.issuer,
        token_sha256: hash,
        auth: "jwt",
        userinfo_answer: 0,
    }))
}

/// SHA-256 of a token, remembered for the last token this thread hashed: a client that reuses
/// its token (the common sidecar case) costs a comparison instead of a hash (0.6 µs for 1 KiB).
/// A pure function of the bytes, so it cannot answer for any other token.
fn token_sha256(token: &[u8]) -> [u8; 32] {
    thread_local! {
        static LAST: RefCell<Option<(Vec<u8>, [u8; 32])>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((bytes, hash)) = last.as_ref() {
            if bytes.as_slice() == token {
                return *hash;
            }
        }
        let hash: [u8; 32] = Sha256::digest(token).into();
        let (bytes, stored) = last.get_or_insert_with(|| (Vec::new(), [0; 32]));
        bytes.clear();
        bytes.extend_from_slice(token);
        *stored = hash;
        hash
    })
}

/// The full SPEC §4.4 verification of one token, whatever route it is for.
async fn verify(
    token: &str,
    config: &Config,
    issuers: &Issuers,
    now: i64,
) -> Result<(Entry, Vec<u8>), Rejection> {
    let parsed = jwt::parse(token).map_err(reject)?;
    let index = select_issuer(config, parsed.unverified_issuer())?;
    let state = issuers.get(index).ok_or_else(|| reject(JwtError::NoKeys))?;
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
            let checked = jwt::check(&parsed, Some(&fresh), state.issuer(), unix_now(), profile);
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
    let skew = i64::try_from(state.issuer().clock_skew.as_secs()).unwrap_or(i64::MAX);
    let entry = Entry {
        issuer: index,
        keys,
        exp,
        expires_at: exp.saturating_add(skew),
        claims: Arc::new(claims),
    };
    Ok((entry, claims_json))
}

/// The token's `iss` picks the issuer (exact match). Signature and every other claim are checked
/// afterwards with that issuer's keys, so a token claiming issuer B but signed by A's key fails.
fn select_issuer(config: &Config, iss: Option<&str>) -> Result<usize, Rejection> {
    let iss = iss.ok_or_else(|| invalid("wrong_issuer", "token has no iss claim".into()))?;
    config
        .issuers
        .iter()
        .position(|i| i.issuer == iss)
        .ok_or_else(|| reject(JwtError::WrongIssuer))
}

/// Sender constraints (SPEC §4.8) of a token presented with the `Bearer` scheme: a DPoP-bound
/// token (`cnf.jkt`) is refused with a DPoP challenge; an mTLS-bound one (`cnf["x5t#S256"]`) is
/// accepted only on a TLS connection whose client certificate has that SHA-256 thumbprint; a
/// confirmation method tokengate cannot check is refused (fail closed). A route with
/// `require_sender_constrained` accepts only a token whose binding was proven here.
fn check_binding(
    route: &Route,
    claims: &Claims,
    client_cert: Option<&str>,
    config: &Config,
) -> Result<(), Rejection> {
    let Some(cnf) = claims.get("cnf") else {
        if route.require_sender_constrained {
            return Err(invalid(
                "sender_constraint",
                "this route requires a sender-constrained token (DPoP or mTLS-bound)".into(),
            ));
        }
        return Ok(());
    };
    let Some(cnf) = cnf.as_object() else {
        return Err(invalid(
            "malformed",
            "token cnf claim is not an object".into(),
        ));
    };
    if cnf.contains_key("jkt") {
        let algs: Vec<&str> = config.dpop.algorithms.iter().map(|a| a.name()).collect();
        return Err(Rejection::DpopBoundAsBearer {
            algs: algs.join(" "),
        });
    }
    match cnf.get("x5t#S256").map(|v| v.as_str()) {
        Some(Some(bound)) if client_cert == Some(bound) => Ok(()),
        Some(_) => Err(invalid(
            "sender_constraint",
            "token is bound to a TLS client certificate this connection did not present".into(),
        )),
        None => Err(invalid(
            "sender_constraint",
            "token is bound by a confirmation method tokengate cannot check".into(),
        )),
    }
}

/// A route's `issuers` list restricts which issuers' tokens it accepts.
fn allowed_on(route: &Route, issuer: usize) -> Result<(), Rejection> {
    match &route.issuers {
        Some(allowed) if !allowed.contains(&issuer) => Err(invalid(
            "wrong_issuer",
            "token issuer is not accepted on this route".into(),
        )),
        _ => Ok(()),
    }
}

fn reject(error: JwtError) -> Rejection {
    match error {
        JwtError::NoKeys => Rejection::Unavailable {
            description: "the issuer's signing keys are not available".into(),
            retry_after_secs: RETRY_AFTER_SECS,
        },
        other => invalid(other.reason(), other.description().into()),
    }
}

fn invalid(reason: &'static str, description: std::borrow::Cow<'static, str>) -> Rejection {
    Rejection::InvalidToken {
        reason,
        description,
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::token_sha256;

    #[test]
    fn remembered_token_hash_is_always_the_hash_of_the_bytes_given() {
        let tokens: [&[u8]; 6] = [b"aaa", b"aaa", b"aab", b"aa", b"aaa", b"aaaa"];
        for token in tokens {
            let expected: [u8; 32] = Sha256::digest(token).into();
            assert_eq!(token_sha256(token), expected);
        }
    }
}
