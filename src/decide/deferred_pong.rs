//! Holds the answer to grpc-go's bandwidth-probing PING until the connection's next write.
//!
//! grpc-go (Cerbos) measures each connection's bandwidth-delay product by sending a PING when
//! a request arrives and timing its ACK. With requests of a few hundred bytes its estimate never
//! grows, so it never stops: every Cerbos answer arrives with such a PING, and h2 answered it at
//! once, a write of its own (with a wake-up of Cerbos to read it) between Cerbos' answer and
//! agent-authz's. HTTP/2 sets no deadline for a PING's ACK, and grpc-go waits for nothing but
//! its estimate on this one; so the ACK of that probe (recognised by grpc-go's fixed payload)
//! is held here and goes out in front of the next write: the next request, or at the latest
//! the keep-alive PING. Every other frame, other PINGs' ACKs included, is written at once.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A PING ACK frame carrying grpc-go's BDP probe payload (`bdpPing` in grpc-go's
/// `internal/transport/http2_server.go`): length 8, type PING, flag ACK, stream 0.
const BDP_PING_ACK: [u8; 17] = [0, 0, 8, 6, 1, 0, 0, 0, 0, 2, 4, 16, 16, 9, 14, 7, 7];

/// `h2` writes at most this many slices at once (its `MAX_IOVS`); one more for the held ACK.
const MAX_SLICES: usize = 64;

/// The connection's byte stream, as `h2` sees it.
pub struct DeferredPong<T> {
    io: T,
    /// How much of a held ACK has been written already, if one is held.
    held: Option<usize>,
}

impl<T> DeferredPong<T> {
    pub fn new(io: T) -> Self {
        Self { io, held: None }
    }
}

/// Whether `bufs` is exactly one BDP probe's ACK (h2 flushes it alone when it answers).
fn is_bdp_ack(bufs: &[IoSlice<'_>]) -> bool {
    let mut rest: &[u8] = &BDP_PING_ACK;
    for buf in bufs {
        let Some(tail) = rest.strip_prefix(&**buf) else {
            return false;
        };
        rest = tail;
    }
    rest.is_empty()
}

impl<T: AsyncWrite + Unpin> DeferredPong<T> {
    /// Writes what is left of the held ACK in front of `bufs`; the count returned is of
    /// `bufs`' bytes only (0 when only the ACK went out).
    fn poll_write_held(
        &mut self,
        cx: &mut Context<'_>,
        sent: usize,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let rest = &BDP_PING_ACK[sent..];
        let mut slices = [IoSlice::new(&[]); MAX_SLICES + 1];
        slices[0] = IoSlice::new(rest);
        let count = 1 + bufs.len().min(MAX_SLICES);
        slices[1..count].copy_from_slice(&bufs[..count - 1]);
        let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        if written < rest.len() {
            self.held = Some(sent + written);
            return Poll::Ready(Ok(0));
        }
        self.held = None;
        Poll::Ready(Ok(written - rest.len()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeferredPong<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.is_none() && is_bdp_ack(bufs) {
            this.held = Some(0);
            return Poll::Ready(Ok(BDP_PING_ACK.len()));
        }
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        loop {
            let Some(sent) = this.held else {
                return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
            };
            let written = ready!(this.poll_write_held(cx, sent, bufs))?;
            // (0 when only the held bytes went out: go on with the caller's.)
            if written > 0 || wanted == 0 {
                return Poll::Ready(Ok(written));
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// A held ACK stays held: flushing is what h2 does after every write.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while let Some(sent) = this.held {
            ready!(this.poll_write_held(cx, sent, &[]))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeferredPong<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    const OTHER_PING_ACK: [u8; 17] = [0, 0, 8, 6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    /// What comes out at the far end of a pipe taking `pipe` bytes at a time, after
    /// `writes`, each flushed, and a shutdown.
    async fn through(pipe: usize, writes: &[&[u8]]) -> Vec<u8> {
        let (near, mut far) = duplex(pipe);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut conn = DeferredPong::new(near);
        for write in writes {
            conn.write_all(write).await.unwrap();
            conn.flush().await.unwrap();
        }
        conn.shutdown().await.unwrap();
        drop(conn);
        reader.await.unwrap()
    }

    #[tokio::test]
    async fn the_bdp_ack_is_held_then_goes_out_in_front_of_the_next_write() {
        let (near, mut far) = duplex(1024);
        let mut conn = DeferredPong::new(near);
        conn.write_all(&BDP_PING_ACK).await.unwrap();
        conn.flush().await.unwrap();
        assert!(
            far.read(&mut [0; 1]).now_or_never().is_none(),
            "the ACK went out alone"
        );

        let request = [7u8; 300];
        conn.write_all(&request).await.unwrap();
        let mut out = vec![0; BDP_PING_ACK.len() + request.len()];
        far.read_exact(&mut out).await.unwrap();
        assert_eq!(out, [&BDP_PING_ACK[..], &request].concat());

        // A pipe taking a few bytes at a time: the ACK still goes out whole and first.
        let out = through(5, &[&BDP_PING_ACK, &request]).await;
        assert_eq!(out, [&BDP_PING_ACK[..], &request].concat());
    }

    #[tokio::test]
    async fn a_held_ack_is_written_by_shutdown() {
        assert_eq!(through(5, &[&BDP_PING_ACK]).await, BDP_PING_ACK);
    }

    #[tokio::test]
    async fn two_acks_in_a_row_both_go_out() {
        let out = through(1024, &[&BDP_PING_ACK, &BDP_PING_ACK]).await;
        assert_eq!(out, [BDP_PING_ACK, BDP_PING_ACK].concat());
    }

    #[tokio::test]
    async fn other_writes_go_out_at_once() {
        let (near, mut far) = duplex(1024);
        let mut conn = DeferredPong::new(near);
        for write in [&OTHER_PING_ACK[..], &[1, 2, 3], &BDP_PING_ACK[..16]] {
            conn.write_all(write).await.unwrap();
            conn.flush().await.unwrap();
            let mut out = vec![0; write.len()];
            far.read_exact(&mut out).await.unwrap();
            assert_eq!(out, write);
        }
    }

    #[test]
    fn only_the_whole_probe_ack_is_recognised() {
        assert!(is_bdp_ack(&[IoSlice::new(&BDP_PING_ACK)]));
        let (head, tail) = BDP_PING_ACK.split_at(9);
        assert!(is_bdp_ack(&[IoSlice::new(head), IoSlice::new(tail)]));
        assert!(!is_bdp_ack(&[IoSlice::new(&OTHER_PING_ACK)]));
        assert!(!is_bdp_ack(&[IoSlice::new(head)]));
        assert!(!is_bdp_ack(&[
            IoSlice::new(&BDP_PING_ACK),
            IoSlice::new(&[0])
        ]));
    }
}
