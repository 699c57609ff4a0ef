//! The event stream in partitions (`--stream-partitions 4` on a server mapping rooms with
//! `partition(4,1)`): each room is stored in the stream the gateway computes, and history,
//! resume with `since` on another gateway, gap repair and idempotent repeats work from it. A
//! gateway whose count the server does not map stays not ready and says why.

use std::time::Duration;

use async_nats::jetstream;
use herald_proto::frame::{Id, ServerFrame};
use herald_proto::subject::partition;
use herald_testkit::{jwt, wait_until, NatsServer, TestGateway, WsClient};
use serde_json::json;

use crate::backend_publish;

const PARTITIONS: u32 = 4;

/// One room per partition: nats-server's partition(4,1) of "a", "b", "c", "d" is 0, 1, 2, 3.
const ROOMS: [&str; 4] = ["a", "b", "c", "d"];

async fn gateway(nats: &NatsServer, partitions: u32) -> TestGateway {
    TestGateway::start_with(&nats.url(), |c| c.stream_partitions = partitions).await
}

/// How many events stream `name` holds.
async fn stored(js: &jetstream::Context, name: &str) -> u64 {
    let mut stream = js
        .get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"));
    stream.info().await.expect("stream info").state.messages
}

/// Waits until stream `name` holds `n` events.
async fn wait_stored(js: &jetstream::Context, name: &str, n: u64) {
    wait_until(Duration::from_secs(10), &format!("{name} holds {n} events"), || async {
        stored(js, name).await == n
    })
    .await;
}

