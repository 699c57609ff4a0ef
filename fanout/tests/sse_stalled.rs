//! SSE streams with presence: a stream whose client stops reading ends (after
//! `--write-timeout`, or when its token expires) and its member leaves; big rooms' snapshots
//! reach a stream whole, however small its queue.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use herald_proto::frame::{Presence, ServerFrame};
use herald_testkit::client::Incoming;
use herald_testkit::http::Sse;
use herald_testkit::{jwt, wait_until, NatsServer, Process, TestGateway, WsClient};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn fanout(nats: &NatsServer) -> Process {
    let f = Process::fanout(&nats.url(), "f1", &[]);
    f.wait_ready().await;
    wait_until(Duration::from_secs(10), "a leader", || async {
        f.metric("herald_fanout_leader{partition=\"0\"}").await == 1.0
    })
    .await;
    f
}

/// Connects `user` and subscribes to `room` with presence.
async fn member(gw: &TestGateway, user: &str, rooms: &[&str]) -> WsClient {
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room(user)).await;
    for room in rooms {
        c.op(json!({"op": "subscribe", "room": room, "presence": true})).await;
    }
    c
}

/// Reads `c`'s frames (events are skipped) until `user` has joined (`true`) or left.
async fn sees(c: &mut WsClient, user: &str, joined: bool, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_within(left).await {
            Some(Incoming::Frame(ServerFrame::Presence(p))) => {
                let there = if joined { &p.joined } else { &p.left };
                let in_snapshot = joined && p.members.iter().flatten().any(|m| m.user == user);
                if in_snapshot || there.iter().any(|m| m.user == user) {
                    return;
                }
            }
            Some(Incoming::Frame(_)) => {}
            other => panic!(
                "waiting for {user} to {}: {other:?}",
                if joined { "join" } else { "leave" }
            ),
        }
    }
}

/// Opens `path` on a socket with a small receive buffer and reads until its presence
/// snapshot; the caller then stops reading.
async fn stalled_sse(addr: SocketAddr, path: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&seen).contains("event: presence") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the stream's snapshot");
    tcp
}

/// 8 MiB into `room`: more than the sockets hold (on loopback, ~3 MiB), less than the
/// stream's queue bound in these tests.
async fn flood(nats: &NatsServer, room: &str) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let blob = "x".repeat(64 * 1024);
    let body = serde_json::to_vec(&json!({ "blob": blob })).unwrap();
    for _ in 0..128 {
        client
            .publish(format!("herald.room.{room}"), body.clone().into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_that_stops_reading_ends_after_the_write_timeout_and_leaves() {
    let nats = NatsServer::start();
    let _f = fanout(&nats).await;
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.presence_heartbeat = Duration::from_millis(200);
        c.write_timeout = Duration::from_millis(500);
        c.outbound_buffer_bytes = 16 << 20;
        // Writes keep coming after the flood.
        c.sse_keepalive = Duration::from_millis(100);
    })
    .await;
    let mut alice = member(&gw, "alice", &["lobby"]).await;
    sees(&mut alice, "alice", true, Duration::from_secs(5)).await;

    let token = jwt::any_room("bob");
    let path = format!("/sse?rooms=lobby,flood&presence=lobby&token={token}");
    let _unread = stalled_sse(gw.addr, &path).await;
    sees(&mut alice, "bob", true, Duration::from_secs(5)).await;
    flood(&nats, "flood").await;
    // The write timeout, then fanout's leave delay (1 s).
    sees(&mut alice, "bob", false, Duration::from_secs(5)).await;
    assert!(gw.metric("herald_gateway_write_timeouts_total{").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_blocked_on_its_client_ends_when_its_token_expires() {
    let nats = NatsServer::start();
    let _f = fanout(&nats).await;
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.presence_heartbeat = Duration::from_millis(200);
        c.outbound_buffer_bytes = 16 << 20;
        c.sse_keepalive = Duration::from_millis(100);
    })
    .await;
    let mut alice = member(&gw, "alice", &["lobby"]).await;
    sees(&mut alice, "alice", true, Duration::from_secs(5)).await;

    // Valid for 2-3 s (`exp` is in whole seconds).
    let token = jwt::token("bob", 3, &["*"], &["*"]);
    let path = format!("/sse?rooms=lobby,flood&presence=lobby&token={token}");
    let _unread = stalled_sse(gw.addr, &path).await;
    sees(&mut alice, "bob", true, Duration::from_secs(5)).await;
    flood(&nats, "flood").await;
    // The expiry, then fanout's leave delay (1 s); the write timeout (30 s) is far off.
    sees(&mut alice, "bob", false, Duration::from_secs(6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_rooms_snapshots_reach_an_sse_stream_with_a_small_queue_whole() {
    const MEMBERS: usize = 80;
    const ROOMS: [&str; 3] = ["big0", "big1", "big2"];
    let nats = NatsServer::start();
    let f = fanout(&nats).await;
    let members_gw = TestGateway::start_with(&nats.url(), |c| {
        c.presence_heartbeat = Duration::from_millis(200);
    })
    .await;
    // Each snapshot (80 members with 64-character ids and names, ~15 KiB) nearly fills this
    // stream's queue alone.
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.presence_heartbeat = Duration::from_millis(200);
        c.outbound_buffer_bytes = 16 * 1024;
    })
    .await;
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("{i:02}{}", "m".repeat(62))).collect();
    let joining = users.iter().map(|u| member(&members_gw, u, &ROOMS));
    let _members = futures_util::future::join_all(joining).await;
    wait_until(Duration::from_secs(10), "every member in fanout", || async {
        f.metric("herald_fanout_presence_members").await == (MEMBERS * ROOMS.len()) as f64
    })
    .await;

    let token = jwt::any_room("watcher");
    let path = format!("/sse?rooms={}&presence=1&token={token}", ROOMS.join(","));
    let mut sse = Sse::open(gw.addr, &path, &[]).await.unwrap();
    assert_eq!(sse.status, 200);
    let want: BTreeSet<&str> = users.iter().map(String::as_str).collect();
    for room in ROOMS {
        let ev = sse.next_event(Duration::from_secs(5)).await.expect("a snapshot");
        assert_eq!(ev.event.as_deref(), Some("presence"), "{ev:?}");
        let p: Presence = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(p.room, room);
        let got: BTreeSet<&str> = p.members.iter().flatten().map(|m| m.user.as_str()).collect();
        assert!(got.is_superset(&want), "{room}: {} of {MEMBERS} members", got.len());
    }
    // The stream is open and live.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let body = serde_json::to_vec(&json!({ "after": "snapshots" })).unwrap();
    client.publish("herald.room.big0", body.into()).await.unwrap();
    client.flush().await.unwrap();
    loop {
        let ev = sse
            .next_event(Duration::from_secs(5))
            .await
            .expect("the stream stays open");
        if ev.event.is_none() {
            let frame: Value = serde_json::from_str(&ev.data).unwrap();
            assert_eq!(frame["data"], json!({ "after": "snapshots" }));
            break;
        }
        assert_eq!(ev.event.as_deref(), Some("presence"), "{ev:?}");
    }
}
