//! The gateway's side of NATS: live room events, gap repair, history replay and publishing
//! on behalf of clients.
//!
//! Live events come one of two ways ([`RoomSubscriptions`]):
//! - `per-room` (the default): one subscription per room with local subscribers, so NATS
//!   routes each gateway only its rooms' events (interest-based routing). Rooms are
//!   subscribed in batches, one round trip for the batch ([`Upstream::open_rooms`]), and
//!   every room's subscription is read by one task ([`Upstream::read_rooms`]): no task per
//!   room. A room's subscription costs what async-nats allocates for it (docs/benchmarks.md).
//! - `wildcard`: one subscription to every room's live subject, held while the gateway has
//!   any room. A room then costs the gateway its table entry and nothing else; the price is
//!   that NATS sends this gateway every room's events, and events of rooms it does not hold
//!   are dropped here.
//!
//! The reading task parses each event and hands it on ([`Delivery`]): a room with more than
//! [`BIG_ROOM`] local subscribers to a task of its own, so its fan-out runs beside the reader
//! and never delays a small room; any other room to the delivery worker its name picks, or,
//! when that worker has nothing in hand, straight to the room table ([`Rooms::offer`]).
//!
//! An event is delivered only after every earlier event of its room: its `prev` is checked
//! against the room's last seq, and a gap is read from the stream (direct get,
//! `next_by_subj`) first, while the room holds its later live events back. Nothing is lost
//! silently: after a NATS reconnect, a slow consumer (async-nats dropped messages of a full
//! subscription buffer) or a change of the stream's leader, every room reads what was stored
//! after its last seq ([`Upstream::rescan_all`]), quiet rooms included.
//!
//! A stream deleted and recreated starts its seqs again from 1: a live event stored later
//! than its room's last one but with a seq not above it shows that, and the room table
//! rewinds the room to 0 ([`Rooms::offer`], [`Rooms::position`]) instead of dropping the new
//! stream's events as seen.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_nats::jetstream::{self, context::PublishAckFuture, stream::DirectGetErrorKind};
use async_nats::{Client, HeaderMap, HeaderValue, Subscriber};
use bytes::Bytes;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{SelectAll, Stream, StreamExt};
use herald_proto::frame::EventRef;
use herald_proto::header;
use herald_proto::subject::{partition, Partitions, Subjects};
use herald_service::nats::Signals;
use herald_service::stream::{last_of_subjects, Last, MAX_LAST_BATCH};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::config::RoomSubscriptions;
use crate::sync::lock;

/// Rooms read from history at once by a rescan (each read is a round trip or more).
const RESCAN_CONCURRENCY: usize = 64;
/// Rooms subscribed per batch: their SUBs go out together and one flush confirms them all.
const OPEN_BATCH: usize = 4_096;
/// Rooms whose last seq is read one by one at once (in wildcard mode, or when a batched
/// read failed).
const OPEN_CONCURRENCY: usize = 64;

/// Batched last-seq reads in flight at once (each answer is at most 1 MiB).
const LAST_BATCHES_IN_FLIGHT: usize = 4;

/// Fewer newly subscribed rooms than this read their last seqs one by one: a batched read
/// costs an inbox subscription of its own.
const MIN_LAST_BATCH: usize = 4;

/// How long the first room of a small batch waits for others to open with it.
const OPEN_LINGER: Duration = Duration::from_millis(2);

/// How long a batched last-seq read may take before its rooms are read one by one: well
/// within the time a join waits for its room (10 s).
const LAST_BATCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Grant lookups in flight at once: past it, a room the token does not grant is refused
/// without asking (a flood of refused subscribes cannot become a flood of NATS requests).
const GRANT_LOOKUPS: usize = 64;
/// The longest wait for a grant lookup.
const GRANT_WAIT: Duration = Duration::from_secs(2);
/// How long a missing grant bucket is taken as missing before it is looked for again.
const GRANT_ABSENT_RECHECK: Duration = Duration::from_secs(2);

/// Messages an async-nats subscription buffers unless told otherwise.
const ASYNC_NATS_CAPACITY: usize = 65_536;
/// Local subscribers above which a room's events are delivered by a task of the room's own.
const BIG_ROOM: usize = 1_000;
/// How long a big room's delivery task waits for an event before it checks the room is
/// still held.
const BIG_ROOM_IDLE: Duration = Duration::from_secs(30);
/// Events queued for one delivery worker, at most: past it the reader waits, and NATS
/// messages wait in the subscriptions' buffers (whose overflow is repaired).
const WORKER_QUEUE: usize = 1_024;
/// The window over which the reading task measures the share of its time it spends
/// delivering: past half, it hands rooms to the delivery workers for the next window.
const BUSY_WINDOW: Duration = Duration::from_millis(10);

