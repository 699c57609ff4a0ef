//! An in-process gateway on port 0.

use std::net::SocketAddr;

use herald_gateway::{Config, Gateway};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A serving gateway; shut down (drained) on [`TestGateway::shutdown`] or aborted on drop.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub id: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    /// A gateway with the test HS256 secret and anonymous mode off.
    pub async fn start(nats_url: &str) -> Self {
        Self::start_with(nats_url, |_| {}).await
    }

    /// A gateway whose config `edit` adjusts first.
    pub async fn start_with(nats_url: &str, edit: impl FnOnce(&mut Config)) -> Self {
        let gw = Self::serve_with(nats_url, edit).await;
        gw.wait_ready().await;
        gw
    }

    /// [`TestGateway::start_with`] without waiting for `/readyz` (for gateways that must not
    /// become ready).
    pub async fn serve_with(nats_url: &str, edit: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::for_test(nats_url);
        config.auth_hs256_secret = Some(crate::jwt::SECRET.to_owned());
        config.drain_timeout = std::time::Duration::from_secs(2);
        edit(&mut config);
        let gateway = Gateway::bind(config).await.expect("gateway binds");
        let (addr, admin, id) = (
            gateway.local_addr(),
            gateway.admin_addr(),
            gateway.gateway_id().to_owned(),
        );
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(gateway.serve(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin,
            id,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        crate::wait_until(
            // Generous: a loaded two-core CI box runs several test binaries' NATS servers
            // and gateways at once, and stream provisioning retries with backoff.
            std::time::Duration::from_secs(30),
            "gateway /readyz 200",
            || async move {
                crate::http::get(admin, "/readyz")
                    .await
                    .map(|r| r.status == 200)
                    .unwrap_or(false)
            },
        )
        .await;
    }

    /// `/readyz` status code.
    pub async fn readyz(&self) -> u16 {
        crate::http::get(self.admin, "/readyz")
            .await
            .map(|r| r.status)
            .unwrap_or(0)
    }

    /// The value of a metric line in `/metrics` whose name and labels start with `prefix`
    /// (summed over matching lines).
    pub async fn metric(&self, prefix: &str) -> f64 {
        crate::http::metric(self.admin, prefix).await
    }

    /// Triggers the drain and waits until the gateway has stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
