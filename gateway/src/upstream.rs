//! The gateway's side of NATS: live room events, gap repair, history replay and publishing
//! on behalf of clients.
//!
//! Live events come one of two ways ([`RoomSubscriptions`]):
//! - `wildcard` (the default): one subscription to every room's live subject, held while the
//!   gateway has any room. A room then costs the gateway its table entry and nothing else; the
//!   price is that NATS sends this gateway every room's events, and events of rooms it does
//!   not hold are dropped here.
//! - `per-room`: one subscription per room with local subscribers, each drained by its own
//!   task ("pump"), so NATS routes each gateway only its rooms' events (interest-based
//!   routing), for ~10 KB and a subscribe round trip per room.
//!
//! Either way an event is delivered only after every earlier event of its room: its `prev`
//! is checked against the room's last seq, and a gap is read from the stream (direct get,
//! `next_by_subj`) first; after a NATS reconnect every room reads whatever was stored
//! meanwhile. With the wildcard, a room being read holds its later live events back in the
//! room table ([`Rooms::offer`]), so the one reader never waits on a room.
//!
//! A stream deleted and recreated starts its seqs again from 1: a live event stored later
//! than its room's last one but with a seq not above it shows that, and the room table
//! rewinds the room to 0 ([`Rooms::offer`], [`Rooms::position`]) instead of dropping the new
//! stream's events as seen.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_nats::jetstream::{self, context::PublishAckFuture, stream::DirectGetErrorKind};
use async_nats::{Client, HeaderMap, HeaderValue};
use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::frame::EventRef;
use herald_proto::header;
use herald_proto::subject::{Partitions, Subjects};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, error, warn};

use crate::config::RoomSubscriptions;
use crate::sync::lock;

/// Rooms read from history at once after a reconnect (wildcard mode).
const RESCAN_CONCURRENCY: usize = 16;

/// How often a gateway whose partitions the NATS server maps differently checks again (the
/// mapping may be fixed by a configuration reload); a slow pace keeps the error log readable.
const PARTITION_CHECK_RETRY: Duration = Duration::from_secs(5);

/// A read of a room's history: the events after `after`, stopping before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fetch {
    pub after: u64,
    pub until: Option<u64>,
}

/// Why a NATS operation failed (the client gets `unavailable`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UpstreamError(String);

/// The most one replay burst or poll answer holds (`--replay-max-events`, `--replay-max-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageLimit {
    pub events: usize,
    pub bytes: usize,
}

/// A bounded part of a room's history.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub events: Vec<StoredEvent>,
    /// The room has stored events after the page.
    pub more: bool,
    /// Bytes of event data in the page.
    pub bytes: usize,
}

/// Where a client's `since` leaves it in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Replay the events after this seq.
    pub after: u64,
    /// History still holds everything after the client's `since`. False when it was trimmed,
    /// or when `since` is beyond the room's last seq (the stream was recreated or purged):
    /// then `after` is the room's last seq, so that every new event is delivered.
    pub recovered: bool,
}

/// A stored room event, shared by everyone who receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub room: Arc<str>,
    pub seq: u64,
    pub prev: u64,
    /// Milliseconds since the epoch when stored.
    pub ts: u64,
    /// Microseconds since the epoch when stored (for the latency histogram).
    pub stored_us: u64,
    pub kind: Option<Box<str>>,
    pub from: Option<Box<str>>,
    pub payload: Bytes,
}

impl StoredEvent {
    pub fn event_ref(&self) -> EventRef<'_> {
        EventRef {
            room: &self.room,
            seq: self.seq,
            prev: self.prev,
            ts: self.ts,
            kind: self.kind.as_deref(),
            from: self.from.as_deref(),
            payload: &self.payload,
        }
    }
}

