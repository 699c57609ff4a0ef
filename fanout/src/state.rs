//! Presence state: every gateway's connections and room members, rooms with their members
//! (one per user), and users with their connection counts. Pure: time comes in as an
//! argument, and what must be published comes out as [`Output`]s.
//!
//! Every fanout instance holds the same state (all receive every gateway message); the
//! caller publishes only the outputs of the partitions it leads.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_proto::frame::{Member, Presence, Status};
use herald_proto::sys::{Body, Change, Conn, GatewayMsg, Join};
use tracing::warn;

/// How often a gateway that is out of step is asked again for its snapshot.
const RESYNC_EVERY: Duration = Duration::from_secs(1);
/// Most parts of one gateway snapshot (a gateway's parts hold 256 KiB each: this is far
/// more than any gateway's membership), and most connections and members in it. A message
/// past either is not a gateway's and would only grow the assembly.
const MAX_SNAPSHOT_PARTS: u32 = 100_000;
const MAX_SNAPSHOT_ITEMS: usize = 20_000_000;

#[derive(Debug, Clone)]
pub struct Settings {
    /// A user whose last connection in a room (or anywhere) closes stays for this long.
    pub leave_delay: Duration,
    /// Rooms with more members than this get counts only (a namespace may set its own).
    pub large_room: usize,
    /// The rooms' namespaces (`presence_counts_above`).
    pub namespaces: std::sync::Arc<herald_service::namespaces::Namespaces>,
    /// A gateway silent this long has its members expired.
    pub gateway_timeout: Duration,
}

impl Settings {
    /// Members above which `room` gets counts only: its namespace's
    /// `presence_counts_above`, or `--large-room`.
    pub fn large_room_of(&self, room: &str) -> usize {
        self.namespaces
            .of(room)
            .presence_counts_above
            .map_or(self.large_room, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Something to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A coalesced diff on `herald.presence.<room>`.
    Presence(Presence),
    /// `herald.status.<user>`.
    Status(Status),
    /// `herald.lifecycle.<room>`: `true` when occupied, `false` when vacated.
    Lifecycle { room: String, occupied: bool },
    /// Ask one gateway for its snapshot (`herald.sys.sync`).
    Sync { gw: String },
}

/// Counters the caller turns into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub gateways: usize,
    pub rooms: usize,
    pub members: usize,
    pub conns: usize,
    pub users: usize,
}

pub struct State {
    settings: Settings,
    gateways: HashMap<String, Gateway>,
    rooms: HashMap<String, Room>,
    users: HashMap<String, User>,
    /// Pending leaves and offlines by deadline.
    deadlines: BTreeMap<Instant, Vec<Deadline>>,
    /// Rooms with unpublished changes.
    dirty: HashSet<String>,
    /// Rooms whose members or connection counts changed since [`State::take_touched`].
    touched: HashSet<String>,
    outputs: Vec<Output>,
    /// When every gateway was last asked for a snapshot at once.
    broadcast_at: Option<Instant>,
    /// Time from request to applied snapshot, per snapshot applied; drained by the caller.
    pub sync_durations: Vec<Duration>,
    /// Gateways expired for silence.
    pub expired: u64,
}

struct Gateway {
    epoch: u64,
    seq: u64,
    /// Whether `conns` follows the gateway's numbered changes.
    synced: bool,
    last_heard: Instant,
    last_sync: Option<Instant>,
    assembly: Option<Assembly>,
    conns: HashMap<String, GwConn>,
}

struct GwConn {
    user: String,
    rooms: HashMap<String, Option<String>>,
}

struct Assembly {
    epoch: u64,
    seq: u64,
    parts: u32,
    next: u32,
    conns: Vec<Conn>,
    members: Vec<Join>,
}

impl Gateway {
    /// Adds one part of a snapshot (`epoch`, `seq`) to the one being assembled; the whole
    /// snapshot once its last part arrived. A part out of order, of another snapshot, or
    /// past the size any gateway holds drops the assembly.
    fn assemble(
        &mut self,
        gw: &str,
        (epoch, seq): (u64, u64),
        (part, parts): (u32, u32),
        conns: Vec<Conn>,
        members: Vec<Join>,
    ) -> Option<Assembly> {
        if parts == 0 || parts > MAX_SNAPSHOT_PARTS || part >= parts {
            self.assembly = None;
            return None;
        }
        let fresh = self.assembly.as_ref().is_none_or(|a| a.epoch != epoch || a.seq != seq);
        if fresh && part != 0 {
            return None;
        }
        if fresh {
            self.assembly = Some(Assembly {
                epoch,
                seq,
                parts,
                next: 0,
                conns: Vec::new(),
                members: Vec::new(),
            });
        }
        let a = self.assembly.as_mut().expect("assembly in progress");
        if part != a.next || a.parts != parts {
            self.assembly = None;
            return None;
        }
        if a.conns.len() + a.members.len() + conns.len() + members.len() > MAX_SNAPSHOT_ITEMS {
            warn!(gw = %gw, "A snapshot larger than any gateway holds; dropped");
            self.assembly = None;
            return None;
        }
        a.next += 1;
        a.conns.extend(conns.into_iter().filter(Conn::is_valid));
        a.members.extend(members.into_iter().filter(Join::is_valid));
        if a.next == a.parts {
            self.assembly.take()
        } else {
            None
        }
    }
}

#[derive(Default)]
struct Room {
    users: BTreeMap<String, RoomUser>,
    conns: usize,
    /// Users who joined since the last published diff.
    joined: BTreeSet<String>,
    /// Users who left since the last published diff, as they were.
    left: BTreeMap<String, Member>,
    published_count: usize,
}

struct RoomUser {
    name: Option<String>,
    /// The connection shown in `member.conn` once all have closed.
    last_conn: String,
    /// (gateway, conn)
    conns: BTreeSet<(Arc<str>, String)>,
    leaving: Option<Instant>,
}

#[derive(Default)]
struct User {
    conns: usize,
    offline_at: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Deadline {
    Leave { room: String, user: String },
    Offline { user: String },
}

// === impl State ===

impl State {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            gateways: HashMap::new(),
            rooms: HashMap::new(),
            users: HashMap::new(),
            deadlines: BTreeMap::new(),
            dirty: HashSet::new(),
            touched: HashSet::new(),
            outputs: Vec::new(),
            broadcast_at: None,
            sync_durations: Vec::new(),
            expired: 0,
        }
    }

