//! One call to an issuer's introspection endpoint (RFC 7662 §2.1) and the failures it can end in.
//!
//! `POST <endpoint>` with `Content-Type: application/x-www-form-urlencoded` and the body
//! `token=<token>&token_type_hint=access_token`, through the issuer's client (`fetch.rs`: no
//! redirects, `ca_file`, size cap), bounded by the issuer's `fetch_timeout` (as reqwest's
//! per-request timeout and as an outer deadline). tokengate authenticates as an OAuth client
//! (RFC 6749 §2.3.1): `client_secret_basic` sends `Authorization: Basic` over the
//! form-urlencoded client id and secret, `client_secret_post` adds `client_id` and
//! `client_secret` to the form.
//!
//! The answer: a 2xx body that is a JSON object with a boolean `active` (`answer.rs`). A 401 or
//! 403 means the issuer refused tokengate's credentials (a configuration problem, reported as
//! such); any other status, a timeout, a connection error or a body over
//! [`MAX_INTROSPECTION_BYTES`] is a failure too. Failures name what an operator needs (status,
//! redacted URL) and never the token, the secret or the body.

use std::fmt;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::answer::{self, Answer, Shape};
use crate::config::{ClientAuthMethod, Introspection};
use crate::percent::push_triplet;
use crate::telemetry::trace::CallKind;
use crate::token::fetch::{self, FetchError};
use crate::token::jwks::IssuerKeys;

/// Size cap of an introspection answer (64 KiB, as for userinfo): real answers are well under
/// 2 KiB, and active ones are kept in memory.
pub const MAX_INTROSPECTION_BYTES: usize = 64 * 1024;

/// Why a call gave no usable answer (for the log; the client only sees 503).
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Timeout, connection error, body too large or unreadable.
    Fetch(FetchError),
    /// The outer deadline (`fetch_timeout`) passed.
    Timeout(Duration),
    /// 401 or 403: the issuer refused tokengate's client credentials.
    Credentials(u16),
    /// Another status that is not 2xx.
    Status(u16),
    /// A 2xx body that is not an introspection answer.
    Shape(Shape),
    /// The issuer's introspection endpoint is not known (not configured, not (yet) discovered).
    NoEndpoint,
    /// The request could not be built, or the task making the call ended without an answer.
    Internal(&'static str),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Fetch(e) => write!(f, "{e}"),
            Failure::Timeout(after) => write!(f, "no answer within {after:?}"),
            Failure::Credentials(status) => write!(
                f,
                "the endpoint refused tokengate's client credentials (HTTP {status}); check \
                 client_id, client_secret and auth_method"
            ),
            Failure::Status(status) => write!(f, "answered HTTP {status}"),
            Failure::Shape(Shape::NotObject) => f.write_str("the answer is not a JSON object"),
            Failure::Shape(Shape::NoBooleanActive) => {
                f.write_str("the answer has no boolean \"active\" member")
            }
            Failure::NoEndpoint => f.write_str(
                "no introspection endpoint is known (set [issuer.introspection].endpoint, or use \
                 an issuer whose discovery document names one)",
            ),
            Failure::Internal(what) => f.write_str(what),
        }
    }
}

/// Asks `endpoint` about `token` with the client credentials of `settings`.
pub(crate) async fn call(
    issuer: &IssuerKeys,
    endpoint: &str,
    settings: &Introspection,
    token: &str,
) -> Result<Answer, Failure> {
    let timeout = issuer.issuer().fetch_timeout;
    let mut form = vec![("token", token), ("token_type_hint", "access_token")];
    let mut request = issuer
        .client()
        .post(endpoint)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .timeout(timeout);
    let secret = settings.client_secret.0.as_str();
    match settings.auth_method {
        ClientAuthMethod::ClientSecretBasic => {
            // RFC 6749 §2.3.1: each part form-urlencoded, then Basic (reqwest marks it sensitive).
            let id = form_urlencode(&settings.client_id);
            request = request.basic_auth(id, Some(form_urlencode(secret)));
        }
        ClientAuthMethod::ClientSecretPost => {
            form.push(("client_id", &settings.client_id));
            form.push(("client_secret", secret));
        }
    }
    let Ok(request) = request.body(form_body(&form)).build() else {
        // reqwest's message could quote a header value; say nothing more.
        return Err(Failure::Internal(
            "the introspection request could not be built",
        ));
    };
    let sent = fetch::execute(
        issuer.client(),
        request,
        MAX_INTROSPECTION_BYTES,
        CallKind::Introspection,
    );
    let answer = match tokio::time::timeout(timeout, sent).await {
        Err(_) => return Err(Failure::Timeout(timeout)),
        Ok(Err(e)) => return Err(Failure::Fetch(e)),
        Ok(Ok(answer)) => answer,
    };
    match answer.status.as_u16() {
        status @ (401 | 403) => Err(Failure::Credentials(status)),
        _ if answer.status.is_success() => answer::parse(&answer.body).map_err(Failure::Shape),
        status => Err(Failure::Status(status)),
    }
}

/// `name=value` pairs joined with `&`, each part form-urlencoded.
pub(crate) fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (name, value) in pairs {
        if !body.is_empty() {
            body.push('&');
        }
        body.push_str(&form_urlencode(name));
        body.push('=');
        body.push_str(&form_urlencode(value));
    }
    body
}

/// `application/x-www-form-urlencoded` byte serialization (WHATWG URL §5.2, as RFC 6749
/// Appendix B asks): ASCII letters, digits and `*-._` stay, a space becomes `+`, every other
/// byte of the UTF-8 text becomes `%XX`.
pub(crate) fn form_urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => push_triplet(&mut out, byte),
        }
    }
    out
}
