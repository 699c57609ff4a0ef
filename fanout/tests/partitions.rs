//! The event stream in 4 partitions on a 3-node JetStream cluster (R3 streams): a backend
//! publishes steadily to one room per partition while each partition's stream leader steps
//! down in turn, twice; every subscriber on both gateways gets every event of its room once, in
//! order. And a fanout whose partition count the server does not map stays not ready.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use herald_proto::frame::ServerFrame;
use herald_proto::subject::partition;
use herald_testkit::client::Incoming;
use herald_testkit::{jwt, wait_until, NatsServer, Process, WsClient};
use serde_json::json;
use tokio::sync::watch;

const PARTITIONS: u32 = 4;

/// One room per partition: nats-server's partition(4,1) of "a", "b", "c", "d" is 0, 1, 2, 3.
const ROOMS: [&str; 4] = ["a", "b", "c", "d"];

/// What one subscriber received: `(seq, prev, n)` per event, and how often it resumed.
#[derive(Default)]
struct Received {
    events: Vec<(u64, u64, u64)>,
    resumes: u32,
}

/// Holds a WebSocket subscription to `room` on `url`; resumes with `since` if the gateway
/// closes it, as herald.js does.
async fn subscriber(url: String, room: &'static str, got: Arc<Mutex<Received>>, ready: watch::Sender<bool>) {
    let token = jwt::any_room("reader");
    let mut last: Option<u64> = None;
    loop {
        let mut c = WsClient::connect(&url, &token).await;
        let mut op = json!({"op": "subscribe", "id": 1, "room": room});
        if let Some(since) = last {
            op["since"] = since.into();
        }
        c.op(op).await;
        loop {
            match c.next_within(Duration::from_secs(60)).await {
                Some(Incoming::Frame(ServerFrame::Event(e))) => {
                    let n = e.data.as_ref().and_then(|d| d["n"].as_u64()).expect("n in every event");
                    last = Some(e.seq);
                    got.lock().unwrap().events.push((e.seq, e.prev, n));
                }
                Some(Incoming::Frame(ServerFrame::Ack(a))) => {
                    assert_ne!(a.recovered, Some(false), "{room}: resumed without loss");
                    ready.send_replace(true);
                }
                Some(Incoming::Closed(_) | Incoming::Eof) => break,
                other => panic!("{room}: unexpected {other:?}"),
            }
        }
        got.lock().unwrap().resumes += 1;
    }
}

