//! The server API's reach into this gateway: fanout's commands on `herald.sys.ctl` (each
//! answered with what it reached here), and the revocation bucket, which tells a gateway
//! that starts later (or missed a command) which users' older tokens to refuse.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::api::{user_of_revocation_key, Revocation};
use herald_proto::frame::{Disconnect, ServerFrame};
use herald_proto::sys::{Control, ControlReply};
use herald_proto::CloseCode;
use herald_service::now_ms;
use tracing::{debug, info, warn};

use crate::outbound::{close_frame_with, encode_for, Content, Format, Item};
use crate::state::Shared;
use crate::upstream::Upstream;

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
        let connections = apply(&shared, command);
        if let Some(reply) = msg.reply {
            let answer = ControlReply {
                gw: shared.gateway_id.clone(),
                connections,
            };
            let body = Bytes::from(serde_json::to_vec(&answer).expect("plain data serializes"));
            if let Err(e) = upstream.send(reply.to_string(), body).await {
                debug!(error = %e, "Command answer not sent");
            }
        }
    }
}

/// Carries a command out; returns the connections (and polling sessions) it reached.
pub(crate) fn apply(shared: &Shared, command: Control) -> u64 {
    match command {
        Control::Disconnect {
            user,
            code,
            reason,
            reconnect,
            revocation,
        } => {
            if let Some(r) = revocation {
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
    }
}

/// Ends every connection of `user` on this gateway: a `disconnect` frame, then (WebSocket)
/// a close frame with its code and reason; polling sessions get it in their next answer.
fn disconnect(shared: &Shared, user: &str, frame: Disconnect) -> u64 {
    let code = CloseCode(frame.code);
    let close = close_frame_with(code, &frame.reason);
    let frame = Arc::new(frame);
    let conns = shared.conns.of_user(user);
    for c in &conns {
        let encoded = encode_for(c.format, &ServerFrame::Disconnect((*frame).clone()));
        match c.format {
            Format::WebSocket(_) => {
                c.out.push_frame(encoded);
                // The close frame is queued: the writer sends it and ends the connection.
                c.out.push_frame(close.clone());
                crate::metrics::close(code.0);
            }
            Format::Bare => {
                c.out.push(Item {
                    bytes: encoded,
                    content: Content::Disconnect(Arc::clone(&frame)),
                });
            }
        }
        c.out.close(None);
    }
    let presence = &shared.presence;
    let remember = shared.config.poll_session_ttl;
    let sessions = presence.polls.disconnect(&presence.tracker, user, &frame, remember);
    conns.len() as u64 + sessions
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
                        Some(Ok(entry)) => follow(&shared, &entry.key, entry.operation, &entry.value),
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

/// Applies one entry of the revocation bucket.
fn follow(shared: &Shared, key: &str, op: Operation, value: &[u8]) {
    let Some(user) = user_of_revocation_key(key) else {
        return debug!(%key, "Revocation entry with a foreign key ignored");
    };
    let revocations = shared.auth.revocations();
    match op {
        Operation::Put => match serde_json::from_slice::<Revocation>(value) {
            Ok(r) => revocations.set(&user, r, now_ms()),
            Err(e) => debug!(%user, error = %e, "Undecodable revocation ignored"),
        },
        Operation::Delete | Operation::Purge => revocations.remove(&user),
    }
}