/// How often a gateway whose partitions the NATS server maps differently checks again (the
/// mapping may be fixed by a configuration reload); a slow pace keeps the error log readable.
const PARTITION_CHECK_RETRY: Duration = Duration::from_secs(5);

/// How the gateway reads rooms from NATS.
pub(crate) struct Options {
    /// `--stream-partitions`.
    pub stream_partitions: u32,
    /// `--room-subscriptions`.
    pub mode: RoomSubscriptions,
    /// Messages each subscription buffers, as given to [`Upstream::connect`].
    pub subscription_capacity: Option<usize>,
    pub ephemeral: Ephemeral,
}

/// Which rooms are ephemeral (their namespace's `ephemeral`).
pub(crate) type Ephemeral = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What a namespace keeps of an event published through this gateway: its lifetime
/// (`Nats-TTL`) and the room's newest `keep` events (the rest purged after each publish).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Retention {
    pub ttl: Option<Duration>,
    pub keep: Option<u64>,
}

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
    /// Records the handle of a room's live subscription, so that removing the room ends it.
    /// False (the caller drops the subscription) when the room is gone or already has one.
    fn set_feed(&self, room: &str, feed: AbortHandle) -> bool;
    /// The room's subscription is in place; `last_seq` (stored at `last_us`, µs since the
    /// epoch) was stored before it. Returns the history read that the events held meanwhile
    /// need, if any.
    fn set_ready(&self, room: &str, last_seq: u64, last_us: u64) -> Option<Fetch>;
    /// The room's subscription failed (retried); pending subscribers give up.
    fn set_failed(&self, room: &str);
    /// Whether the room has local subscribers (or lingers).
    fn contains(&self, room: &str) -> bool;
    /// The room's local subscribers.
    fn subscribers(&self, room: &str) -> usize;
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
    /// After events may have been lost: the read to the stream's end the room needs (`None` if a read is
    /// under way; it reads to the end once more when done). `stored_last`, the room's last seq
    /// in the stream read after the loss, spares the read when the room has seen it.
    fn rescan(&self, room: &str, stored_last: Option<u64>) -> Option<Fetch>;
}

/// The wildcard subscription's task while it runs.
struct Dispatcher {
    task: tokio::task::AbortHandle,
    /// True once the subscription is in place.
    subscribed: watch::Receiver<bool>,
}

/// Per-room mode: rooms to subscribe, to the opener task.
struct Router {
    opens: mpsc::UnboundedSender<Arc<str>>,
}

/// A room's live subscription as the reading task holds it: it ends when the room is
/// removed ([`Rooms::set_feed`] keeps the abort handle), which drops the subscription
/// (async-nats then unsubscribes).
struct Feed {
    sub: Abortable<Subscriber>,
    _gauge: GaugeGuard,
}

impl Stream for Feed {
    type Item = async_nats::Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.sub).poll_next(cx)
    }
}

/// A rescan of every room: idle, running, or running with another one asked for meanwhile.
const RESCAN_IDLE: u8 = 0;
const RESCAN_RUNNING: u8 = 1;
const RESCAN_AGAIN: u8 = 2;

/// The gateway's only NATS client: the live room subscriptions, history reads, publishing,
/// and the core subjects presence uses.
pub(crate) struct Upstream {
    client: Client,
    js: jetstream::Context,
    subjects: Subjects,
    /// The streams rooms are stored in, and which one holds a room.
    partitions: Partitions,
    rooms: Arc<dyn Rooms>,
    /// Bumped on every connect and on every slow consumer: rooms then read what they missed.
    signals: Signals,
    mode: RoomSubscriptions,
    /// Whether a room's namespace is ephemeral: only then is a live message without a
    /// stream seq (published on core NATS, never stored) delivered.
    ephemeral: Ephemeral,
    dispatcher: std::sync::Mutex<Option<Dispatcher>>,
    router: OnceLock<Router>,
    rescan: AtomicU8,
    /// True while the NATS server's subject mapping does not match the partition count.
    unmapped: AtomicBool,
    /// Rooms per batched last-seq read: fewer than the subscription capacity, so that no
    /// answer is dropped.
    last_batch: usize,
    /// Batched last-seq reads in flight, over every caller: bounds the answers in flight.
    lasts_in_flight: tokio::sync::Semaphore,
    /// The server refused a batched read as unknown (before nats-server 2.11).
    lasts_unsupported: AtomicBool,
    /// A batched read failed once already (the first failure is a warning, later ones debug).
    lasts_failed: AtomicBool,
    /// The grant bucket, once opened (see [`Upstream::granted`]).
    grants: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// Grant lookups in flight at once.
    grant_lookups: tokio::sync::Semaphore,
    /// Until when the grant bucket is taken as missing.
    grants_absent: std::sync::Mutex<Option<Instant>>,
}

