//! Internal messages between gateways and fanout (`herald.sys.*`). Not part of the contract:
//! both sides are built from this module, and it may change between versions.
//!
//! Each gateway publishes everything on one subject, `herald.sys.gw.<gateway>`, from one
//! task, so fanout receives it in order: batches of numbered membership [`Change`]s,
//! heartbeats carrying the last change number, and (when asked on `herald.sys.sync`) a
//! snapshot of its whole membership split into parts. A gap in the numbers, a heartbeat
//! whose number differs from what fanout applied, or a new `epoch` (a restarted gateway)
//! makes fanout ask that gateway for a snapshot.

use serde::{Deserialize, Serialize};

/// One message on `herald.sys.gw.<gateway>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayMsg {
    pub gw: String,
    /// Chosen at gateway start; a new epoch means the old membership is gone.
    pub epoch: u64,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Body {
    /// Changes numbered `first`, `first + 1`, …
    Changes { first: u64, changes: Vec<Change> },
    /// Sent every heartbeat interval; `seq` is the number of the last change sent.
    Heartbeat { seq: u64 },
    /// Part `part` (0-based) of `parts` of the membership as of change `seq`.
    Snapshot {
        seq: u64,
        part: u32,
        parts: u32,
        conns: Vec<Conn>,
        members: Vec<Join>,
    },
}

/// A membership change on one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "c", rename_all = "lowercase")]
pub enum Change {
    /// A connection opened (user status counts every connection).
    Open(Conn),
    /// A connection closed; it has left every room too.
    Close { conn: String },
    /// A connection joined a room's presence.
    Join(Join),
    /// A connection left a room's presence.
    Leave { room: String, conn: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conn {
    pub conn: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Join {
    pub room: String,
    pub conn: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The longest connection id in a gateway message.
pub const MAX_CONN_LEN: usize = 256;
/// The longest gateway id (`--gateway-id`; a Kubernetes pod name has at most 253
/// characters, a generated one far fewer). Fanout keeps state per gateway id.
pub const MAX_GATEWAY_LEN: usize = 253;

/// Whether `id` can be a gateway's id: 1 to [`MAX_GATEWAY_LEN`] of `A-Z a-z 0-9 _ -` (so
/// also one subject token of `herald.sys.gw.<gateway>`).
pub fn valid_gateway(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_GATEWAY_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

// === impl Change ===

impl Change {
    /// Whether every string in the change is one a gateway could have sent: valid room
    /// names and user ids (they become NATS subjects), bounded connection ids, clean names.
    /// Fanout drops anything else, whoever published it on the internal subjects.
    pub fn is_valid(&self) -> bool {
        match self {
            Self::Open(c) => c.is_valid(),
            Self::Close { conn } => valid_conn(conn),
            Self::Join(j) => j.is_valid(),
            Self::Leave { room, conn } => crate::room::validate(room).is_ok() && valid_conn(conn),
        }
    }
}

impl Conn {
    pub fn is_valid(&self) -> bool {
        valid_conn(&self.conn) && crate::text::validate_user(&self.user).is_ok()
    }
}

impl Join {
    pub fn is_valid(&self) -> bool {
        crate::room::validate(&self.room).is_ok()
            && valid_conn(&self.conn)
            && crate::text::validate_user(&self.user).is_ok()
            && self
                .name
                .as_deref()
                .is_none_or(|n| crate::text::validate_name(n).is_ok())
    }
}

fn valid_conn(conn: &str) -> bool {
    !conn.is_empty() && conn.len() <= MAX_CONN_LEN
}

/// Body of `herald.sys.sync`: every gateway (or only `gw`) publishes a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// Body of a `herald.api.status` request: the users whose status is wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    pub users: Vec<String>,
}

/// Reply to a `herald.api.status` request, in the order asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    pub users: Vec<crate::frame::Status>,
}

/// A command fanout sends every gateway on `herald.sys.ctl` (a request: each gateway
/// answers with a [`ControlReply`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Control {
    /// Close every connection of `user` with a `disconnect` frame and the close code;
    /// with `revocation`, refuse the user's older tokens from now on.
    Disconnect {
        user: String,
        code: u16,
        reason: String,
        reconnect: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revocation: Option<crate::api::Revocation>,
    },
    /// Subscribe every connection of `user` to `room` (granted server-side).
    Subscribe { user: String, room: String, presence: bool },
    /// Take `room` from every connection of `user`.
    Unsubscribe { user: String, room: String },
    /// Report the rooms with local subscribers whose names start with `prefix` (at most
    /// [`crate::api::MAX_GATEWAY_ROOMS`], most subscribers first).
    Rooms { prefix: String },
    /// Report `user`'s connections.
    Connections { user: String },
}

/// A gateway's answer to a [`Control`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    pub gw: String,
    /// Connections the command reached.
    pub connections: u64,
    /// `Rooms`: this gateway's rooms and local subscriber counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<crate::api::RoomCount>,
    /// `Rooms`: more rooms matched than were reported; `Connections`: more connections.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// `Connections`: the user's connections here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conns: Vec<crate::api::Connection>,
}

/// A stable 64-bit hash (FNV-1a) of a name, equal in every process: it assigns rooms and
/// users to fanout partitions.
pub fn stable_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_a_compact_tagged_form() {
        let msg = GatewayMsg {
            gw: "gw-a".into(),
            epoch: 7,
            body: Body::Changes {
                first: 3,
                changes: vec![
                    Change::Open(Conn {
                        conn: "gw-a-1".into(),
                        user: "bob".into(),
                    }),
                    Change::Leave {
                        room: "lobby".into(),
                        conn: "gw-a-1".into(),
                    },
                ],
            },
        };
        let text = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            text,
            r#"{"gw":"gw-a","epoch":7,"k":"changes","first":3,"changes":[{"c":"open","conn":"gw-a-1","user":"bob"},{"c":"leave","room":"lobby","conn":"gw-a-1"}]}"#
        );
        assert_eq!(serde_json::from_str::<GatewayMsg>(&text).unwrap(), msg);
    }

    #[test]
    fn gateway_ids_are_short_subject_tokens() {
        assert!(valid_gateway("gw-a_1") && valid_gateway(&"g".repeat(MAX_GATEWAY_LEN)));
        for bad in ["", "a.b", "a*", "a b", &"g".repeat(MAX_GATEWAY_LEN + 1)] {
            assert!(!valid_gateway(bad), "{bad:?}");
        }
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
