//! Herald's edge gateway.
//!
//! Clients connect over WebSocket (`ws`) or HTTP (`http`: SSE, long-poll, poll, publish);
//! each room they subscribe to has one upstream NATS subscription per gateway (`upstream`),
//! and the `hub` fans every stored event out to the room's local subscribers, encoded once
//! per format, into bounded per-connection queues (`outbound`). Events live in a JetStream
//! stream ([`herald_service::stream`]), so a client resumes on any gateway with `since`.
//!
//! The modules are layered (docs/ARCHITECTURE.md lists the layers; `cargo xtask test`
//! checks them): `server` → transports (`ws`, `http`) → `state` → `presence` → `feeds`,
//! `hub` → `upstream` → the leaves. Start reading at [`Gateway::bind`] and
//! [`Gateway::serve`].

#![warn(unreachable_pub)]

mod addr;
mod auth;
mod config;
mod control;
mod deadline;
mod deflate;
mod feeds;
mod http;
mod hub;
mod jwks;
mod limit;
mod metrics;
mod outbound;
mod presence;
mod server;
mod state;
mod sync;
mod tls;
mod upstream;
mod ws;

/// What the hub benchmark drives directly: the room table and the outbound queue, without
/// NATS. Not a stable interface.
pub mod bench {
    pub use crate::hub::Table;
    pub use crate::outbound::{Content, Format, Item, Outbound};
    pub use crate::upstream::StoredEvent;
}

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::subject::Subjects;
use herald_service::stream::StreamSettings;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::info;

pub use config::{Config, ConfigError, RoomSubscriptions, WsCompression};

use crate::auth::Authenticator;
use crate::hub::{Hub, Table};
use crate::presence::Presence;
use crate::state::Shared;
use crate::upstream::Upstream;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("NATS: {0}")]
    Nats(#[from] upstream::UpstreamError),
}

/// A bound gateway, ready to serve.
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

// === impl Gateway ===

impl Gateway {
    /// Validates the configuration, connects to NATS (retrying in the background if it is
    /// down) and binds both listeners. Port 0 works; see [`Gateway::local_addr`].
    pub async fn bind(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let auth = Authenticator::from_config(&config)?;
        if let Some(jwks) = auth.jwks() {
            jwks.fetch_now().await;
            jwks::spawn_refresh(jwks, config.jwks_refresh);
        }
        let tls = tls::acceptor(&config)?;
        let metrics = metrics::install();
        let gateway_id = config.gateway_id.clone().unwrap_or_else(random_id);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::Bind(config.listen, e))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| Error::Bind(config.admin_listen, e))?;
        let (client, signals) = Upstream::connect(
            &config.nats_url,
            &format!("herald-gateway {gateway_id}"),
            config.nats_subscription_capacity.map(|c| c as usize),
        )
        .await?;
        let subjects = Subjects::new(config.subject_prefix.clone());
        let table = Arc::new(Table::default());
        // Read once (validate read it to refuse a bad file): every part takes this copy.
        let namespaces = Arc::new(config.load_namespaces()?);
        let ephemeral = Arc::clone(&namespaces);
        let options = upstream::Options {
            stream_partitions: config.stream_partitions,
            mode: config.room_subscriptions,
            subscription_capacity: config.nats_subscription_capacity.map(|c| c as usize),
            ephemeral: Arc::new(move |room: &str| ephemeral.of(room).ephemeral),
        };
        let upstream = Upstream::new(client, signals, subjects.clone(), table.clone(), options);
        upstream.watch_losses();
        let hub = Hub::new(table, Arc::clone(&upstream), config.room_linger);
        let presence = Presence::start(&upstream, &gateway_id, config.presence_heartbeat, config.max_feeds);
        let shared = Arc::new(Shared::new(
            config, gateway_id, auth, subjects, hub, presence, namespaces,
        ));
        control::start(&shared, &upstream);
        Ok(Self {
            shared,
            listener,
            admin,
            tls,
            metrics,
        })
    }

    /// The public listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    pub fn gateway_id(&self) -> &str {
        &self.shared.gateway_id
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` turns 503, no new
    /// connections, WebSocket clients get 1012 spread over `--drain-timeout`.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            shared,
            listener,
            admin,
            tls,
            metrics,
        } = self;
        info!(
            gateway = %shared.gateway_id,
            listen = %listener.local_addr().expect("bound listener"),
            admin = %admin.local_addr().expect("bound listener"),
            tls = tls.is_some(),
            "Gateway serving"
        );
        let stop_public = Arc::new(Notify::new());
        let stop_admin = Arc::new(Notify::new());
        let provision = tokio::spawn(provision_stream(Arc::clone(&shared)));
        let upkeep = tokio::spawn(herald_service::metrics::upkeep(metrics.clone()));
        let public = tokio::spawn(server::accept_loop(
            Arc::clone(&shared),
            listener,
            tls,
            Arc::clone(&stop_public),
        ));
        let state = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    metrics::state(
                        shared.not_ready().is_none(),
                        shared.hub.is_connected(),
                        shared.memberships.total(),
                    );
                }
            })
        };
        let readiness: herald_service::Readiness = {
            let shared = Arc::clone(&shared);
            Arc::new(move || shared.not_ready())
        };
        let admin = tokio::spawn(herald_service::admin_loop(
            admin,
            metrics,
            readiness,
            Arc::clone(&stop_admin),
        ));

        shutdown.await;
        shared.draining.store(true, Ordering::SeqCst);
        stop_public.notify_one();
        let _ = public.await;
        let drain = shared.config.drain_timeout;
        // Closes are spread over most of the window, leaving time for the last ones to flush.
        shared.conns.drain(drain.mul_f64(0.8), drain).await;
        stop_admin.notify_one();
        let _ = admin.await;
        provision.abort();
        upkeep.abort();
        state.abort();
        shared.hub.flush(Duration::from_secs(2)).await;
        info!("Gateway stopped");
    }
}

/// Makes sure the event stream exists (fanout normally owns it; a gateway must work
/// without it), retrying until NATS answers.
async fn provision_stream(shared: Arc<Shared>) {
    let c = &shared.config;
    let settings = StreamSettings {
        history_size: c.history_size,
        history_ttl: c.history_ttl,
        max_bytes: c.history_max_bytes,
        dedup_window: c.dedup_window,
        replicas: c.stream_replicas,
        storage: c.stream_storage,
        allow_msg_ttl: shared.namespaces.uses_ttl(),
    };
    shared.hub.provision(&settings).await;
    shared.stream_ready.store(true, Ordering::SeqCst);
}

fn random_id() -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("gw-{n:08x}")
}