    /// Notes that every gateway was just asked for its snapshot.
    pub fn requested_all(&mut self, now: Instant) {
        self.broadcast_at = Some(now);
    }

    /// Notes that `gw` was heard from at `at` (its messages may still wait in the queue).
    pub fn heard(&mut self, gw: &str, at: Instant) {
        if let Some(g) = self.gateways.get_mut(gw) {
            g.last_heard = g.last_heard.max(at);
        }
    }

    /// Applies one message from a gateway.
    pub fn on_gateway(&mut self, msg: GatewayMsg, now: Instant) {
        let GatewayMsg { gw, epoch, body } = msg;
        let g = self.gateways.entry(gw.clone()).or_insert_with(|| Gateway {
            epoch,
            seq: 0,
            synced: false,
            last_heard: now,
            last_sync: None,
            assembly: None,
            conns: HashMap::new(),
        });
        g.last_heard = now;
        let in_step = g.synced && g.epoch == epoch;
        match body {
            Body::Changes { first, changes } if in_step => {
                // Numbers start at 1; a batch that is empty or ends past u64::MAX is not a
                // gateway's.
                let n = changes.len() as u64;
                let Some(last) = (first > 0 && n > 0).then(|| first.checked_add(n - 1)).flatten() else {
                    return;
                };
                if first > g.seq.saturating_add(1) {
                    g.synced = false;
                    self.request_sync(&gw, now);
                } else if last > g.seq {
                    let skip = (g.seq + 1 - first) as usize;
                    g.seq = last;
                    let gw: Arc<str> = Arc::from(gw.as_str());
                    for change in changes.into_iter().skip(skip).filter(Change::is_valid) {
                        self.apply(&gw, change, now);
                    }
                }
            }
            Body::Heartbeat { seq } if in_step => {
                if seq != g.seq {
                    g.synced = false;
                    self.request_sync(&gw, now);
                }
            }
            Body::Changes { .. } | Body::Heartbeat { .. } => self.request_sync(&gw, now),
            Body::Snapshot {
                seq,
                part,
                parts,
                conns,
                members,
            } => {
                if let Some(whole) = g.assemble(&gw, (epoch, seq), (part, parts), conns, members) {
                    self.replace(&gw, whole, now);
                }
            }
        }
    }

