//! The HTTP client for calls to an issuer (discovery, JWKS, userinfo, introspection), and the
//! rules every such call follows.
//!
//! - One `reqwest::Client` per `[[issuer]]` ([`issuer_client`]): rustls, `fetch_timeout` as both
//!   the connect timeout and the timeout of the whole exchange (body included), system roots or,
//!   with `ca_file`, that file's certificates *instead of* the system roots, and
//!   `User-Agent: tokengate/<version>`. `HTTPS_PROXY`/`NO_PROXY` from the environment are honoured
//!   (reqwest's default), as operators behind an egress proxy expect.
//! - **Redirects are never followed.** Every issuer URL is checked by [`check_url`] before use; a
//!   redirect could lead to plain http or another host behind that check's back (and would carry a
//!   userinfo call's bearer token along), so a 3xx is reported as a status error instead.
//! - Bodies are read with a size cap ([`execute`]): a hostile or broken issuer cannot make the
//!   proxy allocate more than `max_bytes`, whatever `Content-Length` says or does not say.
//! - Failures are classified ([`FetchErrorKind`]) for logs and metrics. Messages name the URL
//!   without its userinfo, query or fragment, and never carry a body, a token or a secret.
//!
//! What to do with an answer (JWKS parsing, userinfo rules) is left to the callers.

use std::fmt;
use std::net::IpAddr;

use bytes::Bytes;
use reqwest::{header, redirect, Client, StatusCode, Url};

use crate::config::Issuer;
use crate::telemetry::trace::{Call, CallKind, CallOutcome, ClientSpan};

/// `User-Agent` of every call to an issuer.
pub const USER_AGENT: &str = concat!("tokengate/", env!("CARGO_PKG_VERSION"));

/// Size cap for discovery documents and key sets (1 MiB; real ones are a few KiB).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Builds the client used for every call to `issuer`. Reads `ca_file` (no network I/O).
pub fn issuer_client(issuer: &Issuer) -> Result<Client, String> {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .user_agent(USER_AGENT)
        .connect_timeout(issuer.fetch_timeout)
        .timeout(issuer.fetch_timeout)
        .redirect(redirect::Policy::none());
    if let Some(path) = &issuer.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "ca_file {}: {}",
                path.display(),
                error_chain(&e.without_url())
            )
        })?;
        if certs.is_empty() {
            return Err(format!(
                "ca_file {} holds no PEM certificate",
                path.display()
            ));
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)))
}

/// An issuer URL must be `https`, or `http` when the host is loopback (127.0.0.0/8, `::1`,
/// `localhost`) or `allow_http` is set. Other schemes and URLs without a host are refused.
pub fn check_url(url: &str, allow_http: bool) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
    let Some(host) = parsed.host_str() else {
        return Err(format!("{} has no host", redact(url)));
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_http || is_loopback(host) => Ok(()),
        "http" => Err(format!(
            "{} must use https (http is accepted only for loopback hosts, or with allow_http = true)",
            redact(url)
        )),
        other => Err(format!(
            "{} has scheme {other:?}; only https (or http) is allowed",
            redact(url)
        )),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `url` as it may appear in a log line: scheme, host, port and path; no userinfo, query or
/// fragment (they can hold credentials).
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            match u.port() {
                Some(port) => format!("{}://{host}:{port}{}", u.scheme(), u.path()),
                None => format!("{}://{host}{}", u.scheme(), u.path()),
            }
        }
        Err(_) => "<invalid URL>".to_owned(),
    }
}

/// What went wrong with a call to an issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchErrorKind {
    /// No answer within `fetch_timeout` (connect, headers or body).
    Timeout,
    /// DNS, TCP or TLS failure.
    Connect,
    /// An answer with an unexpected status (3xx included: redirects are not followed).
    Status(u16),
    /// The body exceeded the size cap.
    TooLarge,
    /// The body is not JSON (or not the JSON shape expected).
    NotJson,
    /// The connection failed while the body was read.
    Body,
    /// Anything else (an invalid URL, a protocol error).
    Request,
}

/// A failed call: its class, the redacted URL and an operator-facing detail (never a secret).
#[derive(Debug, Clone)]
pub struct FetchError {
    pub kind: FetchErrorKind,
    /// Redacted (see [`redact`]).
    pub url: String,
    pub detail: String,
}

impl FetchError {
    fn new(kind: FetchErrorKind, url: &str, detail: impl Into<String>) -> FetchError {
        FetchError {
            kind,
            url: redact(url),
            detail: detail.into(),
        }
    }

