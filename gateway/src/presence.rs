//! The gateway's side of presence: it reports its connections and room members to fanout.
//!
//! One task owns the local membership and publishes everything on
//! `herald.sys.gw.<gateway>` (see [`herald_proto::sys`]): numbered change batches as sessions
//! open, join, leave and close; a heartbeat every `--presence-heartbeat`; and a snapshot in
//! parts whenever fanout asks on `herald.sys.sync`. One publisher task keeps fanout's view in
//! order; the numbers let fanout notice a lost message and ask for a snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::frame::{Id, Presence, ServerFrame, Status};
use herald_proto::subject::Subjects;
use herald_proto::sys::{Body, Change, Conn, GatewayMsg, Join, StatusReply, StatusRequest, SyncRequest};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::auth::Identity;
use crate::feeds::{encode_for, FeedSet, Kind};
use crate::hub::Format;
use crate::outbound::Outbound;
use crate::server::Shared;
use crate::sync::lock;
use crate::upstream::Upstream;

/// Changes published in one message at most.
const BATCH: usize = 512;
/// Members per snapshot part (a part stays far below NATS's default 1 MiB payload limit).
const SNAPSHOT_PART: usize = 2000;

/// Longest wait for fanout's answer to a snapshot or status request.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(2);

/// The room's presence snapshot from fanout, if it answers in time.
pub async fn snapshot(upstream: &Upstream, room: &str) -> Option<Presence> {
    let subject = upstream.subjects().api_presence(room);
    let reply = tokio::time::timeout(FANOUT_TIMEOUT, upstream.client().request(subject, Bytes::new())).await;
    serde_json::from_slice::<Presence>(&reply.ok()?.ok()?.payload).ok()
}

/// The users' current status from fanout, in the order asked, if it answers in time.
pub async fn statuses(upstream: &Upstream, users: &[String]) -> Option<Vec<Status>> {
    let request = serde_json::to_vec(&StatusRequest { users: users.to_vec() }).expect("serializable");
    let subject = upstream.subjects().api_status();
    let reply = tokio::time::timeout(FANOUT_TIMEOUT, upstream.client().request(subject, request.into())).await;
    Some(
        serde_json::from_slice::<StatusReply>(&reply.ok()?.ok()?.payload)
            .ok()?
            .users,
    )
}

/// Subscribes `conn` to the room's presence diffs and queues, before them, the room's
/// snapshot (with `id`). Errs with the reason if either is unavailable (the diffs still
/// come if only the snapshot failed).
pub async fn follow(
    shared: &Shared,
    conn: u64,
    out: &Arc<Outbound>,
    format: Format,
    room: &str,
    id: Option<Id>,
) -> Result<(), &'static str> {
    let subject = shared.upstream.subjects().presence(room);
    if !shared.feeds.add(&subject, Kind::Presence, conn, out, format).await {
        return Err("presence updates are unavailable");
    }
    let first = snapshot(&shared.upstream, room).await.map(|mut p| {
        p.id = id;
        encode_for(format, &ServerFrame::Presence(p))
    });
    let answered = first.is_some();
    shared.feeds.release(&subject, conn, first);
    answered.then_some(()).ok_or("the presence service did not answer")
}

/// Reports membership changes to fanout. Cheap to clone.
#[derive(Clone)]
pub struct Tracker {
    tx: mpsc::UnboundedSender<Cmd>,
}

enum Cmd {
    Change(Change),
    /// A change whose sender waits until it is handed to NATS.
    Sync(Change, oneshot::Sender<()>),
}

struct Task {
    client: Client,
    subject: String,
    gw: String,
    epoch: u64,
    seq: u64,
    conns: HashMap<String, Local>,
}

/// One local connection: its user and its presence rooms (with the display name).
struct Local {
    user: String,
    rooms: HashMap<String, Option<String>>,
}

// === impl Tracker ===

