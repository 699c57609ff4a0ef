//! The client socket's write deadline: a write that waits too long fails, whoever writes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much later than `--write-timeout` the socket's own deadline falls: the transports
/// that watch their writes (WebSocket, SSE) notice first and close in order; the socket's
/// deadline is for the writes hyper owns (an HTTP answer) and anything else.
pub(crate) const SOCKET_DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// A client socket whose writes fail (`TimedOut`) once one has waited `limit` without the
/// peer taking a byte, whatever the peer sends meanwhile: a client that stops reading is
/// dropped however its connection is used (an HTTP answer, an SSE stream, a WebSocket over
/// TLS), and what was queued for it is freed. The timer exists only while a write waits. A
/// plain-TCP WebSocket connection takes its socket out of it after the upgrade: its writer
/// watches its own writes and its direct writes never wait.
pub(crate) struct WriteDeadline<I> {
    io: I,
    limit: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: bool,
}

/// A plain-TCP client connection as hyper serves it.
pub(crate) type ClientSocket = WriteDeadline<TcpStream>;

impl ClientSocket {
    /// The socket, without its deadline (for a transport that watches its own writes).
    pub(crate) fn into_tcp(self) -> TcpStream {
        self.io
    }
}

impl<I> WriteDeadline<I> {
    pub(crate) fn new(io: I, limit: Duration) -> Self {
        Self {
            io,
            limit,
            waiting: None,
            timed_out: false,
        }
    }

    /// Passes a write's outcome on, starting the clock when it waits and stopping it when
    /// it moves; past the limit, the write fails.
    fn watch<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if self.timed_out {
            return Poll::Ready(Err(timed_out()));
        }
        if outcome.is_ready() {
            self.waiting = None;
            return outcome;
        }
        let limit = self.limit;
        let clock = self.waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match clock.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.waiting = None;
                self.timed_out = true;
                crate::metrics::socket_write_timeout();
                Poll::Ready(Err(timed_out()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the peer took nothing for --write-timeout")
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, outcome)
    }
}
