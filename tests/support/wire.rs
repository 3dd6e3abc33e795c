//! Raw HTTP/1.1 for the security tests: bytes a client library would refuse to send (a
//! lower-case method, `Host: a b`, `X_Forwarded_User`, `Upgrade: h2c`) go out as written, and the
//! answers are parsed from the bytes that came back, so a test sees exactly what the proxy
//! wrote: every pipelined response, and any byte that follows a head that should have had no
//! body. Chunked bodies are decoded; trailers are ignored.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The head as text, status line included.
    pub head: String,
    /// Names lower-cased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What one exchange produced: the bytes read, and whether the server closed the connection
/// before `wait` passed.
pub struct Exchange {
    pub bytes: Vec<u8>,
    pub closed: bool,
}

impl Exchange {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Every complete response, in order; `bodiless[i]` says response `i` answers a HEAD
    /// (missing entries: not a HEAD).
    pub fn replies(&self, bodiless: &[bool]) -> Vec<Reply> {
        let mut rest = &self.bytes[..];
        let mut out = Vec::new();
        while let Some((reply, after)) =
            parse_one(rest, bodiless.get(out.len()).copied().unwrap_or(false))
        {
            out.push(reply);
            rest = after;
        }
        out
    }

    /// The one response a test expects; panics with the raw text if there is none.
    pub fn reply(&self) -> Reply {
        self.replies(&[])
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no HTTP response in {:?}", self.text()))
    }
}

/// Writes `bytes`, then reads until the server closes or `wait` passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Exchange {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    read_until_closed(&mut tcp, wait).await
}

/// Reads from `tcp` until the server closes (or resets) or `wait` passes.
pub async fn read_until_closed(tcp: &mut TcpStream, wait: Duration) -> Exchange {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Exchange { bytes, closed }
}

/// `METHOD target HTTP/1.1` with `Host: host`, the given header lines (each without CRLF) and
/// `Connection: close`, no body.
pub fn request(method: &str, target: &str, host: &str, headers: &[&str]) -> Vec<u8> {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for line in headers {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("Connection: close\r\n\r\n");
    text.into_bytes()
}

/// Index just past the first `\r\n\r\n`.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The values of `name` in a request or response head as text (case-insensitive name).
pub fn head_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn parse_one(bytes: &[u8], head_request: bool) -> Option<(Reply, &[u8])> {
    let end = head_end(bytes)?;
    let head = String::from_utf8_lossy(&bytes[..end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &bytes[end..];
    let reply = |body: Vec<u8>| Reply {
        status,
        head: head.clone(),
        headers: headers.clone(),
        body,
    };
    if head_request || status < 200 || status == 204 || status == 304 {
        return Some((reply(Vec::new()), rest));
    }
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let (body, after) = dechunk(rest)?;
        return Some((reply(body), after));
    }
    match value("content-length") {
        Some(len) => {
            let len: usize = len.parse().ok()?;
            let body = rest.get(..len)?.to_vec();
            Some((reply(body), &rest[len..]))
        }
        // Delimited by the end of the connection.
        None => Some((reply(rest.to_vec()), &rest[rest.len()..])),
    }
}

/// Decodes a chunked body; `None` if it is incomplete.
fn dechunk(mut rest: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailer section: lines until an empty one.
            let end = rest.windows(2).position(|w| w == b"\r\n")?;
            if end == 0 {
                return Some((body, &rest[2..]));
            }
            let trailers_end = head_end(rest)?;
            return Some((body, &rest[trailers_end..]));
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// One plain HTTP/1.1 `GET` of `path`; its status, or `None` when no response came back.
pub async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let bytes = request("GET", path, "tokengate.test", &[]);
    let exchange = exchange(addr, &bytes, Duration::from_secs(5)).await;
    exchange.replies(&[]).first().map(|r| r.status)
}

/// Polls [`get_status`] on `path` until it answers 200, at most `limit`: the statuses seen, and
/// whether 200 came (the check that other clients are still served during an attack).
pub async fn served_within(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> (Vec<Option<u16>>, bool) {
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    loop {
        let status = get_status(addr, path).await;
        statuses.push(status);
        if status == Some(200) {
            return (statuses, true);
        }
        if started.elapsed() >= limit {
            return (statuses, false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
