//! The room table: rooms → local subscribers, and fan-out of stored events.
//!
//! Rooms are sharded by name hash so events of different rooms don't contend. Each event is
//! encoded at most once per codec and the same `Bytes` go to every subscriber's queue.
//! A subscriber starts `Pending` (live events are buffered while its replay is fetched) and
//! turns `Live` in [`Table::activate`], which splices replay and buffer without a duplicate or
//! a reorder: a subscriber only ever receives seqs above the last one it received.
//!
//! Seqs are the stream's: if the stream is deleted and recreated they start again from 1.
//! A live event stored *after* the room's last event but with a seq not above it shows
//! that; the room then rewinds ([`Room::rewind`]): its position goes back to 0, every
//! WebSocket subscriber is told `{"t":"ack","room":..,"seq":0,"recovered":false}`, and the
//! new stream's events follow from its first.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::future::AbortHandle;
use herald_proto::frame::{Ack, ServerFrame};
use herald_proto::Codec;
use tokio::sync::watch;
use tracing::warn;

use crate::outbound::{encode_for, event_frame, Content, Deflate, Format, Item, Outbound, Pushed};
use crate::sync::lock;
use crate::upstream::{Fetch, Rooms, StoredEvent};

const SHARDS: usize = 64;
/// Live events buffered for one subscriber while its replay is fetched, at most. A room that
/// outruns a stalled replay by this much closes the subscriber as a slow consumer (4008); it
/// resumes with `since` and loses nothing still in history.
const MAX_PENDING_EVENTS: usize = 10_000;

/// Rooms with at most this many local subscribers write each event straight to their
/// subscribers' sockets from the delivering task ([`Outbound::push_now`]): no hand-off to
/// each connection's task. Bigger rooms hand off, so that their writes spread over the
/// cores and one room's fan-out (a few µs per socket) does not hold up the rooms that share
/// its delivery worker.
const DIRECT_ROOM: usize = 64;
/// Live events held for a room while its history is read, at most. Past it they are dropped
/// and the room reads the stream to its end once the current read is done, so none is lost.
const MAX_HELD_EVENTS: usize = 10_000;

/// Whether a room's upstream subscription is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomState {
    Starting,
    Ready,
    Failed,
}

/// The result of [`Table::join`].
#[derive(Debug)]
pub struct Joined {
    /// The room was created by this join: its upstream must be started.
    pub new_room: bool,
    pub state: Readiness,
}

/// A joined room's state: settled, or to be waited for while its upstream starts.
#[derive(Debug)]
pub enum Readiness {
    Now(RoomState),
    Later(watch::Receiver<RoomState>),
}

/// Rooms and their local subscribers.
pub struct Table {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

type Shard = HashMap<Arc<str>, Room>;

struct Room {
    subs: HashMap<u64, Sub>,
    last_seq: u64,
    /// When the event at `last_seq` was stored (µs since the epoch).
    last_us: u64,
    state: RoomState,
    /// Joins waiting for the room to leave `Starting`: made by the first and dropped once the
    /// state is settled (a watch channel is ~0.4 KiB, and nearly every room is settled).
    waiters: Option<watch::Sender<RoomState>>,
    /// Ends the room's live subscription (per-room mode) when the room is removed.
    feed: Option<AbortHandle>,
    /// Bumped on every join, so a linger timer knows whether the room was reused.
    generation: u64,
    /// Live events held back, in arrival order, while the room's history is read (a new room
    /// before its last seq is known, a gap, a reconnect); `None` when events go straight to
    /// the subscribers. Only [`Rooms::offer`] holds events back.
    held: Option<Vec<Arc<StoredEvent>>>,
    /// Read the stream to its end once the current read is done (a reconnect came during it,
    /// or held events were dropped).
    rescan: bool,
}

struct Sub {
    out: Arc<Outbound>,
    format: Format,
    mode: Mode,
    delivered: u64,
    /// The room rewound while this subscriber was pending: its replay and floor belong to
    /// the old stream.
    rewound: bool,
}

enum Mode {
    Pending(Vec<Arc<StoredEvent>>),
    Live,
}

/// An event's frames, encoded on first use per format.
struct Frames<'e> {
    ev: &'e StoredEvent,
    slots: [Option<Bytes>; 5],
}

// === impl Table ===

impl Default for Table {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Table {
    fn shard(&self, room: &str) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(room) as usize % SHARDS;
        lock(&self.shards[i])
    }

