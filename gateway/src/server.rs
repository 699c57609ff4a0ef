//! The listeners: the public one (WebSocket upgrade and the HTTP routes) and the admin one
//! (/metrics /healthz /readyz), the connection registry, and the drain.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use herald_proto::{codec, CloseCode, Codec, ErrorCode};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::Rng;
use std::panic::AssertUnwindSafe;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::auth::{AuthError, Authenticator, Identity, RoomRefused};
use crate::config::Config;
use crate::feeds::Feeds;
use crate::hub::Hub;
use crate::outbound::Outbound;
use crate::presence::{PollSessions, Tracker};
use crate::session::TokenBucket;
use crate::session::{self, Accepted, Mode};
use crate::sync::lock;
use crate::upstream::Upstream;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every connection of a gateway shares.
pub struct Shared {
    pub config: Config,
    pub gateway_id: String,
    pub auth: Authenticator,
    pub hub: Arc<Hub>,
    pub upstream: Arc<Upstream>,
    /// Reports connections and presence members to fanout.
    pub tracker: Tracker,
    /// Presence diffs and user status forwarded to the connections that asked.
    pub feeds: Arc<Feeds>,
    /// Polling clients' presence sessions.
    pub polls: Arc<PollSessions>,
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
pub struct Slot {
    shared: Arc<Shared>,
    conn_id: u64,
}

/// Open client connections, for limits and the drain.
#[derive(Default)]
pub struct Connections {
    map: Mutex<HashMap<u64, Arc<Outbound>>>,
    reserved: AtomicU64,
    empty: Notify,
}

/// What an HTTP rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKind {
    /// `POST /publish` (`--publish-rate`).
    Publish,
    /// `/poll`, `/sse`, `GET /presence` (`--op-rate`).
    Request,
}

/// Most HTTP rate-limit buckets kept; past it, full ones are forgotten first.
const MAX_BUCKETS: usize = 100_000;

/// An HTTP error in the contract's shape.
#[derive(Debug)]
pub struct HttpError {
    pub code: ErrorCode,
    pub message: String,
}

// === impl Shared ===

