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

use crate::addr::ClientAddr;
use crate::auth::{Access, AuthError, Authenticator, Identity, RoomRefused};
use crate::config::Config;
use crate::hub::{Hub, PageLimit, Retention};
use crate::limit::{Held, Over, Quota, TokenBucket};
use crate::outbound::{Format, Outbound};
use crate::presence::Presence;
use crate::sync::lock;
use herald_service::namespaces::Namespaces;

/// What every connection of a gateway shares.
pub(crate) struct Shared {
    pub config: Config,
    pub gateway_id: String,
    pub auth: Authenticator,
    pub subjects: Subjects,
    pub hub: Arc<Hub>,
    /// The reporter to fanout, the feeds from it, the polling sessions.
    pub presence: Presence,
    /// Rate limits shared by a user's requests and connections, per kind and user
    /// (anonymous users: per client address).
    http_buckets: Mutex<HashMap<(RateKind, String), TokenBucket>>,
    /// Anonymous clients' connections per address (`--max-anonymous-connections-per-address`).
    anonymous_conns: Arc<Quota>,
    /// Presence memberships, per anonymous address and in all (`--max-memberships`).
    pub memberships: Arc<Quota>,
    /// Watched users per anonymous address (`--max-anonymous-watches-per-address`; the
    /// gateway's total is the feeds' `--max-feeds`).
    watches: Arc<Quota>,
    pub conns: Connections,
    /// The rules of each room's namespace (`--namespaces`).
    pub namespaces: Arc<Namespaces>,
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
    /// An anonymous client's share of its address's connections (boxed: most have none).
    _anonymous: Option<Box<Held>>,
}

/// Open client connections, for limits, the drain and the server API's commands.
#[derive(Default)]
pub(crate) struct Connections {
    map: Mutex<Registry>,
    reserved: AtomicU64,
    empty: Notify,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<u64, Registered>,
    /// Each user's connections (ids of `conns`).
    by_user: HashMap<Arc<str>, Vec<u64>>,
}

/// A registered connection: whose it is, and how to reach its client.
#[derive(Clone)]
pub(crate) struct Registered {
    pub user: Arc<str>,
    pub format: Format,
    pub out: Arc<Outbound>,
    /// `websocket`, `sse` or `long-poll`.
    pub transport: &'static str,
    /// When it registered, in ms since the epoch.
    pub since: u64,
    /// When its token was issued, in seconds since the epoch (`None`: unknown, or anonymous).
    pub iat: Option<u64>,
    /// Commands for the connection's own task (WebSocket sessions, which own their
    /// subscriptions; the HTTP transports take theirs through `out`).
    pub mail: Option<Arc<Mailbox>>,
}

/// A command of the server API for one connection's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `since`: the room's last seq when the command came (events after it are the
    /// connection's), `None` if the store did not say.
    Subscribe {
        room: String,
        presence: bool,
        since: Option<u64>,
    },
    Unsubscribe {
        room: String,
    },
}

/// A connection's commands, waiting for its task.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    commands: Mutex<Vec<Command>>,
    notify: Notify,
}

/// Commands a mailbox holds at most: past it (a task that takes none), more are dropped.
const MAILBOX: usize = 256;

/// The subscription tokens a client sent with a subscribe (or a request's `room_tokens=`),
/// each verified at most once, and only once a room needs them: a request naming many rooms
/// and many tokens costs one signature check per token, not one per room and token.
pub(crate) struct RoomTokens<'a> {
    raw: &'a [String],
    checked: Option<CheckedTokens>,
}

/// What the tokens open: their rooms, and why the first bad one was refused.
struct CheckedTokens {
    rooms: Vec<String>,
    failed: Option<AuthError>,
}

/// A presence membership refused (see [`Shared::join_quota`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MembershipRefused {
    pub code: herald_proto::ErrorCode,
    pub message: &'static str,
}

/// What a shared rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RateKind {
    /// `POST /publish`, and anonymous WebSocket publishes (`--publish-rate`).
    Publish,
    /// `/poll`, `/sse`, `GET /presence`, and anonymous WebSocket ops (`--op-rate`).
    Request,
}

/// Most HTTP rate-limit buckets kept; past it, full ones are forgotten first.
const MAX_BUCKETS: usize = 100_000;

/// Why a connection was refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// The gateway is draining (`unavailable`, 503).
    Draining,
    /// `--max-connections` are open (`unavailable`, 503).
    Full,
    /// The anonymous client's address holds its share (`rate_limited`, 429).
    AddressFull,
}

