//! The request `tokengate explain` describes, checked and turned into a real
//! `http::Request<hyper::body::Incoming>`.
//!
//! The command-line pieces (method, path, host, headers, token) are checked for what would make
//! them unsendable (a usage error, exit 2), then written as the bytes of an HTTP/1.1 request head
//! and fed to hyper's own HTTP/1.1 server over an in-memory pipe, with the read-buffer limit
//! `serve` uses. What comes out is exactly what `serve` hands its phases for the same bytes: the
//! same parser decides what a method, a target or a header is, and the phases get a genuine
//! `Request<Incoming>` — hyper offers no other way to make an `Incoming`, and making the phases
//! generic over the body would change the request path for the sake of a diagnostic tool. Nothing
//! else of the request path knows the request did not come from a socket.
//!
//! What it leaves to others: every decision about the request (the phases, `super`), and the
//! connection facts (`super` builds the `ConnInfo`).

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING,
};
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::inbound::Framing;
use crate::token::dpop::DPOP;

/// hyper's smallest read buffer (as in `server::conn`).
const HYPER_MIN_BUF: usize = 8192;
/// How long hyper may take to parse a head it already has in memory.
const PARSE_DEADLINE: Duration = Duration::from_secs(10);

/// An access token given on the command line. No `Debug`, no `Display`: it reaches nothing but
/// the `Authorization` header and the hash shown in the report.
pub struct TokenText(String);

