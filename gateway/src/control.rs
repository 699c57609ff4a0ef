//! The server API's reach into this gateway: fanout's commands on `herald.sys.ctl` (each
//! answered with what it reached here: disconnect a user, subscribe a user to a room or
//! take it away), and the revocation bucket, which tells a gateway that starts later (or
//! missed a command) which users' older tokens to refuse.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::api::{user_of_revocation_key, Connection, Revocation, RoomCount, MAX_GATEWAY_ROOMS};
use herald_proto::frame::{Disconnect, ServerFrame, Subscribed};
use herald_proto::sys::{Control, ControlReply};
use herald_proto::CloseCode;
use herald_service::now_ms;
use tracing::{debug, info, warn};

use crate::outbound::{close_frame_with, encode_for, Content, Format, Item, Pushed};
use crate::presence::Pending;
use crate::state::{Command, Registered, Shared};
use crate::upstream::Upstream;

/// The most a `connections` answer holds (a NATS message holds 1 MiB by default).
const ANSWER_BYTES: usize = 512 * 1024;

/// How often the tasks check that the gateway is still there, and the bucket is retried.
const RETRY: Duration = Duration::from_secs(2);

/// Starts answering fanout's commands and following the revocation bucket; both stop once
/// the gateway is gone.
pub(crate) fn start(shared: &Arc<Shared>, upstream: &Arc<Upstream>) {
    tokio::spawn(commands(Arc::downgrade(shared), Arc::clone(upstream)));
    tokio::spawn(revocations(Arc::downgrade(shared), Arc::clone(upstream)));
}

async fn commands(shared: Weak<Shared>, upstream: Arc<Upstream>) {
    let subject = upstream.subjects().sys_control();
    let mut sub = loop {
        match upstream.subscribe(subject.clone()).await {
            Ok(sub) => break sub,
            Err(e) => warn!(error = %e, "Cannot subscribe to the server API's commands; retrying"),
        }
        tokio::time::sleep(RETRY).await;
        if shared.strong_count() == 0 {
            return;
        }
    };
    let mut alive = tokio::time::interval(RETRY);
    loop {
        let msg = tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => msg,
                None => return,
            },
            _ = alive.tick() => {
                if shared.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        let Some(shared) = shared.upgrade() else { return };
        let command = match serde_json::from_slice::<Control>(&msg.payload) {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "Undecodable command dropped");
                continue;
            }
        };
        let answer = apply(&shared, command).await;
        if let Some(reply) = msg.reply {
            let body = Bytes::from(serde_json::to_vec(&answer).expect("plain data serializes"));
            if let Err(e) = upstream.send(reply.to_string(), body).await {
                debug!(error = %e, "Command answer not sent");
            }
        }
    }
}

/// Carries a command out; the answer: the connections (and polling sessions) it reached,
/// or what it asked for.
pub(crate) async fn apply(shared: &Shared, command: Control) -> ControlReply {
    let mut answer = ControlReply {
        gw: shared.gateway_id.clone(),
        connections: 0,
        rooms: Vec::new(),
        truncated: false,
        conns: Vec::new(),
    };
    answer.connections = match command {
        Control::Disconnect {
            user,
            code,
            reason,
            reconnect,
            revocation,
        } => {
            if let Some(r) = &revocation {
                shared.auth.revocations().set(&user, r, now_ms());
            }
            let frame = Disconnect {
                code,
                reason,
                reconnect,
            };
            let reached = disconnect(shared, &user, frame);
            info!(%user, code, reconnect, revoked = revocation.is_some(), connections = reached, "Disconnected by the server API");
            reached
        }
        Control::Subscribe { user, room, presence } => {
            shared.hub.grant_made();
            let change = Change::Subscribe { presence };
            let reached = change_rooms(shared, &user, &room, change).await;
            debug!(%user, %room, connections = reached, "Subscribed by the server API");
            reached
        }
        Control::Unsubscribe { user, room } => {
            let reached = change_rooms(shared, &user, &room, Change::Unsubscribe).await;
            debug!(%user, %room, connections = reached, "Unsubscribed by the server API");
            reached
        }
        Control::Rooms { prefix } => {
            let (rooms, truncated) = shared.hub.counts(&prefix, MAX_GATEWAY_ROOMS);
            answer.rooms = rooms
                .into_iter()
                .map(|(room, n)| RoomCount {
                    room,
                    subscribers: n as u64,
                })
                .collect();
            answer.truncated = truncated;
            0
        }
        Control::Connections { user } => {
            let mut conns = connections(shared, &user);
            // One NATS message carries the answer: at most [`ANSWER_BYTES`] of it.
            let mut bytes = 0;
            let fits = conns
                .iter()
                .take_while(|c| {
                    bytes += 128 + c.rooms.iter().map(|r| r.len() + 3).sum::<usize>();
                    bytes <= ANSWER_BYTES
                })
                .count();
            answer.truncated = fits < conns.len();
            conns.truncate(fits);
            answer.conns = conns;
            answer.conns.len() as u64
        }
    };
    answer
}