    fn from_reqwest(url: &str, e: reqwest::Error) -> FetchError {
        let kind = if e.is_timeout() {
            FetchErrorKind::Timeout
        } else if e.is_connect() {
            FetchErrorKind::Connect
        } else if e.is_body() || e.is_decode() {
            FetchErrorKind::Body
        } else {
            FetchErrorKind::Request
        };
        FetchError::new(kind, url, error_chain(&e.without_url()))
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            FetchErrorKind::Timeout => "timed out".to_owned(),
            FetchErrorKind::Connect => "connection failed".to_owned(),
            FetchErrorKind::Status(s) => format!("answered HTTP {s}"),
            FetchErrorKind::TooLarge => "body too large".to_owned(),
            FetchErrorKind::NotJson => "body is not JSON".to_owned(),
            FetchErrorKind::Body => "reading the body failed".to_owned(),
            FetchErrorKind::Request => "request failed".to_owned(),
        };
        write!(f, "{}: {what}", self.url)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for FetchError {}

/// An answer whose status the caller judges (userinfo distinguishes 401 from other failures).
pub struct Answer {
    pub status: StatusCode,
    /// The `Content-Type` value, when present and ASCII.
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body may hold personal data: only its size is shown.
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Sends `request` and reads the answer's body, at most `max_bytes` of it, whatever the status.
pub async fn execute(
    client: &Client,
    request: reqwest::Request,
    max_bytes: usize,
    kind: CallKind,
) -> Result<Answer, FetchError> {
    let url = request.url().as_str().to_owned();
    let response = send(client, request, kind).await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_capped(response, &url, max_bytes).await?;
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

/// GET `url` (`Accept: application/json`); a status other than 2xx is an error (and its body
/// is not read).
pub async fn get_bytes(
    client: &Client,
    url: &str,
    max_bytes: usize,
    kind: CallKind,
) -> Result<Bytes, FetchError> {
    let request = client
        .get(url)
        .header(header::ACCEPT, "application/json")
        .build()
        .map_err(|e| FetchError::from_reqwest(url, e))?;
    let response = send(client, request, kind).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::new(
            FetchErrorKind::Status(status.as_u16()),
            url,
            "",
        ));
    }
    read_capped(response, url, max_bytes).await
}

/// Sends one call to an issuer, as a child span of the request that caused it (SPEC §8): the
/// call carries a `traceparent`, and its span is recorded when spans are exported.
async fn send(
    client: &Client,
    mut request: reqwest::Request,
    kind: CallKind,
) -> Result<reqwest::Response, FetchError> {
    let url = request.url().as_str().to_owned();
    let (method, host, port) = (
        request.method().clone(),
        request.url().host_str().map(str::to_owned),
        request.url().port_or_known_default(),
    );
    let call = Call::start(kind);
    call.inject(request.headers_mut());
    let sent = client
        .execute(request)
        .await
        .map_err(|e| FetchError::from_reqwest(&url, e));
    let outcome = match &sent {
        Ok(response) => CallOutcome::Status(response.status().as_u16()),
        Err(e) => CallOutcome::Failed(match e.kind {
            FetchErrorKind::Timeout => "timeout",
            FetchErrorKind::Connect => "connect",
            _ => "request",
        }),
    };
    call.finish(&ClientSpan::new(&method, outcome).server(host.as_deref(), port));
    sent
}

/// The body, refused as soon as it is known to exceed `max_bytes`: from `Content-Length` before
/// reading anything, else while reading (the allocation never trusts the declared length).
async fn read_capped(
    mut response: reqwest::Response,
    url: &str,
    max_bytes: usize,
) -> Result<Bytes, FetchError> {
    let too_large = || {
        let detail = format!("more than {max_bytes} bytes");
        FetchError::new(FetchErrorKind::TooLarge, url, detail)
    };
    let declared = response.content_length();
    if declared.is_some_and(|n| n > max_bytes as u64) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::from_reqwest(url, e))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// [`get_bytes`], parsed as JSON.
pub async fn get_json(
    client: &Client,
    url: &str,
    max_bytes: usize,
    kind: CallKind,
) -> Result<serde_json::Value, FetchError> {
    let body = get_bytes(client, url, max_bytes, kind).await?;
    // serde_json's syntax errors name a line and column, never the input.
    serde_json::from_slice(&body)
        .map_err(|e| FetchError::new(FetchErrorKind::NotJson, url, e.to_string()))
}

/// An error and its causes, `: `-separated (reqwest's own message alone is rarely enough).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn https_is_always_allowed_http_only_on_loopback_or_when_allowed() {
        assert!(check_url("https://idp.example.com/jwks", false).is_ok());
        for url in [
            "http://127.0.0.1:8080/jwks",
            "http://127.9.9.9/x",
            "http://[::1]:9/jwks",
            "http://localhost/jwks",
            "http://LOCALHOST:1/",
        ] {
            assert!(check_url(url, false).is_ok(), "{url}");
        }
        let err = check_url("http://idp.example.com/jwks", false).unwrap_err();
        assert!(err.contains("must use https"), "{err}");
        assert!(check_url("http://idp.example.com/jwks", true).is_ok());
        assert!(check_url("http://10.0.0.1/jwks", false).is_err());
        assert!(check_url("http://localhost.evil.example/", false).is_err());
        assert!(check_url("ftp://idp.example.com/jwks", true).is_err());
        assert!(check_url("file:///etc/passwd", true).is_err());
        assert!(check_url("/jwks", true).is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").expect("write");
        let issuer = Issuer {
            id: "corp".to_owned(),
            issuer: "https://idp.example.com".to_owned(),
            jwks_uri: None,
            userinfo_endpoint: None,
            audiences: vec![],
            algorithms: vec![],
            clock_skew: Duration::ZERO,
            fetch_timeout: Duration::from_secs(1),
            ca_file: Some(path),
            allow_any_audience: true,
            jwks_refresh: Duration::from_secs(600),
            jwks_min_refresh: Duration::from_secs(30),
            require_typ: None,
            allow_http: false,
            hmac_secret: None,
            introspection: None,
        };
        let err = issuer_client(&issuer).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let system_roots = Issuer {
            ca_file: None,
            ..issuer
        };
        assert!(issuer_client(&system_roots).is_ok());
    }

    #[test]
    fn messages_never_show_credentials_or_queries() {
        let err = check_url(
            "http://user:hunter2@idp.example.com/j?key=s3cret#frag",
            false,
        )
        .unwrap_err();
        assert!(!err.contains("hunter2") && !err.contains("s3cret"), "{err}");
        assert_eq!(
            redact("https://u:p@idp.example.com:8443/a/b?x=1"),
            "https://idp.example.com:8443/a/b"
        );
    }
}
