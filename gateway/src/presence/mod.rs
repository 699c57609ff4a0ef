//! The gateway's side of presence. [`Tracker`] reports this gateway's connections and room
//! members to fanout; [`Presence`] bundles it with the feeds (diffs and statuses from fanout
//! forwarded to the local connections that asked) and the polling sessions; [`follow`] and
//! [`Membership`] are what the transports call.

mod polls;
mod tracker;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_proto::frame::{Id, Presence as Snapshot, ServerFrame, Status};
use herald_proto::sys::{StatusReply, StatusRequest};

use crate::auth::Identity;
use crate::feeds::{FeedSet, Feeds, Kind};
use crate::outbound::{encode_for, Format, Outbound};
use crate::upstream::Upstream;

pub(crate) use polls::{Pending, PollSessions, SessionLimits, SessionRefused};
pub(crate) use tracker::Tracker;

/// Longest wait for fanout's answer to a snapshot or status request.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything presence of one gateway: the reporter, the feeds and the polling sessions.
pub(crate) struct Presence {
    pub(crate) tracker: Tracker,
    pub(crate) feeds: Arc<Feeds>,
    pub(crate) polls: Arc<PollSessions>,
    upstream: Arc<Upstream>,
}

impl Presence {
    /// Starts the reporter and the sweep of expired polling sessions.
    pub(crate) fn start(upstream: &Arc<Upstream>, gw: &str, heartbeat: Duration, max_feeds: usize) -> Self {
        let tracker = Tracker::start(Arc::clone(upstream), gw, heartbeat);
        let feeds = Feeds::new(Arc::clone(upstream), max_feeds);
        let polls = Arc::new(PollSessions::default());
        tokio::spawn({
            let (polls, tracker) = (Arc::downgrade(&polls), tracker.clone());
            async move {
                let mut every = tokio::time::interval(Duration::from_millis(500));
                loop {
                    every.tick().await;
                    let Some(polls) = polls.upgrade() else { return };
                    polls.sweep(&tracker);
                }
            }
        });
        Self {
            tracker,
            feeds,
            polls,
            upstream: Arc::clone(upstream),
        }
    }

    /// The room's presence snapshot from fanout, if it answers in time.
    pub(crate) async fn snapshot(&self, room: &str) -> Option<Snapshot> {
        Some(self.ask_snapshot(room, FANOUT_TIMEOUT).await?.0)
    }

    /// The room's snapshot from fanout within `timeout`, with the size of fanout's answer.
    async fn ask_snapshot(&self, room: &str, timeout: Duration) -> Option<(Snapshot, usize)> {
        let subject = self.upstream.subjects().api_presence(room);
        let reply = self.upstream.request(subject, Bytes::new(), timeout).await?;
        let snapshot = serde_json::from_slice::<Snapshot>(&reply).ok()?;
        Some((snapshot, reply.len()))
    }

    /// When a request to fanout that starts now must be answered.
    pub(crate) fn fanout_deadline() -> tokio::time::Instant {
        tokio::time::Instant::now() + FANOUT_TIMEOUT
    }

    /// The snapshots of `rooms`, asked of fanout all at once and awaited together until
    /// `deadline` at the latest; each with the size of fanout's answer (what it adds to a
    /// response, near enough). A room fanout did not answer for is `None`.
    pub(crate) async fn snapshots(
        &self,
        rooms: &[String],
        deadline: tokio::time::Instant,
    ) -> Vec<Option<(Snapshot, usize)>> {
        let asks = rooms
            .iter()
            .map(|room| self.ask_snapshot(room, deadline.saturating_duration_since(tokio::time::Instant::now())));
        futures_util::future::join_all(asks).await
    }

    /// The users' current status from fanout, in the order asked, if it answers in time.
    pub(crate) async fn statuses(&self, users: &[String]) -> Option<Vec<Status>> {
        let request = serde_json::to_vec(&StatusRequest { users: users.to_vec() }).expect("serializable");
        let subject = self.upstream.subjects().api_status();
        let reply = self.upstream.request(subject, request.into(), FANOUT_TIMEOUT).await?;
        Some(serde_json::from_slice::<StatusReply>(&reply).ok()?.users)
    }

