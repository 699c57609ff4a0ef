//! The way in to the presence task: one task reads the gateways' messages
//! (`herald.sys.gw.*`) and the snapshot and status requests, drops gateway messages no
//! gateway sends (over-long ids, an id other than its subject's, over-large batches or
//! snapshot parts, more gateways than [`MAX_GATEWAYS`]), notes when each gateway was last
//! heard from, and queues the rest, in arrival order, under a byte bound.
//!
//! A gateway is alive from the moment its message arrives here, not when the presence task
//! gets to it: a flood on the internal subjects, or the burst of snapshots a sync request
//! brings, delays the queue (and past [`MAX_QUEUED_BYTES`] drops from it; a gateway whose
//! changes were dropped is resynced) but never expires a gateway that keeps sending
//! heartbeats. Requests travel in the same queue as the gateway messages, so a request is
//! still answered only after the gateway messages that arrived before it (a gateway sends a
//! member's join before asking for the snapshot that should hold it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::{Message, Subscriber};
use futures_util::StreamExt;
use herald_proto::sys::{valid_gateway, Body, GatewayMsg};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::metric;

/// The reasons a message is dropped: the `reason` label of `herald_fanout_sys_dropped_total`.
pub(crate) const DROP_REASONS: [&str; 7] = [
    "too_large",
    "gateway_id",
    "undecodable",
    "subject_mismatch",
    "too_many_items",
    "too_many_gateways",
    "queue_full",
];

/// The largest gateway message taken (NATS's default payload limit; a gateway's are at
/// most ~256 KiB). Larger ones are dropped before they are decoded.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Most changes in one batch: a gateway sends at most 512.
pub(crate) const MAX_BATCH: usize = 4096;
/// Most connections plus members in one snapshot part: a gateway's parts hold 256 KiB, and
/// the smallest entry takes ~20 bytes.
pub(crate) const MAX_PART_ITEMS: usize = 16_384;
/// Most gateways tracked at once (each costs state for its whole membership); messages
/// from more are dropped until one falls silent for `--gateway-timeout`.
pub(crate) const MAX_GATEWAYS: usize = 1024;
/// Most bytes of messages and requests (as received; decoded they take a few times more)
/// waiting for the presence task; past it, arrivals are dropped (their gateway's liveness is
/// still noted).
pub(crate) const MAX_QUEUED_BYTES: usize = 32 << 20;

/// What the presence task receives, in arrival order.
pub(crate) enum Input {
    Gateway(GatewayMsg),
    Presence(Message),
    Status(Message),
}

/// An input and the bytes it holds of [`MAX_QUEUED_BYTES`].
pub(crate) struct Queued {
    pub input: Input,
    bytes: usize,
    /// When it was read off NATS.
    at: Instant,
}

/// What a request holds of [`MAX_QUEUED_BYTES`] besides its bytes (its message, subjects
/// and queue entry): an empty presence request is not free.
const REQUEST_COST: usize = 256;

/// A request that waited this long is dropped, not answered: the gateway that asked gave up
/// after 2 s, and answering it would only make fanout later for the requests still waited on.
const REQUEST_STALE: Duration = Duration::from_secs(2);

/// The shared half: liveness and the queue's byte count.
#[derive(Clone, Default)]
pub(crate) struct Intake {
    heard: Arc<Mutex<HashMap<String, Instant>>>,
    queued: Arc<AtomicUsize>,
}

/// The request subscriptions, handed to the intake once the first sync window has passed.
pub(crate) struct Requests {
    pub presence: Subscriber,
    pub status: Subscriber,
}

// === impl Intake ===

