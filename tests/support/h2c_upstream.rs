//! An upstream that would accept a protocol switch, the way many real servers honour
//! `Upgrade: h2c` (RFC 7540 §3.2): raw TCP on `127.0.0.1:0`, stopped when dropped. It records
//! every request head exactly as it arrived, and
//! - when it switches (see [`Switch`]), answers `101 Switching Protocols` with `Upgrade: h2c`
//!   and then sends [`TUNNEL_MARKER`] (bytes no HTTP/1.1 answer contains) and closes;
//! - otherwise answers `200` with the plain body [`PLAIN_BODY`] and keeps the connection.
//!
//! Only bodiless requests are supported. What the proxy should do with either answer is left to
//! the tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::wire::{head_end, head_values};

/// What the upstream sends after its 101: an HTTP/2 server would start with SETTINGS here; a
/// client that sees these bytes has a raw tunnel to the upstream.
pub const TUNNEL_MARKER: &str = "H2C-TUNNEL-OPENED-BY-UPSTREAM";

/// The body of a plain (non-switching) answer.
pub const PLAIN_BODY: &str = "plain answer from the h2c-capable upstream";

/// When the upstream answers 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// Whenever an `Upgrade` header lists `h2c` (any case), as an h2c-capable server does.
    OnH2c,
    /// To every request, upgrade or not (a broken or hostile upstream).
    Always,
}

pub struct H2cUpstream {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    switched: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for H2cUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2cUpstream {
    pub async fn start(switch: Switch) -> H2cUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let switched = Arc::new(AtomicUsize::new(0));
        let (h, s) = (heads.clone(), switched.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, switch, h.clone(), s.clone()));
            }
        });
        H2cUpstream {
            addr,
            heads,
            switched,
            task,
        }
    }

    /// Every request head received, as text (request line first).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }

    /// How many times it answered 101.
    pub fn switched(&self) -> usize {
        self.switched.load(Ordering::SeqCst)
    }
}

/// Whether a request head asks for h2c in any of its `Upgrade` headers.
pub fn asks_h2c(head: &str) -> bool {
    head_values(head, "upgrade")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("h2c"))
}

async fn serve(
    mut tcp: TcpStream,
    switch: Switch,
    heads: Arc<Mutex<Vec<String>>>,
    switched: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = head_end(&buf) {
            let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
            buf.drain(..end);
            heads.lock().expect("lock").push(head.clone());
            if switch == Switch::Always || asks_h2c(&head) {
                switched.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n\
                     {TUNNEL_MARKER}"
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
                let _ = tcp.shutdown().await;
                return;
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{PLAIN_BODY}",
                PLAIN_BODY.len()
            );
            if tcp.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