impl Shared {
    pub fn new(
        config: Config,
        gateway_id: String,
        auth: Authenticator,
        hub: Arc<Hub>,
        upstream: Arc<Upstream>,
    ) -> Self {
        let tracker = Tracker::start(
            upstream.client().clone(),
            upstream.subjects(),
            &gateway_id,
            config.presence_heartbeat,
        );
        let feeds = Feeds::new(upstream.client().clone());
        let polls = Arc::new(PollSessions::default());
        tokio::spawn({
            let (polls, tracker) = (Arc::downgrade(&polls), tracker.clone());
            async move {
                let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
                loop {
                    every.tick().await;
                    let Some(polls) = polls.upgrade() else { return };
                    polls.sweep(&tracker);
                }
            }
        });
        Self {
            origins: config.allowed_origins(),
            config,
            gateway_id,
            auth,
            hub,
            upstream,
            tracker,
            feeds,
            polls,
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
    pub fn http_allowed(&self, kind: RateKind, who: &Identity, remote: IpAddr, has_sid: bool) -> bool {
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
    pub fn op_burst(&self) -> f64 {
        (self.config.max_subscriptions as f64).max(2.0 * self.config.op_rate)
    }

    /// Takes a connection slot, unless the gateway is draining or full.
    pub fn reserve(self: &Arc<Self>, conn_id: u64) -> Result<Slot, HttpError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(HttpError::new(
                ErrorCode::Unavailable,
                "gateway is draining; connect to another",
            ));
        }
        if !self.conns.reserve(self.config.max_connections) {
            return Err(HttpError::new(ErrorCode::Unavailable, "too many connections"));
        }
        Ok(Slot {
            shared: Arc::clone(self),
            conn_id,
        })
    }

    /// The bound of one replay burst or poll answer.
    pub fn page_limit(&self) -> crate::upstream::PageLimit {
        crate::upstream::PageLimit {
            events: self.config.replay_max_events,
            bytes: self.config.replay_max_bytes,
        }
    }

    /// Why the gateway is not ready, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining")
        } else if !self.upstream.is_connected() {
            Some("NATS disconnected")
        } else if !self.stream_ready.load(Ordering::Relaxed) {
            Some("event stream not provisioned")
        } else {
            None
        }
    }

    pub fn new_conn(&self) -> (u64, String) {
        let n = self.next_conn.fetch_add(1, Ordering::Relaxed);
        (n, format!("{}-{n:x}", self.gateway_id))
    }

    pub fn origin_allowed(&self, req: &Request<Incoming>) -> bool {
        // Non-browser clients send no Origin; browsers always do.
        req.headers()
            .get(header::ORIGIN)
            .is_none_or(|o| o.to_str().is_ok_and(|o| self.is_allowed_origin(o)))
    }

    /// Whether a browser `Origin` may connect (any, when `--allowed-origins` is empty).
    pub fn is_allowed_origin(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        self.origins.is_empty() || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

// === impl Slot ===

impl Slot {
    /// Makes the connection known to the drain, which closes it through `out`.
    pub fn register(&self, out: Arc<Outbound>) {
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

    pub fn len(&self) -> usize {
        self.reserved.load(Ordering::Acquire) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection with 1012, spread over `spread`, and waits until all are gone
    /// or `deadline` passes.
    pub async fn drain(&self, spread: Duration, deadline: Duration) {
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

// === impl HttpError ===

impl HttpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        crate::metrics::error(self.code);
        let body = serde_json::to_string(&herald_proto::http::ErrorBody::new(self.code, self.message))
            .expect("plain data serializes");
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(body))
            .expect("static response parts")
    }
}

impl From<RoomRefused> for HttpError {
    fn from(r: RoomRefused) -> Self {
        Self::new(r.code, r.message)
    }
}

impl From<AuthError> for HttpError {
    fn from(e: AuthError) -> Self {
        Self::new(ErrorCode::Unauthorized, e.to_string())
    }
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

// === public listener ===

/// Accepts connections until `stop` fires.
pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: Option<TlsAcceptor>, stop: Arc<Notify>) {
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let _ = tcp.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        tokio::spawn(async move {
            let timeout = shared.config.handshake_timeout;
            match tls {
                None => serve_io(shared, tcp, remote).await,
                Some(tls) => match tokio::time::timeout(timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_io(shared, stream, remote).await,
                    Ok(Err(e)) => debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%remote, "TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_io<I>(shared: Arc<Shared>, io: I, remote: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let timeout = shared.config.handshake_timeout;
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move {
            // A panic in a handler answers its request with 500 and ends nothing else; the
            // handler's guards release what it held.
            let routed = AssertUnwindSafe(route(shared, req, remote.ip())).catch_unwind().await;
            Ok::<_, Infallible>(routed.unwrap_or_else(|panic| {
                error!(
                    panic = crate::session::panic_message(&*panic),
                    "Request handler panicked"
                );
                HttpError::new(ErrorCode::Internal, "internal error").into_response()
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!(%remote, error = %e, "HTTP connection ended with an error");
    }
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>, remote: IpAddr) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let result = match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(shared, req, Mode::Herald).await,
        (&Method::GET, "/poll") => crate::http::cors(&shared, origin, crate::poll::poll(&shared, req, remote).await),
        (&Method::GET, "/sse") => crate::http::cors(&shared, origin, crate::sse::sse(&shared, req, remote).await),
        (&Method::POST, "/poll/leave") => {
            crate::http::cors(&shared, origin, crate::poll::leave(&shared, req, remote).await)
        }
        (&Method::POST, "/publish") => {
            crate::http::cors(&shared, origin, crate::http::publish(&shared, req, remote).await)
        }
        (&Method::OPTIONS, "/poll" | "/poll/leave" | "/sse" | "/publish" | "/presence") => {
            crate::http::cors(&shared, origin, crate::http::preflight(&shared, &req))
        }
        (&Method::GET, "/echo") if shared.config.echo_endpoint => upgrade(shared, req, Mode::Echo).await,
        (&Method::GET, "/presence") => {
            crate::http::cors(&shared, origin, crate::http::presence(&shared, req, remote).await)
        }
        (method, path) => match (method, crate::web::asset(&shared, path)) {
            (&Method::GET, Some(page)) => Ok(page),
            _ => Err(HttpError::new(
                ErrorCode::NotFound,
                format!("no route for {} {}", req.method(), req.uri().path()),
            )),
        },
    };
    result.unwrap_or_else(HttpError::into_response)
}

/// A query parameter, percent-decoded.
pub fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    herald_proto::query::param(req.uri().query()?, name)
}

/// The bearer token of a request: `Authorization: Bearer` or `?token=`.
pub fn token(req: &Request<Incoming>) -> Option<String> {
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned());
    from_header.or_else(|| query_param(req, "token"))
}

async fn upgrade(shared: Arc<Shared>, mut req: Request<Incoming>, mode: Mode) -> Result<Response<Body>, HttpError> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return Err(HttpError::new(ErrorCode::BadRequest, "expected a WebSocket upgrade"));
    }
    if !shared.origin_allowed(&req) {
        return Err(HttpError::new(ErrorCode::Forbidden, "origin not allowed"));
    }
    let codec = negotiate(&req)?;
    let (conn_id, conn) = shared.new_conn();
    let identity = match mode {
        Mode::Echo => None,
        Mode::Herald => {
            let name = crate::http::display_name(&req)?;
            let sid = crate::http::session_id(&req)?;
            let anon_id = crate::http::anon_id(sid.as_deref(), &conn);
            Some(
                shared
                    .auth
                    .verify(token(&req).as_deref(), &anon_id, name.as_deref())
                    .await?,
            )
        }
    };
    let slot = shared.reserve(conn_id)?;
    let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req)
        .map_err(|e| HttpError::new(ErrorCode::BadRequest, format!("bad upgrade: {e}")))?;
    let offered_protocol = req.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL);
    let identity = identity.unwrap_or_else(|| crate::auth::Identity {
        user: format!("echo-{conn}"),
        name: None,
        claims: None,
    });
    tokio::spawn(async move {
        match fut.await {
            Ok(ws) => {
                let accepted = Accepted {
                    slot,
                    conn_id,
                    conn,
                    identity,
                    codec,
                    mode,
                };
                session::run(shared, ws.into_inner(), accepted).await;
            }
            Err(e) => debug!(error = %e, "Upgrade did not complete"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    if offered_protocol {
        parts.headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.protocol()),
        );
    }
    Ok(Response::from_parts(parts, full(Bytes::new())))
}

/// Picks the first offered sub-protocol Herald speaks; none offered means JSON.
fn negotiate(req: &Request<Incoming>) -> Result<Codec, HttpError> {
    let offered: Vec<&str> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(Codec::Json);
    }
    offered.iter().find_map(|p| Codec::from_protocol(p)).ok_or_else(|| {
        HttpError::new(
            ErrorCode::BadRequest,
            format!(
                "unsupported sub-protocol; use {} or {}",
                codec::JSON_PROTOCOL,
                codec::MSGPACK_PROTOCOL
            ),
        )
    })
}
