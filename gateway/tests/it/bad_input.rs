//! Every kind of bad input gets the contract's status, error or close code, and a bystander
//! on the same gateway keeps receiving everything meanwhile.

use std::time::{Duration, Instant};

use fastwebsockets::OpCode;
use herald_proto::frame::{ErrorFrame, Id, ServerFrame};
use herald_proto::ErrorCode;
use herald_testkit::client::{Connect, Incoming};
use herald_testkit::{jwt, NatsServer, TestGateway, WsClient};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend_publish;

async fn gateway(nats: &NatsServer) -> TestGateway {
    TestGateway::start_with(&nats.url(), |c| {
        c.allowed_origins = vec!["https://app.example.com".into()];
        c.max_message_bytes = 1024;
        c.max_subscriptions = 3;
        c.publish_rate = 2.0;
    })
    .await
}

fn error_code(frame: ServerFrame) -> (Option<Id>, ErrorCode) {
    match frame {
        ServerFrame::Error(ErrorFrame { id, code, .. }) => (id, code),
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn open(url: &str, token: Option<String>, protocols: &[&str], origin: Option<&str>) -> Result<WsClient, u16> {
    WsClient::open(Connect {
        url: url.to_owned(),
        token,
        token_in_header: true,
        protocols: protocols.iter().map(|s| s.to_string()).collect(),
        origin: origin.map(str::to_owned),
        ..Connect::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_code_and_harms_no_one_else() {
    let nats = NatsServer::start();
    let gw = gateway(&nats).await;
    let url = gw.ws_url();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let good = jwt::any_room("bystander");

    let mut bystander = WsClient::connect(&url, &good).await;
    bystander.subscribe("lobby", None).await;
    let mut expected = 0u64;
    let mut tick = || {
        expected += 1;
        expected
    };

    // Refused upgrades.
    assert_eq!(
        open(&url, Some(good.clone()), &["mqtt"], None).await.err(),
        Some(400),
        "unknown sub-protocol"
    );
    assert_eq!(
        open(&url, Some("not.a.jwt".into()), &[], None).await.err(),
        Some(401),
        "bad token"
    );
    let wrong_key = herald_testkit::jwt::sign(
        &herald_proto::claims::Claims {
            sub: "x".into(),
            exp: jwt::now() + 60,
            iat: None,
            name: None,
            herald: None,
        },
        "another-secret",
    );
    assert_eq!(
        open(&url, Some(wrong_key), &[], None).await.err(),
        Some(401),
        "wrong key"
    );
    assert_eq!(
        open(&url, Some(jwt::token("x", -10, &["*"], &[])), &[], None)
            .await
            .err(),
        Some(401),
        "expired token"
    );
    assert_eq!(
        open(&url, None, &[], None).await.err(),
        Some(401),
        "no token without anonymous mode"
    );
    assert_eq!(
        open(&url, Some(good.clone()), &[], Some("https://evil.example"))
            .await
            .err(),
        Some(403),
        "wrong Origin"
    );
    assert!(
        open(&url, Some(good.clone()), &[], Some("https://app.example.com"))
            .await
            .is_ok(),
        "allowed Origin"
    );
    backend_publish(&client, "lobby", json!(tick())).await;

    // Wrong frame type for the protocol: 1003.
    let mut c = WsClient::connect(&url, &good).await;
    c.send_raw(OpCode::Binary, vec![0x80]).await;
    assert_eq!(c.expect_close().await, 1003, "binary frame on JSON");
    let mut c = WsClient::connect_codec(&url, &good, herald_proto::Codec::MsgPack).await;
    c.send_raw(OpCode::Text, b"{}".to_vec()).await;
    assert_eq!(c.expect_close().await, 1003, "text frame on MessagePack");

    // Invalid UTF-8, whole and fragmented: 1007. Undecodable MessagePack: 1007.
    let mut c = WsClient::connect(&url, &good).await;
    c.send_raw(OpCode::Text, vec![b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(c.expect_close().await, 1007, "invalid UTF-8");
    let mut c = WsClient::connect(&url, &good).await;
    c.send_fragment(false, OpCode::Text, vec![b'"', 0xce]).await;
    c.send_fragment(true, OpCode::Continuation, vec![0x20, b'"']).await;
    assert_eq!(c.expect_close().await, 1007, "invalid UTF-8 across fragments");
    let mut c = WsClient::connect_codec(&url, &good, herald_proto::Codec::MsgPack).await;
    c.send_raw(OpCode::Binary, vec![0x92, 0x01]).await;
    assert_eq!(c.expect_close().await, 1007, "undecodable MessagePack");
    backend_publish(&client, "lobby", json!(tick())).await;

    // Oversized, whole and fragmented: 1009.
    let mut c = WsClient::connect(&url, &good).await;
    c.send_raw(OpCode::Text, vec![b' '; 2000]).await;
    assert_eq!(c.expect_close().await, 1009, "oversized frame");
    let mut c = WsClient::connect(&url, &good).await;
    c.send_fragment(false, OpCode::Text, vec![b' '; 600]).await;
    c.send_fragment(true, OpCode::Continuation, vec![b' '; 600]).await;
    assert_eq!(c.expect_close().await, 1009, "oversized fragmented message");

    // Errors that keep the connection open.
    let limited = jwt::token("eve", 3600, &["lobby", "a", "b", "c", "d"], &["lobby"]);
    let mut c = WsClient::connect(&url, &limited).await;
    c.send_raw(OpCode::Text, b"{not json".to_vec()).await;
    assert_eq!(
        error_code(c.recv().await),
        (None, ErrorCode::BadRequest),
        "malformed JSON"
    );
    c.op(json!({"op": "subscribe", "id": 1})).await;
    assert_eq!(
        error_code(c.recv().await),
        (Some(Id::Num(1)), ErrorCode::BadRequest),
        "missing room"
    );
    c.op(json!({"op": "teleport", "id": 2})).await;
    assert_eq!(
        error_code(c.recv().await),
        (Some(Id::Num(2)), ErrorCode::BadRequest),
        "unknown op"
    );
    c.op(json!({"op": "subscribe", "id": 3, "room": "secret"})).await;
    assert_eq!(
        error_code(c.recv().await),
        (Some(Id::Num(3)), ErrorCode::Forbidden),
        "forbidden room"
    );
    c.op(json!({"op": "subscribe", "id": 4, "room": "user:alice"})).await;
    assert_eq!(
        error_code(c.recv().await),
        (Some(Id::Num(4)), ErrorCode::Forbidden),
        "someone else's personal room"
    );
    c.op(json!({"op": "subscribe", "id": 5, "room": "bad.room"})).await;
    assert_eq!(
        error_code(c.recv().await),
        (Some(Id::Num(5)), ErrorCode::BadRequest),
        "invalid room name"
    );
    c.op(json!({"op": "publish", "id": 6, "room": "a", "data": 1})).await;
    assert_eq!(
        error_code(c.recv().await),
        (Some(Id::Num(6)), ErrorCode::Forbidden),
        "publish without the grant"
    );
    for room in ["a", "b", "c"] {
        c.subscribe(room, None).await;
    }
    c.op(json!({"op": "subscribe", "id": 7, "room": "d"})).await;
    assert_eq!(
        error_code(c.recv().await),
        (Some(Id::Num(7)), ErrorCode::TooManySubscriptions)
    );
    // The personal room does not need a grant, but it counts toward the limit.
    c.op(json!({"op": "subscribe", "id": 9, "room": "user:eve"})).await;
    assert_eq!(
        error_code(c.recv().await),
        (Some(Id::Num(9)), ErrorCode::TooManySubscriptions)
    );
    c.op(json!({"op": "ping", "id": 8})).await;
    assert!(
        matches!(c.recv().await, ServerFrame::Pong(_)),
        "still open after all of that"
    );
    backend_publish(&client, "lobby", json!(tick())).await;

    // Publish flood: rate_limited errors, then 4029.
    let flooder = jwt::any_room("flooder");
    let mut c = WsClient::connect(&url, &flooder).await;
    for i in 0..40 {
        c.op(json!({"op": "publish", "id": i, "room": "flood", "data": i}))
            .await;
    }
    let mut acks = 0;
    let mut limited = 0;
    let code = loop {
        match c.next().await {
            Incoming::Frame(ServerFrame::Ack(_)) => acks += 1,
            Incoming::Frame(ServerFrame::Error(e)) => {
                assert_eq!(e.code, ErrorCode::RateLimited);
                limited += 1;
            }
            Incoming::Closed(code) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 4029);
    // The burst (2) is stored; its acks may still be in flight when the connection closes.
    assert!(acks <= 2, "only the burst is let through: {acks}");
    assert_eq!(limited, 9, "nine rate_limited errors, then the tenth strike closes");

    // The bystander saw every event, in order, and nothing else.
    for n in 1..=expected {
        let e = bystander.event().await;
        assert_eq!(e.data, Some(json!(n)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed_after_two_intervals() {
    let nats = NatsServer::start();
    let interval = Duration::from_millis(300);
    let gw = TestGateway::start_with(&nats.url(), |c| c.ping_interval = interval).await;
    let started = Instant::now();
    let mut quiet = WsClient::connect(&gw.ws_url(), &jwt::any_room("quiet")).await;
    quiet.set_auto_pong(false);
    let mut lively = WsClient::connect(&gw.ws_url(), &jwt::any_room("lively")).await;
    // The lively client answers pings (automatically, while it reads).
    let lively_task = tokio::spawn(async move {
        let r = lively.next_within(interval * 8).await;
        (r, lively)
    });
    let code = quiet.expect_close().await;
    assert_eq!(code, 1001);
    assert!(
        started.elapsed() >= interval * 2,
        "closed before two intervals: {:?}",
        started.elapsed()
    );
    let (r, mut lively) = lively_task.await.unwrap();
    assert_eq!(r, None, "the answering client is not closed");
    lively.op(json!({"op": "ping"})).await;
    assert!(matches!(lively.recv().await, ServerFrame::Pong(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_dropped() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| c.handshake_timeout = Duration::from_millis(500)).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("the gateway hangs up")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || answer.starts_with("HTTP/1.1 408"),
        "unexpected answer {answer:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    // The gateway still serves others.
    WsClient::connect(&gw.ws_url(), &jwt::any_room("after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_mid_session_closes_with_1008() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::token("brief", 2, &["*"], &[])).await;
    c.subscribe("lobby", None).await;
    assert_eq!(c.expect_close().await, 1008);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_503() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| c.max_connections = 2).await;
    let token = jwt::any_room("many");
    let _a = WsClient::connect(&gw.ws_url(), &token).await;
    let _b = WsClient::connect(&gw.ws_url(), &token).await;
    assert_eq!(
        open(&gw.ws_url(), Some(token.clone()), &[], None).await.err(),
        Some(503)
    );
    drop(_a);
    herald_testkit::wait_until(Duration::from_secs(5), "a slot to free up", || {
        let (url, token) = (gw.ws_url(), token.clone());
        async move { open(&url, Some(token), &[], None).await.is_ok() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_a_steady_stream_gets_a_ping_every_interval_and_is_never_closed() {
    let nats = NatsServer::start();
    let interval = Duration::from_millis(200);
    let gw = TestGateway::start_with(&nats.url(), |c| c.ping_interval = interval).await;
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room("busy")).await;
    c.subscribe("busy", None).await;
    c.set_auto_pong(false);

    // A backend keeps the room busy, so the gateway is often writing when a ping falls due
    // (session.rs's unit test makes that deterministic; this is the whole path).
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let flood = tokio::spawn(async move {
        for n in 0u64.. {
            nc.publish("herald.room.busy", n.to_string().into()).await.unwrap();
            if n % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let run = interval * 20;
    let deadline = Instant::now() + run;
    let (mut pings, mut events) = (0u32, 0u64);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match c.raw_within(left).await {
            Some((OpCode::Ping, payload)) => {
                pings += 1;
                c.send_raw(OpCode::Pong, payload).await;
            }
            Some((OpCode::Text, _)) => events += 1,
            Some((OpCode::Close, payload)) => {
                let code = payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                panic!("closed with {code:?} after {pings} pings and {events} events");
            }
            Some(_) => {}
            None => break,
        }
    }
    flood.abort();
    assert!(events > 1000, "the stream was busy: {events} events");
    // One ping per interval: the first falls due one interval in, so 20 in the run (the
    // last may cross the deadline).
    assert!(pings >= 19, "{pings} pings in {run:?} at one per {interval:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_frame_sent_in_the_same_write_as_the_upgrade_request_is_answered() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let token = jwt::any_room("eager");
    let mut bytes = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    // A masked text frame right behind the request: hyper reads it with the request.
    let payload = br#"{"op":"ping","id":7}"#;
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = br#"{"t":"pong","id":7}"#;
    while !got.windows(want.len()).any(|w| w == want) {
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no pong; got {:?}", String::from_utf8_lossy(&got)))
            .unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
}
