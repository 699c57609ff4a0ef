//! The event stream deleted and recreated under a live subscription: its seqs start again
//! from 1, and the gateway's rooms follow them instead of dropping every event up to the
//! old last seq.

use std::time::Duration;

use herald_proto::frame::{Ack, ServerFrame};
use herald_proto::subject::{Partitions, Subjects};
use herald_service::stream::StreamSettings;
use herald_testkit::http::Sse;
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
        storage: Default::default(),
        allow_msg_ttl: false,
    };
    herald_service::stream::ensure(&js, &Partitions::new(subjects, 1), &settings)
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
    let token = jwt::any_room("sse-reader");
    let mut sse = Sse::open(gw.addr, &format!("/sse?rooms=lobby&cursor=lobby:0&token={token}"), &[])
        .await
        .expect("SSE stream");
    assert_eq!(sse.status, 200);
    for n in 0..3 {
        backend_publish(&client, "lobby", json!({"n": n})).await;
    }
    for n in 0..3 {
        let ev = c.event().await;
        assert_eq!((ev.seq, ev.data), (n + 1, Some(json!({"n": n}))));
    }

    // The SSE stream (from the start: whether it attached before the publishes or after, it
    // has them all) has the three old events too, read before the stream goes.
    for n in 1..=3 {
        let ev = sse.next_event(Duration::from_secs(5)).await.expect("an old event");
        assert_eq!(ev.id.as_deref(), Some(format!("lobby:{n}").as_str()));
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

    // The SSE stream is told `unrecovered`, then gets the new event with the room's cursor
    // in the new stream.
    let told = sse.next_event(Duration::from_secs(5)).await.expect("unrecovered");
    assert_eq!(told.event.as_deref(), Some("unrecovered"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&told.data).unwrap(),
        json!({"t": "unrecovered", "rooms": ["lobby"]})
    );
    let ev = sse.next_event(Duration::from_secs(5)).await.expect("the new event");
    assert_eq!(ev.id.as_deref(), Some("lobby:1"));

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
