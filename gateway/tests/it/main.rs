//! Gateway integration tests: a real nats-server, gateways on port 0, real WebSocket clients.

mod anonymous;
mod answers;
mod backlog;
mod bad_input;
mod compression;
mod drain;
mod fallback;
mod hostile;
mod idempotent;
mod jwks;
mod limits;
mod lost;
mod namespaces;
mod op_fuzz;
mod partitions;
mod push;
mod resume;
mod room_tokens;
mod rooms;
mod server_api;
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

/// One HTTP/1.1 request with `headers` (each line ending in CRLF) and `body`; the status and
/// the body as JSON (`Null` when it is not JSON).
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let r = herald_testkit::http::request(addr, &raw).await.expect("HTTP answer");
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null),
    )
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
