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
