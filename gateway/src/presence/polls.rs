//! Polling clients' presence sessions.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::Identity;
use crate::sync::lock;

use super::tracker::Tracker;

/// Polling clients' presence, keyed by their user and `sid`: a session is online and a member of its
/// presence rooms from its first poll until it leaves (`POST /poll/leave`), or until no poll
/// has been in flight for its time to live: `--poll-session-ttl` after an answered poll,
/// `--poll-leave-grace` after one whose client went away before the answer.
#[derive(Default)]
pub(crate) struct PollSessions {
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
    /// Polls of this session in flight; it never expires while one is.
    held: usize,
    expires: Instant,
}

/// Why a new polling session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionRefused {
    /// The user holds `--max-poll-sessions-per-user` already.
    UserFull,
    /// The gateway holds `--max-poll-sessions` already.
    Full,
}

/// The caps on polling sessions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    pub(crate) per_user: usize,
    pub(crate) total: usize,
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
        limits: SessionLimits,
    ) -> Result<Touched, SessionRefused> {
        let wanted: HashSet<String> = rooms.iter().cloned().collect();
        let mut inner = lock(&self.inner);
        let Sessions { by_conn, per_user } = &mut *inner;
        if let Some(s) = by_conn.get_mut(conn) {
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
                held: 1,
                expires: Instant::now(),
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

    /// Closes session `conn` now (the client said it is leaving); false if there was none.
    pub(crate) fn end(&self, tracker: &Tracker, conn: &str) -> bool {
        let mut inner = lock(&self.inner);
        let Sessions { by_conn, per_user } = &mut *inner;
        match by_conn.remove(conn) {
            Some(s) => {
                close_session(tracker, per_user, conn, &s);
                true
            }
            None => false,
        }
    }

    /// Closes the sessions with no poll in flight whose time to live has passed.
    pub(crate) fn sweep(&self, tracker: &Tracker) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let Sessions { by_conn, per_user } = &mut *inner;
        by_conn.retain(|conn, s| {
            let alive = s.held > 0 || s.expires > now;
            if !alive {
                close_session(tracker, per_user, conn, s);
            }
            alive
        });
    }
}

fn close_session(tracker: &Tracker, per_user: &mut HashMap<String, usize>, conn: &str, s: &PollSession) {
    tracker.close(conn);
    crate::metrics::poll_sessions(-1.0);
    if let Some(held) = per_user.get_mut(&s.user) {
        *held -= 1;
        if *held == 0 {
            per_user.remove(&s.user);
        }
    }
}