/// Where a reading task hands its live events, room by room, in order: a room with more
/// than [`BIG_ROOM`] subscribers to a task of its own, so its fan-out never delays other
/// rooms; any other room straight to the room table on the reading task while delivering
/// takes at most half the reader's time and the room's worker has nothing in hand — so a
/// lightly loaded gateway pays no hand-off per event — and otherwise to the delivery worker
/// its name hashes to, so that a busy one spreads fan-out over cores.
struct Delivery {
    upstream: Arc<Upstream>,
    workers: Vec<Worker>,
    big: HashMap<Arc<str>, mpsc::Sender<Arc<StoredEvent>>>,
    busy: Busy,
}

/// The share of a reading task's time that its own deliveries take, window by window.
#[derive(Debug)]
struct Busy {
    window_start: Instant,
    /// Delivering in the current window.
    spent: Duration,
    /// Set for a window after one in which delivering took more than half the time; kept
    /// while the workers still hold events.
    handing_off: bool,
}

impl Busy {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            spent: Duration::ZERO,
            handing_off: false,
        }
    }

    /// Whether events go to the workers now; `workers_idle`: none holds an event.
    fn hand_off(&mut self, now: Instant, workers_idle: impl FnOnce() -> bool) -> bool {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= BUSY_WINDOW {
            self.handing_off = self.spent * 2 > elapsed || (self.handing_off && !workers_idle());
            self.window_start = now;
            self.spent = Duration::ZERO;
        }
        self.handing_off
    }

    fn delivered(&mut self, took: Duration) {
        self.spent += took;
    }
}

/// A delivery worker's queue, and how many events it has been handed and not yet delivered.
struct Worker {
    queue: mpsc::Sender<Arc<StoredEvent>>,
    in_hand: Arc<AtomicUsize>,
}

impl Delivery {
    /// Starts the workers: one per core, at least two. They end with the `Delivery`.
    fn new(upstream: &Arc<Upstream>) -> Self {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let workers = (0..n)
            .map(|_| {
                let (queue, mut events) = mpsc::channel::<Arc<StoredEvent>>(WORKER_QUEUE);
                let in_hand = Arc::new(AtomicUsize::new(0));
                let (upstream, count) = (Arc::clone(upstream), Arc::clone(&in_hand));
                tokio::spawn(async move {
                    while let Some(ev) = events.recv().await {
                        upstream.offer(ev);
                        count.fetch_sub(1, Ordering::Release);
                    }
                });
                Worker { queue, in_hand }
            })
            .collect();
        Self {
            upstream: Arc::clone(upstream),
            workers,
            big: HashMap::new(),
            busy: Busy::new(Instant::now()),
        }
    }

    async fn route(&mut self, ev: Arc<StoredEvent>) {
        let ev = match self.big.get(&ev.room) {
            Some(room) => match room.send(ev).await {
                Ok(()) => return,
                // Its task ended (the room was removed): this event starts afresh.
                Err(mpsc::error::SendError(ev)) => {
                    self.big.remove(&ev.room);
                    ev
                }
            },
            None => ev,
        };
        let start = Instant::now();
        let workers = &self.workers;
        let hand_off = self
            .busy
            .hand_off(start, || workers.iter().all(|w| w.in_hand.load(Ordering::Acquire) == 0));
        let worker = &self.workers[worker_of(&ev.room, self.workers.len())];
        // Nothing of the worker's is pending: every earlier event of this room has been
        // delivered, so this one can be too, here (only this task hands the worker events).
        if !hand_off && worker.in_hand.load(Ordering::Acquire) == 0 {
            if self.upstream.rooms.subscribers(&ev.room) > BIG_ROOM {
                let (tx, rx) = mpsc::channel(WORKER_QUEUE);
                tokio::spawn(Arc::clone(&self.upstream).deliver_room(Arc::clone(&ev.room), rx));
                self.big.retain(|_, room| !room.is_closed());
                self.big.insert(Arc::clone(&ev.room), tx.clone());
                // The task has just started: it is there to receive.
                let _ = tx.send(ev).await;
            } else {
                self.upstream.offer(ev);
            }
            self.busy.delivered(start.elapsed());
            return;
        }
        worker.in_hand.fetch_add(1, Ordering::AcqRel);
        // A worker ends only with this `Delivery`.
        let _ = worker.queue.send(ev).await;
    }
}