    /// Adds a pending subscriber; live events are buffered for it until [`Table::activate`].
    pub fn join(&self, room: &str, conn: u64, out: Arc<Outbound>, format: Format) -> Joined {
        let mut shard = self.shard(room);
        let new_room = !shard.contains_key(room);
        let r = shard.entry(Arc::from(room)).or_insert_with(|| Room {
            subs: HashMap::new(),
            last_seq: 0,
            last_us: 0,
            state: RoomState::Starting,
            waiters: None,
            feed: None,
            generation: 0,
            held: Some(Vec::new()),
            rescan: false,
        });
        r.generation += 1;
        let sub = Sub {
            out,
            format,
            mode: Mode::Pending(Vec::new()),
            delivered: 0,
            rewound: false,
        };
        if r.subs.insert(conn, sub).is_none() {
            crate::metrics::room_subscriptions(1.0);
        }
        let state = match r.state {
            RoomState::Starting => Readiness::Later(
                r.waiters
                    .get_or_insert_with(|| watch::channel(RoomState::Starting).0)
                    .subscribe(),
            ),
            settled => Readiness::Now(settled),
        };
        Joined { new_room, state }
    }

    /// Turns a pending subscriber live: queues `replay` (events above `floor`, or above the
    /// room's last seq when `floor` is `None`: the live tail), then the live events buffered
    /// meanwhile that are newer, then the frame `ack(seq)` makes from the last seq delivered.
    /// Returns that seq, or `None` if the subscriber is gone.
    pub fn activate(
        &self,
        room: &str,
        conn: u64,
        replay: &[Arc<StoredEvent>],
        floor: Option<u64>,
        ack: impl FnOnce(u64) -> Bytes,
    ) -> Option<u64> {
        let mut shard = self.shard(room);
        let r = shard.get_mut(room)?;
        let last = r.last_seq;
        let sub = r.subs.get_mut(&conn)?;
        sub.delivered = floor.unwrap_or(last);
        let mut replay = replay;
        if std::mem::take(&mut sub.rewound) {
            // Only what was buffered since the rewind is of the current stream.
            replay = &[];
            sub.delivered = 0;
            sub.out.push(rewound_item(room, sub.format));
        }
        let buffered = match std::mem::replace(&mut sub.mode, Mode::Live) {
            Mode::Pending(buf) => buf,
            Mode::Live => Vec::new(),
        };
        for ev in replay.iter().chain(buffered.iter()) {
            if ev.seq > sub.delivered {
                let bytes = event_frame(ev.event_ref(), sub.format);
                sub.delivered = ev.seq;
                if sub.out.push(item(bytes, ev, sub.format, 0)) != Pushed::Queued {
                    return Some(sub.delivered);
                }
            }
        }
        let ack = ack(sub.delivered);
        if !ack.is_empty() {
            // Straight out when nothing was replayed (else it queues behind the replay).
            sub.out.push_now(Item::frame(ack));
        }
        Some(sub.delivered)
    }

    /// Removes a subscriber. Returns the room's generation if the room is now empty (the
    /// caller lingers, then calls [`Table::remove_if_idle`]).
    pub fn leave(&self, room: &str, conn: u64) -> Option<u64> {
        let mut shard = self.shard(room);
        let r = shard.get_mut(room)?;
        if r.subs.remove(&conn).is_some() {
            crate::metrics::room_subscriptions(-1.0);
        }
        r.subs.is_empty().then_some(r.generation)
    }

    /// Drops a room (and stops its upstream) if nobody joined since `generation`.
    pub fn remove_if_idle(&self, room: &str, generation: u64) -> bool {
        let mut shard = self.shard(room);
        let idle = shard
            .get(room)
            .is_some_and(|r| r.subs.is_empty() && r.generation == generation);
        if idle {
            if let Some(feed) = shard.remove(room).and_then(|r| r.feed) {
                feed.abort();
            }
        }
        idle
    }

    /// Hands a stored event to every subscriber of its room; returns how many got it.
    pub fn deliver(&self, ev: &Arc<StoredEvent>) -> usize {
        let mut shard = self.shard(&ev.room);
        match shard.get_mut(&*ev.room) {
            Some(r) => r.deliver(ev, true),
            None => 0,
        }
    }

    /// The rooms each of `conns` is subscribed to (a walk over every room: for the server
    /// API, not for the event path).
    pub(crate) fn rooms_of(&self, conns: &[u64]) -> HashMap<u64, Vec<String>> {
        let mut found: HashMap<u64, Vec<String>> = HashMap::new();
        for shard in self.shards.iter() {
            for (name, room) in lock(shard).iter() {
                for conn in conns.iter().filter(|c| room.subs.contains_key(c)) {
                    found.entry(*conn).or_default().push(name.to_string());
                }
            }
        }
        for rooms in found.values_mut() {
            rooms.sort_unstable();
        }
        found
    }

