//! What an introspection answer (RFC 7662 §2.2) means: its shape, and the checks an active
//! answer must pass before its members become the token's claims (SPEC §4 item 4).
//!
//! Shape: a JSON object with a boolean `active`; anything else is a failure of the call (the
//! issuer said nothing we can act on), never "inactive".
//!
//! An active answer's members (without `active`) are the token's claims. They are checked like a
//! JWT's, except that every member is optional (RFC 7662 requires only `active`):
//! - `iss`, when present, must be a string equal to the issuer's configured `issuer` exactly;
//! - `aud`, when present, a string or an array of strings containing one of the issuer's
//!   `audiences` (not checked with `allow_any_audience`);
//! - `exp`, when present, a NumericDate with `exp + clock_skew > now`;
//! - `nbf`, when present, a NumericDate with `nbf <= now + clock_skew`;
//! - `sub`, when present, a non-empty string.
//!
//! `iss`, `aud` and the member types do not depend on the time: they are checked once, when the
//! answer arrives, and the verdict is kept with it; `exp` and `nbf` are checked on every use.
//! Failures reuse `jwt::JwtError`, so an introspected token is refused with the same reasons and
//! descriptions (`expired`, `wrong_audience`, ...) as a JWT.
//!
//! **`exp` when the answer has none.** The answer then vouches for the token only as long as
//! tokengate would act on it without asking again: the token's `exp` is taken to be the time the
//! answer was received plus `cache_ttl`, but at least [`IMPLIED_EXP_MIN`] (so that with
//! `cache_ttl = "0s"`, an answer used for one request does not yield an identity assertion that
//! is already expired). It bounds the cache entry (which then lives exactly `cache_ttl`), the
//! identity assertion's `exp`, and anything the caller derives from the token (userinfo).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::config::Issuer;
use crate::token::claims::{self, Claims, Round};
use crate::token::jwt::JwtError;

/// The shortest lifetime given to a token whose answer has no `exp` (module docs).
pub const IMPLIED_EXP_MIN: Duration = Duration::from_secs(60);

/// No cache entry is kept longer than this (keeps the arithmetic far from overflow).
const MAX_SECS: u64 = 366 * 24 * 3600;

/// The answer, once its shape is known.
#[derive(Debug)]
pub(crate) enum Answer {
    /// `active: true`; the members without `active`.
    Active(Claims),
    /// `active: false` (whatever else it says).
    Inactive,
}

/// Why a body is not an introspection answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    NotObject,
    NoBooleanActive,
}

/// Reads a 2xx body.
pub(crate) fn parse(body: &[u8]) -> Result<Answer, Shape> {
    let Ok(Value::Object(mut members)) = serde_json::from_slice::<Value>(body) else {
        return Err(Shape::NotObject);
    };
    // `shift_remove` keeps the other members in the order the issuer gave them.
    match members.shift_remove("active") {
        Some(Value::Bool(true)) => Ok(Answer::Active(members)),
        Some(Value::Bool(false)) => Ok(Answer::Inactive),
        _ => Err(Shape::NoBooleanActive),
    }
}

/// An active answer as it is kept and shared: the claims as compact JSON (a parsed map costs
/// several times the bytes, see `authn/cache.rs`), the time-independent verdict, and the dates.
#[derive(Debug)]
pub(crate) struct Active {
    claims_json: Box<[u8]>,
    /// `iss`, `aud` and member types, checked once (module docs).
    fixed: Result<(), JwtError>,
    exp: Option<i64>,
    nbf: Option<i64>,
    /// `exp`, or the implied one when the answer has none (module docs).
    reported_exp: i64,
    /// Unique per answer received in this process.
    pub serial: u64,
}

impl Active {
    /// Judges `claims` for `issuer`; `answered_unix` is when the answer arrived and
    /// `cache_ttl` the issuer's `[issuer.introspection].cache_ttl`.
    pub(crate) fn new(
        claims: &Claims,
        issuer: &Issuer,
        cache_ttl: Duration,
        answered_unix: i64,
    ) -> Active {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let malformed = |what| move |_| JwtError::Malformed(what);
        let exp = claims::date_claim(claims, "exp", Round::Down)
            .map_err(malformed("exp is not a NumericDate"));
        let nbf = claims::date_claim(claims, "nbf", Round::Up)
            .map_err(malformed("nbf is not a NumericDate"));
        let fixed = check_fixed(claims, issuer)
            .and(exp.as_ref().map(|_| ()).map_err(Clone::clone))
            .and(nbf.as_ref().map(|_| ()).map_err(Clone::clone));
        let exp = exp.ok().flatten();
        let implied = answered_unix.saturating_add(secs(cache_ttl.max(IMPLIED_EXP_MIN)));
        Active {
            // Serializing a map of JSON values cannot fail.
            claims_json: serde_json::to_vec(claims)
                .unwrap_or_default()
                .into_boxed_slice(),
            fixed,
            exp,
            nbf: nbf.ok().flatten(),
            reported_exp: exp.unwrap_or(implied),
            serial: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Every check of the module docs at `now_unix`.
    pub(crate) fn check(&self, now_unix: i64, clock_skew: Duration) -> Result<(), JwtError> {
        self.fixed.clone()?;
        let skew = secs(clock_skew);
        if self
            .exp
            .is_some_and(|exp| exp.saturating_add(skew) <= now_unix)
        {
            return Err(JwtError::Expired);
        }
        if self
            .nbf
            .is_some_and(|nbf| nbf > now_unix.saturating_add(skew))
        {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }

    /// The token's `exp`: the answer's, or the implied one.
    pub(crate) fn exp(&self) -> i64 {
        self.reported_exp
    }

    /// How long the answer may be cached from `now_unix`: `min(cache_ttl, exp - now)`, zero
    /// once `exp` is reached (with the implied `exp`, exactly `cache_ttl`).
    pub(crate) fn lifetime(&self, cache_ttl: Duration, now_unix: i64) -> Duration {
        let left = u64::try_from(self.reported_exp.saturating_sub(now_unix)).unwrap_or(0);
        cache_ttl.min(Duration::from_secs(left.min(MAX_SECS)))
    }

    /// The claims (the answer's members without `active`), parsed.
    pub(crate) fn claims(&self) -> Claims {
        serde_json::from_slice(&self.claims_json).unwrap_or_default()
    }

    /// Size of the kept JSON (for tests and estimates).
    #[cfg(test)]
    pub(crate) fn json_len(&self) -> usize {
        self.claims_json.len()
    }
}

/// `iss` and `aud` against the issuer's configuration; their types.
fn check_fixed(claims: &Claims, issuer: &Issuer) -> Result<(), JwtError> {
    match claims.get("iss") {
        None => {}
        Some(Value::String(iss)) if *iss == issuer.issuer => {}
        Some(Value::String(_)) => return Err(JwtError::WrongIssuer),
        Some(_) => return Err(JwtError::Malformed("iss is not a string")),
    }
    claims::check_sub(claims).map_err(|_| JwtError::Malformed("sub is not a non-empty string"))?;
    let aud = claims::audiences(claims)
        .map_err(|_| JwtError::Malformed("aud is not a string or an array of strings"))?;
    if let Some(aud) = aud {
        let accepted = issuer.allow_any_audience
            || aud
                .iter()
                .any(|a| issuer.audiences.iter().any(|want| want == a));
        if !accepted {
            return Err(JwtError::WrongAudience);
        }
    }
    Ok(())
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs().min(MAX_SECS)).unwrap_or(i64::MAX)
}
