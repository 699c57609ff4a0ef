//! Herald's fanout service: presence across every gateway, and the event stream's owner.
//!
//! Gateways report their connections and presence members on `herald.sys.gw.<gateway>`
//! ([`herald_proto::sys`]); every fanout instance applies them to the same [`state::State`]
//! in one task, answers snapshot and status requests (queue groups: any instance answers),
//! and publishes coalesced diffs, user status and room lifecycle for the partitions whose
//! [`leader`] lease it holds. It also creates the JetStream event stream and keeps its
//! settings in line with `--history-size`, `--history-ttl` and `--stream-replicas`.
//!
//! Start at [`Fanout::bind`] and [`Fanout::serve`], then [`state`].

mod api;
mod intake;
pub mod leader;
mod presence;
pub mod state;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use herald_proto::subject::{Partitions, Subjects};
use herald_service::stream::{self, StreamSettings};
use herald_service::{LogFormat, Readiness};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::api::{Api, Settings as ApiSettings};
use crate::intake::Intake;
use crate::leader::Leases;
use crate::presence::Tracker;

/// Metric names of fanout.
pub mod metric {
    pub const PRESENCE_MEMBERS: &str = "herald_fanout_presence_members";
    pub const PRESENCE_EVENTS: &str = "herald_fanout_presence_events_total";
    pub const STREAM_PROVISIONED: &str = "herald_fanout_stream_provisioned";
    pub const ROOMS: &str = "herald_fanout_presence_rooms";
    pub const CONNECTIONS: &str = "herald_fanout_connections";
    pub const USERS_ONLINE: &str = "herald_fanout_users_online";
    pub const GATEWAYS: &str = "herald_fanout_gateways";
    pub const STATUS_EVENTS: &str = "herald_fanout_status_events_total";
    pub const LIFECYCLE_EVENTS: &str = "herald_fanout_lifecycle_events_total";
    pub const LEADER: &str = "herald_fanout_leader";
    pub const SYNC_DURATION: &str = "herald_fanout_sync_duration_seconds";
    pub const SYNCS: &str = "herald_fanout_syncs_total";
    pub const GATEWAYS_EXPIRED: &str = "herald_fanout_gateways_expired_total";
    pub const REQUESTS: &str = "herald_fanout_requests_total";
    pub const NATS_EVENTS: &str = "herald_fanout_nats_events_total";
    pub const SYS_DROPPED: &str = "herald_fanout_sys_dropped_total";
    pub const API_BUSY: &str = "herald_fanout_api_busy_total";
}

/// Counts a NATS connection event of this process.
fn nats_event(event: &'static str) {
    metrics::counter!(metric::NATS_EVENTS, "event" => event).increment(1);
}

/// Herald fanout: presence across gateways and the event stream's owner.
///
/// Every flag also reads the environment variable named beside it.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-fanout", version, about, long_about = None)]
pub struct Config {
    /// NATS server URL; a comma-separated list for a cluster. With a NATS user:
    /// `nats://user:password@host:4222` (docs/operations.md lists the users).
    #[arg(
        long,
        env = "HERALD_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,

    /// Admin listener: /metrics /healthz /readyz.
    #[arg(long, env = "HERALD_ADMIN_LISTEN", default_value = "127.0.0.1:9200")]
    pub admin_listen: SocketAddr,

