//! NATS subjects. Every subject Herald uses is built here, under a configurable prefix.

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "herald";

/// Builds Herald's subjects under one prefix (`--subject-prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

// === impl Subjects ===

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `herald.room.<room>`: where room events are published and stored.
    pub fn room(&self, room: &str) -> String {
        format!("{}.room.{room}", self.prefix)
    }

    /// `herald.room.>`: the subjects of the event stream.
    pub fn rooms_wildcard(&self) -> String {
        format!("{}.room.>", self.prefix)
    }

    /// `herald.live.room.<room>`: where the stream republishes each stored event.
    pub fn live_room(&self, room: &str) -> String {
        format!("{}.live.room.{room}", self.prefix)
    }

    /// `herald.live.room.>`: the RePublish destination of the event stream.
    pub fn live_rooms_wildcard(&self) -> String {
        format!("{}.live.room.>", self.prefix)
    }

    /// The room of a `herald.room.<room>` or `herald.live.room.<room>` subject.
    pub fn room_of<'s>(&self, subject: &'s str) -> Option<&'s str> {
        let rest = subject.strip_prefix(self.prefix.as_str())?.strip_prefix('.')?;
        let rest = rest.strip_prefix("live.").unwrap_or(rest);
        rest.strip_prefix("room.")
    }

    /// `herald.presence.<room>`: presence diffs, published by fanout.
    pub fn presence(&self, room: &str) -> String {
        format!("{}.presence.{room}", self.prefix)
    }

    /// `herald.presence.*`: every room's presence diffs (room names hold no `.`).
    pub fn presence_wildcard(&self) -> String {
        format!("{}.presence.*", self.prefix)
    }

    /// `herald.api.presence.<room>`: presence snapshots, request/reply answered by fanout.
    pub fn api_presence(&self, room: &str) -> String {
        format!("{}.api.presence.{room}", self.prefix)
    }

    /// `herald.status.<user>`: a user's online/offline transitions, published by fanout.
    pub fn status(&self, user: &str) -> String {
        format!("{}.status.{user}", self.prefix)
    }

    /// `herald.lifecycle.<room>`: a room's occupied/vacated transitions, published by fanout.
    pub fn lifecycle(&self, room: &str) -> String {
        format!("{}.lifecycle.{room}", self.prefix)
    }

    /// `herald.status.>`: every user's status transitions.
    pub fn status_wildcard(&self) -> String {
        format!("{}.status.>", self.prefix)
    }

    /// `herald.api.presence.*`: snapshot requests of every room (room names hold no `.`).
    pub fn api_presence_wildcard(&self) -> String {
        format!("{}.api.presence.*", self.prefix)
    }

    /// `herald.api.status`: request/reply, the current status of a list of users.
    pub fn api_status(&self) -> String {
        format!("{}.api.status", self.prefix)
    }

    /// `herald.sys.gw.<gateway>`: a gateway's membership changes, heartbeats and snapshots.
    pub fn sys_gateway(&self, gateway: &str) -> String {
        format!("{}.sys.gw.{gateway}", self.prefix)
    }

    /// `herald.sys.gw.*`: every gateway's internal messages.
    pub fn sys_gateways_wildcard(&self) -> String {
        format!("{}.sys.gw.*", self.prefix)
    }

    /// `herald.sys.sync`: fanout asks gateways for their membership.
    pub fn sys_sync(&self) -> String {
        format!("{}.sys.sync", self.prefix)
    }

    /// The JetStream key-value bucket holding fanout's leader leases.
    pub fn leader_bucket(&self) -> String {
        format!("{}_PRESENCE", self.prefix.to_ascii_uppercase().replace(['.', '-'], "_"))
    }

    /// The JetStream stream that stores room events.
    pub fn stream_name(&self) -> String {
        format!("{}_ROOMS", self.prefix.to_ascii_uppercase().replace(['.', '-'], "_"))
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_contract_subjects() {
        let s = Subjects::default();
        assert_eq!(s.room("lobby"), "herald.room.lobby");
        assert_eq!(s.live_room("user:bob"), "herald.live.room.user:bob");
        assert_eq!(s.presence("lobby"), "herald.presence.lobby");
        assert_eq!(s.api_presence("lobby"), "herald.api.presence.lobby");
        assert_eq!(s.status("bob"), "herald.status.bob");
        assert_eq!(s.lifecycle("lobby"), "herald.lifecycle.lobby");
        assert_eq!(s.stream_name(), "HERALD_ROOMS");
        assert_eq!(s.rooms_wildcard(), "herald.room.>");
        assert_eq!(s.live_rooms_wildcard(), "herald.live.room.>");
        assert_eq!(s.presence_wildcard(), "herald.presence.*");
        assert_eq!(s.status_wildcard(), "herald.status.>");
    }

    #[test]
    fn finds_the_room_of_a_subject() {
        let s = Subjects::new("acme.push");
        assert_eq!(s.room_of("acme.push.room.lobby"), Some("lobby"));
        assert_eq!(s.room_of("acme.push.live.room.a:b"), Some("a:b"));
        assert_eq!(s.room_of("herald.room.lobby"), None);
        assert_eq!(s.stream_name(), "ACME_PUSH_ROOMS");
    }
}
