//! What the HTTP transports share: who the caller is, which rooms and cursor they asked for,
//! CORS, and `POST /publish`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_proto::cursor::Cursor;
use herald_proto::http::PublishReply;
use herald_proto::{text, ErrorCode};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::{Access, Identity};
use crate::hub::Format;
use crate::outbound::Outbound;
use crate::server::{full, query_param, token, Body, HttpError, RateKind, Shared, Slot};
use std::net::IpAddr;

/// The caller: token from `Authorization: Bearer` or `?token=`, anonymous name from `?name=`.
pub async fn identify(shared: &Shared, req: &Request<Incoming>, conn: &str) -> Result<Identity, HttpError> {
    if !shared.origin_allowed(req) {
        return Err(HttpError::new(ErrorCode::Forbidden, "origin not allowed"));
    }
    let name = display_name(req)?;
    let sid = session_id(req)?;
    Ok(shared
        .auth
        .verify(token(req).as_deref(), &anon_id(sid.as_deref(), conn), name.as_deref())
        .await?)
}

/// What follows `anon-` in an anonymous user's id: a digest of the sid (see
/// [`text::anonymous_id`]), or the connection id without one.
pub fn anon_id(sid: Option<&str>, conn: &str) -> String {
    sid.map_or_else(|| conn.to_owned(), text::anonymous_id)
}

/// `?sid=`: a session id the client chose (8–64 of `A-Z a-z 0-9 _ -`) and keeps across
/// reconnects and transports. An anonymous user is `anon-<digest of sid>` with it
/// (`anon-<conn>` without), so a reconnect is the same user; a polling client's membership
/// is keyed by it and its user.
pub fn session_id(req: &Request<Incoming>) -> Result<Option<String>, HttpError> {
    let sid = query_param(req, "sid");
    if let Some(sid) = &sid {
        text::validate_sid(sid).map_err(bad_request)?;
    }
    Ok(sid)
}

/// `?name=`: an anonymous user's display name (at most 64 characters, no control characters).
pub fn display_name(req: &Request<Incoming>) -> Result<Option<String>, HttpError> {
    let name = query_param(req, "name");
    if let Some(name) = &name {
        text::validate_name(name).map_err(bad_request)?;
    }
    Ok(name)
}

/// `--op-rate` for `/poll`, `/sse` and `GET /presence`.
pub fn request_allowed(shared: &Shared, who: &Identity, remote: IpAddr, has_sid: bool) -> Result<(), HttpError> {
    if shared.http_allowed(RateKind::Request, who, remote, has_sid) {
        Ok(())
    } else {
        Err(HttpError::new(ErrorCode::RateLimited, "request rate exceeded"))
    }
}

fn bad_request(e: impl std::fmt::Display) -> HttpError {
    HttpError::new(ErrorCode::BadRequest, e.to_string())
}

/// `?presence=`: the rooms (among `rooms`) to be a member of; `1` or `true` for all of them.
pub fn presence_rooms(req: &Request<Incoming>, rooms: &[String]) -> Result<Vec<String>, HttpError> {
    let Some(list) = query_param(req, "presence") else {
        return Ok(Vec::new());
    };
    if list == "1" || list == "true" {
        return Ok(rooms.to_vec());
    }
    let wanted = list_items(&list);
    if let Some(r) = wanted.iter().find(|r| !rooms.contains(r)) {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("presence room `{r}` is not in `rooms`"),
        ));
    }
    Ok(wanted)
}

/// `?watch=a,b`: users whose status to follow (valid ids, at most `--max-watch`).
pub fn watched(shared: &Shared, req: &Request<Incoming>) -> Result<Vec<String>, HttpError> {
    let users = list_items(&query_param(req, "watch").unwrap_or_default());
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

/// What a queued bare-JSON frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Event,
    Presence,
    Status,
}

impl Queued {
    pub fn of(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(br#"{"t":"event""#) {
            Some(Self::Event)
        } else if bytes.starts_with(br#"{"t":"presence""#) {
            Some(Self::Presence)
        } else if bytes.starts_with(br#"{"t":"status""#) {
            Some(Self::Status)
        } else {
            None
        }
    }
}

/// `?rooms=a,b`: each valid, subscribable by `who`, and no more than `--max-subscriptions`.
pub fn rooms(shared: &Shared, req: &Request<Incoming>, who: &Identity) -> Result<Vec<String>, HttpError> {
    let rooms = list_items(&query_param(req, "rooms").unwrap_or_default());
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
    for r in &rooms {
        who.check_room(r, Access::Subscribe)?;
    }
    Ok(rooms)
}

/// The cursor from `Last-Event-ID` (SSE reconnects) or `?cursor=`.
pub fn cursor(req: &Request<Incoming>) -> Result<Option<Cursor>, HttpError> {
    let from_header = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match from_header.or_else(|| query_param(req, "cursor")) {
        None => Ok(None),
        Some(s) => Cursor::parse(&s)
            .map(Some)
            .map_err(|e| HttpError::new(ErrorCode::BadRequest, format!("invalid cursor: {e}"))),
    }
}