    /// Prefix of every NATS subject Herald uses.
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = "herald")]
    pub subject_prefix: String,

    /// Events kept per room.
    #[arg(long, env = "HERALD_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: i64,

    /// How long events are kept.
    #[arg(long, env = "HERALD_HISTORY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// Most bytes the event stream keeps in all (oldest events go first), so that a flood
    /// of publishes cannot fill the NATS servers' disks.
    #[arg(long, env = "HERALD_HISTORY_MAX_BYTES", default_value_t = 1 << 30)]
    pub history_max_bytes: i64,

    /// How long a publish's idempotency key (`Nats-Msg-Id`) is remembered: JetStream's
    /// duplicate window. At most `--history-ttl`.
    #[arg(long, env = "HERALD_DEDUP_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,

    /// Presence diff coalescing window.
    #[arg(long, env = "HERALD_PRESENCE_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub presence_interval: Duration,

    /// A gateway silent this long has its members expired.
    #[arg(long, env = "HERALD_GATEWAY_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub gateway_timeout: Duration,

    /// A user whose last connection in a room (or anywhere) closes stays present this long,
    /// so a quick reconnect makes no leave/join pair and no offline/online flip.
    #[arg(long, env = "HERALD_LEAVE_DELAY", default_value = "3s", value_parser = humantime::parse_duration)]
    pub leave_delay: Duration,

    /// Rooms with more members than this get counts only (no member lists).
    #[arg(long, env = "HERALD_LARGE_ROOM", default_value_t = 1000)]
    pub large_room: usize,

    /// Presence partitions; each has one leader instance that publishes its rooms and users.
    #[arg(long, env = "HERALD_PARTITIONS", default_value_t = 1)]
    pub partitions: u32,

    /// Leader lease: a dead leader's partitions are taken over within about this long.
    #[arg(long, env = "HERALD_LEADER_LEASE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub leader_lease: Duration,

    /// How long a starting instance collects gateway snapshots before it answers requests.
    #[arg(long, env = "HERALD_SYNC_WINDOW", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sync_window: Duration,

    /// This instance's id in logs and leases. Default: a random id.
    #[arg(long, env = "HERALD_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// JetStream replicas of the event stream (3 on a 3-node NATS cluster).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

    /// Where the event stream keeps events: `file` (survives a NATS server's restart) or
    /// `memory` (cheaper per event; docs/operations.md says what a restart loses). Fixed
    /// when the stream is created: fanout refuses (stays not ready) to run over a stream
    /// stored otherwise.
    #[arg(long, env = "HERALD_STREAM_STORAGE", value_enum, default_value_t = stream::Storage::File)]
    pub stream_storage: stream::Storage,

    /// Partitions of the event stream: rooms are stored in this many streams by a hash of
    /// their name (`HERALD_ROOMS_<i>`; 1 is the single stream `HERALD_ROOMS`). Every NATS
    /// server needs the matching subject mapping, and every gateway and fanout the same count;
    /// a mismatch keeps the process not ready (docs/operations.md). At most 1024.
    #[arg(long, env = "HERALD_STREAM_PARTITIONS", default_value_t = 1)]
    pub stream_partitions: u32,

    /// How long a token revocation (`herald.api.disconnect` with `revoke`) lasts: at least
    /// the lifetime of the tokens your backend issues.
    #[arg(long, env = "HERALD_REVOCATION_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub revocation_ttl: Duration,

    /// The server API over HTTP (`POST /api/<method>`, docs/api.openapi.json) listens here;
    /// off unless set. Needs `--api-key`.
    #[arg(long, env = "HERALD_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,

    /// Keys the HTTP API accepts in `X-API-Key` (comma-separated for several, e.g. while
    /// rotating; each at least 16 characters).
    #[arg(long, env = "HERALD_API_KEY", value_delimiter = ',', hide_env_values = true)]
    pub api_key: Vec<String>,

    /// Namespaces: rules per room-name prefix, from a TOML file (docs/operations.md,
    /// "Namespaces"); the same file as the gateways'. Fanout takes from it the events'
    /// lifetimes and history sizes (server API publishes) and presence counts-only limits.
    #[arg(long, env = "HERALD_NAMESPACES")]
    pub namespaces: Option<std::path::PathBuf>,

    /// Longest wait for in-flight work on SIGTERM/SIGINT.
    #[arg(long, env = "HERALD_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("NATS: {0}")]
    Nats(#[from] herald_service::nats::ConnectError),
}

/// A bound fanout instance.
pub struct Fanout {
    config: Config,
    admin: TcpListener,
    api: Option<TcpListener>,
    client: async_nats::Client,
    metrics: PrometheusHandle,
}