impl TokenText {
    /// A token as given (`--token`), or read from a file (`--token-file`): surrounding whitespace
    /// (a trailing newline) is removed.
    pub fn new(text: &str) -> Result<TokenText, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err("the token is empty".to_owned());
        }
        if token.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
            return Err(
                "the token holds control characters or non-ASCII bytes; it cannot be sent in a header"
                    .to_owned(),
            );
        }
        Ok(TokenText(token.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The described request, checked: everything needed to write its head.
pub struct Described {
    pub method: String,
    /// The request target as the client sends it: path and optional query.
    pub target: String,
    /// `--host`; `None`: a `Host` given with `--header`, else the default (`Described::head`).
    pub host: Option<String>,
    /// `--header` values, in order (never printed: they may hold credentials).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub token: Option<TokenText>,
    /// `Authorization: DPoP` instead of `Bearer`: a `DPoP` proof header was given.
    pub dpop_scheme: bool,
}

/// A command-line piece that cannot be sent (exit 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Described {
    /// Checks the pieces.
    pub fn new(
        method: &str,
        path: &str,
        host: Option<&str>,
        headers: &[String],
        token: Option<TokenText>,
    ) -> Result<Described, Usage> {
        if method.is_empty() || !method.bytes().all(is_tchar) {
            return Err(Usage(format!(
                "--method {method:?} is not an HTTP method token (letters, digits and !#$%&'*+-.^_`|~)"
            )));
        }
        if !path.starts_with('/') {
            return Err(Usage(format!(
                "PATH {path:?} must start with '/': give the path (and query) as the client sends it, e.g. /orders/42?x=1"
            )));
        }
        if let Some(bad) = path.bytes().find(|b| *b <= b' ' || *b == 0x7f) {
            return Err(Usage(format!(
                "PATH holds a space or control character (byte 0x{bad:02x}); percent-encode it as a client would"
            )));
        }
        let mut parsed = Vec::with_capacity(headers.len());
        for header in headers {
            parsed.push(parse_header(header)?);
        }
        let has = |name: &HeaderName| parsed.iter().any(|(n, _)| n == name);
        if host.is_some() && has(&HOST) {
            return Err(Usage(
                "give the host either with --host or with --header 'Host: ...', not both".into(),
            ));
        }
        if token.is_some() && has(&AUTHORIZATION) {
            return Err(Usage(
                "give the token either with --token/--token-file or with --header 'Authorization: ...', not both"
                    .into(),
            ));
        }
        if let Some(h) = host {
            HeaderValue::from_str(h).map_err(|_| {
                Usage(format!(
                    "--host {h:?} holds characters a header cannot carry"
                ))
            })?;
        }
        let dpop_scheme = has(&DPOP);
        Ok(Described {
            method: method.to_owned(),
            target: path.to_owned(),
            host: host.map(str::to_owned),
            headers: parsed,
            token,
            dpop_scheme,
        })
    }

    /// The HTTP/1.1 request head, as a client would write it; `default_host` is its `Host` when
    /// neither `--host` nor a `Host` header was given.
    pub fn head(&self, default_host: &str) -> Vec<u8> {
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(self.method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(self.target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        if !self.has_host_header() {
            let host = self.host.as_deref().unwrap_or(default_host);
            push_header(&mut head, b"host", host.as_bytes());
        }
        if let Some(token) = &self.token {
            let scheme = if self.dpop_scheme { "DPoP " } else { "Bearer " };
            let mut value = scheme.as_bytes().to_vec();
            value.extend_from_slice(token.expose().as_bytes());
            push_header(&mut head, b"authorization", &value);
        }
        for (name, value) in &self.headers {
            push_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head
    }

    /// Whether the request names its host itself (a `Host` header given with `--header`).
    pub fn has_host_header(&self) -> bool {
        self.headers.iter().any(|(n, _)| n == HOST)
    }

    /// What `serve`'s byte-level framing observer would report for this head: it flags both
    /// `Content-Length` and `Transfer-Encoding`, which hyper merges into a chunked request.
    pub fn framing(&self) -> Framing {
        let has = |name: &HeaderName| self.headers.iter().any(|(n, _)| n == name);
        if has(&CONTENT_LENGTH) && has(&TRANSFER_ENCODING) {
            Framing::ContentLengthAndTransferEncoding
        } else {
            Framing::Clean
        }
    }

    /// Header names in order, for the report (values are never shown).
    pub fn header_names(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|(n, _)| n.as_str().to_owned())
            .collect()
    }
}

fn push_header(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// `Name: value` (the value trimmed), or why not.
fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), Usage> {
    let Some((name, value)) = text.split_once(':') else {
        // Nothing of the argument is repeated: without a ':' it may all be a credential.
        return Err(Usage(
            "--header: no ':' between name and value; expected --header 'Name: value'".into(),
        ));
    };
    // The value may be a credential: only the name is repeated.
    let bad = |why: &str| {
        Usage(format!(
            "--header {name:?}: {why}; expected --header 'Name: value'"
        ))
    };
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(bad(
            "the name must be a non-empty HTTP token, with no spaces",
        ));
    }
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("invalid header name"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| bad("the value holds a character a header cannot carry"))?;
    Ok((name, value))
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What hyper's parser answered when it refused the head itself (no request reached the phases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParserAnswer {
    /// The status hyper sent, when it sent one.
    pub status: Option<u16>,
}

/// Feeds `head` to hyper's HTTP/1.1 server (buffer limit as `serve` sets it from
/// `max_header_bytes`) and returns the request it hands its service.
pub async fn parse(
    head: Vec<u8>,
    max_header_bytes: usize,
) -> Result<Request<Incoming>, ParserAnswer> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = oneshot::channel();
    let slot = Arc::new(Mutex::new(Some(tx)));
    let service = service_fn(move |req: Request<Incoming>| {
        let sender = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(sender) = sender {
            let _ = sender.send(req);
        }
        async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
    });
    let mut builder = http1::Builder::new();
    builder.max_buf_size((max_header_bytes * 2).max(HYPER_MIN_BUF));
    let connection = tokio::spawn(builder.serve_connection(TokioIo::new(server), service));
    let (mut reader, mut writer) = tokio::io::split(&mut client);
    // hyper may refuse (and close) before the whole head is written: a failed write is fine.
    let write = async {
        let _ = writer.write_all(&head).await;
    };
    let (request, ()) = tokio::join!(tokio::time::timeout(PARSE_DEADLINE, rx), write);
    match request {
        Ok(Ok(request)) => {
            // Dropping `client` ends the connection task.
            Ok(request)
        }
        _ => {
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(PARSE_DEADLINE, reader.read_to_end(&mut answer)).await;
            connection.abort();
            let status = std::str::from_utf8(&answer)
                .ok()
                .and_then(|text| text.split(' ').nth(1))
                .and_then(|code| code.parse().ok());
            Err(ParserAnswer { status })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(headers: &[&str]) -> Result<Described, Usage> {
        let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
        Described::new("GET", "/a", None, &headers, None)
    }

    #[test]
    fn header_without_colon_is_a_usage_error_that_does_not_repeat_the_value() {
        let err = described(&["Authorization Bearer secret-value"])
            .err()
            .unwrap();
        assert!(err.0.contains("no ':'"), "{err}");
        assert!(!err.0.contains("secret-value"), "{err}");
    }

    #[test]
    fn header_name_with_space_is_a_usage_error() {
        let err = described(&["X Foo: 1"]).err().unwrap();
        assert!(err.0.contains("HTTP token"), "{err}");
    }

    #[test]
    fn path_without_leading_slash_is_a_usage_error() {
        let err = Described::new("GET", "orders", None, &[], None)
            .err()
            .unwrap();
        assert!(err.0.contains("must start with '/'"), "{err}");
    }

    #[test]
    fn host_twice_is_a_usage_error() {
        let headers = vec!["Host: a.example".to_owned()];
        let err = Described::new("GET", "/", Some("b.example"), &headers, None)
            .err()
            .unwrap();
        assert!(err.0.contains("not both"), "{err}");
    }

    #[test]
    fn dpop_header_switches_the_scheme() {
        let token = TokenText::new("abc.def.ghi").ok();
        let headers = vec!["DPoP: proof".to_owned()];
        let d = Described::new("GET", "/", None, &headers, token).unwrap();
        let head = String::from_utf8(d.head("h")).unwrap();
        assert!(
            head.contains("authorization: DPoP abc.def.ghi\r\n"),
            "{head}"
        );
    }

    #[test]
    fn both_content_length_and_transfer_encoding_are_flagged_like_the_framing_observer() {
        let d = described(&["Content-Length: 3", "Transfer-Encoding: chunked"]).unwrap();
        assert_eq!(d.framing(), Framing::ContentLengthAndTransferEncoding);
        assert_eq!(
            described(&["Content-Length: 0"]).unwrap().framing(),
            Framing::Clean
        );
    }

    #[tokio::test]
    async fn hyper_parses_the_head_into_a_request() {
        let headers = vec!["X-Thing: 1".to_owned()];
        let d = Described::new("delete", "/a/../b?q=1", None, &headers, None).unwrap();
        let req = parse(d.head("h.example"), 16384).await.unwrap();
        assert_eq!(req.method().as_str(), "delete");
        assert_eq!(req.uri().path(), "/a/../b");
        assert_eq!(req.uri().query(), Some("q=1"));
        assert_eq!(req.headers()["host"], "h.example");
        assert_eq!(req.headers()["x-thing"], "1");
    }

    #[tokio::test]
    async fn a_head_hyper_refuses_reports_its_status() {
        // Far beyond the read buffer (2 x max_header_bytes): hyper itself answers 431.
        let big = format!("X-Big: {}", "a".repeat(400_000));
        let d = described(&[&big]).unwrap();
        let answer = parse(d.head("h"), 16384).await.err();
        assert_eq!(answer.map(|a| a.status), Some(Some(431)));
    }
}
