//! Every error a client can see, in one place.
//!
//! Phases return a `Rejection` naming *what* went wrong; only `into_response` decides the status,
//! the `WWW-Authenticate` challenge and the JSON body. What helps an operator goes to the access
//! line through [`Rejection::reason`] (and to the log where the phase that failed logs it), never
//! anything derived from a token's bytes.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::reason::Reason;
use crate::token::dpop::DPOP_NONCE;

/// The `error` of a `DPoP` challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpopError {
    /// The token: bound to another key, not bound at all, or bound but sent as `Bearer`, or a
    /// bearer token on a route that requires a sender-constrained one.
    InvalidToken,
    /// The proof: missing, duplicated or failing a check.
    InvalidProof,
    /// The proof lacks a current server nonce.
    UseNonce,
}

impl DpopError {
    fn code(self) -> &'static str {
        match self {
            DpopError::InvalidToken => "invalid_token",
            DpopError::InvalidProof => "invalid_dpop_proof",
            DpopError::UseNonce => "use_dpop_nonce",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 400 `invalid_request`. `close` asks for the connection to be closed (framing problems:
    /// nothing after this request can be trusted to start where it seems to).
    BadRequest {
        description: Cow<'static, str>,
        close: bool,
    },
    /// 431: the request head exceeds `max_header_bytes`.
    HeaderTooLarge,
    /// 408 `request_timeout`: the request body did not arrive within `header_read_timeout`
    /// (the connection is closed).
    RequestTimeout,
    /// 404 `no_route`.
    NoRoute,
    /// 401 without an `error` attribute (RFC 6750 §3.1).
    MissingToken,
    /// 401 `invalid_token`; `reason` is the metrics/log label.
    InvalidToken {
        reason: Reason,
        description: Cow<'static, str>,
    },
    /// 401 with a `DPoP` challenge (RFC 9449 §7.1, SPEC §4.8): `error` says whether the proof,
    /// the token or the nonce is the problem; `algs` is `[dpop].algorithms`, space-separated;
    /// `nonce` is a fresh server nonce for `use_dpop_nonce`.
    Dpop {
        error: DpopError,
        reason: Reason,
        description: Cow<'static, str>,
        algs: Arc<str>,
        nonce: Option<HeaderValue>,
    },
    /// 403 `insufficient_scope`, `scope` lists the route's required scopes.
    InsufficientScope { scope: String },
    /// 403 `access_denied`; names the route, never a claim value.
    AccessDenied { route: String },
    /// 503 `temporarily_unavailable` with `Retry-After`: `reason` is `Unavailable` (issuer keys,
    /// userinfo, introspection) or `UpstreamSaturated` (`[upstream].max_connections`).
    Unavailable {
        reason: Reason,
        description: Cow<'static, str>,
        retry_after_secs: u32,
    },
    /// 502 `bad_gateway`.
    BadGateway,
    /// 504 `gateway_timeout`.
    GatewayTimeout,
    /// 500 `internal_error`: something of ours failed (e.g. signing); details go to the log only.
    Internal,
}

impl Rejection {
    pub fn bad_request(description: impl Into<Cow<'static, str>>) -> Self {
        Rejection::BadRequest {
            description: description.into(),
            close: false,
        }
    }

    /// A framing problem: answer 400 and close the connection.
    pub fn bad_framing(description: &'static str) -> Self {
        Rejection::BadRequest {
            description: Cow::Borrowed(description),
            close: true,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Rejection::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::MissingToken | Rejection::InvalidToken { .. } | Rejection::Dpop { .. } => {
                StatusCode::UNAUTHORIZED
            }
            Rejection::InsufficientScope { .. } | Rejection::AccessDenied { .. } => {
                StatusCode::FORBIDDEN
            }
            Rejection::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::BadGateway => StatusCode::BAD_GATEWAY,
            Rejection::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rejection::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The access line's `reason`, and the `tokengate_auth_failures_total` label when it is an
    /// authentication failure.
    pub fn reason(&self) -> Reason {
        match self {
            Rejection::BadRequest { .. } => Reason::BadRequest,
            Rejection::HeaderTooLarge => Reason::HeaderTooLarge,
            Rejection::RequestTimeout => Reason::RequestTimeout,
            Rejection::NoRoute => Reason::NoRoute,
            Rejection::MissingToken => Reason::MissingToken,
            Rejection::InvalidToken { reason, .. }
            | Rejection::Unavailable { reason, .. }
            | Rejection::Dpop { reason, .. } => *reason,
            Rejection::InsufficientScope { .. } => Reason::InsufficientScope,
            Rejection::AccessDenied { .. } => Reason::AccessDenied,
            Rejection::BadGateway => Reason::BadGateway,
            Rejection::GatewayTimeout => Reason::GatewayTimeout,
            Rejection::Internal => Reason::Internal,
        }
    }

    fn error_code(&self) -> &'static str {
        match self {
            Rejection::BadRequest { .. } => "invalid_request",
            Rejection::HeaderTooLarge => "request_header_fields_too_large",
            Rejection::RequestTimeout => "request_timeout",
            Rejection::NoRoute => "no_route",
            Rejection::MissingToken => "missing_token",
            Rejection::InvalidToken { .. } => "invalid_token",
            Rejection::Dpop { error, .. } => error.code(),
            Rejection::InsufficientScope { .. } => "insufficient_scope",
            Rejection::AccessDenied { .. } => "access_denied",
            Rejection::Unavailable { .. } => "temporarily_unavailable",
            Rejection::BadGateway => "bad_gateway",
            Rejection::GatewayTimeout => "gateway_timeout",
            Rejection::Internal => "internal_error",
        }
    }

    fn description(&self) -> Cow<'_, str> {
        match self {
            Rejection::BadRequest { description, .. } => Cow::Borrowed(description),
            Rejection::HeaderTooLarge => Cow::Borrowed("request head exceeds the size limit"),
            Rejection::RequestTimeout => Cow::Borrowed("the request body did not arrive in time"),
            Rejection::NoRoute => Cow::Borrowed("no route matches this request"),
            Rejection::MissingToken => Cow::Borrowed("a bearer token is required"),
            Rejection::InvalidToken { description, .. } => Cow::Borrowed(description),
            Rejection::Dpop { description, .. } => Cow::Borrowed(description),
            Rejection::InsufficientScope { scope } => {
                Cow::Owned(format!("the token lacks a required scope ({scope})"))
            }
            Rejection::AccessDenied { route } => {
                Cow::Owned(format!("access to route '{route}' is denied by its policy"))
            }
            Rejection::Unavailable { description, .. } => Cow::Borrowed(description),
            Rejection::BadGateway => Cow::Borrowed("the upstream could not be reached"),
            Rejection::GatewayTimeout => Cow::Borrowed("the upstream did not answer in time"),
            Rejection::Internal => Cow::Borrowed("the proxy failed to handle the request"),
        }
    }

    /// Whether the connection must be closed after this answer.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Rejection::BadRequest { close: true, .. } | Rejection::RequestTimeout
        )
    }