/// Stream `name`'s leader and whether every replica is current.
async fn leader(js: &jetstream::Context, name: &str) -> Option<(String, bool)> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), js.get_stream(name))
        .await
        .ok()?
        .ok()?;
    let info = tokio::time::timeout(Duration::from_secs(2), s.info())
        .await
        .ok()?
        .ok()?;
    let cluster = info.cluster.as_ref()?;
    let current = cluster.replicas.len() == 2 && cluster.replicas.iter().all(|r| r.current);
    Some((cluster.leader.clone()?, current))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partition_s_leader_stepping_down_loses_no_event() {
    assert_eq!(ROOMS.map(|r| partition(r, PARTITIONS)), [0, 1, 2, 3]);
    let nodes = NatsServer::cluster_partitioned(3, PARTITIONS).await;
    let urls = nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",");
    let flags = ["--stream-replicas", "3", "--stream-partitions", "4"];
    let fanout = Process::fanout(&urls, "f1", &flags);
    fanout.wait_ready().await;
    let gateways = [
        Process::gateway(&urls, "g1", &flags).await,
        Process::gateway(&urls, "g2", &flags).await,
    ];
    let backend = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nodes.iter().map(NatsServer::url).collect::<Vec<_>>().as_slice())
        .await
        .expect("the backend connects");
    let js = jetstream::new(backend.clone());
    let streams: Vec<String> = (0..PARTITIONS).map(|i| format!("HERALD_ROOMS_{i}")).collect();
    for name in &streams {
        wait_until(
            Duration::from_secs(60),
            &format!("{name} has a leader and current replicas"),
            || async { leader(&js, name).await.is_some_and(|(_, current)| current) },
        )
        .await;
    }

    // One subscriber per room on each gateway, subscribed before anything is published.
    let mut received = Vec::new();
    let mut subs = Vec::new();
    for g in &gateways {
        for room in ROOMS {
            let got: Arc<Mutex<Received>> = Arc::default();
            let (ready_tx, mut ready) = watch::channel(false);
            subs.push(tokio::spawn(subscriber(g.ws_url(), room, Arc::clone(&got), ready_tx)));
            tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
                .await
                .expect("subscribed within 10 s")
                .expect("the subscriber runs");
            received.push((room, got));
        }
    }

    let (stop_tx, stop) = watch::channel(false);
    let acked: Vec<Arc<Mutex<Vec<u64>>>> = ROOMS.iter().map(|_| Arc::default()).collect();
    let publishers: Vec<_> = ROOMS
        .iter()
        .zip(&acked)
        .map(|(room, acked)| tokio::spawn(common::publisher(js.clone(), room, Arc::clone(acked), stop.clone())))
        .collect();
    let total = || acked.iter().map(|a| a.lock().unwrap().len()).sum::<usize>();

    // Two rounds: every partition's leader steps down twice.
    for name in streams.iter().chain(&streams) {
        let before = total();
        wait_until(Duration::from_secs(20), "events flow before the step-down", || async {
            total() >= before + 40
        })
        .await;
        let (old, _) = leader(&js, name).await.expect("a leader");
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            backend.request(format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}"), "".into()),
        )
        .await
        .expect("step-down answered within 5 s")
        .expect("step-down answered");
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["success"], json!(true), "{name}: {reply}");
        wait_until(
            Duration::from_secs(30),
            &format!("{name} has another leader"),
            || async { leader(&js, name).await.is_some_and(|(l, current)| l != old && current) },
        )
        .await;
        let at = total();
        wait_until(Duration::from_secs(30), "publishes are acked again", || async {
            total() >= at + 40
        })
        .await;
    }

    stop_tx.send(true).expect("the publishers run");
    let mut published = Vec::new();
    for p in publishers {
        published.push(p.await.expect("a publisher ends"));
    }
    for (i, (room, got)) in received.iter().enumerate() {
        let r = ROOMS.iter().position(|x| x == room).unwrap();
        let acked = acked[r].lock().unwrap().clone();
        assert_eq!(acked.len() as u64, published[r], "{room}");
        let last = *acked.last().expect("events were published");
        let what = format!("subscriber {i} ({room}) gets every stored event");
        wait_until(Duration::from_secs(30), &what, || async {
            got.lock().unwrap().events.last().is_some_and(|e| e.0 >= last)
        })
        .await;
        let got = got.lock().unwrap();
        let ns: Vec<u64> = got.events.iter().map(|e| e.2).collect();
        assert_eq!(ns, (0..published[r]).collect::<Vec<_>>(), "{what}: once, in order");
        let seqs: Vec<u64> = got.events.iter().map(|e| e.0).collect();
        assert_eq!(seqs, acked, "{what}: the stored seqs, as acked");
        for w in got.events.windows(2) {
            assert_eq!(w[1].1, w[0].0, "{what}: each event's prev is the one before it");
        }
        eprintln!(
            "subscriber {i} ({room}): {} events, {} resumes",
            got.events.len(),
            got.resumes
        );
    }
    for g in &gateways {
        let repaired = g.metric("herald_gateway_gap_events_repaired_total").await;
        eprintln!("gateway: {repaired} events repaired from the stream");
    }
    for s in subs {
        s.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_whose_partition_count_the_server_does_not_map_is_not_ready() {
    let nats = NatsServer::start();
    let fanout = Process::fanout(&nats.url(), "f1", &["--stream-partitions", "4"]);
    let why = format!("not ready: {}\n", herald_service::stream::NOT_MAPPED);
    wait_until(Duration::from_secs(20), "fanout not ready for the mapping", || async {
        herald_testkit::http::get(fanout.admin, "/readyz")
            .await
            .is_ok_and(|r| r.status == 503 && r.body == why)
    })
    .await;
}
