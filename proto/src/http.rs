//! The HTTP transports: their paths, query parameters and headers, the `/poll` answer, the
//! `POST /publish` reply, the error body of every HTTP error, and what an SSE stream names its
//! events.

use serde::{Deserialize, Serialize};

use crate::frame::{Disconnect, Event, Presence, Status, Subscribed};
use crate::ErrorCode;

/// The gateway's paths.
pub mod path {
    /// `GET`: the WebSocket upgrade.
    pub const WS: &str = "/ws";
    /// `GET`: an SSE stream.
    pub const SSE: &str = "/sse";
    /// `GET`: a short or long poll.
    pub const POLL: &str = "/poll";
    /// `POST`: a polling client leaves its rooms.
    pub const POLL_LEAVE: &str = "/poll/leave";
    /// `POST`: publish one event.
    pub const PUBLISH: &str = "/publish";
    /// `GET`: a room's presence snapshot.
    pub const PRESENCE: &str = "/presence";
    /// `GET`: a plain WebSocket echo (with `--echo-endpoint`, for protocol test suites).
    pub const ECHO: &str = "/echo";
}

/// The query parameters of the HTTP transports (and of the WebSocket upgrade: `token`, `sid`,
/// `name`).
pub mod param {
    /// A bearer token, when the client cannot send `Authorization`.
    pub const TOKEN: &str = "token";
    /// `a,b`: the rooms to read.
    pub const ROOMS: &str = "rooms";
    /// `room:seq,...`: where to resume (see [`crate::cursor`]).
    pub const CURSOR: &str = "cursor";
    /// An anonymous user's display name.
    pub const NAME: &str = "name";
    /// The session id a client keeps across reconnects.
    pub const SID: &str = "sid";
    /// Seconds a long poll may wait.
    pub const WAIT: &str = "wait";
    /// The rooms (or `1`/`true`: all of them) to be a member of.
    pub const PRESENCE: &str = "presence";
    /// `a,b`: users whose status to follow.
    pub const WATCH: &str = "watch";
    /// The one room of `GET /presence`.
    pub const ROOM: &str = "room";
    /// `jwt,jwt`: subscription tokens, each opening one of `rooms` the connection token
    /// does not grant.
    pub const ROOM_TOKENS: &str = "room_tokens";
}

/// The request header an SSE client resumes with (lower case, as HTTP/1 header maps hold it).
pub const LAST_EVENT_ID: &str = "last-event-id";

/// `event: presence` on an SSE stream: a `presence` frame's JSON.
pub const SSE_PRESENCE: &str = "presence";
/// `event: status` on an SSE stream: a `status` frame's JSON.
pub const SSE_STATUS: &str = "status";
/// `event: disconnect` on an SSE stream: a `disconnect` frame's JSON, the stream's last.
pub const SSE_DISCONNECT: &str = "disconnect";
/// `event: subscribed` on an SSE stream: a `subscribed` frame's JSON (the stream now
/// carries the room).
pub const SSE_SUBSCRIBED: &str = "subscribed";
/// `event: unsubscribed` on an SSE stream: an `unsubscribed` frame's JSON.
pub const SSE_UNSUBSCRIBED: &str = "unsubscribed";
/// `event: unrecovered` on an SSE stream: an [`Unrecovered`].
pub const SSE_UNRECOVERED: &str = "unrecovered";

/// The answer to `GET /poll`, as a client decodes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollAnswer {
    pub events: Vec<Event>,
    /// Where to poll from next: `room:seq,...` for every room asked.
    pub cursor: String,
    #[serde(flatten)]
    pub tail: PollTail,
}

/// What a poll answer says besides its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollTail {
    /// The answer is capped and history continues after its cursor: poll again at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// Rooms whose cursor was beyond what the stream holds (recreated or purged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrecovered: Vec<String>,
    /// Snapshots of the rooms the poll is a member of (when fanout answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Vec<Presence>>,
    /// Statuses of the watched users (when fanout answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<Status>>,
    /// The app ended this client's session (`herald.api.disconnect`); with `reconnect:
    /// false`, poll no more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<Disconnect>,
    /// Rooms the app's backend subscribed this client to (`herald.api.subscribe`): poll them
    /// from now on, from the `seq` given (the answer's cursor holds it too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribed: Vec<Subscribed>,
    /// Rooms the app's backend took from this client: poll them no more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsubscribed: Vec<String>,
}

/// A poll answer around events already encoded as JSON (as the gateway holds them):
/// `{"events":[...],"cursor":"...",<tail>}`.
pub fn encode_poll_answer(events: &[impl AsRef<[u8]>], cursor: &str, tail: &PollTail) -> Vec<u8> {
    #[derive(Serialize)]
    struct Rest<'a> {
        cursor: &'a str,
        #[serde(flatten)]
        tail: &'a PollTail,
    }
    let rest = serde_json::to_vec(&Rest { cursor, tail }).expect("plain data serializes");
    let mut body = Vec::with_capacity(16 + rest.len() + events.iter().map(|e| e.as_ref().len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"events\":[");
    for (i, ev) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(ev.as_ref());
    }
    body.extend_from_slice(b"],");
    body.extend_from_slice(&rest[1..]);
    body
}

/// The answer to `POST /publish`: where the event was stored; `repeat` when its idempotency
/// key was seen before and `seq` is the stored event's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishReply {
    pub room: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<bool>,
}

/// The body of every HTTP error: `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

/// `event: unrecovered` on SSE: `{"t":"unrecovered","rooms":[..]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename = "unrecovered")]
pub struct Unrecovered {
    pub rooms: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_answer_wraps_encoded_events_and_decodes_back() {
        let ev = br#"{"t":"event","room":"a","seq":3,"prev":2,"ts":1,"data":{"x":1}}"#;
        let tail = PollTail {
            more: true,
            unrecovered: vec!["b".into()],
            presence: None,
            status: Some(vec![Status {
                user: "ann".into(),
                online: true,
            }]),
            disconnect: None,
            subscribed: vec![],
            unsubscribed: vec![],
        };
        let body = encode_poll_answer(&[&ev[..], &ev[..]], "a:3,b:9", &tail);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            format!(
                r#"{{"events":[{e},{e}],"cursor":"a:3,b:9","more":true,"unrecovered":["b"],"status":[{{"user":"ann","online":true}}]}}"#,
                e = std::str::from_utf8(ev).unwrap()
            )
        );
        let back: PollAnswer = serde_json::from_slice(&body).unwrap();
        assert_eq!(back.events.len(), 2);
        assert_eq!(back.tail, tail);
        let empty = encode_poll_answer(&[] as &[&[u8]], "", &PollTail::default());
        assert_eq!(empty, br#"{"events":[],"cursor":""}"#);
    }

    #[test]
    fn error_bodies_and_unrecovered_have_their_wire_shape() {
        let e = serde_json::to_string(&ErrorBody::new(ErrorCode::BadRequest, "no")).unwrap();
        assert_eq!(e, r#"{"error":{"code":"bad_request","message":"no"}}"#);
        let u = serde_json::to_string(&Unrecovered {
            rooms: vec!["a".into()],
        })
        .unwrap();
        assert_eq!(u, r#"{"t":"unrecovered","rooms":["a"]}"#);
        let r = PublishReply {
            room: "a".into(),
            seq: 1,
            repeat: None,
        };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"room":"a","seq":1}"#);
    }
}