/// Whom a rate limit counts: a user by id, an anonymous client by its address (whatever sid
/// or name it sends).
fn rate_key(who: &Identity) -> String {
    match who.anonymous_addr() {
        Some(addr) => format!("ip:{addr}"),
        None => who.user.clone(),
    }
}

/// Maps a refused membership to the contract's code.
pub(crate) fn membership_refused(over: Over) -> MembershipRefused {
    use herald_proto::ErrorCode;
    match over {
        Over::Addr => MembershipRefused {
            code: ErrorCode::RateLimited,
            message: "too many presence memberships from this address",
        },
        Over::Total => MembershipRefused {
            code: ErrorCode::Unavailable,
            message: "this gateway holds its most presence memberships",
        },
    }
}

/// Maps a refused watch to the contract's code (only an address's share can be full).
pub(crate) fn watch_refused(_: Over) -> MembershipRefused {
    MembershipRefused {
        code: herald_proto::ErrorCode::RateLimited,
        message: "too many watched users from this address",
    }
}

// === impl Unavailable ===

impl Unavailable {
    pub(crate) fn code(self) -> herald_proto::ErrorCode {
        match self {
            Self::Draining | Self::Full => herald_proto::ErrorCode::Unavailable,
            Self::AddressFull => herald_proto::ErrorCode::RateLimited,
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::Draining => "gateway is draining; connect to another",
            Self::Full => "too many connections",
            Self::AddressFull => "too many connections from this address",
        }
    }
}

// === impl Shared ===

impl Shared {
    pub(crate) fn new(
        config: Config,
        gateway_id: String,
        auth: Authenticator,
        subjects: Subjects,
        hub: Arc<Hub>,
        presence: Presence,
        namespaces: Arc<Namespaces>,
    ) -> Self {
        let anonymous_conns = Quota::new(config.max_anonymous_connections_per_address, usize::MAX);
        let memberships = Quota::new(config.max_anonymous_memberships_per_address, config.max_memberships);
        let watches = Quota::new(config.max_anonymous_watches_per_address, usize::MAX);
        Self {
            namespaces,
            origins: config.allowed_origins(),
            config,
            gateway_id,
            auth,
            subjects,
            hub,
            presence,
            http_buckets: Mutex::default(),
            anonymous_conns,
            memberships,
            watches,
            conns: Connections::default(),
            draining: AtomicBool::new(false),
            stream_ready: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Whether `who` may make a `kind` request now. Users with a token are counted by user
    /// id; anonymous users by their address, whatever sid or connection they use (an
    /// anonymous client names itself, so every name it picks would be a fresh bucket).
    pub(crate) fn http_allowed(&self, kind: RateKind, who: &Identity) -> bool {
        let (rate, burst) = match kind {
            RateKind::Publish => (self.config.publish_rate, self.config.publish_rate),
            RateKind::Request => (self.config.op_rate, self.op_burst()),
        };
        self.take_token((kind, rate_key(who)), rate, burst)
    }

    /// Takes a token from the bucket under `key`, made with `rate` and `burst` if new.
    fn take_token(&self, key: (RateKind, String), rate: f64, burst: f64) -> bool {
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
            .entry(key)
            .or_insert_with(|| TokenBucket::with_burst(rate, burst))
            .take()
    }

    /// The burst of `--op-rate`: a reconnect resubscribes every room at once.
    pub(crate) fn op_burst(&self) -> f64 {
        (self.config.max_subscriptions as f64).max(2.0 * self.config.op_rate)
    }

    /// Takes a connection slot, unless the gateway is draining or full, or `who` is an
    /// anonymous client whose address holds its share.
    pub(crate) fn reserve(self: &Arc<Self>, conn_id: u64, who: &Identity) -> Result<Slot, Unavailable> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(Unavailable::Draining);
        }
        let anonymous = match who.anonymous_addr() {
            Some(addr) => Some(Box::new(
                self.anonymous_conns
                    .take(Some(addr), 1)
                    .map_err(|_| Unavailable::AddressFull)?,
            )),
            None => None,
        };
        if !self.conns.reserve(self.config.max_connections) {
            return Err(Unavailable::Full);
        }
        Ok(Slot {
            shared: Arc::clone(self),
            conn_id,
            _anonymous: anonymous,
        })
    }

    /// A share of `rooms` presence memberships for `who` (it grows and shrinks as the
    /// connection joins and leaves rooms): per address for anonymous clients, and in all.
    pub(crate) fn memberships_for(&self, who: &Identity, rooms: usize) -> Result<Held, MembershipRefused> {
        self.memberships
            .take(who.anonymous_addr(), rooms)
            .map_err(membership_refused)
    }

