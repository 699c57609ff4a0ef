//! The hub: the room operations every transport uses (subscribe with `since`, unsubscribe,
//! history pages, publish) over the room [`table`] (rooms → local subscribers, encode-once
//! fan-out). Only the hub reaches [`Upstream`] for rooms; what upstream reads from NATS reaches
//! the table through [`crate::upstream::Rooms`].

mod table;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;

use crate::outbound::{event_frame, Format, Outbound};
use crate::upstream::Upstream;

pub(crate) use crate::upstream::{PageLimit, Resume, Retention, UpstreamError};
pub use table::Table;
use table::{Readiness, RoomState};

/// Longest wait for a new room's NATS subscription.
const ROOM_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The rooms of a gateway.
pub(crate) struct Hub {
    table: Arc<Table>,
    upstream: Arc<Upstream>,
    /// How long an emptied room keeps its live events coming.
    linger: Duration,
}

impl Hub {
    pub(crate) fn new(table: Arc<Table>, upstream: Arc<Upstream>, linger: Duration) -> Arc<Self> {
        Arc::new(Self {
            table,
            upstream,
            linger,
        })
    }

    /// Subscribes connection `conn` to `room`: joins the table (pending), makes sure the
    /// room's live events come, then queues the events after `since` (none without it), the live
    /// events that arrived meanwhile, and `ack(seq)` (skipped when empty). Returns the last
    /// seq queued. On failure the connection is not left in the room. `since` is where the
    /// replay starts, already resolved by [`Hub::resume`].
    pub(crate) async fn attach(
        self: &Arc<Self>,
        room: &str,
        conn: u64,
        out: &Arc<Outbound>,
        format: Format,
        since: Option<u64>,
        ack: impl FnOnce(u64) -> Bytes,
    ) -> Result<u64, String> {
        let joined = self.table.join(room, conn, Arc::clone(out), format);
        if joined.new_room {
            self.upstream.start_room(room);
        }
        fail::fail_point!("hub.attach");
        let ready = match joined.state {
            Readiness::Now(state) => state == RoomState::Ready,
            Readiness::Later(mut state) => {
                tokio::time::timeout(ROOM_READY_TIMEOUT, state.wait_for(|s| *s != RoomState::Starting))
                    .await
                    .is_ok_and(|r| r.is_ok_and(|s| *s == RoomState::Ready))
            }
        };
        // The table's last seq for a ready room is the store's as far as this gateway knows:
        // every later event reaches the table live (or through gap repair) and is buffered
        // for this pending subscriber. So a subscribe without `since`, or with a `since`
        // already at that seq, needs no read from the store.
        let replay = match (ready, since) {
            (false, _) => Err("the event store is unavailable".to_owned()),
            (true, None) => Ok((Vec::new(), None)),
            (true, Some(since)) if self.table.ready_last_seq(room).is_some_and(|last| last <= since) => {
                Ok((Vec::new(), Some(since)))
            }
            (true, Some(since)) => self
                .upstream
                .fetch_after(room, since, None)
                .await
                .map(|events| (events.into_iter().map(Arc::new).collect(), Some(since)))
                .map_err(|e| e.to_string()),
        };
        let (events, floor) = match replay {
            Ok(r) => r,
            Err(e) => {
                self.detach(room, conn);
                return Err(e);
            }
        };
        crate::metrics::replayed(events.len() as u64);
        self.table
            .activate(room, conn, &events, floor, ack)
            .ok_or_else(|| "connection closed".to_owned())
    }

