//! The admin listener (SPEC §7): `/healthz`, `/readyz`, `/metrics` (Prometheus text format) and
//! the identity JWKS (`/jwks.json`), GET or HEAD only (405 otherwise). It never proxies; any
//! other path is 404.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::Request;

use super::{Handler, SharedGateway};
use crate::inbound::{ConnInfo, Framing};
use crate::telemetry::metrics;

/// The admin listener's handler: reads the current gateway generation, never proxies.
#[derive(Clone)]
pub(super) struct Admin(pub(super) SharedGateway);

impl Handler for Admin {
    type Body = Full<Bytes>;

    fn handle(
        &self,
        req: Request<Incoming>,
        _conn: Arc<ConnInfo>,
        _framing: Framing,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send + use<> {
        std::future::ready(answer(&self.0, &req))
    }
}

fn answer(gateway: &SharedGateway, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method_not_allowed", "error_description": "use GET"}),
        );
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/jwks.json" => gateway.load().jwks_response(),
        "/metrics" => {
            let body = gateway.load().metrics().encode();
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/readyz" => {
            let missing = gateway.load().not_ready_issuers();
            if missing.is_empty() {
                json(StatusCode::OK, serde_json::json!({"ready": true}))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"ready": false, "missing": missing}),
                )
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no_route", "error_description": "unknown admin path"}),
        ),
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