    /// The rooms whose names start with `prefix` that have local subscribers, most first,
    /// at most `max`; and whether more matched.
    pub(crate) fn counts(&self, prefix: &str, max: usize) -> (Vec<(String, usize)>, bool) {
        let mut all: Vec<(String, usize)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            all.extend(
                shard
                    .iter()
                    .filter(|(name, room)| name.starts_with(prefix) && !room.subs.is_empty())
                    .map(|(name, room)| (name.to_string(), room.subs.len())),
            );
        }
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let truncated = all.len() > max;
        all.truncate(max);
        (all, truncated)
    }

    /// Rooms with at least one local subscriber or lingering.
    pub fn rooms(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// The room's last seq, if it is ready.
    pub fn ready_last_seq(&self, room: &str) -> Option<u64> {
        let shard = self.shard(room);
        let r = shard.get(room)?;
        (r.state == RoomState::Ready).then_some(r.last_seq)
    }
}

// === impl Room ===

impl Room {
    /// The read to the stream's end the room needs after events may have been lost (`None`
    /// if a read is under way: it reads to the end once more when done), spared when
    /// `stored_last`, the room's last seq in the stream read since, is one it has seen.
    fn catch_up(&mut self, stored_last: Option<u64>) -> Option<Fetch> {
        if self.held.is_some() {
            self.rescan = true;
            return None;
        }
        if stored_last.is_some_and(|last| last <= self.last_seq) {
            return None;
        }
        self.held = Some(Vec::new());
        Some(Fetch {
            after: self.last_seq,
            until: None,
        })
    }

    /// Sets the room's state and tells the joins waiting for it.
    fn settle(&mut self, state: RoomState) {
        self.state = state;
        if let Some(waiters) = self.waiters.take() {
            waiters.send_replace(state);
        }
    }

    /// Queues `ev` to every live subscriber (buffers it for pending ones); returns how many got it.
    /// `live`: one event as it happens, which a small room writes straight to its sockets; a
    /// run of events (released after a gap read) is queued, for the writers' batches.
    fn deliver(&mut self, ev: &Arc<StoredEvent>, live: bool) -> usize {
        if ev.seq > self.last_seq {
            self.last_seq = ev.seq;
            // Never back (an event without the store's time has 0).
            self.last_us = self.last_us.max(ev.stored_us);
        }
        let mut frames = Frames {
            ev,
            slots: [None, None, None, None, None],
        };
        let mut n = 0;
        let direct = live && self.subs.len() <= DIRECT_ROOM;
        for sub in self.subs.values_mut() {
            match &mut sub.mode {
                Mode::Pending(buf) if buf.len() >= MAX_PENDING_EVENTS => {
                    *buf = Vec::new();
                    sub.out.close(Some(herald_proto::CloseCode::SLOW_CONSUMER));
                }
                Mode::Pending(buf) => buf.push(Arc::clone(ev)),
                // An ephemeral event (seq 0) goes to every live subscriber, out of the order.
                Mode::Live if ev.seq > sub.delivered || ev.seq == 0 => {
                    sub.delivered = sub.delivered.max(ev.seq);
                    let bytes = frames.get(sub.format);
                    if sub.out.push_as(item(bytes, ev, sub.format, ev.stored_us), direct) == Pushed::Queued {
                        n += 1;
                    }
                }
                Mode::Live => {}
            }
        }
        n
    }

    /// Whether `ev`, a live event, shows that the stream's seqs went back: stored after the
    /// room's last event, yet its seq is not above it. (An event seen twice, as around a
    /// history read, was stored no later than the last one.)
    fn rewinds(&self, ev: &StoredEvent) -> bool {
        ev.seq <= self.last_seq && ev.stored_us > self.last_us
    }

    /// The stream was recreated: the room's position goes back to 0 and its subscribers
    /// start over there; WebSocket subscribers are told `recovered:false` (an unsolicited
    /// `ack` with `seq` 0) before the new stream's events. The HTTP transports' subscribers
    /// just get those events: their cursors take the new seqs.
    fn rewind(&mut self, room: &str) {
        warn!(%room, last_seq = self.last_seq, "The room's seqs went back (the stream was recreated); resyncing");
        crate::metrics::room_rewound();
        self.last_seq = 0;
        self.last_us = 0;
        for sub in self.subs.values_mut() {
            match &mut sub.mode {
                Mode::Pending(buf) => {
                    buf.clear();
                    sub.rewound = true;
                }
                Mode::Live => {
                    sub.delivered = 0;
                    sub.out.push(rewound_item(room, sub.format));
                }
            }
        }
    }