/// A registered HTTP client: holds its slot among `--max-connections`, is closed by the
/// drain, and leaves its rooms when dropped (also when hyper drops the request's future
/// because the client went away).
pub struct Registration {
    pub shared: Arc<Shared>,
    pub conn_id: u64,
    pub out: Arc<Outbound>,
    pub rooms: Vec<String>,
    /// Dropped after the rooms are left.
    _slot: Slot,
}

impl Registration {
    pub fn new(shared: &Arc<Shared>, slot: Slot, conn_id: u64) -> Self {
        let out = Outbound::new(shared.config.outbound_buffer_bytes);
        slot.register(Arc::clone(&out));
        Self {
            shared: Arc::clone(shared),
            conn_id,
            out,
            rooms: Vec::new(),
            _slot: slot,
        }
    }
}

impl Registration {
    /// Subscribes to every room from its position (events after it are queued at once).
    pub async fn attach_all(&mut self, rooms: &[String], positions: &Cursor) -> Result<(), HttpError> {
        for room in rooms {
            self.rooms.push(room.clone());
            fail::fail_point!("http.attach");
            self.shared
                .upstream
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
            self.shared.upstream.detach(room, self.conn_id);
        }
    }
}

/// The `room` and `seq` of an event's JSON, for cursors.
#[derive(Deserialize)]
pub struct EventHead<'a> {
    pub room: &'a str,
    pub seq: u64,
}

/// A JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(body))
        .expect("static response parts")
}

/// Adds CORS headers for an allowed browser origin (every origin when none are configured).
pub fn cors(
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
pub fn preflight(shared: &Shared, req: &Request<Incoming>) -> Result<Response<Body>, HttpError> {
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

#[derive(Deserialize)]
struct PublishBody<'a> {
    room: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "type")]
    kind: Option<String>,
    key: Option<String>,
}

/// `POST /publish` with `{"room","data","type"?,"key"?}` → `{"room","seq","repeat"?}` once
/// stored; a `key` seen before (same user and room, within the duplicate window) answers with
/// the stored event's seq and `"repeat":true`.
pub async fn publish(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    remote: IpAddr,
) -> Result<Response<Body>, HttpError> {
    let (_, conn) = shared.new_conn();
    let who = identify(shared, &req, &conn).await?;
    let has_sid = session_id(&req)?.is_some();
    let max = shared.config.max_message_bytes;
    // A client that sends its body slowly (or never) holds the request no longer than a handshake.
    let read = Limited::new(req.into_body(), max).collect();
    let body = tokio::time::timeout(shared.config.handshake_timeout, read)
        .await
        .map_err(|_| HttpError::new(ErrorCode::BadRequest, "the body did not arrive in time"))?
        .map_err(|_| HttpError::new(ErrorCode::TooLarge, format!("body larger than {max} bytes")))?
        .to_bytes();
    let p: PublishBody<'_> = serde_json::from_slice(&body)
        .map_err(|e| HttpError::new(ErrorCode::BadRequest, format!("malformed body: {e}")))?;
    who.check_room(&p.room, Access::Publish)?;
    if let Some(kind) = &p.kind {
        text::validate_type(kind).map_err(bad_request)?;
    }
    if let Some(key) = &p.key {
        text::validate_key(key).map_err(bad_request)?;
    }
    if !shared.http_allowed(RateKind::Publish, &who, remote, has_sid) {
        return Err(HttpError::new(ErrorCode::RateLimited, "publish rate exceeded"));
    }
    let data = p
        .data
        .ok_or_else(|| HttpError::new(ErrorCode::BadRequest, "`data` is required"))?;
    let unavailable =
        |e: &dyn std::fmt::Display| HttpError::new(ErrorCode::Unavailable, format!("publish failed: {e}"));
    let payload = Bytes::copy_from_slice(data.get().as_bytes());
    let ack = shared
        .upstream
        .publish(&p.room, payload, p.kind.as_deref(), p.key.as_deref(), &who.user)
        .await
        .map_err(|e| unavailable(&e))?;
    let ack = tokio::time::timeout(Duration::from_secs(10), ack)
        .await
        .map_err(|e| unavailable(&e))?
        .map_err(|e| unavailable(&e))?;
    crate::metrics::received();
    crate::metrics::published(ack.duplicate);
    let reply = PublishReply {
        room: p.room,
        seq: ack.sequence,
        repeat: ack.duplicate.then_some(true),
    };
    let body = serde_json::to_string(&reply).map_err(|e| unavailable(&e))?;
    Ok(json(StatusCode::OK, body))
}

/// `GET /presence?room=R` → the room's snapshot (`presence` frame JSON), without joining it.
pub async fn presence(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    remote: IpAddr,
) -> Result<Response<Body>, HttpError> {
    let (_, conn) = shared.new_conn();
    let who = identify(shared, &req, &conn).await?;
    let room = query_param(&req, "room").unwrap_or_default();
    who.check_room(&room, Access::Subscribe)?;
    request_allowed(shared, &who, remote, session_id(&req)?.is_some())?;
    let snapshot = crate::presence::snapshot(&shared.upstream, &room)
        .await
        .ok_or_else(|| HttpError::new(ErrorCode::Unavailable, "the presence service did not answer"))?;
    let frame = herald_proto::frame::ServerFrame::Presence(snapshot);
    Ok(json(StatusCode::OK, herald_proto::Codec::Json.encode_server(&frame)))
}
