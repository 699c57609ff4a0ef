//! Rules for every string a client controls, other than room names ([`crate::room`]) and
//! cursors ([`crate::cursor`]): event types, user ids, display names, session ids and
//! request ids. Each is checked here once, when a frame or a request is decoded; past that
//! point the gateway may put the string into a NATS subject or header, a JSON frame or an
//! HTML page without a second thought.

use crate::frame::Id;

/// The longest event `type`, in bytes. It travels as a NATS header (`Herald-Type`).
pub const MAX_TYPE_LEN: usize = 64;
/// The longest user id, in bytes: `user:<id>` must still be a valid room name.
pub const MAX_USER_LEN: usize = crate::room::MAX_ROOM_LEN - crate::room::PERSONAL_PREFIX.len();
/// The longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Session ids (`?sid=`): 8 to 64 bytes of `A-Z a-z 0-9 _ -`.
pub const SID_LEN: std::ops::RangeInclusive<usize> = 8..=64;
/// The longest string request `id`, in bytes (it is echoed in every reply).
pub const MAX_ID_LEN: usize = 128;
/// The longest idempotency key of a publish, in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// The most user ids one `watch` or `unwatch` may name.
pub const MAX_USERS_PER_OP: usize = 1000;
/// The longest subscription token (a JWT: header, claims and signature in base64url).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Why a client string was refused; the message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("`type` must be 1-{MAX_TYPE_LEN} bytes of printable characters")]
    Type,
    #[error("`{0}` is not a valid user id (1-{MAX_USER_LEN} of A-Z a-z 0-9 _ - @ =)")]
    User(String),
    #[error("a name must be at most {MAX_NAME_CHARS} characters, none of them control characters")]
    Name,
    #[error("`sid` must be 8-64 of A-Z a-z 0-9 _ -")]
    Sid,
    #[error("`id` must be a number or a string of at most {MAX_ID_LEN} bytes")]
    Id,
    #[error("`key` must be 1-{MAX_KEY_LEN} bytes of printable ASCII, no spaces")]
    Key,
    #[error("at most {MAX_USERS_PER_OP} users per request")]
    TooManyUsers,
    #[error("a subscription `token` must be 1-{MAX_TOKEN_LEN} bytes of A-Z a-z 0-9 - _ . (a JWT)")]
    Token,
}

/// An event type: 1–64 bytes, no control characters (so no CR, LF or NUL).
pub fn validate_type(kind: &str) -> Result<(), TextError> {
    let ok = !kind.is_empty() && kind.len() <= MAX_TYPE_LEN && !kind.chars().any(char::is_control);
    ok.then_some(()).ok_or(TextError::Type)
}

/// A publish's idempotency key: 1–64 bytes of printable ASCII without spaces (`!`–`~`).
/// It becomes part of a NATS header (`Nats-Msg-Id`, see [`crate::header::msg_id`]).
pub fn validate_key(key: &str) -> Result<(), TextError> {
    let ok = !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(()).ok_or(TextError::Key)
}

/// A subscription token: 1–4096 bytes of base64url and `.` (a JWT's compact form).
pub fn validate_token(token: &str) -> Result<(), TextError> {
    let ok = !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then_some(()).ok_or(TextError::Token)
}

/// A user id: 1–123 bytes of `A-Z a-z 0-9 _ - @ =`. User ids appear in room names
/// (`user:<id>`) and NATS subjects (`herald.status.<id>`).
pub fn validate_user(user: &str) -> Result<(), TextError> {
    let ok = !user.is_empty() && user.len() <= MAX_USER_LEN && user.bytes().all(is_user_byte);
    ok.then_some(()).ok_or_else(|| TextError::User(printable(user)))
}

/// A list of user ids (`watch`): each valid, at most [`MAX_USERS_PER_OP`]; returned
/// sorted and without repeats.
pub fn validate_users(users: &[String]) -> Result<Vec<String>, TextError> {
    if users.len() > MAX_USERS_PER_OP {
        return Err(TextError::TooManyUsers);
    }
    users.iter().try_for_each(|u| validate_user(u))?;
    let mut users = users.to_vec();
    users.sort();
    users.dedup();
    Ok(users)
}

/// A display name chosen by the client (`?name=`): at most 64 characters, no control
/// characters. Names are shown to other users; pages must still insert them as text.
pub fn validate_name(name: &str) -> Result<(), TextError> {
    let ok = name.chars().count() <= MAX_NAME_CHARS && !name.chars().any(char::is_control);
    ok.then_some(()).ok_or(TextError::Name)
}

/// A display name from a token (the backend signed it, so it is cleaned, not refused):
/// control characters dropped, cut to 64 characters; `None` if nothing is left.
pub fn clean_name(name: &str) -> Option<String> {
    let clean: String = name.chars().filter(|c| !c.is_control()).take(MAX_NAME_CHARS).collect();
    let clean = clean.trim().to_owned();
    (!clean.is_empty()).then_some(clean)
}

/// A session id (`?sid=`).
pub fn validate_sid(sid: &str) -> Result<(), TextError> {
    let ok = SID_LEN.contains(&sid.len()) && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then_some(()).ok_or(TextError::Sid)
}

