//! Room-name rules: 1–128 bytes of `A-Z a-z 0-9 _ - : @ =`; `user:<id>` rooms are personal.

/// The longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 128;

/// The prefix of personal rooms: only user `<id>` may subscribe to `user:<id>`.
pub const PERSONAL_PREFIX: &str = "user:";

/// Why a room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("room name is empty")]
    Empty,
    #[error("room name is longer than {MAX_ROOM_LEN} bytes")]
    TooLong,
    #[error("room name has a character outside A-Z a-z 0-9 _ - : @ =")]
    BadChar,
}

/// Checks a room name against the contract's rules.
pub fn validate(room: &str) -> Result<(), RoomError> {
    if room.is_empty() {
        return Err(RoomError::Empty);
    }
    if room.len() > MAX_ROOM_LEN {
        return Err(RoomError::TooLong);
    }
    if !room.bytes().all(is_room_byte) {
        return Err(RoomError::BadChar);
    }
    Ok(())
}

/// The owner of a personal room (`user:<id>` → `<id>`), if the room is one.
pub fn personal_owner(room: &str) -> Option<&str> {
    room.strip_prefix(PERSONAL_PREFIX)
}

/// Whether `b` may appear in a room name.
pub fn is_room_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'@' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character() {
        assert_eq!(validate("Lobby_1-a:b@c=d"), Ok(()));
        assert_eq!(validate(&"x".repeat(128)), Ok(()));
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate(""), Err(RoomError::Empty));
        assert_eq!(validate(&"x".repeat(129)), Err(RoomError::TooLong));
        for bad in ["a.b", "a b", "a*", "a>", "é", "a,b", "a/b"] {
            assert_eq!(validate(bad), Err(RoomError::BadChar), "{bad}");
        }
    }

    #[test]
    fn personal_rooms() {
        assert_eq!(personal_owner("user:alice"), Some("alice"));
        assert_eq!(personal_owner("lobby"), None);
    }
}