    /// Replaces a gateway's membership with a complete snapshot.
    fn replace(&mut self, gw: &str, a: Assembly, now: Instant) {
        let key: Arc<str> = Arc::from(gw);
        let mut wanted: HashMap<String, GwConn> = a
            .conns
            .into_iter()
            .map(|c| {
                let conn = GwConn {
                    user: c.user,
                    rooms: HashMap::new(),
                };
                (c.conn, conn)
            })
            .collect();
        for j in a.members {
            if let Some(c) = wanted.get_mut(&j.conn) {
                c.rooms.insert(j.room, j.name);
            }
        }
        let g = self.gateways.get_mut(gw).expect("known gateway");
        if let Some(asked) = g.last_sync.or(self.broadcast_at) {
            self.sync_durations.push(now.saturating_duration_since(asked));
        }
        g.last_sync = None;
        (g.epoch, g.seq, g.synced) = (a.epoch, a.seq, true);
        let old = &g.conns;
        // Joins first, then leaves: a member that moved between connections never flickers.
        let mut changes = Vec::new();
        let mut closes = Vec::new();
        for (conn, want) in &wanted {
            match old.get(conn) {
                Some(have) if have.user == want.user => {
                    for (room, name) in &want.rooms {
                        if have.rooms.get(room) != Some(name) {
                            changes.push(join(room, conn, &want.user, name));
                        }
                    }
                }
                _ => {
                    changes.push(Change::Open(Conn {
                        conn: conn.clone(),
                        user: want.user.clone(),
                    }));
                    for (room, name) in &want.rooms {
                        changes.push(join(room, conn, &want.user, name));
                    }
                }
            }
        }
        for (conn, have) in old {
            match wanted.get(conn) {
                Some(want) if want.user == have.user => {
                    for room in have.rooms.keys().filter(|r| !want.rooms.contains_key(*r)) {
                        closes.push(Change::Leave {
                            room: room.clone(),
                            conn: conn.clone(),
                        });
                    }
                }
                _ => closes.push(Change::Close { conn: conn.clone() }),
            }
        }
        // Connections replaced under the same id (a restarted gateway) close before they reopen.
        let (reopened, closes): (Vec<_>, Vec<_>) = closes
            .into_iter()
            .partition(|c| matches!(c, Change::Close { conn } if wanted.contains_key(conn)));
        for change in reopened.into_iter().chain(changes).chain(closes) {
            self.apply(&key, change, now);
        }
    }

    fn apply(&mut self, gw: &Arc<str>, change: Change, now: Instant) {
        let delay = self.settings.leave_delay;
        let g = self.gateways.get_mut(&**gw).expect("known gateway");
        match change {
            Change::Open(Conn { conn, user }) => {
                if g.conns.contains_key(&conn) {
                    return;
                }
                g.conns.insert(
                    conn,
                    GwConn {
                        user: user.clone(),
                        rooms: HashMap::new(),
                    },
                );
                self.user_open(&user);
            }
            Change::Close { conn } => {
                if let Some(c) = g.conns.remove(&conn) {
                    self.close_conn(gw, conn, c, delay, now);
                }
            }
            Change::Join(Join { room, conn, user, name }) => {
                let Some(c) = g.conns.get_mut(&conn) else { return };
                if c.user != user || c.rooms.insert(room.clone(), name.clone()).is_some() {
                    return;
                }
                self.room_join(&room, &user, name, (Arc::clone(gw), conn));
            }
            Change::Leave { room, conn } => {
                let Some(c) = g.conns.get_mut(&conn) else { return };
                if c.rooms.remove(&room).is_none() {
                    return;
                }
                let user = c.user.clone();
                // An unsubscribe is deliberate: no leave delay (that is for dropped connections).
                self.room_leave(&room, &user, &(Arc::clone(gw), conn), Duration::ZERO, now);
            }
        }
    }

    fn close_conn(&mut self, gw: &Arc<str>, conn: String, c: GwConn, delay: Duration, now: Instant) {
        let key = (Arc::clone(gw), conn);
        for room in c.rooms.keys() {
            self.room_leave(room, &c.user, &key, delay, now);
        }
        self.user_close(&c.user, delay, now);
    }

