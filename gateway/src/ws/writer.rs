//! A WebSocket connection's writer: drains the outbound queue in batches, pings, and closes
//! idle or expired connections, also while a write is blocked on a peer that does not read;
//! a write that makes no progress for `--write-timeout` drops the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use herald_proto::CloseCode;
use herald_service::now_ms;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::config::Config;
use crate::metrics::{self, Transport};
use crate::outbound::{self, close_frame, opcode, ws_frame, Item, Outbound};

/// Items of buffer a busy writer keeps between batches (it and the queue trade buffers).
const MAX_KEPT_BATCH: usize = 64;

/// How long a closing connection's peer gets to read what is queued.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// `last_seen` while the reader runs an op: the server, not the peer, is what is not reading
/// (a paced replay waits for the client to read), so the idle check waits. The op's writes
/// are still bounded by the write timeout.
pub(super) const BUSY: u64 = u64::MAX;

/// Drains the queue in batches, pings every interval, and closes idle or expired sessions.
///
/// The rare paths (a write the socket does not take at once, the close) run boxed: this
/// future lives in every connection's task, and its size is that of its largest state (and
/// its arguments: hence the settings by reference).
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    out: &Outbound,
    last_seen: &AtomicU64,
    config: &Config,
    expires_at: Option<u64>,
) {
    let ping_interval = config.ping_interval;
    let mut watch = Watch {
        out,
        last_seen,
        ping: tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval),
        idle_limit: 2 * ping_interval.as_millis() as u64,
        // Boxed: only tokens that expire pay for a timer.
        expiry: expires_at.map(|exp| {
            let left = Duration::from_millis(exp.saturating_mul(1000).saturating_sub(now_ms()));
            Box::pin(tokio::time::sleep(left))
        }),
    };
    let mut batch: Vec<Item> = Vec::new();
    loop {
        let close = out.take(&mut batch);
        if !batch.is_empty() {
            fail::fail_point!("ws.write");
            // Nearly always the socket takes the whole batch at once: then no timer or
            // waiter is touched for it.
            let written = {
                let progress = AtomicUsize::new(0);
                let mut counted = Counted {
                    w: &mut w,
                    written: &progress,
                };
                let write = outbound::write_all(&mut counted, &batch);
                tokio::pin!(write);
                match futures_util::poll!(write.as_mut()) {
                    Poll::Ready(r) => r,
                    Poll::Pending => match Box::pin(watch.blocked(write, &progress, config.write_timeout)).await {
                        Some(r) => r,
                        None => return,
                    },
                }
            };
            match written {
                Ok(bytes) => outbound::record_websocket_sent(&batch, bytes),
                Err(_) => return,
            }
            batch.clear();
            batch.shrink_to(MAX_KEPT_BATCH);
            continue;
        }
        if let Some(close) = close {
            return Box::pin(close_with(&mut w, close.code)).await;
        }
        // Idle until more is queued: the connection holds no batch meanwhile (the queue let
        // go of its buffer in `take`).
        batch = Vec::new();
        tokio::select! {
            _ = out.notified() => {}
            _ = watch.ping.tick() => {
                if watch.silent() {
                    debug!("No answer for two ping intervals");
                    out.close(Some(CloseCode::GOING_AWAY));
                } else {
                    out.push_frame(ws_frame(opcode::PING, b""));
                }
            }
            _ = expire(&mut watch.expiry), if watch.expiry.is_some() => {
                watch.expiry = None;
                out.close(Some(CloseCode::POLICY));
            }
        }
    }
}

