//! The HTTP transports: ajax/long-poll ([`poll`]), Server-Sent Events ([`sse`]),
//! `POST /publish` ([`publish`]) and `GET /presence` ([`presence`]); and what they share
//! (this module): who the caller is, which rooms and cursor they asked for, the contract's
//! error body, CORS, and the registration that holds a request's slot and rooms.

pub(crate) mod poll;
pub(crate) mod presence;
pub(crate) mod publish;
pub(crate) mod sse;
pub(crate) mod web;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use herald_proto::cursor::Cursor;
use herald_proto::http::param;
use herald_proto::{text, ErrorCode};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::addr::ClientAddr;
use crate::auth::{AuthError, Identity, RoomRefused};
use crate::metrics::{self, Transport};
use crate::outbound::{Format, Outbound};
use crate::state::{RateKind, RoomTokens, Shared, Slot, Unavailable};

/// The caller: token from `Authorization: Bearer` or `?token=`, anonymous name from `?name=`;
/// an anonymous caller is counted by `addr`.
pub(crate) async fn identify(
    shared: &Shared,
    req: &Request<Incoming>,
    addr: ClientAddr,
) -> Result<Identity, HttpError> {
    if !shared.origin_allowed(req) {
        return Err(HttpError::new(ErrorCode::Forbidden, "origin not allowed"));
    }
    let name = display_name(req)?;
    let sid = session_id(req)?;
    Ok(shared
        .auth
        .verify(token(req).as_deref(), &anon_id(sid.as_deref()), name.as_deref(), addr)
        .await?)
}

/// What follows `anon-` in an anonymous user's id: a digest of the sid (see
/// [`text::anonymous_id`]), or a random one without: an id made of the gateway's name and
/// a counter would come back after a restart, and with it the old client's personal room.
pub(crate) fn anon_id(sid: Option<&str>) -> String {
    sid.map_or_else(
        || {
            let n: u128 = rand::random();
            format!("{:024x}", n >> 32)
        },
        text::anonymous_id,
    )
}

/// `?sid=`: a session id the client chose (8–64 of `A-Z a-z 0-9 _ -`) and keeps across
/// reconnects and transports. An anonymous user is `anon-<digest of sid>` with it
/// (`anon-<conn>` without), so a reconnect is the same user; a polling client's membership
/// is keyed by it and its user.
pub(crate) fn session_id(req: &Request<Incoming>) -> Result<Option<String>, HttpError> {
    let sid = query_param(req, param::SID);
    if let Some(sid) = &sid {
        text::validate_sid(sid).map_err(bad_request)?;
    }
    Ok(sid)
}

/// `?name=`: an anonymous user's display name (at most 64 characters, no control characters).
pub(crate) fn display_name(req: &Request<Incoming>) -> Result<Option<String>, HttpError> {
    let name = query_param(req, param::NAME);
    if let Some(name) = &name {
        text::validate_name(name).map_err(bad_request)?;
    }
    Ok(name)
}

/// `--op-rate` for `/poll`, `/sse` and `GET /presence`.
pub(crate) fn request_allowed(shared: &Shared, who: &Identity) -> Result<(), HttpError> {
    if shared.http_allowed(RateKind::Request, who) {
        Ok(())
    } else {
        Err(HttpError::new(ErrorCode::RateLimited, "request rate exceeded"))
    }
}

pub(crate) fn bad_request(e: impl std::fmt::Display) -> HttpError {
    HttpError::new(ErrorCode::BadRequest, e.to_string())
}

/// `?presence=`: the rooms (among `rooms`) to be a member of; `1` or `true` for all of them;
/// at most `--max-presence-rooms`.
pub(crate) fn presence_rooms(
    shared: &Shared,
    req: &Request<Incoming>,
    rooms: &[String],
) -> Result<Vec<String>, HttpError> {
    let Some(list) = query_param(req, param::PRESENCE) else {
        return Ok(Vec::new());
    };
    let wanted = if list == "1" || list == "true" {
        rooms.to_vec()
    } else {
        list_items(&list)
    };
    if let Some(r) = wanted.iter().find(|r| !rooms.contains(r)) {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("presence room `{r}` is not in `rooms`"),
        ));
    }
    for r in &wanted {
        shared.presence_allowed(r)?;
    }
    let max = shared.config.max_presence_rooms;
    if wanted.len() > max {
        return Err(HttpError::new(
            ErrorCode::TooManySubscriptions,
            format!("at most {max} presence rooms"),
        ));
    }
    Ok(wanted)
}

/// `?watch=a,b`: users whose status to follow (valid ids, at most `--max-watch`).
pub(crate) fn watched(shared: &Shared, req: &Request<Incoming>) -> Result<Vec<String>, HttpError> {
    let users = list_items(&query_param(req, param::WATCH).unwrap_or_default());
    let users = text::validate_users(&users).map_err(bad_request)?;
    let max = shared.config.max_watch;
    if users.len() > max {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("at most {max} watched users"),
        ));
    }
    Ok(users)
}

