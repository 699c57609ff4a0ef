//! A real `nats-server` with JetStream, one per test.

use std::path::Path;
use std::time::{Duration, Instant};

use herald_harness::launch::{cluster_args, Nats, NatsOptions};

/// A running nats-server; killed (and its store removed) on drop.
pub struct NatsServer {
    nats: Nats,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port with a fresh store directory.
    pub fn start() -> Self {
        Self::with_args(Vec::new())
    }

    /// Starts `nats-server -js` mapping rooms to `partitions` event streams (the gateways and
    /// fanout it serves need `--stream-partitions` with the same count).
    pub fn partitioned(partitions: u32) -> Self {
        Self::launch(Vec::new(), partitions)
    }

    /// Starts `n` servers routed to each other on loopback as one JetStream cluster
    /// (`herald-test`), and waits until JetStream has a leader.
    pub async fn cluster(n: usize) -> Vec<Self> {
        Self::cluster_partitioned(n, 1).await
    }

    /// [`NatsServer::cluster`], every node mapping rooms to `partitions` event streams.
    pub async fn cluster_partitioned(n: usize, partitions: u32) -> Vec<Self> {
        let routes: Vec<u16> = (0..n).map(|_| crate::free_port()).collect();
        let nodes: Vec<Self> = cluster_args("herald-test", &routes)
            .into_iter()
            .map(|args| Self::launch(args, partitions))
            .collect();
        for node in &nodes {
            node.wait_jetstream_leader().await;
        }
        nodes
    }

    /// Starts `nats-server -js` with the config file `config` (users, permissions) under
    /// the harness's flags (port, store).
    pub fn with_config(config: &Path) -> Self {
        Self::with_args(vec!["-c".into(), config.display().to_string()])
    }

    fn with_args(args: Vec<String>) -> Self {
        Self::launch(args, 1)
    }

    fn launch(args: Vec<String>, stream_partitions: u32) -> Self {
        let nats = Nats::start(NatsOptions {
            args,
            stream_partitions,
            logs: crate::logs(),
            ..NatsOptions::default()
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        Self { nats }
    }

    /// Waits (up to 30 s) until this node knows the JetStream meta leader and, if it is the
    /// leader, sees every peer as current (`/jsz` → `meta_cluster`).
    pub async fn wait_jetstream_leader(&self) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.monitor_port()));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match crate::http::get(addr, "/jsz").await {
                Ok(r) => serde_json::from_str::<serde_json::Value>(&r.body)
                    .ok()
                    .map(|v| {
                        let meta = &v["meta_cluster"];
                        // Only the leader knows whether its followers are current.
                        let leader = meta["leader"].as_str().unwrap_or("");
                        let peers_current = meta["replicas"]
                            .as_array()
                            .is_none_or(|r| r.iter().all(|p| p["current"].as_bool() == Some(true)));
                        !leader.is_empty() && (Some(leader) != self.name() || peers_current)
                    })
                    .unwrap_or(false),
                Err(_) => false,
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on {} has no JetStream meta leader within 30 s",
                self.port()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's id as its peers name it (`/varz` → `server_name`).
    pub fn name(&self) -> Option<&str> {
        let args = self.nats.args();
        args.iter()
            .position(|a| a == "--server_name")
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }

    pub fn port(&self) -> u16 {
        self.nats.port()
    }

    /// The HTTP monitoring port (`/varz`, `/healthz`).
    pub fn monitor_port(&self) -> u16 {
        self.nats.monitor_port()
    }

    /// The subjects of every subscription the server holds (`/subsz?subs=1`), one entry
    /// per subscription.
    pub async fn subscriptions(&self) -> Vec<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.monitor_port()));
        let body = crate::http::get(addr, "/subsz?subs=1&limit=100000")
            .await
            .expect("nats-server /subsz answers")
            .body;
        let v: serde_json::Value = serde_json::from_str(&body).expect("/subsz is JSON");
        v["subscriptions_list"]
            .as_array()
            .map(|subs| {
                subs.iter()
                    .filter_map(|s| s["subject"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn store_dir(&self) -> &Path {
        self.nats.store_dir()
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        self.nats.kill();
    }

    /// Freezes the server (SIGSTOP): every request to it hangs until [`NatsServer::resume`].
    pub fn pause(&self) {
        self.nats.signal("-STOP").expect("SIGSTOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.nats.signal("-CONT").expect("SIGCONT");
    }

    /// Starts it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.nats.restart().unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// `HERALD_NATS_SERVER`, then `nats-server` on PATH, then the copy `cargo xtask` installs.
pub fn find_binary() -> std::path::PathBuf {
    herald_harness::launch::nats_binary().unwrap_or_else(|e| panic!("{e:#}"))
}
