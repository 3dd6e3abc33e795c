//! One call to an issuer's userinfo endpoint and what its answer means (SPEC §4.5).
//!
//! `GET <userinfo_endpoint>` with `Authorization: Bearer <token>` through the issuer's client
//! (`fetch.rs`: no redirects, `ca_file`, size cap), bounded by `[userinfo].timeout` (both as
//! reqwest's per-request timeout and as an outer deadline). The answer:
//! - 401 → [`Fetched::Rejected`];
//! - 2xx with `Content-Type: application/jwt` → a compact JWS verified with the issuer's keys by
//!   `jwt::verify_with(.., Profile::SignedAnswer)` (same header and signature rules as an access
//!   token; `iss` and `exp` checked when present); an unknown `kid` may trigger the issuer's
//!   rate-limited key refresh once;
//! - any other 2xx → the body must be a JSON object;
//! - anything else (another status, a timeout, a connection error, a body too large or of the
//!   wrong shape, a JWT that does not verify) → [`Fetched::Failed`].
//!
//! Failures carry what an operator needs (status, redacted URL, JWT rule) and never the token or
//! the body.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::ACCEPT;
use serde_json::Value;

use crate::telemetry::trace::CallKind;
use crate::token::claims::{self, Claims};
use crate::token::fetch::{self, FetchError};
use crate::token::jwks::IssuerKeys;
use crate::token::jwt::{self, JwtError, Profile};

/// Size cap of a userinfo answer (64 KiB): cached answers are held in memory, up to
/// `max_entries` of them.
pub const MAX_USERINFO_BYTES: usize = 64 * 1024;

/// One userinfo answer as received, shared by the cache and every request that uses it. The
/// claims are kept as compact JSON: a cache of 100 000 answers holds them all, and a parsed map
/// costs several times the bytes (requests in steady use get their merge from
/// `Userinfo::merged` without parsing).
#[derive(Debug)]
pub(crate) struct Answer {
    claims_json: Box<[u8]>,
    /// The answer's `sub` when it is a string (compared with the token's on every use).
    sub: Option<Box<str>>,
    /// Unique per answer received in this process (never 0).
    pub serial: u64,
}

impl Answer {
    pub fn new(claims: &Claims) -> Arc<Answer> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Answer {
            // Serializing a map of JSON values cannot fail.
            claims_json: serde_json::to_vec(claims)
                .unwrap_or_default()
                .into_boxed_slice(),
            sub: claims::str_claim(claims, "sub").map(Into::into),
            serial: NEXT.fetch_add(1, Ordering::Relaxed),
        })
    }

    pub fn sub(&self) -> Option<&str> {
        self.sub.as_deref()
    }

    /// The answer's claims (unmerged).
    pub fn claims(&self) -> Claims {
        serde_json::from_slice(&self.claims_json).unwrap_or_default()
    }
}

/// The result of one userinfo call, shared by every request that waited for it.
#[derive(Debug, Clone)]
pub(crate) enum Fetched {
    Answer(Arc<Answer>),
    /// The endpoint answered 401: the token is not (or no longer) accepted.
    Rejected,
    Failed(Failure),
}

/// Why a userinfo call gave no usable answer (for the log; the client only sees 503 or nothing).
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Timeout, connection error, body too large or unreadable.
    Fetch(FetchError),
    /// The outer deadline (`[userinfo].timeout`) passed.
    Timeout(Duration),
    /// A status other than 2xx and 401.
    Status(u16),
    /// A 2xx body that is not a JSON object.
    NotObject,
    /// An `application/jwt` body that does not verify.
    Jwt(JwtError),
    /// The request could not be built, or the task making the call ended without an answer.
    Internal(&'static str),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Fetch(e) => write!(f, "{e}"),
            Failure::Timeout(after) => write!(f, "no answer within {after:?}"),
            Failure::Status(status) => write!(f, "answered HTTP {status}"),
            Failure::NotObject => f.write_str("the answer is not a JSON object"),
            Failure::Jwt(e) => write!(f, "the signed answer is refused: {e}"),
            Failure::Internal(what) => f.write_str(what),
        }
    }
}

