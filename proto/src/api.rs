//! The server API: what an app backend asks of Herald on `herald.api.<method>` (NATS
//! request/reply, JSON bodies), and what it gets back: `{"result": …}` or the error body
//! of the HTTP transports, `{"error": {"code": …, "message": …}}`.
//!
//! Unknown fields in a request are ignored (forward compatibility); a field of the wrong
//! type, a user id or reason the rules below refuse, or a body that is not JSON is
//! `bad_request`.

use serde::{Deserialize, Serialize};

use crate::code::ErrorCode;
use crate::http::ErrorBody;

/// The methods, each the last token of its subject (`herald.api.disconnect`).
pub mod method {
    /// Close every connection of a user on every gateway; optionally revoke its tokens.
    pub const DISCONNECT: &str = "disconnect";
    /// Subscribe every connection of a user to a room, and let the user's clients
    /// subscribe to it from then on.
    pub const SUBSCRIBE: &str = "subscribe";
    /// Undo `subscribe`: the room leaves every connection of the user.
    pub const UNSUBSCRIBE: &str = "unsubscribe";
    /// Store an event in one room or several.
    pub const PUBLISH: &str = "publish";
    /// A page of a room's stored events.
    pub const HISTORY: &str = "history";
    /// A room's presence snapshot.
    pub const PRESENCE: &str = "presence";
    /// Rooms with subscribers, cluster-wide, with their counts.
    pub const ROOMS: &str = "rooms";
    /// A user's connections on every gateway.
    pub const CONNECTIONS: &str = "connections";
    /// Every method, in the order the docs list them.
    pub const ALL: [&str; 8] = [
        DISCONNECT,
        SUBSCRIBE,
        UNSUBSCRIBE,
        PUBLISH,
        HISTORY,
        PRESENCE,
        ROOMS,
        CONNECTIONS,
    ];
}

/// Most rooms one `rooms` answer lists (and its default: 100), and most one gateway
/// reports for it.
pub const MAX_ROOMS_LIMIT: usize = 1000;
pub const DEFAULT_ROOMS_LIMIT: usize = 100;
pub const MAX_GATEWAY_ROOMS: usize = 5_000;

/// `herald.api.rooms`: the rooms with local subscribers on any gateway whose names start
/// with `prefix`, most subscribers first, at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsRequest {
    #[serde(default)]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A room and its subscribers (connections subscribed to it) over every gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCount {
    pub room: String,
    pub subscribers: u64,
}

/// The result of `rooms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsResult {
    pub rooms: Vec<RoomCount>,
    /// A gateway had more matching rooms than it reports ([`MAX_GATEWAY_ROOMS`]), or more
    /// rooms matched than `limit`: narrow `prefix` for the rest.
    pub truncated: bool,
    pub gateways: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// `herald.api.connections`: the connections `user` has on every gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsRequest {
    pub user: String,
}

/// One connection of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// Its id (a polling session's is a digest of its sid).
    pub conn: String,
    pub gateway: String,
    /// `websocket`, `sse`, `long-poll` (a poll in flight) or `poll` (a polling session).
    pub transport: String,
    /// When it opened, in ms since the epoch.
    pub since: u64,
    /// The rooms it is subscribed to (a polling session: its presence rooms).
    pub rooms: Vec<String>,
}

/// The result of `connections`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsResult {
    pub connections: Vec<Connection>,
    /// A gateway had more of the user's connections than one answer holds (512 KiB).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    pub gateways: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// Most rooms one `publish` names.
pub const MAX_PUBLISH_ROOMS: usize = 100;
/// Most events one `history` answer holds (and its default).
pub const MAX_HISTORY_LIMIT: usize = 1000;
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// `herald.api.publish`: stores `data` (any JSON) as an event of `room`, or of each of
/// `rooms` (one of the two), with `type`; with `key`, a repeat within the stream's
/// duplicate window is stored once per room (and answered with `repeat: true`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    pub data: Box<serde_json::value::RawValue>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Where one event of a `publish` was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub room: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeat: bool,
}

/// The result of a `publish`: `{"room","seq"}` for `room`, `{"rooms":[…]}` for `rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PublishResult {
    Many { rooms: Vec<Published> },
    One(Published),
}

