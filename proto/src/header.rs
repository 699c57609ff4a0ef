//! NATS headers Herald reads and writes on room events.

/// The event's type (e.g. `message`), set by the publisher.
pub const HERALD_TYPE: &str = "Herald-Type";
/// The user a gateway published the event for.
pub const HERALD_FROM: &str = "Herald-From";
/// De-duplication id (JetStream's duplicate window).
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// The stream sequence of a republished event: the event's `seq`.
pub const NATS_SEQUENCE: &str = "Nats-Sequence";
/// The previous sequence on the same subject: the event's `prev`.
pub const NATS_LAST_SEQUENCE: &str = "Nats-Last-Sequence";
/// When the event was stored (RFC 3339).
pub const NATS_TIME_STAMP: &str = "Nats-Time-Stamp";
/// The subject the event was stored under.
pub const NATS_SUBJECT: &str = "Nats-Subject";
/// Set by the server on each answer of a batched direct get: the answers still to come.
pub const NATS_NUM_PENDING: &str = "Nats-Num-Pending";
/// A publish is refused unless this stream would store it (the partition check's probe).
pub const NATS_EXPECTED_STREAM: &str = "Nats-Expected-Stream";
/// A publish is refused unless the subject's last sequence is this one (the probe's
/// guarantee that it is never stored).
pub const NATS_EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// Marks an ephemeral event: published on core NATS to the room's live subject, never
/// stored, delivered with seq 0 (rooms of an `ephemeral` namespace only).
pub const HERALD_EPHEMERAL: &str = "Herald-Ephemeral";

/// A message's own lifetime in the stream (NATS 2.11, streams with `allow_msg_ttl`).
pub const NATS_TTL: &str = "Nats-TTL";

/// A `Nats-TTL` value: whole seconds (at least 1).
pub fn ttl(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// The `Nats-Msg-Id` under which a gateway stores a client's publish with idempotency key
/// `key`: scoped to the user and the room, so one user's keys can neither collide with nor
/// block another's, and a key reused in another room is another event. Unambiguous: a user
/// id holds no `:` ([`crate::text::validate_user`]) and the room is length-prefixed.
pub fn msg_id(user: &str, room: &str, key: &str) -> String {
    format!("herald:{user}:{}:{room}:{key}", room.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_ids_are_scoped_and_unambiguous() {
        assert_eq!(msg_id("ann", "lobby", "k1"), "herald:ann:5:lobby:k1");
        assert_ne!(msg_id("ann", "lobby", "k1"), msg_id("bob", "lobby", "k1"));
        assert_ne!(msg_id("ann", "lobby", "k1"), msg_id("ann", "hall", "k1"));
        // A room with `:` cannot borrow from the key, nor the key from the room.
        assert_ne!(msg_id("ann", "a:b", "c"), msg_id("ann", "a", "b:c"));
    }
}