    /// Subscribes `conn` to the room's presence diffs and queues, before them, the room's
    /// snapshot (with `id`). Errs with the reason if either is unavailable (the diffs still
    /// come if only the snapshot failed).
    pub(crate) async fn follow(
        &self,
        conn: u64,
        out: &Arc<Outbound>,
        format: Format,
        room: &str,
        id: Option<Id>,
    ) -> Result<(), &'static str> {
        let subject = self.upstream.subjects().presence(room);
        if !self.feeds.add(&subject, Kind::Presence, conn, out, format).await {
            return Err("presence updates are unavailable");
        }
        let first = self.snapshot(room).await.map(|mut p| {
            p.id = id;
            encode_for(format, &ServerFrame::Presence(p))
        });
        let answered = first.is_some();
        self.feeds.release(&subject, conn, first);
        answered.then_some(()).ok_or("the presence service did not answer")
    }
}

/// The presence of a connection on an HTTP stream (SSE): online while it lives, a member of
/// its rooms, following their presence and the watched users' status; diffs go to the
/// stream's queue as bare JSON. Dropping it (also half-way through) closes the connection in
/// fanout and leaves its feeds.
pub(crate) struct Membership {
    tracker: Tracker,
    conn: String,
    feeds: FeedSet,
}

impl Membership {
    /// Reports the connection and its rooms. The stream then asks for each room's snapshot
    /// with [`Membership::follow`] and for the watched users' status with
    /// [`Membership::watch`], and sends each as it comes: queued all at once, the snapshots
    /// of big rooms would overflow the queue before the stream drains it.
    pub(crate) async fn start(presence: &Presence, conn_id: u64, conn: &str, who: &Identity, rooms: &[String]) -> Self {
        let tracker = &presence.tracker;
        tracker.open(conn, &who.user);
        let this = Self {
            tracker: tracker.clone(),
            conn: conn.to_owned(),
            feeds: FeedSet::new(&presence.feeds, conn_id),
        };
        fail::fail_point!("membership.join");
        for room in rooms {
            tracker.join(room, conn, &who.user, who.name.as_deref()).await;
        }
        this
    }

    /// Follows the room's presence: its diffs go to `out`, and its snapshot (if fanout
    /// answers) is returned, to be sent before anything taken from `out` after this call.
    pub(crate) async fn follow(&mut self, presence: &Presence, room: &str, out: &Arc<Outbound>) -> Option<Bytes> {
        let subject = presence.upstream.subjects().presence(room);
        fail::fail_point!("membership.feed");
        if !self.feeds.add(subject.clone(), Kind::Presence, out, Format::Bare).await {
            return None;
        }
        fail::fail_point!("membership.snapshot");
        let first = presence
            .snapshot(room)
            .await
            .map(|p| encode_for(Format::Bare, &ServerFrame::Presence(p)));
        // The held diffs go to the queue after the snapshot, which the caller sends first.
        self.feeds.release(&subject, None);
        first
    }

    /// Follows the users' status: changes go to `out`, and their current statuses are
    /// returned, to be sent before anything taken from `out` after this call.
    pub(crate) async fn watch(&mut self, presence: &Presence, users: &[String], out: &Arc<Outbound>) -> Vec<Bytes> {
        if users.is_empty() {
            return Vec::new();
        }
        let subjects = presence.upstream.subjects();
        for user in users {
            self.feeds
                .add(subjects.status(user), Kind::Status, out, Format::Bare)
                .await;
        }
        fail::fail_point!("membership.statuses");
        let statuses = presence.statuses(users).await.unwrap_or_default();
        for user in users {
            self.feeds.release(&subjects.status(user), None);
        }
        statuses
            .into_iter()
            .map(|status| encode_for(Format::Bare, &ServerFrame::Status(status)))
            .collect()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.tracker.close(&self.conn);
    }
}
