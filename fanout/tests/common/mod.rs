//! Helpers shared by the fanout test binaries that use them (`mod common;`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use tokio::sync::watch;

/// Publishes `{"n": 0..}` to `room` through JetStream every 20 ms until `stop`, retrying each
/// event with the same Nats-Msg-Id until it is acked; the acked seqs, and how many it sent.
pub async fn publisher(
    js: jetstream::Context,
    room: &'static str,
    acked: Arc<Mutex<Vec<u64>>>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let subject = format!("herald.room.{room}");
    for n in 0u64.. {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{room}-{n}").as_str());
        let body = json!({ "n": n }).to_string();
        loop {
            let attempt = async {
                let ack = js
                    .publish_with_headers(subject.clone(), headers.clone(), body.clone().into())
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(ack.await?)
            };
            match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                Ok(Ok(ack)) => {
                    acked.lock().unwrap().push(ack.sequence);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.changed() => return n + 1,
        }
    }
    unreachable!()
}
