//! Idempotent publishes: a publish that carries a `key` is stored once, however often it is
//! sent again within the duplicate window — after its gateway died before the client read the
//! ack, on another gateway, over WebSocket or `POST /publish`. Keys are scoped to the user
//! and the room; bad keys are refused and store nothing.

use std::net::SocketAddr;

use herald_proto::frame::{Event, Id, ServerFrame};
use herald_testkit::{http, jwt, NatsServer, Process, WsClient};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// A whole `POST /publish{query}` request with `body`, as `user` (or anonymous).
fn publish_request(query: &str, user: Option<&str>, body: &Value) -> String {
    let body = body.to_string();
    let auth = user.map_or(String::new(), |u| {
        format!("Authorization: Bearer {}\r\n", jwt::any_room(u))
    });
    format!(
        "POST /publish{query} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `POST /publish` with `body` as `user`; the status and the JSON answer.
async fn post(addr: SocketAddr, user: &str, body: &Value) -> (u16, Value) {
    let r = http::request(addr, &publish_request("", Some(user), body))
        .await
        .expect("HTTP answer");
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

/// The next frame answering request `id` (events in between are skipped).
async fn answer(c: &mut WsClient, id: u64) -> ServerFrame {
    loop {
        match c.recv().await {
            ServerFrame::Ack(a) if a.id == Some(Id::Num(id)) => return ServerFrame::Ack(a),
            ServerFrame::Error(e) if e.id == Some(Id::Num(id)) => return ServerFrame::Error(e),
            _ => continue,
        }
    }
}

/// Proves nothing was stored in `room` after `last`: a marker published now is the next event
/// `watcher` gets, and its `prev` is `last`.
async fn nothing_stored_after(watcher: &mut WsClient, publisher: &mut WsClient, room: &str, last: u64) {
    let marker = publisher.publish(room, json!("marker")).await.seq.expect("seq");
    let next = watcher.event().await;
    assert_eq!(
        (next.seq, next.prev),
        (marker, last),
        "the marker follows {last} directly"
    );
    assert_eq!(next.data, Some(json!("marker")));
}

/// Replays the room from `since`: every stored event, in order.
async fn history(addr: &str, room: &str, since: u64) -> Vec<Event> {
    let mut c = WsClient::connect(addr, &jwt::any_room("auditor")).await;
    c.subscribe(room, Some(since)).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_retry_after_its_gateway_died_is_acked_as_a_repeat_and_stored_once() {
    let nats = NatsServer::start();
    let mut a = Process::gateway(&nats.url(), "gw-idem-a", &[]).await;
    let b = Process::gateway(&nats.url(), "gw-idem-b", &[]).await;
    let room = "idem-ws";
    let mut watcher = WsClient::connect(&b.ws_url(), &jwt::any_room("watcher")).await;
    let start = watcher.subscribe(room, None).await.1.seq.expect("seq");

    // The publish reaches the stream (the watcher on the other gateway gets it); the sender
    // never reads its ack, and its gateway dies.
    let mut sender = WsClient::connect(&a.ws_url(), &jwt::any_room("ann")).await;
    let op = json!({"op": "publish", "id": 7, "room": room, "data": {"text": "hi"}, "key": "msg-1"});
    sender.op(op.clone()).await;
    let stored = watcher.event().await;
    assert_eq!(stored.data, Some(json!({"text": "hi"})));
    assert_eq!(stored.from.as_deref(), Some("ann"));
    a.kill9();
    drop(sender);

    // The same publish again, on the other gateway: acked with the stored seq, as a repeat.
    let mut again = WsClient::connect(&b.ws_url(), &jwt::any_room("ann")).await;
    again.op(op).await;
    match answer(&mut again, 7).await {
        ServerFrame::Ack(ack) => {
            assert_eq!(ack.seq, Some(stored.seq));
            assert_eq!(ack.room.as_deref(), Some(room));
            assert_eq!(ack.repeat, Some(true));
        }
        other => panic!("expected the repeat's ack, got {other:?}"),
    }
    // A first publish is not a repeat: the field is absent.
    again
        .op(json!({"op": "publish", "id": 8, "room": room, "data": 2, "key": "msg-2"}))
        .await;
    let ServerFrame::Ack(fresh) = answer(&mut again, 8).await else {
        panic!("expected an ack")
    };
    assert_eq!(fresh.repeat, None);
    let second = watcher.event().await;
    assert_eq!((second.seq, second.prev), (fresh.seq.unwrap(), stored.seq));
    nothing_stored_after(&mut watcher, &mut again, room, second.seq).await;

    let replayed: Vec<Value> = history(&b.ws_url(), room, start)
        .await
        .into_iter()
        .map(|e| e.data.unwrap())
        .collect();
    assert_eq!(replayed, [json!({"text": "hi"}), json!(2), json!("marker")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_retry_after_its_gateway_died_answers_the_stored_seq_once() {
    let nats = NatsServer::start();
    let mut a = Process::gateway(&nats.url(), "gw-idem-ha", &[]).await;
    let b = Process::gateway(&nats.url(), "gw-idem-hb", &[]).await;
    let room = "idem-http";
    let mut watcher = WsClient::connect(&b.ws_url(), &jwt::any_room("watcher")).await;
    watcher.subscribe(room, None).await;
    let body = json!({"room": room, "data": {"text": "hi"}, "type": "message", "key": "post-1"});

    // The request is sent whole and never read: the gateway stores the event and dies.
    let raw = publish_request("", Some("ann"), &body);
    let mut unread = tokio::net::TcpStream::connect(a.addr.unwrap()).await.unwrap();
    unread.write_all(raw.as_bytes()).await.unwrap();
    let stored = watcher.event().await;
    a.kill9();
    drop(unread);

    let (status, reply) = post(b.addr.unwrap(), "ann", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"room": room, "seq": stored.seq, "repeat": true}));
    let (status, reply) = post(b.addr.unwrap(), "ann", &body).await;
    assert_eq!((status, reply["repeat"].clone()), (200, json!(true)), "and again");
    let mut publisher = WsClient::connect(&b.ws_url(), &jwt::any_room("pub")).await;
    nothing_stored_after(&mut watcher, &mut publisher, room, stored.seq).await;

    // A first HTTP publish has no `repeat`.
    let (status, reply) = post(
        b.addr.unwrap(),
        "ann",
        &json!({"room": room, "data": 1, "key": "post-2"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply.as_object().unwrap().len(), 2, "{reply}");
    assert!(reply["seq"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_to_the_user_and_the_room_and_bad_keys_store_nothing() {
    let nats = NatsServer::start();
    let gw = Process::gateway(&nats.url(), "gw-idem-scope", &["--dedup-window", "90s"]).await;
    let room = "idem-scope";
    let mut watcher = WsClient::connect(&gw.ws_url(), &jwt::any_room("watcher")).await;
    watcher.subscribe(room, None).await;
    watcher.subscribe("idem-other", None).await;

    // The flag is the stream's duplicate window.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js.get_stream("HERALD_ROOMS").await.expect("the event stream");
    let window = stream.info().await.unwrap().config.duplicate_window;
    assert_eq!(window, std::time::Duration::from_secs(90));

    // Ann and Bob use the same key: two events. Ann reuses hers in another room: a third.
    let mut seqs = Vec::new();
    for (user, to) in [("ann", room), ("bob", room), ("ann", "idem-other")] {
        let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room(user)).await;
        c.op(json!({"op": "publish", "id": 1, "room": to, "data": user, "key": "same"}))
            .await;
        let ServerFrame::Ack(ack) = answer(&mut c, 1).await else {
            panic!("expected an ack for {user} in {to}")
        };
        assert_eq!(ack.repeat, None, "{user} in {to} is not a repeat");
        seqs.push(ack.seq.unwrap());
        let ev = watcher.event().await;
        assert_eq!((ev.seq, ev.data), (ack.seq.unwrap(), Some(json!(user))));
    }
    assert!(seqs[0] < seqs[1] && seqs[1] < seqs[2], "{seqs:?}");

    // Bad keys: `bad_request` / 400, nothing stored.
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room("ann")).await;
    let bad_keys = [
        json!("k".repeat(65)),
        json!("a\nb"),
        json!("a\r\nNats-Msg-Id: x"),
        json!("a\u{0}b"),
        json!("with space"),
        json!("é"),
        json!(""),
        json!(12),
    ];
    for (i, key) in bad_keys.iter().enumerate() {
        let id = 100 + i as u64;
        c.op(json!({"op": "publish", "id": id, "room": room, "data": 1, "key": key}))
            .await;
        match answer(&mut c, id).await {
            ServerFrame::Error(e) => assert_eq!(e.code.as_str(), "bad_request", "key {key}"),
            other => panic!("key {key}: expected bad_request, got {other:?}"),
        }
        let (status, reply) = post(gw.addr.unwrap(), "ann", &json!({"room": room, "data": 1, "key": key})).await;
        assert_eq!(status, 400, "key {key}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "key {key}");
    }
    nothing_stored_after(&mut watcher, &mut c, room, seqs[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_publisher_keeps_its_keys_across_gateways_through_its_sid() {
    let nats = NatsServer::start();
    let flags = [
        "--allow-anonymous",
        "--anonymous-rooms",
        "*",
        "--anonymous-publish",
        "*",
    ];
    let a = Process::gateway(&nats.url(), "gw-idem-anon-a", &flags).await;
    let b = Process::gateway(&nats.url(), "gw-idem-anon-b", &flags).await;
    let body = json!({"room": "idem-anon", "data": "hi", "key": "anon-1"});
    let post = |addr: SocketAddr, sid: &'static str| {
        let raw = publish_request(&format!("?sid={sid}"), None, &body);
        async move {
            let r = http::request(addr, &raw).await.expect("HTTP answer");
            assert_eq!(r.status, 200, "{}", r.body);
            serde_json::from_str::<Value>(&r.body).unwrap()
        }
    };
    let first = post(a.addr.unwrap(), "tab-sid-0001").await;
    assert_eq!(first.get("repeat"), None);
    let again = post(b.addr.unwrap(), "tab-sid-0001").await;
    assert_eq!(
        (again["seq"].clone(), again["repeat"].clone()),
        (first["seq"].clone(), json!(true))
    );
    // Another tab (another sid) is another anonymous user: its key is its own.
    let other = post(b.addr.unwrap(), "tab-sid-0002").await;
    assert_eq!(other.get("repeat"), None);
    assert_ne!(other["seq"], first["seq"]);
}
