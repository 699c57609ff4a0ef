//! The room table: rooms → local subscribers, and fan-out of stored events.
//!
//! Rooms are sharded by name hash so events of different rooms don't contend. Each event is
//! encoded at most once per codec and the same `Bytes` go to every subscriber's queue.
//! A subscriber starts `Pending` (live events are buffered while its replay is fetched) and
//! turns `Live` in [`Table::activate`], which splices replay and buffer without a duplicate or
//! a reorder: a subscriber only ever receives seqs above the last one it received.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use herald_proto::Codec;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::outbound::{event_frame, Content, Format, Item, Outbound, Pushed};
use crate::sync::lock;
use crate::upstream::{Rooms, StoredEvent};

const SHARDS: usize = 64;
/// Live events buffered for one subscriber while its replay is fetched, at most. A room that
/// outruns a stalled replay by this much closes the subscriber as a slow consumer (4008); it
/// resumes with `since` and loses nothing still in history.
const MAX_PENDING_EVENTS: usize = 10_000;

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
    pub state: watch::Receiver<RoomState>,
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
    state: watch::Sender<RoomState>,
    pump: Option<AbortHandle>,
    /// Bumped on every join, so a linger timer knows whether the room was reused.
    generation: u64,
}

struct Sub {
    out: Arc<Outbound>,
    format: Format,
    mode: Mode,
    delivered: u64,
}

enum Mode {
    Pending(Vec<Arc<StoredEvent>>),
    Live,
}

