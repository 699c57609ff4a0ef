//! Command-line flags and their `HERALD_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use herald_service::stream::Storage;

/// Herald edge gateway: WebSocket, SSE, long-poll and short-poll push over NATS JetStream.
///
/// Every flag also reads the environment variable named beside it.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-gateway", version, about, long_about = None)]
pub struct Config {
    /// Public listener: /ws /sse /poll /publish and the demo page at /.
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Admin listener: /metrics /healthz /readyz.
    #[arg(long, env = "HERALD_ADMIN_LISTEN", default_value = "127.0.0.1:9100")]
    pub admin_listen: SocketAddr,

    /// NATS server URL; a comma-separated list for a cluster. With a NATS user:
    /// `nats://user:password@host:4222` (docs/operations.md lists the users).
    #[arg(
        long,
        env = "HERALD_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,

    /// This gateway's id (A-Z a-z 0-9 _ -), shown to clients and used in connection ids.
    /// Default: a random id.
    #[arg(long, env = "HERALD_GATEWAY_ID")]
    pub gateway_id: Option<String>,

    /// Prefix of every NATS subject Herald uses.
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = "herald")]
    pub subject_prefix: String,

    /// HS256 secret that signs client tokens: at least 32 bytes (RFC 7518 §3.2: a key as
    /// long as the hash), e.g. `openssl rand -base64 32`; a shorter one refuses to start.
    #[arg(long, env = "HERALD_AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<String>,

    /// Public key (PEM text, or the path of a PEM file) that verifies RS256, ES256 or EdDSA
    /// client tokens.
    #[arg(long, env = "HERALD_AUTH_PUBLIC_KEY")]
    pub auth_public_key: Option<String>,

    /// JWKS URL (https) of an identity provider: tokens whose `kid` names one of its
    /// RS256, ES256 or EdDSA keys verify, alongside the static keys above.
    #[arg(long, env = "HERALD_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// Allow an `http://` `--jwks-url` (anyone on the path could then hand the gateway keys
    /// of their own: only for a provider on loopback or a trusted network).
    #[arg(long, env = "HERALD_JWKS_INSECURE_HTTP")]
    pub jwks_insecure_http: bool,

    /// How often the JWKS is fetched again.
    #[arg(long, env = "HERALD_JWKS_REFRESH", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwks_refresh: Duration,

    /// The least time between two fetches caused by tokens with an unknown `kid`.
    #[arg(long, env = "HERALD_JWKS_MIN_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub jwks_min_interval: Duration,

    /// Accept only tokens whose `aud` claim holds this audience (e.g. `herald`).
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Accept only tokens whose `iss` claim is this issuer.
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Accept clients without a token: the user is `anon-<digest of its sid>` (a random id
    /// without one). It may subscribe only to rooms `--anonymous-rooms` names and publish
    /// only to rooms `--anonymous-publish` names (never to other users' personal rooms), and
    /// its limits count per client address (see `--trusted-proxies`).
    #[arg(long, env = "HERALD_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Comma-separated room globs (`*` matches any run of characters) anonymous clients may
    /// subscribe to, besides their own `user:<id>`. Default: none.
    #[arg(long, env = "HERALD_ANONYMOUS_ROOMS", value_delimiter = ',')]
    pub anonymous_rooms: Vec<String>,

    /// Comma-separated room globs anonymous clients may publish to. Default: none (anonymous
    /// clients only read).
    #[arg(long, env = "HERALD_ANONYMOUS_PUBLISH", value_delimiter = ',')]
    pub anonymous_publish: Vec<String>,

    /// Comma-separated addresses or networks (CIDR) of reverse proxies whose
    /// `X-Forwarded-For` / `Forwarded` header names the client. From any other peer those
    /// headers are ignored and the peer is the client. Default: none.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Most connections (WebSocket, SSE, requests in flight) anonymous clients of one address
    /// (an IPv6 /64) hold at once; more are refused with `rate_limited` (HTTP 429).
    #[arg(long, env = "HERALD_MAX_ANONYMOUS_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub max_anonymous_connections_per_address: usize,

    /// Most presence rooms per connection, SSE stream or polling session; a request for more
    /// is refused with `too_many_subscriptions`.
    #[arg(long, env = "HERALD_MAX_PRESENCE_ROOMS", default_value_t = 32)]
    pub max_presence_rooms: usize,

    /// Most presence memberships (a connection or polling session in a room) this gateway
    /// reports to fanout at once; past it, joining refuses with `unavailable`.
    #[arg(long, env = "HERALD_MAX_MEMBERSHIPS", default_value_t = 1_000_000)]
    pub max_memberships: usize,

    /// Most presence memberships anonymous clients of one address hold at once; past it,
    /// joining refuses with `rate_limited`.
    #[arg(long, env = "HERALD_MAX_ANONYMOUS_MEMBERSHIPS_PER_ADDRESS", default_value_t = 512)]
    pub max_anonymous_memberships_per_address: usize,

    /// Most users anonymous clients of one address watch at once (over all their
    /// connections and requests); past it, `watch` refuses with `rate_limited`.
    #[arg(long, env = "HERALD_MAX_ANONYMOUS_WATCHES_PER_ADDRESS", default_value_t = 2000)]
    pub max_anonymous_watches_per_address: usize,

    /// Longest a write to a client may make no progress (a socket that stops reading, a
    /// response body nobody takes): past it, the connection is dropped.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Comma-separated Origins allowed to connect (e.g. `https://app.example.com`); `*` or
    /// empty allows any.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// TLS certificate chain (PEM) for https/wss on the public listener.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Most client connections at once; more are refused with 503.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Largest client message in bytes; a larger WebSocket message closes with 1009. A
    /// compressed message counts as it inflates.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,

    /// permessage-deflate on `/ws` (RFC 7692): `on` accepts a client's offer (browsers make
    /// one). Each event is then compressed once per codec, and the bytes are shared by every
    /// subscriber that takes compressed frames; no compression state is kept per connection.
    /// `per-connection` compresses each delivery again instead, as servers with a compressor
    /// per connection do: for comparing what compressing once saves.
    #[arg(long, env = "HERALD_WS_COMPRESSION", value_enum, default_value_t = WsCompression::Off)]
    pub ws_compression: WsCompression,

    /// The smallest event, in bytes as encoded, sent compressed; smaller ones go as they are.
    #[arg(long, env = "HERALD_WS_COMPRESSION_MIN_BYTES", default_value_t = 256)]
    pub ws_compression_min_bytes: u32,

    /// Most room subscriptions per connection.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS", default_value_t = 128)]
    pub max_subscriptions: usize,

    /// Interval of server pings; a client silent for two intervals is closed.
    #[arg(long, env = "HERALD_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Bytes queued per connection before it is closed as a slow consumer (4008).
    #[arg(long, env = "HERALD_OUTBOUND_BUFFER_BYTES", default_value_t = 1 << 20)]
    pub outbound_buffer_bytes: usize,

    /// Publishes per second per connection and per user over HTTP (anonymous clients: per
    /// client address, every connection and request together); burst: the same number.
    /// More get `rate_limited`, and a flood closes with 4029.
    #[arg(long, env = "HERALD_PUBLISH_RATE", default_value_t = 50.0)]
    pub publish_rate: f64,

    /// Requests per second that change or read state, other than publishes: per WebSocket
    /// connection for `subscribe`, `unsubscribe`, `presence`, `watch` and `unwatch`; per user
    /// (anonymous clients: per client address, over every connection and request) for those
    /// and for `/poll`, `/sse` and `GET /presence`. The burst is
    /// larger (`--max-subscriptions` or twice the rate, the larger), so a reconnect that
    /// resubscribes every room passes; more get `rate_limited` (HTTP 429).
    #[arg(long, env = "HERALD_OP_RATE", default_value_t = 20.0)]
    pub op_rate: f64,

    /// Polling sessions (`/poll` with `sid=` and `presence=` or `watch=`) one user may hold
    /// on this gateway at once (anonymous clients: one address); more are refused with
    /// `rate_limited`.
    #[arg(long, env = "HERALD_MAX_POLL_SESSIONS_PER_USER", default_value_t = 16)]
    pub max_poll_sessions_per_user: usize,

    /// Polling sessions this gateway holds at once; more are refused with `unavailable`.
    #[arg(long, env = "HERALD_MAX_POLL_SESSIONS", default_value_t = 100_000)]
    pub max_poll_sessions: usize,

    /// Longest a long-poll is held.
    #[arg(long, env = "HERALD_POLL_MAX_WAIT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub poll_max_wait: Duration,

    /// Interval of SSE keep-alive comments (so proxies keep idle streams open).
    #[arg(long, env = "HERALD_SSE_KEEPALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sse_keepalive: Duration,

    /// On SIGTERM/SIGINT, WebSocket clients are closed with 1012 spread over this time.
    #[arg(long, env = "HERALD_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Time allowed for a TCP connection to complete TLS and its HTTP request head.
    #[arg(long, env = "HERALD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// How live room events come from NATS: `per-room`, one subscription per room, so NATS
    /// sends each gateway only its rooms' events (interest-based routing; subscribed in
    /// batches and read by one task), or `wildcard`, one subscription to every room while
    /// the gateway holds any (a room costs fewer bytes, but NATS sends every gateway every
    /// room's events and each gateway drops the ones it does not hold). docs/benchmarks.md
    /// gives both costs.
    #[arg(long, env = "HERALD_ROOM_SUBSCRIPTIONS", value_enum, default_value = "per-room")]
    pub room_subscriptions: RoomSubscriptions,

    /// Messages each NATS subscription buffers before async-nats drops them as a slow
    /// consumer (default: async-nats's 65,536). Dropped events are read back from the stream
    /// (`herald_gateway_room_rescans_total{cause="slow consumer"}`); a small value is for
    /// testing that repair.
    #[arg(long, env = "HERALD_NATS_SUBSCRIPTION_CAPACITY", value_parser = clap::value_parser!(u32).range(1..))]
    pub nats_subscription_capacity: Option<u32>,

    /// Threads that run the gateway's tasks (default: the CPUs this process may use, which
    /// counts a container's CPU quota). Set it to a gateway's share of the cores when several
    /// share a machine: threads beyond its share of the cores only add wake-ups.
    #[arg(long, env = "HERALD_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// How long a room's NATS subscription outlives its last local subscriber.
    #[arg(long, env = "HERALD_ROOM_LINGER", default_value = "5s", value_parser = humantime::parse_duration)]
    pub room_linger: Duration,

    /// Interval of the heartbeat that tells fanout this gateway and its members are alive
    /// (keep it well below fanout's `--gateway-timeout`).
    #[arg(long, env = "HERALD_PRESENCE_HEARTBEAT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub presence_heartbeat: Duration,

    /// A polling client (`/poll` with `sid=`) stays online, and a member of its presence
    /// rooms, this long after its last poll ends.
    #[arg(long, env = "HERALD_POLL_SESSION_TTL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub poll_session_ttl: Duration,

    /// A polling session whose client went away with a poll unanswered (a closed tab's
    /// long-poll) ends this long after, unless a poll of it comes first (a reload, a retry).
    #[arg(long, env = "HERALD_POLL_LEAVE_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_leave_grace: Duration,

    /// Most events in one replay burst (a WebSocket or SSE catch-up is sent in bursts, each
    /// after the client has read the last) and in one `/poll` answer, which then says `more`.
    #[arg(long, env = "HERALD_REPLAY_MAX_EVENTS", default_value_t = 1000)]
    pub replay_max_events: usize,

    /// Most bytes of event data in one replay burst or `/poll` answer (one larger event still
    /// goes alone).
    #[arg(long, env = "HERALD_REPLAY_MAX_BYTES", default_value_t = 1 << 20)]
    pub replay_max_bytes: usize,

    /// Most users one connection may `watch`; a longer list is refused with `bad_request`.
    #[arg(long, env = "HERALD_MAX_WATCH", default_value_t = 1000)]
    pub max_watch: usize,

    /// Most presence rooms and watched users this gateway follows at once, counted once
    /// however many connections follow them (each is a map entry fed by one wildcard NATS
    /// subscription per kind). A `watch` or presence subscribe that needs one more is refused
    /// with `unavailable`.
    #[arg(long, env = "HERALD_MAX_FEEDS", default_value_t = 100_000)]
    pub max_feeds: usize,

    /// Events kept per room (used when this gateway provisions the stream).
    #[arg(long, env = "HERALD_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: i64,

    /// Namespaces: rules per room-name prefix (history, last value, presence, client
    /// publish, anonymous access, publish rate), from a TOML file (docs/operations.md,
    /// "Namespaces"); the same file as fanout's. A file with an error stops the start.
    #[arg(long, env = "HERALD_NAMESPACES")]
    pub namespaces: Option<std::path::PathBuf>,

    /// How long events are kept (used when this gateway provisions the stream).
    #[arg(long, env = "HERALD_HISTORY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// Most bytes the event stream keeps in all (oldest events go first; used when this gateway provisions
    /// the stream), so that a flood
    /// of publishes cannot fill the NATS servers' disks.
    #[arg(long, env = "HERALD_HISTORY_MAX_BYTES", default_value_t = 1 << 30)]
    pub history_max_bytes: i64,

    /// How long a publish's idempotency key is remembered: a repeat within it is acked with
    /// the first event's seq and not stored again (JetStream's duplicate window; used when this
    /// gateway provisions the stream). At most `--history-ttl`.
    #[arg(long, env = "HERALD_DEDUP_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,

    /// JetStream replicas of the event stream (used when this gateway provisions it).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

    /// Where the event stream keeps events: `file` (survives a NATS server's restart) or
    /// `memory` (cheaper per event; see docs/operations.md for what a restart loses). Used
    /// when this gateway creates the stream.
    #[arg(long, env = "HERALD_STREAM_STORAGE", value_enum, default_value_t = Storage::File)]
    pub stream_storage: Storage,

    /// Partitions of the event stream: rooms are stored in this many streams by a hash of
    /// their name (`HERALD_ROOMS_<i>`; 1 is the single stream `HERALD_ROOMS`). Every NATS
    /// server needs the matching subject mapping, and every gateway and fanout the same count;
    /// a mismatch keeps the process not ready (docs/operations.md). At most 1024.
    #[arg(long, env = "HERALD_STREAM_PARTITIONS", default_value_t = 1)]
    pub stream_partitions: u32,

    /// Add `GET /echo`, a WebSocket echo endpoint for RFC 6455 conformance runs.
    #[arg(long, env = "HERALD_ECHO_ENDPOINT")]
    pub echo_endpoint: bool,

    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

pub(crate) use herald_service::LogFormat;

/// The shortest `--auth-hs256-secret`: RFC 7518 §3.2 asks for a key at least as long as
/// the hash (SHA-256, 32 bytes); a shorter one can be guessed offline from one token.
pub(crate) const MIN_HS256_SECRET_BYTES: usize = 32;

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no authentication configured: set --auth-hs256-secret, --auth-public-key or --allow-anonymous")]
    NoAuth,
    #[error("--auth-hs256-secret must be at least {MIN_HS256_SECRET_BYTES} bytes (it has {0}); e.g. `openssl rand -base64 32`")]
    ShortSecret(usize),
    #[error("--jwks-url must be an https URL (an http one only with --jwks-insecure-http)")]
    JwksHttp,
    #[error("--gateway-id may hold only A-Z a-z 0-9 _ -, at most 253 of them")]
    GatewayId,
    #[error("--subject-prefix must be a non-empty NATS subject without wildcards")]
    SubjectPrefix,
    #[error("--{0} must be greater than zero")]
    Zero(&'static str),
    /// An event stream setting out of its bounds (`--dedup-window`, `--stream-partitions`).
    #[error("{0}")]
    Stream(&'static str),
    #[error("room glob {0:?} may hold only room-name characters and `*`")]
    Glob(String),
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("invalid auth key: {0}")]
    Key(String),
    #[error("invalid TLS material: {0}")]
    Tls(String),
    #[error("--namespaces: {0}")]
    Namespaces(String),
}

// === impl Config ===

impl Config {
    /// A configuration for tests and embedding: loopback listeners on port 0, every default.
    /// The namespaces of `--namespaces` (none without it).
    pub(crate) fn load_namespaces(&self) -> Result<herald_service::namespaces::Namespaces, ConfigError> {
        let limits = herald_service::namespaces::Limits {
            history_size: self.history_size.max(1) as u64,
            history_ttl: self.history_ttl,
        };
        match &self.namespaces {
            Some(path) => herald_service::namespaces::Namespaces::load(path, limits).map_err(ConfigError::Namespaces),
            None => Ok(herald_service::namespaces::Namespaces::default()),
        }
    }

    pub fn for_test(nats_url: &str) -> Self {
        let mut c = Self::parse_from(["herald-gateway"]);
        c.listen = "127.0.0.1:0".parse().expect("literal address");
        c.admin_listen = "127.0.0.1:0".parse().expect("literal address");
        c.nats_url = nats_url.to_owned();
        c
    }

    /// Checks what clap cannot; an error here means exit 64.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth_hs256_secret.is_none()
            && self.auth_public_key.is_none()
            && self.jwks_url.is_none()
            && !self.allow_anonymous
        {
            return Err(ConfigError::NoAuth);
        }
        if let Some(secret) = &self.auth_hs256_secret {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(ConfigError::ShortSecret(secret.len()));
            }
        }
        if let Some(url) = &self.jwks_url {
            let scheme = url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.scheme_str().map(str::to_ascii_lowercase));
            if scheme.as_deref() != Some("https") && !(self.jwks_insecure_http && scheme.as_deref() == Some("http")) {
                return Err(ConfigError::JwksHttp);
            }
        }
        if let Some(id) = &self.gateway_id {
            if !herald_proto::sys::valid_gateway(id) {
                return Err(ConfigError::GatewayId);
            }
        }
        let p = &self.subject_prefix;
        if p.is_empty() || p.contains(['*', '>', ' ']) || p.starts_with('.') || p.ends_with('.') {
            return Err(ConfigError::SubjectPrefix);
        }
        for (name, v) in [
            ("max-connections", self.max_connections),
            ("max-message-bytes", self.max_message_bytes),
            ("max-subscriptions", self.max_subscriptions),
            ("max-feeds", self.max_feeds),
            ("outbound-buffer-bytes", self.outbound_buffer_bytes),
            ("replay-max-events", self.replay_max_events),
            ("replay-max-bytes", self.replay_max_bytes),
            ("max-presence-rooms", self.max_presence_rooms),
            (
                "max-anonymous-connections-per-address",
                self.max_anonymous_connections_per_address,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.ping_interval.is_zero() {
            return Err(ConfigError::Zero("ping-interval"));
        }
        if self.write_timeout.is_zero() {
            return Err(ConfigError::Zero("write-timeout"));
        }
        for glob in self.anonymous_rooms.iter().chain(&self.anonymous_publish) {
            if glob.is_empty() || !glob.bytes().all(|b| b == b'*' || herald_proto::room::is_room_byte(b)) {
                return Err(ConfigError::Glob(glob.clone()));
            }
        }
        if self.presence_heartbeat.is_zero() {
            return Err(ConfigError::Zero("presence-heartbeat"));
        }
        herald_service::stream::check_dedup_window(self.dedup_window, self.history_ttl).map_err(ConfigError::Stream)?;
        self.load_namespaces()?;
        herald_service::stream::check_partition_count(self.stream_partitions).map_err(ConfigError::Stream)?;
        if self.publish_rate <= 0.0 {
            return Err(ConfigError::Zero("publish-rate"));
        }
        if self.op_rate <= 0.0 {
            return Err(ConfigError::Zero("op-rate"));
        }
        Ok(())
    }

    pub fn allowed_origins(&self) -> Vec<String> {
        self.allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty() && o != "*")
            .collect()
    }
}

