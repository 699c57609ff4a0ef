//! What fanout publishes for app backends: a user's online status on `herald.status.<user>`
//! and a room's lifecycle on `herald.lifecycle.<room>` (core NATS, JSON). Gateways forward
//! status to clients that watch the user as a `status` frame (without `ts`).

use serde::{Deserialize, Serialize};

/// `herald.status.<user>`: the user came online (first connection anywhere) or went
/// offline (last connection gone, after the leave delay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub user: String,
    pub online: bool,
    /// When fanout published it, in milliseconds since the epoch.
    pub ts: u64,
}

/// `herald.lifecycle.<room>`: the room got its first member, or lost its last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub room: String,
    pub event: Lifecycle,
    /// When fanout published it, in milliseconds since the epoch.
    pub ts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    Occupied,
    Vacated,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_events_have_their_wire_shape() {
        let s = StatusEvent {
            user: "ann".into(),
            online: false,
            ts: 7,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"user":"ann","online":false,"ts":7}"#
        );
        let l = LifecycleEvent {
            room: "lobby".into(),
            event: Lifecycle::Vacated,
            ts: 9,
        };
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"room":"lobby","event":"vacated","ts":9}"#
        );
    }
}
