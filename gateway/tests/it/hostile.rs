//! The inputs that once took a gateway down or broke a stream, and their relatives: each gets
//! the contract's answer, and the gateway stays whole for everyone else.

use std::net::SocketAddr;
use std::time::Duration;

use herald_proto::frame::{ErrorFrame, Event, Id, ServerFrame};
use herald_proto::ErrorCode;
use herald_testkit::client::Connect;
use herald_testkit::http::{self, Sse};
use herald_testkit::{jwt, NatsServer, TestGateway, WsClient};
use serde_json::{json, Value};

async fn request(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = http::request(addr, &raw).await.expect("HTTP answer");
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

fn error_of(frame: ServerFrame) -> (Option<Id>, ErrorCode, String) {
    match frame {
        ServerFrame::Error(ErrorFrame { id, code, message }) => (id, code, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_character_in_a_type_is_a_bad_request_and_the_gateway_stays_available() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.max_connections = 2;
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["*".into()];
        c.anonymous_publish = vec!["*".into()];
    })
    .await;
    let url = gw.ws_url();
    let frame = r#"{"op":"publish","id":1,"room":"lobby","data":1,"type":"a\nb"}"#;
    for attacker in ["mallory", "trudy"] {
        let mut c = WsClient::connect(&url, &jwt::any_room(attacker)).await;
        for _ in 0..2 {
            c.send_raw(fastwebsockets::OpCode::Text, frame.as_bytes().to_vec())
                .await;
            let (id, code, message) = error_of(c.recv().await);
            assert_eq!((id, code), (Some(Id::Num(1)), ErrorCode::BadRequest));
            assert!(message.contains("`type`"), "{message}");
        }
        // The connection is still usable.
        c.op(json!({"op": "ping", "id": 2})).await;
        assert!(matches!(c.recv().await, ServerFrame::Pong(_)));
    }
    // The two attackers left: both slots are free again.
    let mut a = WsClient::connect(&url, &jwt::any_room("alice")).await;
    let mut b = WsClient::connect(&url, &jwt::any_room("bob")).await;
    a.subscribe("lobby", None).await;
    let ack = b.publish("lobby", json!({"text": "hi"})).await;
    assert_eq!(a.event().await.seq, ack.seq.unwrap());
    let third = Connect {
        url: url.clone(),
        token: Some(jwt::any_room("carol")),
        ..Default::default()
    };
    assert_eq!(WsClient::open(third).await.err(), Some(503), "the limit still holds");

    // The same strings over HTTP: 400 with the contract's body, nothing stored.
    let token = jwt::any_room("mallory");
    let (status, body) = request(
        gw.addr,
        "POST",
        "/publish",
        &token,
        r#"{"room":"lobby","data":1,"type":"a\nb"}"#,
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")));
    for path in [
        "/poll?rooms=lobby&name=%1B%5B31m",
        "/poll?rooms=lobby&sid=a%0Ab",
        "/poll?rooms=lobby&watch=a.b",
        "/poll?rooms=lo%0Abby",
        "/poll?rooms=lobby&cursor=lobby:18446744073709551616",
        "/sse?rooms=lobby&watch=x%00y",
    ] {
        let (status, body) = request(gw.addr, "GET", path, &token, "").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{path}"
        );
    }
    // Polls count against the limit too: with a and b connected there is no slot.
    let (status, _) = request(gw.addr, "GET", "/poll?rooms=lobby", &token, "").await;
    assert_eq!(status, 503, "a poll is a connection for --max-connections");
    drop((a, b));
    let poll = || request(gw.addr, "GET", "/poll?rooms=lobby&cursor=lobby:0", &token, "");
    herald_testkit::wait_until(Duration::from_secs(10), "a free slot", || async {
        poll().await.0 == 200
    })
    .await;
    let (_, body) = poll().await;
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1), "only alice's event");
}

