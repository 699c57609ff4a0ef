//! Namespaces (`--namespaces`): a last-value room gives a new subscriber exactly its newest
//! event on every transport, a namespace without client publish refuses clients but takes a
//! backend's events, history sizes and lifetimes hold, presence and anonymous access can be
//! closed, a namespace's publish rate applies, a room that replays nothing answers `since`
//! with `recovered: false`, and a file with an error stops the gateway with its line.

use std::io::Write;
use std::time::Duration;

use herald_gateway::{Config, Gateway};
use herald_proto::frame::ServerFrame;
use herald_proto::ErrorCode;
use herald_testkit::http::{get, Sse};
use herald_testkit::{jwt, wait_until, NatsServer, TestGateway, WsClient};
use serde_json::{json, Value};

const FILE: &str = r#"
[[namespace]]
prefix = "ticker:"
last_value = true
client_publish = false

[[namespace]]
prefix = "chat:"
history_size = 2
presence = false
anonymous = false
publish_rate = 1

[[namespace]]
prefix = "typing:"
history = false

[[namespace]]
prefix = "brief:"
history_ttl = "1s"

[[namespace]]
prefix = "eph:"
ephemeral = true
"#;

fn namespaces_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("a temporary file");
    f.write_all(text.as_bytes()).expect("written");
    f
}

/// Stores an event as a backend does (JetStream); its seq.
async fn store(js: &async_nats::jetstream::Context, room: &str, data: Value) -> u64 {
    js.publish(format!("herald.room.{room}"), data.to_string().into())
        .await
        .expect("published")
        .await
        .expect("stored")
        .sequence
}

