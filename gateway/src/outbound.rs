//! A connection's outbound queue: bounded in bytes, drained by one writer in batches.
//!
//! Producers (the hub, the session) never wait: [`Outbound::push`] either queues the frame
//! or, when the queue would pass its byte bound, marks the connection a slow consumer
//! (close 4008) and drops what is queued. The writer takes everything queued at once and
//! writes it with vectored writes, so a burst costs one syscall per batch, not per frame.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use herald_proto::frame::{EventRef, ServerFrame};
use herald_proto::{CloseCode, Codec};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::sync::lock;

/// WebSocket opcodes the gateway writes.
pub(crate) mod opcode {
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
}

/// How a recipient's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A whole WebSocket frame in the connection's codec.
    WebSocket(Codec),
    /// The JSON frame alone, for the HTTP transports.
    Bare,
}

/// An event as a recipient in `format` receives it.
pub(crate) fn event_frame(ev: EventRef<'_>, format: Format) -> Bytes {
    match format {
        Format::WebSocket(Codec::Json) => ws_frame(opcode::TEXT, &Codec::Json.encode_event(ev)),
        Format::WebSocket(Codec::MsgPack) => ws_frame(opcode::BINARY, &Codec::MsgPack.encode_event(ev)),
        Format::Bare => Bytes::from(Codec::Json.encode_event(ev)),
    }
}

/// Any other server frame as a recipient in `format` receives it.
pub(crate) fn encode_for(format: Format, frame: &ServerFrame) -> Bytes {
    match format {
        Format::WebSocket(codec) => {
            let op = if codec.is_binary() {
                opcode::BINARY
            } else {
                opcode::TEXT
            };
            ws_frame(op, &codec.encode_server(frame))
        }
        Format::Bare => Bytes::from(Codec::Json.encode_server(frame)),
    }
}

/// One queued frame, already encoded for the wire, and what it holds.
#[derive(Debug, Clone)]
pub struct Item {
    pub bytes: Bytes,
    pub content: Content,
}

/// What a queued frame holds, so that no transport reads it back: SSE names its events and
/// moves its cursor by it, a poll answer keeps only events, the writer times live ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Content {
    /// Anything else (welcome, acks, errors, pings, close).
    #[default]
    Other,
    /// A room event. `room` is set for the HTTP transports (their cursors need it) and
    /// `stored_us` (µs since the epoch when stored) for live events only.
    Event {
        room: Option<Arc<str>>,
        seq: u64,
        stored_us: u64,
    },
    /// A presence snapshot or diff.
    Presence,
    /// A user's status.
    Status,
    /// The room's seqs started over (its stream was recreated): the HTTP transports say
    /// `unrecovered` for it and move its cursor back to 0 (no bytes of its own).
    Unrecovered(Arc<str>),
}

impl Item {
    /// A frame that is not an event.
    pub(crate) fn frame(bytes: Bytes) -> Self {
        Self {
            bytes,
            content: Content::Other,
        }
    }

    /// When the live event in this frame was stored (µs since the epoch), if it is one.
    pub(crate) fn stored_us(&self) -> Option<u64> {
        match self.content {
            Content::Event { stored_us, .. } if stored_us > 0 => Some(stored_us),
            _ => None,
        }
    }
}

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The byte bound was passed: the connection is now closing with 4008.
    Overflow,
    /// The connection is already closing.
    Closed,
}

/// A bounded, byte-counted frame queue with one consumer.
#[derive(Debug)]
pub struct Outbound {
    queue: Mutex<Queue>,
    notify: Notify,
    /// Woken whenever the writer takes what is queued (paced replays wait on it).
    drained: Notify,
    limit: usize,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Item>,
    bytes: usize,
    close: Option<Close>,
}

/// How the writer should end the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The close frame to send; `None` when one is already queued.
    pub code: Option<CloseCode>,
}

// === impl Outbound ===