/// `herald.api.history`: up to `limit` stored events of `room` after seq `since`, oldest
/// first; page on with the last one's seq while `more`. Or, with `last`, the room's newest
/// `last` events (before seq `before`, when given), still oldest first; page back with the
/// first one's seq as `before` while `more`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    pub room: String,
    #[serde(default)]
    pub since: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// Which way a [`HistoryRequest`] reads, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryRead {
    /// Up to `limit` events after seq `since`.
    Forward { since: u64, limit: usize },
    /// The newest `last` events before seq `before` (all of them when `None`).
    Backward { before: Option<u64>, last: usize },
}

/// A page of history: `event` frames, as clients get them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResult {
    pub room: String,
    pub events: Vec<Box<serde_json::value::RawValue>>,
    /// More events are stored after the page (before it, when reading with `last`).
    pub more: bool,
}

/// `herald.api.presence`: the room's presence snapshot (a `presence` frame with
/// `members`, or counts only for a large room).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRequest {
    pub room: String,
}

/// The `Nats-Msg-Id` of an API publish with idempotency key `key` in `room`: scoped to the
/// room, and apart from every client's (see [`crate::header::msg_id`]).
pub fn publish_msg_id(room: &str, key: &str) -> String {
    format!("herald-api:{}:{room}:{key}", room.len())
}

/// The close code a `disconnect` sends when the request names none.
pub const DEFAULT_DISCONNECT_CODE: u16 = 4000;
/// The reason a `disconnect` sends when the request names none.
pub const DEFAULT_DISCONNECT_REASON: &str = "disconnected";
/// The longest close reason: a WebSocket close frame holds 125 bytes, 2 of them the code.
pub const MAX_REASON_BYTES: usize = 123;

/// `herald.api.disconnect`: closes every connection `user` has, on every gateway and every
/// transport. Each client first gets a `disconnect` frame (`code`, `reason`, `reconnect`);
/// a WebSocket then gets a close frame with `code` and `reason`. With `revoke`, every token
/// of `user` issued before this request (`iat` at or before its second; a token without
/// `iat` counts as issued before) is refused by every gateway until the revocation expires
/// (fanout's `--revocation-ttl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectRequest {
    pub user: String,
    /// A close code of the application range, 4000–4999. Default 4000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// At most 123 bytes, no control characters. Default `disconnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the client should connect again (herald.js stops when false). Default true.
    #[serde(default = "yes")]
    pub reconnect: bool,
    #[serde(default)]
    pub revoke: bool,
}

/// `herald.api.subscribe`: grants `user` the room server-side (stored in the grant
/// bucket: the user's clients may subscribe to it whatever their token says, on any
/// gateway, until `unsubscribe`), and subscribes every connection the user has now to it
/// at its live tail: a WebSocket gets a `subscribed` frame, SSE `event: subscribed`, a
/// long-poll (or a polling session's next poll) `"subscribed"` in its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    pub user: String,
    pub room: String,
    /// Also join the room's presence (WebSocket connections).
    #[serde(default)]
    pub presence: bool,
}

/// `herald.api.unsubscribe`: removes the grant `subscribe` stored and takes the room from
/// every connection of `user` (`unsubscribed` frame / event / answer field). A grant the
/// token itself holds is not affected: the client may subscribe again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeRequest {
    pub user: String,
    pub room: String,
}

/// What a command reached: the result of `disconnect`, `subscribe` and `unsubscribe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reached {
    /// Connections closed, over every gateway that answered.
    pub connections: u64,
    /// Gateways that answered.
    pub gateways: u64,
    /// Gateways fanout heard from lately that did not answer in time (they may still hold
    /// connections of the user; a revocation still reaches them through the bucket).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// With `revoke`: tokens issued at or before this time (ms since the epoch) are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_before: Option<u64>,
}

/// A request refused before anything was done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// What the API answers: `{"result": …}` or `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply<T> {
    Result { result: T },
    Error(ErrorBody),
}

fn yes() -> bool {
    true
}

// === impl DisconnectRequest ===

impl DisconnectRequest {
    /// The request with its defaults filled in, or why it is refused.
    pub fn checked(mut self) -> Result<Self, ApiError> {
        crate::text::validate_user(&self.user).map_err(|e| ApiError::bad_request(format!("`user`: {e}")))?;
        let code = self.code.unwrap_or(DEFAULT_DISCONNECT_CODE);
        if !(4000..=4999).contains(&code) {
            return Err(ApiError::bad_request("`code` must be 4000 to 4999"));
        }
        let reason = self
            .reason
            .take()
            .unwrap_or_else(|| DEFAULT_DISCONNECT_REASON.to_owned());
        if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "`reason` must be at most {MAX_REASON_BYTES} bytes without control characters"
            )));
        }
        self.code = Some(code);
        self.reason = Some(reason);
        Ok(self)
    }
}

