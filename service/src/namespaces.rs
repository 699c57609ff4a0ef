//! Namespaces: rooms grouped by the start of their name (`chat:`, `ticker:`, `typing:` …),
//! each with its own rules, from a TOML file (`--namespaces <file>`, read by gateways and
//! fanout alike). A room takes the namespace with the longest prefix it starts with;
//! other rooms take the defaults (every option below at its default).
//!
//! ```toml
//! [[namespace]]
//! prefix = "ticker:"
//! last_value = true       # a new subscriber gets the newest event first
//! client_publish = false  # only backends publish (the server API, NATS)
//!
//! [[namespace]]
//! prefix = "chat:"
//! history_size = 200      # events kept per room (at most the stream's --history-size)
//! history_ttl = "7d"      # each event's lifetime (at most the stream's --history-ttl)
//! presence_counts_above = 100
//! publish_rate = 5        # client publishes per second per connection, in this namespace
//! anonymous = false
//! ```
//!
//! A file that does not parse, names an unknown option, or breaks a rule is refused with
//! its line and the reason, and the program does not start.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The most namespaces one file may define.
pub const MAX_NAMESPACES: usize = 256;

/// Every namespace, longest prefix first, and the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Namespaces {
    namespaces: Vec<Namespace>,
    default: Namespace,
}

/// The rules of one namespace (or, with an empty prefix, of every other room).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// The start of the names of its rooms, e.g. `chat:` (room-name characters only).
    #[serde(default)]
    pub prefix: String,
    /// Events are stored and replayed (`since`, cursors, the history API). `false`: stored
    /// (for order and gap repair across gateways) but never replayed.
    #[serde(default = "yes")]
    pub history: bool,
    /// Events kept per room; `None`: the stream's `--history-size`.
    #[serde(default)]
    pub history_size: Option<u64>,
    /// How long each event is kept; `None`: the stream's `--history-ttl`.
    #[serde(default, deserialize_with = "duration")]
    pub history_ttl: Option<Duration>,
    /// A new subscriber (without `since`) gets the room's newest event before its ack.
    #[serde(default)]
    pub last_value: bool,
    /// Events go over core NATS only and are never stored (typing indicators, cursors):
    /// live subscribers get them with seq 0; nothing is replayed.
    #[serde(default)]
    pub ephemeral: bool,
    /// Presence (members, joins, leaves) is kept for the rooms; `false`: a `presence`
    /// subscription or request is refused (`forbidden`).
    #[serde(default = "yes")]
    pub presence: bool,
    /// Above this many members a room's presence gives counts only; `None`: fanout's
    /// `--large-room`.
    #[serde(default)]
    pub presence_counts_above: Option<u64>,
    /// Clients may publish (their grants still apply); `false`: only backends do.
    #[serde(default = "yes")]
    pub client_publish: bool,
    /// Anonymous clients may use the rooms (within `--anonymous-rooms`).
    #[serde(default = "yes")]
    pub anonymous: bool,
    /// Client publishes per second per connection in this namespace; `None`: only the
    /// connection's `--publish-rate`.
    #[serde(default)]
    pub publish_rate: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    namespace: Vec<toml::Spanned<Namespace>>,
}

fn yes() -> bool {
    true
}

fn duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration: {e}")))
}

impl Default for Namespace {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            history: true,
            history_size: None,
            history_ttl: None,
            last_value: false,
            ephemeral: false,
            presence: true,
            presence_counts_above: None,
            client_publish: true,
            anonymous: true,
            publish_rate: None,
        }
    }
}

/// The stream's own limits, which a namespace may only narrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub history_size: u64,
    pub history_ttl: Duration,
}

impl Namespaces {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path, limits: Limits) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text, limits).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks a namespaces file's text.
    pub fn parse(text: &str, limits: Limits) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        if file.namespace.len() > MAX_NAMESPACES {
            return Err(format!("at most {MAX_NAMESPACES} namespaces"));
        }
        let mut namespaces: Vec<Namespace> = Vec::with_capacity(file.namespace.len());
        for spanned in file.namespace {
            let line = 1 + text[..spanned.span().start].matches('\n').count();
            let ns = spanned.into_inner();
            check(&ns, limits).map_err(|why| format!("line {line}: namespace `{}`: {why}", ns.prefix))?;
            if namespaces.iter().any(|n| n.prefix == ns.prefix) {
                return Err(format!("line {line}: namespace `{}` is defined twice", ns.prefix));
            }
            namespaces.push(ns);
        }
        namespaces.sort_by_key(|n| std::cmp::Reverse(n.prefix.len()));
        Ok(Self {
            namespaces,
            default: Namespace::default(),
        })
    }

    /// The namespace of `room`: the longest prefix it starts with, or the defaults.
    pub fn of(&self, room: &str) -> &Namespace {
        self.namespaces
            .iter()
            .find(|n| room.starts_with(n.prefix.as_str()))
            .unwrap_or(&self.default)
    }

    /// Whether a namespace gives events their own lifetime (the stream must allow it).
    pub fn uses_ttl(&self) -> bool {
        self.namespaces.iter().any(|n| n.history_ttl.is_some())
    }

    /// Every namespace defined (not the defaults), longest prefix first.
    pub fn all(&self) -> &[Namespace] {
        &self.namespaces
    }
}

