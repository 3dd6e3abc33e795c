//! Detecting HTTP/1 request heads that carry both `Content-Length` and `Transfer-Encoding`.
//!
//! SPEC §4 item 0 answers such a request with 400 and closes the connection. hyper's HTTP/1
//! server accepts it: it reads the body as chunked, silently removes `Content-Length` from the
//! header map and disables keep-alive (`proto/h1/role.rs`), so a handler cannot tell that the
//! client sent both. [`FramingGuard`] sits between the socket (or the TLS stream) and hyper's
//! `TokioIo` and *observes* the bytes hyper reads; it never alters, drops, adds, delays or
//! copies a byte. hyper stays the real parser: the observer only follows the message framing
//! (heads, fixed-length and chunked bodies) closely enough to know where each request head
//! starts, and records in the shared [`HeadFlags`] the index of the first head with both fields.
//!
//! hyper dispatches the requests of an HTTP/1 connection strictly one after another in wire
//! order, pipelined ones included, and a head it rejects ends the connection. So the service
//! counts the requests it receives on the connection (0, 1, 2, ...) and asks
//! [`HeadFlags::had_cl_and_te`] with that count:
//!
//! ```ignore
//! let flags = Arc::new(HeadFlags::default());
//! let io = TokioIo::new(FramingGuard::new(tcp, flags.clone()));
//! let next = Arc::new(AtomicU64::new(0));
//! // in the service, for every request on this connection (HTTP/1 only):
//! let index = next.fetch_add(1, Ordering::Relaxed);
//! if flags.had_cl_and_te(index) { /* 400 + Connection: close, forward nothing */ }
//! ```
//!
//! The flag is always set in time: hyper can dispatch a request only after its whole head was
//! read, and the observer runs inside `poll_read` on those very bytes before hyper sees them.
//!
//! Where the observer cannot follow hyper with certainty it switches to passthrough for the rest
//! of the connection and never flags again: after the HTTP/2 prior-knowledge preface (and with
//! [`FramingGuard::passthrough`], for ALPN `h2`), after anything hyper rejects and closes on
//! (unknown version, `Transfer-Encoding` not ending in `chunked` or on HTTP/1.0, invalid or
//! differing `Content-Length`, bad line endings, obs-fold, bad chunk framing), after a flagged
//! request (hyper closes after it). After an `Upgrade` or CONNECT request the scan goes on (see
//! `Observer::next_message`). Passthrough only means "not flagged": hyper's
//! own handling (CL dropped, chunked body, connection closed afterwards) still applies.
//!
//! Heads are scanned with a small fixed state (the request line's method and version, the
//! current header name, the CL/TE value being read), so nothing is buffered and no head size cap
//! is needed (hyper enforces its own and answers 431); runs of bytes that only accumulate (other
//! fields' values, the request target, a header name) are taken whole, the rest byte by byte.
//! Body bytes are skipped arithmetically. Header lines httparse would reject are ignored, as with hyper's
//! `ignore_invalid_headers` (by default hyper rejects the whole request and closes instead).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Shared between a [`FramingGuard`] (writer) and the connection's service (reader).
#[derive(Debug, Default)]
pub struct HeadFlags {
    /// 1 + index of the first request head with both fields; 0 = none.
    first_cl_and_te: AtomicU64,
}

impl HeadFlags {
    /// Whether the request with this 0-based index on the connection had both
    /// `Content-Length` and `Transfer-Encoding`.
    pub fn had_cl_and_te(&self, request_index: u64) -> bool {
        request_index
            .checked_add(1)
            .is_some_and(|v| self.first_cl_and_te.load(Ordering::Acquire) == v)
    }

    /// Index of the first request head that had both fields, if any.
    pub fn first_cl_and_te(&self) -> Option<u64> {
        self.first_cl_and_te.load(Ordering::Acquire).checked_sub(1)
    }

    fn record(&self, request_index: u64) {
        let v = request_index.saturating_add(1);
        let _ = self
            .first_cl_and_te
            .compare_exchange(0, v, Ordering::Release, Ordering::Relaxed);
    }
}

/// An IO wrapper that watches the HTTP/1 bytes read through it (see the module docs).
#[derive(Debug)]
pub struct FramingGuard<IO> {
    inner: IO,
    observer: Observer,
}

