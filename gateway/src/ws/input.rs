//! The read side of a WebSocket connection, holding no parse buffer between messages.
//!
//! fastwebsockets' frame reader allocates an 8 KiB buffer when it is created and keeps it for
//! its lifetime; on an idle connection that buffer is most of the memory the connection costs.
//! [`Input`] feeds the reader at most one frame at a time (it reads just enough of each frame
//! header to know the frame's length), so when the reader returns a frame and `Input` holds
//! nothing more, the reader's buffer is empty and the session can drop it. Between messages a
//! connection then holds only this small struct.
//!
//! With permessage-deflate, it also tells the session which frames begin a compressed
//! message (RSV1), and hands those to the frame reader as plain binary frames: the reader
//! refuses reserved bits, and would check a text frame's compressed bytes as UTF-8.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Bytes read ahead from the socket are limited to this much at a time.
const READ_CHUNK: usize = 16 * 1024;

/// What the frame last handed over begins ([`Input`]'s `kind`).
pub(super) mod kind {
    /// Anything but a compressed message's first frame.
    pub(in crate::ws) const PLAIN: u8 = 0;
    /// A compressed binary message.
    pub(in crate::ws) const COMPRESSED_BINARY: u8 = 1;
    /// A compressed text message (handed over as binary).
    pub(in crate::ws) const COMPRESSED_TEXT: u8 = 2;
}

/// A frame-at-a-time reader over the socket's read half.
pub(super) struct Input<'a, R> {
    rd: R,
    /// Read from the socket, not yet handed to the frame reader.
    pending: Vec<u8>,
    /// Bytes of the current frame not yet handed over (0: at a frame boundary).
    frame_left: usize,
    /// Set when everything read so far has been handed over and ended a frame.
    idle: &'a AtomicBool,
    /// Whether the client may compress messages (permessage-deflate was agreed).
    inflates: bool,
    /// What the current frame begins, one of [`kind`].
    kind: &'a AtomicU8,
}

impl<'a, R: AsyncRead + Unpin> Input<'a, R> {
    pub(super) fn new(rd: R, idle: &'a AtomicBool, inflates: bool, kind: &'a AtomicU8) -> Self {
        idle.store(true, Ordering::Relaxed);
        kind.store(kind::PLAIN, Ordering::Relaxed);
        Self {
            rd,
            pending: Vec::new(),
            frame_left: 0,
            idle,
            inflates,
            kind,
        }
    }

    /// Notes what the frame `pending` starts with begins; a compressed message's first frame
    /// goes on with RSV1 clear, as binary. RSV1 anywhere else (a control or continuation
    /// frame, or without the extension) stays, for the frame reader to refuse (1002).
    fn note_frame(&mut self) {
        let b0 = self.pending[0];
        let op = b0 & 0x0f;
        let compressed = self.inflates && b0 & 0x40 != 0 && (op == 0x1 || op == 0x2);
        let k = if compressed {
            self.pending[0] = (b0 & 0xb0) | 0x2;
            if op == 0x1 {
                kind::COMPRESSED_TEXT
            } else {
                kind::COMPRESSED_BINARY
            }
        } else {
            kind::PLAIN
        };
        self.kind.store(k, Ordering::Relaxed);
    }

    /// Waits until the peer sends something; `false` at end of stream.
    pub(super) async fn wait(&mut self) -> io::Result<bool> {
        if !self.pending.is_empty() {
            return Ok(true);
        }
        std::future::poll_fn(|cx| self.poll_fill(cx, 64)).await.map(|n| n > 0)
    }

    /// Releases the read-ahead buffer if it is empty.
    pub(super) fn shrink(&mut self) {
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
    }

    /// Reads and discards until end of stream.
    pub(super) async fn discard(&mut self) {
        self.pending = Vec::new();
        let mut buf = vec![0u8; 4096];
        while matches!(tokio::io::AsyncReadExt::read(&mut self.rd, &mut buf).await, Ok(n) if n > 0) {}
    }

    /// Reads up to `want` more bytes from the socket into `pending`.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let start = self.pending.len();
        self.pending.resize(start + want.max(1), 0);
        let mut rb = ReadBuf::new(&mut self.pending[start..]);
        let polled = Pin::new(&mut self.rd).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        self.pending.truncate(start + n);
        ready!(polled)?;
        Poll::Ready(Ok(n))
    }
}

