//! `GET /sse`: Server-Sent Events. Each event's `id:` is the whole cursor after it, so a
//! reconnect with `Last-Event-ID` (to any gateway) resumes every room. With `presence=` the
//! stream is a member of those rooms and carries `event: presence` frames; with `watch=`,
//! `event: status` frames. The stream counts as a connection for user status.
//!
//! Every chunk handed to hyper races the stream's ends: its queue closing (drain, slow
//! consumer), its token expiring, and `--write-timeout` without the client taking anything.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use super::{
    cursor, identify, namespace_cursor, presence_rooms, request_allowed, rooms, session_id, start_positions, watched,
    Body, HttpError, OpenGauge, Registration,
};
use crate::addr::ClientAddr;
use crate::metrics::{self, Transport};
use crate::outbound::{Content, Format, Item, Outbound};
use crate::presence::{Membership, Pending};
use crate::state::Shared;
use herald_proto::cursor::Cursor;
use herald_proto::frame::{ServerFrame, Subscribed, Unsubscribed};
use herald_proto::http::{
    Unrecovered, SSE_DISCONNECT, SSE_PRESENCE, SSE_STATUS, SSE_SUBSCRIBED, SSE_UNRECOVERED, SSE_UNSUBSCRIBED,
};
use herald_proto::Codec;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tracing::debug;

/// Writes `bytes` as the `data:` field of an event, one `data:` line per line of it (the
/// HTML standard splits at CRLF, CR and LF, and the browser joins the lines with LF).
/// Frames are single-line JSON today; this keeps any payload from ending an event early.
fn data_lines(chunk: &mut Vec<u8>, bytes: &[u8]) {
    let mut rest = bytes;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        chunk.extend_from_slice(b"data: ");
        chunk.extend_from_slice(&rest[..end.unwrap_or(rest.len())]);
        chunk.push(b'\n');
        let Some(end) = end else { return };
        let skip = if rest[end..].starts_with(b"\r\n") { 2 } else { 1 };
        rest = &rest[end + skip..];
    }
}