impl<IO> FramingGuard<IO> {
    /// Observes a connection that may speak HTTP/1 (or HTTP/2 with prior knowledge).
    pub fn new(inner: IO, flags: Arc<HeadFlags>) -> Self {
        let observer = Observer::new(State::Preface(0), Some(flags));
        Self { inner, observer }
    }

    /// Observes nothing, e.g. for a TLS connection that negotiated `h2` by ALPN.
    pub fn passthrough(inner: IO) -> Self {
        let observer = Observer::new(State::Passthrough, None);
        Self { inner, observer }
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// Unwraps the IO.
    pub fn into_inner(self) -> IO {
        self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if let Some(new) = buf.filled().get(before..) {
                this.observer.feed(new);
            }
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The incremental framing follower.
#[derive(Debug)]
struct Observer {
    state: State,
    /// Index of the request whose head is (or will be) scanned next.
    index: u64,
    flags: Option<Arc<HeadFlags>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Connection start: this many bytes matched the HTTP/2 preface so far.
    Preface(usize),
    Head(Head),
    Fixed(u64),
    Chunked(Chunk),
    Passthrough,
}

/// Result of feeding a slice to a head or body scanner.
enum Step {
    /// The whole slice was consumed; more is needed.
    Partial,
    /// The head or body ended after this many bytes of the slice.
    Done(usize),
    /// hyper will reject this and close the connection.
    Malformed,
}

impl Observer {
    fn new(state: State, flags: Option<Arc<HeadFlags>>) -> Self {
        Self {
            state,
            index: 0,
            flags,
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let step = match &mut self.state {
                State::Passthrough => return,
                State::Preface(matched) => {
                    let m = *matched;
                    let want = H2_PREFACE.get(m..).unwrap_or_default();
                    let n = want.len().min(data.len());
                    if want.get(..n) == data.get(..n) {
                        *matched = m + n;
                        if m + n == H2_PREFACE.len() {
                            self.state = State::Passthrough;
                        }
                        return;
                    }
                    // Not HTTP/2: what matched so far is the start of an HTTP/1 request.
                    self.state = State::Head(Head::default());
                    self.feed(H2_PREFACE.get(..m).unwrap_or_default());
                    continue;
                }
                State::Head(head) => head.feed(data),
                State::Fixed(remaining) => {
                    let n = usize::try_from(*remaining).map_or(data.len(), |r| r.min(data.len()));
                    *remaining -= n as u64;
                    if *remaining > 0 {
                        Step::Partial
                    } else {
                        Step::Done(n)
                    }
                }
                State::Chunked(chunk) => chunk.feed(data),
            };
            match step {
                Step::Partial => return,
                Step::Malformed => {
                    self.state = State::Passthrough;
                    return;
                }
                Step::Done(n) => {
                    match std::mem::replace(&mut self.state, State::Passthrough) {
                        State::Head(head) => self.end_of_head(&head),
                        _ => self.next_message(),
                    }
                    data = data.get(n..).unwrap_or_default();
                }
            }
        }
    }

    /// Decides what follows a complete head, the way hyper's `Server::parse` does.
    fn end_of_head(&mut self, h: &Head) {
        let index = self.index;
        self.index = index.saturating_add(1);
        self.state = match (h.cl, h.te_chunked) {
            (Cl::Len(_) | Cl::Bad, Some(_)) => {
                if let Some(flags) = &self.flags {
                    flags.record(index);
                }
                State::Passthrough // hyper closes the connection after this request
            }
            (Cl::Absent, Some(true)) if h.http11 => State::Chunked(Chunk::Start),
            (Cl::Len(n), None) if n > 0 => State::Fixed(n),
            (Cl::Absent | Cl::Len(_), None) => return self.next_message(),
            (Cl::Absent, Some(_)) | (Cl::Bad, None) => State::Passthrough, // hyper rejects it
        };
    }

    /// After an `Upgrade` or CONNECT request the scan goes on: if the tunnel opens, hyper
    /// dispatches nothing more, so whatever the tunnel's bytes look like cannot matter; if it
    /// does not (a non-101 answer), hyper keeps reading requests and so must we.
    fn next_message(&mut self) {
        self.state = State::Head(Head::default());
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Leading,
    Method,
    Target,
    LineStart,
    Name,
    Value,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Field {
    #[default]
    Other,
    ContentLength,
    TransferEncoding,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Cl {
    #[default]
    Absent,
    Len(u64),
    /// Invalid, or differing values.
    Bad,
}

/// One request head being scanned, and what was learnt from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Head {
    phase: Phase,
    /// A CR was seen; only LF may follow.
    cr: bool,
    method: Tok<7>,
    /// The last space-separated token of the request line (the version).
    last: Tok<8>,
    name: Tok<17>,
    field: Field,
    /// The current header line is valid (httparse would not reject it).
    line_ok: bool,
    value: Value,
    http11: bool,
    cl: Cl,
    /// `Some(last coding is chunked)` once a `Transfer-Encoding` line was seen.
    te_chunked: Option<bool>,
}

impl Head {
    fn feed(&mut self, data: &[u8]) -> Step {
        let mut i = 0;
        while let Some(rest) = data.get(i..).filter(|r| !r.is_empty()) {
            // Runs of bytes that only accumulate are taken whole; the byte that ends a run
            // (a delimiter, a line end) goes through `step` like every other.
            match self.run(rest) {
                Some(n) if n == rest.len() => return Step::Partial,
                Some(n) => i += n,
                None => {}
            }
            let Some(&b) = data.get(i) else { break };
            i += 1;
            match self.step(b) {
                Ok(false) => {}
                Ok(true) => return Step::Done(i),
                Err(Malformed) => return Step::Malformed,
            }
        }
        Step::Partial
    }

    /// How many leading bytes of `rest` leave the state as `step` would, one by one, without a
    /// decision: with no CR pending, the value of a field other than `Content-Length` /
    /// `Transfer-Encoding` up to CR or LF (most of a head: a bearer token alone is ~1 KiB; only
    /// `line_ok` changes there, and only those two fields read it), the request target's bytes
    /// up to a space or line end (only the last token, the version, is kept), and a header
    /// name's token bytes (kept lower-cased). `None` where every byte needs `step`.
    fn run(&mut self, rest: &[u8]) -> Option<usize> {
        if self.cr {
            return None;
        }
        match (self.phase, self.field) {
            (Phase::Value, Field::Other) => {
                Some(memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len()))
            }
            (Phase::Target, _) => {
                let n = memchr::memchr3(b' ', b'\r', b'\n', rest).unwrap_or(rest.len());
                self.last.extend(rest.get(..n)?, |b| b);
                Some(n)
            }
            (Phase::Name, _) => {
                let n = rest
                    .iter()
                    .position(|&b| !is_token(b))
                    .unwrap_or(rest.len());
                self.name.extend(rest.get(..n)?, |b| b.to_ascii_lowercase());
                Some(n)
            }
            _ => None,
        }
    }

    /// One byte; `Ok(true)` when it ends the head. Mirrors httparse: CRLF or bare LF, empty
    /// lines before the request line skipped, no obs-fold, invalid header lines ignored.
    fn step(&mut self, b: u8) -> Result<bool, Malformed> {
        if std::mem::take(&mut self.cr) && b != b'\n' {
            return Err(Malformed);
        }
        match (self.phase, b) {
            (Phase::Method, b'\r') | (Phase::LineStart, b' ' | b'\t') => return Err(Malformed),
            (_, b'\r') => self.cr = true,
            (Phase::Leading, b'\n') => {}
            (Phase::Leading | Phase::Method, _) if is_token(b) => {
                self.phase = Phase::Method;
                self.method.push(b);
            }
            (Phase::Method, b' ') if self.method.len > 0 => {
                self.phase = Phase::Target;
            }
            (Phase::Leading | Phase::Method, _) => return Err(Malformed),
            (Phase::Target, b' ') => self.last = Tok::default(),
            (Phase::Target, b'\n') => {
                self.http11 = match &self.last {
                    v if v.is(b"HTTP/1.1") => true,
                    v if v.is(b"HTTP/1.0") => false,
                    _ => return Err(Malformed),
                };
                self.phase = Phase::LineStart;
            }
            (Phase::Target, _) => self.last.push(b),
            (Phase::LineStart, b'\n') => return Ok(true),
            (Phase::LineStart, _) => {
                self.name = Tok::default();
                self.name.push(b.to_ascii_lowercase());
                self.line_ok = is_token(b);
                self.phase = if self.line_ok {
                    Phase::Name
                } else {
                    Phase::Value
                };
            }
            (Phase::Name, b':') => {
                self.field = Field::of(&self.name);
                self.value = Value::default();
                self.phase = Phase::Value;
            }
            (Phase::Name, _) if is_token(b) => self.name.push(b.to_ascii_lowercase()),
            (Phase::Name | Phase::Value, b'\n') => {
                self.line_ok &= self.phase == Phase::Value;
                self.end_of_line();
                self.phase = Phase::LineStart;
            }
            (Phase::Name, _) => {
                self.line_ok = false;
                self.phase = Phase::Value;
            }
            (Phase::Value, _) if !self.line_ok => {}
            (Phase::Value, _) if !is_value_byte(b) => self.line_ok = false,
            (Phase::Value, _) => self.value.push(b),
        }
        Ok(false)
    }

    fn end_of_line(&mut self) {
        if !self.line_ok {
            return;
        }
        match self.field {
            Field::ContentLength => {
                self.cl = match (self.cl, self.value.content_length()) {
                    (Cl::Absent, Some(n)) => Cl::Len(n),
                    (Cl::Len(prev), Some(n)) if prev == n => Cl::Len(n),
                    _ => Cl::Bad,
                }
            }
            // hyper goes by the last coding of the last Transfer-Encoding line.
            Field::TransferEncoding => self.te_chunked = Some(self.value.is_chunked()),
            Field::Other => {}
        }
    }
}

#[derive(Debug)]
struct Malformed;

impl Field {
    fn of(lowercase_name: &Tok<17>) -> Self {
        match lowercase_name {
            n if n.is(b"content-length") => Self::ContentLength,
            n if n.is(b"transfer-encoding") => Self::TransferEncoding,
            _ => Self::Other,
        }
    }
}

/// `tchar` (RFC 9110 §5.6.2), as httparse's header-name and method maps.
fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// [`is_token`] as a table: header names are scanned a byte at a time.
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        // In range by the loop bound.
        #[allow(clippy::cast_possible_truncation)]
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        b += 1;
    }
    table
};

/// httparse's header value bytes: HTAB, SP, visible ASCII, obs-text.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// The first `N` bytes of something; a longer input only sets `overflow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tok<const N: usize> {
    buf: [u8; N],
    len: usize,
    overflow: bool,
}

impl<const N: usize> Default for Tok<N> {
    fn default() -> Self {
        let (buf, len, overflow) = ([0; N], 0, false);
        Self { buf, len, overflow }
    }
}

impl<const N: usize> Tok<N> {
    fn push(&mut self, b: u8) {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    /// `push` of each of `bytes`, mapped.
    fn extend(&mut self, bytes: &[u8], map: impl Fn(u8) -> u8) {
        let room = self.buf.get_mut(self.len..).unwrap_or_default();
        for (slot, &b) in room.iter_mut().zip(bytes) {
            *slot = map(b);
        }
        let taken = room.len().min(bytes.len());
        self.len += taken;
        self.overflow |= bytes.len() > taken;
    }

    fn is(&self, s: &[u8]) -> bool {
        !self.overflow && self.buf.get(..self.len) == Some(s)
    }
}

/// A `Content-Length` or `Transfer-Encoding` value, OWS-trimmed like httparse, read the way
/// hyper's `from_digits` and `is_chunked_` do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Value {
    number: u64,
    /// Not a plain decimal (or overflow).
    not_number: bool,
    /// The current comma-separated element, lowercased, leading whitespace skipped.
    coding: Tok<7>,
    /// Whitespace followed the element: anything more makes it something else.
    gap: bool,
    /// A non-ASCII byte: `HeaderValue::to_str` fails, so hyper says "not chunked".
    non_ascii: bool,
}

impl Value {
    fn push(&mut self, b: u8) {
        match b {
            b',' => (self.coding, self.gap, self.not_number) = (Tok::default(), false, true),
            b' ' | b'\t' => self.gap = self.coding.len > 0,
            _ => {
                self.non_ascii |= !b.is_ascii();
                self.coding.overflow |= self.gap;
                self.coding.push(b.to_ascii_lowercase());
                let digit = char::from(b).to_digit(10).filter(|_| !self.gap);
                match digit.and_then(|d| self.number.checked_mul(10)?.checked_add(d.into())) {
                    Some(n) => self.number = n,
                    None => self.not_number = true,
                }
            }
        }
    }

