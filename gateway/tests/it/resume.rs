//! Resume with `since` on another gateway, history limits, and NATS restarts.

use std::time::Duration;

use herald_proto::frame::Event;
use herald_testkit::{jwt, wait_until, NatsServer, TestGateway, WsClient};
use serde_json::json;

use crate::{backend_publish, Stack};

/// Asserts that `events` chain by `prev` from `since` with strictly increasing seqs.
fn assert_chain(since: u64, events: &[Event]) {
    let mut last = since;
    for e in events {
        assert_eq!(e.prev, last, "event {} breaks the chain", e.seq);
        assert!(e.seq > last);
        last = e.seq;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_the_other_gateway_gets_exactly_the_missed_events_then_live_with_no_duplicate() {
    let stack = Stack::start().await;
    let token = jwt::any_room("alice");
    let nats = stack.nats_client().await;

    let mut a = WsClient::connect(&stack.a.ws_url(), &token).await;
    a.subscribe("lobby", None).await;
    backend_publish(&nats, "lobby", json!({"n": 0})).await;
    let since = a.event().await.seq;
    drop(a);

    for n in 1..=50 {
        backend_publish(&nats, "lobby", json!({"n": n})).await;
    }
    // Publishes race the resubscribe: they start before it and end after it.
    let racer = {
        let nats = nats.clone();
        tokio::spawn(async move {
            for n in 51..=150 {
                backend_publish(&nats, "lobby", json!({"n": n})).await;
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    let mut b = WsClient::connect(&stack.b.ws_url(), &token).await;
    let (mut events, ack) = b.subscribe("lobby", Some(since)).await;
    assert_eq!(ack.recovered, Some(true));
    assert!(events.len() >= 50, "at least the 50 missed events come before the ack");
    assert_eq!(ack.seq, events.last().map(|e| e.seq));
    racer.await.unwrap();
    while events.len() < 150 {
        events.push(b.event().await);
    }
    let ns: Vec<u64> = events
        .iter()
        .map(|e| e.data.as_ref().unwrap()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (1..=150).collect::<Vec<u64>>(), "every event once, in order");
    assert_chain(since, &events);
    // Nothing more is pending: the next frame is the pong.
    b.op(json!({"op": "ping"})).await;
    assert!(matches!(b.recv().await, herald_proto::frame::ServerFrame::Pong(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_history_is_not_recovered() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| c.history_size = 5).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let token = jwt::any_room("alice");
    let mut c = WsClient::connect(&gw.ws_url(), &token).await;
    c.subscribe("news", None).await;
    for n in 0..10 {
        backend_publish(&client, "news", json!(n)).await;
    }
    let all: Vec<Event> = futures_collect(&mut c, 10).await;
    let first = all[0].seq;

    let mut late = WsClient::connect(&gw.ws_url(), &token).await;
    let (replayed, ack) = late.subscribe("news", Some(first)).await;
    assert_eq!(ack.recovered, Some(false));
    assert_eq!(
        replayed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        all[5..].iter().map(|e| e.seq).collect::<Vec<_>>()
    );

    // A seq inside history recovers.
    let mut ok = WsClient::connect(&gw.ws_url(), &token).await;
    let (replayed, ack) = ok.subscribe("news", Some(all[6].seq)).await;
    assert_eq!(ack.recovered, Some(true));
    assert_eq!(replayed.len(), 3);
    assert_chain(all[6].seq, &replayed);

    // A seq beyond the stream (the stream was recreated) does not.
    let mut future = WsClient::connect(&gw.ws_url(), &token).await;
    let (replayed, ack) = future.subscribe("news", Some(all[9].seq + 1000)).await;
    assert!(replayed.is_empty());
    assert_eq!(ack.recovered, Some(false));
}

async fn futures_collect(c: &mut WsClient, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(c.event().await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_under_steady_publishing_loses_and_duplicates_nothing() {
    let mut nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let token = jwt::any_room("alice");
    let mut sub = WsClient::connect(&gw.ws_url(), &token).await;
    sub.subscribe("steady", None).await;

    // A publisher that retries each event (same Nats-Msg-Id) until JetStream stores it.
    let url = nats.url();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let publisher = tokio::spawn(async move {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url)
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stored = Vec::new();
        let mut done_rx = done_rx;
        let mut n = 0u64;
        loop {
            if done_rx.try_recv().is_ok() {
                return stored;
            }
            n += 1;
            loop {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("steady-{n}").as_str());
                let attempt = async {
                    js.publish_with_headers(
                        "herald.room.steady",
                        headers,
                        serde_json::to_vec(&json!({"n": n})).unwrap().into(),
                    )
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
                };
                match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                    Ok(Ok(ack)) => {
                        if !ack.duplicate {
                            stored.push(ack.sequence);
                        }
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    let mut received: Vec<Event> = Vec::new();
    while received.len() < 30 {
        received.push(sub.event().await);
    }
    nats.kill();
    wait_until(Duration::from_secs(10), "/readyz 503 while NATS is down", || {
        gw_readyz(&gw, 503)
    })
    .await;
    nats.restart();
    wait_until(Duration::from_secs(30), "/readyz 200 after NATS is back", || {
        gw_readyz(&gw, 200)
    })
    .await;
    let target = received.len() + 60;
    while received.len() < target {
        received.push(sub.event().await);
    }
    done_tx.send(()).unwrap();
    let stored = publisher.await.unwrap();
    // Everything stored after the last event received must still arrive.
    let last_stored = *stored.last().unwrap();
    while received.last().unwrap().seq < last_stored {
        received.push(sub.event().await);
    }
    let seqs: Vec<u64> = received.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, stored, "every stored seq exactly once, in order");
    assert_chain(0, &received);
}

async fn gw_readyz(gw: &TestGateway, want: u16) -> bool {
    gw.readyz().await == want
}
