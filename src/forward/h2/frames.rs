//! What an upstream HTTP/2 server tells us that hyper keeps to itself: its
//! SETTINGS_MAX_CONCURRENT_STREAMS, whether its first SETTINGS frame has arrived, and GOAWAY.
//!
//! [`Observed`] wraps the socket (under hyper, over TLS) and scans the frame headers of what the
//! server sends: 9 bytes each (length u24, type u8, flags u8, stream id u32), then a payload that
//! is skipped, except a SETTINGS payload, whose 6-byte entries are read for id 0x3. It copies
//! nothing and never alters a byte; hyper and h2 still parse and enforce everything themselves.
//! The wrapper also holds the connection's permit, because it lives exactly as long as the socket.
//!
//! Leaves to others: what to do with the facts ([`Peer`] only records them and wakes waiters).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::checkout::Signal;

const HEADER_LEN: usize = 9;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_ENTRY_LEN: usize = 6;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// What the server has said on one connection, shared by its socket and the pool.
pub(super) struct Peer {
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS; unlimited until it names one (RFC 9113
    /// §6.5.2), which is also what h2 assumes when the first SETTINGS frame has none.
    limit: AtomicUsize,
    /// The server's first SETTINGS frame has been read: `limit` is the server's, not a guess.
    settings: AtomicBool,
    /// A GOAWAY arrived: no new streams; those in flight may finish.
    goaway: AtomicBool,
    /// The socket is gone (dropped by hyper, or never handed to it).
    closed: AtomicBool,
    /// Wakes the dial waiting for the first SETTINGS (or for the socket to die first).
    ready: Notify,
    /// Wakes requests waiting for a stream when this connection gains room or loses its socket.
    signal: Arc<Signal>,
}

impl Peer {
    pub(super) fn new(signal: Arc<Signal>) -> Self {
        Peer {
            limit: AtomicUsize::new(usize::MAX),
            settings: AtomicBool::new(false),
            goaway: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            ready: Notify::new(),
            signal,
        }
    }

    /// How many streams the server lets us have open at once.
    pub(super) fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    pub(super) fn going_away(&self) -> bool {
        self.goaway.load(Ordering::Acquire)
    }

    pub(super) fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits until the server's first SETTINGS frame has been read (`true`) or the socket is
    /// gone (`false`).
    pub(super) async fn settled(&self) -> bool {
        loop {
            if self.settings.load(Ordering::Acquire) {
                return true;
            }
            if self.closed() {
                return false;
            }
            // `notify_one` keeps a permit when nobody waits yet, so a wake-up between the checks
            // above and this line is not lost.
            self.ready.notified().await;
        }
    }

    fn seen(&self, event: Seen) {
        match event {
            Seen::MaxStreams(value) => {
                let value = usize::try_from(value).unwrap_or(usize::MAX);
                let old = self.limit.swap(value, Ordering::AcqRel);
                if value > old {
                    self.signal.wake();
                }
            }
            Seen::SettingsEnd => {
                if !self.settings.swap(true, Ordering::AcqRel) {
                    self.ready.notify_one();
                }
            }
            Seen::GoAway => {
                self.goaway.store(true, Ordering::Release);
                // Waiters may now have to open a connection instead of counting on this one.
                self.signal.wake();
            }
        }
    }
}

/// One fact read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    MaxStreams(u32),
    /// The end of a SETTINGS frame (not an ACK): its values now apply.
    SettingsEnd,
    GoAway,
}

/// Frame boundaries across reads of any size.
#[derive(Default)]
struct Scanner {
    header: [u8; HEADER_LEN],
    /// Bytes of `header` read so far; a payload is being read when it is full.
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// The current frame is a SETTINGS frame whose entries count.
    in_settings: bool,
    entry: [u8; SETTINGS_ENTRY_LEN],
    entry_len: usize,
}

