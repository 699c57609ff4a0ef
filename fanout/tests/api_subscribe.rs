//! The server API's `subscribe` and `unsubscribe` (NATS), with a real nats-server, two
//! fanout processes and two in-process gateways: every transport of the user gets the room
//! (WebSocket, SSE, a long-poll, a polling session's next poll), the grant lets the user's
//! new connections subscribe on either gateway while another user stays refused, and
//! `unsubscribe` takes the room and the grant away. (Its own test binary: the gateways'
//! metrics, which it waits on, are per process.)

use std::time::Duration;

use herald_proto::frame::ServerFrame;
use herald_testkit::client::Incoming;
use herald_testkit::http::{get, Sse};
use herald_testkit::{jwt, wait_until, NatsServer, WsClient};
use serde_json::{json, Value};

mod api_common;

const WITHIN: Duration = Duration::from_secs(1);

/// The next frame that is not a presence frame.
async fn next_non_presence(c: &mut WsClient, what: &str) -> Incoming {
    loop {
        match c.next_within(WITHIN).await {
            Some(Incoming::Frame(ServerFrame::Presence(_))) => continue,
            Some(other) => return other,
            None => panic!("{what}: nothing within {WITHIN:?}"),
        }
    }
}

/// Stores an event in `room` through JetStream (as a backend does); its seq.
async fn store(js: &async_nats::jetstream::Context, room: &str, data: &str) -> u64 {
    js.publish(format!("herald.room.{room}"), data.to_owned().into())
        .await
        .expect("published")
        .await
        .expect("stored")
        .sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_reaches_every_transport_and_grants_the_room_until_unsubscribe() {
    let nats = NatsServer::start();
    let (_fanouts, a, b) = api_common::two_by_two(&nats, "sub").await;
    let client = async_nats::connect(nats.url()).await.expect("NATS connects");
    let js = async_nats::jetstream::new(client.clone());
    let ask = |method: &'static str, body: Value| {
        let client = client.clone();
        async move {
            let reply = client.request(format!("herald.api.{method}"), body.to_string().into());
            let reply = tokio::time::timeout(Duration::from_secs(5), reply)
                .await
                .unwrap()
                .unwrap();
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    // Bob's token grants the lobby only.
    let bob = jwt::token("bob", 3600, &["lobby"], &[]);
    let mut bob_a = WsClient::connect(&a.ws_url(), &bob).await;
    bob_a.op(json!({"op": "subscribe", "id": 1, "room": "team:7"})).await;
    match bob_a.recv().await {
        ServerFrame::Error(e) => assert_eq!(e.code, herald_proto::ErrorCode::Forbidden),
        other => panic!("expected forbidden, got {other:?}"),
    }
    let mut bob_sse = Sse::open(b.addr, &format!("/sse?rooms=lobby&token={bob}"), &[])
        .await
        .unwrap();
    assert_eq!(bob_sse.status, 200);
    let long_poll = {
        let (addr, path) = (a.addr, format!("/poll?rooms=lobby&wait=20&token={bob}"));
        tokio::spawn(async move { get(addr, &path).await })
    };
    let session = format!("/poll?rooms=lobby&sid=bob-tab-0123456789&presence=lobby&wait=0&token={bob}");
    assert_eq!(get(b.addr, &session).await.unwrap().status, 200);
    wait_until(
        Duration::from_secs(5),
        "the long-poll and the SSE stream are held",
        || async {
            a.metric("herald_gateway_connections{transport=\"long-poll\"}").await == 1.0
                && b.metric("herald_gateway_connections{transport=\"sse\"}").await == 1.0
                // Attached to the lobby, both (this process's metrics count both gateways).
                && a.metric("herald_gateway_room_subscriptions").await == 2.0
        },
    )
    .await;
    let before = store(&js, "team:7", r#"{"n":0}"#).await;

    // Refused requests: nothing stored, nothing sent.
    for (body, why) in [
        (json!({"user": "bob", "room": "a b"}), "`room`"),
        (json!({"user": "bob"}), "invalid request"),
        (json!({"user": "b.b", "room": "x"}), "`user`"),
    ] {
        let answer = ask("subscribe", body.clone()).await;
        assert_eq!(answer["error"]["code"], "bad_request", "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(why), "{answer}");
    }

    let answer = ask("subscribe", json!({"user": "bob", "room": "team:7"})).await;
    assert_eq!(
        answer["result"],
        json!({"connections": 4, "gateways": 2}),
        "a WebSocket, an SSE stream, a long-poll, a polling session: {answer}"
    );
    match next_non_presence(&mut bob_a, "bob's WebSocket").await {
        Incoming::Frame(ServerFrame::Subscribed(s)) => assert_eq!((s.room.as_str(), s.seq), ("team:7", before)),
        other => panic!("expected subscribed, got {other:?}"),
    }
    let ev = bob_sse.next_event(WITHIN).await.expect("the SSE subscribed event");
    assert_eq!(ev.event.as_deref(), Some("subscribed"));
    assert_eq!(
        serde_json::from_str::<Value>(&ev.data).unwrap(),
        json!({"t": "subscribed", "room": "team:7", "seq": before})
    );
    let polled = tokio::time::timeout(WITHIN, long_poll).await.unwrap().unwrap().unwrap();
    let body: Value = serde_json::from_str(&polled.body).unwrap();
    assert_eq!(body["subscribed"], json!([{"room": "team:7", "seq": before}]), "{body}");
    assert!(
        body["cursor"].as_str().unwrap().contains(&format!("team:7:{before}")),
        "{body}"
    );
    let next: Value = serde_json::from_str(&get(b.addr, &session).await.unwrap().body).unwrap();
    assert_eq!(next["subscribed"], json!([{"room": "team:7", "seq": before}]), "{next}");

    // The room's next event reaches the WebSocket and the SSE stream.
    let seq = store(&js, "team:7", r#"{"n":1}"#).await;
    match next_non_presence(&mut bob_a, "bob's WebSocket").await {
        Incoming::Frame(ServerFrame::Event(e)) => assert_eq!((e.room.as_str(), e.seq, e.prev), ("team:7", seq, before)),
        other => panic!("expected the event, got {other:?}"),
    }
    let ev = bob_sse.next_event(WITHIN).await.expect("the SSE event");
    let frame: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        (frame["room"].clone(), frame["seq"].clone()),
        (json!("team:7"), json!(seq))
    );
    assert!(ev.id.unwrap().contains(&format!("team:7:{seq}")));

    // The grant outlives the connection: a new one subscribes itself, on either gateway and
    // transport; another user still may not.
    let mut again = WsClient::connect(&b.ws_url(), &bob).await;
    let (_, ack) = again.subscribe("team:7", None).await;
    assert_eq!(ack.seq, Some(seq));
    let polled = get(a.addr, &format!("/poll?rooms=team:7&wait=0&token={bob}"))
        .await
        .unwrap();
    assert_eq!(polled.status, 200, "{}", polled.body);
    let carol = jwt::token("carol", 3600, &["lobby"], &[]);
    let refused = get(a.addr, &format!("/poll?rooms=team:7&wait=0&token={carol}"))
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);

    // Unsubscribe: every connection loses the room, and the grant is gone.
    let answer = ask("unsubscribe", json!({"user": "bob", "room": "team:7"})).await;
    assert_eq!(
        answer["result"]["connections"], 4,
        "two WebSockets, SSE, the session: {answer}"
    );
    for (c, what) in [(&mut bob_a, "bob on a"), (&mut again, "bob on b")] {
        match next_non_presence(c, what).await {
            Incoming::Frame(ServerFrame::Unsubscribed(u)) => assert_eq!(u.room, "team:7"),
            other => panic!("{what}: expected unsubscribed, got {other:?}"),
        }
    }
    let ev = bob_sse.next_event(WITHIN).await.expect("the SSE unsubscribed event");
    assert_eq!(ev.event.as_deref(), Some("unsubscribed"));
    let next: Value = serde_json::from_str(&get(b.addr, &session).await.unwrap().body).unwrap();
    assert_eq!(next["unsubscribed"], json!(["team:7"]), "{next}");
    store(&js, "team:7", r#"{"n":2}"#).await;
    for (c, what) in [(&mut bob_a, "bob on a"), (&mut again, "bob on b")] {
        if let Some(Incoming::Frame(f)) = c.next_within(Duration::from_millis(300)).await {
            assert!(matches!(f, ServerFrame::Presence(_)), "{what}: {f:?} after unsubscribe");
        }
    }
    let refused = get(a.addr, &format!("/poll?rooms=team:7&wait=0&token={bob}"))
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    // A user with no connections: the grant is stored all the same.
    let answer = ask("subscribe", json!({"user": "dora", "room": "team:7"})).await;
    assert_eq!(answer["result"], json!({"connections": 0, "gateways": 2}), "{answer}");
    let dora = jwt::token("dora", 3600, &[], &[]);
    let polled = get(b.addr, &format!("/poll?rooms=team:7&wait=0&token={dora}"))
        .await
        .unwrap();
    assert_eq!(polled.status, 200, "{}", polled.body);
}