impl Intake {
    /// Reads `sys` (and the request subscriptions once `requests` hands them over) into
    /// `tx` until `stop`; then unsubscribes from the requests, so that another instance's
    /// queue member takes them.
    pub(crate) async fn run(
        self,
        mut sys: Subscriber,
        sys_prefix: String,
        mut requests: mpsc::Receiver<Requests>,
        tx: mpsc::UnboundedSender<Queued>,
        stop: Arc<Notify>,
    ) {
        let (mut presence, mut status): (Option<Subscriber>, Option<Subscriber>) = (None, None);
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            // Gateway messages first, as they arrived before any request polled after them.
            let queued = tokio::select! {
                biased;
                _ = &mut stopped => break,
                Some(msg) = sys.next() => match self.admit(&sys_prefix, &msg) {
                    Ok(decoded) => self.queue(Input::Gateway(decoded), msg.payload.len()),
                    Err(reason) => {
                        dropped(reason, &msg);
                        continue;
                    }
                },
                Some(msg) = next(&mut presence) => {
                    let n = request_cost(&msg);
                    self.queue(Input::Presence(msg), n)
                }
                Some(msg) = next(&mut status) => {
                    let n = request_cost(&msg);
                    self.queue(Input::Status(msg), n)
                }
                Some(r) = requests.recv(), if presence.is_none() => {
                    (presence, status) = (Some(r.presence), Some(r.status));
                    continue;
                }
                else => break,
            };
            match queued {
                Some(q) => {
                    if tx.send(q).is_err() {
                        break;
                    }
                }
                None => metrics::counter!(metric::SYS_DROPPED, "reason" => "queue_full").increment(1),
            }
        }
        for sub in [presence, status].iter_mut().flatten() {
            let _ = sub.unsubscribe().await;
        }
    }

    /// The message, if a gateway could have sent it; notes its gateway as heard from.
    fn admit(&self, sys_prefix: &str, msg: &Message) -> Result<GatewayMsg, &'static str> {
        if msg.payload.len() > MAX_MESSAGE_BYTES {
            return Err("too_large");
        }
        let token = msg.subject.as_str().strip_prefix(sys_prefix).unwrap_or_default();
        if !valid_gateway(token) {
            return Err("gateway_id");
        }
        let m: GatewayMsg = serde_json::from_slice(&msg.payload).map_err(|_| "undecodable")?;
        // Only a gateway's own subject speaks for it.
        if m.gw != token {
            return Err("subject_mismatch");
        }
        let items = match &m.body {
            Body::Changes { changes, .. } => changes.len() <= MAX_BATCH,
            Body::Snapshot { conns, members, .. } => conns.len() + members.len() <= MAX_PART_ITEMS,
            Body::Heartbeat { .. } => true,
        };
        if !items {
            return Err("too_many_items");
        }
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        if !heard.contains_key(&m.gw) && heard.len() >= MAX_GATEWAYS {
            return Err("too_many_gateways");
        }
        heard.insert(m.gw.clone(), Instant::now());
        Ok(m)
    }

    /// `input` with its share of the byte bound, or `None` when the queue is full.
    fn queue(&self, input: Input, bytes: usize) -> Option<Queued> {
        let took = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
            (q + bytes <= MAX_QUEUED_BYTES).then_some(q + bytes)
        });
        took.ok().map(|_| Queued {
            input,
            bytes,
            at: Instant::now(),
        })
    }

    /// Called by the presence task for each input it takes off the queue; false for a
    /// request older than [`REQUEST_STALE`], which is dropped (and counted).
    pub(crate) fn taken(&self, q: &Queued) -> bool {
        self.queued.fetch_sub(q.bytes, Ordering::AcqRel);
        let stale = !matches!(q.input, Input::Gateway(_)) && q.at.elapsed() > REQUEST_STALE;
        if stale {
            metrics::counter!(metric::SYS_DROPPED, "reason" => "stale_request").increment(1);
        }
        !stale
    }

    /// When each gateway was last heard from; forgets those silent for `timeout`.
    pub(crate) fn heard(&self, now: Instant, timeout: Duration) -> Vec<(String, Instant)> {
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard.retain(|_, at| now.saturating_duration_since(*at) < timeout);
        heard.iter().map(|(gw, at)| (gw.clone(), *at)).collect()
    }
}

fn dropped(reason: &'static str, msg: &Message) {
    metrics::counter!(metric::SYS_DROPPED, "reason" => reason).increment(1);
    let subject: String = msg.subject.as_str().chars().take(80).collect();
    debug!(reason, %subject, bytes = msg.payload.len(), "Gateway message dropped");
}

/// The next message of an optional subscription (pending while there is none).
async fn next(sub: &mut Option<Subscriber>) -> Option<Message> {
    match sub.as_mut() {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

/// What a request holds of the queue's bound: its bytes, subjects and [`REQUEST_COST`].
fn request_cost(msg: &Message) -> usize {
    let reply = msg.reply.as_ref().map_or(0, |r| r.len());
    REQUEST_COST + msg.payload.len() + msg.subject.len() + reply
}