impl SubscribeRequest {
    pub fn checked(self) -> Result<Self, ApiError> {
        check_user_room(&self.user, &self.room)?;
        Ok(self)
    }
}

impl UnsubscribeRequest {
    pub fn checked(self) -> Result<Self, ApiError> {
        check_user_room(&self.user, &self.room)?;
        Ok(self)
    }
}

impl PublishRequest {
    /// The rooms to publish to, checked, without repeats; or why the request is refused.
    pub fn rooms(&self) -> Result<Vec<String>, ApiError> {
        let rooms = match (&self.room, &self.rooms) {
            (Some(room), None) => vec![room.clone()],
            (None, Some(rooms)) if !rooms.is_empty() && rooms.len() <= MAX_PUBLISH_ROOMS => {
                let mut rooms = rooms.clone();
                rooms.sort();
                rooms.dedup();
                rooms
            }
            (None, Some(_)) => {
                return Err(ApiError::bad_request(format!(
                    "`rooms` must name 1 to {MAX_PUBLISH_ROOMS} rooms"
                )))
            }
            _ => return Err(ApiError::bad_request("give `room` or `rooms`, not both")),
        };
        for room in &rooms {
            crate::room::validate(room).map_err(|e| ApiError::bad_request(format!("`room`: {e}")))?;
        }
        if let Some(kind) = &self.kind {
            crate::text::validate_type(kind).map_err(|e| ApiError::bad_request(format!("`type`: {e}")))?;
        }
        if let Some(key) = &self.key {
            crate::text::validate_key(key).map_err(|e| ApiError::bad_request(format!("`key`: {e}")))?;
        }
        Ok(rooms)
    }
}

impl RoomsRequest {
    /// The number of rooms asked for (default 100), or why the request is refused.
    pub fn checked_limit(&self) -> Result<usize, ApiError> {
        if self.prefix.len() > crate::room::MAX_ROOM_LEN || !self.prefix.bytes().all(crate::room::is_room_byte) {
            return Err(ApiError::bad_request(
                "`prefix` must be at most 128 room-name characters",
            ));
        }
        match self.limit.unwrap_or(DEFAULT_ROOMS_LIMIT) {
            n @ 1..=MAX_ROOMS_LIMIT => Ok(n),
            _ => Err(ApiError::bad_request(format!("`limit` must be 1 to {MAX_ROOMS_LIMIT}"))),
        }
    }
}

impl HistoryRequest {
    /// The read asked for (a page of 100 when no size is given), or why it is refused.
    pub fn checked(&self) -> Result<HistoryRead, ApiError> {
        crate::room::validate(&self.room).map_err(|e| ApiError::bad_request(format!("`room`: {e}")))?;
        let size = |n: Option<usize>, name: &str| match n.unwrap_or(DEFAULT_HISTORY_LIMIT) {
            n @ 1..=MAX_HISTORY_LIMIT => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "`{name}` must be 1 to {MAX_HISTORY_LIMIT}"
            ))),
        };
        match (self.last, self.before) {
            (None, None) => Ok(HistoryRead::Forward {
                since: self.since,
                limit: size(self.limit, "limit")?,
            }),
            (None, Some(_)) => Err(ApiError::bad_request("`before` pages back a read with `last`")),
            (Some(_), _) if self.since != 0 || self.limit.is_some() => Err(ApiError::bad_request(
                "`last` reads back from the newest event: use it without `since` and `limit`",
            )),
            (Some(_), Some(0)) => Err(ApiError::bad_request("`before` must be a seq, at least 1")),
            (last, before) => Ok(HistoryRead::Backward {
                before,
                last: size(last, "last")?,
            }),
        }
    }
}

fn check_user_room(user: &str, room: &str) -> Result<(), ApiError> {
    crate::text::validate_user(user).map_err(|e| ApiError::bad_request(format!("`user`: {e}")))?;
    crate::room::validate(room).map_err(|e| ApiError::bad_request(format!("`room`: {e}")))
}

// === impl ApiError ===

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

// === impl Reply ===

impl<T> Reply<T> {
    pub fn from_result(r: Result<T, ApiError>) -> Self {
        match r {
            Ok(result) => Self::Result { result },
            Err(e) => Self::Error(ErrorBody::new(e.code, e.message)),
        }
    }
}

/// Decodes a request body: not JSON, or a field of the wrong type, is `bad_request`.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

