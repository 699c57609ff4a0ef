//! The event stream deleted and recreated under a live subscription: its seqs start again
//! from 1, and the gateway's rooms follow them instead of dropping every event up to the
//! old last seq.

use std::time::Duration;

use herald_proto::frame::{Ack, ServerFrame};
use herald_proto::subject::Subjects;
use herald_service::stream::StreamSettings;
use herald_testkit::{jwt, NatsServer, TestGateway, WsClient};
use serde_json::json;

use crate::backend_publish;

/// Deletes the event stream and creates it again, as an operator resetting it would.
async fn recreate_stream(nats: &async_nats::Client) {
    let js = async_nats::jetstream::new(nats.clone());
    let subjects = Subjects::default();
    assert!(
        js.delete_stream(subjects.stream_name())
            .await
            .expect("stream deleted")
            .success,
        "the stream existed"
    );
    let settings = StreamSettings {
        history_size: 1000,
        history_ttl: Duration::from_secs(3600),
        max_bytes: -1,
        dedup_window: Duration::from_secs(120),
        replicas: 1,
    };
    herald_service::stream::ensure(&js, &subjects, &settings)
        .await
        .expect("stream recreated");
}

async fn next(c: &mut WsClient) -> ServerFrame {
    tokio::time::timeout(Duration::from_secs(5), c.recv())
        .await
        .expect("a frame within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_s_events_reach_live_subscribers_with_recovered_false() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let client = async_nats::connect(nats.url()).await.expect("NATS connects");
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room("alice")).await;
    c.subscribe("lobby", None).await;
    for n in 0..3 {
        backend_publish(&client, "lobby", json!({"n": n})).await;
    }
    for n in 0..3 {
        let ev = c.event().await;
        assert_eq!((ev.seq, ev.data), (n + 1, Some(json!({"n": n}))));
    }

    recreate_stream(&client).await;
    backend_publish(&client, "lobby", json!({"n": "new"})).await;

    // Told first that the room's position started over, then the new stream's event.
    assert_eq!(
        next(&mut c).await,
        ServerFrame::Ack(Ack {
            room: Some("lobby".into()),
            seq: Some(0),
            recovered: Some(false),
            ..Ack::default()
        })
    );
    let ServerFrame::Event(ev) = next(&mut c).await else {
        panic!("expected the new stream's event")
    };
    assert_eq!((ev.seq, ev.prev, ev.data), (1, 0, Some(json!({"n": "new"}))));

    // And the room flows on from there, with no second rewind.
    backend_publish(&client, "lobby", json!({"n": "after"})).await;
    let ServerFrame::Event(ev) = next(&mut c).await else {
        panic!("expected the next event")
    };
    assert_eq!((ev.seq, ev.prev, ev.data), (2, 1, Some(json!({"n": "after"}))));
    // A second subscriber resumes in the new stream as usual.
    let mut d = WsClient::connect(&gw.ws_url(), &jwt::any_room("bob")).await;
    let (events, ack) = d.subscribe("lobby", Some(1)).await;
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    assert_eq!((ack.seq, ack.recovered), (Some(2), Some(true)));
}
