//! The client's side of permessage-deflate for [`crate::ws`]: the offer, a stream adapter
//! that lets fastwebsockets (which refuses RSV1) read compressed frames, and inflating.
//!
//! Below the WebSocket library, [`Marking`] passes the `101` response through, then follows
//! the server's frames (unmasked) one header at a time: a data frame with RSV1 goes on as a
//! plain binary frame (fastwebsockets would also check a compressed text frame as UTF-8),
//! and what it was is queued for the connection, which inflates its payload.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the client offers (as browsers do).
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// What each data frame the server sent was, in order: `None` plain, `Some(text)` compressed.
pub(crate) type Marks = Arc<Mutex<VecDeque<Option<bool>>>>;

/// A stream whose server frames are marked (see the module).
pub(crate) struct Marking<S> {
    io: S,
    marks: Marks,
    /// The last four bytes of the `101` head while it lasts (`None` after its end).
    head: Option<u32>,
    /// Read, not yet marked (a frame header not yet whole).
    held: Vec<u8>,
    /// Marked, to pass on.
    ready: Vec<u8>,
    /// Bytes of the current frame not yet marked.
    left: u64,
}

impl<S> Marking<S> {
    pub(crate) fn new(io: S, marks: Marks) -> Self {
        Self {
            io,
            marks,
            head: Some(0),
            held: Vec::new(),
            ready: Vec::new(),
            left: 0,
        }
    }

    /// Marks what `held` allows and moves it to `ready`.
    fn mark(&mut self) {
        let mut pos = 0;
        while let Some(last4) = &mut self.head {
            let Some(&b) = self.held.get(pos) else { break };
            *last4 = (*last4 << 8) | u32::from(b);
            pos += 1;
            // The response head ends at the first blank line.
            if *last4 == u32::from_be_bytes(*b"\r\n\r\n") {
                self.head = None;
            }
        }
        while self.head.is_none() && pos < self.held.len() {
            if self.left > 0 {
                let n = self.left.min((self.held.len() - pos) as u64);
                pos += n as usize;
                self.left -= n;
                continue;
            }
            let Some((len, header)) = frame_len(&self.held[pos..]) else {
                break;
            };
            let (b0, op) = (self.held[pos], self.held[pos] & 0x0f);
            if op == 0x1 || op == 0x2 {
                let compressed = b0 & 0x40 != 0;
                if compressed {
                    self.held[pos] = (b0 & 0xb0) | 0x2;
                }
                self.marks
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_back(compressed.then_some(op == 0x1));
            }
            self.left = len + header as u64;
        }
        self.ready.extend(self.held.drain(..pos));
    }
}

/// A frame's payload length and header size, once its header is whole.
fn frame_len(buf: &[u8]) -> Option<(u64, usize)> {
    let b1 = *buf.get(1)?;
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
    if buf.len() < header {
        return None;
    }
    let len = match ext {
        0 => u64::from(b1 & 0x7f),
        2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        _ => u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
    };
    Some((len, header))
}

impl<S: AsyncRead + Unpin> AsyncRead for Marking<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // End of stream: a partial header goes on as it is, for the reader to fail on.
                this.ready.append(&mut this.held);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.held.extend_from_slice(rb.filled());
            this.mark();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Marking<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One compressed message inflated (the sync flush's tail put back).
pub(crate) fn inflate(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut input = Vec::with_capacity(data.len() + 4);
    input.extend_from_slice(data);
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let before = (d.total_in(), out.len());
        let status = d
            .decompress_vec(&input[d.total_in() as usize..], &mut out, FlushDecompress::Sync)
            .map_err(io::Error::other)?;
        let room = out.len() < out.capacity();
        if status == Status::StreamEnd || (d.total_in() as usize == input.len() && room) {
            return Ok(out);
        }
        if (d.total_in(), out.len()) == before && room {
            return Err(io::Error::other("a compressed message that does not inflate"));
        }
    }
}