/// The key of a user's entry in the revocation bucket: its id in base64url (a key holds
/// `A-Z a-z 0-9 - _ = . /`, and user ids may hold `@`).
pub fn revocation_key(user: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(user)
}

/// The key of a server-side grant in the grant bucket: the user's and the room's names in
/// base64url, joined by `.` (so one user's grants are `<user>.>`).
pub fn grant_key(user: &str, room: &str) -> String {
    format!("{}.{}", revocation_key(user), revocation_key(room))
}

/// A server-side grant (`herald.api.subscribe`), as the grant bucket holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// When it was made, in ms since the epoch.
    pub at: u64,
}

/// The user of a revocation bucket key, if the key is one [`revocation_key`] makes.
pub fn user_of_revocation_key(key: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key).ok()?;
    let user = String::from_utf8(bytes).ok()?;
    crate::text::validate_user(&user).is_ok().then_some(user)
}

/// A user's entry in the revocation bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Tokens issued at or before this time (ms since the epoch) are refused…
    pub before: u64,
    /// …until this time (ms since the epoch), when the entry lapses.
    pub until: u64,
    /// The `disconnect` that came with it, for a gateway the command did not reach: it
    /// closes the user's connections with this frame (entries written before it existed:
    /// code 4000, reason `revoked`, no reconnect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<crate::frame::Disconnect>,
}

