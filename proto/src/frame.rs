//! Frames: client ops and server frames, independent of the codec.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::code::ErrorCode;

/// A request id chosen by the client and echoed in the reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Num(u64),
    Str(String),
}

/// One client → server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    pub id: Option<Id>,
    pub op: ClientOp,
}

/// The ops of contract §3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    Subscribe {
        room: String,
        since: Option<u64>,
        presence: bool,
        /// A subscription token: a JWT granting this room alone (its `room` claim) to
        /// this user (its `sub`), for apps that authorise rooms one at a time.
        token: Option<String>,
    },
    Unsubscribe {
        room: String,
    },
    Publish {
        room: String,
        data: Payload,
        kind: Option<String>,
        /// The idempotency key: a repeat of the same key (same user, same room) within the
        /// stream's duplicate window is acked with the first event's seq and stored once.
        key: Option<String>,
    },
    Presence {
        room: String,
    },
    Watch {
        users: Vec<String>,
    },
    Unwatch {
        users: Vec<String>,
    },
    Ping,
}

/// An event's data as stored in NATS: JSON text (the convention) or any bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Valid JSON text.
    Json(Bytes),
    /// Bytes that are not JSON (MessagePack `bin` values).
    Binary(Bytes),
}

/// One server → client frame, as a client decodes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum ServerFrame {
    Welcome(Welcome),
    Event(Event),
    Ack(Ack),
    Pong(Pong),
    Presence(Presence),
    Status(Status),
    Error(ErrorFrame),
    Disconnect(Disconnect),
    Subscribed(Subscribed),
    Unsubscribed(Unsubscribed),
}

/// The app's backend ended the connection (`herald.api.disconnect`): the last frame before
/// the close. A client told `reconnect: false` does not connect again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub code: u16,
    pub reason: String,
    pub reconnect: bool,
}

/// The app's backend subscribed this connection to a room (`herald.api.subscribe`): its
/// events follow from `seq` on, as after an `ack` of the client's own `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    pub room: String,
    pub seq: u64,
}

/// The app's backend took a room from this connection (`herald.api.unsubscribe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribed {
    pub room: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub conn: String,
    pub user: String,
    pub gateway: String,
    pub ping_s: u64,
}

/// A room event. Decoded form: `data` holds JSON payloads, `data_bytes` everything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub room: String,
    pub seq: u64,
    pub prev: u64,
    pub ts: u64,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip)]
    pub data_bytes: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ack {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// On a publish ack: `true` when the key was seen before and `seq` is the stored event's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Pong {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
}

/// A member of a room: one user, however many connections it holds there.
///
/// `conn` is the user's oldest connection in the room; `conns` counts them all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub conn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conns: Option<u32>,
}

/// A presence diff (`joined`/`left`) or snapshot (`members`).
///
/// `count` is the number of members (unique users), `conns` the number of connections.
/// Rooms above fanout's large-room size carry counts only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Presence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    pub room: String,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conns: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<Member>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<Member>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub user: String,
    pub online: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    pub code: ErrorCode,
    pub message: String,
}

/// A stored event as the gateway holds it, borrowed for encoding.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub room: &'a str,
    pub seq: u64,
    pub prev: u64,
    pub ts: u64,
    pub kind: Option<&'a str>,
    pub from: Option<&'a str>,
    /// The payload exactly as stored.
    pub payload: &'a [u8],
}

/// A JSON `event` frame read without copying its strings or its payload: what a reader that
/// counts and times events needs (load tools), at a fraction of [`ServerFrame`]'s cost.
#[derive(Debug, Clone)]
pub struct EventView<'a> {
    pub room: std::borrow::Cow<'a, str>,
    pub seq: u64,
    pub prev: u64,
    pub ts: u64,
    /// The JSON payload as it is on the wire.
    pub data: Option<&'a serde_json::value::RawValue>,
}

impl<'a> EventView<'a> {
    /// The event in a JSON server frame; `None` for any other frame or for bytes that are no
    /// JSON frame.
    pub fn decode(json: &'a [u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            #[serde(borrow)]
            t: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            room: std::borrow::Cow<'a, str>,
            seq: u64,
            prev: u64,
            ts: u64,
            #[serde(borrow, default)]
            data: Option<&'a serde_json::value::RawValue>,
        }
        let w = serde_json::from_slice::<Wire<'a>>(json).ok()?;
        (w.t == "event").then_some(EventView {
            room: w.room,
            seq: w.seq,
            prev: w.prev,
            ts: w.ts,
            data: w.data,
        })
    }
}

// === impl ClientOp ===

impl ClientOp {
    /// The op's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Publish { .. } => "publish",
            Self::Presence { .. } => "presence",
            Self::Watch { .. } => "watch",
            Self::Unwatch { .. } => "unwatch",
            Self::Ping => "ping",
        }
    }
}

// === impl Payload ===

impl Payload {
    pub fn bytes(&self) -> &Bytes {
        match self {
            Self::Json(b) | Self::Binary(b) => b,
        }
    }
}

/// Whether `bytes` is one valid JSON value.
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<&serde_json::value::RawValue>(bytes).is_ok()
}

// === impl ErrorFrame ===

impl ErrorFrame {
    pub fn new(id: Option<Id>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }
}