    /// A share of `users` watched users for `who` (anonymous clients: counted per address).
    pub(crate) fn watches_for(&self, who: &Identity, users: usize) -> Result<Held, MembershipRefused> {
        self.watches.take(who.anonymous_addr(), users).map_err(watch_refused)
    }

    /// Whether `who` may subscribe to `room`: its token (or anonymous grants) allow it, or
    /// the server API granted it (`herald.api.subscribe`, looked up only when the token
    /// refuses).
    ///
    /// `tokens`: subscription tokens the client sent with the subscribe, tried when its
    /// connection token refuses the room: one for this user and this room, unexpired and not
    /// revoked, opens it (a bad one is `unauthorized`; none for the room, `forbidden`).
    pub(crate) async fn may_subscribe(
        &self,
        who: &Identity,
        room: &str,
        tokens: &mut RoomTokens<'_>,
    ) -> Result<(), RoomRefused> {
        self.namespace_allows(who, room)?;
        let refused = match who.check_room(room, Access::Subscribe) {
            Err(r) if r.code == herald_proto::ErrorCode::Forbidden => r,
            checked => return checked,
        };
        let checked = tokens.checked(&self.auth, &who.user).await;
        if checked.rooms.iter().any(|r| r == room) {
            return Ok(());
        }
        match self.hub.granted(&who.user, room).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            // Not known either way: the client may retry, and is not told it is refused.
            Err(e) => {
                return Err(RoomRefused {
                    code: herald_proto::ErrorCode::Unavailable,
                    message: format!("server-side grants not readable: {e}; retry"),
                })
            }
        }
        Err(match &checked.failed {
            Some(e) => RoomRefused {
                code: herald_proto::ErrorCode::Unauthorized,
                message: format!("subscription token: {e}"),
            },
            None => refused,
        })
    }

    /// Whether `who` may publish to `room`: its token grants it, and the room's namespace
    /// takes client publishes (and anonymous clients, if `who` is one).
    pub(crate) fn may_publish(&self, who: &Identity, room: &str) -> Result<(), RoomRefused> {
        who.check_room(room, Access::Publish)?;
        self.namespace_allows(who, room)?;
        let ns = self.namespaces.of(room);
        if !ns.client_publish {
            return Err(RoomRefused {
                code: herald_proto::ErrorCode::Forbidden,
                message: format!("clients may not publish in namespace `{}`", ns.prefix),
            });
        }
        Ok(())
    }

    /// Whether `who` may publish once more in `room`'s namespace, under its `publish_rate`
    /// (per user, or per address for anonymous clients, on this gateway; rooms of
    /// namespaces without one: always).
    pub(crate) fn namespace_rate_allows(&self, who: &Identity, room: &str) -> bool {
        let ns = self.namespaces.of(room);
        let Some(rate) = ns.publish_rate else { return true };
        // Apart from the plain publish buckets: their keys hold no space.
        let key = format!("{} {}", rate_key(who), ns.prefix);
        self.take_token((RateKind::Publish, key), rate, rate.max(1.0))
    }

    /// Refuses an anonymous client a room of a namespace closed to anonymous clients.
    fn namespace_allows(&self, who: &Identity, room: &str) -> Result<(), RoomRefused> {
        let ns = self.namespaces.of(room);
        if !ns.anonymous && who.anonymous.is_some() {
            return Err(RoomRefused {
                code: herald_proto::ErrorCode::Forbidden,
                message: format!("namespace `{}` is closed to anonymous clients", ns.prefix),
            });
        }
        Ok(())
    }

    /// Refuses presence in a room whose namespace keeps none.
    pub(crate) fn presence_allowed(&self, room: &str) -> Result<(), RoomRefused> {
        let ns = self.namespaces.of(room);
        if ns.presence {
            return Ok(());
        }
        Err(RoomRefused {
            code: herald_proto::ErrorCode::Forbidden,
            message: format!("namespace `{}` keeps no presence", ns.prefix),
        })
    }

    /// What the room's namespace keeps of each event a client publishes there.
    pub(crate) fn retention(&self, room: &str) -> Retention {
        let ns = self.namespaces.of(room);
        Retention {
            ttl: ns.history_ttl,
            keep: ns.history_size.filter(|n| *n < self.config.history_size.max(1) as u64),
        }
    }

    /// Where a client without a position in `room` starts: `None` (the live tail), or just
    /// before the newest event in a last-value namespace (which it then gets first). And
    /// whether a position it gave is honoured (`false`: the namespace replays nothing).
    pub(crate) fn replays(&self, room: &str) -> bool {
        let ns = self.namespaces.of(room);
        ns.history && !ns.ephemeral
    }

    /// Whether `room`'s events are ephemeral (core NATS, never stored, seq 0).
    pub(crate) fn ephemeral(&self, room: &str) -> bool {
        self.namespaces.of(room).ephemeral
    }

    /// Whether a new subscriber of `room` gets its newest event first.
    pub(crate) fn last_value(&self, room: &str) -> bool {
        self.namespaces.of(room).last_value
    }

    /// The client address of a request from `peer`: see [`ClientAddr::resolve`].
    pub(crate) fn client_addr(&self, peer: IpAddr, req: &Request<Incoming>) -> ClientAddr {
        ClientAddr::resolve(peer, req.headers(), &self.config.trusted_proxies)
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
        } else if self.hub.is_unmapped() {
            Some(herald_service::stream::NOT_MAPPED)
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
    /// Makes the connection known to the drain and the server API's commands, which reach
    /// its client through `out` in `format`.
    pub(crate) fn register(
        &self,
        (user, iat): (&str, Option<u64>),
        transport: &'static str,
        format: Format,
        out: Arc<Outbound>,
        mail: Option<Arc<Mailbox>>,
    ) {
        let conn = Registered {
            user: Arc::from(user),
            format,
            out,
            transport,
            since: herald_service::now_ms(),
            iat,
            mail,
        };
        self.shared.conns.insert(self.conn_id, conn);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.conns.remove(self.conn_id);
    }
}

