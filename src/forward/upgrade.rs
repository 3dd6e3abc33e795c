//! WebSocket, the one protocol switch ever tunnelled (SPEC §4 items 2 and 7): spliced once the
//! upstream answered `101` switching to `websocket`.

use http::Response;
use hyper_util::rt::TokioIo;

use super::UpstreamBody;

/// Whether a `101 Switching Protocols` answer switched to WebSocket, the one protocol the client
/// may have asked for (anything else would give it a raw connection of another kind).
pub(super) fn switched_to_websocket(response: &Response<UpstreamBody>) -> bool {
    let mut upgrades = response.headers().get_all(http::header::UPGRADE).iter();
    matches!(
        (upgrades.next(), upgrades.next()),
        (Some(value), None) if value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
    )
}

/// Splices an upgraded client connection to the upgraded upstream connection.
pub(super) fn splice(client: hyper::upgrade::OnUpgrade, upstream: &mut Response<UpstreamBody>) {
    let upstream = hyper::upgrade::on(upstream);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(
                    client_ok = c.is_ok(),
                    upstream_ok = u.is_ok(),
                    "upgrade failed"
                );
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%error, "upgraded connection ended");
        }
    });
}