/// A request id: any number, or a string of at most [`MAX_ID_LEN`] bytes.
pub fn validate_id(id: &Id) -> Result<(), TextError> {
    match id {
        Id::Num(_) => Ok(()),
        Id::Str(s) if s.len() <= MAX_ID_LEN => Ok(()),
        Id::Str(_) => Err(TextError::Id),
    }
}

/// What follows `anon-` in the user id of an anonymous client that keeps session id `sid`:
/// 24 hex digits of a SHA-256 of it. Other users see the id; the sid itself stays the
/// client's secret, so nobody who sees the id can claim the identity.
pub fn anonymous_id(sid: &str) -> String {
    digest_hex(&[b"herald anon\0", sid.as_bytes()])
}

/// The connection id of a polling session: `p-` and 24 hex digits of a SHA-256 of the user
/// and the sid. Keyed by both, so two users cannot share a session; shown to other members
/// in place of the sid.
pub fn poll_session(user: &str, sid: &str) -> String {
    format!(
        "p-{}",
        digest_hex(&[b"herald poll\0", user.as_bytes(), b"\0", sid.as_bytes()])
    )
}

fn digest_hex(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

fn is_user_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'@' | b'=')
}

/// A refused value for an error message: at most 40 characters, control characters escaped.
pub fn printable(s: &str) -> String {
    cut(s, 40)
}

/// A longer text for an error message (a decoder's complaint): at most 200 characters.
pub fn printable_long(s: &str) -> String {
    cut(s, 200)
}

fn cut(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        for ok in ["message", "a b", "é", &"x".repeat(MAX_TYPE_LEN)] {
            assert_eq!(validate_type(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "a\nb",
            "a\rb",
            "a\0b",
            "\u{7f}",
            "\u{85}",
            &"x".repeat(MAX_TYPE_LEN + 1),
        ] {
            assert_eq!(validate_type(bad), Err(TextError::Type), "{bad:?}");
        }
    }

    #[test]
    fn keys() {
        for ok in ["k", "0b1e-4c2f_9a:1", "!~", &"k".repeat(MAX_KEY_LEN)] {
            assert_eq!(validate_key(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "a b",
            "a\nb",
            "a\rb",
            "a\0b",
            "é",
            "\u{7f}",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert_eq!(validate_key(bad), Err(TextError::Key), "{bad:?}");
        }
    }

    #[test]
    fn users() {
        assert_eq!(validate_user("alice_1-a@b=c"), Ok(()));
        assert_eq!(validate_user(&"u".repeat(MAX_USER_LEN)), Ok(()));
        for bad in ["", "a:b", "a.b", "a b", "a>", "é", "a\n", &"u".repeat(MAX_USER_LEN + 1)] {
            assert!(validate_user(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_users(&["b".into(), "a".into(), "b".into()]),
            Ok(vec!["a".into(), "b".into()])
        );
        let many = vec!["a".to_owned(); MAX_USERS_PER_OP + 1];
        assert_eq!(validate_users(&many), Err(TextError::TooManyUsers));
    }

    #[test]
    fn names_sids_and_ids() {
        assert_eq!(validate_name("Ann <b>"), Ok(()), "markup is text, not refused");
        assert_eq!(validate_name(""), Ok(()));
        assert_eq!(validate_name("a\u{1b}[31m"), Err(TextError::Name));
        assert_eq!(validate_name(&"é".repeat(65)), Err(TextError::Name));
        assert_eq!(clean_name(" A\nB\u{0}C "), Some("ABC".into()));
        assert_eq!(clean_name("\n"), None);
        assert_eq!(clean_name(&"x".repeat(100)).map(|n| n.len()), Some(64));
        assert_eq!(validate_sid("abcdEFGH_-12"), Ok(()));
        for bad in ["short", "has space!", &"s".repeat(65)] {
            assert_eq!(validate_sid(bad), Err(TextError::Sid));
        }
        assert_eq!(validate_id(&Id::Num(u64::MAX)), Ok(()));
        assert_eq!(validate_id(&Id::Str("x".repeat(MAX_ID_LEN))), Ok(()));
        assert_eq!(validate_id(&Id::Str("x".repeat(MAX_ID_LEN + 1))), Err(TextError::Id));
    }

    #[test]
    fn derived_ids_hide_the_sid() {
        let a = format!("anon-{}", anonymous_id("abcdefgh12"));
        assert_eq!(a.len(), 5 + 24);
        assert!(!a.contains("abcdefgh12"));
        assert_eq!(
            a,
            format!("anon-{}", anonymous_id("abcdefgh12")),
            "stable across gateways"
        );
        assert_ne!(a, format!("anon-{}", anonymous_id("abcdefgh13")));
        assert_eq!(validate_user(&a), Ok(()));
        assert_ne!(poll_session("ann", "abcdefgh12"), poll_session("bob", "abcdefgh12"));
    }

    #[test]
    fn printable_escapes_and_cuts() {
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable(&"x".repeat(41)), format!("{}…", "x".repeat(40)));
    }
}
