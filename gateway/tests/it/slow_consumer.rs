//! A client that never reads is closed with 4008; everyone else keeps receiving everything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_testkit::{jwt, wait_until, NatsServer, TestGateway, WsClient};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend_publish;

const READERS: usize = 100;
const OUTBOUND: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_closed_with_4008_and_the_others_get_everything() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| c.outbound_buffer_bytes = OUTBOUND).await;
    let token = jwt::any_room("reader");

    // The slow client: a raw socket with a small receive buffer that subscribes, then stops reading.
    let mut slow = raw_subscriber(gw.addr, &token, "firehose").await;

    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut c = WsClient::connect(&gw.ws_url(), &token).await;
        c.subscribe("firehose", None).await;
        readers.push(c);
    }
    let progress: Arc<Vec<AtomicUsize>> = Arc::new((0..READERS).map(|_| AtomicUsize::new(0)).collect());
    let counting = readers
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let progress = Arc::clone(&progress);
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                loop {
                    let e = c.event().await;
                    if e.data.as_ref().unwrap()["last"] == json!(true) {
                        return seqs;
                    }
                    seqs.push(e.seq);
                    progress[i].store(seqs.len(), Ordering::Relaxed);
                }
            })
        })
        .collect::<Vec<_>>();

    // Publish 16 KiB events in batches (each smaller than the bound, so readers that keep
    // up never overflow) until the gateway reports the slow consumer; bounded.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let blob = "x".repeat(16 * 1024);
    let mut published = 0;
    while gw.metric("herald_gateway_slow_consumer_disconnects_total").await < 1.0 {
        assert!(published < 2000, "no slow-consumer close after {published} events");
        for _ in 0..8 {
            backend_publish(&client, "firehose", json!({"blob": blob})).await;
            published += 1;
        }
        let progress = Arc::clone(&progress);
        wait_until(Duration::from_secs(30), "readers to catch up", move || {
            let done = progress.iter().all(|p| p.load(Ordering::Relaxed) >= published);
            async move { done }
        })
        .await;
    }
    backend_publish(&client, "firehose", json!({"last": true})).await;

    for task in counting {
        let seqs = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("reader finishes")
            .unwrap();
        assert_eq!(seqs.len(), published, "a reader missed events");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    }

    // The slow client wakes up: after what the kernel held, the close frame says 4008.
    let mut buf = vec![0u8; 1 << 20];
    let mut tail = Vec::new();
    let read_all = async {
        loop {
            let n = slow.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 64 {
                tail.drain(..tail.len() - 64);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("slow socket ends");
    let close = [0x88u8, 15, 0x0f, 0xa8];
    let pos = tail
        .windows(4)
        .rposition(|w| w == close)
        .expect("a 4008 close frame at the end");
    assert_eq!(&tail[pos + 4..], b"slow consumer");
}

/// A TCP connection to `addr` with a small receive buffer, so that a client that stops reading
/// soon blocks the gateway's writes.
pub async fn small_window(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A [`small_window`] connection that has asked for the WebSocket upgrade with `token` and
/// subscribed to `room` (id 1), and read nothing.
pub async fn raw_subscriber(addr: std::net::SocketAddr, token: &str, room: &str) -> tokio::net::TcpStream {
    let mut tcp = small_window(addr).await;
    let head = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let subscribe = format!(r#"{{"op":"subscribe","id":1,"room":"{room}"}}"#);
    tcp.write_all(&masked_text(subscribe.as_bytes())).await.unwrap();
    tcp
}

/// A masked client text frame (mask key 0, so the payload is unchanged).
pub fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}