/// `user`'s connections on this gateway, and its polling sessions between polls.
fn connections(shared: &Shared, user: &str) -> Vec<Connection> {
    let registered = shared.conns.ids_of_user(user);
    let ids: Vec<u64> = registered.iter().map(|(id, _)| *id).collect();
    let mut rooms = shared.hub.rooms_of(&ids);
    let gateway = &shared.gateway_id;
    let mut conns: Vec<Connection> = registered
        .into_iter()
        .map(|(id, c)| Connection {
            conn: format!("{gateway}-{id:x}"),
            gateway: gateway.clone(),
            transport: c.transport.to_owned(),
            since: c.since,
            rooms: rooms.remove(&id).unwrap_or_default(),
        })
        .collect();
    conns.extend(shared.presence.polls.sessions_of(user).into_iter().map(|s| Connection {
        conn: s.conn,
        gateway: gateway.clone(),
        transport: "poll".to_owned(),
        since: s.since,
        rooms: s.rooms,
    }));
    conns
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Subscribe { presence: bool },
    Unsubscribe,
}

/// Subscribes every connection of `user` on this gateway to `room`, or takes it from them:
/// WebSocket sessions through their mailbox, SSE streams and long-polls through their
/// queue, polling sessions at their next poll. Each is subscribed at the room's last seq as
/// the command came, whenever it gets there: an event published once the command is
/// answered reaches every connection it reached.
async fn change_rooms(shared: &Shared, user: &str, room: &str, change: Change) -> u64 {
    let conns = shared.conns.of_user(user);
    let polls = &shared.presence.polls;
    let has_sessions = polls.has_sessions(user);
    if conns.is_empty() && !has_sessions {
        return 0;
    }
    let name: Arc<str> = Arc::from(room);
    // Where a poller starts reading the room: its live tail now (read once, only for them).
    let mut tail = None;
    let mut reached = 0;
    for c in &conns {
        let posted = match (change, &c.mail) {
            (Change::Subscribe { presence }, Some(mail)) => mail.post(Command::Subscribe {
                room: room.to_owned(),
                presence,
                since: live_tail(shared, room, &mut tail).await,
            }),
            (Change::Unsubscribe, Some(mail)) => mail.post(Command::Unsubscribe { room: room.to_owned() }),
            (Change::Subscribe { .. }, None) => {
                let Some(seq) = live_tail(shared, room, &mut tail).await else {
                    continue;
                };
                let content = Content::Subscribed {
                    room: Arc::clone(&name),
                    seq,
                };
                c.out.push(Item {
                    bytes: Bytes::new(),
                    content,
                }) == Pushed::Queued
            }
            (Change::Unsubscribe, None) => {
                let content = Content::Unsubscribed(Arc::clone(&name));
                c.out.push(Item {
                    bytes: Bytes::new(),
                    content,
                }) == Pushed::Queued
            }
        };
        reached += u64::from(posted);
    }
    if has_sessions {
        let pending = match change {
            Change::Subscribe { .. } => live_tail(shared, room, &mut tail).await.map(|seq| {
                Pending::Subscribed(Subscribed {
                    room: room.to_owned(),
                    seq,
                })
            }),
            Change::Unsubscribe => Some(Pending::Unsubscribed(room.to_owned())),
        };
        if let Some(p) = pending {
            reached += polls.post(user, p);
        }
    }
    reached
}

/// Where the connections a `subscribe` reaches start in the room, read once per command: its
/// last seq (one before it in a last-value namespace, whose newest event a new subscriber
/// gets); `None` if the stream does not answer within [`TAIL_WAIT`].
async fn live_tail(shared: &Shared, room: &str, tail: &mut Option<Option<u64>>) -> Option<u64> {
    if tail.is_none() {
        let last = tokio::time::timeout(TAIL_WAIT, shared.hub.last_seq(room)).await;
        let last = last.ok().and_then(Result::ok);
        let back = u64::from(shared.last_value(room));
        *tail = Some(last.map(|seq| seq.saturating_sub(back)));
    }
    tail.flatten()
}

/// How long a command waits for a room's last seq: the gateway runs commands one at a time,
/// and fanout hears from it within a second or names it missing.
const TAIL_WAIT: Duration = Duration::from_millis(500);

/// Ends every connection of `user` on this gateway: a `disconnect` frame, then (WebSocket)
/// a close frame with its code and reason; polling sessions get it in their next answer.
fn disconnect(shared: &Shared, user: &str, frame: Disconnect) -> u64 {
    let conns = shared.conns.of_user(user);
    let frame = Arc::new(frame);
    let closed = close_all(&conns, &frame);
    let presence = &shared.presence;
    let remember = shared.config.poll_session_ttl;
    let sessions = presence.polls.disconnect(&presence.tracker, user, &frame, remember);
    closed + sessions
}

