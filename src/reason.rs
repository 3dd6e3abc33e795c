//! Why a request was rejected — or, for a forwarded request, a note on how it was served — as one
//! enum. It is the access line's `reason` field and the `reason` label of
//! `tokengate_auth_failures_total` (SPEC §7, §8): both read [`Reason::as_str`], so the two can
//! never disagree, and the label set is bounded by construction. How the caller was verified is
//! [`AuthMethod`], the access line's `auth` and the assertion's `auth` claim (SPEC §5).

use std::fmt;

/// One reason. The first group is SPEC §7's list, the second the further authentication
/// failures tokengate tells apart; both count in `tokengate_auth_failures_total`. The third
/// group are rejections that are not about the caller's credentials, the fourth notes on a
/// forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingToken,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    UnknownKid,
    WrongIssuer,
    WrongAudience,
    Inactive,
    InvalidDpopProof,
    InsufficientScope,
    AccessDenied,
    /// Issuer keys, userinfo or introspection unavailable (503).
    Unavailable,

    WrongAlgorithm,
    WrongTyp,
    UnsupportedCrit,
    /// A token's binding (DPoP key, TLS client certificate) was not proven, or a route requires one.
    SenderConstraint,
    UserinfoRejected,
    UserinfoWrongSubject,
    UseDpopNonce,

    BadRequest,
    HeaderTooLarge,
    /// The request body did not arrive (whole, or its first part) within `header_read_timeout` (408).
    RequestTimeout,
    NoRoute,
    /// `[upstream].max_connections` reached (503).
    UpstreamSaturated,
    BadGateway,
    GatewayTimeout,
    Internal,

    /// Forwarded with token claims only: a DPoP-bound token is never sent to userinfo.
    DpopBoundToken,
    /// Forwarded with token claims only: userinfo failed and `on_error = "proceed"`.
    UserinfoUnavailable,
    /// Forwarded with token claims only: the issuer has no userinfo endpoint (`proceed`).
    NoUserinfoEndpoint,
}

impl Reason {
    /// Every reason that counts as an authentication failure, in SPEC §7 order first.
    pub const AUTH_FAILURES: [Reason; 20] = [
        Reason::MissingToken,
        Reason::Malformed,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::UnknownKid,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::Inactive,
        Reason::InvalidDpopProof,
        Reason::InsufficientScope,
        Reason::AccessDenied,
        Reason::Unavailable,
        Reason::WrongAlgorithm,
        Reason::WrongTyp,
        Reason::UnsupportedCrit,
        Reason::SenderConstraint,
        Reason::UserinfoRejected,
        Reason::UserinfoWrongSubject,
        Reason::UseDpopNonce,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::UnknownKid => "unknown_kid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::Inactive => "inactive",
            Reason::InvalidDpopProof => "invalid_dpop_proof",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::AccessDenied => "access_denied",
            Reason::Unavailable => "unavailable",
            Reason::WrongAlgorithm => "wrong_algorithm",
            Reason::WrongTyp => "wrong_typ",
            Reason::UnsupportedCrit => "unsupported_crit",
            Reason::SenderConstraint => "sender_constraint",
            Reason::UserinfoRejected => "userinfo_rejected",
            Reason::UserinfoWrongSubject => "userinfo_wrong_subject",
            Reason::UseDpopNonce => "use_dpop_nonce",
            Reason::BadRequest => "bad_request",
            Reason::HeaderTooLarge => "header_too_large",
            Reason::RequestTimeout => "request_timeout",
            Reason::NoRoute => "no_route",
            Reason::UpstreamSaturated => "upstream_saturated",
            Reason::BadGateway => "bad_gateway",
            Reason::GatewayTimeout => "gateway_timeout",
            Reason::Internal => "internal_error",
            Reason::DpopBoundToken => "dpop_bound_token",
            Reason::UserinfoUnavailable => "userinfo_unavailable",
            Reason::NoUserinfoEndpoint => "no_userinfo_endpoint",
        }
    }

    /// Whether it counts in `tokengate_auth_failures_total`.
    pub fn is_auth_failure(self) -> bool {
        self.auth_failure_slot().is_some()
    }

    /// Its position in [`Reason::AUTH_FAILURES`] (a metric's slot), for an authentication failure.
    pub const fn auth_failure_slot(self) -> Option<usize> {
        Some(match self {
            Reason::MissingToken => 0,
            Reason::Malformed => 1,
            Reason::BadSignature => 2,
            Reason::Expired => 3,
            Reason::NotYetValid => 4,
            Reason::UnknownKid => 5,
            Reason::WrongIssuer => 6,
            Reason::WrongAudience => 7,
            Reason::Inactive => 8,
            Reason::InvalidDpopProof => 9,
            Reason::InsufficientScope => 10,
            Reason::AccessDenied => 11,
            Reason::Unavailable => 12,
            Reason::WrongAlgorithm => 13,
            Reason::WrongTyp => 14,
            Reason::UnsupportedCrit => 15,
            Reason::SenderConstraint => 16,
            Reason::UserinfoRejected => 17,
            Reason::UserinfoWrongSubject => 18,
            Reason::UseDpopNonce => 19,
            _ => return None,
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the caller was verified (SPEC §5 `auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A JWT verified against the issuer's keys (bearer or mTLS-bound).
    Jwt,
    /// An opaque token the issuer's introspection endpoint called active.
    Introspection,
    /// A DPoP-bound token (JWT or introspected) with a valid proof.
    Dpop,
}

impl AuthMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::Introspection => "introspection",
            AuthMethod::Dpop => "dpop",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_reasons_are_auth_failures_with_their_spec_names() {
        let spec = [
            "missing_token",
            "malformed",
            "bad_signature",
            "expired",
            "not_yet_valid",
            "unknown_kid",
            "wrong_issuer",
            "wrong_audience",
            "inactive",
            "invalid_dpop_proof",
            "insufficient_scope",
            "access_denied",
            "unavailable",
        ];
        let names: Vec<&str> = Reason::AUTH_FAILURES.iter().map(|r| r.as_str()).collect();
        assert_eq!(&names[..spec.len()], spec);
    }

    #[test]
    fn auth_failure_slots_are_positions_in_the_list() {
        for (i, reason) in Reason::AUTH_FAILURES.into_iter().enumerate() {
            assert_eq!(reason.auth_failure_slot(), Some(i), "{reason}");
        }
    }

    #[test]
    fn rejections_outside_authentication_are_not_auth_failures() {
        for reason in [
            Reason::BadRequest,
            Reason::NoRoute,
            Reason::UpstreamSaturated,
            Reason::BadGateway,
            Reason::DpopBoundToken,
        ] {
            assert!(!reason.is_auth_failure(), "{reason}");
        }
    }

    #[test]
    fn reason_names_are_distinct() {
        let all = [
            Reason::BadRequest,
            Reason::HeaderTooLarge,
            Reason::RequestTimeout,
            Reason::NoRoute,
            Reason::UpstreamSaturated,
            Reason::BadGateway,
            Reason::GatewayTimeout,
            Reason::Internal,
            Reason::DpopBoundToken,
            Reason::UserinfoUnavailable,
            Reason::NoUserinfoEndpoint,
        ];
        let mut names: Vec<&str> = Reason::AUTH_FAILURES
            .iter()
            .chain(all.iter())
            .map(|r| r.as_str())
            .collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before);
    }
}
