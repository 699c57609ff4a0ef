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

    /// `herald.api.<method>`: a method of the server API (request/reply, answered by fanout).
    pub fn api(&self, method: &str) -> String {
        format!("{}.api.{method}", self.prefix)
    }

    /// `herald.sys.ctl`: fanout's commands to every gateway (request/reply, every gateway
    /// answers).
    pub fn sys_control(&self) -> String {
        format!("{}.sys.ctl", self.prefix)
    }

    /// The JetStream key-value bucket of token revocations (one entry per user).
    pub fn revocation_bucket(&self) -> String {
        format!("{}_REVOKED", self.prefix.to_ascii_uppercase().replace(['.', '-'], "_"))
    }

    /// The JetStream key-value bucket of server-side grants (`herald.api.subscribe`).
    pub fn grant_bucket(&self) -> String {
        format!("{}_GRANTS", self.prefix.to_ascii_uppercase().replace(['.', '-'], "_"))
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

/// The most partitions the event stream may be split into: each is a stream with its own Raft
/// group and files, and the gateway's start-up check publishes a probe to each.
pub const MAX_PARTITIONS: u32 = 1024;

/// Where room events are stored: one stream (`HERALD_ROOMS`, subjects `herald.room.>`) or, with
/// `count` > 1, `count` streams `HERALD_ROOMS_<i>`. With partitions, the NATS server maps
/// `herald.room.<room>` to `herald.part.<i>.<room>` ([`Partitions::mapping`]), `i` being
/// [`partition`] of the room's name; stream `i` stores `herald.part.<i>.*` and republishes to
/// the same live subjects `herald.live.room.<room>` as the single stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    subjects: Subjects,
    count: u32,
}

/// The partition of `room` among `count`, as nats-server's `{{partition(count,1)}}` mapping
/// computes it: FNV-1a (32 bits) of the token's bytes, modulo `count`.
pub fn partition(room: &str, count: u32) -> u32 {
    room_hash(room) % count.max(1)
}

/// FNV-1a, 32 bits: the hash nats-server's `partition()` takes of the mapped tokens.
pub fn room_hash(room: &str) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    room.bytes().fold(OFFSET, |h, b| (h ^ u32::from(b)).wrapping_mul(PRIME))
}

// === impl Partitions ===

impl Partitions {
    /// `count` streams (at least 1, at most [`MAX_PARTITIONS`]).
    pub fn new(subjects: Subjects, count: u32) -> Self {
        Self {
            subjects,
            count: count.clamp(1, MAX_PARTITIONS),
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The partition that stores `room` (0 with one stream).
    pub fn of(&self, room: &str) -> u32 {
        partition(room, self.count)
    }

    /// The name of stream `i`: `HERALD_ROOMS`, or `HERALD_ROOMS_<i>` with partitions.
    pub fn stream(&self, i: u32) -> String {
        if self.count == 1 {
            self.subjects.stream_name()
        } else {
            format!("{}_{i}", self.subjects.stream_name())
        }
    }

    /// The name of the stream that stores `room`.
    pub fn stream_of(&self, room: &str) -> String {
        self.stream(self.of(room))
    }

    /// The subject `room`'s events are stored under (publishers still use
    /// [`Subjects::room`]; the server maps it).
    pub fn stored_subject(&self, room: &str) -> String {
        if self.count == 1 {
            self.subjects.room(room)
        } else {
            format!("{}.part.{}.{room}", self.subjects.prefix(), self.of(room))
        }
    }

    /// The subjects stream `i` captures: `herald.room.>`, or `herald.part.<i>.*`.
    pub fn stream_subjects(&self, i: u32) -> String {
        if self.count == 1 {
            self.subjects.rooms_wildcard()
        } else {
            format!("{}.part.{i}.*", self.subjects.prefix())
        }
    }

    /// Stream `i`'s RePublish source and destination: back to `herald.live.room.<room>`.
    pub fn republish(&self, i: u32) -> (String, String) {
        if self.count == 1 {
            (self.subjects.rooms_wildcard(), self.subjects.live_rooms_wildcard())
        } else {
            (
                self.stream_subjects(i),
                format!("{}.live.room.{{{{wildcard(1)}}}}", self.subjects.prefix()),
            )
        }
    }

    /// The NATS server's subject mapping (source, destination) that spreads rooms over the
    /// partitions; `None` with one stream. Every server of the cluster needs it, with the same
    /// count as every gateway and fanout.
    pub fn mapping(&self) -> Option<(String, String)> {
        (self.count > 1).then(|| {
            (
                format!("{}.room.*", self.subjects.prefix()),
                format!(
                    "{}.part.{{{{partition({},1)}}}}.{{{{wildcard(1)}}}}",
                    self.subjects.prefix(),
                    self.count
                ),
            )
        })
    }

    /// The `mappings` block of a nats-server configuration file (empty with one stream).
    pub fn server_config(&self) -> String {
        match self.mapping() {
            Some((from, to)) => format!(
                "# Herald's event stream in {} partitions: must match --stream-partitions.\nmappings = {{\n  \"{from}\": \"{to}\"\n}}\n",
                self.count
            ),
            None => String::new(),
        }
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

    #[test]
    fn one_partition_is_the_single_stream() {
        let p = Partitions::new(Subjects::default(), 1);
        assert_eq!(p.stream_of("lobby"), "HERALD_ROOMS");
        assert_eq!(p.stored_subject("lobby"), "herald.room.lobby");
        assert_eq!(p.stream_subjects(0), "herald.room.>");
        assert_eq!(p.republish(0), ("herald.room.>".into(), "herald.live.room.>".into()));
        assert_eq!(p.mapping(), None);
        assert_eq!(p.server_config(), "");
    }

    /// Known FNV-1a values, and partitions nats-server 2.15.1 chose for these rooms (stored
    /// in the matching streams by a real server: gateway/tests/it/partitions.rs).
    #[test]
    fn partitions_as_nats_server_does() {
        assert_eq!(room_hash(""), 0x811c_9dc5);
        assert_eq!(room_hash("a"), 0xe40c_292c);
        assert_eq!(room_hash("foobar"), 0xbf9c_f968);
        let four: Vec<u32> = ["a", "b", "c", "d", "lobby", "user:bob", "room-1"]
            .iter()
            .map(|r| partition(r, 4))
            .collect();
        assert_eq!(four, [0, 1, 2, 3, 3, 3, 0]);
        let p = Partitions::new(Subjects::new("acme.push"), 4);
        assert_eq!(p.of("lobby"), partition("lobby", 4));
        assert_eq!(p.stream(3), "ACME_PUSH_ROOMS_3");
        assert_eq!(p.stored_subject("a"), "acme.push.part.0.a");
        assert_eq!(p.stream_subjects(2), "acme.push.part.2.*");
        assert_eq!(
            p.republish(2),
            (
                "acme.push.part.2.*".into(),
                "acme.push.live.room.{{wildcard(1)}}".into()
            )
        );
        assert_eq!(
            p.mapping(),
            Some((
                "acme.push.room.*".into(),
                "acme.push.part.{{partition(4,1)}}.{{wildcard(1)}}".into()
            ))
        );
    }
}