/// Sends each of `conns` the `disconnect` frame (and a WebSocket its close); how many.
fn close_all(conns: &[Registered], frame: &Arc<Disconnect>) -> u64 {
    let code = CloseCode(frame.code);
    let close = close_frame_with(code, &frame.reason);
    for c in conns {
        let encoded = encode_for(c.format, &ServerFrame::Disconnect((**frame).clone()));
        match c.format {
            Format::WebSocket(..) => {
                c.out.push_frame(encoded);
                // The close frame is queued: the writer sends it and ends the connection.
                c.out.push_frame(close.clone());
                crate::metrics::close(code.0);
            }
            Format::Bare => {
                c.out.push(Item {
                    bytes: encoded,
                    content: Content::Disconnect(Arc::clone(frame)),
                });
            }
        }
        c.out.close(None);
    }
    conns.len() as u64
}

/// Follows the revocation bucket (fanout creates it; until then, retries).
async fn revocations(shared: Weak<Shared>, upstream: Arc<Upstream>) {
    let bucket = upstream.subjects().revocation_bucket();
    let mut warned = false;
    loop {
        match upstream.watch_bucket(&bucket).await {
            Ok(mut watch) => {
                warned = false;
                loop {
                    let entry = tokio::select! {
                        e = watch.next() => e,
                        _ = tokio::time::sleep(RETRY) => {
                            if shared.strong_count() == 0 {
                                return;
                            }
                            continue;
                        }
                    };
                    let Some(shared) = shared.upgrade() else { return };
                    match entry {
                        Some(Ok(entry)) => follow(&shared, &entry.key, entry.operation, &entry.value, SWEEP_AFTER),
                        Some(Err(e)) => {
                            debug!(error = %e, "Revocation watch failed; watching again");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => {
                if !warned {
                    debug!(error = %e, %bucket, "Revocation bucket not readable yet; retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
        if shared.strong_count() == 0 {
            return;
        }
    }
}

/// How long after a revocation reaches a gateway through the bucket it closes the user's
/// connections the revocation's command did not: fanout writes the bucket before it sends
/// the command, so this leaves the command time to close them first.
const SWEEP_AFTER: Duration = Duration::from_secs(2);

/// A revocation this recent is swept for even when the user has no connection here yet: one
/// may be registering, its token checked just before the revocation arrived.
const SWEEP_RECENT_MS: u64 = 10_000;

/// The close of an entry that does not say its own (written before entries carried it).
fn revoked_frame() -> Disconnect {
    Disconnect {
        code: herald_proto::api::DEFAULT_DISCONNECT_CODE,
        reason: "revoked".into(),
        reconnect: false,
    }
}

/// Applies one entry of the revocation bucket. A revocation of a user with connections here
/// (or a recent one) also closes, `sweep_after` later, the user's connections still open
/// whose tokens the revocations then refuse, with the entry's `disconnect`: the ones a
/// missed command left.
fn follow(shared: &Arc<Shared>, key: &str, op: Operation, value: &[u8], sweep_after: Duration) {
    let Some(user) = user_of_revocation_key(key) else {
        return debug!(%key, "Revocation entry with a foreign key ignored");
    };
    let revocations = shared.auth.revocations();
    match op {
        Operation::Put => match serde_json::from_slice::<Revocation>(value) {
            Ok(r) => {
                let now = now_ms();
                revocations.set(&user, &r, now);
                let recent = r.before.saturating_add(SWEEP_RECENT_MS) > now;
                if now < r.until && (recent || !shared.conns.of_user(&user).is_empty()) {
                    let close = r.close.unwrap_or_else(revoked_frame);
                    let shared = Arc::downgrade(shared);
                    tokio::spawn(async move {
                        tokio::time::sleep(sweep_after).await;
                        if let Some(shared) = shared.upgrade() {
                            sweep(&shared, &user, close);
                        }
                    });
                }
            }
            Err(e) => debug!(%user, error = %e, "Undecodable revocation ignored"),
        },
        Operation::Delete | Operation::Purge => revocations.remove(&user),
    }
}

/// Closes `user`'s open connections whose tokens are refused now (a revocation lifted in the
/// meantime closes none) with `close`.
fn sweep(shared: &Shared, user: &str, close: Disconnect) {
    let now = now_ms();
    let revocations = shared.auth.revocations();
    let stale: Vec<Registered> = shared
        .conns
        .of_user(user)
        .into_iter()
        .filter(|c| revocations.refuses(user, c.iat, now) && !c.out.is_closing())
        .collect();
    if !stale.is_empty() {
        let closed = close_all(&stale, &Arc::new(close));
        warn!(%user, connections = closed, "Closed connections a revocation reached only through its bucket");
    }
}