    /// Renders the answer: status, `WWW-Authenticate` where RFC 6750 wants one, JSON body.
    pub fn into_response(&self, realm: &str) -> Response<Full<Bytes>> {
        let description = self.description();
        let body = serde_json::json!({
            "error": self.error_code(),
            "error_description": description,
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.add_headers(&mut response, realm, &description);
        response
    }

    /// The answer to a gRPC request (`content-type: application/grpc…`, SPEC §6): the same
    /// decision as a "trailers-only" response — HTTP 200, `content-type: application/grpc`,
    /// `grpc-status` mapped from the HTTP status the way gRPC maps them, `grpc-message` the
    /// percent-encoded description, no body — keeping `WWW-Authenticate`, `Retry-After` and the
    /// rest.
    pub fn into_grpc_response(&self, realm: &str) -> Response<Full<Bytes>> {
        let description = self.description();
        let mut response = Response::new(Full::new(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(grpc_status(self.status())));
        if let Ok(message) = HeaderValue::try_from(grpc_message(&description)) {
            headers.insert("grpc-message", message);
        }
        self.add_headers(&mut response, realm, &description);
        response
    }

    /// The headers every rendering of this rejection carries.
    fn add_headers(&self, response: &mut Response<Full<Bytes>>, realm: &str, description: &str) {
        let headers = response.headers_mut();
        let challenge = match self {
            Rejection::MissingToken => Some(format!("Bearer realm=\"{realm}\"")),
            Rejection::InvalidToken { .. } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted(description)
            )),
            Rejection::Dpop { error, algs, .. } => Some(format!(
                "DPoP realm=\"{realm}\", error=\"{}\", error_description=\"{}\", algs=\"{}\"",
                error.code(),
                quoted(description),
                quoted(algs)
            )),
            Rejection::InsufficientScope { scope } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                quoted(scope)
            )),
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::try_from(c).ok()) {
            headers.insert(WWW_AUTHENTICATE, value);
        }
        if let Rejection::Unavailable {
            retry_after_secs, ..
        } = self
        {
            headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if let Rejection::Dpop {
            nonce: Some(nonce), ..
        } = self
        {
            headers.insert(DPOP_NONCE.clone(), nonce.clone());
        }
        if self.closes_connection() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// gRPC's mapping of an HTTP status to a status code (gRPC's "HTTP to gRPC Status Code Mapping"):
/// 400 → 13 INTERNAL, 401 → 16 UNAUTHENTICATED, 403 → 7 PERMISSION_DENIED, 404 → 12
/// UNIMPLEMENTED, 429/502/503/504 → 14 UNAVAILABLE, anything else → 2 UNKNOWN.
pub fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// `grpc-message`: percent-encoded (gRPC's HTTP/2 protocol spec: bytes outside 0x20-0x7E, and
/// `%`, as `%XX`).
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Makes text safe inside an RFC 7235 quoted-string: `"` and `\` are dropped and anything that is
/// not visible ASCII or space becomes `?` (descriptions are ours, but keep the header valid).
fn quoted(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '"' && *c != '\\')
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(r: &Rejection) -> Option<String> {
        r.into_response("tokengate")
            .headers()
            .get(WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn missing_token_challenge_has_no_error_attribute() {
        assert_eq!(
            challenge(&Rejection::MissingToken).as_deref(),
            Some("Bearer realm=\"tokengate\"")
        );
    }

    #[test]
    fn invalid_token_challenge_carries_error_and_description() {
        let r = Rejection::InvalidToken {
            reason: Reason::Expired,
            description: "token \"expired\"".into(),
        };
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenge(&r).as_deref(),
            Some("Bearer realm=\"tokengate\", error=\"invalid_token\", error_description=\"token expired\"")
        );
    }

    #[test]
    fn insufficient_scope_names_the_required_scopes() {
        let r = Rejection::InsufficientScope {
            scope: "orders:read orders:write".into(),
        };
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            challenge(&r).as_deref(),
            Some("Bearer realm=\"tokengate\", error=\"insufficient_scope\", scope=\"orders:read orders:write\"")
        );
    }

    #[test]
    fn unavailable_sets_retry_after_and_json_body() {
        let r = Rejection::Unavailable {
            reason: Reason::Unavailable,
            description: "issuer keys unavailable".into(),
            retry_after_secs: 5,
        };
        let resp = r.into_response("tokengate");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[RETRY_AFTER], "5");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn grpc_requests_get_a_trailers_only_answer_with_the_mapped_status() {
        let r = Rejection::InsufficientScope {
            scope: "orders:read".into(),
        };
        let resp = r.into_grpc_response("tokengate");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], "7");
        assert_eq!(
            resp.headers()["grpc-message"],
            "the token lacks a required scope (orders:read)"
        );
        assert!(resp.headers().contains_key(WWW_AUTHENTICATE));
        assert_eq!(http_body::Body::size_hint(resp.body()).exact(), Some(0));
    }

    #[test]
    fn grpc_status_follows_grpcs_http_mapping() {
        let cases = [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (408, 2),
            (431, 2),
            (500, 2),
        ];
        for (http, grpc) in cases {
            assert_eq!(
                grpc_status(StatusCode::from_u16(http).unwrap()),
                grpc,
                "{http}"
            );
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message("50% é\n"), "50%25 %C3%A9%0A");
    }

    #[test]
    fn framing_rejection_closes_the_connection() {
        let resp = Rejection::bad_framing("bad framing").into_response("r");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[CONNECTION], "close");
    }
}
