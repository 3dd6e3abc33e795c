//! Why a DPoP proof was refused, and how each reason is answered (RFC 9449 §7.1, §8, §12).
//!
//! Every reason has a fixed public text ([`ProofError::description`]) that names the failed
//! check and never repeats proof bytes, a label for `tokengate_dpop_proofs_total{outcome}`
//! ([`ProofError::outcome`]) and a [`ProofErrorKind`] that tells the caller which answer to
//! render. Rendering (status, `WWW-Authenticate`, `DPoP-Nonce`) is `rejection.rs`'s job.

use std::fmt;

/// What the caller answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofErrorKind {
    /// 401, `WWW-Authenticate: DPoP ... error="invalid_dpop_proof"`.
    InvalidProof,
    /// 401, `error="use_dpop_nonce"`, with a fresh `DPoP-Nonce` header
    /// (`DpopChecker::current_nonce`).
    UseNonce,
    /// 401, `error="invalid_token"`: the token is bound to another key (only with
    /// `ProofRequest::bound_jkt`).
    InvalidToken,
    /// 503 `temporarily_unavailable`: the replay check could not run (store full of live
    /// records; later, a shared store that is unreachable).
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    /// No `DPoP` header.
    Missing,
    /// More than one `DPoP` header.
    Multiple,
    /// Not a compact JWS with JSON header and payload, too large, or a claim missing or of the
    /// wrong type. The text is one of this module's fixed sentences.
    Malformed(&'static str),
    /// `typ` is not exactly `dpop+jwt`.
    Typ,
    /// `alg` is not in `[dpop].algorithms` (or is `none`, HS*, unknown).
    Algorithm,
    /// A `crit` header member, in any form.
    Crit,
    /// `jwk` missing, not a public key of a type that fits `alg`, or not a valid key. A fixed
    /// sentence.
    Jwk(&'static str),
    /// `jwk` holds private key members (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`, `k`).
    PrivateKey,
    BadSignature,
    /// `htm` is not the request method.
    Htm,
    /// `htu` is not the URI the request was addressed to.
    Htu,
    /// `iat` older than `max_age` (plus clock skew).
    Stale,
    /// `iat` later than now plus clock skew.
    Future,
    /// `ath` is not base64url(SHA-256(access token)).
    Ath,
    /// `require_nonce` and the proof has no `nonce`.
    NonceMissing,
    /// `require_nonce` and the `nonce` is not a current server nonce.
    NonceStale,
    /// The same key and `jti` were seen within the proof window.
    Replayed,
    /// The proof key's thumbprint differs from the `cnf.jkt` the caller passed.
    KeyMismatch,
    /// The replay store is full of live records: the proof cannot be checked for replay.
    StoreFull,
}

impl ProofError {
    pub fn kind(&self) -> ProofErrorKind {
        match self {
            ProofError::NonceMissing | ProofError::NonceStale => ProofErrorKind::UseNonce,
            ProofError::KeyMismatch => ProofErrorKind::InvalidToken,
            ProofError::StoreFull => ProofErrorKind::Unavailable,
            _ => ProofErrorKind::InvalidProof,
        }
    }

    /// A nonce problem: answer 401 `use_dpop_nonce` with a `DPoP-Nonce` header.
    pub fn is_nonce_problem(&self) -> bool {
        self.kind() == ProofErrorKind::UseNonce
    }

    /// A store problem: answer 503, the proof itself may be fine.
    pub fn is_store_problem(&self) -> bool {
        self.kind() == ProofErrorKind::Unavailable
    }

    /// `tokengate_dpop_proofs_total{outcome}`: `replayed`, `nonce_required`, or `invalid` for
    /// everything else. SPEC §7 has no label for a proof that could not be checked
    /// ([`ProofError::StoreFull`]); it counts as `invalid`, and its 503 is visible in
    /// `tokengate_auth_failures_total{reason="unavailable"}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProofError::Replayed => "replayed",
            ProofError::NonceMissing | ProofError::NonceStale => "nonce_required",
            _ => "invalid",
        }
    }

    /// Short public text for `error_description`.
    pub fn description(&self) -> &'static str {
        match self {
            ProofError::Missing => "DPoP proof header is missing",
            ProofError::Multiple => "more than one DPoP proof header",
            ProofError::Malformed(what) | ProofError::Jwk(what) => what,
            ProofError::Typ => "DPoP proof typ is not dpop+jwt",
            ProofError::Algorithm => "DPoP proof alg is not accepted",
            ProofError::Crit => "DPoP proof has critical header parameters (crit)",
            ProofError::PrivateKey => "DPoP proof jwk contains private key material",
            ProofError::BadSignature => "DPoP proof signature is invalid",
            ProofError::Htm => "DPoP proof htm does not match the request method",
            ProofError::Htu => "DPoP proof htu does not match the request URI",
            ProofError::Stale => "DPoP proof is too old (iat)",
            ProofError::Future => "DPoP proof is issued in the future (iat)",
            ProofError::Ath => "DPoP proof ath does not match the access token",
            ProofError::NonceMissing => "DPoP proof has no nonce; use the DPoP-Nonce provided",
            ProofError::NonceStale => {
                "DPoP proof nonce is not current; use the DPoP-Nonce provided"
            }
            ProofError::Replayed => "DPoP proof has already been used (jti)",
            ProofError::KeyMismatch => "access token is not bound to the DPoP proof key",
            ProofError::StoreFull => "DPoP replay protection is temporarily unavailable",
        }
    }
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for ProofError {}