impl Tracker {
    /// Starts the reporting task.
    pub fn start(client: Client, subjects: &Subjects, gw: &str, heartbeat: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            subject: subjects.sys_gateway(gw),
            gw: gw.to_owned(),
            epoch: rand::random::<u64>() >> 11,
            seq: 0,
            conns: HashMap::new(),
            client,
        };
        tokio::spawn(task.run(rx, subjects.sys_sync(), heartbeat));
        Self { tx }
    }

    pub fn open(&self, conn: &str, user: &str) {
        self.send(Change::Open(Conn {
            conn: conn.to_owned(),
            user: user.to_owned(),
        }));
    }

    pub fn close(&self, conn: &str) {
        self.send(Change::Close { conn: conn.to_owned() });
    }

    /// Joins `room`'s presence; returns once the change is on its way to NATS, so a request
    /// sent afterwards on the same connection reaches fanout after it.
    pub async fn join(&self, room: &str, conn: &str, user: &str, name: Option<&str>) {
        let (done, wait) = oneshot::channel();
        let change = Change::Join(Join {
            room: room.to_owned(),
            conn: conn.to_owned(),
            user: user.to_owned(),
            name: name.map(str::to_owned),
        });
        if self.tx.send(Cmd::Sync(change, done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        }
    }

    pub fn leave(&self, room: &str, conn: &str) {
        self.send(Change::Leave {
            room: room.to_owned(),
            conn: conn.to_owned(),
        });
    }

    fn send(&self, change: Change) {
        let _ = self.tx.send(Cmd::Change(change));
    }
}