/// An event's frames, encoded on first use per format.
struct Frames<'e> {
    ev: &'e StoredEvent,
    slots: [Option<Bytes>; 3],
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
            state: watch::channel(RoomState::Starting).0,
            pump: None,
            generation: 0,
        });
        r.generation += 1;
        let sub = Sub {
            out,
            format,
            mode: Mode::Pending(Vec::new()),
            delivered: 0,
        };
        if r.subs.insert(conn, sub).is_none() {
            crate::metrics::room_subscriptions(1.0);
        }
        Joined {
            new_room,
            state: r.state.subscribe(),
        }
    }

    /// Turns a pending subscriber live: queues `replay` (events above `floor`), then the live
    /// events buffered meanwhile that are newer, then the frame `ack(seq)` makes from the last
    /// seq delivered. Returns that seq, or `None` if the subscriber is gone.
    pub fn activate(
        &self,
        room: &str,
        conn: u64,
        replay: &[Arc<StoredEvent>],
        floor: u64,
        ack: impl FnOnce(u64) -> Bytes,
    ) -> Option<u64> {
        let mut shard = self.shard(room);
        let sub = shard.get_mut(room)?.subs.get_mut(&conn)?;
        sub.delivered = floor;
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
            sub.out.push_frame(ack);
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
            if let Some(pump) = shard.remove(room).and_then(|r| r.pump) {
                pump.abort();
            }
        }
        idle
    }

    /// Hands a stored event to every subscriber of its room; returns how many got it.
    pub fn deliver(&self, ev: &Arc<StoredEvent>) -> usize {
        let mut shard = self.shard(&ev.room);
        let Some(r) = shard.get_mut(&*ev.room) else {
            return 0;
        };
        r.last_seq = r.last_seq.max(ev.seq);
        let mut frames = Frames {
            ev,
            slots: [None, None, None],
        };
        let mut n = 0;
        for sub in r.subs.values_mut() {
            match &mut sub.mode {
                Mode::Pending(buf) if buf.len() >= MAX_PENDING_EVENTS => {
                    *buf = Vec::new();
                    sub.out.close(Some(herald_proto::CloseCode::SLOW_CONSUMER));
                }
                Mode::Pending(buf) => buf.push(Arc::clone(ev)),
                Mode::Live if ev.seq > sub.delivered => {
                    sub.delivered = ev.seq;
                    let bytes = frames.get(sub.format);
                    if sub.out.push(item(bytes, ev, sub.format, ev.stored_us)) == Pushed::Queued {
                        n += 1;
                    }
                }
                Mode::Live => {}
            }
        }
        n
    }

    /// Rooms with at least one local subscriber or lingering.
    pub fn rooms(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

// The pumps upstream runs report into the table.
impl Rooms for Table {
    /// Records the upstream task of a room, so that removing the room stops it.
    fn set_pump(&self, room: &str, pump: AbortHandle) {
        match self.shard(room).get_mut(room) {
            Some(r) => r.pump = Some(pump),
            None => pump.abort(),
        }
    }

    /// Marks a room's upstream ready, at the room's last stored seq.
    fn set_ready(&self, room: &str, last_seq: u64) {
        if let Some(r) = self.shard(room).get_mut(room) {
            r.last_seq = r.last_seq.max(last_seq);
            r.state.send_replace(RoomState::Ready);
        }
    }

    /// Marks a room's upstream failed; pending subscribers give up.
    fn set_failed(&self, room: &str) {
        if let Some(r) = self.shard(room).get_mut(room) {
            r.state.send_replace(RoomState::Failed);
        }
    }

    /// The last seq the hub has seen in a room.
    fn last_seq(&self, room: &str) -> Option<u64> {
        self.shard(room).get(room).map(|r| r.last_seq)
    }

    fn deliver(&self, ev: &Arc<StoredEvent>) -> usize {
        Table::deliver(self, ev)
    }
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
            Format::WebSocket(Codec::Json) => 0,
            Format::WebSocket(Codec::MsgPack) => 1,
            Format::Bare => 2,
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
        let joined = hub.join("lobby", 1, out.clone(), Format::WebSocket(Codec::Json));
        assert!(joined.new_room);
        hub.set_ready("lobby", 5);
        // Live events arrive while the replay is being fetched.
        hub.deliver(&ev(7, 6));
        hub.deliver(&ev(8, 7));
        assert!(drain(&out).is_empty());
        let seq = hub.activate("lobby", 1, &[ev(6, 5), ev(7, 6)], 5, |s| {
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

    #[test]
    fn a_pending_buffer_is_bounded() {
        let hub = Table::default();
        let out = Outbound::new(1 << 30);
        hub.join("lobby", 1, out.clone(), Format::WebSocket(Codec::Json));
        for seq in 1..=(MAX_PENDING_EVENTS as u64 + 1) {
            hub.deliver(&ev(seq, seq - 1));
        }
        assert!(out.is_closing(), "a stalled replay ends as a slow consumer");
        assert_eq!(hub.activate("lobby", 1, &[], 0, |_| Bytes::new()), Some(0));
    }

    #[test]
    fn encodes_once_per_codec_and_lingers() {
        let hub = Table::default();
        let a = Outbound::new(1 << 20);
        let b = Outbound::new(1 << 20);
        hub.join("lobby", 1, a.clone(), Format::WebSocket(Codec::Json));
        hub.join("lobby", 2, b.clone(), Format::WebSocket(Codec::Json));
        hub.activate("lobby", 1, &[], 0, |_| Bytes::new());
        hub.activate("lobby", 2, &[], 0, |_| Bytes::new());
        assert_eq!(hub.deliver(&ev(1, 0)), 2);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.take(&mut x);
        b.take(&mut y);
        assert_eq!((x.len(), y.len()), (1, 1), "an empty ack is not queued");
        assert_eq!(x[0].bytes.as_ptr(), y[0].bytes.as_ptr(), "the same bytes are shared");
        assert_eq!(hub.leave("lobby", 1), None);
        let generation = hub.leave("lobby", 2).unwrap();
        hub.join("lobby", 3, a, Format::WebSocket(Codec::Json));
        assert!(
            !hub.remove_if_idle("lobby", generation),
            "reused before the linger ended"
        );
        let generation = hub.leave("lobby", 3).unwrap();
        assert!(hub.remove_if_idle("lobby", generation));
        assert_eq!(hub.rooms(), 0);
    }
}
