//! Polling clients' presence sessions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_proto::frame::Disconnect;

use crate::auth::Identity;
use crate::limit::{Held, Over, Quota};
use crate::sync::lock;

use super::tracker::Tracker;

/// Polling clients' presence, keyed by their user and `sid`: a session is online and a member of its
/// presence rooms from its first poll until it leaves (`POST /poll/leave`), or until no poll
/// has been in flight for its time to live: `--poll-session-ttl` after an answered poll,
/// `--poll-leave-grace` after one whose client went away before the answer. Sessions are
/// capped per owner (a user, or an anonymous client's address) and in all, and their
/// presence rooms count against the gateway's memberships.
#[derive(Default)]
pub(crate) struct PollSessions {
    inner: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    by_conn: HashMap<String, PollSession>,
    per_owner: HashMap<String, usize>,
    /// Sessions the server API ended, until their next poll learns it (or the entry lapses).
    disconnected: HashMap<String, (Arc<Disconnect>, Instant)>,
}

struct PollSession {
    /// Whose it is: what the server API's commands name.
    user: String,
    /// Who the session counts against: a user id, or `ip:<address>` for anonymous clients.
    owner: String,
    rooms: HashSet<String>,
    /// Its share of the gateway's presence memberships: one per room.
    memberships: Held,
    /// Polls of this session in flight; it never expires while one is.
    held: usize,
    expires: Instant,
    /// Where the next answer's presence snapshots start (see [`PollSessions::presence_from`]).
    presence_from: usize,
    /// Rooms the server API subscribed the session to, or took from it, since its last
    /// answer (bounded: see [`MAX_PENDING`]).
    pending: Vec<Pending>,
    /// When it opened, in ms since the epoch.
    opened: u64,
}

/// A polling session as the server API's `connections` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionInfo {
    pub conn: String,
    pub since: u64,
    pub rooms: Vec<String>,
}

/// A change of a polling session's rooms by the server API, told in its next answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    Subscribed(herald_proto::frame::Subscribed),
    Unsubscribed(String),
}

/// Changes a session keeps for its next poll; past it, the oldest go.
const MAX_PENDING: usize = 64;

/// Why a poll of a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionRefused {
    /// The owner holds `--max-poll-sessions-per-user` already.
    UserFull,
    /// The gateway holds `--max-poll-sessions` already.
    Full,
    /// Its presence rooms are over a memberships cap.
    Memberships(Over),
}

/// The caps on polling sessions, and the memberships their rooms count against.
#[derive(Clone)]
pub(crate) struct SessionLimits {
    pub(crate) per_user: usize,
    pub(crate) total: usize,
    pub(crate) memberships: Arc<Quota>,
}

/// What a poll changes in its session's rooms: the tracker is told after the lock is released.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    pub(crate) opened: bool,
    pub(crate) join: Vec<String>,
    pub(crate) leave: Vec<String>,
}

impl PollSessions {
    /// Records a poll of session `conn` (a digest of the user and the sid) as in flight: opens
    /// the session if new and within `limits`, and says which rooms to join and leave so that
    /// its presence rooms are `rooms`. Every successful call is paired with one
    /// [`PollSessions::release`]; [`PollSessions::apply`] tells the tracker.
    pub(crate) fn hold(
        &self,
        conn: &str,
        who: &Identity,
        rooms: &[String],
        limits: &SessionLimits,
    ) -> Result<Touched, SessionRefused> {
        let wanted: HashSet<String> = rooms.iter().cloned().collect();
        let mut inner = lock(&self.inner);
        let Sessions { by_conn, per_owner, .. } = &mut *inner;
        if let Some(s) = by_conn.get_mut(conn) {
            s.memberships
                .resize(wanted.len())
                .map_err(SessionRefused::Memberships)?;
            s.held += 1;
            let join = wanted.difference(&s.rooms).cloned().collect();
            let leave = s.rooms.difference(&wanted).cloned().collect();
            s.rooms = wanted;
            return Ok(Touched {
                opened: false,
                join,
                leave,
            });
        }
        if by_conn.len() >= limits.total {
            return Err(SessionRefused::Full);
        }
        let owner = match who.anonymous_addr() {
            Some(addr) => format!("ip:{addr}"),
            None => who.user.clone(),
        };
        if per_owner.get(&owner).copied().unwrap_or(0) >= limits.per_user {
            return Err(SessionRefused::UserFull);
        }
        let memberships = limits
            .memberships
            .take(who.anonymous_addr(), wanted.len())
            .map_err(SessionRefused::Memberships)?;
        *per_owner.entry(owner.clone()).or_default() += 1;
        let join = wanted.iter().cloned().collect();
        by_conn.insert(
            conn.to_owned(),
            PollSession {
                user: who.user.clone(),
                owner,
                rooms: wanted,
                memberships,
                held: 1,
                expires: Instant::now(),
                presence_from: 0,
                pending: Vec::new(),
                opened: herald_service::now_ms(),
            },
        );
        crate::metrics::poll_sessions(1.0);
        Ok(Touched {
            opened: true,
            join,
            leave: Vec::new(),
        })
    }

    /// Tells the tracker what [`PollSessions::hold`] changed.
    pub(crate) async fn apply(tracker: &Tracker, conn: &str, who: &Identity, touched: &Touched) {
        if touched.opened {
            tracker.open(conn, &who.user);
        }
        for room in &touched.leave {
            tracker.leave(room, conn);
        }
        for room in &touched.join {
            tracker.join(room, conn, &who.user, who.name.as_deref()).await;
        }
    }

