//! A 3-node JetStream cluster on loopback: gateways and fanouts given all three URLs, each
//! node killed with SIGKILL in turn while a backend publishes with `Nats-Msg-Id`; every
//! subscriber on both gateways gets every stored event exactly once, in order, presence
//! stays right and `/readyz` comes back.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use herald_proto::frame::ServerFrame;
use herald_testkit::client::Incoming;
use herald_testkit::{jwt, wait_until, NatsServer, Process, WsClient};
use serde_json::json;
use tokio::sync::watch;

const ROOM: &str = "cluster";

/// What one subscriber received: `(seq, prev, n)` per event, and how often it resumed.
#[derive(Default)]
struct Received {
    events: Vec<(u64, u64, u64)>,
    resumes: u32,
}

/// Holds a WebSocket subscription to [`ROOM`] with presence on `url` as `user`; resumes
/// with `since` if the gateway closes it, as herald.js does.
async fn subscriber(url: String, user: &'static str, got: Arc<Mutex<Received>>) {
    let token = jwt::any_room(user);
    let mut last: Option<u64> = None;
    loop {
        let mut c = WsClient::connect(&url, &token).await;
        let mut op = json!({"op": "subscribe", "id": 1, "room": ROOM, "presence": true});
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
                    assert_ne!(a.recovered, Some(false), "{user}: resumed without loss");
                }
                Some(Incoming::Frame(ServerFrame::Presence(_))) => {}
                Some(Incoming::Closed(_) | Incoming::Eof) => break,
                other => panic!("{user}: unexpected {other:?}"),
            }
        }
        got.lock().unwrap().resumes += 1;
    }
}

/// The members of [`ROOM`] as a fresh client of `url` is told.
async fn members(url: &str) -> Option<Vec<String>> {
    let mut c = WsClient::connect(url, &jwt::any_room("probe")).await;
    c.op(json!({"op": "presence", "room": ROOM, "id": "p"})).await;
    loop {
        match c.next_within(Duration::from_secs(5)).await? {
            Incoming::Frame(ServerFrame::Presence(p)) if p.id.is_some() => {
                return Some(p.members.unwrap_or_default().into_iter().map(|m| m.user).collect());
            }
            Incoming::Frame(ServerFrame::Error(_)) | Incoming::Closed(_) | Incoming::Eof => return None,
            Incoming::Frame(_) => {}
        }
    }
}

/// Waits until every stream of the cluster has a leader and every replica is current.
async fn replicas_current(js: &jetstream::Context) {
    wait_until(Duration::from_secs(60), "every stream's replicas current", || async {
        let Ok(names) = tokio::time::timeout(Duration::from_secs(2), async {
            use futures_util::StreamExt;
            js.stream_names().collect::<Vec<_>>().await
        })
        .await
        else {
            return false;
        };
        let mut all = !names.is_empty();
        for name in names {
            let Ok(name) = name else { return false };
            let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), js.get_stream(&name)).await else {
                return false;
            };
            let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), s.info()).await else {
                return false;
            };
            all &= info.config.num_replicas == 3
                && info.cluster.as_ref().is_some_and(|c| {
                    c.leader.is_some() && c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current)
                });
        }
        all
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_in_turn_loses_no_event_and_no_member() {
    let mut nodes = NatsServer::cluster(3).await;
    let urls = nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",");
    let replicas = ["--stream-replicas", "3"];
    let fanouts = [
        Process::fanout(&urls, "f1", &replicas),
        Process::fanout(&urls, "f2", &replicas),
    ];
    for f in &fanouts {
        f.wait_ready().await;
    }
    let heartbeat = ["--stream-replicas", "3", "--presence-heartbeat", "200ms"];
    let gateways = [
        Process::gateway(&urls, "g1", &heartbeat).await,
        Process::gateway(&urls, "g2", &heartbeat).await,
    ];

    let backend = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nodes.iter().map(NatsServer::url).collect::<Vec<_>>().as_slice())
        .await
        .expect("the backend connects");
    let js = jetstream::new(backend);
    replicas_current(&js).await;

    let (stop_tx, stop) = watch::channel(false);
    let received = [
        Arc::new(Mutex::new(Received::default())),
        Arc::new(Mutex::new(Received::default())),
    ];
    let subs: Vec<_> = gateways
        .iter()
        .zip(["alice", "bob"])
        .zip(&received)
        .map(|((g, user), got)| tokio::spawn(subscriber(g.ws_url(), user, Arc::clone(got))))
        .collect();
    for g in &gateways {
        wait_until(Duration::from_secs(20), "alice and bob are members", || async {
            members(&g.ws_url()).await == Some(vec!["alice".into(), "bob".into()])
        })
        .await;
    }

    // The backend publishes through JetStream, retrying each event with the same
    // Nats-Msg-Id until it is acked, so a retry after a lost ack is not stored twice.
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let publisher = tokio::spawn(common::publisher(js.clone(), ROOM, Arc::clone(&acked), stop.clone()));

    for node in &mut nodes {
        let before = acked.lock().unwrap().len();
        wait_until(Duration::from_secs(20), "events flow before the kill", || async {
            acked.lock().unwrap().len() >= before + 20
        })
        .await;
        node.kill();
        let at_kill = acked.lock().unwrap().len();
        wait_until(Duration::from_secs(60), "publishes are acked again", || async {
            acked.lock().unwrap().len() >= at_kill + 20
        })
        .await;
        for g in &gateways {
            g.wait_ready().await;
            wait_until(
                Duration::from_secs(30),
                "alice and bob are still the members",
                || async { members(&g.ws_url()).await == Some(vec!["alice".into(), "bob".into()]) },
            )
            .await;
        }
        node.restart();
        node.wait_jetstream_leader().await;
        replicas_current(&js).await;
    }

    stop_tx.send(true).expect("the publisher runs");
    let published = publisher.await.expect("the publisher ends");
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, published);
    let last = *acked.last().expect("events were published");
    for (got, user) in received.iter().zip(["alice", "bob"]) {
        wait_until(Duration::from_secs(30), "every stored event arrives", || async {
            got.lock().unwrap().events.last().is_some_and(|e| e.0 >= last)
        })
        .await;
        let got = got.lock().unwrap();
        let ns: Vec<u64> = got.events.iter().map(|e| e.2).collect();
        assert_eq!(
            ns,
            (0..published).collect::<Vec<_>>(),
            "{user}: every event once, in order"
        );
        let seqs: Vec<u64> = got.events.iter().map(|e| e.0).collect();
        assert_eq!(seqs, acked, "{user}: the stored sequence numbers, as acked");
        for w in got.events.windows(2) {
            assert_eq!(w[1].1, w[0].0, "{user}: each event's prev is the one before it");
        }
        eprintln!("{user}: {} events, {} resumes", got.events.len(), got.resumes);
    }
    for s in subs {
        s.abort();
    }
}
