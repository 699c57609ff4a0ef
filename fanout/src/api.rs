//! The server API on NATS: `herald.api.<method>` requests from app backends, in a queue
//! group (one instance answers each request). A method that acts on connections sends its
//! command to every gateway on `herald.sys.ctl` and answers once every gateway heard from
//! lately has answered, or after [`GATEWAY_WAIT`] with the silent ones named.
//!
//! - `disconnect` ([`DisconnectRequest`]): with `revoke`, the revocation is stored first
//!   (the revocation bucket, which every gateway follows), so that a client the command
//!   closes cannot come back with its old token.
//! - `subscribe` / `unsubscribe` ([`SubscribeRequest`], [`UnsubscribeRequest`]): the grant is
//!   stored (or deleted) in the grant bucket first, so that a client the command reaches may
//!   subscribe to the room again after a reconnect, on any gateway.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, kv};
use async_nats::Client;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::api::{
    self, grant_key, method, revocation_key, ApiError, Connection, ConnectionsRequest, ConnectionsResult,
    DisconnectRequest, Grant, HistoryRead, HistoryRequest, HistoryResult, PresenceRequest, PublishRequest,
    PublishResult, Published, Reached, Revocation, RoomCount, RoomsRequest, RoomsResult, SubscribeRequest,
    UnsubscribeRequest,
};
use herald_proto::frame::{Disconnect, EventRef};
use herald_proto::http::ErrorBody;
use herald_proto::subject::{Partitions, Subjects};
use herald_proto::sys::{Control, ControlReply};
use herald_proto::ErrorCode;
use herald_proto::{header, room, Codec};
use herald_service::{now_ms, stream};
use serde_json::value::RawValue;
use tokio::sync::{Notify, OnceCell, Semaphore};
use tracing::{debug, info, warn};

use crate::intake::Intake;
use crate::metric;

/// Queue group of the API subjects: one instance answers each request.
const QUEUE: &str = "herald-fanout";

/// The longest wait for the gateways' answers to a command.
pub(crate) const GATEWAY_WAIT: Duration = Duration::from_secs(1);
/// With no gateway heard from lately, how long a command waits for one it does not know of.
const UNKNOWN_GATEWAY_WAIT: Duration = Duration::from_millis(200);
/// Requests handled at once; past it, a request is answered `unavailable` at once.
const IN_FLIGHT: usize = 64;
/// The longest wait for the revocation bucket to store an entry.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// What the API needs.
pub(crate) struct Settings {
    pub client: Client,
    pub subjects: Subjects,
    /// Which gateways were heard from lately.
    pub intake: Intake,
    pub gateway_timeout: Duration,
    /// How long a revocation lasts.
    pub revocation_ttl: Duration,
    pub replicas: usize,
    /// Where rooms are stored (history reads).
    pub partitions: Partitions,
    /// The rooms' namespaces: an API publish gives its events their namespace's lifetime and
    /// trims the room to its namespace's history size.
    pub namespaces: Arc<herald_service::namespaces::Namespaces>,
    /// The stream's `--history-size`.
    pub history_size: u64,
}

/// How often, and how far apart, a backwards `history` read asks again when a replica behind
/// the others finds nothing older where the room has events.
const LAGGING_RETRIES: usize = 3;
const LAGGING_PAUSE: Duration = Duration::from_millis(50);

/// Most bytes of event data one `history` answer holds (NATS's default payload limit is
/// 1 MiB; the frames add their fields).
const HISTORY_BYTES: usize = 512 * 1024;

/// The gateways' answers to one command.
struct Gathered {
    replies: Vec<ControlReply>,
    /// Gateways heard from lately that did not answer.
    missing: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum Bucket {
    Revocations,
    Grants,
}

/// `{"result": …}`.
fn ok<T: serde::Serialize>(result: &T) -> Bytes {
    #[derive(serde::Serialize)]
    struct Wrapped<'a, T> {
        result: &'a T,
    }
    encode(&Wrapped { result })
}

fn encode(body: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(body).expect("plain data serializes"))
}