/// The whole length (header and payload) of the frame that `buf` starts with, once its header
/// is complete.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let b1 = *buf.get(1)?;
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let head = 2 + ext + mask;
    if buf.len() < head {
        return None;
    }
    let payload = match ext {
        0 => u64::from(b1 & 0x7f),
        2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        _ => u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
    };
    Some(usize::try_from(payload).unwrap_or(usize::MAX).saturating_add(head))
}

impl<R: AsyncRead + Unpin> AsyncRead for Input<'_, R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.frame_left == 0 {
                if let Some(len) = frame_len(&this.pending) {
                    this.frame_left = len;
                    this.note_frame();
                }
            }
            if this.frame_left > 0 && !this.pending.is_empty() {
                let n = this.frame_left.min(this.pending.len()).min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.drain(..n);
                this.frame_left -= n;
                this.idle
                    .store(this.frame_left == 0 && this.pending.is_empty(), Ordering::Relaxed);
                return Poll::Ready(Ok(()));
            }
            // Need more: the rest of a header (a few bytes) or of the current frame.
            let want = if this.frame_left == 0 {
                14
            } else {
                this.frame_left.min(READ_CHUNK)
            };
            if ready!(this.poll_fill(cx, want))? == 0 {
                // End of stream: hand over nothing, which the frame reader sees as EOF.
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths() {
        assert_eq!(frame_len(&[0x81]), None);
        assert_eq!(frame_len(&[0x81, 0x85, 1, 2, 3]), None, "mask key incomplete");
        assert_eq!(frame_len(&[0x81, 0x85, 1, 2, 3, 4]), Some(11));
        assert_eq!(frame_len(&[0x81, 0x05]), Some(7));
        assert_eq!(frame_len(&[0x82, 0xfe, 0x01, 0x00, 0, 0, 0, 0]), Some(256 + 8));
        let mut long = vec![0x82, 0xff];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        long.extend_from_slice(&[0; 4]);
        assert_eq!(frame_len(&long), Some(70_000 + 14));
    }

    #[tokio::test]
    async fn hands_over_one_frame_at_a_time() {
        use tokio::io::AsyncReadExt;
        // Two masked frames (mask key 0) arriving in one read.
        let wire: Vec<u8> = [
            &[0x81u8, 0x82, 0, 0, 0, 0, b'h', b'i'][..],
            &[0x81, 0x81, 0, 0, 0, 0, b'!'],
        ]
        .concat();
        let idle = AtomicBool::new(false);
        let kind = AtomicU8::new(kind::PLAIN);
        let mut input = Input::new(&wire[..], &idle, false, &kind);
        assert!(input.wait().await.unwrap());
        let mut buf = [0u8; 64];
        let n = input.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &wire[..8], "only the first frame");
        assert!(!idle.load(Ordering::Relaxed), "the second frame is still pending");
        let n = input.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &wire[8..]);
        assert!(idle.load(Ordering::Relaxed));
        input.shrink();
        assert!(!input.wait().await.unwrap(), "end of stream");
    }

    #[tokio::test]
    async fn compressed_first_frames_go_on_as_plain_binary_and_are_noted() {
        use tokio::io::AsyncReadExt;
        // A compressed text frame, a compressed binary one not finished, its continuation
        // (RSV1 set, which only a first frame may carry), a ping with RSV1, RSV2 on text.
        let frames: [&[u8]; 5] = [
            &[0xc1, 0x80, 0, 0, 0, 0],
            &[0x42, 0x80, 0, 0, 0, 0],
            &[0xc0, 0x80, 0, 0, 0, 0],
            &[0xc9, 0x80, 0, 0, 0, 0],
            &[0xa1, 0x80, 0, 0, 0, 0],
        ];
        let expected = [
            (0x82, kind::COMPRESSED_TEXT),
            (0x02, kind::COMPRESSED_BINARY),
            (0xc0, kind::PLAIN),
            (0xc9, kind::PLAIN),
            (0xa1, kind::PLAIN),
        ];
        for inflates in [true, false] {
            let wire = frames.concat();
            let (idle, k) = (AtomicBool::new(false), AtomicU8::new(kind::PLAIN));
            let mut input = Input::new(&wire[..], &idle, inflates, &k);
            for (i, (first, noted)) in expected.into_iter().enumerate() {
                let mut buf = [0u8; 16];
                let n = input.read(&mut buf).await.unwrap();
                assert_eq!(n, 6);
                if inflates {
                    assert_eq!((buf[0], k.load(Ordering::Relaxed)), (first, noted), "frame {i}");
                } else {
                    assert_eq!(
                        (buf[0], k.load(Ordering::Relaxed)),
                        (frames[i][0], kind::PLAIN),
                        "frame {i}"
                    );
                }
            }
        }
    }
}
