//! How live room events come from NATS: one wildcard subscription held only while the
//! gateway has rooms, or one subscription per room; either way a client gets exactly its
//! rooms' events.

use std::time::Duration;

use herald_gateway::RoomSubscriptions;
use herald_testkit::{jwt, NatsServer, TestGateway, WsClient};
use serde_json::json;

use crate::backend_publish;

/// The live-event subscriptions NATS holds, sorted.
async fn live_interest(nats: &NatsServer) -> Vec<String> {
    let mut subs: Vec<String> = nats
        .subscriptions()
        .await
        .into_iter()
        .filter(|s| s.starts_with("herald.live.room."))
        .collect();
    subs.sort();
    subs
}

/// Waits (10 s at most) until NATS holds exactly `want`.
async fn wait_interest(nats: &NatsServer, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let have = live_interest(nats).await;
        if have == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "NATS live interest is {have:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rooms_case(mode: RoomSubscriptions, held: &[&str]) {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.room_subscriptions = mode;
        c.room_linger = Duration::from_millis(100);
    })
    .await;
    let backend = async_nats::connect(nats.url()).await.expect("NATS connects");
    wait_interest(&nats, &[]).await;

    let token = jwt::any_room("alice");
    let mut a = WsClient::connect(&gw.ws_url(), &token).await;
    let mut b = WsClient::connect(&gw.ws_url(), &token).await;
    a.subscribe("mine", None).await;
    b.subscribe("yours", None).await;
    wait_interest(&nats, held).await;

    // Events of a room nobody here holds share the stream but reach no one.
    for i in 0..3 {
        backend_publish(&backend, "elsewhere", json!({ "n": i })).await;
    }
    backend_publish(&backend, "mine", json!({ "n": "a" })).await;
    backend_publish(&backend, "yours", json!({ "n": "b" })).await;
    let ev = a.event().await;
    assert_eq!((ev.room.as_str(), ev.seq, ev.prev), ("mine", 4, 0));
    assert_eq!(ev.data, Some(json!({ "n": "a" })));
    let ev = b.event().await;
    assert_eq!((ev.room.as_str(), ev.seq, ev.prev), ("yours", 5, 0));
    assert!(
        a.next_within(Duration::from_millis(300)).await.is_none(),
        "alice got only her room's event"
    );

    // Once every room is gone (after the linger), the gateway holds no interest.
    drop(a);
    drop(b);
    wait_interest(&nats, &[]).await;

    // And a room opened again gets its events (the wildcard subscription comes back).
    let mut c = WsClient::connect(&gw.ws_url(), &token).await;
    let (_, ack) = c.subscribe("mine", None).await;
    assert_eq!(ack.seq, Some(4), "the live tail is the room's last seq");
    backend_publish(&backend, "mine", json!({ "n": "c" })).await;
    let ev = c.event().await;
    assert_eq!((ev.room.as_str(), ev.seq, ev.prev), ("mine", 6, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_interest_is_held_only_while_the_gateway_has_rooms() {
    rooms_case(RoomSubscriptions::Wildcard, &["herald.live.room.>"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_room_interest_follows_each_room() {
    rooms_case(
        RoomSubscriptions::PerRoom,
        &["herald.live.room.mine", "herald.live.room.yours"],
    )
    .await;
}

/// A room past a thousand local subscribers is delivered by a task of its own: its events
/// still reach every subscriber once and in order, and so do a small room's beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_room_and_a_small_room_beside_it_both_get_every_event_in_order() {
    const BIG: usize = 1_001;
    const EVENTS: u64 = 10;
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let backend = async_nats::connect(nats.url()).await.expect("NATS connects");
    let token = jwt::any_room("alice");
    let join = |_| async {
        let mut c = WsClient::connect(&gw.ws_url(), &token).await;
        c.subscribe("big", None).await;
        c
    };
    let mut big = futures_util::future::join_all((0..BIG).map(join)).await;
    let mut small = Vec::new();
    for _ in 0..2 {
        let mut c = WsClient::connect(&gw.ws_url(), &token).await;
        c.subscribe("small", None).await;
        small.push(c);
    }
    for n in 0..EVENTS {
        backend_publish(&backend, "big", json!({ "n": n })).await;
        backend_publish(&backend, "small", json!({ "n": n })).await;
    }
    for (room, clients) in [("small", &mut small), ("big", &mut big)] {
        for (i, c) in clients.iter_mut().enumerate() {
            let mut got = Vec::new();
            for _ in 0..EVENTS {
                let ev = c.event().await;
                assert_eq!(ev.room, room);
                got.push(ev.data.expect("data")["n"].as_u64().expect("n"));
            }
            assert_eq!(got, (0..EVENTS).collect::<Vec<_>>(), "{room}: once each, in order");
            if i < 2 {
                assert!(c.next_within(Duration::from_millis(50)).await.is_none(), "nothing more");
            }
        }
    }
}

/// Publishes through JetStream; returns the event's seq.
async fn stored(js: &async_nats::jetstream::Context, room: &str, n: u64) -> u64 {
    js.publish(
        format!("herald.room.{room}"),
        serde_json::to_vec(&json!({ "n": n })).unwrap().into(),
    )
    .await
    .expect("published")
    .await
    .expect("stored")
    .sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_opened_together_read_their_last_seqs_in_one_batch_and_miss_nothing() {
    const ROOMS: usize = 16;
    let nats = NatsServer::start();
    // Per-room subscriptions (the default) open rooms in batches; the wildcard reads each.
    let gw = TestGateway::start_with(&nats.url(), |c| c.room_subscriptions = RoomSubscriptions::PerRoom).await;
    let backend = async_nats::connect(nats.url()).await.expect("NATS connects");
    let js = async_nats::jetstream::new(backend);
    // Room i has i events stored before anyone subscribes (room 0 none).
    let mut seqs: Vec<Vec<u64>> = vec![Vec::new(); ROOMS];
    for (i, room_seqs) in seqs.iter_mut().enumerate() {
        for n in 0..i as u64 {
            room_seqs.push(stored(&js, &format!("batch-{i}"), n).await);
        }
    }
    let token = jwt::any_room("alice");
    let mut clients = Vec::new();
    for _ in 0..ROOMS {
        clients.push(WsClient::connect(&gw.ws_url(), &token).await);
    }
    let batched = gw
        .metric("herald_gateway_room_last_seq_reads_total{way=\"batch\"}")
        .await;
    // Every client asks at once (the rooms open together), while one more event per room is
    // stored: it lands before or after each room's last seq is read.
    for (i, c) in clients.iter_mut().enumerate() {
        c.op(json!({"op": "subscribe", "room": format!("batch-{i}")})).await;
    }
    for (i, room_seqs) in seqs.iter_mut().enumerate() {
        room_seqs.push(stored(&js, &format!("batch-{i}"), i as u64).await);
    }
    let mut acked = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        // Events may come before the ack only if they are after the room's last seq.
        let mut early = Vec::new();
        let ack = loop {
            match c.recv().await {
                herald_proto::frame::ServerFrame::Ack(a) => break a,
                herald_proto::frame::ServerFrame::Event(e) => early.push(e.seq),
                other => panic!("expected events then ack, got {other:?}"),
            }
        };
        assert_eq!(ack.room.as_deref(), Some(format!("batch-{i}").as_str()));
        let last = ack.seq.expect("ack seq");
        assert!(
            last == seqs[i].last().copied().unwrap_or(0) || Some(&last) == seqs[i].iter().rev().nth(1),
            "room {i}: ack seq {last} is neither of its last two seqs {:?}",
            seqs[i]
        );
        assert!(
            early.is_empty(),
            "room {i}: no live event before the ack, got {early:?}"
        );
        acked.push(last);
    }
    assert!(
        gw.metric("herald_gateway_room_last_seq_reads_total{way=\"batch\"}")
            .await
            >= batched + 4.0,
        "the rooms' last seqs were read in a batch"
    );
    // Two more per room; each client gets exactly what its room stored after its ack, in
    // order, each event's prev the one before it.
    for (i, room_seqs) in seqs.iter_mut().enumerate() {
        for n in 0..2 {
            room_seqs.push(stored(&js, &format!("batch-{i}"), 100 + n).await);
        }
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let want: Vec<u64> = seqs[i].iter().copied().filter(|&s| s > acked[i]).collect();
        let mut got = Vec::new();
        let mut prev = acked[i];
        for _ in 0..want.len() {
            let ev = c.event().await;
            assert_eq!((ev.room.as_str(), ev.prev), (format!("batch-{i}").as_str(), prev));
            prev = ev.seq;
            got.push(ev.seq);
        }
        assert_eq!(got, want, "room {i}");
        assert!(
            c.next_within(Duration::from_millis(50)).await.is_none(),
            "room {i}: nothing more"
        );
    }
}