/// What the writer watches besides the queue: the ping interval, the peer's silence, the
/// token's expiry and blocked writes.
struct Watch<'a> {
    out: &'a Outbound,
    last_seen: &'a AtomicU64,
    ping: tokio::time::Interval,
    /// Silence (ms) after which the peer is dropped: two ping intervals.
    idle_limit: u64,
    /// `None` for a token that does not expire, and once it has fired.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Watch<'_> {
    fn silent(&self) -> bool {
        let seen = self.last_seen.load(Ordering::Relaxed);
        seen != BUSY && now_ms().saturating_sub(seen) > self.idle_limit
    }

    /// Finishes a write the socket did not take at once, still pinging and checking. A
    /// peer that stops reading blocks it: once no byte of it has been taken for the write
    /// timeout, the peer is dropped (`None`), whatever it still sends (a client that stops
    /// reading but sends pongs would otherwise hold its queue and this batch forever). Once
    /// the connection is closing (e.g. its queue overflowed, or its token expired meanwhile)
    /// it gets a grace period to read, then is dropped. A peer that sends nothing for two
    /// ping intervals while blocked is dropped too: the checks do not wait for the write.
    /// `written` counts the bytes the socket has taken of the write.
    async fn blocked<F>(
        &mut self,
        mut write: Pin<&mut F>,
        written: &AtomicUsize,
        write_timeout: Duration,
    ) -> Option<io::Result<usize>>
    where
        F: Future<Output = io::Result<usize>>,
    {
        let out = self.out;
        let stuck = async {
            while !out.is_closing() {
                out.notified().await;
            }
            tokio::time::sleep(CLOSE_GRACE).await;
        };
        tokio::pin!(stuck);
        // The last progress, as milliseconds after `start`, noted each time the write is
        // polled; the deadline is checked against it when it falls due.
        let start = tokio::time::Instant::now();
        let progressed_ms = AtomicU64::new(0);
        let mut seen = written.load(Ordering::Relaxed);
        let mut progressing = std::future::poll_fn(|cx| {
            let polled = write.as_mut().poll(cx);
            let now = written.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                progressed_ms.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            polled
        });
        let stalled = tokio::time::sleep(write_timeout);
        tokio::pin!(stalled);
        loop {
            tokio::select! {
                r = &mut progressing => return Some(r),
                _ = &mut stuck => return None,
                _ = &mut stalled => {
                    let due = start
                        + Duration::from_millis(progressed_ms.load(Ordering::Relaxed))
                        + write_timeout;
                    if due <= tokio::time::Instant::now() {
                        debug!(timeout = ?write_timeout, "A write made no progress for the write timeout");
                        metrics::write_timeout(Transport::WebSocket);
                        return None;
                    }
                    stalled.as_mut().reset(due);
                }
                _ = expire(&mut self.expiry), if self.expiry.is_some() => {
                    self.expiry = None;
                    out.close(Some(CloseCode::POLICY));
                }
                _ = self.ping.tick() => {
                    if self.silent() {
                        debug!("No answer for two ping intervals while a write is blocked");
                        return None;
                    }
                    // This interval's ping, sent after the write: a tick taken here without
                    // one would leave a client that answers every ping silent for two
                    // intervals, and it would be closed as idle.
                    out.push_frame(ws_frame(opcode::PING, b""));
                }
            }
        }
    }
}

/// The socket, counting the bytes it takes, so that a blocked write can tell a slow peer
/// from one that stopped reading.
struct Counted<'a, W> {
    w: &'a mut W,
    written: &'a AtomicUsize,
}

impl<W: AsyncWrite + Unpin> Counted<'_, W> {
    fn count(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = polled {
            self.written.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counted<'_, W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.w).poll_write(cx, buf);
        this.count(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.w).poll_write_vectored(cx, bufs);
        this.count(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.w.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().w).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().w).poll_shutdown(cx)
    }
}

/// Sends the close frame (if the close has a code) and shuts the socket down, each within
/// two seconds.
async fn close_with<W: AsyncWrite + Unpin>(w: &mut W, code: Option<CloseCode>) {
    if let Some(code) = code {
        metrics::close(code.0);
        let frame = [Item::frame(close_frame(code))];
        let _ = tokio::time::timeout(Duration::from_secs(2), outbound::write_all(&mut *w, &frame)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), w.shutdown()).await;
}

