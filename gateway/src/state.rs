//! What every connection and request of a gateway shares: configuration, identity checks,
//! the hub and presence, HTTP rate limits, and the connection registry that enforces
//! `--max-connections` and runs the drain.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_proto::subject::Subjects;
use herald_proto::CloseCode;
use http::header;
use http::Request;
use hyper::body::Incoming;
use rand::Rng;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::auth::{Authenticator, Identity};
use crate::config::Config;
use crate::hub::{Hub, PageLimit};
use crate::limit::TokenBucket;
use crate::outbound::Outbound;
use crate::presence::Presence;
use crate::sync::lock;

/// What every connection of a gateway shares.
pub(crate) struct Shared {
    pub config: Config,
    pub gateway_id: String,
    pub auth: Authenticator,
    pub subjects: Subjects,
    pub hub: Arc<Hub>,
    /// The reporter to fanout, the feeds from it, the polling sessions.
    pub presence: Presence,
    /// HTTP rate limits, per kind and user (anonymous users: per client IP).
    http_buckets: Mutex<HashMap<(RateKind, String), TokenBucket>>,
    pub conns: Connections,
    pub draining: AtomicBool,
    pub stream_ready: AtomicBool,
    next_conn: AtomicU64,
    origins: Vec<String>,
}

/// A place among `--max-connections`, taken before a connection's or a request's first
/// `.await` and given back by `Drop`, however it ends: closed, cancelled by hyper when the
/// client goes away, or unwound by a panic.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    conn_id: u64,
}

/// Open client connections, for limits and the drain.
#[derive(Default)]
pub(crate) struct Connections {
    map: Mutex<HashMap<u64, Arc<Outbound>>>,
    reserved: AtomicU64,
    empty: Notify,
}

/// What an HTTP rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RateKind {
    /// `POST /publish` (`--publish-rate`).
    Publish,
    /// `/poll`, `/sse`, `GET /presence` (`--op-rate`).
    Request,
}

/// Most HTTP rate-limit buckets kept; past it, full ones are forgotten first.
const MAX_BUCKETS: usize = 100_000;

/// Why a connection was refused a slot (`unavailable` on every transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unavailable(pub &'static str);

// === impl Shared ===

impl Shared {
    pub(crate) fn new(
        config: Config,
        gateway_id: String,
        auth: Authenticator,
        subjects: Subjects,
        hub: Arc<Hub>,
        presence: Presence,
    ) -> Self {
        Self {
            origins: config.allowed_origins(),
            config,
            gateway_id,
            auth,
            subjects,
            hub,
            presence,
            http_buckets: Mutex::default(),
            conns: Connections::default(),
            draining: AtomicBool::new(false),
            stream_ready: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Whether `who` may make a `kind` request now. Users with a token are counted by user
    /// id, anonymous users by their session id (their user id is its digest) or, without
    /// one, by client IP, since each such request is a new user (behind a proxy, those all
    /// share the proxy's address).
    pub(crate) fn http_allowed(&self, kind: RateKind, who: &Identity, remote: IpAddr, has_sid: bool) -> bool {
        let key = match &who.claims {
            Some(_) => who.user.clone(),
            None if has_sid => who.user.clone(),
            None => format!("ip:{remote}"),
        };
        let (rate, burst) = match kind {
            RateKind::Publish => (self.config.publish_rate, self.config.publish_rate),
            RateKind::Request => (self.config.op_rate, self.op_burst()),
        };
        let mut buckets = lock(&self.http_buckets);
        if buckets.len() >= MAX_BUCKETS {
            // Full buckets carry no state worth keeping; if every one is busy, a flood of
            // addresses is under way and forgetting them all only lets each one burst again.
            buckets.retain(|_, b| !b.is_full());
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        buckets
            .entry((kind, key))
            .or_insert_with(|| TokenBucket::with_burst(rate, burst))
            .take()
    }

    /// The burst of `--op-rate`: a reconnect resubscribes every room at once.
    pub(crate) fn op_burst(&self) -> f64 {
        (self.config.max_subscriptions as f64).max(2.0 * self.config.op_rate)
    }

    /// Takes a connection slot, unless the gateway is draining or full.
    pub(crate) fn reserve(self: &Arc<Self>, conn_id: u64) -> Result<Slot, Unavailable> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(Unavailable("gateway is draining; connect to another"));
        }
        if !self.conns.reserve(self.config.max_connections) {
            return Err(Unavailable("too many connections"));
        }
        Ok(Slot {
            shared: Arc::clone(self),
            conn_id,
        })
    }

    /// The bound of one replay burst or poll answer.
    pub(crate) fn page_limit(&self) -> PageLimit {
        PageLimit {
            events: self.config.replay_max_events,
            bytes: self.config.replay_max_bytes,
        }
    }

    /// Why the gateway is not ready, if it is not.
    pub(crate) fn not_ready(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining")
        } else if !self.hub.is_connected() {
            Some("NATS disconnected")
        } else if !self.stream_ready.load(Ordering::Relaxed) {
            Some("event stream not provisioned")
        } else {
            None
        }
    }

    pub(crate) fn new_conn(&self) -> (u64, String) {
        let n = self.next_conn.fetch_add(1, Ordering::Relaxed);
        (n, format!("{}-{n:x}", self.gateway_id))
    }

    pub(crate) fn origin_allowed(&self, req: &Request<Incoming>) -> bool {
        // Non-browser clients send no Origin; browsers always do.
        req.headers()
            .get(header::ORIGIN)
            .is_none_or(|o| o.to_str().is_ok_and(|o| self.is_allowed_origin(o)))
    }

    /// Whether a browser `Origin` may connect (any, when `--allowed-origins` is empty).
    pub(crate) fn is_allowed_origin(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        self.origins.is_empty() || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

// === impl Slot ===

impl Slot {
    /// Makes the connection known to the drain, which closes it through `out`.
    pub(crate) fn register(&self, out: Arc<Outbound>) {
        self.shared.conns.insert(self.conn_id, out);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.conns.remove(self.conn_id);
    }
}

// === impl Connections ===

impl Connections {
    /// Reserves a slot unless `max` are taken.
    fn reserve(&self, max: usize) -> bool {
        let prev = self.reserved.fetch_add(1, Ordering::AcqRel);
        if prev as usize >= max {
            self.reserved.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn unreserve(&self) {
        self.reserved.fetch_sub(1, Ordering::AcqRel);
        if self.reserved.load(Ordering::Acquire) == 0 {
            self.empty.notify_waiters();
        }
    }

    fn insert(&self, id: u64, out: Arc<Outbound>) {
        lock(&self.map).insert(id, out);
    }

    fn remove(&self, id: u64) {
        lock(&self.map).remove(&id);
        self.unreserve();
    }

    pub(crate) fn len(&self) -> usize {
        self.reserved.load(Ordering::Acquire) as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection with 1012, spread over `spread`, and waits until all are gone
    /// or `deadline` passes.
    pub(crate) async fn drain(&self, spread: Duration, deadline: Duration) {
        let outs: Vec<Arc<Outbound>> = lock(&self.map).values().cloned().collect();
        info!(connections = outs.len(), "Draining");
        let spread_ms = spread.as_millis().max(1) as u64;
        for out in outs {
            let delay = Duration::from_millis(rand::rng().random_range(0..spread_ms));
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                out.close(Some(CloseCode::DRAINING));
            });
        }
        let wait_empty = async {
            loop {
                let notified = self.empty.notified();
                if self.is_empty() {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(deadline, wait_empty).await.is_err() {
            warn!(left = self.len(), "Drain deadline passed with connections open");
        }
    }
}