    fn room_join(&mut self, room: &str, user: &str, name: Option<String>, key: (Arc<str>, String)) {
        self.touched.insert(room.to_owned());
        let r = self.rooms.entry(room.to_owned()).or_default();
        r.conns += 1;
        let occupied = r.users.is_empty();
        match r.users.get_mut(user) {
            Some(u) => {
                u.last_conn.clone_from(&key.1);
                u.conns.insert(key);
                u.leaving = None;
            }
            None => {
                r.users.insert(
                    user.to_owned(),
                    RoomUser {
                        name,
                        last_conn: key.1.clone(),
                        conns: BTreeSet::from([key]),
                        leaving: None,
                    },
                );
                // Left and back within one window: nothing to announce.
                if r.left.remove(user).is_none() {
                    r.joined.insert(user.to_owned());
                }
                self.dirty.insert(room.to_owned());
            }
        }
        if occupied {
            self.outputs.push(Output::Lifecycle {
                room: room.to_owned(),
                occupied: true,
            });
        }
    }

    fn room_leave(&mut self, room: &str, user: &str, key: &(Arc<str>, String), delay: Duration, now: Instant) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let Some(u) = r.users.get_mut(user) else { return };
        if !u.conns.remove(key) {
            return;
        }
        r.conns -= 1;
        self.touched.insert(room.to_owned());
        if !u.conns.is_empty() {
            return;
        }
        if delay.is_zero() {
            self.remove_member(room, user);
        } else {
            let at = now + delay;
            u.leaving = Some(at);
            self.deadlines.entry(at).or_default().push(Deadline::Leave {
                room: room.to_owned(),
                user: user.to_owned(),
            });
        }
    }

    fn remove_member(&mut self, room: &str, user: &str) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let Some(u) = r.users.remove(user) else { return };
        self.touched.insert(room.to_owned());
        if !r.joined.remove(user) {
            r.left.insert(user.to_owned(), member(user, &u));
        }
        self.dirty.insert(room.to_owned());
        if r.users.is_empty() {
            self.outputs.push(Output::Lifecycle {
                room: room.to_owned(),
                occupied: false,
            });
        }
    }

    fn user_open(&mut self, user: &str) {
        let u = self.users.entry(user.to_owned()).or_default();
        u.conns += 1;
        let was_online = u.conns > 1 || u.offline_at.is_some();
        u.offline_at = None;
        if !was_online {
            self.outputs.push(Output::Status(Status {
                user: user.to_owned(),
                online: true,
            }));
        }
    }

    fn user_close(&mut self, user: &str, delay: Duration, now: Instant) {
        let Some(u) = self.users.get_mut(user) else { return };
        u.conns = u.conns.saturating_sub(1);
        if u.conns > 0 {
            return;
        }
        if delay.is_zero() {
            self.users.remove(user);
            self.outputs.push(Output::Status(Status {
                user: user.to_owned(),
                online: false,
            }));
        } else {
            let at = now + delay;
            u.offline_at = Some(at);
            self.deadlines
                .entry(at)
                .or_default()
                .push(Deadline::Offline { user: user.to_owned() });
        }
    }

    fn request_sync(&mut self, gw: &str, now: Instant) {
        let Some(g) = self.gateways.get_mut(gw) else { return };
        if g.last_sync.is_some_and(|t| now.duration_since(t) < RESYNC_EVERY) {
            return;
        }
        g.last_sync = Some(now);
        self.outputs.push(Output::Sync { gw: gw.to_owned() });
    }

    /// Runs the deadlines due at `now`, expires silent gateways, and returns everything to
    /// publish: status, lifecycle and sync outputs as they happened, then one diff per room
    /// that changed since the last tick.
    pub fn tick(&mut self, now: Instant) -> Vec<Output> {
        let silent: Vec<String> = self
            .gateways
            .iter()
            .filter(|(_, g)| now.duration_since(g.last_heard) >= self.settings.gateway_timeout)
            .map(|(gw, _)| gw.clone())
            .collect();
        for gw in silent {
            self.expire(&gw, now);
        }
        while let Some(entry) = self.deadlines.first_entry() {
            if *entry.key() > now {
                break;
            }
            let (at, due) = entry.remove_entry();
            for d in due {
                match d {
                    Deadline::Leave { room, user } => {
                        let still = self
                            .rooms
                            .get(&room)
                            .and_then(|r| r.users.get(&user))
                            .is_some_and(|u| u.leaving == Some(at));
                        if still {
                            self.remove_member(&room, &user);
                        }
                    }
                    Deadline::Offline { user } => {
                        if self.users.get(&user).is_some_and(|u| u.offline_at == Some(at)) {
                            self.users.remove(&user);
                            self.outputs.push(Output::Status(Status { user, online: false }));
                        }
                    }
                }
            }
        }
        let mut out = std::mem::take(&mut self.outputs);
        let mut dirty: Vec<String> = self.dirty.drain().collect();
        dirty.sort();
        for room in dirty {
            let Some(r) = self.rooms.get_mut(&room) else { continue };
            let count = r.users.len();
            let limit = self.settings.large_room_of(&room);
            let large = count > limit || r.published_count > limit;
            let changed = !r.joined.is_empty() || !r.left.is_empty();
            let joined = std::mem::take(&mut r.joined);
            let left = std::mem::take(&mut r.left);
            if changed && (!large || count != r.published_count) {
                let mut p = Presence {
                    room: room.clone(),
                    count: count as u64,
                    conns: Some(r.conns as u64),
                    ..Presence::default()
                };
                if !large {
                    p.joined = joined
                        .iter()
                        .filter_map(|u| r.users.get(u).map(|ru| member(u, ru)))
                        .collect();
                    p.left = left.into_values().collect();
                }
                r.published_count = count;
                out.push(Output::Presence(p));
            }
            if r.users.is_empty() {
                self.rooms.remove(&room);
            }
        }
        out
    }

    /// Removes a silent gateway and everything it held, at once (no leave delay: it has
    /// been gone for the whole timeout).
    fn expire(&mut self, gw: &str, now: Instant) {
        let Some(g) = self.gateways.remove(gw) else { return };
        self.expired += 1;
        let key: Arc<str> = Arc::from(gw);
        for (conn, c) in g.conns {
            self.close_conn(&key, conn, c, Duration::ZERO, now);
        }
    }

    /// The room's snapshot: members sorted by user (counts only for large rooms).
    pub fn snapshot(&self, room: &str) -> Presence {
        let Some(r) = self.rooms.get(room) else {
            return Presence {
                room: room.to_owned(),
                conns: Some(0),
                members: Some(Vec::new()),
                ..Presence::default()
            };
        };
        let large = r.users.len() > self.settings.large_room_of(room);
        Presence {
            room: room.to_owned(),
            count: r.users.len() as u64,
            conns: Some(r.conns as u64),
            members: (!large).then(|| r.users.iter().map(|(u, ru)| member(u, ru)).collect()),
            ..Presence::default()
        }
    }

    /// The rooms whose snapshot changed since the last call.
    pub fn take_touched(&mut self) -> Vec<String> {
        self.touched.drain().collect()
    }

    /// Members of the room (0 if it has none).
    pub fn snapshot_size(&self, room: &str) -> u64 {
        self.rooms.get(room).map_or(0, |r| r.users.len() as u64)
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Names of the rooms with members.
    pub fn room_names(&self) -> Vec<String> {
        self.rooms.keys().cloned().collect()
    }

    /// Whether the user holds a connection anywhere (or closed its last one within the
    /// leave delay).
    pub fn online(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn totals(&self) -> Totals {
        Totals {
            gateways: self.gateways.len(),
            rooms: self.rooms.len(),
            members: self.rooms.values().map(|r| r.users.len()).sum(),
            conns: self.gateways.values().map(|g| g.conns.len()).sum(),
            users: self.users.len(),
        }
    }
}

fn join(room: &str, conn: &str, user: &str, name: &Option<String>) -> Change {
    Change::Join(Join {
        room: room.to_owned(),
        conn: conn.to_owned(),
        user: user.to_owned(),
        name: name.clone(),
    })
}

fn member(user: &str, u: &RoomUser) -> Member {
    Member {
        user: user.to_owned(),
        conn: u.conns.first().map_or_else(|| u.last_conn.clone(), |(_, c)| c.clone()),
        name: u.name.clone(),
        conns: Some(u.conns.len() as u32),
    }
}

#[cfg(test)]
mod tests;
