//! Catch-ups and poll answers are bounded, however much history a client asks for, and a
//! cursor beyond what the stream holds (recreated or purged) is reported, not silently stuck.

use std::net::SocketAddr;
use std::time::Duration;

use herald_proto::frame::ServerFrame;
use herald_testkit::client::Incoming;
use herald_testkit::http::{self, Sse};
use herald_testkit::{jwt, NatsServer, Process, TestGateway, WsClient};
use serde_json::{json, Value};

async fn get(addr: SocketAddr, path: &str, token: &str) -> (u16, Value, usize) {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    let r = http::request(addr, &raw).await.expect("HTTP answer");
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
        r.body.len(),
    )
}

/// Stores `n` events in `room` through JetStream (acked), each `{"n": i, "pad": "..."}`.
async fn store(nats: &async_nats::Client, room: &str, n: usize, pad: usize) -> Vec<u64> {
    let js = async_nats::jetstream::new(nats.clone());
    let mut acks = Vec::new();
    for i in 0..n {
        let body = serde_json::to_vec(&json!({"n": i, "pad": "p".repeat(pad)})).unwrap();
        acks.push(js.publish(format!("herald.room.{room}"), body.into()).await.unwrap());
    }
    let mut seqs = Vec::new();
    for ack in acks {
        seqs.push(ack.await.unwrap().sequence);
    }
    seqs
}