    /// A poll of session `conn` ended: once none is in flight, the session lives `ttl` more.
    pub(crate) fn release(&self, conn: &str, ttl: Duration) {
        if let Some(s) = lock(&self.inner).by_conn.get_mut(conn) {
            s.held = s.held.saturating_sub(1);
            if s.held == 0 {
                s.expires = Instant::now() + ttl;
            }
        }
    }

    /// Where the presence snapshots of session `conn`'s next answer start: an answer holds
    /// those that fit its budget, and the next starts after them (0 for no session).
    pub(crate) fn presence_from(&self, conn: &str) -> usize {
        lock(&self.inner).by_conn.get(conn).map_or(0, |s| s.presence_from)
    }

    /// Records where the next answer's presence snapshots start.
    pub(crate) fn set_presence_from(&self, conn: &str, from: usize) {
        if let Some(s) = lock(&self.inner).by_conn.get_mut(conn) {
            s.presence_from = from;
        }
    }

    /// Ends every session of `user` (the server API's `disconnect`): each is closed now, and
    /// its next poll within `remember` is answered with `frame` alone. Returns the sessions
    /// ended that had no poll in flight (one in flight is a registered connection, and
    /// is reached as one).
    pub(crate) fn disconnect(&self, tracker: &Tracker, user: &str, frame: &Arc<Disconnect>, remember: Duration) -> u64 {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let Sessions {
            by_conn,
            per_owner,
            disconnected,
        } = &mut *inner;
        disconnected.retain(|_, (_, until)| *until > now);
        let mut idle = 0;
        by_conn.retain(|conn, s| {
            if s.user != user {
                return true;
            }
            idle += u64::from(s.held == 0);
            close_session(tracker, per_owner, conn, s);
            disconnected.insert(conn.clone(), (Arc::clone(frame), now + remember));
            false
        });
        idle
    }

    /// `user`'s polling sessions here.
    pub(crate) fn sessions_of(&self, user: &str) -> Vec<SessionInfo> {
        let inner = lock(&self.inner);
        inner
            .by_conn
            .iter()
            .filter(|(_, s)| s.user == user)
            .map(|(conn, s)| {
                let mut rooms: Vec<String> = s.rooms.iter().cloned().collect();
                rooms.sort_unstable();
                SessionInfo {
                    conn: conn.clone(),
                    since: s.opened,
                    rooms,
                }
            })
            .collect()
    }

    /// Whether `user` has polling sessions here (an anonymous user's count against its
    /// address, not its id: every session is looked at).
    pub(crate) fn has_sessions(&self, user: &str) -> bool {
        lock(&self.inner).by_conn.values().any(|s| s.user == user)
    }

    /// Keeps `change` for the next answer of every session of `user`; returns the sessions
    /// with no poll in flight (one in flight is a registered connection, reached as one).
    pub(crate) fn post(&self, user: &str, change: Pending) -> u64 {
        let mut inner = lock(&self.inner);
        let mut idle = 0;
        for s in inner.by_conn.values_mut().filter(|s| s.user == user) {
            if s.pending.len() >= MAX_PENDING {
                s.pending.remove(0);
            }
            s.pending.push(change.clone());
            idle += u64::from(s.held == 0);
        }
        idle
    }

    /// The rooms the server API took from session `conn` that its next answer tells.
    pub(crate) fn taken_rooms(&self, conn: &str) -> Vec<String> {
        let inner = lock(&self.inner);
        let Some(s) = inner.by_conn.get(conn) else {
            return Vec::new();
        };
        s.pending
            .iter()
            .filter_map(|p| match p {
                Pending::Unsubscribed(room) => Some(room.clone()),
                Pending::Subscribed(_) => None,
            })
            .collect()
    }

    /// The server API's changes for session `conn`'s answer, taken.
    pub(crate) fn take_pending(&self, conn: &str) -> Vec<Pending> {
        lock(&self.inner)
            .by_conn
            .get_mut(conn)
            .map(|s| std::mem::take(&mut s.pending))
            .unwrap_or_default()
    }

    /// The `disconnect` session `conn`'s poll is to be answered with, if the server API
    /// ended the session (once: the session may start again).
    pub(crate) fn take_disconnect(&self, conn: &str) -> Option<Arc<Disconnect>> {
        let mut inner = lock(&self.inner);
        let (frame, until) = inner.disconnected.remove(conn)?;
        (until > Instant::now()).then_some(frame)
    }

    /// Closes session `conn` now (the client said it is leaving); false if there was none.
    pub(crate) fn end(&self, tracker: &Tracker, conn: &str) -> bool {
        let mut inner = lock(&self.inner);
        let Sessions { by_conn, per_owner, .. } = &mut *inner;
        match by_conn.remove(conn) {
            Some(s) => {
                close_session(tracker, per_owner, conn, &s);
                true
            }
            None => false,
        }
    }

    /// Closes the sessions with no poll in flight whose time to live has passed.
    pub(crate) fn sweep(&self, tracker: &Tracker) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let Sessions {
            by_conn,
            per_owner,
            disconnected,
        } = &mut *inner;
        disconnected.retain(|_, (_, until)| *until > now);
        by_conn.retain(|conn, s| {
            let alive = s.held > 0 || s.expires > now;
            if !alive {
                close_session(tracker, per_owner, conn, s);
            }
            alive
        });
    }
}

fn close_session(tracker: &Tracker, per_owner: &mut HashMap<String, usize>, conn: &str, s: &PollSession) {
    tracker.close(conn);
    crate::metrics::poll_sessions(-1.0);
    if let Some(held) = per_owner.get_mut(&s.owner) {
        *held -= 1;
        if *held == 0 {
            per_owner.remove(&s.owner);
        }
    }
}
