//! The gateway's side of presence: it reports its connections and room members to fanout.
//!
//! One task owns the local membership and publishes everything on
//! `herald.sys.gw.<gateway>` (see [`herald_proto::sys`]): numbered change batches as sessions
//! open, join, leave and close; a heartbeat every `--presence-heartbeat`; and a snapshot in
//! parts whenever fanout asks on `herald.sys.sync`. One publisher task keeps fanout's view in
//! order; the numbers let fanout notice a lost message and ask for a snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::sys::{Body, Change, Conn, GatewayMsg, Join, SyncRequest};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::sync::lock;
use crate::upstream::Upstream;

/// Changes published in one message at most.
const BATCH: usize = 512;
/// Bytes of connections and members in one snapshot part, as JSON: a part stays well below
/// NATS's default 1 MiB payload limit whatever the names (every string in it is bounded and
/// this counts each at its longest encoding).
const SNAPSHOT_PART_BYTES: usize = 256 * 1024;

/// Reports membership changes to fanout. Cheap to clone.
///
/// Callers apply their change to the shared membership at once (no queue of commands); the
/// task publishes the changes since its last batch. Those wait in a list of at most
/// [`MAX_PENDING`]: if NATS is too slow for them, the list is dropped and the batch numbers
/// skip one, which makes fanout ask for a snapshot (the membership itself is always whole).
#[derive(Clone)]
pub(crate) struct Tracker {
    state: Arc<Mutex<State>>,
    wake: Arc<tokio::sync::Notify>,
}

/// Changes waiting to be published, at most (a burst of connects is far below it).
const MAX_PENDING: usize = 100_000;

#[derive(Default)]
struct State {
    conns: HashMap<String, Local>,
    pending: Vec<Change>,
    /// Pending changes were dropped: skip a batch number so that fanout resyncs.
    overflowed: bool,
    /// Joins waiting until their change is handed to NATS.
    waiting: Vec<oneshot::Sender<()>>,
    /// The task has ended (the gateway is stopping): nobody waits.
    stopped: bool,
}

struct Task {
    upstream: Arc<Upstream>,
    subject: String,
    gw: String,
    epoch: u64,
    seq: u64,
    state: Arc<Mutex<State>>,
    wake: Arc<tokio::sync::Notify>,
}

/// One local connection: its user and its presence rooms (with the display name).
struct Local {
    user: String,
    rooms: HashMap<String, Option<String>>,
}

// === impl Tracker ===

impl Tracker {
    /// Starts the reporting task.
    pub(crate) fn start(upstream: Arc<Upstream>, gw: &str, heartbeat: Duration) -> Self {
        let subjects = upstream.subjects().clone();
        let tracker = Self {
            state: Arc::default(),
            wake: Arc::default(),
        };
        let task = Task {
            subject: subjects.sys_gateway(gw),
            gw: gw.to_owned(),
            epoch: rand::random::<u64>() >> 11,
            seq: 0,
            state: Arc::clone(&tracker.state),
            wake: Arc::clone(&tracker.wake),
            upstream,
        };
        tokio::spawn(task.run(subjects.sys_sync(), heartbeat));
        tracker
    }

    pub(crate) fn open(&self, conn: &str, user: &str) {
        self.change(Change::Open(Conn {
            conn: conn.to_owned(),
            user: user.to_owned(),
        }));
    }

    pub(crate) fn close(&self, conn: &str) {
        self.change(Change::Close { conn: conn.to_owned() });
    }

    /// Joins `room`'s presence; returns once the change is on its way to NATS, so a request
    /// sent afterwards on the same connection reaches fanout after it.
    pub(crate) async fn join(&self, room: &str, conn: &str, user: &str, name: Option<&str>) {
        let (done, wait) = oneshot::channel();
        let change = Change::Join(Join {
            room: room.to_owned(),
            conn: conn.to_owned(),
            user: user.to_owned(),
            name: name.map(str::to_owned),
        });
        {
            let mut state = lock(&self.state);
            if state.stopped {
                return;
            }
            state.waiting.push(done);
        }
        self.change(change);
        let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
    }

    pub(crate) fn leave(&self, room: &str, conn: &str) {
        self.change(Change::Leave {
            room: room.to_owned(),
            conn: conn.to_owned(),
        });
    }