/// Where live events go: the hub's room table, seen from below.
pub(crate) trait Rooms: Send + Sync + 'static {
    /// Records the pump of a room, so that removing the room stops it.
    fn set_pump(&self, room: &str, pump: AbortHandle);
    /// The room's subscription is in place; `last_seq` (stored at `last_us`, µs since the
    /// epoch) was stored before it. Returns the history read that the events held meanwhile
    /// need, if any.
    fn set_ready(&self, room: &str, last_seq: u64, last_us: u64) -> Option<Fetch>;
    /// The room's subscription failed (retried); pending subscribers give up.
    fn set_failed(&self, room: &str);
    /// The last seq delivered in the room.
    fn last_seq(&self, room: &str) -> Option<u64>;
    /// The last seq delivered in a live event's room, after rewinding the room to 0 if the
    /// event shows that the stream's seqs started over (it was recreated).
    fn position(&self, ev: &StoredEvent) -> Option<u64>;
    /// Hands a stored event to the room's subscribers.
    fn deliver(&self, ev: &Arc<StoredEvent>) -> usize;
    /// Whether the room has local subscribers (or lingers).
    fn contains(&self, room: &str) -> bool;
    /// No room at all.
    fn is_empty(&self) -> bool;
    /// Every room's name.
    fn names(&self) -> Vec<Arc<str>>;
    /// A live event: delivered if it follows the room's last seq, dropped if seen, held if
    /// the room is being read. Returns the read a gap before it needs (it is then held).
    fn offer(&self, ev: Arc<StoredEvent>) -> Option<Fetch>;
    /// Delivers what a read found, then the held events up to the next gap; returns the
    /// next read, or `None` once the room's live events flow again.
    fn release(&self, room: &str, fetched: Vec<StoredEvent>) -> Option<Fetch>;
    /// After a reconnect: the read to the stream's end the room needs (`None` if a read is
    /// under way; it reads to the end once more when done).
    fn rescan(&self, room: &str) -> Option<Fetch>;
}

/// The wildcard subscription's task while it runs.
struct Dispatcher {
    task: AbortHandle,
    /// True once the subscription is in place.
    subscribed: watch::Receiver<bool>,
}

/// The gateway's only NATS client: the room pumps, history reads, publishing, and the
/// core subjects presence uses.
pub(crate) struct Upstream {
    client: Client,
    js: jetstream::Context,
    subjects: Subjects,
    /// The streams rooms are stored in, and which one holds a room.
    partitions: Partitions,
    rooms: Arc<dyn Rooms>,
    /// Bumped on every reconnect, so pumps fetch what they missed.
    reconnects: watch::Receiver<u64>,
    mode: RoomSubscriptions,
    dispatcher: std::sync::Mutex<Option<Dispatcher>>,
    /// True while the NATS server's subject mapping does not match the partition count.
    unmapped: std::sync::atomic::AtomicBool,
}

// === impl Upstream ===

impl Upstream {
    /// Connects (retrying in the background if NATS is down at start), counting connection
    /// events in `herald_gateway_nats_events_total`.
    pub(crate) async fn connect(url: &str, name: &str) -> Result<(Client, watch::Receiver<u64>), UpstreamError> {
        herald_service::nats::connect(url, name, crate::metrics::nats_event)
            .await
            .map_err(|e| UpstreamError(e.to_string()))
    }

