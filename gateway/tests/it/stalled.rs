//! A WebSocket client that stops reading is dropped after `--write-timeout`, whatever it still
//! sends; a slow but honest reader of a long replay is not taken for an idle one.

use std::time::Duration;

use herald_proto::frame::{ClientOp, ServerFrame};
use herald_testkit::client::{Connect, Incoming};
use herald_testkit::{jwt, wait_until, NatsServer, TestGateway, WsClient};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend_publish;
use crate::slow_consumer::{raw_subscriber, small_window};

const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// A masked, empty Pong: what a client sends to look alive without reading.
const PONG: [u8; 6] = [0x8a, 0x80, 0, 0, 0, 0];

/// Whether the gateway (started with `--max-connections 1`) takes a new connection.
async fn slot_free(url: &str) -> bool {
    let opts = Connect {
        url: url.to_owned(),
        token: Some(jwt::any_room("next")),
        ..Connect::default()
    };
    WsClient::open(opts).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_dropped_after_the_write_timeout_though_it_sends_pongs() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        // The stalled client's slot is how the test sees it go.
        c.max_connections = 1;
        c.write_timeout = WRITE_TIMEOUT;
        // A client silent for 400 ms would be dropped as idle: this one never is, it sends
        // pongs.
        c.ping_interval = Duration::from_millis(200);
        // Far more than is published: the queue never overflows (no 4008).
        c.outbound_buffer_bytes = 16 << 20;
    })
    .await;
    let url = gw.ws_url();

    let mut tcp = raw_subscriber(gw.addr, &jwt::any_room("stalled"), "busy").await;
    // Reads the upgrade, the welcome and the ack; then never again.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&seen).contains(r#""t":"ack""#) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("subscribed");
    assert!(!slot_free(&url).await, "the client holds the only slot");
    let (_unread, mut wr) = tcp.into_split();
    let pongs = tokio::spawn(async move {
        while wr.write_all(&PONG).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // 8 MiB into its room: more than the sockets hold (on loopback, ~3 MiB), less than its
    // queue's bound.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let blob = "x".repeat(64 * 1024);
    for _ in 0..128 {
        backend_publish(&client, "busy", json!({ "blob": blob })).await;
    }
    wait_until(
        Duration::from_secs(10),
        "the gateway to drop the client that stopped reading",
        || slot_free(&url),
    )
    .await;
    pongs.abort();
    assert!(
        gw.metric("herald_gateway_write_timeouts_total{transport=\"websocket\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_long_replay_that_answers_pings_is_not_closed_as_idle() {
    // 8 MiB of history: more than the sockets hold (on loopback, ~3 MiB), so the replay waits
    // for the client to read.
    const EVENTS: u64 = 1000;
    const SLOW: usize = 500;
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        // Idle after 400 ms without a frame from the client.
        c.ping_interval = Duration::from_millis(200);
        // Replay bursts of ~21 KiB, each after the client has read the last.
        c.outbound_buffer_bytes = 64 * 1024;
    })
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let pad = "p".repeat(8 * 1024);
    let mut acks = Vec::new();
    for n in 1..=EVENTS {
        let body = serde_json::to_vec(&json!({ "n": n, "pad": pad })).unwrap();
        acks.push(js.publish("herald.room.backlog", body.into()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }

    // The client reads its first 500 events slowly (2 ms each: the replay waits on it for a
    // second, several idle limits), then at full speed; it answers every ping it reads. (Read
    // slowly to the end, the pings queued behind the last ~3 MiB would reach it later than
    // two of these short intervals.)
    let tcp = small_window(gw.addr).await;
    let opts = Connect {
        token: Some(jwt::any_room("slow")),
        ..Connect::default()
    };
    let mut c = WsClient::open_on(tcp, &gw.addr.to_string(), "/ws".to_owned(), opts)
        .await
        .expect("WebSocket connects");
    assert!(matches!(c.recv().await, ServerFrame::Welcome(_)));
    c.send(ClientOp::Subscribe {
        room: "backlog".into(),
        since: Some(0),
        presence: false,
        token: None,
    })
    .await;
    let mut ns = Vec::new();
    let ack = loop {
        match c.next().await {
            Incoming::Frame(ServerFrame::Event(e)) => {
                ns.push(e.data.as_ref().unwrap()["n"].as_u64().unwrap());
                if ns.len() <= SLOW {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Incoming::Frame(ServerFrame::Ack(a)) => break a,
            other => panic!("after {} events: {other:?}", ns.len()),
        }
    };
    assert_eq!(ns, (1..=EVENTS).collect::<Vec<_>>(), "every event, in order");
    assert_eq!(ack.seq, Some(EVENTS));
    // Still open: the client answers pings and nothing else comes.
    assert_eq!(c.next_within(Duration::from_secs(1)).await, None);
}