// === impl Upstream ===

impl Upstream {
    /// Connects (retrying in the background if NATS is down at start), counting connection
    /// events in `herald_gateway_nats_events_total`.
    /// `subscription_capacity`: messages each subscription buffers (async-nats's default when
    /// `None`).
    pub(crate) async fn connect(
        url: &str,
        name: &str,
        subscription_capacity: Option<usize>,
    ) -> Result<(Client, Signals), UpstreamError> {
        herald_service::nats::connect_with(url, name, crate::metrics::nats_event, subscription_capacity)
            .await
            .map_err(|e| UpstreamError(e.to_string()))
    }

    pub(crate) fn new(
        client: Client,
        signals: Signals,
        subjects: Subjects,
        rooms: Arc<dyn Rooms>,
        options: Options,
    ) -> Arc<Self> {
        let Options {
            stream_partitions,
            mode,
            subscription_capacity,
            ephemeral,
        } = options;
        let js = jetstream::new(client.clone());
        Arc::new(Self {
            partitions: Partitions::new(subjects.clone(), stream_partitions),
            client,
            js,
            subjects,
            rooms,
            signals,
            mode,
            ephemeral,
            dispatcher: std::sync::Mutex::new(None),
            router: OnceLock::new(),
            rescan: AtomicU8::new(RESCAN_IDLE),
            unmapped: AtomicBool::new(false),
            last_batch: MAX_LAST_BATCH.min(subscription_capacity.unwrap_or(ASYNC_NATS_CAPACITY).saturating_sub(1)),
            lasts_in_flight: tokio::sync::Semaphore::new(LAST_BATCHES_IN_FLIGHT),
            lasts_unsupported: AtomicBool::new(false),
            lasts_failed: AtomicBool::new(false),
            grants: tokio::sync::OnceCell::new(),
            grant_lookups: tokio::sync::Semaphore::new(GRANT_LOOKUPS),
            grants_absent: std::sync::Mutex::new(None),
        })
    }