    pub(crate) fn new(
        client: Client,
        reconnects: watch::Receiver<u64>,
        subjects: Subjects,
        stream_partitions: u32,
        rooms: Arc<dyn Rooms>,
        mode: RoomSubscriptions,
    ) -> Arc<Self> {
        let js = jetstream::new(client.clone());
        Arc::new(Self {
            partitions: Partitions::new(subjects.clone(), stream_partitions),
            client,
            js,
            subjects,
            rooms,
            reconnects,
            mode,
            dispatcher: std::sync::Mutex::new(None),
            unmapped: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Creates or updates the event streams until NATS answers, then checks that the server
    /// stores each room in the partition this gateway reads it from (retrying, loudly, until
    /// it does: a wrong mapping would store events where no gateway looks, or nowhere).
    pub(crate) async fn provision(&self, settings: &herald_service::stream::StreamSettings) {
        use herald_service::stream::{check_partitions, ensure, CheckError};
        let mut delay = Duration::from_millis(100);
        loop {
            match ensure(&self.js, &self.partitions, settings).await {
                Err(e) => warn!(error = %e, "Event stream not ready; retrying"),
                Ok(()) => match check_partitions(&self.js, &self.partitions).await {
                    Ok(()) => {
                        self.unmapped.store(false, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    Err(CheckError::Partitions(e)) => {
                        self.unmapped.store(true, std::sync::atomic::Ordering::SeqCst);
                        error!(error = %e, partitions = self.partitions.count(), "NATS subject mapping does not match --stream-partitions; not ready");
                        delay = PARTITION_CHECK_RETRY;
                    }
                    Err(e) => warn!(error = %e, "Event stream not ready; retrying"),
                },
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Subscribes to a core subject, with the interest confirmed by the server.
    pub(crate) async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber, UpstreamError> {
        let sub = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| UpstreamError(e.to_string()))?;
        self.client.flush().await.map_err(|e| UpstreamError(e.to_string()))?;
        Ok(sub)
    }

    /// Publishes a core message (not stored).
    pub(crate) async fn send(&self, subject: String, payload: Bytes) -> Result<(), UpstreamError> {
        self.client
            .publish(subject, payload)
            .await
            .map_err(|e| UpstreamError(e.to_string()))
    }

    /// A request's answer, if one comes within `timeout`.
    pub(crate) async fn request(&self, subject: String, payload: Bytes, timeout: Duration) -> Option<Bytes> {
        let reply = tokio::time::timeout(timeout, self.client.request(subject, payload)).await;
        Some(reply.ok()?.ok()?.payload)
    }

    /// Sends what is buffered, waiting at most `timeout` (with NATS unreachable a flush would
    /// wait for the reconnect).
    pub(crate) async fn flush(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.client.flush()).await;
    }

    /// Whether the last partition check found the server's mapping wrong.
    pub(crate) fn is_unmapped(&self) -> bool {
        self.unmapped.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Starts the live events of a room the hub just created: its pump, or (wildcard) the
    /// read of its last seq once the wildcard subscription is in place.
    pub(crate) fn start_room(self: &Arc<Self>, room: &str) {
        let room: Arc<str> = Arc::from(room);
        match self.mode {
            RoomSubscriptions::PerRoom => {
                let task = tokio::spawn(Arc::clone(self).pump(Arc::clone(&room)));
                self.rooms.set_pump(&room, task.abort_handle());
            }
            // Short-lived and not kept: an abort handle would keep the finished task's
            // memory (a few KB) for as long as the room lives. It ends by itself once the
            // room is ready, or gone.
            RoomSubscriptions::Wildcard => {
                let subscribed = self.dispatcher();
                tokio::spawn(Arc::clone(self).open_room(room, subscribed));
            }
        }
    }

    /// A room was removed: with no room left, the wildcard subscription ends.
    pub(crate) fn room_removed(&self) {
        let mut dispatcher = lock(&self.dispatcher);
        if self.rooms.is_empty() {
            if let Some(d) = dispatcher.take() {
                d.task.abort();
            }
        }
    }

    /// The wildcard subscription's readiness, starting it if it is not running.
    fn dispatcher(self: &Arc<Self>) -> watch::Receiver<bool> {
        let mut dispatcher = lock(&self.dispatcher);
        if let Some(d) = dispatcher.as_ref() {
            return d.subscribed.clone();
        }
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(self).dispatch(tx));
        *dispatcher = Some(Dispatcher {
            task: task.abort_handle(),
            subscribed: rx.clone(),
        });
        rx
    }

    /// Reads every room's live events from one wildcard subscription.
    async fn dispatch(self: Arc<Self>, subscribed: watch::Sender<bool>) {
        let _gauge = GaugeGuard::new();
        let mut sub = loop {
            match self.subscribe(self.subjects.live_rooms_wildcard()).await {
                Ok(sub) => break sub,
                Err(e) => {
                    warn!(error = %e, "Room subscription failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        subscribed.send_replace(true);
        let mut reconnects = self.reconnects.clone();
        reconnects.borrow_and_update();
        loop {
            tokio::select! {
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    self.on_wildcard(&msg);
                }
                changed = reconnects.changed() => {
                    if changed.is_err() { break }
                    self.rescan_all();
                }
            }
        }
    }

    /// One live event from the wildcard: to its room, if the gateway holds it.
    fn on_wildcard(self: &Arc<Self>, msg: &async_nats::Message) {
        let Some(room) = self.subjects.room_of(msg.subject.as_str()) else {
            return;
        };
        if !self.rooms.contains(room) {
            return;
        }
        let Some(ev) = self.live_event(room, msg) else {
            return;
        };
        let ev = Arc::new(ev);
        let room = Arc::clone(&ev.room);
        if let Some(fetch) = self.rooms.offer(ev) {
            tokio::spawn(Arc::clone(self).repair(room, fetch));
        }
    }

    /// After a reconnect: every room reads what was stored while the connection was down.
    fn rescan_all(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let reads = this
                .rooms
                .names()
                .into_iter()
                .filter_map(|room| this.rooms.rescan(&room).map(|f| (room, f)));
            futures_util::stream::iter(reads)
                .for_each_concurrent(RESCAN_CONCURRENCY, |(room, fetch)| {
                    Arc::clone(&this).repair(room, fetch)
                })
                .await;
        });
    }

    /// Waits for the wildcard subscription, reads the room's last seq and turns it ready.
    async fn open_room(self: Arc<Self>, room: Arc<str>, mut subscribed: watch::Receiver<bool>) {
        if subscribed.wait_for(|s| *s).await.is_err() {
            return;
        }
        let last = loop {
            match self.last_stored(&room).await {
                Ok(last) => break last,
                Err(e) => {
                    warn!(%room, error = %e, "Room's last seq unavailable; retrying");
                    self.rooms.set_failed(&room);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if !self.rooms.contains(&room) {
                        return;
                    }
                }
            }
        };
        if let Some(fetch) = self.rooms.set_ready(&room, last.0, last.1) {
            self.repair(room, fetch).await;
        }
    }

    /// Reads a room's history until the room's live events flow again (or it is gone).
    async fn repair(self: Arc<Self>, room: Arc<str>, first: Fetch) {
        let mut next = Some(first);
        while let Some(fetch) = next {
            match self.fetch_after(&room, fetch.after, fetch.until).await {
                Ok(events) => {
                    crate::metrics::gap_repaired(events.len() as u64);
                    if !events.is_empty() {
                        debug!(%room, from = fetch.after, events = events.len(), "Gap repaired from the stream");
                    }
                    next = self.rooms.release(&room, events);
                }
                Err(e) => {
                    warn!(%room, error = %e, "Gap repair failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    next = self.rooms.contains(&room).then_some(fetch);
                }
            }
        }
    }

    /// Where a client holding `since` in `room` resumes.
    pub(crate) async fn resume(&self, room: &str, since: u64) -> Result<Resume, UpstreamError> {
        if since == 0 {
            return Ok(Resume {
                after: 0,
                recovered: true,
            });
        }
        let last = self.last_seq(room).await?;
        if since > last {
            return Ok(Resume {
                after: last,
                recovered: false,
            });
        }
        let recovered = since == last || self.holds(room, since).await?;
        Ok(Resume {
            after: since,
            recovered,
        })
    }

    /// The room's events after `after`, at most `limit` of them (one at least, however big).
    pub(crate) async fn page_after(&self, room: &str, after: u64, limit: PageLimit) -> Result<Page, UpstreamError> {
        let stream = self.stream(room).await?;
        let subject = self.partitions.stored_subject(room);
        let room: Arc<str> = Arc::from(room);
        let mut page = Page::default();
        let mut cur = after;
        while let Some(m) = self.next_stored(&stream, &subject, cur).await? {
            if page.events.len() >= limit.events || (page.bytes > 0 && page.bytes + m.payload.len() > limit.bytes) {
                page.more = true;
                break;
            }
            page.bytes += m.payload.len();
            let ev = stored_event(&room, cur, m);
            cur = ev.seq;
            page.events.push(ev);
        }
        Ok(page)
    }

    /// The first stored message of `subject` after `after` (none after `u64::MAX`).
    async fn next_stored(
        &self,
        stream: &jetstream::stream::Stream<()>,
        subject: &str,
        after: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, UpstreamError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(None);
        };
        match stream.direct_get_next_for_subject(subject, Some(from)).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(UpstreamError(e.to_string())),
        }
    }

    async fn pump(self: Arc<Self>, room: Arc<str>) {
        let _gauge = GaugeGuard::new();
        let mut sub = loop {
            match self.subscribe_room(&room).await {
                Ok(ok) => break ok,
                Err(e) => {
                    warn!(%room, error = %e, "Room subscription failed; retrying");
                    self.rooms.set_failed(&room);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut reconnects = self.reconnects.clone();
        reconnects.borrow_and_update();
        loop {
            tokio::select! {
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    let Some(ev) = self.live_event(&room, &msg) else { continue };
                    self.on_live(&room, ev).await;
                }
                changed = reconnects.changed() => {
                    if changed.is_err() { break }
                    self.catch_up(&room, None).await;
                }
            }
        }
    }

    /// Subscribes to the room's live subject, then reads its last seq: any event stored
    /// after the subscription is in place arrives live; anything before is history.
    async fn subscribe_room(&self, room: &str) -> Result<async_nats::Subscriber, UpstreamError> {
        let sub = self
            .client
            .subscribe(self.subjects.live_room(room))
            .await
            .map_err(|e| UpstreamError(e.to_string()))?;
        self.client.flush().await.map_err(|e| UpstreamError(e.to_string()))?;
        let (last, last_us) = self.last_stored(room).await?;
        // Nothing was offered to the room (its pump delivers directly): nothing is held.
        let _ = self.rooms.set_ready(room, last, last_us);
        Ok(sub)
    }

    async fn on_live(&self, room: &str, ev: StoredEvent) {
        let last = self.rooms.position(&ev).unwrap_or(0);
        if ev.seq <= last {
            return;
        }
        if ev.prev > last {
            self.catch_up(room, Some(ev.seq)).await;
        }
        self.rooms.deliver(&Arc::new(ev));
    }

    /// Fetches and delivers what the room stored after the hub's last seq (up to `until`).
    async fn catch_up(&self, room: &str, until: Option<u64>) {
        let last = self.rooms.last_seq(room).unwrap_or(0);
        match self.fetch_after(room, last, until).await {
            Ok(events) => {
                crate::metrics::gap_repaired(events.len() as u64);
                if !events.is_empty() {
                    debug!(%room, from = last, events = events.len(), "Gap repaired from the stream");
                }
                for ev in events {
                    self.rooms.deliver(&Arc::new(ev));
                }
            }
            Err(e) => warn!(%room, error = %e, "Gap repair failed"),
        }
    }

    fn live_event(&self, room: &str, msg: &async_nats::Message) -> Option<StoredEvent> {
        let headers = msg.headers.as_ref()?;
        let num = |name: &str| headers.get(name).and_then(|v| v.as_str().parse::<u64>().ok());
        let seq = num(header::NATS_SEQUENCE)?;
        let stamped = headers
            .get(header::NATS_TIME_STAMP)
            .and_then(|v| humantime::parse_rfc3339_weak(v.as_str()).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64);
        let stored_ns = stamped.unwrap_or_else(herald_service::now_ns);
        Some(StoredEvent {
            room: Arc::from(room),
            seq,
            prev: num(header::NATS_LAST_SEQUENCE).unwrap_or(0),
            ts: stored_ns / 1_000_000,
            // Without the store's own time it is unknown (0): no latency is measured from it,
            // and it cannot pass for a later store (a stream reset).
            stored_us: stamped.map_or(0, |ns| ns / 1_000),
            kind: text_header(headers, header::HERALD_TYPE),
            from: text_header(headers, header::HERALD_FROM),
            payload: msg.payload.clone(),
        })
    }

    /// The room's last stored seq (0 if it has none).
    pub(crate) async fn last_seq(&self, room: &str) -> Result<u64, UpstreamError> {
        Ok(self.last_stored(room).await?.0)
    }

    /// The room's last stored seq and when it was stored (µs since the epoch); 0 and 0 if
    /// it has none.
    async fn last_stored(&self, room: &str) -> Result<(u64, u64), UpstreamError> {
        let stream = self.stream(room).await?;
        match stream
            .direct_get_last_for_subject(self.partitions.stored_subject(room))
            .await
        {
            Ok(m) => Ok((m.sequence, m.time.unix_timestamp_nanos().max(0) as u64 / 1_000)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok((0, 0)),
            Err(e) => Err(UpstreamError(e.to_string())),
        }
    }

    /// Whether `seq` is still stored as an event of `room`.
    pub(crate) async fn holds(&self, room: &str, seq: u64) -> Result<bool, UpstreamError> {
        let stream = self.stream(room).await?;
        match stream.direct_get(seq).await {
            Ok(m) => Ok(m.subject.as_str() == self.partitions.stored_subject(room)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(false),
            Err(e) => Err(UpstreamError(e.to_string())),
        }
    }

    /// The room's stored events after `after`, in order, stopping before `until`; each
    /// event's `prev` is the one before it (the first one's is `after`).
    pub(crate) async fn fetch_after(
        &self,
        room: &str,
        after: u64,
        until: Option<u64>,
    ) -> Result<Vec<StoredEvent>, UpstreamError> {
        let stream = self.stream(room).await?;
        let subject = self.partitions.stored_subject(room);
        let room: Arc<str> = Arc::from(room);
        let mut out = Vec::new();
        let mut cur = after;
        while let Some(m) = self.next_stored(&stream, &subject, cur).await? {
            if until.is_some_and(|u| m.sequence >= u) {
                break;
            }
            let ev = stored_event(&room, cur, m);
            cur = ev.seq;
            out.push(ev);
        }
        Ok(out)
    }

    /// Stores an event for a client; the returned future resolves to its seq. With an
    /// idempotency `key`, the event is stored under a `Nats-Msg-Id` scoped to the user and the
    /// room: a repeat within the duplicate window resolves to the first event's seq with
    /// `duplicate` set, and is not stored again.
    pub(crate) async fn publish(
        &self,
        room: &str,
        payload: Bytes,
        kind: Option<&str>,
        key: Option<&str>,
        from: &str,
    ) -> Result<PublishAckFuture, UpstreamError> {
        // Fallible constructors: a value with CR or LF must be an error, never a panic (proto
        // has validated both already; this keeps it so if a caller forgets).
        let value = |v: &str| {
            v.parse::<HeaderValue>()
                .map_err(|e| UpstreamError(format!("bad header value: {e}")))
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::HERALD_FROM, value(from)?);
        if let Some(kind) = kind {
            headers.insert(header::HERALD_TYPE, value(kind)?);
        }
        if let Some(key) = key {
            headers.insert(header::NATS_MSG_ID, value(&header::msg_id(from, room, key))?);
        }
        self.js
            .publish_with_headers(self.subjects.room(room), headers, payload)
            .await
            .map_err(|e| UpstreamError(e.to_string()))
    }

    /// The stream that stores `room` (its partition's).
    async fn stream(&self, room: &str) -> Result<jetstream::stream::Stream<()>, UpstreamError> {
        self.js
            .get_stream_no_info(self.partitions.stream_of(room))
            .await
            .map_err(|e| UpstreamError(e.to_string()))
    }
}

/// A stored message as an event whose previous event in the room is `prev`.
fn stored_event(room: &Arc<str>, prev: u64, m: jetstream::message::StreamMessage) -> StoredEvent {
    let stored_ns = m.time.unix_timestamp_nanos().max(0) as u64;
    StoredEvent {
        room: Arc::clone(room),
        seq: m.sequence,
        prev,
        ts: stored_ns / 1_000_000,
        stored_us: stored_ns / 1_000,
        kind: text_header(&m.headers, header::HERALD_TYPE),
        from: text_header(&m.headers, header::HERALD_FROM),
        payload: m.payload,
    }
}

fn text_header(headers: &HeaderMap, name: &str) -> Option<Box<str>> {
    headers
        .get(name)
        .map(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(Box::from)
}

/// Counts a subscription in `herald_gateway_nats_subscriptions` for as long as it lives.
pub(crate) struct GaugeGuard;

impl GaugeGuard {
    pub(crate) fn new() -> Self {
        crate::metrics::nats_subscriptions(1.0);
        Self
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        crate::metrics::nats_subscriptions(-1.0);
    }
}
