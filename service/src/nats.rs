//! The NATS connection of a Herald process: a cluster's URL list, background retries, and
//! every connection event counted under the caller's own metric.

use std::time::Duration;

use async_nats::{Client, ServerAddr};
use tokio::sync::watch;
use tracing::debug;

/// Why the connection could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(String);

/// What a connection's owner watches besides its events' labels.
#[derive(Debug, Clone)]
pub struct Signals {
    /// Connects so far, so a reconnect can be told from the first connect.
    pub connects: watch::Receiver<u64>,
    /// Messages async-nats dropped because a subscription's buffer was full (counted when
    /// it reports them), so the owner can repair what they held.
    pub slow_consumers: watch::Receiver<u64>,
}

/// Connects as `name` (retrying in the background if NATS is down at start). `on_event` gets
/// each connection event's label (`connected`, `disconnected`, `lame_duck`, `slow_consumer`,
/// `server_error`, `client_error`, `draining`, `closed`); the receiver counts connects, so a
/// reconnect can be told from the first connect.
pub async fn connect(
    urls: &str,
    name: &str,
    on_event: fn(&'static str),
) -> Result<(Client, watch::Receiver<u64>), ConnectError> {
    let (client, signals) = connect_with(urls, name, on_event, None).await?;
    Ok((client, signals.connects))
}

/// [`connect`], with each subscription's buffer holding `subscription_capacity` messages
/// (async-nats's default, 65,536, when `None`), and the slow consumers signalled.
pub async fn connect_with(
    urls: &str,
    name: &str,
    on_event: fn(&'static str),
    subscription_capacity: Option<usize>,
) -> Result<(Client, Signals), ConnectError> {
    let (tx, connects) = watch::channel(0u64);
    let (slow_tx, slow_consumers) = watch::channel(0u64);
    let servers = server_list(urls)?;
    let mut options = async_nats::ConnectOptions::new();
    // async-nats ignores credentials in a URL; a NATS user (deploy/k8s/base/nats-auth.conf)
    // comes as `nats://user:password@host`, the same for every server of a cluster.
    if let Some(s) = servers.iter().find(|s| s.has_user_pass()) {
        options = options.user_and_password(
            s.username().unwrap_or_default().to_owned(),
            s.password().unwrap_or_default().to_owned(),
        );
    }
    if let Some(capacity) = subscription_capacity {
        options = options.subscription_capacity(capacity);
    }
    let client = options
        .name(name)
        .retry_on_initial_connect()
        .ping_interval(Duration::from_secs(10))
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let (tx, slow_tx) = (tx.clone(), slow_tx.clone());
            async move {
                match event {
                    async_nats::Event::Connected => tx.send_modify(|n| *n += 1),
                    async_nats::Event::SlowConsumer(_) => slow_tx.send_modify(|n| *n += 1),
                    _ => {}
                }
                let label = EVENTS[event_index(&event)];
                on_event(label);
                debug!(event = label, "NATS connection event");
            }
        })
        .connect(servers.as_slice())
        .await
        .map_err(|e| ConnectError(e.to_string()))?;
    Ok((
        client,
        Signals {
            connects,
            slow_consumers,
        },
    ))
}

/// The connection event labels, for metrics that start every series at zero.
pub const EVENTS: [&str; 8] = [
    "connected",
    "disconnected",
    "lame_duck",
    "slow_consumer",
    "server_error",
    "client_error",
    "draining",
    "closed",
];

/// Where an event's label is in [`EVENTS`].
fn event_index(event: &async_nats::Event) -> usize {
    match event {
        async_nats::Event::Connected => 0,
        async_nats::Event::Disconnected => 1,
        async_nats::Event::LameDuckMode => 2,
        async_nats::Event::SlowConsumer(_) => 3,
        async_nats::Event::ServerError(_) => 4,
        async_nats::Event::ClientError(_) => 5,
        async_nats::Event::Draining => 6,
        async_nats::Event::Closed => 7,
    }
}

/// `--nats-url`: one URL, or a comma-separated list of a cluster's seed URLs.
pub fn server_list(urls: &str) -> Result<Vec<ServerAddr>, ConnectError> {
    let list: Vec<&str> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    if list.is_empty() {
        return Err(ConnectError("--nats-url is empty".into()));
    }
    list.into_iter()
        .map(|u| u.parse().map_err(|e| ConnectError(format!("--nats-url {u:?}: {e}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_its_own_label() {
        use async_nats::Event;
        let events = [
            Event::Connected,
            Event::Disconnected,
            Event::LameDuckMode,
            Event::Draining,
            Event::Closed,
        ];
        let labels: Vec<&str> = events.iter().map(|e| EVENTS[event_index(e)]).collect();
        assert_eq!(labels, ["connected", "disconnected", "lame_duck", "draining", "closed"]);
        let mut all = EVENTS.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), EVENTS.len());
    }

    #[test]
    fn a_cluster_is_given_as_a_comma_separated_list() {
        let list = server_list("nats://a:4222, nats://b:4223,nats://c:4224").expect("three URLs");
        let hosts: Vec<(String, u16)> = list.iter().map(|a| (a.host().to_owned(), a.port())).collect();
        assert_eq!(hosts, [("a".into(), 4222), ("b".into(), 4223), ("c".into(), 4224)]);
        assert_eq!(server_list("nats://127.0.0.1:4222").expect("one URL").len(), 1);
        assert!(server_list("").is_err());
        assert!(server_list(" , ").is_err());
        let e = server_list("nats://a:4222,nats://b:x").expect_err("a bad port");
        assert!(e.to_string().contains("nats://b:x"), "{e}");
    }
}