/// Asks `endpoint` about `token`.
pub(crate) async fn call(
    issuer: &IssuerKeys,
    endpoint: &str,
    token: &str,
    timeout: Duration,
    now_unix: i64,
) -> Fetched {
    let request = issuer
        .client()
        .get(endpoint)
        .bearer_auth(token)
        .header(ACCEPT, "application/json, application/jwt")
        .timeout(timeout)
        .build();
    let Ok(request) = request else {
        // reqwest's message could quote the header value; say nothing more.
        return Fetched::Failed(Failure::Internal("the userinfo request could not be built"));
    };
    let sent = fetch::execute(
        issuer.client(),
        request,
        MAX_USERINFO_BYTES,
        CallKind::Userinfo,
    );
    let answer = match tokio::time::timeout(timeout, sent).await {
        Err(_) => return Fetched::Failed(Failure::Timeout(timeout)),
        Ok(Err(e)) => return Fetched::Failed(Failure::Fetch(e)),
        Ok(Ok(answer)) => answer,
    };
    let status = answer.status.as_u16();
    if status == 401 {
        return Fetched::Rejected;
    }
    if !answer.status.is_success() {
        return Fetched::Failed(Failure::Status(status));
    }
    let claims = if is_jwt(answer.content_type.as_deref()) {
        signed_claims(issuer, &answer.body, now_unix).await
    } else {
        json_object(&answer.body)
    };
    match claims {
        Ok(claims) => Fetched::Answer(Answer::new(&claims)),
        Err(failure) => Fetched::Failed(failure),
    }
}

/// `application/jwt`, case-insensitively, parameters ignored.
fn is_jwt(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/jwt"))
}

pub(crate) fn json_object(body: &[u8]) -> Result<Claims, Failure> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(claims)) => Ok(claims),
        _ => Err(Failure::NotObject),
    }
}

async fn signed_claims(issuer: &IssuerKeys, body: &[u8], now_unix: i64) -> Result<Claims, Failure> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Failure::Jwt(JwtError::Malformed("the signed answer is not UTF-8")))?;
    let parsed = jwt::parse(text.trim()).map_err(Failure::Jwt)?;
    let config = issuer.issuer();
    let keys = issuer.keys();
    match jwt::verify_with(
        &parsed,
        keys.as_deref(),
        config,
        now_unix,
        Profile::SignedAnswer,
    ) {
        Err(JwtError::UnknownKid) => {
            // A rotation not seen yet: the same rate-limited refresh an access token may use.
            let fresh = issuer
                .refresh_for_unknown_kid()
                .await
                .ok_or(Failure::Jwt(JwtError::UnknownKid))?;
            jwt::verify_with(
                &parsed,
                Some(&fresh),
                config,
                now_unix,
                Profile::SignedAnswer,
            )
            .map_err(Failure::Jwt)
        }
        other => other.map_err(Failure::Jwt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_application_jwt_selects_the_jwt_path() {
        assert!(is_jwt(Some("application/jwt")));
        assert!(is_jwt(Some("Application/JWT; charset=utf-8")));
        assert!(!is_jwt(Some("application/json")));
        assert!(!is_jwt(Some("application/jwt+json")));
        assert!(!is_jwt(None));
    }

    #[test]
    fn a_json_answer_must_be_an_object() {
        assert!(json_object(br#"{"sub":"a"}"#).is_ok());
        for bad in [
            &b"[1]"[..],
            b"\"sub\"",
            b"null",
            b"<html>",
            b"",
            b"{\"sub\":",
        ] {
            assert!(matches!(json_object(bad), Err(Failure::NotObject)));
        }
    }
}