    fn content_length(&self) -> Option<u64> {
        (!self.not_number && self.coding.len > 0).then_some(self.number)
    }

    fn is_chunked(&self) -> bool {
        !self.non_ascii && self.coding.is(b"chunked")
    }
}

/// hyper's `ChunkedState` (strict CRLF), with the chunk size carried along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Chunk {
    fn feed(&mut self, data: &[u8]) -> Step {
        let mut i = 0;
        while let Some(&b) = data.get(i) {
            if let Self::Data(remaining) = self {
                let rest = data.len() - i;
                let n = usize::try_from(*remaining).map_or(rest, |r| r.min(rest));
                *remaining -= n as u64;
                if *remaining == 0 {
                    *self = Self::DataCr;
                }
                i += n;
                continue;
            }
            i += 1;
            *self = match (*self, b) {
                (Self::Start, _) => match hex(b) {
                    Some(d) => Self::Size(d),
                    None => return Step::Malformed,
                },
                (Self::Size(n) | Self::SizeLws(n), b' ' | b'\t') => Self::SizeLws(n),
                (Self::Size(n) | Self::SizeLws(n), b';') => Self::Extension(n),
                (Self::Size(n) | Self::SizeLws(n) | Self::Extension(n), b'\r') => Self::SizeLf(n),
                (Self::Size(n), _) => {
                    match hex(b).and_then(|d| n.checked_mul(16)?.checked_add(d)) {
                        Some(n) => Self::Size(n),
                        None => return Step::Malformed,
                    }
                }
                (Self::Extension(n), _) if b != b'\n' => Self::Extension(n),
                (Self::SizeLf(0), b'\n') => Self::EndCr,
                (Self::SizeLf(n), b'\n') => Self::Data(n),
                (Self::DataCr, b'\r') => Self::DataLf,
                (Self::DataLf, b'\n') => Self::Start,
                (Self::EndCr, b'\r') => Self::EndLf,
                (Self::Trailer, b'\r') => Self::TrailerLf,
                (Self::EndCr | Self::Trailer, _) => Self::Trailer,
                (Self::TrailerLf, b'\n') => Self::EndCr,
                (Self::EndLf, b'\n') => return Step::Done(i),
                _ => return Step::Malformed,
            };
        }
        Step::Partial
    }
}

