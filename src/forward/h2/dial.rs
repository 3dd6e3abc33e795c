//! Opening one HTTP/2 connection: TCP, then TLS with ALPN `h2` for `https://` (prior knowledge,
//! h2c, for `http://`), the HTTP/2 preface, and the server's first SETTINGS frame, all within
//! `connect_timeout`.
//!
//! A connection is handed out only once the server's SETTINGS have been read, so the pool knows
//! its stream limit before putting streams on it. `initial_max_send_streams(1)` keeps the small
//! window between reading those bytes and h2 applying them harmless too: until h2 has applied
//! them, it opens one stream and queues the rest instead of opening 100 that a server allowing
//! fewer would refuse (STACK-NOTES B5).
//!
//! TLS is done with tokio-rustls directly rather than through hyper-rustls, whose `http2` feature
//! we do not build; it also lets a server that does not speak h2 be named as such ([`H2Error::NoH2`]).
//!
//! Leaves to others: where the connection goes ([`super::checkout`]).

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsConnector;

use super::body::ReqBody;
use super::checkout::{Conn, Signal};
use super::frames::{Observed, Peer};
use super::{H2Error, H2Limits};

const ALPN_H2: &[u8] = b"h2";

/// How to reach one origin.
pub(super) struct Dialer {
    /// Without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    http2: http2::Builder<TokioExecutor>,
    connect_timeout: Duration,
}

impl Dialer {
    pub(super) fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        limits: &H2Limits,
    ) -> Result<Self, String> {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let tls = match tls {
            Some(config) => {
                // The caller's configuration may be shared with HTTP/1.1 clients: offer only h2.
                let mut config = (*config).clone();
                config.alpn_protocols = vec![ALPN_H2.to_vec()];
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| format!("upstream host {host}: {e}"))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            None => None,
        };
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .initial_max_send_streams(1)
            .keep_alive_interval(limits.keep_alive_interval)
            .keep_alive_timeout(limits.keep_alive_timeout)
            .keep_alive_while_idle(true);
        Ok(Dialer {
            host,
            port,
            tls,
            http2,
            connect_timeout: limits.connect_timeout,
        })
    }

    /// A new connection whose server's SETTINGS are known; the socket holds `permit` until it
    /// closes.
    pub(super) async fn dial(
        &self,
        permit: OwnedSemaphorePermit,
        signal: &Arc<Signal>,
    ) -> Result<Conn, H2Error> {
        tokio::time::timeout(self.connect_timeout, self.dial_now(permit, signal))
            .await
            .map_err(|_| {
                H2Error::Connect(
                    format!("no HTTP/2 connection within {:?}", self.connect_timeout).into(),
                )
            })?
    }

    async fn dial_now(
        &self,
        permit: OwnedSemaphorePermit,
        signal: &Arc<Signal>,
    ) -> Result<Conn, H2Error> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| H2Error::Connect(e.into()))?;
        // Small frames (HEADERS, WINDOW_UPDATE, PING) must not wait for Nagle.
        tcp.set_nodelay(true)
            .map_err(|e| H2Error::Connect(e.into()))?;
        match &self.tls {
            None => self.handshake(tcp, permit, signal).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(tls_error)?;
                if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                    return Err(H2Error::NoH2);
                }
                self.handshake(tls, permit, signal).await
            }
        }
    }

    async fn handshake<S>(
        &self,
        io: S,
        permit: OwnedSemaphorePermit,
        signal: &Arc<Signal>,
    ) -> Result<Conn, H2Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = Arc::new(Peer::new(Arc::clone(signal)));
        let io = TokioIo::new(Observed::new(io, Arc::clone(&peer), permit));
        let (sender, connection) = self
            .http2
            .handshake::<_, ReqBody>(io)
            .await
            .map_err(|e| H2Error::Connect(e.into()))?;
        // Ends when the server or the keep-alive ends the connection, or when the pool drops its
        // sender (idle, or the pool itself is gone) and the last stream is done.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
        });
        if !peer.settled().await {
            return Err(H2Error::Connect(
                "the upstream closed the connection before its HTTP/2 SETTINGS".into(),
            ));
        }
        Ok(Conn::new(sender, peer, Arc::clone(signal)))
    }
}

/// A TLS failure; a server that refused every protocol we offer (only `h2`) is [`H2Error::NoH2`].
fn tls_error(error: std::io::Error) -> H2Error {
    let no_h2 = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
            )
        });
    if no_h2 {
        H2Error::NoH2
    } else {
        H2Error::Connect(error.into())
    }
}
