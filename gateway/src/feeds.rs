//! Feeds: fanout's presence diffs (`herald.presence.<room>`) and user status
//! (`herald.status.<user>`) forwarded to the local connections that asked for them.
//!
//! One NATS subscription per subject per gateway, shared by every local recipient; each
//! message is decoded once and encoded once per codec. A recipient starts *held*: what
//! arrives is kept until [`Feeds::release`], so a snapshot sent first is never overtaken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::frame::{Presence, ServerFrame, Status};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::debug;

use crate::outbound::{encode_for, Content, Format, Item, Outbound};
use crate::sync::lock;
use crate::upstream::Upstream;

/// What a feed carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Presence,
    Status,
}

/// The feeds of one gateway.
pub(crate) struct Feeds {
    upstream: Arc<Upstream>,
    feeds: Mutex<HashMap<String, Feed>>,
}

struct Feed {
    recipients: HashMap<u64, Recipient>,
    ready: watch::Receiver<bool>,
    task: Option<AbortHandle>,
}

struct Recipient {
    out: Arc<Outbound>,
    format: Format,
    /// What the feed's frames are, for the queue.
    content: Content,
    held: Option<Vec<Bytes>>,
}

/// The feeds of one HTTP request or stream, left together when it is dropped: a request
/// that hyper cancels or a panic unwinds leaves no recipient behind (a held recipient would
/// keep every message of its feed, and the feed's NATS subscription, forever).
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
    pub(crate) fn new(upstream: Arc<Upstream>) -> Arc<Self> {
        Arc::new(Self {
            upstream,
            feeds: Mutex::default(),
        })
    }

    /// Adds `conn` to the feed of `subject` (held), and returns once the feed's NATS
    /// subscription is in place; false if it could not be made.
    pub(crate) async fn add(
        self: &Arc<Self>,
        subject: &str,
        kind: Kind,
        conn: u64,
        out: &Arc<Outbound>,
        format: Format,
    ) -> bool {
        let (mut ready, start) = {
            let mut feeds = lock(&self.feeds);
            let recipient = Recipient {
                out: Arc::clone(out),
                format,
                content: match kind {
                    Kind::Presence => Content::Presence,
                    Kind::Status => Content::Status,
                },
                held: Some(Vec::new()),
            };
            match feeds.get_mut(subject) {
                Some(feed) => {
                    feed.recipients.insert(conn, recipient);
                    (feed.ready.clone(), None)
                }
                None => {
                    let (tx, rx) = watch::channel(false);
                    let feed = Feed {
                        recipients: HashMap::from([(conn, recipient)]),
                        ready: rx.clone(),
                        task: None,
                    };
                    feeds.insert(subject.to_owned(), feed);
                    (rx, Some(tx))
                }
            }
        };
        if let Some(tx) = start {
            self.start(subject, kind, tx).await;
        }
        let ok = tokio::time::timeout(std::time::Duration::from_secs(5), ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ok {
            self.remove(subject, conn);
        }
        ok
    }

    /// Sends `first` (if any) and then everything held for `conn`, and stops holding.
    pub(crate) fn release(&self, subject: &str, conn: u64, first: Option<Bytes>) {
        let mut feeds = lock(&self.feeds);
        let Some(r) = feeds.get_mut(subject).and_then(|f| f.recipients.get_mut(&conn)) else {
            return;
        };
        for bytes in first.into_iter().chain(r.held.take().unwrap_or_default()) {
            r.out.push(Item {
                bytes,
                content: r.content.clone(),
            });
        }
    }

    /// Removes `conn` from the feed; the last recipient's removal ends the subscription.
    pub(crate) fn remove(&self, subject: &str, conn: u64) {
        let mut feeds = lock(&self.feeds);
        let Some(feed) = feeds.get_mut(subject) else { return };
        feed.recipients.remove(&conn);
        if feed.recipients.is_empty() {
            if let Some(task) = feeds.remove(subject).and_then(|f| f.task) {
                task.abort();
            }
        }
    }

    async fn start(self: &Arc<Self>, subject: &str, kind: Kind, ready: watch::Sender<bool>) {
        let sub = match self.upstream.subscribe(subject.to_owned()).await {
            Ok(sub) => sub,
            Err(e) => {
                debug!(subject, error = %e, "Feed subscription failed");
                lock(&self.feeds).remove(subject);
                return;
            }
        };
        let this = Arc::clone(self);
        let owned = subject.to_owned();
        let task = tokio::spawn(async move { this.forward(&owned, kind, sub).await });
        match lock(&self.feeds).get_mut(subject) {
            Some(feed) => feed.task = Some(task.abort_handle()),
            // Every recipient left meanwhile.
            None => task.abort(),
        }
        let _ = ready.send(true);
    }

    async fn forward(&self, subject: &str, kind: Kind, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            let frame = match kind {
                Kind::Presence => serde_json::from_slice::<Presence>(&msg.payload).map(ServerFrame::Presence),
                Kind::Status => serde_json::from_slice::<Status>(&msg.payload).map(ServerFrame::Status),
            };
            let Ok(frame) = frame else {
                debug!(subject, "Undecodable feed message dropped");
                continue;
            };
            let mut encoded: [Option<Bytes>; 3] = [None, None, None];
            let mut feeds = lock(&self.feeds);
            let Some(feed) = feeds.get_mut(subject) else { return };
            for r in feed.recipients.values_mut() {
                let slot = match r.format {
                    Format::WebSocket(codec) => usize::from(codec.is_binary()),
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
                            content: r.content.clone(),
                        });
                    }
                }
            }
        }
    }
}