// === impl RoomTokens ===

impl<'a> RoomTokens<'a> {
    pub(crate) fn new(raw: &'a [String]) -> Self {
        Self { raw, checked: None }
    }

    async fn checked(&mut self, auth: &Authenticator, user: &str) -> &CheckedTokens {
        if self.checked.is_none() {
            let mut checked = CheckedTokens {
                rooms: Vec::new(),
                failed: None,
            };
            for token in self.raw {
                match auth.verify_room(token, user).await {
                    Ok(room) => checked.rooms.push(room),
                    Err(e) => {
                        checked.failed.get_or_insert(e);
                    }
                }
            }
            self.checked = Some(checked);
        }
        self.checked.as_ref().expect("checked above")
    }
}

// === impl Mailbox ===

impl Mailbox {
    /// Leaves `command` for the connection's task; false if its mailbox is full.
    pub(crate) fn post(&self, command: Command) -> bool {
        let mut commands = lock(&self.commands);
        if commands.len() >= MAILBOX {
            return false;
        }
        commands.push(command);
        drop(commands);
        self.notify.notify_one();
        true
    }

    /// Waits until a command is posted (one posted before the wait counts).
    pub(crate) async fn posted(&self) {
        self.notify.notified().await
    }

    /// The commands posted so far, in order.
    pub(crate) fn take(&self) -> Vec<Command> {
        std::mem::take(&mut *lock(&self.commands))
    }
}

// === impl Registry ===

impl Registry {
    fn unlink(by_user: &mut HashMap<Arc<str>, Vec<u64>>, user: &str, id: u64) {
        if let Some(ids) = by_user.get_mut(user) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                by_user.remove(user);
            }
        }
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

    fn insert(&self, id: u64, mut conn: Registered) {
        let mut r = lock(&self.map);
        // One copy of each user's id, shared by its connections.
        if let Some((u, _)) = r.by_user.get_key_value(&*conn.user) {
            conn.user = Arc::clone(u);
        }
        r.by_user.entry(Arc::clone(&conn.user)).or_default().push(id);
        if let Some(old) = r.conns.insert(id, conn) {
            // Registered twice: the first entry's user loses this id.
            Registry::unlink(&mut r.by_user, &old.user, id);
        }
    }

    fn remove(&self, id: u64) {
        let mut r = lock(&self.map);
        if let Some(gone) = r.conns.remove(&id) {
            Registry::unlink(&mut r.by_user, &gone.user, id);
        }
        drop(r);
        self.unreserve();
    }

    /// The connections of `user` registered now.
    pub(crate) fn of_user(&self, user: &str) -> Vec<Registered> {
        self.ids_of_user(user).into_iter().map(|(_, c)| c).collect()
    }

    /// The connections of `user` registered now, with their ids.
    pub(crate) fn ids_of_user(&self, user: &str) -> Vec<(u64, Registered)> {
        let r = lock(&self.map);
        let ids = r.by_user.get(user).map(Vec::as_slice).unwrap_or_default();
        ids.iter()
            .filter_map(|id| r.conns.get(id).map(|c| (*id, c.clone())))
            .collect()
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
        let outs: Vec<Arc<Outbound>> = lock(&self.map).conns.values().map(|c| Arc::clone(&c.out)).collect();
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