impl Outbound {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            drained: Notify::new(),
            limit,
        })
    }

    /// Queues a frame unless that would pass the byte bound.
    pub fn push(&self, item: Item) -> Pushed {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return Pushed::Closed;
        }
        // The bound is on the backlog: one frame larger than the bound still goes out alone
        // (an event is at most NATS's `max_payload`), or its room could never be read.
        if q.bytes > 0 && q.bytes + item.bytes.len() > self.limit {
            q.items.clear();
            q.bytes = 0;
            q.close = Some(Close {
                code: Some(CloseCode::SLOW_CONSUMER),
            });
            drop(q);
            crate::metrics::slow_consumer();
            self.notify.notify_one();
            return Pushed::Overflow;
        }
        q.bytes += item.bytes.len();
        q.items.push_back(item);
        drop(q);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Queues a frame that is not an event.
    pub fn push_frame(&self, bytes: Bytes) -> Pushed {
        self.push(Item::frame(bytes))
    }

    /// Asks the writer to end the connection after what is queued. The first close wins.
    pub fn close(&self, code: Option<CloseCode>) {
        let mut q = lock(&self.queue);
        if q.close.is_none() {
            q.close = Some(Close { code });
        }
        drop(q);
        self.notify.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        lock(&self.queue).close.is_some()
    }

    /// Moves everything queued into `batch`; returns the close request, if any. Into an
    /// empty `batch` the queue's buffer goes with its items and the batch's buffer becomes
    /// the queue's, so a busy connection allocates nothing; a queue found empty lets go of
    /// its buffer, so an idle connection holds none.
    pub fn take(&self, batch: &mut Vec<Item>) -> Option<Close> {
        let mut q = lock(&self.queue);
        if q.items.is_empty() {
            q.items = VecDeque::new();
        } else if batch.is_empty() {
            let spare = VecDeque::from(std::mem::take(batch));
            *batch = Vec::from(std::mem::replace(&mut q.items, spare));
        } else {
            batch.extend(q.items.drain(..));
        }
        q.bytes = 0;
        let close = q.close;
        drop(q);
        self.drained.notify_waiters();
        close
    }

    /// Waits until at most half the bound is queued; false if the connection is closing.
    pub async fn wait_for_room(&self) -> bool {
        loop {
            let drained = self.drained.notified();
            {
                let q = lock(&self.queue);
                if q.close.is_some() {
                    return false;
                }
                if q.bytes <= self.limit / 2 {
                    return true;
                }
            }
            drained.await;
        }
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Waits until something is pushed or a close is requested.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.queue).bytes
    }
}

/// Encodes one unmasked server frame (FIN set): header and payload in one buffer.
pub(crate) fn ws_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut buf = BytesMut::with_capacity(len + 10);
    buf.put_u8(0x80 | opcode);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        buf.put_u8(126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
    buf.put_slice(payload);
    buf.freeze()
}

/// A close frame with `code` and its reason.
pub(crate) fn close_frame(code: CloseCode) -> Bytes {
    let reason = code.reason().as_bytes();
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.0.to_be_bytes());
    payload.extend_from_slice(reason);
    ws_frame(opcode::CLOSE, &payload)
}

/// Writes every item with vectored writes (up to 64 buffers per call), then flushes.
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, items: &[Item]) -> io::Result<usize> {
    let total: usize = items.iter().map(|i| i.bytes.len()).sum();
    let (mut idx, mut off) = (0, 0);
    while idx < items.len() {
        let mut slices = Vec::with_capacity(64.min(items.len() - idx));
        slices.push(IoSlice::new(&items[idx].bytes[off..]));
        slices.extend(items[idx + 1..].iter().take(63).map(|i| IoSlice::new(&i.bytes)));
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let left = items[idx].bytes.len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    w.flush().await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> Item {
        Item::frame(Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn frames_have_the_right_length_encoding() {
        assert_eq!(&ws_frame(opcode::TEXT, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = ws_frame(opcode::BINARY, &[0; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
        let f = ws_frame(opcode::BINARY, &[0; 70_000]);
        assert_eq!(&f[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(&close_frame(CloseCode::SLOW_CONSUMER)[..4], &[0x88, 15, 0x0f, 0xa8]);
    }

    #[test]
    fn the_byte_bound_holds() {
        let out = Outbound::new(100);
        assert_eq!(out.push(item(60)), Pushed::Queued);
        assert_eq!(out.push(item(40)), Pushed::Queued);
        assert_eq!(out.queued_bytes(), 100);
        assert_eq!(out.push(item(1)), Pushed::Overflow);
        assert_eq!(out.queued_bytes(), 0);
        assert_eq!(out.push(item(1)), Pushed::Closed);
        let mut batch = Vec::new();
        let close = out.take(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(close.unwrap().code, Some(CloseCode::SLOW_CONSUMER));
    }

    #[test]
    fn take_keeps_order_whichever_buffer_the_items_travel_in() {
        let out = Outbound::new(1 << 20);
        let lens = |batch: &[Item]| batch.iter().map(|i| i.bytes.len()).collect::<Vec<_>>();
        let mut batch = Vec::with_capacity(2);
        for n in 1..=5 {
            out.push(item(n));
        }
        // Into an empty batch: the buffers trade places.
        assert!(out.take(&mut batch).is_none());
        assert_eq!(lens(&batch), [1, 2, 3, 4, 5]);
        // Into a batch that holds items: appended after them.
        out.push(item(6));
        out.push(item(7));
        out.take(&mut batch);
        assert_eq!(lens(&batch), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(out.queued_bytes(), 0);
        // An empty queue leaves the batch alone.
        batch.clear();
        out.take(&mut batch);
        assert!(batch.is_empty());
        out.push(item(8));
        out.take(&mut batch);
        assert_eq!(lens(&batch), [8]);
    }

    #[tokio::test]
    async fn write_all_survives_partial_writes() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let items: Vec<Item> = (1..=20).map(item).collect();
        let expect: usize = (1..=20).sum();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got).await.unwrap();
            got.len()
        });
        assert_eq!(write_all(&mut a, &items).await.unwrap(), expect);
        drop(a);
        assert_eq!(reader.await.unwrap(), expect);
    }
}
