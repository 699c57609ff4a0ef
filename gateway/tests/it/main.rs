//! Gateway integration tests: a real nats-server, gateways on port 0, real WebSocket clients.

mod anonymous;
mod answers;
mod backlog;
mod bad_input;
mod drain;
mod fallback;
mod hostile;
mod idempotent;
mod jwks;
mod limits;
mod op_fuzz;
mod push;
mod resume;
mod rooms;
mod slow_consumer;
mod stalled;
mod stream_reset;

use herald_testkit::{NatsServer, TestGateway};

/// One NATS server and two gateways on it.
pub struct Stack {
    pub nats: NatsServer,
    pub a: TestGateway,
    pub b: TestGateway,
}

impl Stack {
    pub async fn start() -> Self {
        let nats = NatsServer::start();
        let a = TestGateway::start(&nats.url()).await;
        let b = TestGateway::start(&nats.url()).await;
        Self { nats, a, b }
    }

    pub async fn nats_client(&self) -> async_nats::Client {
        async_nats::connect(self.nats.url()).await.expect("NATS connects")
    }
}

/// Publishes like an app backend: core NATS, JSON payload, optional type header.
pub async fn backend_publish(nats: &async_nats::Client, room: &str, data: serde_json::Value) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Herald-Type", "message");
    nats.publish_with_headers(
        format!("herald.room.{room}"),
        headers,
        serde_json::to_vec(&data).unwrap().into(),
    )
    .await
    .expect("published");
    nats.flush().await.expect("flushed");
}