/// Waits for the token's expiry; `select!` calls it only while there is one.
async fn expire(expiry: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    if let Some(sleep) = expiry {
        sleep.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Settings with these intervals.
    fn config(ping_interval: Duration, write_timeout: Duration) -> Config {
        let mut c = Config::for_test("nats://127.0.0.1:4222");
        c.ping_interval = ping_interval;
        c.write_timeout = write_timeout;
        c
    }

    /// A peer that never reads: the writer's first big batch blocks for good.
    fn blocked() -> (tokio::io::DuplexStream, tokio::io::DuplexStream, Arc<Outbound>) {
        let (ours, theirs) = tokio::io::duplex(64);
        let out = Outbound::new(1 << 20);
        out.push_frame(Bytes::from(vec![0u8; 4096]));
        (ours, theirs, out)
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_write_does_not_suspend_the_idle_check() {
        let (ours, _theirs, out) = blocked();
        // The peer was last heard from long ago.
        let last_seen = AtomicU64::new(0);
        let ended = tokio::time::timeout(
            Duration::from_secs(60),
            write_loop(ours, &out, &last_seen, &config(Duration::from_millis(100), HOUR), None),
        )
        .await;
        assert!(ended.is_ok(), "the writer dropped the silent peer");
    }

    /// Reads `buf.len()` bytes the way a slow link delivers them: 256 bytes per 5 ms.
    async fn read_slowly(io: &mut tokio::io::DuplexStream, buf: &mut [u8]) -> Option<()> {
        use tokio::io::AsyncReadExt;
        for chunk in buf.chunks_mut(256) {
            io.read_exact(chunk).await.ok()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Some(())
    }

    /// The opcode of the next server frame off `io` (unmasked: opcode byte, 7/16/64-bit
    /// length, payload), read slowly.
    async fn next_opcode(io: &mut tokio::io::DuplexStream) -> Option<u8> {
        let mut head = [0u8; 2];
        read_slowly(io, &mut head).await?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                read_slowly(io, &mut n).await?;
                u64::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                read_slowly(io, &mut n).await?;
                u64::from_be_bytes(n)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        read_slowly(io, &mut payload).await?;
        Some(head[0] & 0x0f)
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_that_falls_due_during_a_write_is_sent_after_it() {
        // Each interval a 4 KiB event is queued 20 ms before the ping falls due, and the
        // client reads it over 80 ms: the write is in progress when the ping is due. Every
        // interval must still bring a ping; a lost one leaves a client that answers every
        // ping silent for two intervals, and it is closed (1001).
        let interval = Duration::from_secs(1);
        let (ours, mut theirs) = tokio::io::duplex(256);
        let out = Outbound::new(1 << 20);
        let last_seen = AtomicU64::new(now_ms());
        let start = tokio::time::Instant::now();
        let settings = config(interval, HOUR);
        let writer = write_loop(ours, &out, &last_seen, &settings, None);
        let producer = tokio::spawn({
            let out = Arc::clone(&out);
            async move {
                for k in 1.. {
                    tokio::time::sleep_until(start + interval * k - Duration::from_millis(20)).await;
                    out.push_frame(ws_frame(opcode::TEXT, &[b'x'; 4096]));
                }
            }
        });
        let (mut pings, mut texts) = (0, 0);
        let reading = async {
            while let Some(op) = next_opcode(&mut theirs).await {
                match op {
                    opcode::PING => {
                        pings += 1;
                        last_seen.store(now_ms(), Ordering::Relaxed);
                    }
                    opcode::TEXT => texts += 1,
                    other => panic!("unexpected opcode {other:#x} after {pings} pings"),
                }
            }
        };
        // The writer runs beside the reader in one task, as in a connection.
        let both = async {
            tokio::select! {
                () = reading => {}
                () = writer => panic!("the writer ended"),
            }
        };
        let _ = tokio::time::timeout(interval * 40 + interval / 2, both).await;
        producer.abort();
        assert_eq!((pings, texts), (40, 40), "a ping and an event each interval");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_for_the_write_timeout_drops_the_peer() {
        let (ours, _theirs, out) = blocked();
        // Not silent: the peer keeps sending something (pongs), or an op runs.
        let last_seen = AtomicU64::new(BUSY);
        let start = tokio::time::Instant::now();
        let ended = tokio::time::timeout(
            Duration::from_secs(60),
            write_loop(
                ours,
                &out,
                &last_seen,
                &config(Duration::from_millis(100), Duration::from_secs(2)),
                None,
            ),
        )
        .await;
        assert!(ended.is_ok(), "the writer dropped the peer that stopped reading");
        assert_eq!(start.elapsed().as_secs(), 2, "after the write timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_write_that_makes_progress_outlives_the_write_timeout() {
        // 4 KiB through a 64-byte pipe, read 64 bytes every 100 ms: over 6 s, with a write
        // timeout of 1 s.
        let (ours, mut theirs, out) = blocked();
        let last_seen = AtomicU64::new(BUSY);
        let settings = config(HOUR, Duration::from_secs(1));
        let writer = write_loop(ours, &out, &last_seen, &settings, None);
        let reading = async {
            use tokio::io::AsyncReadExt;
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < 4096 {
                got += theirs.read(&mut buf).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            () = reading => {}
            () = writer => panic!("the writer dropped a peer that reads"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_write_does_not_suspend_the_token_expiry() {
        let (ours, _theirs, out) = blocked();
        let last_seen = AtomicU64::new(now_ms());
        // Expired already: the connection closes (1008), and a peer that does not read is
        // dropped after the close grace.
        let ended = tokio::time::timeout(
            Duration::from_secs(60),
            write_loop(ours, &out, &last_seen, &config(HOUR, HOUR), Some(1)),
        )
        .await;
        assert!(ended.is_ok(), "the writer gave up on the expired, blocked peer");
        assert!(out.is_closing());
    }

    /// The server frames (unmasked) that `bytes` holds, as (opcode, payload); panics if the
    /// bytes end inside a frame.
    fn whole_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= 2, "the stream ends inside a frame header");
            let (len, head) = match bytes[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
                n => (usize::from(n), 2),
            };
            assert!(
                bytes.len() >= head + len,
                "frame {} ends inside its payload: {} of {len} bytes",
                frames.len(),
                bytes.len() - head
            );
            frames.push((bytes[0] & 0x0f, bytes[head..head + len].to_vec()));
            bytes = &bytes[head + len..];
        }
        frames
    }

    #[tokio::test]
    async fn a_slow_consumer_close_is_never_written_inside_a_half_written_frame() {
        use crate::outbound::Pushed;
        use crate::outbound::SharedWrite;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let (_rd, wr) = ours.into_split();
        let wr = Arc::new(wr);
        let out = Outbound::new(1 << 20);
        out.write_directly(Arc::clone(&wr));
        // The peer reads nothing for now: events go straight to the socket until it takes
        // only part of one; the rest of that one is queued for the writer.
        let event = ws_frame(opcode::TEXT, &[b'e'; 8 * 1024]);
        let mut n = 0;
        while out.queued_bytes() == 0 {
            assert_eq!(out.push_now(Item::frame(event.clone())), Pushed::Queued);
            n += 1;
            assert!(n < 100_000, "the socket never filled");
        }
        assert!(out.queued_bytes() < event.len(), "part of the event was written");
        // More events come before the writer runs (a burst, a catch-up run): the queue
        // passes its bound and the connection closes as a slow consumer.
        let mut pushed = Pushed::Queued;
        while pushed == Pushed::Queued {
            pushed = out.push_now(Item::frame(event.clone()));
        }
        assert_eq!(pushed, Pushed::Overflow);
        // The peer reads everything the writer sends until it shuts the socket.
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut all)
                .await
                .map(|_| all)
        });
        let last_seen = AtomicU64::new(now_ms());
        let settings = config(HOUR, HOUR);
        tokio::time::timeout(
            Duration::from_secs(20),
            write_loop(SharedWrite(wr), &out, &last_seen, &settings, None),
        )
        .await
        .expect("the writer ended");
        let all = tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .expect("the peer read to the end")
            .unwrap()
            .unwrap();
        // Whole events, then the close frame with 4008.
        let frames = whole_frames(&all);
        let (last, events) = frames.split_last().expect("frames");
        assert_eq!(last.0, opcode::CLOSE);
        assert_eq!(last.1[..2], CloseCode::SLOW_CONSUMER.0.to_be_bytes());
        assert!(events.iter().all(|(op, p)| *op == opcode::TEXT && p.len() == 8 * 1024));
    }
}