// === impl Task ===

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>, sync_subject: String, heartbeat: Duration) {
        let mut sync = loop {
            match self.client.subscribe(sync_subject.clone()).await {
                Ok(sub) => break sub,
                Err(e) => {
                    warn!(error = %e, "Cannot subscribe to presence sync requests; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut beat = tokio::time::interval(heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        loop {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    let changes = batch
                        .drain(..)
                        .map(|cmd| match cmd {
                            Cmd::Change(c) => c,
                            Cmd::Sync(c, done) => {
                                waiting.push(done);
                                c
                            }
                        })
                        .filter(|c| self.apply(c))
                        .collect::<Vec<_>>();
                    if !changes.is_empty() {
                        let first = self.seq + 1;
                        self.seq += changes.len() as u64;
                        self.publish(Body::Changes { first, changes }).await;
                    }
                    for done in waiting.drain(..) {
                        let _ = done.send(());
                    }
                }
                Some(msg) = sync.next() => {
                    let req = serde_json::from_slice::<SyncRequest>(&msg.payload).unwrap_or_default();
                    if req.gw.as_ref().is_none_or(|gw| *gw == self.gw) {
                        self.snapshot().await;
                    }
                }
                _ = beat.tick() => self.publish(Body::Heartbeat { seq: self.seq }).await,
            }
        }
    }

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

    async fn snapshot(&self) {
        let mut conns = Vec::with_capacity(self.conns.len());
        let mut members = Vec::new();
        for (conn, local) in &self.conns {
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
        let parts = conns
            .len()
            .div_ceil(SNAPSHOT_PART)
            .max(members.len().div_ceil(SNAPSHOT_PART))
            .max(1);
        debug!(
            conns = conns.len(),
            members = members.len(),
            parts,
            "Presence snapshot sent"
        );
        let (mut conns, mut members) = (conns.into_iter(), members.into_iter());
        for part in 0..parts {
            let body = Body::Snapshot {
                seq: self.seq,
                part: part as u32,
                parts: parts as u32,
                conns: conns.by_ref().take(SNAPSHOT_PART).collect(),
                members: members.by_ref().take(SNAPSHOT_PART).collect(),
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
        if let Err(e) = self.client.publish(self.subject.clone(), payload).await {
            debug!(error = %e, "Presence message not sent");
        }
    }
}

/// The presence of a connection on an HTTP stream (SSE): online while it lives, a member of
/// `rooms`, following `watched` users; snapshots, statuses and diffs go to `out` as bare JSON.
/// Dropping it (also half-way through [`Membership::start`]) closes the connection in fanout
/// and leaves its feeds.
pub struct Membership {
    shared: Arc<Shared>,
    conn: String,
    feeds: FeedSet,
}

impl Membership {
    /// Reports the connection and its rooms, then queues each room's snapshot and each
    /// watched user's status, followed by every diff since.
    pub async fn start(
        shared: &Arc<Shared>,
        conn_id: u64,
        conn: &str,
        who: &Identity,
        out: &Arc<Outbound>,
        rooms: Vec<String>,
        watched: Vec<String>,
    ) -> Self {
        let tracker = &shared.tracker;
        tracker.open(conn, &who.user);
        let mut this = Self {
            shared: Arc::clone(shared),
            conn: conn.to_owned(),
            feeds: FeedSet::new(&shared.feeds, conn_id),
        };
        fail::fail_point!("membership.join");
        for room in &rooms {
            tracker.join(room, conn, &who.user, who.name.as_deref()).await;
        }
        let subjects = shared.upstream.subjects();
        for room in &rooms {
            let subject = subjects.presence(room);
            fail::fail_point!("membership.feed");
            if this.feeds.add(subject.clone(), Kind::Presence, out, Format::Bare).await {
                fail::fail_point!("membership.snapshot");
                let first = snapshot(&shared.upstream, room)
                    .await
                    .map(|p| encode_for(Format::Bare, &ServerFrame::Presence(p)));
                this.feeds.release(&subject, first);
            }
        }
        for user in &watched {
            this.feeds
                .add(subjects.status(user), Kind::Status, out, Format::Bare)
                .await;
        }
        if !watched.is_empty() {
            fail::fail_point!("membership.statuses");
            for status in statuses(&shared.upstream, &watched).await.unwrap_or_default() {
                out.push_frame(encode_for(Format::Bare, &ServerFrame::Status(status)));
            }
            for user in &watched {
                this.feeds.release(&subjects.status(user), None);
            }
        }
        this
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.shared.tracker.close(&self.conn);
    }
}

/// Polling clients' presence, keyed by their user and `sid`: a session is online and a member of its
/// presence rooms from its first poll until no poll came for its time to live.
#[derive(Default)]
pub struct PollSessions {
    inner: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    by_conn: HashMap<String, PollSession>,
    per_user: HashMap<String, usize>,
}

struct PollSession {
    user: String,
    rooms: HashSet<String>,
    expires: Instant,
}

/// Why a new polling session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefused {
    /// The user holds `--max-poll-sessions-per-user` already.
    UserFull,
    /// The gateway holds `--max-poll-sessions` already.
    Full,
}

/// The caps on polling sessions.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub per_user: usize,
    pub total: usize,
}

impl PollSessions {
    /// Records a poll of session `conn` (a digest of the user and the sid): opens it if new
    /// and within `limits`, joins and leaves rooms so that its presence rooms are `rooms`, and
    /// keeps it alive for `ttl`.
    pub async fn touch(
        &self,
        tracker: &Tracker,
        conn: &str,
        who: &Identity,
        rooms: &[String],
        ttl: Duration,
        limits: SessionLimits,
    ) -> Result<(), SessionRefused> {
        let wanted: HashSet<String> = rooms.iter().cloned().collect();
        let (open, join, leave) = {
            let mut inner = lock(&self.inner);
            let Sessions { by_conn, per_user } = &mut *inner;
            let expires = Instant::now() + ttl;
            match by_conn.get_mut(conn) {
                Some(s) => {
                    s.expires = s.expires.max(expires);
                    let join: Vec<String> = wanted.difference(&s.rooms).cloned().collect();
                    let leave: Vec<String> = s.rooms.difference(&wanted).cloned().collect();
                    s.rooms = wanted;
                    (false, join, leave)
                }
                None => {
                    if by_conn.len() >= limits.total {
                        return Err(SessionRefused::Full);
                    }
                    let held = per_user.entry(who.user.clone()).or_default();
                    if *held >= limits.per_user {
                        return Err(SessionRefused::UserFull);
                    }
                    *held += 1;
                    let join = wanted.iter().cloned().collect();
                    by_conn.insert(
                        conn.to_owned(),
                        PollSession {
                            user: who.user.clone(),
                            rooms: wanted,
                            expires,
                        },
                    );
                    (true, join, Vec::new())
                }
            }
        };
        if open {
            tracker.open(conn, &who.user);
        }
        for room in &leave {
            tracker.leave(room, conn);
        }
        for room in &join {
            tracker.join(room, conn, &who.user, who.name.as_deref()).await;
        }
        Ok(())
    }

    /// Keeps session `conn` alive for `ttl` from now (a long-poll that just ended).
    pub fn keep(&self, conn: &str, ttl: Duration) {
        if let Some(s) = lock(&self.inner).by_conn.get_mut(conn) {
            s.expires = Instant::now() + ttl;
        }
    }

    /// Closes the sessions whose time to live has passed.
    pub fn sweep(&self, tracker: &Tracker) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let Sessions { by_conn, per_user } = &mut *inner;
        by_conn.retain(|conn, s| {
            let alive = s.expires > now;
            if !alive {
                tracker.close(conn);
                if let Some(held) = per_user.get_mut(&s.user) {
                    *held -= 1;
                    if *held == 0 {
                        per_user.remove(&s.user);
                    }
                }
            }
            alive
        });
    }
}