    /// Watches what can lose live events without a gap showing — a reconnect, a slow
    /// consumer, a new leader of the event stream — and rescans every room after each.
    pub(crate) fn watch_losses(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut connects = this.signals.connects.clone();
            let mut slow = this.signals.slow_consumers.clone();
            connects.borrow_and_update();
            slow.borrow_and_update();
            // `$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.<stream>`: the new leader stores from
            // now on; a republished copy lost in the change is repaired from the stream.
            let streams: HashSet<String> = (0..this.partitions.count())
                .map(|i| this.partitions.stream(i))
                .collect();
            let mut leaders = this
                .client
                .subscribe("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*")
                .await
                .ok();
            loop {
                let why = tokio::select! {
                    changed = connects.changed() => match changed {
                        Ok(()) => "reconnect",
                        Err(_) => return,
                    },
                    changed = slow.changed() => match changed {
                        Ok(()) => {
                            slow.borrow_and_update();
                            "slow consumer"
                        }
                        Err(_) => return,
                    },
                    Some(msg) = next_or_pending(&mut leaders) => {
                        let stream = msg.subject.as_str().rsplit('.').next().unwrap_or_default();
                        if !streams.contains(stream) {
                            continue;
                        }
                        "stream leader change"
                    }
                };
                // With no room there is nothing to repair (the first connect lands here too).
                if this.rooms.is_empty() {
                    continue;
                }
                info!(
                    cause = why,
                    "Live events may have been lost; every room reads the stream from its last seq"
                );
                crate::metrics::rescan(why);
                this.rescan_all();
            }
        });
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
                        self.unmapped.store(false, Ordering::SeqCst);
                        return;
                    }
                    Err(CheckError::Partitions(e)) => {
                        self.unmapped.store(true, Ordering::SeqCst);
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

    /// Every current entry of key-value bucket `bucket`, then every change to it.
    pub(crate) async fn watch_bucket(&self, bucket: &str) -> Result<async_nats::jetstream::kv::Watch, UpstreamError> {
        let store = self
            .js
            .get_key_value(bucket)
            .await
            .map_err(|e| UpstreamError(e.to_string()))?;
        store
            .watch_with_history(">")
            .await
            .map_err(|e| UpstreamError(e.to_string()))
    }

    /// Whether the server API granted `user` the room (`herald.api.subscribe`; the grant
    /// bucket holds it). No bucket means no grant (it is looked for again after
    /// [`GRANT_ABSENT_RECHECK`], or at the first grant's command, not at every refused
    /// subscribe). An error when the bucket
    /// does not answer within [`GRANT_WAIT`] or [`GRANT_LOOKUPS`] lookups are in flight:
    /// the caller says `unavailable`, not `forbidden`.
    pub(crate) async fn granted(&self, user: &str, room: &str) -> Result<bool, UpstreamError> {
        let Ok(_permit) = self.grant_lookups.try_acquire() else {
            return Err(UpstreamError("too many grant lookups at once".into()));
        };
        if lock(&self.grants_absent).is_some_and(|until| Instant::now() < until) {
            return Ok(false);
        }
        let lookup = async {
            let store = match self
                .grants
                .get_or_try_init(|| self.js.get_key_value(self.subjects.grant_bucket()))
                .await
            {
                Ok(store) => store,
                Err(e) if bucket_missing(&e) => {
                    *lock(&self.grants_absent) = Some(Instant::now() + GRANT_ABSENT_RECHECK);
                    return Ok(false);
                }
                Err(e) => return Err(UpstreamError(e.to_string())),
            };
            store
                .get(herald_proto::api::grant_key(user, room))
                .await
                .map(|entry| entry.is_some())
                .map_err(|e| UpstreamError(e.to_string()))
        };
        tokio::time::timeout(GRANT_WAIT, lookup)
            .await
            .unwrap_or_else(|_| Err(UpstreamError("grant lookup timed out".into())))
    }

    /// A grant was just made (the server API's command says so): the bucket exists now.
    pub(crate) fn grant_made(&self) {
        *lock(&self.grants_absent) = None;
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
        self.unmapped.load(Ordering::Relaxed)
    }

    pub(crate) fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Starts the live events of a room the hub just created: its subscription (per-room),
    /// or the read of its last seq once the wildcard subscription is in place.
    pub(crate) fn start_room(self: &Arc<Self>, room: &str) {
        let room: Arc<str> = Arc::from(room);
        match self.mode {
            RoomSubscriptions::PerRoom => {
                let _ = self.router().opens.send(room);
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

    /// The per-room tasks, started on first use: the opener and the reader.
    fn router(self: &Arc<Self>) -> &Router {
        self.router.get_or_init(|| {
            let (opens, rooms) = mpsc::unbounded_channel();
            let (feeds_tx, feeds) = mpsc::unbounded_channel();
            tokio::spawn(Arc::clone(self).open_rooms(rooms, feeds_tx));
            tokio::spawn(Arc::clone(self).read_rooms(feeds));
            Router { opens }
        })
    }

    /// Subscribes rooms in batches: each batch's SUBs go out together and one flush
    /// confirms them, then the batch's rooms read their last seqs and turn ready.
    async fn open_rooms(
        self: Arc<Self>,
        mut opens: mpsc::UnboundedReceiver<Arc<str>>,
        feeds: mpsc::UnboundedSender<Feed>,
    ) {
        let mut batch = Vec::with_capacity(OPEN_BATCH);
        while opens.recv_many(&mut batch, OPEN_BATCH).await > 0 {
            // Rooms opening at a steady rate (clients connecting) come one at a time: a short
            // wait gathers them, so that their subscriptions and last-seq reads are batched.
            if batch.len() < MIN_LAST_BATCH {
                tokio::time::sleep(OPEN_LINGER).await;
                while batch.len() < OPEN_BATCH {
                    match opens.try_recv() {
                        Ok(room) => batch.push(room),
                        Err(_) => break,
                    }
                }
            }
            let mut opened = Vec::with_capacity(batch.len());
            for room in batch.drain(..) {
                if !self.rooms.contains(&room) {
                    continue;
                }
                match self.client.subscribe(self.subjects.live_room(&room)).await {
                    Ok(sub) => {
                        let (handle, registration) = AbortHandle::new_pair();
                        // Refused when the room is gone or already has its subscription (it
                        // was removed and created again while queued): this one is dropped.
                        if self.rooms.set_feed(&room, handle) {
                            let feed = Feed {
                                sub: Abortable::new(sub, registration),
                                _gauge: GaugeGuard::new(),
                            };
                            if feeds.send(feed).is_err() {
                                return;
                            }
                            opened.push(room);
                        }
                    }
                    // Only when the client is closed: nothing will come, the joins give up.
                    Err(e) => {
                        warn!(%room, error = %e, "Room subscription failed");
                        self.rooms.set_failed(&room);
                    }
                }
            }
            if opened.is_empty() {
                continue;
            }
            // The server has every SUB of the batch once the flush returns: whatever is stored
            // after the last seq each room reads next arrives live. If NATS is down, the reads
            // fail and retry, and async-nats subscribes again on reconnect.
            if let Err(e) = self.client.flush().await {
                warn!(error = %e, "Flush of new room subscriptions failed");
            }
            tokio::spawn(Arc::clone(&self).ready_rooms(opened));
        }
    }

    /// Reads the last seqs of newly subscribed rooms, up to [`MAX_LAST_BATCH`] of one
    /// partition's rooms in one batched direct get, and turns them ready; rooms of a batch
    /// the server does not answer, and of batches too small to gain, read their own.
    async fn ready_rooms(self: Arc<Self>, rooms: Vec<Arc<str>>) {
        futures_util::stream::iter(self.last_batches(rooms))
            .for_each_concurrent(LAST_BATCHES_IN_FLIGHT, |(partition, batch)| {
                let this = &self;
                async move {
                    let lasts = if batch.len() < MIN_LAST_BATCH {
                        vec![None; batch.len()]
                    } else {
                        this.lasts(partition, &batch).await
                    };
                    let mut unread = Vec::new();
                    for (room, last) in batch.into_iter().zip(lasts) {
                        match last {
                            Some(last) => {
                                if let Some(fetch) = this.rooms.set_ready(&room, last.seq, last.stored_us) {
                                    tokio::spawn(Arc::clone(this).repair(room, fetch));
                                }
                            }
                            None => unread.push(room),
                        }
                    }
                    crate::metrics::last_seqs_read(unread.len(), false);
                    futures_util::stream::iter(unread)
                        .for_each_concurrent(OPEN_CONCURRENCY, |room| Arc::clone(this).make_ready(room))
                        .await;
                }
            })
            .await;
    }

    /// `rooms` by the partition that stores them, in batches of at most [`MAX_LAST_BATCH`]
    /// (fewer with a small subscription capacity).
    fn last_batches(&self, rooms: Vec<Arc<str>>) -> impl Iterator<Item = (u32, Vec<Arc<str>>)> {
        let size = self.last_batch.max(1);
        let mut by_stream: HashMap<u32, Vec<Arc<str>>> = HashMap::new();
        for room in rooms {
            by_stream.entry(self.partitions.of(&room)).or_default().push(room);
        }
        by_stream.into_iter().flat_map(move |(partition, rooms)| {
            let mut rooms = rooms.into_iter().peekable();
            std::iter::from_fn(move || {
                rooms.peek()?;
                Some((partition, rooms.by_ref().take(size).collect()))
            })
        })
    }

    /// Whether last seqs are read in batches: the server knows them, and a batch can hold
    /// enough rooms to gain.
    fn batches_last_seqs(&self) -> bool {
        self.last_batch >= MIN_LAST_BATCH && !self.lasts_unsupported.load(Ordering::Relaxed)
    }

    /// The last stored seq of each room of a batch of one partition's rooms, in one batched
    /// direct get: `Some(Last::default())` for a room with none stored, `None` for every
    /// room when there was no complete answer.
    async fn lasts(&self, partition: u32, rooms: &[Arc<str>]) -> Vec<Option<Last>> {
        if !self.batches_last_seqs() {
            return vec![None; rooms.len()];
        }
        let subjects: Vec<String> = rooms.iter().map(|r| self.partitions.stored_subject(r)).collect();
        let stream = self.partitions.stream(partition);
        let answer = {
            // Never closed.
            let _permit = self.lasts_in_flight.acquire().await;
            last_of_subjects(&self.client, &stream, &subjects, LAST_BATCH_TIMEOUT).await
        };
        match answer {
            Ok(lasts) => {
                crate::metrics::last_seqs_read(rooms.len(), true);
                lasts.into_iter().map(|l| Some(l.unwrap_or_default())).collect()
            }
            Err(e) => {
                if e.unsupported() {
                    self.lasts_unsupported.store(true, Ordering::Relaxed);
                }
                if self.lasts_failed.swap(true, Ordering::Relaxed) {
                    debug!(error = %e, rooms = rooms.len(), %stream, "Batched last-seq read failed; reading room by room");
                } else {
                    warn!(
                        error = %e, rooms = rooms.len(), %stream,
                        "Batched last-seq read failed; reading room by room (later failures are logged at debug)"
                    );
                }
                vec![None; rooms.len()]
            }
        }
    }

    /// Reads every room's subscription; each event goes on through `Delivery`.
    async fn read_rooms(self: Arc<Self>, mut feeds: mpsc::UnboundedReceiver<Feed>) {
        let mut all = SelectAll::new();
        let mut delivery = Delivery::new(&self);
        loop {
            tokio::select! {
                feed = feeds.recv() => match feed {
                    Some(feed) => all.push(feed),
                    None => return,
                },
                Some(msg) = all.next(), if !all.is_empty() => self.on_message(&msg, &mut delivery).await,
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
        let mut delivery = Delivery::new(&self);
        while let Some(msg) = sub.next().await {
            self.on_message(&msg, &mut delivery).await;
        }
    }

    /// One live event, if the gateway holds its room: parsed and handed to `delivery`.
    async fn on_message(self: &Arc<Self>, msg: &async_nats::Message, delivery: &mut Delivery) {
        let Some(room) = self.subjects.room_of(msg.subject.as_str()) else {
            return;
        };
        if !self.rooms.contains(room) {
            return;
        }
        let Some(ev) = self.live_event(room, msg) else {
            return;
        };
        delivery.route(Arc::new(ev)).await;
    }

    /// A big room's deliveries; ends once the room is gone and idle (or the reader is).
    async fn deliver_room(self: Arc<Self>, room: Arc<str>, mut events: mpsc::Receiver<Arc<StoredEvent>>) {
        loop {
            match tokio::time::timeout(BIG_ROOM_IDLE, events.recv()).await {
                Ok(Some(ev)) => self.offer(ev),
                Ok(None) => return,
                Err(_) if self.rooms.contains(&room) => {}
                Err(_) => {
                    events.close();
                    while let Ok(ev) = events.try_recv() {
                        self.offer(ev);
                    }
                    return;
                }
            }
        }
    }

    /// A live event to its room in the table, and the read of the gap before it, if any.
    fn offer(self: &Arc<Self>, ev: Arc<StoredEvent>) {
        let room = Arc::clone(&ev.room);
        if let Some(fetch) = self.rooms.offer(ev) {
            tokio::spawn(Arc::clone(self).repair(room, fetch));
        }
    }

    /// Every room reads what was stored after its last seq; one rescan at a time, and one
    /// more after it if asked for meanwhile (a storm of slow-consumer reports is one or two).
    fn rescan_all(self: &Arc<Self>) {
        if self
            .rescan
            .compare_exchange(RESCAN_IDLE, RESCAN_RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.rescan.store(RESCAN_AGAIN, Ordering::Release);
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let started = std::time::Instant::now();
                let names = this.rooms.names();
                let rooms = names.len();
                let read = AtomicUsize::new(0);
                futures_util::stream::iter(this.last_batches(names))
                    .for_each_concurrent(LAST_BATCHES_IN_FLIGHT, |(partition, batch)| {
                        let (this, read) = (&this, &read);
                        async move {
                            let lasts = this.lasts(partition, &batch).await;
                            let reads = batch.into_iter().zip(lasts).filter_map(|(room, last)| {
                                this.rooms.rescan(&room, last.map(|l| l.seq)).map(|f| (room, f))
                            });
                            futures_util::stream::iter(reads)
                                .for_each_concurrent(RESCAN_CONCURRENCY, |(room, fetch)| {
                                    read.fetch_add(1, Ordering::Relaxed);
                                    Arc::clone(this).repair(room, fetch)
                                })
                                .await;
                        }
                    })
                    .await;
                if rooms > 0 {
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    let read = read.into_inner();
                    info!(rooms, read, elapsed_ms, "Every room caught up with the stream");
                }
                if this
                    .rescan
                    .compare_exchange(RESCAN_RUNNING, RESCAN_IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                this.rescan.store(RESCAN_RUNNING, Ordering::Release);
            }
        });
    }

    /// Waits for the wildcard subscription, then reads the room's last seq and turns it ready.
    async fn open_room(self: Arc<Self>, room: Arc<str>, mut subscribed: watch::Receiver<bool>) {
        if subscribed.wait_for(|s| *s).await.is_err() {
            return;
        }
        self.make_ready(room).await;
    }

    /// Reads the last seq of a room whose subscription is in place and turns it ready; the
    /// live events held meanwhile follow (after a read of the gap, if any).
    async fn make_ready(self: Arc<Self>, room: Arc<str>) {
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

    fn live_event(&self, room: &str, msg: &async_nats::Message) -> Option<StoredEvent> {
        let headers = msg.headers.as_ref()?;
        let num = |name: &str| headers.get(name).and_then(|v| v.as_str().parse::<u64>().ok());
        let Some(seq) = num(header::NATS_SEQUENCE) else {
            // Not from the stream: an ephemeral event (seq 0), in an ephemeral room only.
            if headers.get(header::HERALD_EPHEMERAL).is_none() || !(self.ephemeral)(room) {
                return None;
            }
            let now_ns = herald_service::now_ns();
            return Some(StoredEvent {
                room: Arc::from(room),
                seq: 0,
                prev: 0,
                ts: now_ns / 1_000_000,
                stored_us: now_ns / 1_000,
                kind: text_header(headers, header::HERALD_TYPE),
                from: text_header(headers, header::HERALD_FROM),
                payload: msg.payload.clone(),
            });
        };
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
        ttl: Option<Duration>,
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
        if let Some(ttl) = ttl {
            headers.insert(header::NATS_TTL, value(&header::ttl(ttl))?);
        }
        self.js
            .publish_with_headers(self.subjects.room(room), headers, payload)
            .await
            .map_err(|e| UpstreamError(e.to_string()))
    }

    /// Sends an ephemeral event for a client: core NATS, on the room's live subject, never
    /// stored (seq 0).
    pub(crate) async fn publish_ephemeral(
        &self,
        room: &str,
        payload: Bytes,
        kind: Option<&str>,
        from: &str,
    ) -> Result<(), UpstreamError> {
        let value = |v: &str| {
            v.parse::<HeaderValue>()
                .map_err(|e| UpstreamError(format!("bad header value: {e}")))
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::HERALD_FROM, value(from)?);
        headers.insert(header::HERALD_EPHEMERAL, value("1")?);
        if let Some(kind) = kind {
            headers.insert(header::HERALD_TYPE, value(kind)?);
        }
        self.client
            .publish_with_headers(self.subjects.live_room(room), headers, payload)
            .await
            .map_err(|e| UpstreamError(e.to_string()))
    }

    /// Purges all but the room's newest `keep` events (failures are logged: the next
    /// publish trims again).
    pub(crate) async fn trim(&self, room: &str, keep: u64) {
        let purge = async {
            let stream = self.stream(room).await?;
            stream
                .purge()
                .filter(self.partitions.stored_subject(room))
                .keep(keep)
                .await
                .map_err(|e| UpstreamError(e.to_string()))
        };
        if let Err(e) = purge.await {
            debug!(%room, error = %e, "History not trimmed");
        }
    }

    /// The stream that stores `room` (its partition's).
    async fn stream(&self, room: &str) -> Result<jetstream::stream::Stream<()>, UpstreamError> {
        self.js
            .get_stream_no_info(self.partitions.stream_of(room))
            .await
            .map_err(|e| UpstreamError(e.to_string()))
    }
}

/// Whether opening a bucket failed because its stream does not exist (not for a timeout
/// or any other failure, which say nothing of the bucket).
fn bucket_missing(e: &async_nats::jetstream::context::KeyValueError) -> bool {
    use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
    use async_nats::jetstream::ErrorCode;
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<GetStreamError>())
        .is_some_and(
            |s| matches!(s.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND),
        )
}

/// The delivery worker of a room's events: always the same one, so they stay in order.
fn worker_of(room: &str, workers: usize) -> usize {
    partition(room, workers as u32) as usize
}

/// The next message of an optional subscription; never, without one.
async fn next_or_pending(sub: &mut Option<Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_reader_hands_off_after_a_window_it_spent_mostly_delivering_until_the_workers_are_idle() {
        let t0 = Instant::now();
        let mut busy = Busy::new(t0);
        // A light window: 2 ms of 10 delivering. Inline.
        assert!(!busy.hand_off(t0, || true));
        busy.delivered(2 * MS);
        assert!(!busy.hand_off(t0 + 5 * MS, || true));
        assert!(!busy.hand_off(t0 + 10 * MS, || true));
        // A busy window: 6 ms of 10. The next one hands off, whatever it measures.
        busy.delivered(6 * MS);
        assert!(busy.hand_off(t0 + 20 * MS, || true));
        assert!(busy.hand_off(t0 + 25 * MS, || true));
        // The window ends with workers still holding events: it keeps handing off.
        assert!(busy.hand_off(t0 + 30 * MS, || false));
        // Idle workers at the end of a quiet window: inline again.
        assert!(!busy.hand_off(t0 + 40 * MS, || true));
        // A long pause counts as a window of its own: 6 ms over 100 ms is light.
        busy.delivered(6 * MS);
        assert!(!busy.hand_off(t0 + 140 * MS, || true));
    }
}
