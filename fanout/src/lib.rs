//! Herald's fanout service.
//!
//! Today it owns the JetStream event stream (creates it and keeps its settings in line with
//! `--history-size`, `--history-ttl` and `--stream-replicas`) and serves the admin endpoints.
//! Presence tracking across gateways is planned here (see docs/ARCHITECTURE.md).
//!
//! Start at [`Fanout::bind`] and [`Fanout::serve`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use herald_gateway::config::LogFormat;
use herald_gateway::server::{self, Readiness};
use herald_gateway::stream::{self, StreamSettings};
use herald_gateway::upstream::Upstream;
use herald_proto::subject::Subjects;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{info, warn};

/// Metric names of fanout.
pub mod metric {
    pub const PRESENCE_MEMBERS: &str = "herald_fanout_presence_members";
    pub const PRESENCE_EVENTS: &str = "herald_fanout_presence_events_total";
    pub const STREAM_PROVISIONED: &str = "herald_fanout_stream_provisioned";
}

/// Herald fanout: presence across gateways and the event stream's owner.
///
/// Every flag also reads the environment variable named beside it.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-fanout", version, about, long_about = None)]
pub struct Config {
    /// NATS server URL; a comma-separated list for a cluster.
    #[arg(long, env = "HERALD_NATS_URL", default_value = "nats://127.0.0.1:4222")]
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

    /// Presence diff coalescing window.
    #[arg(long, env = "HERALD_PRESENCE_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub presence_interval: Duration,

    /// A gateway silent this long has its members expired.
    #[arg(long, env = "HERALD_GATEWAY_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub gateway_timeout: Duration,

    /// JetStream replicas of the event stream (3 on a 3-node NATS cluster).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

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
    Nats(#[from] herald_gateway::upstream::UpstreamError),
}

/// A bound fanout instance.
pub struct Fanout {
    config: Config,
    admin: TcpListener,
    client: async_nats::Client,
}

impl Config {
    pub fn validate(&self) -> Result<(), Error> {
        if self.history_size <= 0 {
            return Err(Error::Config("--history-size must be greater than zero".into()));
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(Error::Config("--stream-replicas must be 1 to 5".into()));
        }
        Ok(())
    }
}

// === impl Fanout ===

impl Fanout {
    pub async fn bind(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| Error::Bind(config.admin_listen, e))?;
        let (client, _) = Upstream::connect(&config.nats_url, "herald-fanout").await?;
        Ok(Self { config, admin, client })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    /// Provisions the stream (retrying until NATS answers) and serves the admin endpoints
    /// until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let metrics = herald_gateway::metrics::install();
        metrics::describe_gauge!(metric::PRESENCE_MEMBERS, "Members tracked across all rooms.");
        metrics::describe_counter!(metric::PRESENCE_EVENTS, "Presence diffs published.");
        metrics::gauge!(metric::PRESENCE_MEMBERS).set(0.0);
        metrics::counter!(metric::PRESENCE_EVENTS).absolute(0);
        let provisioned = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let readiness: Readiness = {
            let (client, provisioned, draining) =
                (self.client.clone(), Arc::clone(&provisioned), Arc::clone(&draining));
            Arc::new(move || {
                if draining.load(Ordering::Relaxed) {
                    Some("draining")
                } else if client.connection_state() != async_nats::connection::State::Connected {
                    Some("NATS disconnected")
                } else if !provisioned.load(Ordering::Relaxed) {
                    Some("event stream not provisioned")
                } else {
                    None
                }
            })
        };
        let stop = Arc::new(Notify::new());
        let admin = tokio::spawn(server::admin_loop(
            self.admin,
            metrics.clone(),
            readiness,
            Arc::clone(&stop),
        ));
        let upkeep = tokio::spawn(herald_gateway::metrics::upkeep(metrics));
        let settings = StreamSettings {
            history_size: self.config.history_size,
            history_ttl: self.config.history_ttl,
            replicas: self.config.stream_replicas,
        };
        let js = async_nats::jetstream::new(self.client.clone());
        let subjects = Subjects::new(self.config.subject_prefix.clone());
        let provision = tokio::spawn({
            let provisioned = Arc::clone(&provisioned);
            async move {
                loop {
                    match stream::provision(&js, &subjects, &settings).await {
                        Ok(()) => {
                            provisioned.store(true, Ordering::SeqCst);
                            metrics::gauge!(metric::STREAM_PROVISIONED).set(1.0);
                            info!(stream = %subjects.stream_name(), "Event stream provisioned");
                            return;
                        }
                        Err(e) => warn!(error = %e, "Event stream not provisioned; retrying"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        shutdown.await;
        draining.store(true, Ordering::SeqCst);
        provision.abort();
        let _ = tokio::time::timeout(self.config.drain_timeout, self.client.flush()).await;
        stop.notify_one();
        let _ = admin.await;
        upkeep.abort();
        info!("Fanout stopped");
    }
}
