//! The server API's data methods on NATS (`publish`, `history`, `presence`), with a real
//! nats-server, a fanout process and an in-process gateway: what a backend without a NATS
//! client library of its own would do over HTTP, checked frame by frame.

use std::time::Duration;

use herald_proto::frame::ServerFrame;
use herald_testkit::{jwt, NatsServer, Process, TestGateway, WsClient};
use serde_json::{json, Value};

async fn ask(client: &async_nats::Client, method: &str, body: Value) -> Value {
    let reply = client.request(format!("herald.api.{method}"), body.to_string().into());
    let reply = tokio::time::timeout(Duration::from_secs(5), reply)
        .await
        .expect("answered within 5 s")
        .expect("a reply");
    serde_json::from_slice(&reply.payload).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_history_and_presence_answer_as_documented() {
    let nats = NatsServer::start();
    let fanout = Process::fanout(&nats.url(), "data-f1", &[]);
    let gw = TestGateway::start_with(&nats.url(), |c| c.presence_heartbeat = Duration::from_millis(200)).await;
    fanout.wait_ready().await;
    let client = async_nats::connect(nats.url()).await.expect("NATS connects");
    let mut ann = WsClient::connect(&gw.ws_url(), &jwt::any_room("ann")).await;
    ann.op(json!({"op": "subscribe", "id": 1, "room": "news", "presence": true}))
        .await;
    let mut acked = false;
    while !acked {
        acked = matches!(ann.recv().await, ServerFrame::Ack(_));
    }

    // One room: stored, delivered, its seq answered; the same key again is a repeat.
    let one = ask(
        &client,
        "publish",
        json!({"room": "news", "data": {"n": 1}, "type": "post", "key": "k1"}),
    )
    .await;
    assert_eq!(one, json!({"result": {"room": "news", "seq": 1}}));
    let again = ask(
        &client,
        "publish",
        json!({"room": "news", "data": {"n": 1}, "type": "post", "key": "k1"}),
    )
    .await;
    assert_eq!(again, json!({"result": {"room": "news", "seq": 1, "repeat": true}}));
    let ev = loop {
        match ann.recv().await {
            ServerFrame::Event(e) => break e,
            ServerFrame::Presence(_) => continue,
            other => panic!("expected the event, got {other:?}"),
        }
    };
    assert_eq!(
        (
            ev.room.as_str(),
            ev.seq,
            ev.prev,
            ev.kind.as_deref(),
            ev.from.as_deref(),
            ev.data
        ),
        ("news", 1, 0, Some("post"), None, Some(json!({"n": 1})))
    );
    // Many rooms in one call: one event each (a repeated name counts once), in name order.
    let many = ask(
        &client,
        "publish",
        json!({"rooms": ["sports", "news", "sports"], "data": "hi"}),
    )
    .await;
    assert_eq!(
        many,
        json!({"result": {"rooms": [{"room": "news", "seq": 2}, {"room": "sports", "seq": 3}]}})
    );
    for n in 0..5 {
        ask(&client, "publish", json!({"room": "news", "data": n})).await;
    }

    // History: pages of `limit` after `since`, oldest first, each an event frame.
    let page = ask(&client, "history", json!({"room": "news", "limit": 3})).await;
    let events = page["result"]["events"].as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 4]);
    assert_eq!(page["result"]["more"], true);
    assert_eq!(
        events[0],
        json!({"t": "event", "room": "news", "seq": 1, "prev": 0, "ts": events[0]["ts"], "type": "post", "data": {"n": 1}})
    );
    assert_eq!(events[2]["prev"], 2, "prev is the room's previous event");
    let rest = ask(&client, "history", json!({"room": "news", "since": 4, "limit": 100})).await;
    let seqs: Vec<u64> = rest["result"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!((seqs, rest["result"]["more"].clone()), (vec![5, 6, 7, 8], json!(false)));
    // Backwards: the newest `last`, oldest first, paged back with `before`; the same frames as
    // reading forwards, `prev` included.
    let all = ask(&client, "history", json!({"room": "news"})).await["result"]["events"].clone();
    let back = |last: u64, before: Option<u64>| {
        let mut body = json!({"room": "news", "last": last});
        if let Some(b) = before {
            body["before"] = b.into();
        }
        let client = client.clone();
        async move {
            let r = ask(&client, "history", body).await;
            let seqs: Vec<u64> = r["result"]["events"]
                .as_array()
                .unwrap_or_else(|| panic!("{r}"))
                .iter()
                .map(|e| e["seq"].as_u64().unwrap())
                .collect();
            (
                seqs,
                r["result"]["more"].as_bool().unwrap(),
                r["result"]["events"].clone(),
            )
        }
    };
    let (seqs, more, events) = back(3, None).await;
    assert_eq!((seqs, more), (vec![6, 7, 8], true));
    assert_eq!(events[0]["prev"], 5, "the oldest's prev is the event before it");
    assert_eq!(events.as_array().unwrap()[..], all.as_array().unwrap()[4..]);
    assert_eq!(back(3, Some(6)).await.0, [2, 4, 5]);
    assert!(back(3, Some(6)).await.1, "seq 1 is older");
    let (seqs, more, events) = back(3, Some(2)).await;
    assert_eq!((seqs, more, events[0]["prev"].clone()), (vec![1], false, json!(0)));
    let (seqs, more, events) = back(100, None).await;
    assert_eq!((seqs.len(), more), (7, false));
    assert_eq!(events, all, "a whole room read backwards is the room read forwards");
    assert_eq!(
        back(2, Some(1_000_000)).await.0,
        [7, 8],
        "`before` past the stream's end"
    );
    assert_eq!(back(2, Some(1)).await, (vec![], false, json!([])));
    let empty = ask(&client, "history", json!({"room": "nothing-here", "last": 5})).await;
    assert_eq!(
        empty,
        json!({"result": {"room": "nothing-here", "events": [], "more": false}})
    );
    let empty = ask(&client, "history", json!({"room": "nothing-here"})).await;
    assert_eq!(
        empty,
        json!({"result": {"room": "nothing-here", "events": [], "more": false}})
    );

    // Presence: the snapshot fanout holds.
    let mut snapshot = Value::Null;
    for _ in 0..100 {
        snapshot = ask(&client, "presence", json!({"room": "news"})).await;
        if snapshot["result"]["count"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(snapshot["result"]["room"], "news", "{snapshot}");
    assert_eq!(snapshot["result"]["members"][0]["user"], "ann", "{snapshot}");

    // Connections and rooms: what every gateway holds, asked of each.
    let conns = ask(&client, "connections", json!({"user": "ann"})).await;
    let list = conns["result"]["connections"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{conns}");
    assert_eq!(list[0]["gateway"], json!(gw.id), "{conns}");
    assert_eq!(list[0]["transport"], "websocket", "{conns}");
    assert_eq!(list[0]["rooms"], json!(["news"]), "{conns}");
    assert_eq!(conns["result"]["gateways"], 1, "{conns}");
    let nobody = ask(&client, "connections", json!({"user": "nobody"})).await;
    assert_eq!(nobody, json!({"result": {"connections": [], "gateways": 1}}));
    let rooms = ask(&client, "rooms", json!({"prefix": "ne"})).await;
    let expected = json!({"rooms": [{"room": "news", "subscribers": 1}], "truncated": false, "gateways": 1});
    assert_eq!(rooms["result"], expected);
    let none = ask(&client, "rooms", json!({"prefix": "zz"})).await;
    assert_eq!(none["result"]["rooms"], json!([]));

    // Refused: nothing stored.
    for (method, body) in [
        ("publish", json!({"room": "news"})),
        ("publish", json!({"room": "a b", "data": 1})),
        ("publish", json!({"room": "news", "rooms": ["x"], "data": 1})),
        ("publish", json!({"room": "news", "data": 1, "key": "k".repeat(65)})),
        ("history", json!({"room": "news", "limit": 0})),
        ("history", json!({"room": "news", "since": "x"})),
        ("history", json!({"room": "news", "last": 0})),
        ("history", json!({"room": "news", "last": 2, "since": 1})),
        ("history", json!({"room": "news", "before": 3})),
        ("presence", json!({"room": ""})),
        ("rooms", json!({"limit": 0})),
        ("rooms", json!({"prefix": "a b"})),
        ("connections", json!({"user": "a b"})),
        ("connections", json!({})),
    ] {
        let answer = ask(&client, method, body.clone()).await;
        assert_eq!(answer["error"]["code"], "bad_request", "{method} {body}: {answer}");
    }
    let last = ask(&client, "history", json!({"room": "news", "since": 8})).await;
    assert_eq!(
        last["result"]["events"],
        json!([]),
        "nothing was stored by a refused publish"
    );
}