    /// Removes `conn` from `room`; an emptied room keeps its live events for the linger.
    pub(crate) fn detach(self: &Arc<Self>, room: &str, conn: u64) {
        if let Some(generation) = self.table.leave(room, conn) {
            let (table, upstream) = (Arc::clone(&self.table), Arc::clone(&self.upstream));
            let (room, linger) = (room.to_owned(), self.linger);
            tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                if table.remove_if_idle(&room, generation) {
                    upstream.room_removed();
                }
            });
        }
    }

    /// Queues the room's events after `after` into `out` in bursts of at most `limit` (and
    /// a third of the connection's outbound bound), each once the client has read most of
    /// the last; returns the last seq queued. A catch-up longer than the outbound bound
    /// thus never overflows it. Stops early if the connection closes.
    pub(crate) async fn send_history(
        &self,
        room: &str,
        mut after: u64,
        out: &Outbound,
        format: Format,
        limit: PageLimit,
    ) -> Result<u64, UpstreamError> {
        let limit = PageLimit {
            events: limit.events,
            bytes: limit.bytes.min(out.limit() / 3).max(1),
        };
        loop {
            let page = self.upstream.page_after(room, after, limit).await?;
            crate::metrics::replayed(page.events.len() as u64);
            for ev in &page.events {
                after = ev.seq;
                out.push(table::item(event_frame(ev.event_ref(), format), ev, format, 0));
            }
            if !page.more || !out.wait_for_room().await {
                return Ok(after);
            }
        }
    }

    /// Whether the NATS connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.upstream.is_connected()
    }

    /// Whether the NATS server maps rooms to other partitions than this gateway reads.
    pub(crate) fn is_unmapped(&self) -> bool {
        self.upstream.is_unmapped()
    }

    /// Creates or updates the event stream, retrying until NATS answers.
    pub(crate) async fn provision(&self, settings: &herald_service::stream::StreamSettings) {
        self.upstream.provision(settings).await
    }

    /// Sends what is buffered to NATS, waiting at most `timeout`.
    pub(crate) async fn flush(&self, timeout: Duration) {
        self.upstream.flush(timeout).await
    }

    /// Where a client holding `since` in `room` resumes.
    pub(crate) async fn resume(&self, room: &str, since: u64) -> Result<Resume, UpstreamError> {
        self.upstream.resume(room, since).await
    }

    /// The room's events after `after`, at most `limit` of them (one at least, however big).
    pub(crate) async fn page_after(
        &self,
        room: &str,
        after: u64,
        limit: PageLimit,
    ) -> Result<crate::upstream::Page, UpstreamError> {
        self.upstream.page_after(room, after, limit).await
    }

    /// The room's last stored seq (0 if it has none).
    pub(crate) async fn last_seq(&self, room: &str) -> Result<u64, UpstreamError> {
        self.upstream.last_seq(room).await
    }

    /// The rooms each of `conns` is subscribed to (see [`Table::rooms_of`]).
    pub(crate) fn rooms_of(&self, conns: &[u64]) -> std::collections::HashMap<u64, Vec<String>> {
        self.table.rooms_of(conns)
    }

    /// Rooms with local subscribers by prefix (see [`Table::counts`]).
    pub(crate) fn counts(&self, prefix: &str, max: usize) -> (Vec<(String, usize)>, bool) {
        self.table.counts(prefix, max)
    }

    /// A grant was just made (see [`Upstream::grant_made`]).
    pub(crate) fn grant_made(&self) {
        self.upstream.grant_made()
    }

    /// Whether the server API granted `user` the room (see [`Upstream::granted`]).
    pub(crate) async fn granted(&self, user: &str, room: &str) -> Result<bool, UpstreamError> {
        self.upstream.granted(user, room).await
    }

    /// Stores an event for a client (see [`Upstream::publish`]).
    pub(crate) async fn publish(
        &self,
        room: &str,
        payload: Bytes,
        kind: Option<&str>,
        key: Option<&str>,
        from: &str,
        ttl: Option<Duration>,
    ) -> Result<PublishAckFuture, UpstreamError> {
        self.upstream.publish(room, payload, kind, key, from, ttl).await
    }

    /// Sends an ephemeral event for a client (see [`Upstream::publish_ephemeral`]).
    pub(crate) async fn publish_ephemeral(
        &self,
        room: &str,
        payload: Bytes,
        kind: Option<&str>,
        from: &str,
    ) -> Result<(), UpstreamError> {
        self.upstream.publish_ephemeral(room, payload, kind, from).await
    }

    /// Keeps only the room's newest `keep` events (a namespace's `history_size`).
    pub(crate) async fn trim(&self, room: &str, keep: u64) {
        self.upstream.trim(room, keep).await
    }
}