/// The items of a comma-separated query value, sorted, without empties or repeats.
fn list_items(list: &str) -> Vec<String> {
    let mut items: Vec<String> = list.split(',').filter(|i| !i.is_empty()).map(str::to_owned).collect();
    items.sort();
    items.dedup();
    items
}

/// `?rooms=a,b`: each valid, subscribable by `who`, and no more than `--max-subscriptions`.
///
/// `taken`: rooms the server API took from the client since it last heard (a polling
/// session's pending `unsubscribed`): left out unchecked, so that the answer that tells the
/// client is not refused for asking for them.
pub(crate) async fn rooms(
    shared: &Shared,
    req: &Request<Incoming>,
    who: &Identity,
    taken: &[String],
) -> Result<Vec<String>, HttpError> {
    let mut rooms = list_items(&query_param(req, param::ROOMS).unwrap_or_default());
    if rooms.iter().any(|r| taken.contains(r)) {
        rooms.retain(|r| !taken.contains(r));
        if rooms.is_empty() {
            return Err(HttpError::new(
                ErrorCode::BadRequest,
                "every room asked was unsubscribed",
            ));
        }
    }
    if rooms.is_empty() {
        return Err(HttpError::new(ErrorCode::BadRequest, "`rooms` is required"));
    }
    let max = shared.config.max_subscriptions;
    if rooms.len() > max {
        return Err(HttpError::new(
            ErrorCode::TooManySubscriptions,
            format!("at most {max} rooms per request"),
        ));
    }
    let tokens = list_items(&query_param(req, param::ROOM_TOKENS).unwrap_or_default());
    if tokens.len() > max {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("at most {max} subscription tokens per request"),
        ));
    }
    if let Some(bad) = tokens.iter().find(|t| text::validate_token(t).is_err()) {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("invalid subscription token \"{}\"", text::printable(bad)),
        ));
    }
    let mut tokens = RoomTokens::new(&tokens);
    for r in &rooms {
        shared.may_subscribe(who, r, &mut tokens).await?;
    }
    Ok(rooms)
}

/// The client's cursor as the rooms' namespaces take it: a position in a namespace that
/// replays nothing is dropped (the room starts at its live tail), and a room of a last-value
/// namespace without one starts just before its newest event, which the client then gets.
pub(crate) async fn namespace_cursor(
    shared: &Shared,
    rooms: &[String],
    asked: Option<Cursor>,
) -> Result<Option<Cursor>, HttpError> {
    let mut cursor = asked.clone().unwrap_or_default();
    for room in rooms {
        if !shared.replays(room) {
            cursor.remove(room);
        }
        if shared.last_value(room) && cursor.get(room).is_none() {
            let last = shared
                .hub
                .last_seq(room)
                .await
                .map_err(|e| HttpError::new(ErrorCode::Unavailable, e.to_string()))?;
            if last > 0 {
                cursor.set(room, last - 1);
            }
        }
    }
    Ok(match asked {
        None if cursor.is_empty() => None,
        _ => Some(cursor),
    })
}

