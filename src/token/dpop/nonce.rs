//! Server-provided DPoP nonces (RFC 9449 §8), for `[dpop].require_nonce = true`.
//!
//! Nonces are derived, not stored: the nonce of period `p` (unix time divided by the period) is
//! an HMAC-SHA-256 of `p` under a random 256-bit secret, truncated to 144 bits and base64url'd
//! (24 characters). Checking one is recomputing two values, so there is no table to bound or
//! purge, and every replica that shares the secret agrees on the nonce: for SPEC §8 Scale-out a
//! shared source only has to agree on one secret through Redis (`SET NX`), not store every nonce.
//!
//! Rotation: the period is `max_age / 2` (at least 1 s), and the nonce of the previous period
//! stays valid. So a nonce is accepted for between one and two periods, i.e. between
//! `max_age / 2` and `max_age`: a client that got a nonce with its last response always has at
//! least half a `max_age` to use it (an idle client pays one `use_dpop_nonce` round trip), and a
//! nonce never outlives the window the `iat` check already allows, so it really bounds how long
//! before its use a proof can have been made.
//!
//! Sending the nonce (`DPoP-Nonce` on 401 `use_dpop_nonce` and on successful answers) is the
//! caller's job; this type provides the value.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderValue;
use sha2::{Digest, Sha256};

/// Bytes of HMAC output kept: 144 bits, a multiple of 3 so base64url needs no padding.
const NONCE_BYTES: usize = 18;
const SHA256_BLOCK: usize = 64;

/// Whether a proof's `nonce` is acceptable now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Current,
    /// Absent, or not a string.
    Missing,
    /// Present but not the current or previous nonce.
    Stale,
}

/// The nonces of one process (see the module documentation).
pub struct NonceSource {
    secret: [u8; 32],
    period_secs: i64,
    /// The nonces of the last period asked about, so most calls compute nothing.
    memo: ArcSwapOption<Memo>,
}

struct Memo {
    period: i64,
    current: HeaderValue,
    previous: String,
}

impl std::fmt::Debug for NonceSource {
    /// The period only: the secret would let anyone mint nonces.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceSource")
            .field("period_secs", &self.period_secs)
            .finish_non_exhaustive()
    }
}

impl NonceSource {
    /// A source with a fresh random secret, rotating every `max_age / 2` (at least 1 s).
    /// `Err` only when the OS has no randomness to give.
    pub fn new(max_age: Duration) -> Result<NonceSource, getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)?;
        Ok(NonceSource::with_secret(secret, max_age))
    }

    /// A source with this secret (tests; later a secret shared by replicas).
    pub fn with_secret(secret: [u8; 32], max_age: Duration) -> NonceSource {
        NonceSource {
            secret,
            period_secs: period_for(max_age),
            memo: ArcSwapOption::empty(),
        }
    }

    /// The same secret with the rotation period of a new `max_age` (a reload).
    pub fn reconfigured(&self, max_age: Duration) -> NonceSource {
        NonceSource::with_secret(self.secret, max_age)
    }

    pub fn period_secs(&self) -> i64 {
        self.period_secs
    }

    /// The nonce to hand out now (`DPoP-Nonce`).
    pub fn current(&self, now_unix: i64) -> HeaderValue {
        self.memo(now_unix).current.clone()
    }

    /// Whether `nonce` is the current or the previous period's nonce.
    pub fn check(&self, nonce: Option<&str>, now_unix: i64) -> NonceCheck {
        let Some(nonce) = nonce else {
            return NonceCheck::Missing;
        };
        let memo = self.memo(now_unix);
        let current = memo.current.as_bytes();
        if constant_time_eq(nonce.as_bytes(), current)
            || constant_time_eq(nonce.as_bytes(), memo.previous.as_bytes())
        {
            NonceCheck::Current
        } else {
            NonceCheck::Stale
        }
    }

    fn memo(&self, now_unix: i64) -> Arc<Memo> {
        let period = now_unix.div_euclid(self.period_secs);
        if let Some(memo) = self.memo.load_full() {
            if memo.period == period {
                return memo;
            }
        }
        // Two threads crossing a period boundary together both compute the same values; the
        // last store wins, harmlessly. A clock stepping back recomputes, nothing more.
        let current = self.nonce(period);
        let memo = Arc::new(Memo {
            period,
            // base64url is always a valid header value.
            current: HeaderValue::from_str(&current)
                .unwrap_or_else(|_| HeaderValue::from_static("-")),
            previous: self.nonce(period.saturating_sub(1)),
        });
        self.memo.store(Some(Arc::clone(&memo)));
        memo
    }

    /// The nonce of period `p`: base64url(HMAC-SHA-256(secret, domain tag ‖ p)[..18]).
    fn nonce(&self, period: i64) -> String {
        let mut key = [0u8; SHA256_BLOCK];
        key[..self.secret.len()].copy_from_slice(&self.secret);
        let pad = |byte: u8| key.map(|b| b ^ byte);
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(b"tokengate dpop nonce\0")
            .chain_update(period.to_be_bytes())
            .finalize();
        let mac = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        URL_SAFE_NO_PAD.encode(&mac[..NONCE_BYTES])
    }
}

/// `max_age / 2` in whole seconds, at least 1.
fn period_for(max_age: Duration) -> i64 {
    i64::try_from(max_age.as_secs() / 2)
        .unwrap_or(i64::MAX)
        .max(1)
}

/// Comparison whose time does not depend on where the bytes differ (the nonce is public, but
/// a future period's nonce is not, and timing should not help guess one).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> NonceSource {
        NonceSource::with_secret([42; 32], Duration::from_secs(60))
    }

    #[test]
    fn period_is_half_of_max_age_and_at_least_one_second() {
        assert_eq!(source().period_secs(), 30);
        assert_eq!(period_for(Duration::from_secs(1)), 1);
        assert_eq!(period_for(Duration::from_millis(10)), 1);
    }

    #[test]
    fn nonce_is_stable_within_a_period_and_rotates_after_it() {
        let s = source();
        assert_eq!(s.current(3_000), s.current(3_029));
        assert_ne!(s.current(3_029), s.current(3_030));
        assert_eq!(s.current(3_000).len(), 24);
    }

    #[test]
    fn current_and_previous_nonce_are_accepted_older_ones_are_stale() {
        let s = source();
        let n0 = s.current(3_000);
        let n0 = n0.to_str().ok();
        assert_eq!(s.check(n0, 3_000), NonceCheck::Current);
        assert_eq!(s.check(n0, 3_059), NonceCheck::Current);
        assert_eq!(s.check(n0, 3_060), NonceCheck::Stale);
        assert_eq!(s.check(None, 3_000), NonceCheck::Missing);
        assert_eq!(s.check(Some("made-up"), 3_000), NonceCheck::Stale);
    }

    #[test]
    fn a_future_nonce_is_not_accepted() {
        let s = source();
        let later = s.current(3_030);
        assert_eq!(s.check(later.to_str().ok(), 3_000), NonceCheck::Stale);
    }

    #[test]
    fn secrets_make_nonces_differ() {
        let a = source();
        let b = NonceSource::with_secret([43; 32], Duration::from_secs(60));
        assert_ne!(a.current(3_000), b.current(3_000));
        assert_eq!(
            a.reconfigured(Duration::from_secs(60)).current(3_000),
            a.current(3_000)
        );
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let text = format!("{:?}", source());
        assert!(!text.contains("42"), "{text}");
    }
}