fn ns(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_answers_are_capped_and_concurrent_full_history_polls_stay_small() {
    let nats = NatsServer::start();
    let gw = Process::gateway(
        &nats.url(),
        "gw-backlog",
        &["--replay-max-events", "1000", "--replay-max-bytes", "1048576"],
    )
    .await;
    let addr = gw.addr.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    store(&client, "big", 300, 60 * 1024).await;
    let before = gw.rss_bytes();

    // 20 clients poll the whole history at once, each following `more` to the end.
    let mut polls = Vec::new();
    for i in 0..20 {
        let token = jwt::any_room(&format!("poller{i}"));
        polls.push(tokio::spawn(async move {
            let mut cursor = "big:0".to_owned();
            let mut got = Vec::new();
            let mut answers = 0;
            loop {
                let (status, page, len) = get(addr, &format!("/poll?rooms=big&cursor={cursor}"), &token).await;
                assert_eq!(status, 200);
                answers += 1;
                let events = page["events"].as_array().unwrap().clone();
                assert!(events.len() <= 1000);
                assert!(len <= (1 << 20) + 64 * 1024, "an answer of {len} bytes passes the cap");
                got.extend(ns(&events));
                cursor = page["cursor"].as_str().unwrap().to_owned();
                if page["more"] != json!(true) {
                    break;
                }
            }
            (got, answers)
        }));
    }
    let mut peak = before;
    for p in polls {
        let (got, answers) = p.await.unwrap();
        assert_eq!(got, (0..300).collect::<Vec<u64>>(), "every event once, in order");
        assert!(
            answers >= 18,
            "300 × 60 KiB needs at least 18 answers of 1 MiB, got {answers}"
        );
        peak = peak.max(gw.rss_bytes());
    }
    let growth = peak.saturating_sub(before);
    // Unbounded, 20 answers of the whole 18 MiB history would hold about 360 MiB.
    assert!(growth < 120 << 20, "gateway RSS grew {} MiB", growth >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_outbound_bound_arrives_whole_over_sse_and_websocket() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.outbound_buffer_bytes = 64 * 1024;
        c.replay_max_events = 100;
        c.history_size = 5000;
    })
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let seqs = store(&client, "deep", 2000, 200).await;
    let token = jwt::any_room("reader");

    let mut sse = Sse::open(gw.addr, &format!("/sse?rooms=deep&cursor=deep:0&token={token}"), &[])
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2000 {
        let Some(ev) = sse.next_event(Duration::from_secs(10)).await else {
            panic!("SSE stopped after {} events", got.len())
        };
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(ev.id.as_deref(), Some(format!("deep:{}", v["seq"]).as_str()));
        got.push(v["data"]["n"].as_u64().unwrap());
    }
    assert_eq!(got, (0..2000).collect::<Vec<u64>>());

    let mut ws = WsClient::connect(&gw.ws_url(), &token).await;
    let (events, ack) = ws.subscribe("deep", Some(0)).await;
    assert_eq!(events.len(), 2000);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    assert_eq!((ack.seq, ack.recovered), (Some(seqs[1999]), Some(true)));
    // Live events follow without a gap.
    let next = store(&client, "deep", 1, 10).await;
    let ev = ws.event().await;
    assert_eq!((ev.seq, ev.prev), (next[0], seqs[1999]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_the_stream_is_reported_and_new_events_still_arrive() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let token = jwt::any_room("resumer");
    let old = store(&client, "reset", 3, 1).await;
    let mut last = old[2];

    for since in [last + 1000, u64::MAX] {
        // WebSocket: recovered:false at the room's last seq, then every new event.
        let mut ws = WsClient::connect(&gw.ws_url(), &token).await;
        let (events, ack) = ws.subscribe("reset", Some(since)).await;
        assert!(events.is_empty());
        assert_eq!((ack.seq, ack.recovered), (Some(last), Some(false)), "since {since}");

        // Poll: `unrecovered` and the cursor moved to the room's last seq.
        let (status, page, _) = get(gw.addr, &format!("/poll?rooms=reset&cursor=reset:{since}"), &token).await;
        assert_eq!(status, 200);
        assert_eq!(page["unrecovered"], json!(["reset"]));
        assert_eq!(page["cursor"], json!(format!("reset:{last}")));

        // SSE: an `unrecovered` event first.
        let path = format!("/sse?rooms=reset&cursor=reset:{since}&token={token}");
        let mut sse = Sse::open(gw.addr, &path, &[]).await.unwrap();
        let ev = sse.next_event(Duration::from_secs(10)).await.expect("unrecovered");
        assert_eq!(ev.event.as_deref(), Some("unrecovered"));
        assert_eq!(
            serde_json::from_str::<Value>(&ev.data).unwrap()["rooms"],
            json!(["reset"])
        );

        let new = store(&client, "reset", 1, 1).await[0];
        let live = ws.event().await;
        assert_eq!(live.seq, new);
        let ev = sse.next_event(Duration::from_secs(10)).await.expect("the new event");
        assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap()["seq"], json!(new));
        let cursor = page["cursor"].as_str().unwrap();
        let (_, page, _) = get(gw.addr, &format!("/poll?rooms=reset&cursor={cursor}"), &token).await;
        assert_eq!(page["events"][0]["seq"], json!(new));
        assert!(page.get("unrecovered").is_none());
        ws.op(json!({"op": "unsubscribe", "id": 5, "room": "reset"})).await;
        while !matches!(ws.next().await, Incoming::Frame(ServerFrame::Ack(_))) {}
        last = new;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_many_rooms_the_sse_cursor_is_sent_once_per_chunk_not_per_event() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| c.replay_max_events = 10).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let seqs = store(&client, "r0", 50, 10).await;
    let token = jwt::any_room("reader");
    let rooms: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let path = format!("/sse?rooms={}&cursor=r0:0&token={token}", rooms.join(","));
    let mut sse = Sse::open(gw.addr, &path, &[]).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..50 {
        let ev = sse.next_event(Duration::from_secs(10)).await.expect("an event");
        ids.extend(ev.id);
    }
    assert_eq!(ids.len(), 5, "one id per chunk of 10: {ids:?}");
    let last = ids.last().unwrap();
    assert!(last.starts_with(&format!("r0:{},", seqs[49])), "{last}");
    assert_eq!(last.split(',').count(), 10, "the id names every room");
}
