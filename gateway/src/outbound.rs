//! A connection's outbound queue: bounded in bytes, drained by one writer in batches.
//!
//! Producers (the hub, the session) never wait: [`Outbound::push`] either queues the frame
//! or, when the queue would pass its byte bound, marks the connection a slow consumer
//! (close 4008) and drops what is queued. The writer takes everything queued at once and
//! writes it with vectored writes, so a burst costs one syscall per batch, not per frame.
//! A plain-TCP WebSocket connection lends the queue its socket: a frame pushed with
//! [`Outbound::push_now`] while nothing is queued and the writer holds nothing is written
//! there and then by the pusher (a small room's delivery, the session), and the writer is
//! not woken at all; what the socket does not take at once is queued for the writer.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use herald_proto::frame::{EventRef, ServerFrame};
use herald_proto::{CloseCode, Codec};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::Transport;
use crate::sync::lock;

/// The largest frame written directly ([`Outbound::push_now`]): a bigger one is queued, so
/// that copying it into the socket does not hold up the delivering task (and the room
/// table's lock it holds) for every subscriber in turn.
const DIRECT_MAX_BYTES: usize = 16 * 1024;

/// WebSocket opcodes the gateway writes.
pub(crate) mod opcode {
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
    /// RSV1 on a message's first frame: its payload is compressed (permessage-deflate).
    pub(crate) const COMPRESSED: u8 = 0x40;
}

/// How a recipient's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A whole WebSocket frame in the connection's codec; events compressed as the
    /// connection's permessage-deflate says (other frames never are).
    WebSocket(Codec, Option<Deflate>),
    /// The JSON frame alone, for the HTTP transports.
    Bare,
}

/// How a WebSocket recipient's events are compressed: those of at least the given size (in
/// bytes, as encoded) that compressing makes smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deflate {
    /// Compressed once per event and codec, the bytes shared by every such recipient.
    Shared(u32),
    /// Compressed for each delivery (`--ws-compression per-connection`, for comparison).
    PerDelivery(u32),
}

/// An event as a recipient in `format` receives it.
pub(crate) fn event_frame(ev: EventRef<'_>, format: Format) -> Bytes {
    match format {
        Format::WebSocket(codec, compress) => data_frame(data_opcode(codec), &codec.encode_event(ev), compress),
        Format::Bare => Bytes::from(Codec::Json.encode_event(ev)),
    }
}

/// The data opcode of a codec's frames.
pub(crate) fn data_opcode(codec: Codec) -> u8 {
    if codec.is_binary() {
        opcode::BINARY
    } else {
        opcode::TEXT
    }
}

/// A data frame (`op` text or binary), compressed when `compress` names a size the payload
/// reaches and compressing makes it smaller.
pub(crate) fn data_frame(op: u8, payload: &[u8], compress: Option<Deflate>) -> Bytes {
    let min = compress.map(|(Deflate::Shared(min) | Deflate::PerDelivery(min))| min);
    if min.is_some_and(|min| payload.len() >= min as usize) {
        if let Some(z) = crate::deflate::compress(payload) {
            crate::metrics::compressed(payload.len(), z.len());
            return ws_frame(opcode::COMPRESSED | op, &z);
        }
    }
    ws_frame(op, payload)
}

