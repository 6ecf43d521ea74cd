//! One system call per answer where it fits.
//!
//! h2 writes a DATA frame of 256 bytes or more as a separate buffer next to its frame buffer
//! (vectored I/O) and must flush it before queueing the next frame, so a gRPC answer went out
//! as two writes: headers and message, then the trailers, each waking Envoy on its own. A
//! check's answer (the verdict, metadata and handoff: under 1 KiB) is written more cheaply in
//! one piece. This transport tells h2 it has no vectored writes, which raises h2's threshold for
//! a separate payload buffer to 1 KiB, and buffers what h2 writes until h2 flushes (h2 flushes
//! after every batch of frames, so nothing waits in the buffer). Larger payloads (ext_proc
//! body rewrites) go to the socket directly, as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Writes up to this size are gathered until the next flush; larger ones go straight out.
const WRITE_BUFFER: usize = 16 * 1024;

/// An accepted gRPC connection whose writes are gathered until h2 flushes.
pub struct CoalescedWrites(BufWriter<TcpStream>);

impl CoalescedWrites {
    pub fn new(stream: TcpStream) -> Self {
        Self(BufWriter::with_capacity(WRITE_BUFFER, stream))
    }
}

impl AsyncRead for CoalescedWrites {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

/// `is_write_vectored` keeps its default, `false`: that is the point (see the module docs).
impl AsyncWrite for CoalescedWrites {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connected for CoalescedWrites {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().connect_info()
    }
}