/// An `event` frame of a stored event, as clients get it.
fn history_event(room: &str, seq: u64, prev: u64, ts: u64, headers: &HeaderMap, payload: &[u8]) -> Box<RawValue> {
    let text = |name: &str| headers.get(name).map(|v| v.as_str()).filter(|s| !s.is_empty());
    let frame = Codec::Json.encode_event(EventRef {
        room,
        seq,
        prev,
        ts,
        kind: text(header::HERALD_TYPE),
        from: text(header::HERALD_FROM),
        payload,
    });
    let frame = String::from_utf8(frame).expect("JSON frames are UTF-8");
    RawValue::from_string(frame).expect("an encoded frame is JSON")
}

fn unavailable(e: &str) -> ApiError {
    warn!(error = %e, "API request failed");
    ApiError::new(ErrorCode::Unavailable, "NATS or the event stream is unavailable; retry")
}

fn unavailable_store(e: &str) -> ApiError {
    warn!(error = %e, "Bucket not written");
    ApiError::new(ErrorCode::Unavailable, "the change could not be stored; retry")
}

/// A bucket write, within [`STORE_WAIT`].
async fn store_op<T, E: std::fmt::Display>(
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<(), ApiError> {
    match tokio::time::timeout(STORE_WAIT, op).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unavailable_store(&e.to_string())),
        Err(_) => Err(unavailable_store("timed out")),
    }
}

/// The server API: answers requests from NATS (`herald.api.<method>`) and from the HTTP
/// listener ([`crate::web`]) alike, at most [`IN_FLIGHT`] at once between them.
pub(crate) struct Api {
    api: Settings,
    revocations: OnceCell<kv::Store>,
    grants: OnceCell<kv::Store>,
    permits: Arc<Semaphore>,
}

/// More than [`IN_FLIGHT`] requests are in hand.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Busy;

impl Api {
    pub(crate) fn new(settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            api: settings,
            revocations: OnceCell::new(),
            grants: OnceCell::new(),
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
        })
    }

    /// Answers NATS requests until `stop`; then stops taking them (another instance's
    /// queue members do) and lets those in hand finish.
    pub(crate) async fn serve_nats(self: Arc<Self>, stop: Arc<Notify>) {
        let stopped = stop.notified();
        tokio::pin!(stopped);
        let mut subs = Vec::new();
        for m in method::ALL {
            let subject = self.api.subjects.api(m);
            let sub = loop {
                // One subscription per method: a wildcard would share the queue group with
                // the presence task's `herald.api.status` and take its requests.
                match self.api.client.queue_subscribe(subject.clone(), QUEUE.to_owned()).await {
                    Ok(sub) => break sub,
                    Err(e) => warn!(%subject, error = %e, "API subscription failed; retrying"),
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            };
            subs.push(sub.map(move |msg| (m, msg)));
        }
        let mut requests = futures_util::stream::select_all(subs);
        info!(methods = ?method::ALL, "Answering the server API on NATS");
        loop {
            let (m, msg) = tokio::select! {
                _ = &mut stopped => break,
                next = requests.next() => match next {
                    Some(next) => next,
                    None => break,
                },
            };
            let Some(reply) = msg.reply.clone() else { continue };
            let this = Arc::clone(&self);
            let answer = async move {
                let answer = match this.call(m, &msg.payload).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(e)) => encode(&ErrorBody::new(e.code, e.message)),
                    Err(Busy) => encode(&ErrorBody::new(ErrorCode::Unavailable, BUSY)),
                };
                this.send(reply.to_string(), answer).await;
            };
            tokio::spawn(answer);
        }
        // Stop taking requests (another instance's queue members take them); those in hand
        // finish (each within a few seconds).
        drop(requests);
        self.drain().await;
    }

    /// Waits (a few seconds at most) for the requests in hand.
    pub(crate) async fn drain(&self) {
        let all = self.permits.acquire_many(IN_FLIGHT as u32);
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
    }

    /// Answers a request to method `m` (one of [`method::ALL`]): the encoded `{"result": …}`,
    /// or why it was refused; [`Busy`] when [`IN_FLIGHT`] requests are in hand already.
    pub(crate) async fn call(&self, m: &str, body: &[u8]) -> Result<Result<Bytes, ApiError>, Busy> {
        let Ok(_permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            metrics::counter!(metric::API_BUSY).increment(1);
            return Err(Busy);
        };
        metrics::counter!(metric::REQUESTS, "kind" => method_label(m)).increment(1);
        Ok(self.handle(m, body).await)
    }
}

