//! The end of the walk: the answer `serve` would send for a rejection (rendered by
//! `Rejection::into_response` itself: status, error, `WWW-Authenticate`, `Retry-After`), or what
//! the upstream would receive for a forwarded request (taken from the `UpstreamRequest`
//! `Identity::mint` made: identity headers, the decoded assertion, the headers not passed on).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http_body_util::BodyExt as _;
use serde_json::{Map, Value};

use super::report::{AssertionStep, Outcome, Report};
use super::State;
use crate::config::{Config, Route};
use crate::identity::Outgoing;
use crate::identity::UpstreamRequest;
use crate::reason::Reason;
use crate::rejection::Rejection;

impl State {
    /// The report, ending in the answer `serve` would send for `rejection`.
    pub(super) async fn rejected(
        &self,
        mut report: Report,
        rejection: &Rejection,
        route: Option<&Route>,
    ) -> Report {
        let response = rejection.into_response(&self.config.server.realm);
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut outcome = Outcome::new("rejected");
        outcome.status = Some(parts.status.as_u16());
        outcome.error = text(&json["error"]);
        outcome.error_description = text(&json["error_description"]);
        outcome.www_authenticate = header(WWW_AUTHENTICATE);
        outcome.retry_after = header(RETRY_AFTER);
        outcome.reason = Some(rejection.reason().as_str());
        outcome.route = route.map(|r| r.id.to_string());
        report.exit_code = match rejection.reason() {
            Reason::Unavailable | Reason::Internal => 1,
            _ => 3,
        };
        report.outcome = outcome;
        report
    }
}

/// The outcome of a request minted for the upstream.
pub(super) fn forwarded(
    config: &Config,
    route: &Route,
    auth: Option<&'static str>,
    upstream: UpstreamRequest,
    original_headers: Vec<String>,
) -> Outcome {
    let Outgoing { parts, target, .. } = upstream.into_outgoing();
    let mut outcome = Outcome::new("forwarded");
    outcome.route = Some(route.id.to_string());
    outcome.auth = auth;
    outcome.upstream = Some(format!(
        "{}{}",
        target.origin,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    ));
    let headers = &parts.headers;
    let identity = &config.identity;
    let mut plain = Map::new();
    for (name, _) in &identity.headers {
        if let Some(value) = headers.get(name) {
            plain.insert(
                name.as_str().to_owned(),
                Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
            );
        }
    }
    outcome.identity_headers = Some(plain);
    outcome.assertion = headers
        .get(&identity.header)
        .and_then(|v| v.to_str().ok())
        .and_then(|jws| decode_assertion(identity.header.as_str(), jws));
    outcome.assertion_note = match (&outcome.assertion, auth) {
        (Some(_), _) => None,
        (None, None) => Some("an anonymous request carries no identity".to_owned()),
        (None, Some(_)) if identity.signing_key.is_none() => {
            Some("no [identity] signing_key is configured: no signed assertion is sent".to_owned())
        }
        (None, Some(_)) => Some("no assertion was added".to_owned()),
    };
    outcome.removed_headers = Some(
        original_headers
            .into_iter()
            .filter(|name| !headers.contains_key(name.as_str()))
            .collect(),
    );
    outcome
}

/// A forwarded request's report.
pub(super) fn finish(mut report: Report, outcome: Outcome) -> Report {
    report.exit_code = match outcome.verdict {
        "forwarded" | "answered" => 0,
        _ => 3,
    };
    report.outcome = outcome;
    report
}

/// The `error_description` a client would get.
pub(super) async fn description(rejection: &Rejection, realm: &str) -> String {
    let body = rejection
        .into_response(realm)
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error_description"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The assertion's JOSE header and claims (decoded only: it was just signed by this process).
fn decode_assertion(header: &str, jws: &str) -> Option<AssertionStep> {
    let mut parts = jws.split('.');
    let decode = |part: Option<&str>| -> Option<Value> {
        let bytes = URL_SAFE_NO_PAD.decode(part?).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let jose_header = decode(parts.next())?;
    let claims = decode(parts.next())?;
    Some(AssertionStep {
        header: header.to_owned(),
        jose_header,
        claims,
    })
}
