//! Feeds: fanout's presence diffs (`herald.presence.<room>`) and user status
//! (`herald.status.<user>`) forwarded to the local connections that asked for them.
//!
//! One wildcard NATS subscription per kind per gateway (`herald.presence.*`,
//! `herald.status.>`), held while the gateway has any feed of that kind and drained by one
//! task: a message whose subject no local connection follows is dropped before it is decoded.
//! A feed thus costs a map entry, not a NATS subscription and a task; the gateway holds at
//! most `--max-feeds` of them. The price is that NATS sends every gateway every status
//! transition (one per user going online or offline, rare) and every room's presence diffs
//! (at most one per room per `--presence-interval`, coalesced by fanout, and only for rooms
//! whose membership changed), a small fraction of the room events the default wildcard room
//! subscription already brings. Per-subject subscriptions would spare that traffic but cost
//! NATS interest (kept by every server of the cluster) and a subscribe round trip per room
//! and per watched user, which any client could ask for by the thousand.
//!
//! Each message is decoded once and encoded once per codec. A recipient starts *held*: what
//! arrives is kept until [`Feeds::release`], so a snapshot sent first is never overtaken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::frame::{Presence, ServerFrame, Status};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::outbound::{encode_for, Content, Format, Item, Outbound};
use crate::sync::lock;
use crate::upstream::Upstream;

/// Longest an add waits for its kind's subscription to be in place.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a feed carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Presence,
    Status,
}

/// The feeds of one gateway.
pub(crate) struct Feeds {
    upstream: Arc<Upstream>,
    /// `--max-feeds`: the most subjects followed at once.
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    feeds: HashMap<String, Feed>,
    /// The wildcard subscription of each kind, while it has feeds.
    lanes: [Option<Lane>; 2],
}

struct Feed {
    kind: Kind,
    recipients: HashMap<u64, Recipient>,
}

/// A kind's wildcard subscription and the task that drains it.
struct Lane {
    task: AbortHandle,
    /// True once the subscription is in place.
    ready: watch::Receiver<bool>,
    /// Feeds of this kind.
    feeds: usize,
}

struct Recipient {
    out: Arc<Outbound>,
    format: Format,
    held: Option<Vec<Bytes>>,
}

/// The feeds of one HTTP request or stream, left together when it is dropped: a request
/// that hyper cancels or a panic unwinds leaves no recipient behind (a held recipient would
/// keep every message of its feed, and the feed itself, forever).
pub(crate) struct FeedSet {
    feeds: Arc<Feeds>,
    conn: u64,
    subjects: Vec<String>,
}

// === impl FeedSet ===

impl FeedSet {
    pub(crate) fn new(feeds: &Arc<Feeds>, conn: u64) -> Self {
        Self {
            feeds: Arc::clone(feeds),
            conn,
            subjects: Vec::new(),
        }
    }

    /// [`Feeds::add`], recorded before its first await so that a cancelled add is undone.
    pub(crate) async fn add(&mut self, subject: String, kind: Kind, out: &Arc<Outbound>, format: Format) -> bool {
        self.subjects.push(subject);
        let subject = self.subjects.last().expect("just pushed");
        let ok = self.feeds.add(subject, kind, self.conn, out, format).await;
        if !ok {
            self.subjects.pop();
        }
        ok
    }

    /// [`Feeds::release`].
    pub(crate) fn release(&self, subject: &str, first: Option<Bytes>) {
        self.feeds.release(subject, self.conn, first);
    }
}

impl Drop for FeedSet {
    fn drop(&mut self) {
        for subject in &self.subjects {
            self.feeds.remove(subject, self.conn);
        }
    }
}

// === impl Feeds ===

impl Feeds {
    pub(crate) fn new(upstream: Arc<Upstream>, max: usize) -> Arc<Self> {
        Arc::new(Self {
            upstream,
            max,
            state: Mutex::default(),
        })
    }

    /// Adds `conn` to the feed of `subject` (held), and returns once its kind's NATS
    /// subscription is in place; false if it could not be made, or if the gateway already
    /// follows `--max-feeds` subjects and this is a new one.
    pub(crate) async fn add(
        self: &Arc<Self>,
        subject: &str,
        kind: Kind,
        conn: u64,
        out: &Arc<Outbound>,
        format: Format,
    ) -> bool {
        let mut ready = {
            let mut state = lock(&self.state);
            let recipient = Recipient {
                out: Arc::clone(out),
                format,
                held: Some(Vec::new()),
            };
            let state = &mut *state;
            let full = state.feeds.len() >= self.max;
            match state.feeds.get_mut(subject) {
                Some(feed) if feed.kind == kind => {
                    feed.recipients.insert(conn, recipient);
                }
                Some(_) => return false,
                None if full => {
                    debug!(subject, max = self.max, "Feed refused: --max-feeds reached");
                    return false;
                }
                None => {
                    let feed = Feed {
                        kind,
                        recipients: HashMap::from([(conn, recipient)]),
                    };
                    state.feeds.insert(subject.to_owned(), feed);
                    let lane = state.lanes[kind as usize].get_or_insert_with(|| self.start(kind));
                    lane.feeds += 1;
                }
            }
            state.lanes[kind as usize]
                .as_ref()
                .expect("a kind with a feed has its lane")
                .ready
                .clone()
        };
        let ok = tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ok {
            self.remove(subject, conn);
        }
        ok
    }

