//! The gateway's side of presence: it reports its connections and room members to fanout.
//!
//! One task owns the local membership and publishes everything on
//! `herald.sys.gw.<gateway>` (see [`herald_proto::sys`]): numbered change batches as sessions
//! open, join, leave and close; a heartbeat every `--presence-heartbeat`; and a snapshot in
//! parts whenever fanout asks on `herald.sys.sync`. One publisher task keeps fanout's view in
//! order; the numbers let fanout notice a lost message and ask for a snapshot.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::subject::Subjects;
use herald_proto::sys::{Body, Change, Conn, GatewayMsg, Join, SyncRequest};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// Changes published in one message at most.
const BATCH: usize = 512;
/// Members per snapshot part (a part stays far below NATS's default 1 MiB payload limit).
const SNAPSHOT_PART: usize = 2000;

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