    /// Delivers `fetched` (read from history), then the held events in order, up to the
    /// next gap. Returns the read that gap needs (events stay held), or the read to the
    /// stream's end a rescan asks for, or `None` once nothing is held (events flow again).
    fn release(&mut self, fetched: Vec<StoredEvent>) -> Option<Fetch> {
        for ev in fetched {
            if ev.seq > self.last_seq {
                self.deliver(&Arc::new(ev), false);
            }
        }
        let held = self.held.take().unwrap_or_default();
        let mut rest = held.into_iter();
        while let Some(ev) = rest.next() {
            if self.rewinds(&ev) {
                self.rewind(&ev.room);
            }
            if ev.seq <= self.last_seq {
                continue;
            }
            if ev.prev > self.last_seq {
                let until = Some(ev.seq);
                self.held = Some(std::iter::once(ev).chain(rest).collect());
                return Some(Fetch {
                    after: self.last_seq,
                    until,
                });
            }
            self.deliver(&ev, false);
        }
        if std::mem::take(&mut self.rescan) {
            self.held = Some(Vec::new());
            return Some(Fetch {
                after: self.last_seq,
                until: None,
            });
        }
        None
    }
}

// What upstream reads from NATS reports into the table.
impl Rooms for Table {
    fn set_feed(&self, room: &str, feed: AbortHandle) -> bool {
        match self.shard(room).get_mut(room) {
            Some(r) if r.feed.is_none() => {
                r.feed = Some(feed);
                true
            }
            _ => false,
        }
    }

    /// Marks a room's upstream ready, at the room's last stored seq, and releases what was
    /// held meanwhile.
    fn set_ready(&self, room: &str, last_seq: u64, last_us: u64) -> Option<Fetch> {
        let mut shard = self.shard(room);
        let r = shard.get_mut(room)?;
        // Already ready: this answer outlived the room it was read for (removed and opened
        // again meanwhile), or repeats one. Events after the room's last seq may not have
        // been delivered: read them, never skip past them.
        if r.state == RoomState::Ready {
            return r.catch_up(Some(last_seq));
        }
        if last_seq > r.last_seq {
            r.last_seq = last_seq;
            r.last_us = last_us;
        }
        r.settle(RoomState::Ready);
        r.release(Vec::new())
    }

    fn contains(&self, room: &str) -> bool {
        self.shard(room).contains_key(room)
    }

    fn subscribers(&self, room: &str) -> usize {
        self.shard(room).get(room).map_or(0, |r| r.subs.len())
    }

    fn is_empty(&self) -> bool {
        self.rooms() == 0
    }

    fn names(&self) -> Vec<Arc<str>> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn offer(&self, ev: Arc<StoredEvent>) -> Option<Fetch> {
        let mut shard = self.shard(&ev.room);
        let r = shard.get_mut(&*ev.room)?;
        if ev.seq == 0 {
            // Ephemeral: no order to keep with the stored events, nothing to repair.
            r.deliver(&ev, true);
            return None;
        }
        if let Some(held) = &mut r.held {
            if held.len() >= MAX_HELD_EVENTS {
                held.clear();
                r.rescan = true;
            } else {
                held.push(ev);
            }
            return None;
        }
        if r.rewinds(&ev) {
            r.rewind(&ev.room);
        }
        if ev.seq <= r.last_seq {
            return None;
        }
        if ev.prev > r.last_seq {
            let fetch = Fetch {
                after: r.last_seq,
                until: Some(ev.seq),
            };
            r.held = Some(vec![ev]);
            return Some(fetch);
        }
        r.deliver(&ev, true);
        None
    }

    fn release(&self, room: &str, fetched: Vec<StoredEvent>) -> Option<Fetch> {
        self.shard(room).get_mut(room)?.release(fetched)
    }

    fn rescan(&self, room: &str, stored_last: Option<u64>) -> Option<Fetch> {
        self.shard(room).get_mut(room)?.catch_up(stored_last)
    }

    /// Marks a room's upstream failed; pending subscribers give up.
    fn set_failed(&self, room: &str) {
        if let Some(r) = self.shard(room).get_mut(room) {
            r.settle(RoomState::Failed);
        }
    }
}

/// What tells a subscriber that the room's seqs started over: an `ack` with `seq` 0 and
/// `recovered:false` on WebSocket (as a resume beyond the stream gets); for the HTTP
/// transports, an item they turn into `unrecovered` (SSE's event, a poll answer's list).
fn rewound_item(room: &str, format: Format) -> Item {
    let Format::WebSocket(..) = format else {
        return Item {
            bytes: Bytes::new(),
            content: Content::Unrecovered(Arc::from(room)),
        };
    };
    let ack = Ack {
        room: Some(room.to_owned()),
        seq: Some(0),
        recovered: Some(false),
        ..Ack::default()
    };
    Item::frame(encode_for(format, &ServerFrame::Ack(ack)))
}