/// Any other server frame as a recipient in `format` receives it.
pub(crate) fn encode_for(format: Format, frame: &ServerFrame) -> Bytes {
    match format {
        Format::WebSocket(codec, _) => ws_frame(data_opcode(codec), &codec.encode_server(frame)),
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
    /// The app ended the connection (`herald.api.disconnect`): SSE sends it as `event:
    /// disconnect`, a poll answer in its `disconnect` field.
    Disconnect(Arc<herald_proto::frame::Disconnect>),
    /// The server API subscribed the client to a room whose last seq was `seq` (no bytes):
    /// SSE attaches the room, a poll answer names it in `subscribed`.
    Subscribed { room: Arc<str>, seq: u64 },
    /// The server API took a room from the client (no bytes).
    Unsubscribed(Arc<str>),
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
    /// The writer took items and has not yet come back for more: it may be writing them.
    writing: bool,
    /// The connection's socket, for frames pushed while nothing is queued or being written.
    direct: Option<Arc<OwnedWriteHalf>>,
    /// The first queued item is the rest of a frame the socket took part of: whatever else
    /// is dropped, it is not, or the next frame (the close) would land inside it.
    started: bool,
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

    /// Lends the queue the connection's socket (plain-TCP WebSocket connections): frames
    /// pushed while nothing is queued or being written are written at once by the pusher.
    pub(crate) fn write_directly(&self, tcp: Arc<OwnedWriteHalf>) {
        lock(&self.queue).direct = Some(tcp);
    }

    /// Takes the socket back: nothing is written directly any more (the connection ended).
    pub(crate) fn end_direct(&self) {
        lock(&self.queue).direct = None;
    }

    /// Queues a frame unless that would pass the byte bound.
    pub fn push(&self, item: Item) -> Pushed {
        self.push_as(item, false)
    }

    /// The same, or when the connection lent its socket and nothing is queued or being
    /// written, writes the frame there and then. For one frame at a time (a small room's
    /// event, an op's answer): frames that come in runs (a replay) are cheaper queued,
    /// where the writer takes them in one write; and so is a big room's fan-out, which the
    /// connections' writers share over the cores instead of one task writing every socket.
    pub fn push_now(&self, item: Item) -> Pushed {
        self.push_as(item, true)
    }

    /// [`Outbound::push_now`] when `now`, else [`Outbound::push`].
    pub(crate) fn push_as(&self, mut item: Item, now: bool) -> Pushed {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return Pushed::Closed;
        }
        // Tests turn direct writes off to reach the writer's own fail points (the closure is
        // what the fail point returns from; without the `failpoints` feature it is empty).
        #[allow(clippy::redundant_closure_call)]
        let direct = (|| {
            fail::fail_point!("outbound.direct", |_| None);
            q.direct
                .as_ref()
                .filter(|_| now && !q.writing && q.items.is_empty() && item.bytes.len() <= DIRECT_MAX_BYTES)
        })();
        if let Some(tcp) = direct {
            // Nothing is ahead of this frame: written here, in order. The socket never
            // blocks the pusher: what it does not take now goes to the writer.
            let tcp: &TcpStream = (**tcp).as_ref();
            match tcp.try_write(&item.bytes) {
                Ok(n) if n == item.bytes.len() => {
                    drop(q);
                    record_websocket_sent(std::slice::from_ref(&item), n);
                    return Pushed::Queued;
                }
                Ok(n) => {
                    crate::metrics::sent(Transport::WebSocket, 0, n as u64);
                    item.bytes = item.bytes.slice(n..);
                    q.started = n > 0;
                }
                // Full (or failed: the writer meets the error and ends the connection).
                Err(_) => {}
            }
        }
        // The bound is on the backlog: one frame larger than the bound still goes out alone
        // (an event is at most NATS's `max_payload`), or its room could never be read.
        if q.bytes > 0 && q.bytes + item.bytes.len() > self.limit {
            let rest = if q.started { q.items.pop_front() } else { None };
            q.items.clear();
            q.bytes = rest.as_ref().map_or(0, |r| r.bytes.len());
            q.items.extend(rest);
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
    /// Until it comes back with an empty queue, the writer counts as writing what it took.
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
        q.writing = !batch.is_empty();
        q.started = false;
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

/// A lent socket as its connection's writer writes it: through `&TcpStream`, as direct
/// writes do.
pub(crate) struct SharedWrite(pub(crate) Arc<OwnedWriteHalf>);

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

/// Counts frames a WebSocket connection has written (`bytes` of them), and the delivery
/// latency of the live events among them.
pub(crate) fn record_websocket_sent(items: &[Item], bytes: usize) {
    crate::metrics::sent(Transport::WebSocket, items.len() as u64, bytes as u64);
    let now_us = herald_service::now_ns() / 1000;
    for stored_us in items.iter().filter_map(Item::stored_us) {
        crate::metrics::delivery_latency(now_us.saturating_sub(stored_us) as f64 / 1e6);
    }
}

/// Encodes one unmasked server frame (FIN set): header and payload in one buffer. `opcode`
/// may carry [`opcode::COMPRESSED`].
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
    close_frame_with(code, code.reason())
}

/// A close frame with `code` and `reason` (at most 123 bytes: a control frame's payload
/// holds 125).
pub(crate) fn close_frame_with(code: CloseCode, reason: &str) -> Bytes {
    let reason = reason.as_bytes();
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

    /// A connected loopback pair: the server's side shared as a connection lends it, and
    /// the peer.
    async fn tcp_pair() -> (Arc<OwnedWriteHalf>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        // The read half goes: the socket stays open while the write half lives.
        let (_, wr) = ours.into_split();
        (Arc::new(wr), peer)
    }

    async fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        let read = tokio::io::AsyncReadExt::read_exact(peer, &mut got);
        tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .unwrap()
            .unwrap();
        got
    }

    #[tokio::test]
    async fn a_lent_socket_takes_frames_at_once_only_while_nothing_is_ahead_of_them() {
        let (tcp, mut peer) = tcp_pair().await;
        let out = Outbound::new(1 << 20);
        out.write_directly(Arc::clone(&tcp));
        // Nothing queued, no writer busy: written by the pusher, nothing left for a writer.
        assert_eq!(out.push_now(Item::frame(Bytes::from_static(b"one"))), Pushed::Queued);
        assert_eq!(out.queued_bytes(), 0);
        assert_eq!(read_exactly(&mut peer, 3).await, b"one");
        // The writer holds a batch: later frames queue behind it.
        out.end_direct();
        out.push_now(Item::frame(Bytes::from_static(b"x")));
        out.write_directly(Arc::clone(&tcp));
        let mut batch = Vec::new();
        out.take(&mut batch);
        assert_eq!(batch.len(), 1);
        out.push_now(item(2));
        assert_eq!(out.queued_bytes(), 2);
        // It comes back for more and gets that: still writing.
        batch.clear();
        out.take(&mut batch);
        assert_eq!(batch.len(), 1);
        out.push_now(item(1));
        assert_eq!(out.queued_bytes(), 1);
        batch.clear();
        out.take(&mut batch);
        assert_eq!(batch.len(), 1);
        // Once it finds the queue empty the writer is idle, and frames go straight out again
        // (the peer gets "two" right after "one": nothing queued was written meanwhile).
        batch.clear();
        out.take(&mut batch);
        assert!(batch.is_empty());
        out.push_now(Item::frame(Bytes::from_static(b"two")));
        assert_eq!(out.queued_bytes(), 0);
        assert_eq!(read_exactly(&mut peer, 3).await, b"two");
        // A big frame is queued: the writer copies it into the socket, not the pusher.
        out.push_now(Item::frame(Bytes::from(vec![b'b'; DIRECT_MAX_BYTES + 1])));
        assert_eq!(out.queued_bytes(), DIRECT_MAX_BYTES + 1);
        out.take(&mut batch);
        batch.clear();
        out.take(&mut batch);
        // `push` always queues (runs of frames go out in one write).
        out.push_frame(Bytes::from_static(b"run"));
        assert_eq!(out.queued_bytes(), 3);
        out.take(&mut batch);
        batch.clear();
        out.take(&mut batch);
        // Taken back: frames queue for the writer.
        out.end_direct();
        out.push_now(Item::frame(Bytes::from_static(b"three")));
        assert_eq!(out.queued_bytes(), 5);
    }

    #[tokio::test]
    async fn what_a_full_socket_does_not_take_is_queued_in_order_and_a_closing_queue_takes_nothing() {
        let (tcp, mut peer) = tcp_pair().await;
        let out = Outbound::new(64 << 20);
        out.write_directly(Arc::clone(&tcp));
        // The peer reads nothing: the socket's buffers fill and the rest is queued.
        let frames: Vec<Bytes> = (0..1024u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; DIRECT_MAX_BYTES]))
            .collect();
        for f in &frames {
            out.push_now(Item::frame(f.clone()));
        }
        let queued = out.queued_bytes();
        let total: usize = frames.iter().map(Bytes::len).sum();
        assert!(queued > 0 && queued < total, "{queued} of {total} queued");
        // The peer then reads everything: what the socket took, then the queue, in order.
        let reader = tokio::spawn(async move { read_exactly(&mut peer, total).await });
        let mut batch = Vec::new();
        out.take(&mut batch);
        write_all(&mut SharedWrite(Arc::clone(&tcp)), &batch).await.unwrap();
        let got = reader.await.unwrap();
        let want: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        assert!(got == want, "bytes out of order");
        // A closing queue writes nothing more.
        out.close(None);
        assert_eq!(out.push_now(Item::frame(Bytes::from_static(b"late"))), Pushed::Closed);
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
