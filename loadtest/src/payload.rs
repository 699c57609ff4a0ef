//! Event bodies that look like what apps publish, for measuring compression: a chat message
//! (free text) and a ticker's state (a map of numbers, a few of which change per event).
//! Deterministic: event `n` of a kind is the same in every run.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// What `bench` publishes besides its timing fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `"pad": "xxx…"`: the smallest work per event (and unrealistically compressible).
    Pad,
    /// A chat message of about `--payload-bytes` of text.
    Chat,
    /// A ticker's whole state, about `--payload-bytes` of JSON numbers; each event moves a
    /// few of them.
    Ticker,
}

const WORDS: [&str; 64] = [
    "the",
    "order",
    "was",
    "shipped",
    "yesterday",
    "and",
    "should",
    "arrive",
    "on",
    "monday",
    "please",
    "check",
    "your",
    "tracking",
    "number",
    "we",
    "are",
    "sorry",
    "for",
    "delay",
    "can",
    "you",
    "send",
    "me",
    "a",
    "photo",
    "of",
    "damaged",
    "box",
    "thanks",
    "refund",
    "is",
    "being",
    "processed",
    "it",
    "takes",
    "three",
    "to",
    "five",
    "business",
    "days",
    "my",
    "account",
    "password",
    "reset",
    "link",
    "expired",
    "again",
    "here",
    "new",
    "one",
    "meeting",
    "moved",
    "at",
    "noon",
    "lunch",
    "after",
    "that",
    "sounds",
    "good",
    "see",
    "tomorrow",
    "ok",
    "great",
];

/// The JSON fields (without braces, comma first) of event `n`, about `bytes` long.
pub fn fields(kind: Kind, n: u64, bytes: usize) -> String {
    let mut rng = SmallRng::seed_from_u64(n);
    match kind {
        Kind::Pad => format!(r#","pad":"{}""#, "x".repeat(bytes)),
        Kind::Chat => {
            let mut text = String::with_capacity(bytes + 16);
            while text.len() < bytes.saturating_sub(80) {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
            }
            format!(
                r#","msg":{{"id":"m-{n:012}","room":"support:acme:ann:alice","from":"user-{:05}","type":"message","text":"{text}"}}"#,
                rng.random_range(0..100_000)
            )
        }
        Kind::Ticker => {
            // The state of `n`: every field's value depends on the field, moved by the
            // events up to `n` at three fields each (the same state any run reaches).
            let count = (bytes / 16).max(1);
            let mut state = String::with_capacity(bytes + 64);
            state.push_str(r#","state":{"symbol":"HRLD","fields":{"#);
            for f in 0..count {
                let moved = (0..3).any(|k| (n + k) % count as u64 == f as u64);
                let base = 100.0 + (f as f64) * 1.37;
                let v = if moved { base + (n % 97) as f64 * 0.01 } else { base };
                if f > 0 {
                    state.push(',');
                }
                state.push_str(&format!(r#""f{f:04}":{v:.2}"#));
            }
            state.push_str("}}");
            state
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_of_about_the_size_asked_and_the_same_every_run() {
        for kind in [Kind::Pad, Kind::Chat, Kind::Ticker] {
            for bytes in [1024, 4096] {
                let f = fields(kind, 7, bytes);
                let v: serde_json::Value = serde_json::from_str(&format!(r#"{{"n":7{f}}}"#)).unwrap();
                assert!(v.is_object());
                assert!(
                    f.len() > bytes * 8 / 10 && f.len() < bytes * 13 / 10,
                    "{kind:?} {bytes}: {}",
                    f.len()
                );
                assert_eq!(f, fields(kind, 7, bytes));
            }
        }
        assert_ne!(fields(Kind::Chat, 1, 1024), fields(Kind::Chat, 2, 1024));
        assert_ne!(fields(Kind::Ticker, 1, 4096), fields(Kind::Ticker, 2, 4096));
    }
}