    fn change(&self, change: Change) {
        let mut state = lock(&self.state);
        if !state.apply(&change) {
            return;
        }
        if state.pending.len() >= MAX_PENDING {
            state.pending = Vec::new();
            state.overflowed = true;
        } else if !state.overflowed {
            state.pending.push(change);
        }
        drop(state);
        self.wake.notify_one();
    }
}

// === impl State ===

impl State {
    /// Applies a change to the local membership; false if it changes nothing.
    fn apply(&mut self, change: &Change) -> bool {
        match change {
            Change::Open(c) => {
                self.conns.insert(
                    c.conn.clone(),
                    Local {
                        user: c.user.clone(),
                        rooms: HashMap::new(),
                    },
                );
                true
            }
            Change::Close { conn } => self.conns.remove(conn).is_some(),
            Change::Join(j) => match self.conns.get_mut(&j.conn) {
                Some(local) => local.rooms.insert(j.room.clone(), j.name.clone()) != Some(j.name.clone()),
                None => false,
            },
            Change::Leave { room, conn } => self
                .conns
                .get_mut(conn)
                .is_some_and(|local| local.rooms.remove(room).is_some()),
        }
    }
}

// === impl Task ===

impl Task {
    async fn run(mut self, sync_subject: String, heartbeat: Duration) {
        let mut sync = loop {
            match self.upstream.subscribe(sync_subject.clone()).await {
                Ok(sub) => break sub,
                Err(e) => {
                    warn!(error = %e, "Cannot subscribe to presence sync requests; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut beat = tokio::time::interval(heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Rare and periodic work first: under constant churn `wake` is ready at every
            // turn, and it must not starve fanout's sync requests (which would then pile up
            // unread, and leave fanout without this gateway's snapshot) or the heartbeat.
            tokio::select! {
                biased;
                Some(msg) = sync.next() => {
                    let req = serde_json::from_slice::<SyncRequest>(&msg.payload).unwrap_or_default();
                    if req.gw.as_ref().is_none_or(|gw| *gw == self.gw) {
                        self.snapshot().await;
                    }
                }
                _ = beat.tick() => {
                    // Every tracker is gone: the gateway has stopped.
                    if Arc::strong_count(&self.state) == 1 {
                        return;
                    }
                    self.flush().await;
                    self.publish(Body::Heartbeat { seq: self.seq }).await;
                }
                _ = self.wake.notified() => self.flush().await,
            }
        }
    }

    /// Publishes the pending changes in batches, then releases the joins that wait.
    async fn flush(&mut self) {
        let taken = Taken::from(&mut *lock(&self.state));
        self.publish_changes(taken).await;
    }

    async fn publish_changes(&mut self, taken: Taken) {
        if taken.overflowed {
            warn!("Presence changes came faster than NATS took them; fanout will resync");
            self.seq += 1;
        }
        let mut changes = taken.changes.into_iter().peekable();
        while changes.peek().is_some() {
            let batch: Vec<Change> = changes.by_ref().take(BATCH).collect();
            let first = self.seq + 1;
            self.seq += batch.len() as u64;
            self.publish(Body::Changes { first, changes: batch }).await;
        }
        for done in taken.waiting {
            let _ = done.send(());
        }
    }

    /// The whole membership, in parts, at the seq that includes every change before it.
    async fn snapshot(&mut self) {
        let (taken, conns, members) = {
            let mut state = lock(&self.state);
            let mut conns = Vec::with_capacity(state.conns.len());
            let mut members = Vec::new();
            for (conn, local) in &state.conns {
                conns.push(Conn {
                    conn: conn.clone(),
                    user: local.user.clone(),
                });
                for (room, name) in &local.rooms {
                    members.push(Join {
                        room: room.clone(),
                        conn: conn.clone(),
                        user: local.user.clone(),
                        name: name.clone(),
                    });
                }
            }
            (Taken::from(&mut *state), conns, members)
        };
        self.publish_changes(taken).await;
        let parts = snapshot_parts(conns, members);
        debug!(parts = parts.len(), "Presence snapshot sent");
        let count = parts.len() as u32;
        for (part, (conns, members)) in parts.into_iter().enumerate() {
            let body = Body::Snapshot {
                seq: self.seq,
                part: part as u32,
                parts: count,
                conns,
                members,
            };
            self.publish(body).await;
        }
    }

    async fn publish(&self, body: Body) {
        let msg = GatewayMsg {
            gw: self.gw.clone(),
            epoch: self.epoch,
            body,
        };
        let payload = Bytes::from(serde_json::to_vec(&msg).expect("serializable"));
        if let Err(e) = self.upstream.send(self.subject.clone(), payload).await {
            debug!(error = %e, "Presence message not sent");
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        state.stopped = true;
        state.waiting.clear();
    }
}

/// What the task takes from the shared state to publish.
struct Taken {
    changes: Vec<Change>,
    overflowed: bool,
    waiting: Vec<oneshot::Sender<()>>,
}

impl From<&mut State> for Taken {
    fn from(state: &mut State) -> Self {
        Self {
            changes: std::mem::take(&mut state.pending),
            overflowed: std::mem::take(&mut state.overflowed),
            waiting: std::mem::take(&mut state.waiting),
        }
    }
}

/// Splits a snapshot into parts of at most [`SNAPSHOT_PART_BYTES`] (one part at least).
fn snapshot_parts(conns: Vec<Conn>, members: Vec<Join>) -> Vec<(Vec<Conn>, Vec<Join>)> {
    // JSON escapes `"` and `\` as two bytes; control characters never get this far.
    let json_len = |s: &str| 2 * s.len() + 3;
    let mut parts = vec![(Vec::new(), Vec::new())];
    let mut bytes = 0;
    let mut room_for = |n: usize, parts: &mut Vec<(Vec<Conn>, Vec<Join>)>| {
        if bytes > 0 && bytes + n > SNAPSHOT_PART_BYTES {
            parts.push((Vec::new(), Vec::new()));
            bytes = 0;
        }
        bytes += n;
    };
    for c in conns {
        room_for(32 + json_len(&c.conn) + json_len(&c.user), &mut parts);
        parts.last_mut().expect("one part").0.push(c);
    }
    for m in members {
        let name = m.name.as_deref().map_or(0, json_len);
        room_for(
            48 + json_len(&m.room) + json_len(&m.conn) + json_len(&m.user) + name,
            &mut parts,
        );
        parts.last_mut().expect("one part").1.push(m);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracker_queue_is_bounded_and_an_overflow_forces_a_resync() {
        let tracker = Tracker {
            state: Arc::default(),
            wake: Arc::default(),
        };
        for i in 0..MAX_PENDING + 10 {
            tracker.open(&format!("c{i}"), "u");
        }
        let state = lock(&tracker.state);
        assert!(state.overflowed, "the overflow is remembered");
        assert!(state.pending.len() < MAX_PENDING, "{} pending", state.pending.len());
        assert_eq!(state.conns.len(), MAX_PENDING + 10, "the membership itself is whole");
        drop(state);
        let taken = Taken::from(&mut *lock(&tracker.state));
        assert!(taken.overflowed);
        tracker.close("c0");
        assert_eq!(
            lock(&tracker.state).pending.len(),
            1,
            "after a flush, changes queue again"
        );
    }

    #[test]
    fn snapshot_parts_stay_under_the_nats_payload_limit_whatever_the_names() {
        let long = |c: char, n: usize| std::iter::repeat_n(c, n).collect::<String>();
        let conns: Vec<Conn> = (0..5_000)
            .map(|i| Conn {
                conn: format!("gw-{i:08}"),
                user: long('u', herald_proto::text::MAX_USER_LEN),
            })
            .collect();
        let members: Vec<Join> = (0..20_000)
            .map(|i| Join {
                room: long('r', herald_proto::room::MAX_ROOM_LEN),
                conn: format!("gw-{i:08}"),
                user: long('u', herald_proto::text::MAX_USER_LEN),
                // The longest encodings: 4-byte characters and escaped quotes.
                name: Some(if i % 2 == 0 { long('😀', 64) } else { long('"', 64) }),
            })
            .collect();
        let parts = snapshot_parts(conns, members);
        let (mut c, mut m) = (0, 0);
        for (conns, members) in &parts {
            c += conns.len();
            m += members.len();
            let msg = GatewayMsg {
                gw: long('g', 64),
                epoch: u64::MAX,
                body: Body::Snapshot {
                    seq: u64::MAX,
                    part: u32::MAX,
                    parts: u32::MAX,
                    conns: conns.clone(),
                    members: members.clone(),
                },
            };
            let len = serde_json::to_vec(&msg).unwrap().len();
            assert!(len < 1 << 20, "a part of {len} bytes");
        }
        assert_eq!((c, m), (5_000, 20_000), "nothing lost");
        assert!(parts.len() > 1);
        assert_eq!(
            snapshot_parts(Vec::new(), Vec::new()).len(),
            1,
            "an empty snapshot is one part"
        );
    }
}
