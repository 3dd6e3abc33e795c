//! What `tokengate explain` found, step by step: one value that is printed either as text
//! (`text.rs`) or, with `--json`, as one JSON object (this file's `Serialize`, a stable shape
//! documented in the README: every key is always present, `null` when its step did not run).
//!
//! Nothing here holds the access token: a step names it by a SHA-256 prefix only. Header values
//! of the described request are not kept either (they may be credentials); the identity headers
//! and the assertion's claims are tokengate's own output and are shown in full.

use serde::Serialize;
use serde_json::{Map, Value};

/// The whole explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub request: RequestSummary,
    /// Phases 0 and 1: framing, method, head size, host and path.
    pub admission: Option<Admission>,
    /// Phase 2: every route tried, in file order, up to the one that matched.
    pub routes: Option<Vec<RouteTried>>,
    /// Phase 3: the credential in `Authorization`.
    pub credential: Option<CredentialStep>,
    /// The issuers' key sets, when verification needed them.
    pub issuers: Option<Vec<IssuerKeysStep>>,
    /// Phase 4: signature and claims.
    pub verification: Option<VerificationStep>,
    /// Phase 4, SPEC §4.8: DPoP / mTLS binding.
    pub sender_constraint: Option<SenderStep>,
    /// Phase 5.
    pub userinfo: Option<UserinfoStep>,
    /// Phase 6.
    pub policy: Option<PolicyStep>,
    pub outcome: Outcome,
    /// 0 forwarded (or answered by tokengate), 3 rejected, 1 the answer depends on a failed
    /// lookup (issuer keys, userinfo or introspection unavailable) or an internal failure.
    pub exit_code: u8,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestSummary {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// The `Host` sent (`None` only when it was given as a header with an unreadable value).
    pub host: Option<String>,
    /// `http` or `https`: the main listener's scheme.
    pub scheme: &'static str,
    /// Names of the `--header` headers, in order (never their values).
    pub headers: Vec<String>,
    /// First 16 hex digits of the SHA-256 of the `--token` token.
    pub token_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Admission {
    /// The normalized path routes are matched on; `None` when the request was refused.
    pub normalized_path: Option<String>,
    /// The path the upstream would receive (differs from `normalized_path` only by path
    /// parameters, with `allow_path_parameters`).
    pub forwarded_path: Option<String>,
    /// The canonical host routes are matched on.
    pub host: Option<String>,
    /// Why the request was refused before routing: the client's `error_description`.
    pub refused: Option<String>,
    /// Set when tokengate answers this path itself (its published JWKS), before any route.
    pub answered_by_tokengate: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteTried {
    pub id: String,
    /// How the route matches: `path /x` or `path_prefix /x`, methods, host.
    pub rule: String,
    pub matched: bool,
    /// Why not: `path`, `method` or `host` (the first that fails, in that order).
    pub mismatch: Option<&'static str>,
    /// `public`, `optional` or `required`.
    pub auth: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct CredentialStep {
    /// `none`, `bearer` or `dpop`; `not_examined` on a `public` route.
    pub scheme: &'static str,
    pub token_sha256: Option<String>,
    /// `jwt` (three dot-separated parts) or `opaque` (for introspection).
    pub format: Option<&'static str>,
    /// The JWT's header and time claims, read without trusting them (for orientation; the
    /// verdict is `verification`'s).
    pub unverified: Option<Unverified>,
    /// A malformed `Authorization` header: the client's `error_description`.
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unverified {
    pub alg: Option<String>,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub iss: Option<String>,
    /// `exp`, `nbf`, `iat` as given, each with a note relative to now.
    pub times: Vec<TimeClaim>,
    /// Why the token does not even parse as a JWT.
    pub malformed: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimeClaim {
    pub claim: &'static str,
    pub value: Value,
    /// `in 4m59s`, `2m ago`, or `not a NumericDate`.
    pub relative: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IssuerKeysStep {
    pub id: String,
    pub issuer: String,
    pub ready: bool,
    /// Usable keys in its set.
    pub keys: usize,
    /// `fetched` (discovery / JWKS, as `serve` does), `file` (`--jwks`) or `none` (HMAC only).
    pub source: &'static str,
    /// Why its keys could not be loaded.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerificationStep {
    pub verified: bool,
    /// `jwt` or `introspection`.
    pub method: Option<&'static str>,
    /// The issuer id and identifier the token was verified for.
    pub issuer: Option<String>,
    pub issuer_id: Option<String>,
    pub alg: Option<String>,
    /// The key that verified the signature: its `kid` and RFC 7638 thumbprint, or
    /// `hmac_secret`.
    pub key: Option<KeyUsed>,
    /// The verified claims (before userinfo).
    pub claims: Option<Map<String, Value>>,
    /// The client's `error_description` when verification failed.
    pub error: Option<String>,
    /// The access-log / metrics reason when it failed.
    pub reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyUsed {
    /// `jwks` or `hmac_secret`.
    pub source: &'static str,
    pub kid: Option<String>,
    pub thumbprint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SenderStep {
    /// `none` (a plain bearer token), `dpop` (`cnf.jkt`), `mtls` (`cnf["x5t#S256"]`) or
    /// `unsupported` (another confirmation method).
    pub binding: &'static str,
    /// `bearer` or `dpop`: how it was presented.
    pub scheme: &'static str,
    /// `accepted`, `refused`, or `not_checked` (verification failed before).
    pub verdict: &'static str,
    pub detail: String,
    /// What explain cannot show (no TLS client certificate; no DPoP proof unless given).
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserinfoStep {
    pub requested_by_route: bool,
    /// `enriched`, `skipped`, `refused`, `failed`, `not_requested` or `disabled`
    /// (`--no-userinfo`).
    pub status: &'static str,
    pub detail: String,
    pub endpoint: Option<String>,
    /// How long `serve` would cache the answer for this token.
    pub cache: Option<String>,
    /// Claims userinfo added or changed, with their values.
    pub added_claims: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyStep {
    /// `allow`, `insufficient_scope`, `access_denied`, or `missing_token` (an optional route
    /// whose policy needs claims the request has none of).
    pub decision: &'static str,
    /// No scopes, claim rules or `any_of` blocks: every caller the route admits passes.
    pub empty: bool,
    pub checks: Vec<CheckStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckStep {
    /// `scope`, `claim` or `any_of` (a block's overall verdict).
    pub kind: &'static str,
    /// The `any_of` block it belongs to; `None` for the route's own `scopes` and `claims`.
    pub block: Option<usize>,
    /// `orders:read`, `email_verified equals true`, `any_of[1]`.
    pub check: String,
    /// The claim it read: `scope`/`scp` for a scope, the rule's claim for a rule.
    pub claim: Option<String>,
    /// That claim's value (`None`: absent or `null`).
    pub value: Option<Value>,
    pub holds: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `forwarded`, `rejected` or `answered` (tokengate answers itself: its JWKS).
    pub verdict: &'static str,
    /// The status a client would get; `None` for a forwarded request (the upstream decides).
    pub status: Option<u16>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub www_authenticate: Option<String>,
    pub retry_after: Option<String>,
    /// The access-log / metrics reason of a rejection.
    pub reason: Option<&'static str>,
    pub route: Option<String>,
    /// The URL the upstream request goes to (origin, normalized path, query).
    pub upstream: Option<String>,
    /// `jwt`, `introspection`, `dpop`; `None` for an anonymous request.
    pub auth: Option<&'static str>,
    /// `[identity.headers]` and their values, as the upstream receives them.
    pub identity_headers: Option<Map<String, Value>>,
    pub assertion: Option<AssertionStep>,
    /// Why there is no assertion.
    pub assertion_note: Option<String>,
    /// Headers of the described request the upstream does not receive (names only).
    pub removed_headers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssertionStep {
    /// The header that carries it.
    pub header: String,
    /// Its JOSE header (`alg`, `kid`, `typ`).
    pub jose_header: Value,
    /// Its claims.
    pub claims: Value,
}

impl Outcome {
    /// An outcome with only the verdict set; the builders fill in the rest.
    pub fn new(verdict: &'static str) -> Outcome {
        Outcome {
            verdict,
            status: None,
            error: None,
            error_description: None,
            www_authenticate: None,
            retry_after: None,
            reason: None,
            route: None,
            upstream: None,
            auth: None,
            identity_headers: None,
            assertion: None,
            assertion_note: None,
            removed_headers: None,
        }
    }
}