impl Config {
    pub fn validate(&self) -> Result<(), Error> {
        if self.history_size <= 0 {
            return Err(Error::Config("--history-size must be greater than zero".into()));
        }
        stream::check_partition_count(self.stream_partitions).map_err(|e| Error::Config(e.into()))?;
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(Error::Config("--stream-replicas must be 1 to 5".into()));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(Error::Config("--partitions must be 1 to 1024".into()));
        }
        stream::check_dedup_window(self.dedup_window, self.history_ttl).map_err(|e| Error::Config(e.into()))?;
        for (name, d) in [
            ("presence-interval", self.presence_interval),
            ("gateway-timeout", self.gateway_timeout),
            ("revocation-ttl", self.revocation_ttl),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("--{name} must be greater than zero")));
            }
        }
        if self.api_listen.is_some() && self.api_key.is_empty() {
            return Err(Error::Config("--api-listen needs at least one --api-key".into()));
        }
        if self
            .api_key
            .iter()
            .any(|k| k.len() < 16 || k.bytes().any(|b| !b.is_ascii_graphic()))
        {
            return Err(Error::Config(
                "every --api-key must be at least 16 printable characters without spaces".into(),
            ));
        }
        self.load_namespaces()?;
        if self.leader_lease < Duration::from_secs(1) {
            return Err(Error::Config("--leader-lease must be at least 1s".into()));
        }
        Ok(())
    }
}

impl Config {
    /// The namespaces of `--namespaces` (none without it).
    pub fn load_namespaces(&self) -> Result<herald_service::namespaces::Namespaces, Error> {
        let limits = herald_service::namespaces::Limits {
            history_size: self.history_size.max(1) as u64,
            history_ttl: self.history_ttl,
        };
        match &self.namespaces {
            Some(path) => herald_service::namespaces::Namespaces::load(path, limits)
                .map_err(|e| Error::Config(format!("--namespaces: {e}"))),
            None => Ok(herald_service::namespaces::Namespaces::default()),
        }
    }
}

// === impl Fanout ===

impl Fanout {
    pub async fn bind(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| Error::Bind(config.admin_listen, e))?;
        let api = match config.api_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| Error::Bind(addr, e))?),
            None => None,
        };
        // Before the connection: its first `connected` event is counted.
        let metrics =
            herald_service::metrics::install(metrics_exporter_prometheus::PrometheusBuilder::new, describe_metrics);
        let (client, _) = herald_service::nats::connect(&config.nats_url, "herald-fanout", nats_event).await?;
        Ok(Self {
            config,
            admin,
            api,
            client,
            metrics,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    /// The HTTP API's address, with `--api-listen`.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|l| l.local_addr().expect("bound listener"))
    }

    /// Provisions the stream, tracks presence and serves the admin endpoints until
    /// `shutdown` resolves; then stops answering, hands its leases over and exits.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let admin_addr = self.admin_addr();
        let metrics = self.metrics;
        let config = self.config;
        let instance = config.instance_id.clone().unwrap_or_else(|| {
            let n: u32 = rand::random();
            format!("fanout-{n:08x}")
        });
        let provisioned = Arc::new(AtomicBool::new(false));
        let unmapped = Arc::new(AtomicBool::new(false));
        let synced = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let readiness = readiness(self.client.clone(), [&provisioned, &unmapped, &synced, &draining]);
        let stop_admin = Arc::new(Notify::new());
        let admin = tokio::spawn(herald_service::admin_loop(
            self.admin,
            metrics.clone(),
            readiness,
            Arc::clone(&stop_admin),
        ));
        let upkeep = tokio::spawn(herald_service::metrics::upkeep(metrics));
        let js = async_nats::jetstream::new(self.client.clone());
        let subjects = Subjects::new(config.subject_prefix.clone());
        // Read once more (bind's validate refused a bad file): every part takes this copy.
        let namespaces = Arc::new(config.load_namespaces().unwrap_or_default());
        let provision = tokio::spawn(provision(
            js.clone(),
            Partitions::new(subjects.clone(), config.stream_partitions),
            StreamSettings {
                history_size: config.history_size,
                history_ttl: config.history_ttl,
                max_bytes: config.history_max_bytes,
                dedup_window: config.dedup_window,
                replicas: config.stream_replicas,
                storage: config.stream_storage,
                allow_msg_ttl: namespaces.uses_ttl(),
            },
            [Arc::clone(&provisioned), Arc::clone(&unmapped)],
        ));

        let leases = Leases::new(config.partitions);
        let stop_leases = Arc::new(Notify::new());
        let leasing = tokio::spawn(hold_leases(
            js,
            (subjects.leader_bucket(), config.leader_lease, config.stream_replicas),
            instance.clone(),
            leases.clone(),
            Arc::clone(&stop_leases),
        ));
        let stop_presence = Arc::new(Notify::new());
        let intake = Intake::default();
        let stop_api = Arc::new(Notify::new());
        let stop_http = Arc::new(Notify::new());
        let api = Api::new(ApiSettings {
            client: self.client.clone(),
            subjects: subjects.clone(),
            intake: intake.clone(),
            gateway_timeout: config.gateway_timeout,
            revocation_ttl: config.revocation_ttl,
            replicas: config.stream_replicas,
            partitions: Partitions::new(subjects.clone(), config.stream_partitions),
            namespaces: Arc::clone(&namespaces),
            history_size: config.history_size.max(1) as u64,
        });
        let api_nats = tokio::spawn(Arc::clone(&api).serve_nats(Arc::clone(&stop_api)));
        let api_http = self.api.map(|listener| {
            let keys = Arc::new(config.api_key.clone());
            tokio::spawn(web::serve(listener, Arc::clone(&api), keys, Arc::clone(&stop_http)))
        });
        let tracker = Tracker {
            client: self.client.clone(),
            subjects,
            leases,
            synced,
            intake,
            namespaces: Arc::clone(&namespaces),
        };
        let presence = tokio::spawn(tracker.run(config.clone(), Arc::clone(&stop_presence)));
        info!(%instance, admin = %admin_addr, "Fanout serving");

        shutdown.await;
        draining.store(true, Ordering::SeqCst);
        provision.abort();
        stop_presence.notify_one();
        stop_api.notify_one();
        stop_http.notify_one();
        let _ = presence.await;
        let _ = api_nats.await;
        if let Some(http) = api_http {
            let _ = http.await;
        }
        api.drain().await;
        stop_leases.notify_one();
        // Bounded: with NATS gone, handing the leases over and flushing would wait for it.
        let _ = tokio::time::timeout(Duration::from_secs(3), leasing).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        stop_admin.notify_one();
        let _ = admin.await;
        upkeep.abort();
        info!("Fanout stopped");
    }
}