/// permessage-deflate on `/ws` (`--ws-compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WsCompression {
    Off,
    /// Each event compressed once per codec, shared by every compressing subscriber.
    On,
    /// Each delivery compressed on its own (for comparison).
    PerConnection,
}

/// How the gateway subscribes to live room events (`--room-subscriptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoomSubscriptions {
    /// One subscription to all rooms while any room is held: rooms cost bytes, not
    /// subscriptions; NATS sends every room's events to every gateway.
    Wildcard,
    /// One subscription per room: NATS sends each gateway only its rooms' events.
    PerRoom,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        Config::parse_from(std::iter::once("herald-gateway").chain(args.iter().copied()))
    }

    #[test]
    fn hs256_secrets_need_32_bytes() {
        let ok = "0123456789abcdef0123456789abcdef";
        assert!(config(&["--auth-hs256-secret", ok]).validate().is_ok());
        for short in ["", "s", &ok[1..]] {
            assert!(matches!(
                config(&["--auth-hs256-secret", short]).validate(),
                Err(ConfigError::ShortSecret(n)) if n == short.len()
            ));
        }
    }

    #[test]
    fn jwks_urls_are_https_unless_http_is_allowed() {
        let url = |u: &str, insecure: bool| {
            let mut args = vec!["--jwks-url", u];
            if insecure {
                args.push("--jwks-insecure-http");
            }
            config(&args).validate()
        };
        assert!(url("https://id.example/jwks.json", false).is_ok());
        assert!(url("HTTPS://id.example/jwks.json", false).is_ok());
        assert!(matches!(
            url("http://id.example/jwks.json", false),
            Err(ConfigError::JwksHttp)
        ));
        assert!(url("http://127.0.0.1:8000/jwks.json", true).is_ok());
        assert!(matches!(url("ftp://id.example/jwks", true), Err(ConfigError::JwksHttp)));
        assert!(matches!(url("not a url", true), Err(ConfigError::JwksHttp)));
    }
}
