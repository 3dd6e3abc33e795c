//! The admin listener (SPEC §7): health, readiness, and later metrics and the identity JWKS.
//! It never proxies; any other path is 404.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::SharedGateway;

pub async fn serve(
    listener: TcpListener,
    gateway: SharedGateway,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _peer)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let gateway = gateway.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(answer(&gateway, &req)) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(tcp), service)
            .into_owned();
        let watched = graceful.watcher().watch(connection);
        tokio::spawn(async move {
            let _ = watched.await;
        });
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
        "/jwks.json" => gateway.load().jwks().response(),
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