/// The cursor from `Last-Event-ID` (SSE reconnects) or `?cursor=`.
pub(crate) fn cursor(req: &Request<Incoming>) -> Result<Option<Cursor>, HttpError> {
    let from_header = req
        .headers()
        .get(herald_proto::http::LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match from_header.or_else(|| query_param(req, param::CURSOR)) {
        None => Ok(None),
        Some(s) => Cursor::parse(&s)
            .map(Some)
            .map_err(|e| HttpError::new(ErrorCode::BadRequest, format!("invalid cursor: {e}"))),
    }
}

/// A registered HTTP client: holds its slot among `--max-connections`, is closed by the
/// drain, and leaves its rooms when dropped (also when hyper drops the request's future
/// because the client went away).
pub(crate) struct Registration {
    pub shared: Arc<Shared>,
    pub conn_id: u64,
    pub out: Arc<Outbound>,
    pub rooms: Vec<String>,
    /// Dropped after the rooms are left, unless [`Registration::release`] takes it.
    slot: Option<Slot>,
}

impl Registration {
    /// `who`: the user, and when its token was issued; `transport`: `sse` or `long-poll`.
    pub(crate) fn new(
        shared: &Arc<Shared>,
        slot: Slot,
        conn_id: u64,
        who: (&str, Option<u64>),
        transport: &'static str,
    ) -> Self {
        let out = Outbound::new(shared.config.outbound_buffer_bytes);
        slot.register(who, transport, Format::Bare, Arc::clone(&out), None);
        Self {
            shared: Arc::clone(shared),
            conn_id,
            out,
            rooms: Vec::new(),
            slot: Some(slot),
        }
    }

    /// Leaves every room and hands back the slot, for the answer to hold while it is sent.
    pub(crate) fn release(mut self) -> Slot {
        self.slot.take().expect("a registration holds its slot until released")
    }
}

impl Registration {
    /// Subscribes to every room from its position (events after it are queued at once).
    pub(crate) async fn attach_all(&mut self, rooms: &[String], positions: &Cursor) -> Result<(), HttpError> {
        for room in rooms {
            self.rooms.push(room.clone());
            fail::fail_point!("http.attach");
            self.shared
                .hub
                .attach(room, self.conn_id, &self.out, Format::Bare, positions.get(room), |_| {
                    Bytes::new()
                })
                .await
                .map_err(|e| HttpError::new(ErrorCode::Unavailable, e))?;
        }
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for room in &self.rooms {
            self.shared.hub.detach(room, self.conn_id);
        }
    }
}

/// Bytes of a response body handed to hyper at once: hyper asks for the next part only as
/// the socket takes the last, so a body's guard is dropped near the end of the write.
const BODY_PART: usize = 64 * 1024;

/// A JSON response that holds `guard` until hyper has taken the last part of its body (or
/// drops the response: the client went away, or stopped reading for `--write-timeout`).
pub(crate) fn json_holding<G: Send + 'static>(status: StatusCode, body: Bytes, guard: G) -> Response<Body> {
    let len = body.len();
    let parts = futures_util::stream::unfold((body, Some(guard)), |(mut rest, guard)| async move {
        if rest.is_empty() {
            drop(guard);
            return None;
        }
        let part = rest.split_to(rest.len().min(BODY_PART));
        Some((Ok::<_, Infallible>(hyper::body::Frame::data(part)), (rest, guard)))
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONTENT_LENGTH, len)
        .body(http_body_util::StreamBody::new(parts).boxed_unsync())
        .expect("static response parts")
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(body))
        .expect("static response parts")
}

/// Adds CORS headers for an allowed browser origin (every origin when none are configured).
pub(crate) fn cors(
    shared: &Shared,
    origin: Option<HeaderValue>,
    result: Result<Response<Body>, HttpError>,
) -> Result<Response<Body>, HttpError> {
    let mut resp = result.unwrap_or_else(HttpError::into_response);
    if let Some(origin) = origin {
        if origin.to_str().is_ok_and(|o| shared.is_allowed_origin(o)) {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("Content-Type"),
            );
        }
    }
    Ok(resp)
}

/// `OPTIONS` preflight for the HTTP transports.
pub(crate) fn preflight(shared: &Shared, req: &Request<Incoming>) -> Result<Response<Body>, HttpError> {
    if !shared.origin_allowed(req) {
        return Err(HttpError::new(ErrorCode::Forbidden, "origin not allowed"));
    }
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS")
        .header(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Authorization, Content-Type, Last-Event-ID",
        )
        .header(header::ACCESS_CONTROL_MAX_AGE, "600")
        .body(full(Bytes::new()))
        .expect("static response parts"))
}

/// Where each room starts: the client's cursor, or the room's live tail.
pub(crate) async fn start_positions(
    shared: &Shared,
    rooms: &[String],
    asked: Option<&Cursor>,
) -> Result<Cursor, HttpError> {
    let mut positions = Cursor::default();
    for room in rooms {
        let pos = match asked.and_then(|c| c.get(room)) {
            Some(seq) => seq,
            None => shared
                .hub
                .last_seq(room)
                .await
                .map_err(|e| HttpError::new(ErrorCode::Unavailable, e.to_string()))?,
        };
        positions.set(room, pos);
    }
    Ok(positions)
}

/// Keeps `herald_gateway_connections{transport}` up while a request is open.
pub(crate) struct OpenGauge(pub Transport);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::connection_closed(self.0);
    }
}

/// An HTTP error in the contract's shape.
#[derive(Debug)]
pub(crate) struct HttpError {
    pub code: ErrorCode,
    pub message: String,
}

// === impl HttpError ===

impl HttpError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        metrics::error(self.code);
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

/// A query parameter, percent-decoded.
pub(crate) fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    herald_proto::query::param(req.uri().query()?, name)
}

/// The bearer token of a request: `Authorization: Bearer` or `?token=`.
pub(crate) fn token(req: &Request<Incoming>) -> Option<String> {
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned());
    from_header.or_else(|| query_param(req, param::TOKEN))
}

impl From<Unavailable> for HttpError {
    fn from(u: Unavailable) -> Self {
        Self::new(u.code(), u.message())
    }
}

impl From<crate::state::MembershipRefused> for HttpError {
    fn from(r: crate::state::MembershipRefused) -> Self {
        Self::new(r.code, r.message)
    }
}

/// A response body.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}
