//! The presence task: gateway messages in, snapshots and status answered, diffs out.
//!
//! Everything runs in one task over one [`State`], fed in arrival order by the
//! [`crate::intake`] task, which also notes each gateway's liveness as its messages arrive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, Message, Subscriber};
use bytes::Bytes;
use herald_proto::backend::{Lifecycle, LifecycleEvent, StatusEvent};
use herald_proto::room;
use herald_proto::subject::Subjects;
use herald_proto::sys::{StatusReply, StatusRequest, SyncRequest};
use herald_service::now_ms;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::intake::{Input, Intake, Requests};
use crate::leader::Leases;
use crate::metric;
use crate::state::{Output, Settings, State};
use crate::Config;

/// Queue group of the request subjects: one instance answers each request.
const QUEUE: &str = "herald-fanout";

pub(crate) struct Tracker {
    pub client: Client,
    pub subjects: Subjects,
    pub leases: Leases,
    /// Set once the first sync window has passed (readiness).
    pub synced: Arc<AtomicBool>,
    /// Shared with the server API, which asks it which gateways are alive.
    pub intake: Intake,
    /// The rooms' namespaces (`presence_counts_above`).
    pub namespaces: Arc<herald_service::namespaces::Namespaces>,
}

impl Tracker {
    pub async fn run(self, config: Config, stop: Arc<Notify>) {
        let mut state = State::new(Settings {
            leave_delay: config.leave_delay,
            large_room: config.large_room,
            namespaces: Arc::clone(&self.namespaces),
            gateway_timeout: config.gateway_timeout,
        });
        let stopped = stop.notified();
        tokio::pin!(stopped);
        let sys = tokio::select! {
            _ = &mut stopped => return,
            sub = self.subscribe(self.subjects.sys_gateways_wildcard(), None) => sub,
        };
        let intake = self.intake.clone();
        let (tx, mut inputs) = tokio::sync::mpsc::unbounded_channel();
        let (requests_tx, requests_rx) = tokio::sync::mpsc::channel(1);
        let stop_intake = Arc::new(Notify::new());
        let intake_task = tokio::spawn(intake.clone().run(
            sys,
            self.subjects.sys_gateway(""),
            requests_rx,
            tx,
            Arc::clone(&stop_intake),
        ));
        let _ = self.client.flush().await;
        let started = Instant::now();
        state.requested_all(started);
        self.publish(self.subjects.sys_sync(), &SyncRequest::default()).await;
        let window = tokio::time::sleep(config.sync_window);
        tokio::pin!(window);
        let mut answering = false;
        let mut tick = tokio::time::interval(config.presence_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        let mut cache = SnapshotCache::new(config.presence_interval);
        // Partitions led at the last tick since the first sync window ended.
        let mut led = vec![false; self.leases.partitions() as usize];
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                // Before the inputs, which may be many: diffs, expiry and lease changes keep
                // their pace whatever arrives.
                _ = tick.tick() => {
                    let now = Instant::now();
                    for (gw, at) in intake.heard(now, config.gateway_timeout) {
                        state.heard(&gw, at);
                    }
                    let outputs = state.tick(now);
                    cache.retain_rooms(&state);
                    for out in outputs {
                        self.emit(out).await;
                    }
                    // A partition just taken over (or led when this instance is first synced):
                    // its rooms get a snapshot, which repairs whatever diffs fell between the
                    // old leader's death and now.
                    let now_led: Vec<bool> =
                        (0..self.leases.partitions()).map(|p| answering && self.leases.leads(p)).collect();
                    if now_led.iter().zip(&led).any(|(now, before)| *now && !before) {
                        for room in state.room_names() {
                            let p = self.leases.partition_of(&room) as usize;
                            if now_led[p] && !led[p] {
                                metrics::counter!(metric::PRESENCE_EVENTS).increment(1);
                                self.publish(self.subjects.presence(&room), &state.snapshot(&room)).await;
                            }
                        }
                    }
                    led = now_led;
                }
                Some(q) = inputs.recv() => {
                    if !intake.taken(&q) {
                        continue;
                    }
                    match q.input {
                        Input::Gateway(msg) => state.on_gateway(msg, Instant::now()),
                        Input::Presence(msg) => self.answer_presence(&mut state, &mut cache, msg).await,
                        Input::Status(msg) => self.answer_status(&state, msg).await,
                    }
                }
                _ = &mut window, if !answering => {
                    let presence = self.subscribe(self.subjects.api_presence_wildcard(), Some(QUEUE)).await;
                    let status = self.subscribe(self.subjects.api_status(), Some(QUEUE)).await;
                    let _ = requests_tx.send(Requests { presence, status }).await;
                    answering = true;
                    self.synced.store(true, Ordering::SeqCst);
                    let t = state.totals();
                    info!(gateways = t.gateways, conns = t.conns, members = t.members, "Presence synced; answering requests");
                }
                _ = gauges.tick() => record(&mut state),
            }
        }
        // Stop answering: another instance's queue member takes the requests.
        stop_intake.notify_one();
        let _ = intake_task.await;
    }

    async fn answer_presence(&self, state: &mut State, cache: &mut SnapshotCache, msg: Message) {
        let Some(reply) = msg.reply else { return };
        let prefix = self.subjects.api_presence("");
        let Some(room) = msg.subject.as_str().strip_prefix(prefix.as_str()) else {
            return;
        };
        metrics::counter!(metric::REQUESTS, "kind" => "presence").increment(1);
        let payload = cache.get(state, room);
        if let Err(e) = self.client.publish(reply, payload).await {
            debug!(error = %e, "Snapshot not sent");
        }
    }

    async fn answer_status(&self, state: &State, msg: Message) {
        let Some(reply) = msg.reply else { return };
        let req = serde_json::from_slice::<StatusRequest>(&msg.payload).unwrap_or_default();
        metrics::counter!(metric::REQUESTS, "kind" => "status").increment(1);
        // As many as one `watch` may name: a longer list is not a gateway's, and its answer
        // would pass NATS's payload limit.
        let users = req
            .users
            .into_iter()
            .take(herald_proto::text::MAX_USERS_PER_OP)
            .map(|user| herald_proto::frame::Status {
                online: state.online(&user),
                user,
            })
            .collect();
        self.publish(reply.to_string(), &StatusReply { users }).await;
    }

    /// Publishes an output if this instance leads its partition (sync requests: always).
    async fn emit(&self, out: Output) {
        let ts = now_ms();
        match out {
            Output::Presence(p) if self.leases.leads_name(&p.room) => {
                metrics::counter!(metric::PRESENCE_EVENTS).increment(1);
                self.publish(self.subjects.presence(&p.room), &p).await;
            }
            Output::Status(s) if self.leases.leads_name(&s.user) && room::validate(&s.user).is_ok() => {
                metrics::counter!(metric::STATUS_EVENTS).increment(1);
                let subject = self.subjects.status(&s.user);
                let body = StatusEvent {
                    user: s.user,
                    online: s.online,
                    ts,
                };
                self.publish(subject, &body).await;
            }
            Output::Lifecycle { room, occupied } if self.leases.leads_name(&room) => {
                metrics::counter!(metric::LIFECYCLE_EVENTS).increment(1);
                let event = if occupied {
                    Lifecycle::Occupied
                } else {
                    Lifecycle::Vacated
                };
                let subject = self.subjects.lifecycle(&room);
                self.publish(subject, &LifecycleEvent { room, event, ts }).await;
            }
            Output::Sync { gw } => {
                debug!(%gw, "Asking a gateway for its snapshot");
                self.publish(self.subjects.sys_sync(), &SyncRequest { gw: Some(gw) })
                    .await;
            }
            Output::Presence(_) | Output::Status(_) | Output::Lifecycle { .. } => {}
        }
    }

    async fn publish(&self, subject: String, body: &impl serde::Serialize) {
        let payload = Bytes::from(serde_json::to_vec(body).expect("serializable"));
        if let Err(e) = self.client.publish(subject, payload).await {
            debug!(error = %e, "Presence output not sent");
        }
    }

    async fn subscribe(&self, subject: String, queue: Option<&str>) -> Subscriber {
        loop {
            let sub = match queue {
                Some(q) => self.client.queue_subscribe(subject.clone(), q.to_owned()).await,
                None => self.client.subscribe(subject.clone()).await,
            };
            match sub {
                Ok(sub) => return sub,
                Err(e) => warn!(%subject, error = %e, "Subscription failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Encoded snapshots of rooms with members. A room that changed is encoded again, except a
/// big one (more than [`SnapshotCache::SMALL`] members) whose entry is younger than the
/// presence interval: however many join a big listed room, its list is encoded at most
/// once per interval. Such a snapshot holds every change up to the last published diff, so
/// the diffs that follow it (which a gateway delivers after it) complete it.
struct SnapshotCache {
    entries: HashMap<String, Cached>,
    interval: Duration,
}

struct Cached {
    payload: Bytes,
    at: Instant,
    stale: bool,
}

impl SnapshotCache {
    const SMALL: u64 = 100;

    fn new(interval: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            interval,
        }
    }

    fn get(&mut self, state: &mut State, room: &str) -> Bytes {
        for touched in state.take_touched() {
            if let Some(c) = self.entries.get_mut(&touched) {
                c.stale = true;
            }
        }
        let encode = |state: &State| Bytes::from(serde_json::to_vec(&state.snapshot(room)).expect("serializable"));
        if !state.has_room(room) {
            self.entries.remove(room);
            return encode(state);
        }
        if let Some(c) = self.entries.get(room) {
            let throttled = c.at.elapsed() < self.interval && state.snapshot_size(room) > Self::SMALL;
            if !c.stale || throttled {
                return c.payload.clone();
            }
        }
        let payload = encode(state);
        let cached = Cached {
            payload: payload.clone(),
            at: Instant::now(),
            stale: false,
        };
        self.entries.insert(room.to_owned(), cached);
        payload
    }

    /// Forgets rooms that have no members any more.
    fn retain_rooms(&mut self, state: &State) {
        self.entries.retain(|room, _| state.has_room(room));
    }
}

fn record(state: &mut State) {
    let t = state.totals();
    metrics::gauge!(metric::GATEWAYS).set(t.gateways as f64);
    metrics::gauge!(metric::ROOMS).set(t.rooms as f64);
    metrics::gauge!(metric::PRESENCE_MEMBERS).set(t.members as f64);
    metrics::gauge!(metric::CONNECTIONS).set(t.conns as f64);
    metrics::gauge!(metric::USERS_ONLINE).set(t.users as f64);
    for d in state.sync_durations.drain(..) {
        metrics::histogram!(metric::SYNC_DURATION).record(d.as_secs_f64());
        metrics::counter!(metric::SYNCS).increment(1);
    }
    metrics::counter!(metric::GATEWAYS_EXPIRED).absolute(state.expired);
}