pub(crate) async fn sse(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    remote: ClientAddr,
) -> Result<Response<Body>, HttpError> {
    let (conn_id, conn) = shared.new_conn();
    let who = identify(shared, &req, remote).await?;
    // Counted before its rooms are checked: a refused room may cost a grant lookup, and
    // each subscription token a signature check.
    request_allowed(shared, &who)?;
    let rooms = rooms(shared, &req, &who, &[]).await?;
    let members_of = presence_rooms(shared, &req, &rooms)?;
    let watch = watched(shared, &req)?;
    let asked = cursor(&req)?;
    let asked = namespace_cursor(shared, &rooms, asked).await?;
    session_id(&req)?;
    let slot = shared.reserve(conn_id, &who)?;
    let memberships = shared.memberships_for(&who, members_of.len())?;
    let watches = shared.watches_for(&who, watch.len())?;
    fail::fail_point!("sse.positions");
    let positions = start_positions(shared, &rooms, asked.as_ref()).await?;
    let iat = who.claims.as_ref().and_then(|c| c.iat);
    let reg = Registration::new(shared, slot, conn_id, (&who.user, iat), "sse");
    fail::fail_point!("sse.membership");
    let membership = Membership::start(&shared.presence, conn_id, &conn, &who, &members_of).await;

    // One chunk between the stream and hyper (which buffers a few hundred KiB itself): what
    // the client has not read waits in the queue, where the outbound bound counts it, and a
    // client that stops reading blocks the next send at once.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    metrics::connection_opened(Transport::Sse);
    // A token without expiry gets a timer that never fires in practice.
    let left = who
        .expires_at()
        .map(|exp| Duration::from_millis((exp.saturating_mul(1000)).saturating_sub(herald_service::now_ms())));
    let stream = Stream {
        tx,
        out: Arc::clone(&reg.out),
        expiry: Box::pin(tokio::time::sleep(
            left.unwrap_or(Duration::from_secs(100 * 365 * 86_400)),
        )),
        write_timeout: shared.config.write_timeout,
        positions,
        resume: asked.unwrap_or_default(),
        rooms,
        changes: Vec::new(),
    };
    tokio::spawn(async move {
        let _open = OpenGauge(Transport::Sse);
        let _shares = (memberships, watches);
        stream.run(reg, membership, &members_of, &watch).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(StreamBody::new(body).boxed_unsync())
        .expect("static response parts"))
}

/// Bytes handed to hyper at once: the write timeout then measures the client's progress at
/// this grain (a whole catch-up page of `--replay-max-bytes` would have to be read within
/// the timeout, cutting a slow but steady client).
const SEND_PART: usize = 64 * 1024;

/// Streams with at most this many rooms give every event an `id:`.
const ID_EVERY_EVENT_ROOMS: usize = 8;

/// One SSE stream after its response head: presence, catch-up, then live.
struct Stream {
    tx: mpsc::Sender<Bytes>,
    /// The stream's queue (the registration's): its close ends the stream.
    out: Arc<Outbound>,
    /// The token's expiry: the stream ends then, and the client must come back with a
    /// fresh token.
    expiry: Pin<Box<Sleep>>,
    /// A chunk the client does not take for this long ends the stream.
    write_timeout: Duration,
    /// Where each room is; every event's `id:` is this cursor after it.
    positions: Cursor,
    /// The cursor the client resumed from.
    resume: Cursor,
    rooms: Vec<String>,
    /// Rooms the server API gave the stream or took from it, not yet carried out.
    changes: Vec<Pending>,
}

/// The stream ends: its client went away or stopped reading, its token expired, or its
/// queue closed.
struct Gone;

impl Stream {
    /// Runs the stream; what it holds (`reg`, `membership`) goes when it ends.
    async fn run(mut self, mut reg: Registration, mut membership: Membership, members_of: &[String], watch: &[String]) {
        fail::fail_point!("sse.stream");
        if self.send(Bytes::from_static(b": herald\n\n")).await.is_err() {
            return;
        }
        let shared = Arc::clone(&reg.shared);
        if self
            .presence(&shared, &mut membership, members_of, watch)
            .await
            .is_err()
        {
            return;
        }
        match self.catch_up(&shared).await {
            Ok(true) => {}
            Ok(false) | Err(Gone) => return,
        }
        if reg.attach_all(&self.rooms, &self.positions).await.is_err() {
            // The client reconnects with its Last-Event-ID.
            return;
        }
        let _ = self.live(&mut reg, shared.config.sse_keepalive).await;
    }

    /// Sends each presence room's snapshot, then the watched users' statuses, as fanout
    /// gives them: through the channel, paced by the client, so that their size (other
    /// people's data) never overflows the queue. Diffs queued meanwhile follow each snapshot.
    async fn presence(
        &mut self,
        shared: &Shared,
        membership: &mut Membership,
        rooms: &[String],
        watch: &[String],
    ) -> Result<(), Gone> {
        let mut batch = Vec::new();
        for room in rooms {
            if let Some(snapshot) = membership.follow(&shared.presence, room, &self.out).await {
                let mut chunk = Vec::new();
                named(&mut chunk, SSE_PRESENCE, &snapshot);
                self.send_counted(chunk, 1).await?;
            }
            if self.forward(&mut batch).await? {
                return Err(Gone);
            }
        }
        let statuses = membership.watch(&shared.presence, watch, &self.out).await;
        if !statuses.is_empty() {
            let mut chunk = Vec::new();
            for status in &statuses {
                named(&mut chunk, SSE_STATUS, status);
            }
            self.send_counted(chunk, statuses.len() as u64).await?;
        }
        Ok(())
    }

    /// Sends the history after the client's cursor straight to the client, a bounded page at
    /// a time (the channel and the socket pace it), so a backlog larger than the outbound
    /// bound arrives whole. A cursor that history no longer covers gets an `unrecovered`
    /// event first. False if the event store failed.
    async fn catch_up(&mut self, shared: &Shared) -> Result<bool, Gone> {
        let upstream = &shared.hub;
        let limit = shared.page_limit();
        let mut unrecovered = Vec::new();
        for room in &self.rooms {
            let Some(since) = self.resume.get(room) else { continue };
            let Ok(resume) = upstream.resume(room, since).await else {
                return Ok(false);
            };
            if !resume.recovered {
                unrecovered.push(room.clone());
            }
            self.positions.set(room, resume.after);
        }
        if !unrecovered.is_empty() {
            let frame = serde_json::to_vec(&Unrecovered { rooms: unrecovered }).expect("plain data serializes");
            let mut chunk = Vec::new();
            named(&mut chunk, SSE_UNRECOVERED, &frame);
            self.send(chunk.into()).await?;
        }
        let resumed: Vec<String> = self
            .rooms
            .iter()
            .filter(|r| self.resume.get(r).is_some())
            .cloned()
            .collect();
        for room in &resumed {
            loop {
                let after = self.positions.get(room).unwrap_or(0);
                let Ok(page) = upstream.page_after(room, after, limit).await else {
                    return Ok(false);
                };
                metrics::replayed(page.events.len() as u64);
                let mut chunk = Vec::new();
                for (i, ev) in page.events.iter().enumerate() {
                    self.positions.set(room, ev.seq);
                    let last = i + 1 == page.events.len();
                    self.event(&mut chunk, &Codec::Json.encode_event(ev.event_ref()), last);
                }
                if !chunk.is_empty() {
                    self.send_counted(chunk, page.events.len() as u64).await?;
                }
                // Presence diffs queued meanwhile go between pages.
                if self.forward(&mut Vec::new()).await? {
                    return Err(Gone);
                }
                if !page.more {
                    break;
                }
            }
        }
        Ok(true)
    }

    /// Forwards what the hub and the feeds queue until the client goes, the drain, or a
    /// slow-consumer close (the client reconnects with Last-Event-ID).
    async fn live(&mut self, reg: &mut Registration, keepalive: Duration) -> Result<(), Gone> {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let mut batch = Vec::new();
        loop {
            if self.forward(&mut batch).await? {
                return Ok(());
            }
            if !self.changes.is_empty() {
                self.change_rooms(reg).await?;
                continue;
            }
            tokio::select! {
                _ = self.out.notified() => {}
                _ = tick.tick() => self.send(Bytes::from_static(b": keep-alive\n\n")).await?,
                _ = self.tx.closed() => return Err(Gone),
                _ = &mut self.expiry => return Ok(()),
            }
        }
    }

    /// Carries out the server API's changes to the stream's rooms: a room subscribed is
    /// attached at its live tail and announced (`event: subscribed`, its seq; the next
    /// event's `id:` names it), a room taken is detached and announced.
    async fn change_rooms(&mut self, reg: &mut Registration) -> Result<(), Gone> {
        let shared = Arc::clone(&reg.shared);
        for change in std::mem::take(&mut self.changes) {
            let mut chunk = Vec::new();
            match change {
                Pending::Subscribed(s) => {
                    let full = self.rooms.len() >= shared.config.max_subscriptions;
                    if full || self.rooms.contains(&s.room) {
                        continue;
                    }
                    let attached = shared
                        .hub
                        .attach(&s.room, reg.conn_id, &reg.out, Format::Bare, None, |_| Bytes::new())
                        .await;
                    let Ok(seq) = attached else { continue };
                    reg.rooms.push(s.room.clone());
                    self.rooms.push(s.room.clone());
                    self.positions.set(&s.room, seq);
                    let frame = ServerFrame::Subscribed(Subscribed { room: s.room, seq });
                    named(
                        &mut chunk,
                        SSE_SUBSCRIBED,
                        &serde_json::to_vec(&frame).expect("plain data serializes"),
                    );
                }
                Pending::Unsubscribed(room) => {
                    let Some(i) = self.rooms.iter().position(|r| *r == room) else {
                        continue;
                    };
                    self.rooms.remove(i);
                    reg.rooms.retain(|r| *r != room);
                    shared.hub.detach(&room, reg.conn_id);
                    let frame = ServerFrame::Unsubscribed(Unsubscribed { room });
                    named(
                        &mut chunk,
                        SSE_UNSUBSCRIBED,
                        &serde_json::to_vec(&frame).expect("plain data serializes"),
                    );
                }
            }
            self.send_counted(chunk, 1).await?;
        }
        Ok(())
    }

    /// Sends everything queued until the queue is empty; true once it is closed (after what
    /// it held).
    async fn forward(&mut self, batch: &mut Vec<Item>) -> Result<bool, Gone> {
        loop {
            let close = self.out.take(batch);
            if batch.is_empty() {
                return Ok(close.is_some());
            }
            let mut chunk = Vec::new();
            let events = batch.len() as u64;
            let last_event = batch.iter().rposition(|i| matches!(i.content, Content::Event { .. }));
            for (i, item) in batch.drain(..).enumerate() {
                match item.content {
                    Content::Event { room, seq, .. } => {
                        // An ephemeral event (seq 0) leaves the cursor where it is.
                        if let Some(room) = room.filter(|_| seq > 0) {
                            self.positions.set(&room, seq);
                        }
                        self.event(&mut chunk, &item.bytes, Some(i) == last_event);
                    }
                    Content::Presence => named(&mut chunk, SSE_PRESENCE, &item.bytes),
                    Content::Status => named(&mut chunk, SSE_STATUS, &item.bytes),
                    Content::Disconnect(_) => named(&mut chunk, SSE_DISCONNECT, &item.bytes),
                    // The stream was recreated: the room starts over, and the client is told.
                    Content::Unrecovered(room) => {
                        self.positions.set(&room, 0);
                        let rooms = vec![room.to_string()];
                        let frame = serde_json::to_vec(&Unrecovered { rooms }).expect("plain data serializes");
                        named(&mut chunk, SSE_UNRECOVERED, &frame);
                    }
                    Content::Subscribed { room, seq } => {
                        let room = room.to_string();
                        self.changes.push(Pending::Subscribed(Subscribed { room, seq }));
                        continue;
                    }
                    Content::Unsubscribed(room) => {
                        self.changes.push(Pending::Unsubscribed(room.to_string()));
                        continue;
                    }
                    Content::Other => continue,
                }
            }
            self.send_counted(chunk, events).await?;
        }
    }

    /// An event with the cursor after it as its id. The cursor names every room, so with
    /// many rooms only the last event of a chunk carries it (an `id:` per event would
    /// multiply the cursor by the events in flight); a browser that loses the connection
    /// mid-chunk resumes from the chunk's start, and the repeated events have the seqs the
    /// client already holds (herald.js drops them).
    fn event(&self, chunk: &mut Vec<u8>, frame: &[u8], last_of_chunk: bool) {
        if last_of_chunk || self.rooms.len() <= ID_EVERY_EVENT_ROOMS {
            chunk.extend_from_slice(b"id: ");
            chunk.extend_from_slice(self.positions.to_string().as_bytes());
            chunk.push(b'\n');
        }
        data_lines(chunk, frame);
        chunk.push(b'\n');
    }

    /// Hands a chunk to hyper, which takes it once the client has read most of what came
    /// before. A client that stops reading leaves the channel full: the stream then ends when
    /// its queue closes, its token expires, or it has taken nothing for the write timeout,
    /// so that it does not stay a member (and hold its buffers) for ever.
    /// Sends `bytes` in parts of at most [`SEND_PART`], each within the write timeout.
    async fn send(&mut self, mut bytes: Bytes) -> Result<(), Gone> {
        while bytes.len() > SEND_PART {
            let part = bytes.split_to(SEND_PART);
            self.send_part(part).await?;
        }
        self.send_part(bytes).await
    }

    async fn send_part(&mut self, bytes: Bytes) -> Result<(), Gone> {
        let out = &self.out;
        let closing = async {
            while !out.is_closing() {
                out.notified().await;
            }
        };
        tokio::select! {
            biased;
            sent = self.tx.send(bytes) => sent.map_err(|_| Gone),
            () = closing => Err(Gone),
            () = &mut self.expiry => Err(Gone),
            () = tokio::time::sleep(self.write_timeout) => {
                debug!(timeout = ?self.write_timeout, "SSE client took nothing for the write timeout");
                metrics::write_timeout(Transport::Sse);
                Err(Gone)
            }
        }
    }

    /// Sends a chunk of `frames` frames and counts it.
    async fn send_counted(&mut self, chunk: Vec<u8>, frames: u64) -> Result<(), Gone> {
        let bytes = chunk.len() as u64;
        self.send(chunk.into()).await?;
        metrics::sent(Transport::Sse, frames, bytes);
        Ok(())
    }
}

/// A named event (`event: presence`, `event: status`).
fn named(chunk: &mut Vec<u8>, name: &str, frame: &[u8]) {
    chunk.extend_from_slice(b"event: ");
    chunk.extend_from_slice(name.as_bytes());
    chunk.push(b'\n');
    data_lines(chunk, frame);
    chunk.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::data_lines;

    #[test]
    fn every_line_break_starts_a_data_line() {
        let mut chunk = Vec::new();
        data_lines(&mut chunk, b"a\r\nb\rc\nd");
        assert_eq!(chunk, b"data: a\ndata: b\ndata: c\ndata: d\n");
        chunk.clear();
        data_lines(&mut chunk, b"{}");
        assert_eq!(chunk, b"data: {}\n");
        chunk.clear();
        data_lines(&mut chunk, b"x\n");
        assert_eq!(chunk, b"data: x\ndata: \n", "a trailing break is an empty last line");
    }
}