/// Not ready while draining, disconnected from NATS, while the server maps rooms to other
/// partitions, before the stream is provisioned and before presence has synced with the
/// gateways. `flags`: provisioned, unmapped, synced, draining.
fn readiness(client: async_nats::Client, flags: [&Arc<AtomicBool>; 4]) -> Readiness {
    let [provisioned, unmapped, synced, draining] = flags.map(Arc::clone);
    Arc::new(move || {
        if draining.load(Ordering::Relaxed) {
            Some("draining")
        } else if client.connection_state() != async_nats::connection::State::Connected {
            Some("NATS disconnected")
        } else if unmapped.load(Ordering::Relaxed) {
            Some(stream::NOT_MAPPED)
        } else if !provisioned.load(Ordering::Relaxed) {
            Some("event stream not provisioned")
        } else if !synced.load(Ordering::Relaxed) {
            Some("presence not synced with the gateways yet")
        } else {
            None
        }
    })
}

/// Opens the lease bucket (`bucket`, `lease`, `replicas`), retrying every second, then takes
/// part in the lease election until `stop`.
async fn hold_leases(
    js: async_nats::jetstream::Context,
    (bucket, lease, replicas): (String, Duration, usize),
    instance: String,
    leases: Leases,
    stop: Arc<Notify>,
) {
    let store = loop {
        match leader::bucket(&js, &bucket, lease, replicas).await {
            Ok(store) => break store,
            Err(e) => warn!(error = %e, "Lease bucket unavailable; retrying"),
        }
        tokio::select! {
            _ = stop.notified() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    leader::run(store, instance, leases, lease, stop).await;
}

/// Creates the event streams (or brings their settings in line), retrying until NATS
/// answers, then checks that the server stores each room in its partition's stream: until it
/// does, fanout stays not ready and says why every few seconds.
async fn provision(
    js: async_nats::jetstream::Context,
    partitions: Partitions,
    settings: StreamSettings,
    [provisioned, unmapped]: [Arc<AtomicBool>; 2],
) {
    loop {
        let mut delay = Duration::from_secs(1);
        match provision_once(&js, &partitions, &settings).await {
            Ok(()) => {
                unmapped.store(false, Ordering::SeqCst);
                provisioned.store(true, Ordering::SeqCst);
                metrics::gauge!(metric::STREAM_PROVISIONED).set(1.0);
                info!(stream = %partitions.stream(0), partitions = partitions.count(), "Event stream provisioned");
                return;
            }
            Err(ProvisionFailure::Unmapped(e)) => {
                unmapped.store(true, Ordering::SeqCst);
                error!(error = %e, partitions = partitions.count(), "NATS subject mapping does not match --stream-partitions; not ready");
                delay = PARTITION_CHECK_RETRY;
            }
            Err(ProvisionFailure::Other(e)) => warn!(error = %e, "Event stream not provisioned; retrying"),
        }
        tokio::time::sleep(delay).await;
    }
}

enum ProvisionFailure {
    Unmapped(stream::PartitionError),
    Other(String),
}

/// Provisions the streams, then (with partitions) checks the server's mapping. With one
/// stream fanout does not probe: the deploy's NATS users do not let it publish room
/// subjects, and gateways make the same check.
async fn provision_once(
    js: &async_nats::jetstream::Context,
    partitions: &Partitions,
    settings: &StreamSettings,
) -> Result<(), ProvisionFailure> {
    stream::provision(js, partitions, settings)
        .await
        .map_err(|e| ProvisionFailure::Other(e.to_string()))?;
    if partitions.count() == 1 {
        return Ok(());
    }
    stream::check_partitions(js, partitions).await.map_err(|e| match e {
        stream::CheckError::Partitions(e) => ProvisionFailure::Unmapped(e),
        e => ProvisionFailure::Other(e.to_string()),
    })
}

/// How often fanout checks a mismatched partition mapping again (it may be fixed by a
/// configuration reload); a slow pace keeps the error log readable.
const PARTITION_CHECK_RETRY: Duration = Duration::from_secs(5);

fn describe_metrics() {
    use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
    describe_gauge!(
        metric::PRESENCE_MEMBERS,
        "Room members (unique users per room) across all rooms."
    );
    describe_gauge!(metric::ROOMS, "Rooms with at least one member.");
    describe_gauge!(metric::CONNECTIONS, "Client connections reported by the gateways.");
    describe_gauge!(metric::USERS_ONLINE, "Users with at least one connection anywhere.");
    describe_gauge!(metric::GATEWAYS, "Gateways heard from within --gateway-timeout.");
    describe_gauge!(metric::LEADER, "1 for each partition this instance leads.");
    describe_gauge!(metric::STREAM_PROVISIONED, "1 once the event stream is provisioned.");
    describe_counter!(metric::PRESENCE_EVENTS, "Presence diffs published.");
    describe_counter!(metric::STATUS_EVENTS, "User status transitions published.");
    describe_counter!(metric::LIFECYCLE_EVENTS, "Room occupied/vacated events published.");
    describe_counter!(metric::SYNCS, "Gateway snapshots applied (first sync or repair).");
    describe_counter!(
        metric::GATEWAYS_EXPIRED,
        "Gateways expired after --gateway-timeout of silence."
    );
    describe_counter!(
        metric::REQUESTS,
        "Snapshot, status and server API requests taken, by kind (the API's: by method)."
    );
    describe_counter!(metric::NATS_EVENTS, "NATS connection events, by event.");
    describe_counter!(
        metric::API_BUSY,
        "Server API requests refused because 64 were in hand already (NATS and HTTP)."
    );
    describe_counter!(
        metric::SYS_DROPPED,
        "Messages on herald.sys.gw.* no gateway sends (or past the queue bound), dropped, by reason."
    );
    for event in herald_service::nats::EVENTS {
        counter!(metric::NATS_EVENTS, "event" => event).increment(0);
    }
    describe_histogram!(
        metric::SYNC_DURATION,
        "Time from a sync request to the gateway's applied snapshot."
    );
    for name in [
        metric::PRESENCE_MEMBERS,
        metric::ROOMS,
        metric::CONNECTIONS,
        metric::USERS_ONLINE,
        metric::GATEWAYS,
        metric::STREAM_PROVISIONED,
    ] {
        gauge!(name).set(0.0);
    }
    for name in [
        metric::PRESENCE_EVENTS,
        metric::STATUS_EVENTS,
        metric::LIFECYCLE_EVENTS,
        metric::SYNCS,
        metric::GATEWAYS_EXPIRED,
    ] {
        counter!(name).absolute(0);
    }
    for reason in intake::DROP_REASONS {
        counter!(metric::SYS_DROPPED, "reason" => reason).absolute(0);
    }
    for kind in ["presence", "status"].into_iter().chain(herald_proto::api::method::ALL) {
        counter!(metric::REQUESTS, "kind" => kind).absolute(0);
    }
}