    /// Sends `first` (if any) and then everything held for `conn`, and stops holding.
    pub(crate) fn release(&self, subject: &str, conn: u64, first: Option<Bytes>) {
        let mut state = lock(&self.state);
        let Some(feed) = state.feeds.get_mut(subject) else {
            return;
        };
        let content = content(feed.kind);
        let Some(r) = feed.recipients.get_mut(&conn) else {
            return;
        };
        for bytes in first.into_iter().chain(r.held.take().unwrap_or_default()) {
            r.out.push(Item {
                bytes,
                content: content.clone(),
            });
        }
    }

    /// Removes `conn` from the feed; the last recipient's removal ends the feed, and the
    /// last feed of a kind ends its subscription.
    pub(crate) fn remove(&self, subject: &str, conn: u64) {
        let mut state = lock(&self.state);
        let Some(feed) = state.feeds.get_mut(subject) else {
            return;
        };
        feed.recipients.remove(&conn);
        if !feed.recipients.is_empty() {
            return;
        }
        let kind = feed.kind;
        state.feeds.remove(subject);
        let lane = &mut state.lanes[kind as usize];
        if let Some(l) = lane.as_mut() {
            l.feeds -= 1;
            if l.feeds == 0 {
                l.task.abort();
                *lane = None;
            }
        }
    }

    /// Starts the wildcard subscription of `kind` (called with the state locked).
    fn start(self: &Arc<Self>, kind: Kind) -> Lane {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(self).forward(kind, tx));
        Lane {
            task: task.abort_handle(),
            ready: rx,
            feeds: 0,
        }
    }

    /// Subscribes (retrying while NATS refuses), then hands every message of a followed
    /// subject to that feed's recipients.
    async fn forward(self: Arc<Self>, kind: Kind, ready: watch::Sender<bool>) {
        let subjects = self.upstream.subjects();
        let wildcard = match kind {
            Kind::Presence => subjects.presence_wildcard(),
            Kind::Status => subjects.status_wildcard(),
        };
        let mut sub = loop {
            match self.upstream.subscribe(wildcard.clone()).await {
                Ok(sub) => break sub,
                Err(e) => {
                    warn!(subject = wildcard, error = %e, "Feed subscription failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let _gauge = crate::upstream::GaugeGuard::new();
        ready.send_replace(true);
        while let Some(msg) = sub.next().await {
            self.dispatch(kind, &msg);
        }
    }

    fn dispatch(&self, kind: Kind, msg: &async_nats::Message) {
        let subject = msg.subject.as_str();
        // Most subjects are nobody's here: dropped without decoding.
        if !lock(&self.state).feeds.contains_key(subject) {
            return;
        }
        let frame = match kind {
            Kind::Presence => serde_json::from_slice::<Presence>(&msg.payload).map(ServerFrame::Presence),
            Kind::Status => serde_json::from_slice::<Status>(&msg.payload).map(ServerFrame::Status),
        };
        let Ok(frame) = frame else {
            debug!(subject, "Undecodable feed message dropped");
            return;
        };
        let mut encoded: [Option<Bytes>; 3] = [None, None, None];
        let mut state = lock(&self.state);
        let Some(feed) = state.feeds.get_mut(subject).filter(|f| f.kind == kind) else {
            return;
        };
        let content = content(kind);
        for r in feed.recipients.values_mut() {
            let slot = match r.format {
                Format::WebSocket(codec, _) => usize::from(codec.is_binary()),
                Format::Bare => 2,
            };
            let bytes = encoded[slot]
                .get_or_insert_with(|| encode_for(r.format, &frame))
                .clone();
            match &mut r.held {
                Some(held) => held.push(bytes),
                None => {
                    r.out.push(Item {
                        bytes,
                        content: content.clone(),
                    });
                }
            }
        }
    }
}

/// What a feed's frames are, for the queue.
fn content(kind: Kind) -> Content {
    match kind {
        Kind::Presence => Content::Presence,
        Kind::Status => Content::Status,
    }
}
