//! JWT claims and the room globs in `herald.sub` / `herald.pub`.

use serde::{Deserialize, Serialize};

use crate::room;

/// The claims Herald reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch: a revocation (`herald.api.disconnect` with
    /// `revoke`) refuses the user's tokens issued at or before it, and those without `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Room permissions. Without them the user may use only the personal room `user:<sub>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub herald: Option<Grants>,
}

/// The claims of a subscription token: the room it opens, to whom, until when. Sent with
/// `subscribe` (WebSocket: the op's `token`; SSE and polls: `room_token=`), signed with the
/// same keys as connection tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionClaims {
    /// The user it is for: the connection's user.
    pub sub: String,
    /// The one room it opens (a name, not a pattern).
    pub room: String,
    /// Expiry, seconds since the epoch: checked when the client subscribes.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Glob patterns of the rooms a user may subscribe to and publish to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default)]
    pub sub: Vec<String>,
    #[serde(default, rename = "pub")]
    pub publish: Vec<String>,
}

// === impl Claims ===

impl Claims {
    pub fn may_subscribe(&self, room: &str) -> bool {
        room::personal_owner(room) == Some(self.sub.as_str()) || self.grants().is_some_and(|g| any_match(&g.sub, room))
    }

    pub fn may_publish(&self, room: &str) -> bool {
        room::personal_owner(room) == Some(self.sub.as_str())
            || self.grants().is_some_and(|g| any_match(&g.publish, room))
    }

    fn grants(&self) -> Option<&Grants> {
        self.herald.as_ref()
    }
}

/// Whether a grant covers `room`. Another user's personal room (`user:<id>`) is covered
/// only by a pattern that itself starts with `user:`: a grant of `*` means "every shared
/// room", not "everyone's private notifications".
fn any_match(patterns: &[String], room: &str) -> bool {
    let personal = room::personal_owner(room).is_some();
    patterns
        .iter()
        .filter(|p| !personal || p.starts_with(room::PERSONAL_PREFIX))
        .any(|p| glob_match(p, room))
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &[&str], publish: &[&str]) -> Claims {
        Claims {
            sub: "alice".into(),
            exp: 0,
            iat: None,
            name: None,
            herald: Some(Grants {
                sub: sub.iter().map(|s| s.to_string()).collect(),
                publish: publish.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("support:*", "support:acme:bob"));
        assert!(glob_match("support:*:bob", "support:acme:bob"));
        assert!(!glob_match("support:*:bob", "support:acme:eve"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(!glob_match("lobby", "lobby2"));
        assert!(glob_match("lobby", "lobby"));
    }

    #[test]
    fn grants_and_personal_rooms() {
        let c = claims(&["lobby", "support:acme:*"], &["lobby"]);
        assert!(c.may_subscribe("lobby"));
        assert!(c.may_subscribe("support:acme:1"));
        assert!(!c.may_subscribe("support:globex:1"));
        assert!(c.may_publish("lobby"));
        assert!(!c.may_publish("support:acme:1"));
        assert!(c.may_subscribe("user:alice"));
        assert!(!c.may_subscribe("user:bob"));
        let all = claims(&["*"], &["*"]);
        assert!(all.may_subscribe("anything"));
        assert!(all.may_subscribe("user:alice"), "one's own");
        assert!(!all.may_subscribe("user:bob"), "`*` does not open other users' rooms");
        assert!(!all.may_publish("user:bob"));
        let admin = claims(&["user:*"], &[]);
        assert!(admin.may_subscribe("user:bob"), "a grant that names `user:` does");
        let bare = Claims { herald: None, ..c };
        assert!(!bare.may_subscribe("lobby"));
        assert!(bare.may_subscribe("user:alice"));
    }

    #[test]
    fn parses_the_contract_claims() {
        let c: Claims = serde_json::from_str(
            r#"{"sub":"alice","exp":1,"name":"Alice","herald":{"sub":["lobby"],"pub":["lobby"]}}"#,
        )
        .unwrap();
        assert_eq!(c.herald.unwrap().publish, vec!["lobby".to_string()]);
    }
}