impl Scanner {
    fn feed(&mut self, mut data: &[u8], on: &mut impl FnMut(Seen)) {
        while !data.is_empty() {
            if self.header_len < HEADER_LEN {
                let n = (HEADER_LEN - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                self.header_len += n;
                data = &data[n..];
                if self.header_len == HEADER_LEN {
                    self.start_frame(on);
                }
                continue;
            }
            let n = self.left.min(data.len());
            if self.in_settings {
                for &byte in &data[..n] {
                    self.entry[self.entry_len] = byte;
                    self.entry_len += 1;
                    if self.entry_len == SETTINGS_ENTRY_LEN {
                        self.entry_len = 0;
                        let [a, b, c, d, e, f] = self.entry;
                        if u16::from_be_bytes([a, b]) == SETTINGS_MAX_CONCURRENT_STREAMS {
                            on(Seen::MaxStreams(u32::from_be_bytes([c, d, e, f])));
                        }
                    }
                }
            }
            self.left -= n;
            data = &data[n..];
            if self.left == 0 {
                self.end_frame(on);
            }
        }
    }

    fn start_frame(&mut self, on: &mut impl FnMut(Seen)) {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        self.in_settings = kind == TYPE_SETTINGS && flags & FLAG_ACK == 0;
        self.entry_len = 0;
        if kind == TYPE_GOAWAY {
            on(Seen::GoAway);
        }
        if self.left == 0 {
            self.end_frame(on);
        }
    }

    fn end_frame(&mut self, on: &mut impl FnMut(Seen)) {
        if self.in_settings {
            on(Seen::SettingsEnd);
        }
        self.header_len = 0;
        self.in_settings = false;
    }
}

/// The socket as hyper sees it: unchanged bytes both ways, the server's frames scanned.
pub(super) struct Observed<S> {
    io: S,
    scanner: Scanner,
    peer: Arc<Peer>,
    /// One of the origin's `max_connections` permits, held for as long as the socket exists.
    permit: Option<OwnedSemaphorePermit>,
}

impl<S> Observed<S> {
    pub(super) fn new(io: S, peer: Arc<Peer>, permit: OwnedSemaphorePermit) -> Self {
        Observed {
            io,
            scanner: Scanner::default(),
            peer,
            permit: Some(permit),
        }
    }
}

impl<S> Drop for Observed<S> {
    fn drop(&mut self) {
        self.peer.closed.store(true, Ordering::Release);
        // The permit goes back before anyone is woken, so a waiter that wakes can dial.
        drop(self.permit.take());
        self.peer.ready.notify_one();
        self.peer.signal.wake();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Observed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let peer = &this.peer;
            this.scanner
                .feed(&buf.filled()[before..], &mut |event| peer.seen(event));
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Observed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        out.extend_from_slice(payload);
        out
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (id, value) in entries {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        frame(TYPE_SETTINGS, 0, &payload)
    }

    fn scan_in_chunks(bytes: &[u8], chunk: usize) -> Vec<Seen> {
        let mut scanner = Scanner::default();
        let mut seen = Vec::new();
        for part in bytes.chunks(chunk) {
            scanner.feed(part, &mut |e| seen.push(e));
        }
        seen
    }

    #[test]
    fn max_concurrent_streams_is_found_whatever_the_read_sizes() {
        let mut wire = settings(&[(0x1, 4096), (0x3, 2), (0x4, 65535)]);
        wire.extend(frame(0x8, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE, skipped
        wire.extend(frame(TYPE_SETTINGS, FLAG_ACK, &[]));
        wire.extend(frame(0x0, 0x1, &[7; 300])); // DATA whose payload looks like anything
        wire.extend(settings(&[(0x3, 50)]));
        let expected = vec![
            Seen::MaxStreams(2),
            Seen::SettingsEnd,
            Seen::MaxStreams(50),
            Seen::SettingsEnd,
        ];
        for chunk in [1, 2, 5, 9, 10, 17, 4096] {
            assert_eq!(scan_in_chunks(&wire, chunk), expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn an_empty_settings_frame_still_counts_as_the_first_settings() {
        assert_eq!(scan_in_chunks(&settings(&[]), 3), vec![Seen::SettingsEnd]);
    }

    #[test]
    fn a_settings_ack_and_other_frames_carry_no_limit() {
        let mut wire = frame(TYPE_SETTINGS, FLAG_ACK, &[]);
        // A HEADERS frame whose payload happens to look like a SETTINGS entry for id 3.
        wire.extend(frame(0x1, 0x4, &[0, 3, 0, 0, 0, 1]));
        assert_eq!(scan_in_chunks(&wire, 4), vec![]);
    }

    #[test]
    fn goaway_is_reported_at_its_header() {
        let mut wire = settings(&[]);
        wire.extend(frame(TYPE_GOAWAY, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
        assert_eq!(
            scan_in_chunks(&wire, 7),
            vec![Seen::SettingsEnd, Seen::GoAway]
        );
    }
}