/// An event's queue item. Only the HTTP transports get the room (a shared name's count is
/// contended by every subscriber; WebSocket clients never need it back).
pub(super) fn item(bytes: Bytes, ev: &StoredEvent, format: Format, stored_us: u64) -> Item {
    Item {
        bytes,
        content: Content::Event {
            room: (format == Format::Bare).then(|| Arc::clone(&ev.room)),
            seq: ev.seq,
            stored_us,
        },
    }
}

// === impl Frames ===

impl Frames<'_> {
    fn get(&mut self, format: Format) -> Bytes {
        let i = match format {
            Format::WebSocket(Codec::Json, None) => 0,
            Format::WebSocket(Codec::MsgPack, None) => 1,
            Format::Bare => 2,
            // One threshold per gateway (`--ws-compression-min-bytes`): one slot per codec.
            Format::WebSocket(Codec::Json, Some(Deflate::Shared(_))) => 3,
            Format::WebSocket(Codec::MsgPack, Some(Deflate::Shared(_))) => 4,
            Format::WebSocket(_, Some(Deflate::PerDelivery(_))) => {
                return event_frame(self.ev.event_ref(), format);
            }
        };
        self.slots[i]
            .get_or_insert_with(|| event_frame(self.ev.event_ref(), format))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, prev: u64) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            room: Arc::from("lobby"),
            seq,
            prev,
            ts: 1,
            stored_us: 0,
            kind: None,
            from: None,
            payload: Bytes::from_static(b"1"),
        })
    }

    #[test]
    fn shared_compression_is_made_once_per_event_and_per_delivery_compression_every_time() {
        let payload = Bytes::from(format!("\"{}\"", "all work and no play ".repeat(50)));
        let ev = StoredEvent {
            payload,
            ..(*ev(1, 0)).clone()
        };
        let mut frames = Frames {
            ev: &ev,
            slots: [None, None, None, None, None],
        };
        let shared = Format::WebSocket(Codec::Json, Some(Deflate::Shared(0)));
        let (a, b) = (frames.get(shared), frames.get(shared));
        assert_eq!(a.as_ptr(), b.as_ptr(), "one compressed frame, shared");
        assert_ne!(a[0] & 0x40, 0, "RSV1: compressed");
        let each = Format::WebSocket(Codec::Json, Some(Deflate::PerDelivery(0)));
        let (c, d) = (frames.get(each), frames.get(each));
        assert_ne!(c.as_ptr(), d.as_ptr(), "compressed again for each delivery");
        assert_eq!((&c, &d), (&a, &a), "the same bytes");
        let plain = frames.get(Format::WebSocket(Codec::Json, None));
        assert_eq!(plain[0] & 0x40, 0);
        assert!(plain.len() > a.len() * 4, "{} → {}", plain.len(), a.len());
    }

    fn drain(out: &Outbound) -> Vec<String> {
        let mut batch = Vec::new();
        out.take(&mut batch);
        batch
            .iter()
            .map(|i| String::from_utf8_lossy(&i.bytes[2..]).into_owned())
            .collect()
    }

    #[test]
    fn pending_subscribers_get_replay_then_buffer_without_duplicates() {
        let hub = Table::default();
        let out = Outbound::new(1 << 20);
        let joined = hub.join("lobby", 1, out.clone(), Format::WebSocket(Codec::Json, None));
        assert!(joined.new_room);
        hub.set_ready("lobby", 5, 0);
        // Live events arrive while the replay is being fetched.
        hub.deliver(&ev(7, 6));
        hub.deliver(&ev(8, 7));
        assert!(drain(&out).is_empty());
        let seq = hub.activate("lobby", 1, &[ev(6, 5), ev(7, 6)], Some(5), |s| {
            Bytes::from(format!("__ack {s}"))
        });
        assert_eq!(seq, Some(8));
        hub.deliver(&ev(8, 7));
        hub.deliver(&ev(9, 8));
        let got = drain(&out);
        let seqs: Vec<&str> = got
            .iter()
            .map(|f| match f.find("\"seq\":") {
                Some(i) => &f[i + 6..i + 7],
                None => f.as_str(),
            })
            .collect();
        assert_eq!(seqs, ["6", "7", "8", "ack 8", "9"]);
    }

    fn stored(seq: u64, prev: u64) -> StoredEvent {
        Arc::unwrap_or_clone(ev(seq, prev))
    }

    /// A ready room with one live JSON subscriber.
    fn live_room(last: u64) -> (Table, Arc<Outbound>) {
        let hub = Table::default();
        let out = Outbound::new(1 << 20);
        hub.join("lobby", 1, out.clone(), Format::WebSocket(Codec::Json, None));
        assert_eq!(hub.set_ready("lobby", last, 0), None, "nothing was held");
        hub.activate("lobby", 1, &[], None, |_| Bytes::new());
        (hub, out)
    }

    fn seqs(out: &Outbound) -> Vec<u64> {
        drain(out)
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f).expect("event json");
                v["seq"].as_u64().expect("seq")
            })
            .collect()
    }

    #[tokio::test]
    async fn a_run_released_after_a_gap_read_is_queued_for_the_writer_not_written_event_by_event() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let (_rd, wr) = ours.into_split();
        let (hub, out) = live_room(5);
        // The room's subscriber is a plain-TCP WebSocket connection.
        out.write_directly(Arc::new(wr));
        // 1000 events were lost on the way: the next one reveals the gap, and the read
        // brings them back as one run.
        assert!(hub.offer(ev(1006, 1005)).is_some());
        let fetched: Vec<StoredEvent> = (6..1006).map(|s| stored(s, s - 1)).collect();
        assert_eq!(hub.release("lobby", fetched), None);
        // "Runs of frames (replays) still go through the writer": the run is queued, for
        // one vectored write, not written to the socket one syscall per event (under the
        // room's shard lock).
        assert_eq!(seqs(&out).len(), 1001, "the run was written event by event");
    }

    #[test]
    fn joins_wait_only_while_a_room_starts_and_every_waiter_learns_how_it_ended() {
        let hub = Table::default();
        let json = Format::WebSocket(Codec::Json, None);
        let (a, b) = (Outbound::new(1 << 20), Outbound::new(1 << 20));
        let waiting = [
            hub.join("lobby", 1, a.clone(), json).state,
            hub.join("lobby", 2, b.clone(), json).state,
        ];
        hub.set_ready("lobby", 5, 0);
        for state in waiting {
            let Readiness::Later(rx) = state else {
                panic!("a join to a starting room waits, got {state:?}")
            };
            assert_eq!(*rx.borrow(), RoomState::Ready);
            // The room let go of its channel once settled.
            assert!(rx.has_changed().is_err(), "the room still holds its waiters' channel");
        }
        assert!(matches!(
            hub.join("lobby", 3, a.clone(), json).state,
            Readiness::Now(RoomState::Ready)
        ));

        let Readiness::Later(rx) = hub.join("news", 1, a, json).state else {
            panic!("a new room starts")
        };
        hub.set_failed("news");
        assert_eq!(*rx.borrow(), RoomState::Failed);
        assert!(matches!(
            hub.join("news", 2, b, json).state,
            Readiness::Now(RoomState::Failed)
        ));
    }

    #[test]
    fn offered_events_in_order_go_straight_through_and_repeats_are_dropped() {
        let (hub, out) = live_room(5);
        for (seq, prev) in [(6, 5), (7, 6), (7, 6), (5, 4), (8, 7)] {
            assert_eq!(hub.offer(ev(seq, prev)), None);
        }
        assert_eq!(seqs(&out), [6, 7, 8]);
        assert_eq!(hub.ready_last_seq("lobby"), Some(8));
    }

    #[test]
    fn a_gap_holds_later_events_until_the_read_fills_it_in_order() {
        let (hub, out) = live_room(5);
        // 6 and 7 were lost on the way; 8 reveals the gap.
        assert_eq!(
            hub.offer(ev(8, 7)),
            Some(Fetch {
                after: 5,
                until: Some(8)
            })
        );
        // Events keep coming while the read runs: held, not delivered out of order.
        assert_eq!(hub.offer(ev(9, 8)), None);
        assert_eq!(hub.offer(ev(9, 8)), None);
        assert!(seqs(&out).is_empty());
        // The read finds 6 and 7 (and a repeat of 5, which is dropped).
        assert_eq!(
            hub.release("lobby", vec![stored(5, 4), stored(6, 5), stored(7, 6)]),
            None
        );
        assert_eq!(seqs(&out), [6, 7, 8, 9]);
        // Flowing again.
        assert_eq!(hub.offer(ev(10, 9)), None);
        assert_eq!(seqs(&out), [10]);
    }

    #[test]
    fn a_second_gap_among_held_events_asks_for_a_second_read() {
        let (hub, out) = live_room(1);
        assert!(hub.offer(ev(3, 2)).is_some());
        hub.offer(ev(4, 3));
        hub.offer(ev(7, 6));
        hub.offer(ev(8, 7));
        assert_eq!(
            hub.release("lobby", vec![stored(2, 1)]),
            Some(Fetch {
                after: 4,
                until: Some(7)
            })
        );
        assert_eq!(seqs(&out), [2, 3, 4]);
        hub.offer(ev(9, 8));
        assert_eq!(hub.release("lobby", vec![stored(5, 4), stored(6, 5)]), None);
        assert_eq!(seqs(&out), [5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_new_room_holds_live_events_until_its_last_seq_is_known() {
        let hub = Table::default();
        let out = Outbound::new(1 << 20);
        hub.join("lobby", 1, out.clone(), Format::WebSocket(Codec::Json, None));
        // Stored before the last seq was read (5) and after it.
        assert_eq!(hub.offer(ev(5, 4)), None);
        assert_eq!(hub.offer(ev(6, 5)), None);
        assert_eq!(hub.ready_last_seq("lobby"), None, "not ready yet");
        assert_eq!(hub.set_ready("lobby", 5, 0), None);
        assert_eq!(hub.ready_last_seq("lobby"), Some(6));
        assert_eq!(hub.activate("lobby", 1, &[], Some(4), |_| Bytes::new()), Some(6));
        assert_eq!(seqs(&out), [6], "the pending subscriber got what came after its floor");
    }

    #[test]
    fn a_reconnect_reads_to_the_end_and_a_reconnect_during_a_read_reads_again() {
        let (hub, out) = live_room(3);
        assert_eq!(hub.rescan("lobby", None), Some(Fetch { after: 3, until: None }));
        hub.offer(ev(6, 5));
        // Another reconnect while that read runs: no second read at once, one after it.
        assert_eq!(hub.rescan("lobby", None), None);
        assert_eq!(
            hub.release("lobby", vec![stored(4, 3), stored(5, 4)]),
            Some(Fetch { after: 6, until: None })
        );
        assert_eq!(seqs(&out), [4, 5, 6]);
        assert_eq!(hub.release("lobby", vec![stored(7, 6)]), None);
        assert_eq!(seqs(&out), [7]);
        assert_eq!(hub.rescan("elsewhere", None), None, "a room that is gone needs no read");
    }

    #[test]
    fn a_late_last_seq_for_a_ready_room_reads_the_gap_instead_of_skipping_it() {
        let (hub, out) = live_room(3);
        // A stale answer (the room was opened again) says 6: 4..6 were never delivered.
        assert_eq!(hub.set_ready("lobby", 6, 0), Some(Fetch { after: 3, until: None }));
        assert_eq!(
            hub.release("lobby", vec![stored(4, 3), stored(5, 4), stored(6, 5)]),
            None
        );
        assert_eq!(seqs(&out), [4, 5, 6]);
        assert_eq!(hub.set_ready("lobby", 6, 0), None, "nothing after what it has");
        assert_eq!(hub.ready_last_seq("lobby"), Some(6));
    }

    #[test]
    fn a_room_that_has_seen_the_stream_s_last_event_needs_no_read() {
        let (hub, out) = live_room(3);
        assert_eq!(hub.rescan("lobby", Some(3)), None);
        assert_eq!(
            hub.rescan("lobby", Some(2)),
            None,
            "the stream started over: nothing after 3 to read"
        );
        assert_eq!(hub.rescan("lobby", Some(4)), Some(Fetch { after: 3, until: None }));
        assert_eq!(hub.release("lobby", vec![stored(4, 3)]), None);
        assert_eq!(seqs(&out), [4]);
        assert_eq!(hub.rescan("lobby", Some(4)), None);
    }

    #[test]
    fn held_events_are_bounded_and_a_read_to_the_end_replaces_them() {
        let (hub, out) = live_room(0);
        assert!(hub.offer(ev(2, 1)).is_some());
        for seq in 3..=(MAX_HELD_EVENTS as u64 + 5) {
            hub.offer(ev(seq, seq - 1));
        }
        // The buffer was dropped at the bound (2..=10_002 with the event that overflowed
        // it): after the first read, the next one covers what was dropped...
        let n = MAX_HELD_EVENTS as u64 + 5;
        let cut = MAX_HELD_EVENTS as u64 + 3;
        let next = hub.release("lobby", vec![stored(1, 0)]);
        assert_eq!(
            next,
            Some(Fetch {
                after: 1,
                until: Some(cut)
            })
        );
        let dropped: Vec<StoredEvent> = (2..cut).map(|s| stored(s, s - 1)).collect();
        // ...and then, for anything dropped after the last held event, one to the end.
        assert_eq!(hub.release("lobby", dropped), Some(Fetch { after: n, until: None }));
        assert_eq!(hub.release("lobby", Vec::new()), None);
        assert_eq!(
            seqs(&out),
            (1..=n).collect::<Vec<_>>(),
            "none lost, none repeated, in order"
        );
    }

    fn ev_at(seq: u64, prev: u64, stored_us: u64) -> Arc<StoredEvent> {
        let mut e = Arc::unwrap_or_clone(ev(seq, prev));
        e.stored_us = stored_us;
        Arc::new(e)
    }

    #[test]
    fn a_recreated_stream_rewinds_the_room_and_tells_websocket_subscribers() {
        let (hub, out) = live_room(0);
        for seq in 1..=3 {
            assert_eq!(hub.offer(ev_at(seq, seq - 1, 100 + seq)), None);
        }
        // Seen again (stored no later than the last): dropped, no rewind.
        assert_eq!(hub.offer(ev_at(2, 1, 102)), None);
        assert_eq!(seqs(&out), [1, 2, 3]);
        // The new stream's 2nd event, stored later: rewound, and 1 is read first.
        assert_eq!(
            hub.offer(ev_at(2, 1, 200)),
            Some(Fetch {
                after: 0,
                until: Some(2)
            })
        );
        assert_eq!(drain(&out), [r#"{"t":"ack","room":"lobby","seq":0,"recovered":false}"#]);
        assert_eq!(hub.release("lobby", vec![Arc::unwrap_or_clone(ev_at(1, 0, 199))]), None);
        assert_eq!(seqs(&out), [1, 2]);
        assert_eq!(hub.offer(ev_at(3, 2, 201)), None);
        assert_eq!(seqs(&out), [3], "flowing again, with no second rewind");
    }

    #[test]
    fn a_subscriber_pending_during_a_rewind_gets_only_the_new_stream() {
        let hub = Table::default();
        let out = Outbound::new(1 << 20);
        hub.join("lobby", 1, out.clone(), Format::WebSocket(Codec::Json, None));
        hub.set_ready("lobby", 5, 105);
        assert_eq!(hub.offer(ev_at(1, 0, 200)), None, "rewound and delivered");
        // Its replay was read from the old stream's position: not used.
        let acked = hub.activate("lobby", 1, &[ev_at(5, 4, 105)], Some(4), |s| {
            Bytes::from(format!("__ack {s}"))
        });
        assert_eq!(acked, Some(1));
        let got = drain(&out);
        assert_eq!(got[0], r#"{"t":"ack","room":"lobby","seq":0,"recovered":false}"#);
        assert!(got[1].contains(r#""seq":1"#), "{got:?}");
        assert_eq!(got[2], "ack 1");
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn events_of_a_room_not_held_are_dropped() {
        let hub = Table::default();
        assert_eq!(hub.offer(ev(1, 0)), None);
        assert_eq!(hub.release("lobby", vec![stored(1, 0)]), None);
        assert_eq!(hub.rooms(), 0);
    }

    #[test]
    fn a_pending_buffer_is_bounded() {
        let hub = Table::default();
        let out = Outbound::new(1 << 30);
        hub.join("lobby", 1, out.clone(), Format::WebSocket(Codec::Json, None));
        for seq in 1..=(MAX_PENDING_EVENTS as u64 + 1) {
            hub.deliver(&ev(seq, seq - 1));
        }
        assert!(out.is_closing(), "a stalled replay ends as a slow consumer");
        assert_eq!(hub.activate("lobby", 1, &[], Some(0), |_| Bytes::new()), Some(0));
    }

    #[test]
    fn encodes_once_per_codec_and_lingers() {
        let hub = Table::default();
        let a = Outbound::new(1 << 20);
        let b = Outbound::new(1 << 20);
        hub.join("lobby", 1, a.clone(), Format::WebSocket(Codec::Json, None));
        hub.join("lobby", 2, b.clone(), Format::WebSocket(Codec::Json, None));
        hub.activate("lobby", 1, &[], Some(0), |_| Bytes::new());
        hub.activate("lobby", 2, &[], Some(0), |_| Bytes::new());
        assert_eq!(hub.deliver(&ev(1, 0)), 2);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.take(&mut x);
        b.take(&mut y);
        assert_eq!((x.len(), y.len()), (1, 1), "an empty ack is not queued");
        assert_eq!(x[0].bytes.as_ptr(), y[0].bytes.as_ptr(), "the same bytes are shared");
        assert_eq!(hub.leave("lobby", 1), None);
        let generation = hub.leave("lobby", 2).unwrap();
        hub.join("lobby", 3, a, Format::WebSocket(Codec::Json, None));
        assert!(
            !hub.remove_if_idle("lobby", generation),
            "reused before the linger ended"
        );
        let generation = hub.leave("lobby", 3).unwrap();
        assert!(hub.remove_if_idle("lobby", generation));
        assert_eq!(hub.rooms(), 0);
    }
}
