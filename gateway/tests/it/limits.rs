//! Abuse limits on every op and transport, and identities nobody else can claim.

use std::net::SocketAddr;
use std::time::Duration;

use herald_proto::frame::{ErrorFrame, ServerFrame};
use herald_proto::ErrorCode;
use herald_testkit::client::{Connect, Incoming};
use herald_testkit::http::Sse;
use herald_testkit::{jwt, NatsServer, TestGateway, WsClient};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    crate::request(addr, method, path, &auth, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_are_rate_limited_and_a_flood_closes_with_4029() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.op_rate = 1.0;
        c.max_subscriptions = 3;
    })
    .await;
    // Burst: max(--max-subscriptions, 2 × --op-rate) = 3.
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room("flooder")).await;
    for i in 0..3 {
        c.op(json!({"op": "unsubscribe", "id": i, "room": "r"})).await;
        assert!(matches!(c.recv().await, ServerFrame::Ack(_)), "op {i} within the burst");
    }
    c.op(json!({"op": "watch", "id": 9, "users": ["x"]})).await;
    match c.recv().await {
        ServerFrame::Error(ErrorFrame { code, message, .. }) => {
            assert_eq!(code, ErrorCode::RateLimited);
            assert!(message.contains("`watch`"), "{message}");
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    // Pings are not counted.
    c.op(json!({"op": "ping", "id": 10})).await;
    assert!(matches!(c.recv().await, ServerFrame::Pong(_)));
    // Ten refused ops in a row close the connection.
    for i in 0..12 {
        c.op(json!({"op": "presence", "id": 20 + i, "room": "r"})).await;
    }
    let code = loop {
        match c.next().await {
            Incoming::Closed(code) => break code,
            Incoming::Frame(_) => continue,
            Incoming::Eof => panic!("no close frame"),
        }
    };
    assert_eq!(code, 4029);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_http_clients_are_limited_per_address_whatever_sid_they_send() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["*".into()];
        c.anonymous_publish = vec!["*".into()];
        c.publish_rate = 2.0;
        c.op_rate = 1.0;
        c.max_subscriptions = 1;
    })
    .await;
    // Each request names a new sid, so each is a new anonymous user: they share the
    // address's bucket all the same, and so does a request without a sid.
    let addr = gw.addr;
    let publish = |path: String| async move { request(addr, "POST", &path, None, r#"{"room":"r","data":1}"#).await };
    let mut statuses = Vec::new();
    for n in 0..3 {
        statuses.push(publish(format!("/publish?sid=anonymous-{n:04}")).await.0);
    }
    statuses.push(publish("/publish".into()).await.0);
    assert_eq!(statuses, [200, 200, 429, 429]);
    // A user with a token has a bucket of its own.
    let token = jwt::any_room("member");
    assert_eq!(
        request(gw.addr, "POST", "/publish", Some(&token), r#"{"room":"r","data":1}"#)
            .await
            .0,
        200
    );

    // /poll, /sse and GET /presence: --op-rate per user (burst 2 here).
    let token = jwt::any_room("asker");
    let mut statuses = Vec::new();
    for path in ["/presence?room=r", "/poll?rooms=r", "/poll?rooms=r"] {
        statuses.push(request(gw.addr, "GET", path, Some(&token), "").await.0);
    }
    assert_eq!(statuses[2], 429, "{statuses:?}");
    let (status, body) = request(gw.addr, "GET", "/sse?rooms=r", Some(&token), "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_sessions_are_capped_and_keyed_by_user_and_sid() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.max_poll_sessions_per_user = 2;
        c.max_poll_sessions = 4;
    })
    .await;
    let poll = |token: String, sid: &str| {
        let path = format!("/poll?rooms=r&presence=1&sid={sid}");
        let addr = gw.addr;
        async move { request(addr, "GET", &path, Some(&token), "").await.0 }
    };
    let ann = jwt::any_room("ann");
    // Polls that ask for no presence or status open no session (none counts below).
    for sid in ["plain-sid-1", "plain-sid-2", "plain-sid-3"] {
        let path = format!("/poll?rooms=r&sid={sid}");
        assert_eq!(request(gw.addr, "GET", &path, Some(&ann), "").await.0, 200);
    }
    assert_eq!(poll(ann.clone(), "session-a1").await, 200);
    assert_eq!(poll(ann.clone(), "session-a2").await, 200);
    assert_eq!(
        poll(ann.clone(), "session-a1").await,
        200,
        "an existing session polls again"
    );
    assert_eq!(poll(ann.clone(), "session-a3").await, 429, "a third session for ann");
    // The same sid is another session for another user: it neither collides nor counts for ann.
    let bob = jwt::any_room("bob");
    assert_eq!(poll(bob.clone(), "session-a1").await, 200);
    assert_eq!(poll(bob.clone(), "session-b2").await, 200);
    assert_eq!(poll(jwt::any_room("cat"), "session-c1").await, 503, "the gateway's cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_identity_cannot_be_claimed_by_whoever_sees_it() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| c.allow_anonymous = true).await;
    let open = |sid: &str| Connect {
        url: format!("{}?sid={sid}", gw.ws_url()),
        ..Default::default()
    };
    let mut a = WsClient::open(open("secret-sid-123")).await.unwrap();
    let ServerFrame::Welcome(w) = a.recv().await else {
        panic!("welcome")
    };
    assert!(
        w.user.starts_with("anon-") && !w.user.contains("secret-sid-123"),
        "{}",
        w.user
    );
    // Knowing the user id (it is shown to every member) does not make one that user.
    let shown = w.user.trim_start_matches("anon-").to_owned();
    let mut b = WsClient::open(open(&shown)).await.unwrap();
    let ServerFrame::Welcome(w2) = b.recv().await else {
        panic!("welcome")
    };
    assert_ne!(w2.user, w.user);
    // And nobody else reads the user's personal room.
    b.op(json!({"op": "subscribe", "id": 1, "room": format!("user:{}", w.user)}))
        .await;
    match b.recv().await {
        ServerFrame::Error(ErrorFrame { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("expected forbidden, got {other:?}"),
    }
    a.op(json!({"op": "subscribe", "id": 1, "room": format!("user:{}", w.user)}))
        .await;
    assert!(matches!(a.recv().await, ServerFrame::Ack(_)), "the owner may");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_and_an_expired_sse_token_end_their_requests() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    // POST /publish whose body never comes: answered 400, the socket freed.
    let token = jwt::any_room("slow");
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{\"room\""
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gateway answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // An SSE stream ends when its token expires (the client must come back with a new one).
    let short = jwt::token("brief", 2, &["*"], &[]);
    let mut sse = Sse::open(gw.addr, &format!("/sse?rooms=r&token={short}"), &[])
        .await
        .unwrap();
    assert_eq!(sse.status, 200);
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while sse.next_event(Duration::from_secs(30)).await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended at expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_bounded_in_bytes() {
    let nats = NatsServer::start();
    let _gw = TestGateway::start_with(&nats.url(), |c| c.history_max_bytes = 10 << 20).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("HERALD_ROOMS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.max_bytes, 10 << 20);
}