fn hex(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What an observer ends with: first flagged index, state, next request index.
    type Outcome = (Option<u64>, State, u64);

    fn feed_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let flags = Arc::new(HeadFlags::default());
        let mut obs = Observer::new(State::Preface(0), Some(flags.clone()));
        for piece in pieces {
            obs.feed(piece);
        }
        (flags.first_cl_and_te(), obs.state, obs.index)
    }

    /// Feeds `input` whole, one byte at a time and in two pieces at every split point;
    /// all must agree. Returns the outcome.
    fn check(input: &[u8]) -> Outcome {
        let whole = feed_pieces([input]);
        let bytewise = feed_pieces(input.chunks(1));
        assert_eq!(whole, bytewise, "bytewise differs for {:?}", show(input));
        for k in 0..=input.len() {
            let (a, b) = input.split_at(k);
            let split = feed_pieces([a, b]);
            assert_eq!(whole, split, "split at {k} differs for {:?}", show(input));
        }
        whole
    }

    fn show(input: &[u8]) -> String {
        String::from_utf8_lossy(input).into_owned()
    }

    fn flagged(input: &[u8]) -> Option<u64> {
        check(input).0
    }

    fn is_head(state: &State) -> bool {
        matches!(state, State::Head(h) if *h == Head::default())
    }

    const CL_TE: &[u8] =
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    const TE_CL: &[u8] =
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: x\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
    const FAKE: &[u8] = b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn cl_then_te_is_flagged() {
        let (flag, state, index) = check(CL_TE);
        assert_eq!(flag, Some(0));
        assert_eq!(state, State::Passthrough);
        assert_eq!(index, 1);
    }

    #[test]
    fn te_then_cl_is_flagged() {
        assert_eq!(flagged(TE_CL), Some(0));
    }

    #[test]
    fn names_are_case_insensitive() {
        let input = b"PUT / HTTP/1.1\r\ncontent-LENGTH: 5\r\ntRaNsFeR-eNcOdInG: chunked\r\n\r\n";
        assert_eq!(flagged(input), Some(0));
        let input = b"PUT / HTTP/1.1\r\ntransfer-encoding:chunked\r\nCONTENT-LENGTH:x\r\n\r\n";
        assert_eq!(flagged(input), Some(0));
    }

    #[test]
    fn bare_lf_and_leading_empty_lines() {
        let input = b"\r\n\n\r\nPOST / HTTP/1.1\nContent-Length: 3\nTransfer-Encoding: chunked\n\n";
        assert_eq!(flagged(input), Some(0));
        let input = b"\nGET / HTTP/1.1\nHost: x\n\nGET / HTTP/1.1\r\n\r\n";
        let (flag, state, index) = check(input);
        assert_eq!((flag, index), (None, 2));
        assert!(is_head(&state));
    }

    fn keep_alive_sequence() -> Vec<u8> {
        let mut input = Vec::new();
        input.extend_from_slice(b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n");
        input.extend_from_slice(b"hello world");
        input.extend_from_slice(b"POST /two HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
        input.extend_from_slice(b"5;name=value;x\r\nhello\r\nA \t; ext\r\n0123456789\r\n");
        input.extend_from_slice(b"0\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n");
        input.extend_from_slice(b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n");
        input
    }

    #[test]
    fn keep_alive_sequence_then_cl_te_is_flagged_at_index_3() {
        let mut input = keep_alive_sequence();
        let (flag, state, index) = check(&input);
        assert_eq!((flag, index), (None, 3));
        assert!(is_head(&state));
        input.extend_from_slice(CL_TE);
        assert_eq!(flagged(&input), Some(3));
    }

    #[test]
    fn pipelined_requests_in_one_slice() {
        let mut input =
            b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec();
        input.extend_from_slice(TE_CL);
        input.extend_from_slice(CL_TE);
        let (flag, state, index) = feed_pieces([&input[..]]);
        assert_eq!((flag, index), (Some(2), 3));
        assert_eq!(state, State::Passthrough);
        assert_eq!(check(&input).0, Some(2));
    }

    #[test]
    fn h2_preface_is_passthrough() {
        let mut input = H2_PREFACE.to_vec();
        input.extend_from_slice(CL_TE);
        let (flag, state, _) = check(&input);
        assert_eq!(flag, None);
        assert_eq!(state, State::Passthrough);
    }

    #[test]
    fn partial_preface_is_replayed_as_http1() {
        let input = b"PRI * HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(flagged(input), Some(0));
        let input = b"PRI * HTTP/2.0\r\n\r\nSX\r\n\r\n";
        assert_eq!(check(input).1, State::Passthrough); // version 2.0: hyper rejects
    }

    #[test]
    fn body_text_is_not_a_head() {
        let mut input =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", FAKE.len()).into_bytes();
        input.extend_from_slice(FAKE);
        input.extend_from_slice(
            format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                FAKE.len()
            )
            .as_bytes(),
        );
        input.extend_from_slice(FAKE);
        input
            .extend_from_slice(b"\r\n0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        let (flag, state, index) = check(&input);
        assert_eq!((flag, index), (None, 2));
        assert!(is_head(&state));
        // Still in step with hyper: the next real head is seen as request 2.
        input.extend_from_slice(CL_TE);
        assert_eq!(flagged(&input), Some(2));
    }

    #[test]
    fn scanning_continues_after_upgrade_and_connect_requests() {
        // A refused upgrade leaves hyper reading requests: a later CL+TE must still be seen.
        for first in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"[..],
            b"POST /ws HTTP/1.1\r\nupgrade: x\r\nContent-Length: 2\r\n\r\nab",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        ] {
            let mut input = first.to_vec();
            input.extend_from_slice(CL_TE);
            assert_eq!(flagged(&input), Some(1));
        }
        // Tunnel bytes that are no HTTP head end the scan without flagging anything.
        let mut input =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_vec();
        input.extend_from_slice(b"\x81\x05hello\x00\xff");
        input.extend_from_slice(CL_TE);
        let (flag, state, _) = check(&input);
        assert_eq!((flag, state), (None, State::Passthrough));
        // hyper ignores Upgrade on HTTP/1.0.
        let mut input = b"GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n".to_vec();
        input.extend_from_slice(CL_TE);
        assert_eq!(flagged(&input), Some(1));
    }

    #[test]
    fn what_hyper_rejects_ends_in_passthrough() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked,\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chun ked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1\rX\n\r\n",
            b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nAuthorization: Bearer a\rb\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"\rGET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nab\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 2\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\rx",
        ] {
            let mut input = head.to_vec();
            input.extend_from_slice(CL_TE);
            let (flag, state, _) = check(&input);
            assert_eq!(state, State::Passthrough, "{:?}", show(head));
            assert_eq!(flag, None, "{:?}", show(head));
        }
    }

    #[test]
    fn framing_variants_hyper_accepts() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length:3  \r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nContent-Length: \t003\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: \tCHUNKED \r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \t;e\r\nabc\r\n00\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: \nB\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade-Insecure-Requests: 1\r\nX-Content-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encodings: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length : 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \x01\r\nContent-Length: 3\x7f\r\n\r\n",
            b"connect / HTTP/1.1\r\n\r\n",
        ] {
            let mut input = head.to_vec();
            let (flag, state, index) = check(&input);
            assert_eq!((flag, index), (None, 1), "{:?}", show(head));
            assert!(is_head(&state), "{:?}", show(head));
            input.extend_from_slice(CL_TE);
            assert_eq!(flagged(&input), Some(1), "{:?}", show(head));
        }
    }

    #[test]
    fn long_heads_and_large_bodies_have_no_limit() {
        let long = "a".repeat(300_000);
        let mut input =
            format!("GET /{long} HTTP/1.1\r\nX-Long: {long}\r\nX-{long}: 1\r\n\r\n").into_bytes();
        input.extend_from_slice(CL_TE);
        assert_eq!(feed_pieces([&input[..]]).0, Some(1));
        assert_eq!(feed_pieces(input.chunks(7)).0, Some(1));
        // A huge declared body is skipped arithmetically.
        let big = u64::MAX / 2;
        let head = format!("POST / HTTP/1.1\r\nContent-Length: {big}\r\n\r\n");
        let (flag, state, _) = feed_pieces([head.as_bytes(), CL_TE, &[0; 4096]]);
        assert_eq!(flag, None);
        let consumed = (CL_TE.len() + 4096) as u64;
        assert_eq!(state, State::Fixed(big - consumed));
    }

    #[test]
    fn random_soup_is_split_invariant() {
        const PARTS: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"POST /x HTTP/1.0\n",
            b"CONNECT h:1 HTTP/1.1\r\n",
            b"Content-Length: 3\r\n",
            b"Content-Length: 0\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Upgrade: a\r\n",
            b"\r\n",
            b"\n",
            b"\r",
            b"3\r\n",
            b"0\r\n",
            b"abc",
            b"1;e=1\r\n",
            b"x",
            b" ",
            b":",
            b"PRI * HTTP/2.0\r\n",
            b"\x00\xff",
        ];
        for input in soup(PARTS, 16, 400, 0x2545_f491_4f6c_dd1d) {
            check(&input);
        }
    }

    /// `count` inputs of up to `most - 1` of `parts` each, drawn by a xorshift from `seed`.
    fn soup(parts: &[&[u8]], most: u64, count: usize, mut seed: u64) -> Vec<Vec<u8>> {
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut inputs = Vec::new();
        for _ in 0..count {
            let mut input = Vec::new();
            for _ in 0..(next() % most) {
                input.extend_from_slice(parts[(next() % parts.len() as u64) as usize]);
            }
            inputs.push(input);
        }
        inputs
    }

    /// `Head::feed` with every byte through `step`: what its runs must agree with.
    fn step_only(head: &mut Head, data: &[u8]) -> Option<Result<usize, ()>> {
        for (i, &b) in data.iter().enumerate() {
            match head.step(b) {
                Ok(false) => {}
                Ok(true) => return Some(Ok(i + 1)),
                Err(Malformed) => return Some(Err(())),
            }
        }
        None
    }

    #[test]
    fn head_runs_agree_with_stepping_every_byte() {
        const PARTS: &[&[u8]] = &[
            b"GET /a/b?c=d HTTP/1.1\r\n",
            b"POST  /x  HTTP/1.0 \n",
            b"Content-Length: 3\r\n",
            b"conTENT-length:0\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"X-A-Very-Long-Header-Name-Indeed: v\r\n",
            b"Bad Name: x\r\n",
            b"Authorization: Bearer abc.def\r\n",
            b"\r\n",
            b"\n",
            b"\r",
            b"x",
            b" ",
            b":",
            b"\t",
            b"\x00\xff",
            b"HTTP/1.1",
        ];
        for input in soup(PARTS, 12, 2000, 0x9e37_79b9_7f4a_7c15) {
            let (mut fed, mut stepped) = (Head::default(), Head::default());
            let fed_step = match fed.feed(&input) {
                Step::Partial => None,
                Step::Done(n) => Some(Ok(n)),
                Step::Malformed => Some(Err(())),
            };
            let stepped_step = step_only(&mut stepped, &input);
            assert_eq!(fed_step, stepped_step, "{:?}", show(&input));
            if fed_step != Some(Err(())) {
                // An other field's value is skipped, not read: only these two fields differ.
                if stepped.field == Field::Other {
                    (stepped.value, stepped.line_ok) = (fed.value, fed.line_ok);
                }
                assert_eq!(fed, stepped, "{:?}", show(&input));
            }
        }
    }

    #[test]
    fn head_flags_keep_the_first_index() {
        let flags = HeadFlags::default();
        assert!(!flags.had_cl_and_te(0));
        assert_eq!(flags.first_cl_and_te(), None);
        flags.record(4);
        flags.record(7);
        assert!(flags.had_cl_and_te(4));
        assert!(!flags.had_cl_and_te(7));
        assert!(!flags.had_cl_and_te(u64::MAX));
        assert_eq!(flags.first_cl_and_te(), Some(4));
    }

    #[tokio::test]
    async fn bytes_pass_through_unchanged() {
        let mut sent = keep_alive_sequence();
        sent.extend_from_slice(CL_TE);
        sent.extend_from_slice(&(0..=255).collect::<Vec<u8>>());
        let (mut client, server) = tokio::io::duplex(7);
        let flags = Arc::new(HeadFlags::default());
        let mut guard = FramingGuard::new(server, flags.clone());
        let to_send = sent.clone();
        let writer = tokio::spawn(async move {
            for piece in to_send.chunks(5) {
                client.write_all(piece).await?;
            }
            client.write_all(b"reply?").await?;
            let mut reply = [0u8; 9];
            client.read_exact(&mut reply).await?;
            client.shutdown().await?;
            std::io::Result::Ok(reply)
        });
        let mut received = vec![0u8; sent.len() + 6];
        guard.read_exact(&mut received).await.unwrap();
        assert!(!guard.is_write_vectored() || guard.get_ref().is_write_vectored());
        guard.write_all(b"HTTP/1.1 ").await.unwrap();
        guard.flush().await.unwrap();
        let mut rest = Vec::new();
        guard.read_to_end(&mut rest).await.unwrap();
        assert_eq!(&writer.await.unwrap().unwrap(), b"HTTP/1.1 ");
        assert_eq!(&received[..sent.len()], &sent[..]);
        assert_eq!(&received[sent.len()..], b"reply?");
        assert!(rest.is_empty());
        assert_eq!(flags.first_cl_and_te(), Some(3));

        let (mut client, server) = tokio::io::duplex(1024);
        let mut guard = FramingGuard::passthrough(server);
        client.write_all(CL_TE).await.unwrap();
        drop(client);
        let mut received = Vec::new();
        guard.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, CL_TE);
        assert_eq!(guard.observer.state, State::Passthrough);
        let _inner = guard.into_inner();
    }
}