/// The answer to a request refused for [`Busy`].
pub(crate) const BUSY: &str = "too many API requests in flight; retry";

/// The metric label of a method name (`unknown` for none of ours).
fn method_label(m: &str) -> &'static str {
    method::ALL.into_iter().find(|known| *known == m).unwrap_or("unknown")
}

impl Api {
    async fn send(&self, reply: String, payload: Bytes) {
        if let Err(e) = self.api.client.publish(reply, payload).await {
            debug!(error = %e, "API answer not sent");
        }
    }

    async fn handle(&self, m: &str, body: &[u8]) -> Result<Bytes, ApiError> {
        let result = |r: Result<Bytes, ApiError>| r;
        match m {
            method::DISCONNECT => self.disconnect(body).await.map(|r| ok(&r)),
            method::SUBSCRIBE => self.subscribe(body).await.map(|r| ok(&r)),
            method::UNSUBSCRIBE => self.unsubscribe(body).await.map(|r| ok(&r)),
            method::PUBLISH => self.publish(body).await.map(|r| ok(&r)),
            method::HISTORY => self.history(body).await.map(|r| ok(&r)),
            method::PRESENCE => self.presence(body).await.map(|r| ok(&r)),
            method::ROOMS => self.rooms(body).await.map(|r| ok(&r)),
            method::CONNECTIONS => self.connections(body).await.map(|r| ok(&r)),
            _ => result(Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no method `{}`", herald_proto::text::printable(m)),
            ))),
        }
    }

    async fn publish(&self, body: &[u8]) -> Result<PublishResult, ApiError> {
        let req = api::decode::<PublishRequest>(body)?;
        let rooms = req.rooms()?;
        let js = jetstream::new(self.api.client.clone());
        let payload = Bytes::copy_from_slice(req.data.get().as_bytes());
        // Every room's publish is sent before any ack is awaited: one round trip in all.
        let mut acks = Vec::with_capacity(rooms.len());
        let mut published = Vec::with_capacity(rooms.len());
        for room in &rooms {
            if self.api.namespaces.of(room).ephemeral {
                // Never stored: on the live subject, seq 0.
                let mut headers = HeaderMap::new();
                headers.insert(header::HERALD_EPHEMERAL, "1");
                if let Some(kind) = &req.kind {
                    headers.insert(header::HERALD_TYPE, kind.as_str());
                }
                self.api
                    .client
                    .publish_with_headers(self.api.subjects.live_room(room), headers, payload.clone())
                    .await
                    .map_err(|e| unavailable(&e.to_string()))?;
                published.push(Published {
                    room: room.clone(),
                    seq: 0,
                    repeat: false,
                });
                continue;
            }
            let mut headers = HeaderMap::new();
            if let Some(kind) = &req.kind {
                headers.insert(header::HERALD_TYPE, kind.as_str());
            }
            if let Some(key) = &req.key {
                headers.insert(header::NATS_MSG_ID, api::publish_msg_id(room, key).as_str());
            }
            if let Some(ttl) = self.api.namespaces.of(room).history_ttl {
                headers.insert(header::NATS_TTL, header::ttl(ttl).as_str());
            }
            let sent = js
                .publish_with_headers(self.api.subjects.room(room), headers, payload.clone())
                .await
                .map_err(|e| unavailable(&e.to_string()))?;
            acks.push((room.clone(), sent));
        }
        for (room, ack) in acks {
            let ack = tokio::time::timeout(STORE_WAIT, ack)
                .await
                .map_err(|_| unavailable("timed out"))?
                .map_err(|e| unavailable(&e.to_string()))?;
            let keep = self.api.namespaces.of(&room).history_size;
            if let Some(keep) = keep.filter(|k| *k < self.api.history_size) {
                self.trim(&js, &room, keep).await;
            }
            published.push(Published {
                room,
                seq: ack.sequence,
                repeat: ack.duplicate,
            });
        }
        published.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(match (req.room.is_some(), published.pop()) {
            (true, Some(one)) => PublishResult::One(one),
            (_, last) => {
                published.extend(last);
                PublishResult::Many { rooms: published }
            }
        })
    }

    /// Keeps only the room's newest `keep` events (its namespace's `history_size`).
    async fn trim(&self, js: &jetstream::Context, room: &str, keep: u64) {
        let partitions = &self.api.partitions;
        let purge = async {
            let stream = js.get_stream_no_info(partitions.stream_of(room)).await?;
            stream
                .purge()
                .filter(partitions.stored_subject(room))
                .keep(keep)
                .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        if let Err(e) = tokio::time::timeout(STORE_WAIT, purge)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
        {
            debug!(%room, error = %e, "History not trimmed");
        }
    }

    async fn history(&self, body: &[u8]) -> Result<HistoryResult, ApiError> {
        let req = api::decode::<HistoryRequest>(body)?;
        let read = req.checked()?;
        if !self.api.namespaces.of(&req.room).history {
            // A namespace that replays nothing: no history to read.
            return Ok(HistoryResult {
                room: req.room,
                events: Vec::new(),
                more: false,
            });
        }
        let (events, more) = match read {
            HistoryRead::Forward { since, limit } => self.history_forward(&req.room, since, limit).await?,
            HistoryRead::Backward { before, last } => self.history_back(&req.room, before, last).await?,
        };
        Ok(HistoryResult {
            room: req.room,
            events,
            more,
        })
    }

    /// Up to `limit` events of `room` after seq `since`, oldest first, and whether more follow.
    async fn history_forward(
        &self,
        room: &str,
        since: u64,
        limit: usize,
    ) -> Result<(Vec<Box<RawValue>>, bool), ApiError> {
        let partitions = &self.api.partitions;
        let js = jetstream::new(self.api.client.clone());
        let stream = js
            .get_stream_no_info(partitions.stream_of(room))
            .await
            .map_err(|e| unavailable(&e.to_string()))?;
        let subject = partitions.stored_subject(room);
        let (mut events, mut prev, mut bytes) = (Vec::new(), since, 0);
        while let Some(from) = prev.checked_add(1) {
            let next = stream.direct_get_next_for_subject(&subject, Some(from));
            let m = match tokio::time::timeout(STORE_WAIT, next).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) if matches!(e.kind(), DirectGetErrorKind::NotFound) => break,
                Ok(Err(e)) => return Err(unavailable(&e.to_string())),
                Err(_) => return Err(unavailable("timed out")),
            };
            if events.len() == limit || (bytes > 0 && bytes + m.payload.len() > HISTORY_BYTES) {
                return Ok((events, true));
            }
            bytes += m.payload.len();
            let ts = (m.time.unix_timestamp_nanos().max(0) / 1_000_000) as u64;
            events.push(history_event(room, m.sequence, prev, ts, &m.headers, &m.payload));
            prev = m.sequence;
        }
        Ok((events, false))
    }

    /// The newest `last` events of `room` before seq `before`, oldest first, and whether older
    /// ones are stored: read backwards one direct get at a time, plus one more for the oldest's
    /// `prev`.
    async fn history_back(
        &self,
        room: &str,
        before: Option<u64>,
        last: usize,
    ) -> Result<(Vec<Box<RawValue>>, bool), ApiError> {
        let partitions = &self.api.partitions;
        let (client, name, subject) = (
            &self.api.client,
            partitions.stream_of(room),
            partitions.stored_subject(room),
        );
        let fail = |e: stream::LastsError| unavailable(&e.to_string());
        // The room's first stored seq, read once a lookup finds nothing older.
        let mut first: Option<u64> = None;
        // Direct gets go to any replica, and one behind the others finds nothing at a seq it
        // has not reached: a lookup that comes back empty while the room's first event is at
        // or before `up_to` is asked again, a few times, before the read gives up.
        let mut at_or_before = async |up_to: Option<u64>| -> Result<Option<stream::Stored>, ApiError> {
            for retry in 0..=LAGGING_RETRIES {
                let found = stream::stored_at_or_before(client, &name, &subject, up_to, STORE_WAIT)
                    .await
                    .map_err(fail)?;
                let Some(up_to) = up_to.filter(|_| found.is_none()) else {
                    return Ok(found);
                };
                let first_seq = match first {
                    Some(f) => f,
                    None => *first.insert(self.first_seq(&name, &subject).await?),
                };
                if first_seq > up_to {
                    return Ok(None);
                }
                if retry < LAGGING_RETRIES {
                    tokio::time::sleep(LAGGING_PAUSE).await;
                }
            }
            Err(unavailable("a replica of the event stream is behind; retry"))
        };
        // The newest first: a seq past the stream's last finds nothing, so `before` applies
        // only when it cuts into the room.
        let mut next = at_or_before(None).await?;
        if let (Some(m), Some(before)) = (&next, before) {
            if m.seq >= before {
                next = match before - 1 {
                    0 => None,
                    up_to => at_or_before(Some(up_to)).await?,
                };
            }
        }
        let mut newest_first: Vec<stream::Stored> = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        while let Some(m) = next.take() {
            if newest_first.len() == last || (bytes > 0 && bytes + m.payload.len() > HISTORY_BYTES) {
                more = true;
                next = Some(m);
                break;
            }
            bytes += m.payload.len();
            if let Some(up_to) = m.seq.checked_sub(1).filter(|s| *s > 0) {
                next = at_or_before(Some(up_to)).await?;
            }
            newest_first.push(m);
        }
        // The event before the oldest read, if any, is that one's `prev`.
        let mut prev = next.map_or(0, |m| m.seq);
        let mut events = Vec::with_capacity(newest_first.len());
        for m in newest_first.iter().rev() {
            events.push(history_event(room, m.seq, prev, m.stored_ms, &m.headers, &m.payload));
            prev = m.seq;
        }
        Ok((events, more))
    }

    /// The seq of the first event stored under `subject` in stream `name` (`u64::MAX`: none).
    async fn first_seq(&self, name: &str, subject: &str) -> Result<u64, ApiError> {
        let js = jetstream::new(self.api.client.clone());
        let stream = js
            .get_stream_no_info(name)
            .await
            .map_err(|e| unavailable(&e.to_string()))?;
        match tokio::time::timeout(STORE_WAIT, stream.direct_get_first_for_subject(subject)).await {
            Ok(Ok(m)) => Ok(m.sequence),
            Ok(Err(e)) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(u64::MAX),
            Ok(Err(e)) => Err(unavailable(&e.to_string())),
            Err(_) => Err(unavailable("timed out")),
        }
    }

    /// The presence task's snapshot, asked as any backend asks it.
    async fn presence(&self, body: &[u8]) -> Result<Box<RawValue>, ApiError> {
        let req = api::decode::<PresenceRequest>(body)?;
        room::validate(&req.room).map_err(|e| ApiError::bad_request(format!("`room`: {e}")))?;
        let ask = self
            .api
            .client
            .request(self.api.subjects.api_presence(&req.room), Bytes::new());
        let reply = tokio::time::timeout(STORE_WAIT, ask)
            .await
            .map_err(|_| unavailable("presence timed out"))?
            .map_err(|e| unavailable(&e.to_string()))?;
        let text = String::from_utf8(reply.payload.to_vec()).map_err(|e| unavailable(&e.to_string()))?;
        RawValue::from_string(text).map_err(|e| unavailable(&e.to_string()))
    }

    async fn subscribe(&self, body: &[u8]) -> Result<Reached, ApiError> {
        let req = api::decode::<SubscribeRequest>(body)?.checked()?;
        let grant = Bytes::from(serde_json::to_vec(&Grant { at: now_ms() }).expect("plain data serializes"));
        let store = self.bucket(&self.grants, Bucket::Grants).await?;
        store_op(store.put(grant_key(&req.user, &req.room), grant)).await?;
        let reached = self
            .command(&Control::Subscribe {
                user: req.user.clone(),
                room: req.room.clone(),
                presence: req.presence,
            })
            .await?;
        info!(user = %req.user, room = %req.room, connections = reached.connections, "Subscribed by the server API");
        Ok(reached)
    }

    async fn unsubscribe(&self, body: &[u8]) -> Result<Reached, ApiError> {
        let req = api::decode::<UnsubscribeRequest>(body)?.checked()?;
        let store = self.bucket(&self.grants, Bucket::Grants).await?;
        store_op(store.delete(grant_key(&req.user, &req.room))).await?;
        let reached = self
            .command(&Control::Unsubscribe {
                user: req.user.clone(),
                room: req.room.clone(),
            })
            .await?;
        info!(user = %req.user, room = %req.room, connections = reached.connections, "Unsubscribed by the server API");
        Ok(reached)
    }

    async fn disconnect(&self, body: &[u8]) -> Result<Reached, ApiError> {
        let req = api::decode::<DisconnectRequest>(body)?.checked()?;
        let now = now_ms();
        let (code, reason) = (
            req.code.unwrap_or(api::DEFAULT_DISCONNECT_CODE),
            req.reason.unwrap_or_default(),
        );
        let revocation = req.revoke.then(|| Revocation {
            before: now,
            until: now.saturating_add(self.api.revocation_ttl.as_millis() as u64),
            close: Some(Disconnect {
                code,
                reason: reason.clone(),
                reconnect: req.reconnect,
            }),
        });
        if let Some(r) = &revocation {
            self.store_revocation(&req.user, r.clone()).await?;
        }
        let revoked_before = revocation.as_ref().map(|r| r.before);
        let command = Control::Disconnect {
            user: req.user.clone(),
            code,
            reason,
            reconnect: req.reconnect,
            revocation,
        };
        let answers = self.command(&command).await?;
        info!(
            user = %req.user,
            connections = answers.connections,
            gateways = answers.gateways,
            missing = answers.missing.len(),
            revoke = req.revoke,
            "Disconnect"
        );
        Ok(Reached {
            revoked_before,
            ..answers
        })
    }

    /// Stores `user`'s revocation in the bucket (created on first use).
    async fn store_revocation(&self, user: &str, r: Revocation) -> Result<(), ApiError> {
        let store = self.bucket(&self.revocations, Bucket::Revocations).await?;
        let value = Bytes::from(serde_json::to_vec(&r).expect("plain data serializes"));
        store_op(store.put(revocation_key(user), value)).await
    }

    /// One of the buckets, opened (or created) on first use.
    async fn bucket<'a>(&self, cell: &'a OnceCell<kv::Store>, which: Bucket) -> Result<&'a kv::Store, ApiError> {
        cell.get_or_try_init(|| self.open_bucket(which))
            .await
            .map_err(|e| unavailable_store(&e))
    }

    async fn open_bucket(&self, which: Bucket) -> Result<kv::Store, String> {
        let js = jetstream::new(self.api.client.clone());
        let (name, description, max_age) = match which {
            Bucket::Revocations => (
                self.api.subjects.revocation_bucket(),
                "Herald token revocations (herald.api.disconnect with revoke)",
                self.api.revocation_ttl,
            ),
            Bucket::Grants => (
                self.api.subjects.grant_bucket(),
                "Herald server-side grants (herald.api.subscribe)",
                Duration::ZERO,
            ),
        };
        let open = async {
            if let Ok(store) = js.get_key_value(&name).await {
                return Ok(store);
            }
            let config = kv::Config {
                bucket: name.clone(),
                description: description.to_owned(),
                history: 1,
                max_age,
                num_replicas: self.api.replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            };
            match js.create_key_value(config).await {
                Ok(store) => Ok(store),
                // Another instance created it meanwhile.
                Err(e) => js.get_key_value(&name).await.map_err(|_| e.to_string()),
            }
        };
        tokio::time::timeout(STORE_WAIT, open)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    }

    /// Sends `command` to every gateway and adds up how many connections it reached.
    async fn command(&self, command: &Control) -> Result<Reached, ApiError> {
        let gathered = self.gather(command).await?;
        Ok(Reached {
            connections: gathered.replies.iter().map(|r| r.connections).sum(),
            gateways: gathered.replies.len() as u64,
            missing: gathered.missing,
            revoked_before: None,
        })
    }

    /// Sends `command` to every gateway and collects their answers, one per gateway, until
    /// every gateway heard from lately has answered or [`GATEWAY_WAIT`] has passed.
    async fn gather(&self, command: &Control) -> Result<Gathered, ApiError> {
        let client = &self.api.client;
        let unavailable = |e: String| {
            warn!(error = %e, "Command not sent");
            ApiError::new(ErrorCode::Unavailable, "NATS is unavailable; retry")
        };
        let expected: BTreeSet<String> = self
            .api
            .intake
            .heard(Instant::now(), self.api.gateway_timeout)
            .into_iter()
            .map(|(gw, _)| gw)
            .collect();
        let inbox = client.new_inbox();
        let mut answers = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let payload = Bytes::from(serde_json::to_vec(command).expect("plain data serializes"));
        client
            .publish_with_reply(self.api.subjects.sys_control(), inbox, payload)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let wait = if expected.is_empty() {
            UNKNOWN_GATEWAY_WAIT
        } else {
            GATEWAY_WAIT
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut answered = BTreeSet::new();
        let mut replies = Vec::new();
        while !expected.is_subset(&answered) || expected.is_empty() {
            let Ok(Some(msg)) = tokio::time::timeout_at(deadline, answers.next()).await else {
                break;
            };
            let Ok(a) = serde_json::from_slice::<ControlReply>(&msg.payload) else {
                continue;
            };
            if answered.insert(a.gw.clone()) {
                replies.push(a);
            }
        }
        let _ = answers.unsubscribe().await;
        Ok(Gathered {
            replies,
            missing: expected.difference(&answered).cloned().collect(),
        })
    }

    async fn rooms(&self, body: &[u8]) -> Result<RoomsResult, ApiError> {
        let req = api::decode::<RoomsRequest>(body)?;
        let limit = req.checked_limit()?;
        let gathered = self.gather(&Control::Rooms { prefix: req.prefix }).await?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut truncated = false;
        for reply in &gathered.replies {
            truncated |= reply.truncated;
            for r in &reply.rooms {
                *counts.entry(r.room.clone()).or_default() += r.subscribers;
            }
        }
        let mut rooms: Vec<RoomCount> = counts
            .into_iter()
            .map(|(room, subscribers)| RoomCount { room, subscribers })
            .collect();
        rooms.sort_unstable_by(|a, b| b.subscribers.cmp(&a.subscribers).then_with(|| a.room.cmp(&b.room)));
        truncated |= rooms.len() > limit;
        rooms.truncate(limit);
        Ok(RoomsResult {
            rooms,
            truncated,
            gateways: gathered.replies.len() as u64,
            missing: gathered.missing,
        })
    }

    async fn connections(&self, body: &[u8]) -> Result<ConnectionsResult, ApiError> {
        let req = api::decode::<ConnectionsRequest>(body)?;
        herald_proto::text::validate_user(&req.user).map_err(|e| ApiError::bad_request(format!("`user`: {e}")))?;
        let gathered = self.gather(&Control::Connections { user: req.user }).await?;
        let mut connections: Vec<Connection> = gathered.replies.iter().flat_map(|r| r.conns.iter().cloned()).collect();
        connections.sort_unstable_by(|a, b| a.since.cmp(&b.since).then_with(|| a.conn.cmp(&b.conn)));
        Ok(ConnectionsResult {
            truncated: gathered.replies.iter().any(|r| r.truncated),
            connections,
            gateways: gathered.replies.len() as u64,
            missing: gathered.missing,
        })
    }
}