fn check(ns: &Namespace, limits: Limits) -> Result<(), String> {
    if ns.prefix.is_empty() || ns.prefix.len() > herald_proto::room::MAX_ROOM_LEN {
        return Err("`prefix` must be 1 to 128 room-name characters".into());
    }
    if !ns.prefix.bytes().all(herald_proto::room::is_room_byte) {
        return Err("`prefix` may hold only A-Z a-z 0-9 _ - : @ =".into());
    }
    if let Some(size) = ns.history_size {
        if size == 0 || size > limits.history_size {
            return Err(format!(
                "`history_size` must be 1 to {} (the stream's --history-size); to keep none, `history = false`",
                limits.history_size
            ));
        }
    }
    if let Some(ttl) = ns.history_ttl {
        if ttl < Duration::from_secs(1) || ttl > limits.history_ttl {
            return Err(format!(
                "`history_ttl` must be 1s to {} (the stream's --history-ttl)",
                humantime::format_duration(limits.history_ttl)
            ));
        }
    }
    if ns.ephemeral && (!ns.history || ns.history_size.is_some() || ns.history_ttl.is_some() || ns.last_value) {
        return Err(
            "`ephemeral` stores nothing: it takes no `history`, `history_size`, `history_ttl` or `last_value`".into(),
        );
    }
    if !ns.history && (ns.history_size.is_some() || ns.history_ttl.is_some()) {
        return Err("`history = false` takes no `history_size` or `history_ttl`".into());
    }
    if ns.presence_counts_above == Some(0) {
        return Err("`presence_counts_above` must be at least 1".into());
    }
    if ns.publish_rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("`publish_rate` must be a number above 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        history_size: 1000,
        history_ttl: Duration::from_secs(86_400),
    };

    #[test]
    fn rooms_take_the_longest_prefix() {
        let ns = Namespaces::parse(
            r#"
[[namespace]]
prefix = "chat:"
history_size = 200
history_ttl = "2h"

[[namespace]]
prefix = "chat:vip:"
client_publish = false
"#,
            LIMITS,
        )
        .unwrap();
        assert_eq!(ns.of("chat:1").history_size, Some(200));
        assert_eq!(ns.of("chat:1").history_ttl, Some(Duration::from_secs(7200)));
        assert!(!ns.of("chat:vip:1").client_publish);
        assert_eq!(ns.of("chat:vip:1").history_size, None, "a namespace does not inherit");
        assert_eq!(ns.of("lobby"), &Namespace::default());
        assert_eq!(ns.of("chat"), &Namespace::default());
        assert_eq!(Namespaces::parse("", LIMITS).unwrap(), Namespaces::default());
    }

    #[test]
    fn a_bad_file_is_refused_with_its_line_and_reason() {
        for (text, expected) in [
            (
                "[[namespace]]\nprefix = \"a:\"\nhistroy_size = 5\n",
                "unknown field `histroy_size`",
            ),
            ("[[namespace]]\nprefix = \"a:\"\nhistory_size = \"lots\"\n", "line 3"),
            (
                "[[namespace]]\nprefix = \"a:\"\nhistory_ttl = \"soon\"\n",
                "not a duration",
            ),
            (
                "\n\n[[namespace]]\nprefix = \"a b\"\n",
                "line 3: namespace `a b`: `prefix` may hold only",
            ),
            ("[[namespace]]\nprefix = \"\"\n", "`prefix` must be 1 to 128"),
            (
                "[[namespace]]\nprefix = \"a:\"\nhistory_size = 0\n",
                "`history_size` must be 1 to 1000",
            ),
            (
                "[[namespace]]\nprefix = \"a:\"\nhistory_size = 1001\n",
                "`history_size` must be 1 to 1000",
            ),
            (
                "[[namespace]]\nprefix = \"a:\"\nhistory_ttl = \"2d\"\n",
                "`history_ttl` must be 1s to 1day",
            ),
            (
                "[[namespace]]\nprefix = \"a:\"\nhistory = false\nhistory_size = 3\n",
                "takes no",
            ),
            (
                "[[namespace]]\nprefix = \"a:\"\nephemeral = true\nlast_value = true\n",
                "`ephemeral` stores nothing",
            ),
            ("[[namespace]]\nprefix = \"a:\"\npublish_rate = -1\n", "`publish_rate`"),
            (
                "[[namespace]]\nprefix = \"a:\"\npresence_counts_above = 0\n",
                "`presence_counts_above`",
            ),
            (
                "[[namespace]]\nprefix = \"a:\"\n[[namespace]]\nprefix = \"a:\"\n",
                "line 3: namespace `a:` is defined twice",
            ),
            ("[namespace]\nprefix = \"a:\"\n", "invalid type"),
            ("prefix = \"a:\"\n", "unknown field `prefix`"),
        ] {
            let e = Namespaces::parse(text, LIMITS).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }
}
