//! A plain-TCP WebSocket connection's socket, shared: the session reads it, its writer
//! writes it, and whoever delivers a frame to an idle connection may write that frame
//! straight to it ([`Outbound::push`](crate::outbound::Outbound::push)), without waking the
//! connection's task. Every write goes through `&TcpStream`, so ordering is the queue's:
//! a frame is written directly only while nothing is queued and the writer holds nothing.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::deadline::ClientSocket;

/// The socket under an upgraded connection, split, and the bytes hyper read past the
/// request; or the connection back as it was (TLS).
pub(super) fn plain_tcp(io: TokioIo<Upgraded>) -> Result<(SharedRead, Arc<OwnedWriteHalf>), TokioIo<Upgraded>> {
    match io.into_inner().downcast::<TokioIo<ClientSocket>>() {
        Ok(parts) => {
            let (rd, wr) = parts.io.into_inner().into_tcp().into_split();
            let ahead = (!parts.read_buf.is_empty()).then_some(parts.read_buf);
            Ok((SharedRead { rd, ahead }, Arc::new(wr)))
        }
        Err(upgraded) => Err(TokioIo::new(upgraded)),
    }
}

/// The reading side: first what hyper had read ahead (let go of once read: it holds
/// hyper's whole read buffer), then the socket.
pub(super) struct SharedRead {
    rd: OwnedReadHalf,
    ahead: Option<Bytes>,
}

impl AsyncRead for SharedRead {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(ahead) = &mut self.ahead {
            let n = ahead.len().min(buf.remaining());
            buf.put_slice(&ahead[..n]);
            ahead.advance(n);
            if ahead.is_empty() {
                self.ahead = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

/// The writer's side: writes through `&TcpStream`, as direct writes do.
pub(super) struct SharedWrite(pub(super) Arc<OwnedWriteHalf>);

impl SharedWrite {
    /// Runs `write` once the socket is writable, again whenever it finds it full.
    fn poll_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let tcp: &TcpStream = (*self.0).as_ref();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match write(tcp) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncWrite for SharedWrite {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |tcp| tcp.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |tcp| tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts the write direction (the close handshake's end); the socket itself closes when
    /// both halves are dropped.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let tcp: &TcpStream = (*self.0).as_ref();
        Poll::Ready(match socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}