/// The `n` of each event.
fn ns(events: &[herald_proto::frame::Event]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.data.as_ref().and_then(|d| d["n"].as_u64()).expect("n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_stored_in_their_partitions_and_replayed_and_resumed_from_them() {
    let nats = NatsServer::partitioned(PARTITIONS);
    let a = gateway(&nats, PARTITIONS).await;
    let b = gateway(&nats, PARTITIONS).await;
    let client = async_nats::connect(nats.url()).await.expect("NATS connects");
    let js = jetstream::new(client.clone());
    assert_eq!(ROOMS.map(|r| partition(r, PARTITIONS)), [0, 1, 2, 3]);

    for room in ROOMS {
        for n in 0..3 {
            backend_publish(&client, room, json!({"n": n})).await;
        }
    }
    // The server stored each room where the gateway's hash says, under its partition's
    // subject; the single stream does not exist.
    for (i, room) in ROOMS.iter().enumerate() {
        let name = format!("HERALD_ROOMS_{i}");
        wait_stored(&js, &name, 3).await;
        let stream = js.get_stream(&name).await.unwrap();
        let last = stream
            .direct_get_last_for_subject(format!("herald.part.{i}.{room}"))
            .await
            .unwrap_or_else(|e| panic!("{room} in {name}: {e}"));
        assert_eq!(last.sequence, 3, "{room}: each partition numbers its own events");
        // What the server keeps is what the gateway asks for (so a later start finds the
        // stream usable and leaves it alone): the transform destination back to the live room.
        let config = js.get_stream(&name).await.unwrap().info().await.unwrap().config.clone();
        let republish = config.republish.expect("RePublish");
        assert_eq!(
            (republish.source.as_str(), republish.destination.as_str()),
            (
                format!("herald.part.{i}.*").as_str(),
                "herald.live.room.{{wildcard(1)}}"
            )
        );
        assert_eq!(config.subjects, [format!("herald.part.{i}.*")]);
    }
    assert!(js.get_stream("HERALD_ROOMS").await.is_err(), "no single stream");

    for room in ROOMS {
        // History, on one gateway: every event in order, each `prev` the one before.
        let mut c = WsClient::connect(&a.ws_url(), &jwt::any_room("alice")).await;
        let (events, ack) = c.subscribe(room, Some(0)).await;
        assert_eq!(ns(&events), [0, 1, 2], "{room}");
        let chain: Vec<(u64, u64)> = events.iter().map(|e| (e.seq, e.prev)).collect();
        assert_eq!(chain, [(1, 0), (2, 1), (3, 2)], "{room}");
        assert_eq!(ack.recovered, Some(true));

        // Resume on the other gateway from the first event: the rest, then live events.
        let mut r = WsClient::connect(&b.ws_url(), &jwt::any_room("bob")).await;
        let (events, ack) = r.subscribe(room, Some(1)).await;
        assert_eq!(ns(&events), [1, 2], "{room}");
        assert_eq!(ack.recovered, Some(true));
        backend_publish(&client, room, json!({"n": 3})).await;
        for sub in [&mut c, &mut r] {
            let live = sub.event().await;
            assert_eq!((live.seq, live.prev, ns(std::slice::from_ref(&live))), (4, 3, vec![3]));
        }

        // A `since` beyond the partition's end: the stream was reset.
        let mut z = WsClient::connect(&b.ws_url(), &jwt::any_room("zed")).await;
        let (events, ack) = z.subscribe(room, Some(99)).await;
        assert!(events.is_empty());
        assert_eq!(ack.recovered, Some(false), "{room}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_live_copy_never_came_is_repaired_from_its_partition() {
    let nats = NatsServer::partitioned(PARTITIONS);
    let gw = gateway(&nats, PARTITIONS).await;
    let client = async_nats::connect(nats.url()).await.expect("NATS connects");
    let js = jetstream::new(client.clone());
    let room = "c";
    let name = format!("HERALD_ROOMS_{}", partition(room, PARTITIONS));
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room("alice")).await;
    c.subscribe(room, None).await;
    backend_publish(&client, room, json!({"n": 0})).await;
    assert_eq!(c.event().await.seq, 1);

    // The partition republishes elsewhere for a moment: event 1 is stored, never seen live.
    let mut stream = js.get_stream(&name).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    let mut hidden = config.clone();
    hidden.republish.as_mut().expect("RePublish").destination = "herald.hidden.{{wildcard(1)}}".into();
    js.update_stream(hidden).await.expect("RePublish moved");
    backend_publish(&client, room, json!({"n": 1})).await;
    wait_stored(&js, &name, 2).await;
    js.update_stream(config).await.expect("RePublish restored");
    backend_publish(&client, room, json!({"n": 2})).await;

    let got = [c.event().await, c.event().await];
    let chain: Vec<(u64, u64)> = got.iter().map(|e| (e.seq, e.prev)).collect();
    assert_eq!(chain, [(2, 1), (3, 2)]);
    assert_eq!(ns(&got), [1, 2]);
}

/// The next frame answering request `id` (events in between are skipped).
async fn answer(c: &mut WsClient, id: u64) -> herald_proto::frame::Ack {
    loop {
        match c.recv().await {
            ServerFrame::Ack(a) if a.id == Some(Id::Num(id)) => return a,
            ServerFrame::Error(e) if e.id == Some(Id::Num(id)) => panic!("refused: {e:?}"),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_repeat_on_another_gateway_is_acked_as_a_repeat_and_stored_once() {
    let nats = NatsServer::partitioned(PARTITIONS);
    let a = gateway(&nats, PARTITIONS).await;
    let b = gateway(&nats, PARTITIONS).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    for room in ROOMS {
        let name = format!("HERALD_ROOMS_{}", partition(room, PARTITIONS));
        let op = json!({"op": "publish", "id": 1, "room": room, "data": {"n": 0}, "key": "k-1"});
        let mut first = WsClient::connect(&a.ws_url(), &jwt::any_room("ann")).await;
        first.op(op.clone()).await;
        let first_ack = answer(&mut first, 1).await;
        assert_eq!((first_ack.seq, first_ack.repeat), (Some(1), None), "{room}");

        let mut again = WsClient::connect(&b.ws_url(), &jwt::any_room("ann")).await;
        again.op(op).await;
        let repeat = answer(&mut again, 1).await;
        assert_eq!((repeat.seq, repeat.repeat), (Some(1), Some(true)), "{room}");
        assert_eq!(stored(&js, &name).await, 1, "{room} stored once");

        let mut s = js.get_stream(&name).await.unwrap();
        let window = s.info().await.unwrap().config.duplicate_window;
        assert_eq!(window, Duration::from_secs(120), "each partition's duplicate window");
    }
}

/// `/readyz`'s status and body.
async fn readyz(gw: &TestGateway) -> (u16, String) {
    herald_testkit::http::get(gw.admin, "/readyz")
        .await
        .map(|r| (r.status, r.body))
        .unwrap_or((0, String::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_partition_count_the_server_does_not_map_is_not_ready() {
    // (the server's count, the gateway's)
    for (mapped, flag) in [(1, 4), (2, 4), (8, 4), (4, 1)] {
        let nats = NatsServer::partitioned(mapped);
        let gw = TestGateway::serve_with(&nats.url(), |c| c.stream_partitions = flag).await;
        let why = format!("not ready: {}\n", herald_service::stream::NOT_MAPPED);
        let what = format!("server {mapped}, gateway {flag}: not ready for the mapping");
        wait_until(Duration::from_secs(20), &what, || async {
            readyz(&gw).await == (503, why.clone())
        })
        .await;

        // Nothing was stored by the check.
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        for i in 0..flag {
            let name = if flag == 1 {
                "HERALD_ROOMS".to_owned()
            } else {
                format!("HERALD_ROOMS_{i}")
            };
            assert_eq!(stored(&js, &name).await, 0, "{what}: {name}");
        }
    }
    // The same count on both sides is ready.
    let nats = NatsServer::partitioned(PARTITIONS);
    let gw = gateway(&nats, PARTITIONS).await;
    assert_eq!(readyz(&gw).await, (200, "ready\n".to_owned()));
}
