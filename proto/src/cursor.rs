//! The cursor of the HTTP transports: `room:seq` pairs joined by commas (`lobby:58,news:7`).
//!
//! Room names may contain `:`, so each pair splits at its last `:`.

use std::collections::BTreeMap;
use std::fmt;

use crate::room;

/// A position per room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<String, u64>);

/// The most rooms one cursor may name (a request names at most `--max-subscriptions`).
pub const MAX_ROOMS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("a cursor names at most {MAX_ROOMS} rooms")]
    TooMany,
    #[error("cursor item `{0}` is not room:seq")]
    Item(String),
    #[error("cursor room: {0}")]
    Room(#[from] room::RoomError),
}

// === impl Cursor ===

impl Cursor {
    pub fn parse(s: &str) -> Result<Self, CursorError> {
        let mut map = BTreeMap::new();
        let bad = |item: &str| CursorError::Item(crate::text::printable(item));
        for item in s.split(',').filter(|i| !i.is_empty()) {
            if map.len() >= MAX_ROOMS {
                return Err(CursorError::TooMany);
            }
            let (room, seq) = item.rsplit_once(':').ok_or_else(|| bad(item))?;
            // Digits only: `+7` and ` 7` are not seqs.
            if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(item));
            }
            let seq = seq.parse::<u64>().map_err(|_| bad(item))?;
            room::validate(room)?;
            map.insert(room.to_owned(), seq);
        }
        Ok(Self(map))
    }

    pub fn get(&self, room: &str) -> Option<u64> {
        self.0.get(room).copied()
    }

    pub fn set(&mut self, room: &str, seq: u64) {
        self.0.insert(room.to_owned(), seq);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(r, s)| (r.as_str(), *s))
    }

    /// Forgets `room`'s position.
    pub fn remove(&mut self, room: &str) {
        self.0.remove(room);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (room, seq)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{room}:{seq}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let c = Cursor::parse("lobby:58,news:7,user:bob:3").unwrap();
        assert_eq!(c.get("lobby"), Some(58));
        assert_eq!(c.get("user:bob"), Some(3));
        assert_eq!(c.to_string(), "lobby:58,news:7,user:bob:3");
        assert!(Cursor::parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(Cursor::parse("lobby"), Err(CursorError::Item(_))));
        assert!(matches!(Cursor::parse("lobby:x"), Err(CursorError::Item(_))));
        assert!(matches!(Cursor::parse("lo.bby:1"), Err(CursorError::Room(_))));
        assert!(matches!(Cursor::parse("lobby:+1"), Err(CursorError::Item(_))));
        assert!(matches!(
            Cursor::parse("lobby:18446744073709551616"),
            Err(CursorError::Item(_))
        ));
        assert_eq!(
            Cursor::parse("lobby:18446744073709551615").unwrap().get("lobby"),
            Some(u64::MAX)
        );
        let many: Vec<String> = (0..=MAX_ROOMS).map(|i| format!("r{i}:1")).collect();
        assert_eq!(Cursor::parse(&many.join(",")), Err(CursorError::TooMany));
    }
}
