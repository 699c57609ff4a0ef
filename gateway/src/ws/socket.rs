//! A plain-TCP WebSocket connection's socket, shared: the session reads it, its writer
//! writes it, and whoever delivers a frame to an idle connection may write that frame
//! straight to it ([`Outbound::push_now`](crate::outbound::Outbound::push_now)), without waking the
//! connection's task. Every write goes through `&TcpStream`, so ordering is the queue's:
//! a frame is written directly only while nothing is queued and the writer holds nothing.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

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
