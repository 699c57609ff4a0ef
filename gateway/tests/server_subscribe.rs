//! The server API's `subscribe` against a WebSocket session that is slow to take it (its
//! mailbox is read by the session's own task): an event published once the command is
//! answered still reaches the connection, after the `subscribed` frame, and the frame names
//! the seq it follows.
//!
//! One test in its own binary: fail points are process-wide.

use std::time::Duration;

use herald_proto::frame::ServerFrame;
use herald_proto::sys::{Control, ControlReply};
use herald_testkit::{jwt, NatsServer, TestGateway, WsClient};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_after_the_answer_reaches_a_session_that_subscribes_late() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let backend = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(backend.clone());
    let publish = |n: u64| {
        let js = js.clone();
        async move {
            let data = serde_json::to_vec(&json!({ "n": n })).unwrap();
            js.publish("herald.room.race", data.into())
                .await
                .expect("published")
                .await
                .expect("stored")
                .sequence
        }
    };
    let first = publish(1).await;
    let mut ann = WsClient::connect(&gw.ws_url(), &jwt::token("ann", 600, &["lobby"], &[])).await;

    // The session takes the command only after the event below is stored (the fail point
    // holds its thread until removed).
    fail::cfg("ws.subscribe", "pause").expect("fail point configured");
    let command = Control::Subscribe {
        user: "ann".into(),
        room: "race".into(),
        presence: false,
    };
    let ask = backend.request("herald.sys.ctl", serde_json::to_vec(&command).unwrap().into());
    let reply = tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .expect("answered within 5 s")
        .expect("answered");
    let reply: ControlReply = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply.connections, 1, "{reply:?}");
    let second = publish(2).await;
    fail::remove("ws.subscribe");

    match ann.recv().await {
        ServerFrame::Subscribed(s) => assert_eq!((s.room.as_str(), s.seq), ("race", first)),
        other => panic!("expected `subscribed`, got {other:?}"),
    }
    match ann.recv().await {
        ServerFrame::Event(e) => {
            assert_eq!((e.room.as_str(), e.seq, e.prev), ("race", second, first));
        }
        other => panic!("expected the event published after the answer, got {other:?}"),
    }
    // And the room is live for it from there.
    let third = publish(3).await;
    match ann.recv().await {
        ServerFrame::Event(e) => assert_eq!((e.seq, e.prev), (third, second)),
        other => panic!("expected the next event, got {other:?}"),
    }
}