/// The answer to one op: an ack's seq and the events before it, or an error's code.
async fn answer(c: &mut WsClient, op: Value) -> Result<(Vec<u64>, Option<u64>, Option<bool>), ErrorCode> {
    c.op(op).await;
    let mut events = Vec::new();
    loop {
        match c.recv().await {
            ServerFrame::Event(e) => events.push(e.seq),
            ServerFrame::Ack(a) => return Ok((events, a.seq, a.recovered)),
            ServerFrame::Error(e) => return Err(e.code),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_apply_their_rules_on_every_path() {
    let nats = NatsServer::start();
    let file = namespaces_file(FILE);
    let path = file.path().to_owned();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.namespaces = Some(path);
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["*".into()];
        c.anonymous_publish = vec!["*".into()];
    })
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let token = jwt::any_room("ann");
    let mut ann = WsClient::connect(&gw.ws_url(), &token).await;

    // Last value: a backend's three prices; a new subscriber gets exactly the newest first.
    let mut last = 0;
    for n in 1..=3 {
        last = store(&js, "ticker:ACME", json!({ "price": n })).await;
    }
    assert_eq!(
        answer(&mut ann, json!({"op": "subscribe", "id": 1, "room": "ticker:ACME"})).await,
        Ok((vec![last], Some(last), Some(true)))
    );
    let poll: Value = serde_json::from_str(
        &get(gw.addr, &format!("/poll?rooms=ticker:ACME&wait=0&token={token}"))
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    let seqs: Vec<u64> = poll["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [last], "{poll}");
    assert_eq!(poll["events"][0]["data"], json!({"price": 3}));
    let mut sse = Sse::open(gw.addr, &format!("/sse?rooms=ticker:ACME&token={token}"), &[])
        .await
        .unwrap();
    let ev = sse.next_event(Duration::from_secs(5)).await.expect("the newest price");
    assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap()["seq"], last);
    // No client publish there (forbidden), whatever the token grants; the backend's went in.
    assert_eq!(
        answer(
            &mut ann,
            json!({"op": "publish", "id": 2, "room": "ticker:ACME", "data": 1})
        )
        .await,
        Err(ErrorCode::Forbidden)
    );
    let (status, body) = crate::request(
        gw.addr,
        "POST",
        "/publish",
        &format!("Authorization: Bearer {token}\r\n"),
        r#"{"room":"ticker:ACME","data":1}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // History size 2: five publishes, two kept (a client's publishes trim the room).
    let mut bob = WsClient::connect(&gw.ws_url(), &jwt::any_room("bob")).await;
    let mut seqs = Vec::new();
    for n in 0..5 {
        seqs.push(bob.publish("chat:1", json!(n)).await.seq.unwrap());
        tokio::time::sleep(Duration::from_millis(1100)).await; // publish_rate = 1 per second
    }
    let (replayed, _, recovered) = answer(
        &mut ann,
        json!({"op": "subscribe", "id": 3, "room": "chat:1", "since": seqs[0]}),
    )
    .await
    .unwrap();
    assert_eq!(replayed, seqs[3..], "the newest two");
    assert_eq!(
        recovered,
        Some(false),
        "history no longer holds everything after the first"
    );
    // Its publish rate: a second publish within the second is refused.
    assert!(
        answer(&mut bob, json!({"op": "publish", "id": 4, "room": "chat:2", "data": 1}))
            .await
            .is_ok()
    );
    assert_eq!(
        answer(&mut bob, json!({"op": "publish", "id": 5, "room": "chat:2", "data": 2})).await,
        Err(ErrorCode::RateLimited)
    );
    // No presence, and no anonymous clients.
    assert_eq!(
        answer(
            &mut ann,
            json!({"op": "subscribe", "id": 6, "room": "chat:3", "presence": true})
        )
        .await,
        Err(ErrorCode::Forbidden)
    );
    assert_eq!(
        answer(&mut ann, json!({"op": "presence", "id": 7, "room": "chat:3"}))
            .await
            .err(),
        Some(ErrorCode::Forbidden)
    );
    let mut anon = WsClient::connect(&gw.ws_url(), "").await;
    assert_eq!(
        answer(&mut anon, json!({"op": "subscribe", "id": 8, "room": "chat:1"})).await,
        Err(ErrorCode::Forbidden)
    );
    assert!(answer(&mut anon, json!({"op": "subscribe", "id": 9, "room": "lobby"}))
        .await
        .is_ok());

    // history = false: `since` is not honoured; the ack says so.
    let typed = store(&js, "typing:1", json!("…")).await;
    assert_eq!(
        answer(
            &mut ann,
            json!({"op": "subscribe", "id": 10, "room": "typing:1", "since": 0})
        )
        .await,
        Ok((vec![], Some(typed), Some(false)))
    );

    // Ephemeral: live subscribers get it (seq 0), the stream never holds it, and nothing is
    // replayed; a poll in flight gets it too, and its cursor stays.
    assert_eq!(
        answer(&mut ann, json!({"op": "subscribe", "id": 11, "room": "eph:1"})).await,
        Ok((vec![], Some(0), Some(true)))
    );
    let long_poll = {
        let (addr, path) = (gw.addr, format!("/poll?rooms=eph:1&wait=20&token={token}"));
        tokio::spawn(async move { get(addr, &path).await })
    };
    wait_until(Duration::from_secs(5), "the long-poll is held", || async {
        gw.metric("herald_gateway_connections{transport=\"long-poll\"}").await == 1.0
    })
    .await;
    let ack = answer(
        &mut bob,
        json!({"op": "publish", "id": 12, "room": "eph:1", "data": "typing"}),
    )
    .await;
    assert_eq!(ack, Ok((vec![], Some(0), None)));
    let ev = ann.event().await;
    assert_eq!(
        (ev.room.as_str(), ev.seq, ev.prev, ev.data),
        ("eph:1", 0, 0, Some(json!("typing")))
    );
    assert_eq!(ev.from.as_deref(), Some("bob"));
    let polled: Value = serde_json::from_str(&long_poll.await.unwrap().unwrap().body).unwrap();
    assert_eq!(polled["events"][0]["data"], "typing", "{polled}");
    assert_eq!(polled["cursor"], "eph:1:0", "{polled}");
    let stream = js.get_stream("HERALD_ROOMS").await.unwrap();
    assert!(
        stream.direct_get_last_for_subject("herald.room.eph:1").await.is_err(),
        "never stored"
    );
    let mut late = WsClient::connect(&gw.ws_url(), &token).await;
    assert_eq!(
        answer(
            &mut late,
            json!({"op": "subscribe", "id": 13, "room": "eph:1", "since": 0})
        )
        .await,
        Ok((vec![], Some(0), Some(false)))
    );

    // history_ttl = 1s: the event goes from history by itself.
    let brief = bob.publish("brief:1", json!("soon gone")).await.seq.unwrap();
    assert_eq!(stream.get_raw_message(brief).await.unwrap().sequence, brief);
    wait_until(Duration::from_secs(10), "the brief event expires", || {
        let stream = stream.clone();
        async move { stream.get_raw_message(brief).await.is_err() }
    })
    .await;
}

#[tokio::test]
async fn a_namespaces_file_with_an_error_stops_the_gateway_with_its_line() {
    let file = namespaces_file("[[namespace]]\nprefix = \"chat:\"\nhistory_size = 0\n");
    let mut config = Config::for_test("nats://127.0.0.1:1");
    config.auth_hs256_secret = Some(jwt::SECRET.to_owned());
    config.namespaces = Some(file.path().to_owned());
    let error = Gateway::bind(config).await.err().expect("refused").to_string();
    assert!(
        error.contains("--namespaces") && error.contains("line 1") && error.contains("`history_size`"),
        "{error}"
    );
}
