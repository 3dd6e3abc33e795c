//! An IO that replays the bytes protocol detection already read, then reads on from the socket.
//!
//! Detection (`conn.rs`) reads at most the 24 bytes of the HTTP/2 preface itself, under the
//! connection's head deadline, instead of leaving the sniffing to a builder that has no deadline;
//! hyper then parses the connection from its first byte through this wrapper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest prefix detection reads: the HTTP/2 client preface.
pub const MAX_PREFIX: usize = 24;

pub struct Rewind<IO> {
    prefix: [u8; MAX_PREFIX],
    /// `prefix[start..end]` is still to be replayed.
    start: usize,
    end: usize,
    inner: IO,
}

impl<IO> Rewind<IO> {
    /// `prefix` longer than [`MAX_PREFIX`] is cut (detection never reads more).
    pub fn new(inner: IO, prefix: &[u8]) -> Self {
        let mut buf = [0u8; MAX_PREFIX];
        let end = prefix.len().min(MAX_PREFIX);
        buf[..end].copy_from_slice(&prefix[..end]);
        Rewind {
            prefix: buf,
            start: 0,
            end,
            inner,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            let n = (this.end - this.start).min(buf.remaining());
            buf.put_slice(&this.prefix[this.start..this.start + n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn prefix_is_replayed_before_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" / HTTP/1.1\r\n")
            .await
            .unwrap();
        drop(client);
        let mut io = Rewind::new(server, b"GET");
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn small_reads_take_the_prefix_piece_by_piece() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        let mut io = Rewind::new(server, b"PRI * HTTP/2.0");
        let mut one = [0u8; 4];
        io.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"PRI ");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"* HTTP/2.0");
    }
}