/// What a backend may publish: pretty-printed JSON (LF and CRLF), bytes that are not JSON
/// (with line breaks), and payloads near NATS's 1 MiB limit, JSON and not.
fn payloads() -> Vec<Vec<u8>> {
    let big_json = serde_json::to_vec(&json!({"text": "x".repeat(1_000_000 - 20)})).unwrap();
    let big_bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    vec![
        b"{\n  \"text\": \"x\"\n}".to_vec(),
        b"{\r\n\t\"a\": [1,\r\n 2],\r\n \"s\": \"line\\nbreak\"\r\n}\r\n".to_vec(),
        b"\xff\x00not json\nline two\r\n".to_vec(),
        big_json,
        big_bytes,
    ]
}

fn check(ev: &Event, payload: &[u8], transport: &str, i: usize) {
    match (&ev.data, &ev.data_bytes) {
        (Some(v), None) => {
            let want: Value = serde_json::from_slice(payload).expect("a JSON payload");
            assert!(*v == want, "{transport}: payload {i} differs");
        }
        (None, Some(b)) => assert!(b == payload, "{transport}: payload {i} differs"),
        other => panic!("{transport}: payload {i} arrived as {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_payload_arrives_whole_on_every_transport() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let token = jwt::any_room("reader");
    let client = async_nats::connect(nats.url()).await.unwrap();

    let mut ws = WsClient::connect(&gw.ws_url(), &token).await;
    ws.subscribe("raw", None).await;
    let sse_path = format!("/sse?rooms=raw&token={token}");
    let mut sse = Sse::open(gw.addr, &sse_path, &[]).await.unwrap();
    assert_eq!(sse.status, 200);
    let (_, tail) = request(gw.addr, "GET", "/poll?rooms=raw", &token, "").await;
    let cursor = tail["cursor"].as_str().unwrap().to_owned();
    let long_poll = {
        let path = format!("/poll?rooms=raw&cursor={cursor}&wait=20");
        let token = token.clone();
        let addr = gw.addr;
        tokio::spawn(async move { request(addr, "GET", &path, &token, "").await })
    };
    // The long-poll is held on the hub before the first event.
    herald_testkit::wait_until(Duration::from_secs(10), "the long-poll is held", || async {
        gw.metric("herald_gateway_connections{transport=\"long-poll\"}").await >= 1.0
    })
    .await;

    let payloads = payloads();
    for p in &payloads {
        let ack = client.publish("herald.room.raw".to_owned(), p.clone().into()).await;
        ack.unwrap();
    }
    client.flush().await.unwrap();

    for (i, p) in payloads.iter().enumerate() {
        let ev = ws.event().await;
        check(&ev, p, "websocket", i);
    }
    for (i, p) in payloads.iter().enumerate() {
        let ev = sse.next_event(Duration::from_secs(10)).await.expect("an SSE event");
        let ev = match herald_proto::Codec::Json.decode_server(ev.data.as_bytes()) {
            Ok(ServerFrame::Event(e)) => e,
            other => panic!("SSE event {i} is not an event frame: {other:?}"),
        };
        check(&ev, p, "sse", i);
    }
    let (status, first) = long_poll.await.unwrap();
    assert_eq!(status, 200);
    let mut got: Vec<Event> = Vec::new();
    let mut page = first;
    loop {
        for e in page["events"].as_array().unwrap() {
            got.push(decode_event(e));
        }
        if got.len() >= payloads.len() {
            break;
        }
        let path = format!("/poll?rooms=raw&cursor={}", page["cursor"].as_str().unwrap());
        page = request(gw.addr, "GET", &path, &token, "").await.1;
    }
    for (i, (ev, p)) in got.iter().zip(&payloads).enumerate() {
        check(ev, p, "poll", i);
    }
}

fn decode_event(v: &Value) -> Event {
    let bytes = serde_json::to_vec(v).unwrap();
    match herald_proto::Codec::Json.decode_server(&bytes).unwrap() {
        ServerFrame::Event(e) => e,
        other => panic!("not an event: {other:?}"),
    }
}
