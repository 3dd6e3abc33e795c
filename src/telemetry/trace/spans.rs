//! What an exported span says (SPEC §8): names, kinds and attributes of the request's server
//! span and of its client spans (issuer calls, the upstream call).
//!
//! Every attribute value comes from a typed, bounded source — the method, a configured route
//! or issuer id, a status code, the [`AuthMethod`] and [`Reason`] enums, a host from the
//! configuration or discovery — so a token or a claim value (`sub` included) has no way in: no
//! field here can hold one. [`ServerSpan::from_access`] takes the access line and leaves its
//! `sub` and `client_id` behind.
//!
//! Names follow OpenTelemetry's HTTP conventions where they fit: `http.request.method`
//! (`_OTHER` plus `http.request.method_original` for an extension method, which keeps span
//! names bounded), `http.route`, `http.response.status_code`, `server.address`, `server.port`,
//! `error.type`; tokengate's own are `tokengate.auth`, `tokengate.reason`, `tokengate.call`,
//! `tokengate.issuer`. A server span is an error on a 5xx, a client span on no answer or ≥ 400.
//!
//! Left to others: ids and timing (`export.rs`), when spans are recorded (the lead's phases).

use std::borrow::Cow;

use http::{Method, StatusCode};
use opentelemetry::KeyValue;

use crate::reason::{AuthMethod, Reason};
use crate::telemetry::AccessLine;

/// The request's span (kind SERVER), recorded once when the response head is ready.
#[derive(Debug, Clone, Copy)]
pub struct ServerSpan<'a> {
    pub method: &'a Method,
    /// The route id; `None` when no route matched (or the request was refused before routing).
    pub route: Option<&'a str>,
    pub status: StatusCode,
    /// How the caller was verified, if it was.
    pub auth: Option<AuthMethod>,
    /// The rejection reason, or a note on a forwarded request.
    pub reason: Option<Reason>,
}

impl<'a> ServerSpan<'a> {
    /// The span of a request whose access line is `line` and whose answer is `status`.
    pub fn from_access(line: &'a AccessLine, status: StatusCode) -> ServerSpan<'a> {
        ServerSpan {
            method: &line.method,
            route: line.route.as_deref(),
            status,
            auth: line.auth,
            reason: line.reason,
        }
    }

    /// `GET orders-write`, or just the method without a route.
    pub(super) fn name(&self) -> Cow<'static, str> {
        let method = method_name(self.method).unwrap_or("HTTP");
        match self.route {
            Some(route) => Cow::Owned(format!("{method} {route}")),
            None => Cow::Borrowed(method),
        }
    }

    pub(super) fn attributes(&self) -> Vec<KeyValue> {
        let mut out = Vec::with_capacity(6);
        push_method(&mut out, self.method);
        if let Some(route) = self.route {
            out.push(KeyValue::new("http.route", route.to_owned()));
        }
        out.push(KeyValue::new(
            "http.response.status_code",
            i64::from(self.status.as_u16()),
        ));
        if let Some(auth) = self.auth {
            out.push(KeyValue::new("tokengate.auth", auth.as_str()));
        }
        if let Some(reason) = self.reason {
            out.push(KeyValue::new("tokengate.reason", reason.as_str()));
        }
        out
    }

    pub(super) fn is_error(&self) -> bool {
        self.status.is_server_error()
    }
}

/// Which outgoing call a client span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// OIDC discovery (`/.well-known/openid-configuration`).
    Discovery,
    /// An issuer's key set.
    Jwks,
    Userinfo,
    Introspection,
    /// The forwarded request.
    Upstream,
}

impl CallKind {
    /// The `tokengate.call` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Discovery => "discovery",
            CallKind::Jwks => "jwks",
            CallKind::Userinfo => "userinfo",
            CallKind::Introspection => "introspection",
            CallKind::Upstream => "upstream",
        }
    }

    /// The span name.
    fn span_name(self) -> &'static str {
        match self {
            CallKind::Discovery => "oidc discovery",
            CallKind::Jwks => "jwks fetch",
            CallKind::Userinfo => "userinfo",
            CallKind::Introspection => "introspection",
            CallKind::Upstream => "upstream",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// An answer arrived with this status.
    Status(u16),
    /// No answer: a short, fixed description (`"timeout"`, `"connect"`, `"too_large"`...),
    /// the `error.type` attribute. Never an error message, which could quote a URL or a value.
    Failed(&'static str),
}

/// One outgoing call (kind CLIENT), a child of the request's span or of a background task's.
#[derive(Debug, Clone, Copy)]
pub struct ClientSpan<'a> {
    pub method: &'a Method,
    /// `server.address`: the host called, from the configuration or discovery.
    pub host: Option<&'a str>,
    pub port: Option<u16>,
    /// `tokengate.issuer`: the configured id of the issuer called.
    pub issuer: Option<&'a str>,
    pub outcome: CallOutcome,
}

impl<'a> ClientSpan<'a> {
    pub fn new(method: &'a Method, outcome: CallOutcome) -> ClientSpan<'a> {
        ClientSpan {
            method,
            host: None,
            port: None,
            issuer: None,
            outcome,
        }
    }

    /// The host and port called (`url.host_str()`, `url.port_or_known_default()`).
    pub fn server(mut self, host: Option<&'a str>, port: Option<u16>) -> ClientSpan<'a> {
        self.host = host;
        self.port = port;
        self
    }

    pub fn issuer(mut self, id: &'a str) -> ClientSpan<'a> {
        self.issuer = Some(id);
        self
    }

    pub(super) fn name(kind: CallKind) -> Cow<'static, str> {
        Cow::Borrowed(kind.span_name())
    }

    pub(super) fn attributes(&self, kind: CallKind) -> Vec<KeyValue> {
        let mut out = Vec::with_capacity(7);
        out.push(KeyValue::new("tokengate.call", kind.as_str()));
        push_method(&mut out, self.method);
        if let Some(host) = self.host {
            out.push(KeyValue::new("server.address", host.to_owned()));
        }
        if let Some(port) = self.port {
            out.push(KeyValue::new("server.port", i64::from(port)));
        }
        if let Some(issuer) = self.issuer {
            out.push(KeyValue::new("tokengate.issuer", issuer.to_owned()));
        }
        match self.outcome {
            CallOutcome::Status(status) => {
                out.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 400 {
                    out.push(KeyValue::new("error.type", status.to_string()));
                }
            }
            CallOutcome::Failed(what) => out.push(KeyValue::new("error.type", what)),
        }
        out
    }

    pub(super) fn is_error(&self) -> bool {
        match self.outcome {
            CallOutcome::Status(status) => status >= 400,
            CallOutcome::Failed(_) => true,
        }
    }
}

/// The method as OpenTelemetry names it: one of the registered ones, else `None` (`_OTHER`).
fn method_name(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => return None,
    })
}

fn push_method(out: &mut Vec<KeyValue>, method: &Method) {
    match method_name(method) {
        Some(name) => out.push(KeyValue::new("http.request.method", name)),
        None => {
            out.push(KeyValue::new("http.request.method", "_OTHER"));
            out.push(KeyValue::new(
                "http.request.method_original",
                method.as_str().to_owned(),
            ));
        }
    }
}