impl Revocation {
    /// Whether a token issued at `iat` (seconds since the epoch; `None`: unknown) is
    /// refused at `now` (ms since the epoch).
    pub fn refuses(&self, iat: Option<u64>, now: u64) -> bool {
        now < self.until && iat.is_none_or(|s| s.saturating_mul(1000) <= self.before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disconnect_request_gets_its_defaults_and_its_limits() {
        let r: DisconnectRequest = decode(br#"{"user":"bob","extra":1}"#).unwrap();
        let r = r.checked().unwrap();
        assert_eq!(r.code, Some(4000));
        assert_eq!(r.reason.as_deref(), Some("disconnected"));
        assert!(r.reconnect && !r.revoke);
        for (body, what) in [
            (r#"{"user":"bo b"}"#, "`user`"),
            (r#"{"user":""}"#, "`user`"),
            (r#"{"user":"bob","code":1000}"#, "`code`"),
            (r#"{"user":"bob","code":5000}"#, "`code`"),
            (r#"{"user":"bob","reason":"a\nb"}"#, "`reason`"),
        ] {
            let e = decode::<DisconnectRequest>(body.as_bytes())
                .unwrap()
                .checked()
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.contains(what), "{body}: {e}");
        }
        let long = format!(r#"{{"user":"bob","reason":"{}"}}"#, "é".repeat(62));
        assert!(decode::<DisconnectRequest>(long.as_bytes()).unwrap().checked().is_err());
        for bad in [
            &b"nope"[..],
            br#"{"user":7}"#,
            br#"{"user":"a","code":70000}"#,
            br#"{"user":"a","reconnect":"no"}"#,
        ] {
            assert_eq!(
                decode::<DisconnectRequest>(bad).unwrap_err().code,
                ErrorCode::BadRequest
            );
        }
    }

    #[test]
    fn publish_and_history_requests_are_checked() {
        let one: PublishRequest = decode(br#"{"room":"a","data":{"x":1},"type":"t","key":"k"}"#).unwrap();
        assert_eq!(one.rooms().unwrap(), ["a"]);
        assert_eq!(one.data.get(), r#"{"x":1}"#);
        let many: PublishRequest = decode(br#"{"rooms":["b","a","b"],"data":null}"#).unwrap();
        assert_eq!(many.rooms().unwrap(), ["a", "b"]);
        let too_many = format!(r#"{{"rooms":{:?},"data":1}}"#, vec!["r"; MAX_PUBLISH_ROOMS + 1]);
        for bad in [
            r#"{"data":1}"#.to_owned(),
            r#"{"room":"a","rooms":["b"],"data":1}"#.to_owned(),
            r#"{"rooms":[],"data":1}"#.to_owned(),
            too_many,
            r#"{"room":"a b","data":1}"#.to_owned(),
            r#"{"room":"a","data":1,"type":"a\nb"}"#.to_owned(),
        ] {
            let r: PublishRequest = decode(bad.as_bytes()).unwrap();
            assert_eq!(r.rooms().unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
        assert!(
            decode::<PublishRequest>(br#"{"room":"a"}"#).is_err(),
            "`data` is required"
        );
        let read = |body: &[u8]| decode::<HistoryRequest>(body).unwrap().checked();
        assert_eq!(
            read(br#"{"room":"a"}"#).unwrap(),
            HistoryRead::Forward { since: 0, limit: 100 }
        );
        assert_eq!(
            read(br#"{"room":"a","since":7,"limit":1000}"#).unwrap(),
            HistoryRead::Forward { since: 7, limit: 1000 }
        );
        assert_eq!(
            read(br#"{"room":"a","last":50}"#).unwrap(),
            HistoryRead::Backward { before: None, last: 50 }
        );
        assert_eq!(
            read(br#"{"room":"a","last":1,"before":9}"#).unwrap(),
            HistoryRead::Backward {
                before: Some(9),
                last: 1
            }
        );
        for bad in [
            &br#"{"room":"a","limit":0}"#[..],
            br#"{"room":"a","limit":1001}"#,
            br#"{"room":"","limit":5}"#,
            br#"{"room":"a","last":0}"#,
            br#"{"room":"a","last":1001}"#,
            br#"{"room":"a","last":5,"since":3}"#,
            br#"{"room":"a","last":5,"limit":3}"#,
            br#"{"room":"a","last":5,"before":0}"#,
            br#"{"room":"a","before":5}"#,
        ] {
            let e = read(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{}", String::from_utf8_lossy(bad));
        }
        assert!(decode::<HistoryRequest>(br#"{"room":"a","before":-1,"last":2}"#).is_err());
        assert!(decode::<HistoryRequest>(br#"{"room":"a","since":-1}"#).is_err());
        let one = PublishResult::One(Published {
            room: "a".into(),
            seq: 3,
            repeat: false,
        });
        assert_eq!(serde_json::to_string(&one).unwrap(), r#"{"room":"a","seq":3}"#);
        assert_ne!(publish_msg_id("a:b", "c"), publish_msg_id("a", "b:c"));
    }

    #[test]
    fn replies_have_their_wire_shape() {
        let ok = Reply::from_result(Ok(Reached {
            connections: 2,
            gateways: 1,
            ..Default::default()
        }));
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"result":{"connections":2,"gateways":1}}"#
        );
        let err = Reply::<Reached>::from_result(Err(ApiError::bad_request("no")));
        let text = serde_json::to_string(&err).unwrap();
        assert_eq!(text, r#"{"error":{"code":"bad_request","message":"no"}}"#);
        assert_eq!(serde_json::from_str::<Reply<Reached>>(&text).unwrap(), err);
    }

    #[test]
    fn a_revocation_refuses_tokens_issued_up_to_its_second_until_it_lapses() {
        let r = Revocation {
            before: 10_500,
            until: 20_000,
            close: None,
        };
        // An entry of an older fanout (no close) reads as one; a close round-trips.
        assert_eq!(
            serde_json::from_str::<Revocation>(r#"{"before":10500,"until":20000}"#).unwrap(),
            r
        );
        let with = Revocation {
            close: Some(crate::frame::Disconnect {
                code: 4001,
                reason: "banned".into(),
                reconnect: false,
            }),
            ..r.clone()
        };
        assert_eq!(
            serde_json::from_str::<Revocation>(&serde_json::to_string(&with).unwrap()).unwrap(),
            with
        );
        assert!(r.refuses(Some(10), 11_000));
        assert!(r.refuses(None, 11_000));
        assert!(!r.refuses(Some(11), 11_000));
        assert!(!r.refuses(Some(10), 20_000));
        assert!(
            !r.refuses(Some(u64::MAX), 0),
            "an overflowing iat is not before anything"
        );
        assert_eq!(revocation_key("a@b=c"), "YUBiPWM");
        assert_eq!(user_of_revocation_key("YUBiPWM").as_deref(), Some("a@b=c"));
        assert_eq!(user_of_revocation_key("YS5i"), None, "`a.b` is no user id");
        assert_eq!(user_of_revocation_key("!"), None);
        assert_eq!(grant_key("a@b=c", "user:x"), "YUBiPWM.dXNlcjp4");
        let r: SubscribeRequest = decode(br#"{"user":"ann","room":"chat:1"}"#).unwrap();
        assert!(!r.clone().checked().unwrap().presence);
        for bad in [
            r#"{"user":"ann","room":"a b"}"#,
            r#"{"user":"a.n","room":"x"}"#,
            r#"{"user":"ann"}"#,
        ] {
            let e = decode::<SubscribeRequest>(bad.as_bytes()).and_then(SubscribeRequest::checked);
            assert_eq!(e.unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
    }
}
