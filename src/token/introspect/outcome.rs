//! What [`Introspector::introspect`](super::Introspector::introspect) hands back: the accepted
//! token, the ways it can be refused (and the [`Rejection`] each one becomes, SPEC §6), and the
//! counter values for `/metrics` (SPEC §7).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::reason::Reason;
use crate::rejection::Rejection;
use crate::token::claims::Claims;

/// `Retry-After` of the 503 when no issuer could be asked.
const RETRY_AFTER_SECS: u32 = 5;

/// A token an issuer vouched for.
#[derive(Debug, Clone)]
pub struct Introspected {
    /// Index in `Config::issuers` of the issuer whose answer this is.
    pub issuer: usize,
    /// The answer's members without `active` (`scope`, `sub`, `client_id`, `cnf`, ...).
    pub claims: Arc<Claims>,
    /// The answer's `exp`, or the implied one when it has none (`answer.rs`).
    pub exp: i64,
}

/// Why an opaque token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntrospectionError {
    /// Every issuer asked said `active: false`: 401 `invalid_token`, reason `inactive`.
    Inactive,
    /// The deciding issuer said active but the answer fails a check (`reason`: `wrong_issuer`,
    /// `wrong_audience`, `expired`, `not_yet_valid`, `malformed`), or no issuer introspects
    /// tokens: 401 `invalid_token`.
    Invalid {
        reason: Reason,
        description: Cow<'static, str>,
    },
    /// No issuer said active and at least one could not be asked: 503 `temporarily_unavailable`.
    Unavailable,
}

impl IntrospectionError {
    /// The label for the access log and `tokengate_auth_failures_total{reason}`.
    pub fn reason(&self) -> Reason {
        match self {
            IntrospectionError::Inactive => Reason::Inactive,
            IntrospectionError::Invalid { reason, .. } => *reason,
            IntrospectionError::Unavailable => Reason::Unavailable,
        }
    }

    /// The rejection a client sees (SPEC §6).
    pub fn into_rejection(self) -> Rejection {
        match self {
            IntrospectionError::Inactive => Rejection::InvalidToken {
                reason: Reason::Inactive,
                description: "token is not active".into(),
            },
            IntrospectionError::Invalid {
                reason,
                description,
            } => Rejection::InvalidToken {
                reason,
                description,
            },
            IntrospectionError::Unavailable => Rejection::Unavailable {
                reason: Reason::Unavailable,
                description: "the issuer's introspection endpoint is unavailable".into(),
                retry_after_secs: RETRY_AFTER_SECS,
            },
        }
    }
}

impl fmt::Display for IntrospectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntrospectionError::Inactive => f.write_str("token is not active"),
            IntrospectionError::Invalid { description, .. } => f.write_str(description),
            IntrospectionError::Unavailable => f.write_str("introspection is unavailable"),
        }
    }
}

impl std::error::Error for IntrospectionError {}

/// Counter values for `/metrics` (SPEC §7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntrospectionCounters {
    /// `tokengate_introspection_cache_total{result="hit"}`.
    pub hits: u64,
    /// `{result="miss"}`.
    pub misses: u64,
    /// `{result="coalesced"}`.
    pub coalesced: u64,
    /// `tokengate_introspection_requests_total{outcome="active"}`.
    pub active: u64,
    /// `{outcome="inactive"}`.
    pub inactive: u64,
    /// `{outcome="error"}`.
    pub error: u64,
}
