//! Panics injected at every await of the WebSocket session (reader and writer), `/sse` and
//! `/poll` (with presence and watch), through the `fail` points compiled in by the
//! `failpoints` feature (the gateway's dev-dependency on `fail` enables it for its tests).
//! After each one the gateway holds nothing for the failed client: no connection, no room
//! subscription, no NATS interest for its rooms, feeds or users, and fanout lists no member.
//! Other clients are unaffected, and the connection limit is whole again.
//!
//! One test in its own binary: fail points are process-wide.

use std::time::Duration;

use herald_proto::frame::ServerFrame;
use herald_testkit::client::Incoming;
use herald_testkit::{http, jwt, wait_until, NatsServer, Process, TestGateway, WsClient};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(15);

/// Subscriptions that exist only for a client: a room's live subject, a room's presence
/// diffs, a watched user's status.
fn client_interest(subject: &str) -> bool {
    ["herald.live.room.", "herald.presence.", "herald.status."]
        .iter()
        .any(|p| subject.starts_with(p))
}

struct Stack {
    nats: NatsServer,
    fanout: Process,
    gw: TestGateway,
}

impl Stack {
    /// Waits until the gateway, NATS and fanout hold nothing for any client.
    async fn assert_nothing_left(&self, case: &str) {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let conns = self.gw.metric("herald_gateway_connections{").await;
            let subs = self.gw.metric("herald_gateway_room_subscriptions").await;
            let pumps = self.gw.metric("herald_gateway_nats_subscriptions").await;
            let members = self.fanout.metric("herald_fanout_presence_members").await;
            let interest: Vec<String> = self
                .nats
                .subscriptions()
                .await
                .into_iter()
                .filter(|s| client_interest(s))
                .collect();
            if conns == 0.0 && subs == 0.0 && pumps == 0.0 && members == 0.0 && interest.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "after `{case}`, still: {conns} connections, {subs} room subscriptions, {pumps} room pumps, \
                 {members} fanout members, NATS interest in {interest:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn http_get(&self, path: &str) -> http::Response {
        http::get(self.gw.addr, path).await.expect("HTTP answers")
    }
}

/// A WebSocket client that holds a room with presence and a watched user.
async fn holder(gw: &TestGateway, user: &str) -> WsClient {
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room(user)).await;
    c.op(json!({"op": "subscribe", "id": 1, "room": "held", "presence": true}))
        .await;
    loop {
        if let ServerFrame::Presence(p) = c.recv().await {
            if p.members.is_some() {
                break;
            }
        }
    }
    c.op(json!({"op": "watch", "id": 2, "users": ["carol"]})).await;
    loop {
        if let ServerFrame::Status(_) = c.recv().await {
            break;
        }
    }
    c
}

/// Runs `trigger` with the fail point `point` set to panic, then checks the aftermath.
async fn with_panic<F, Fut>(stack: &Stack, point: &str, trigger: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    fail::cfg(point, "panic").expect("fail point configured");
    trigger().await;
    fail::remove(point);
    stack.assert_nothing_left(point).await;
}

async fn ws_case(stack: &Stack, point: &str, op: serde_json::Value) {
    let mut c = holder(&stack.gw, "victim").await;
    with_panic(stack, point, || async {
        c.op(op).await;
        // What the op did before the panic (an ack, a snapshot) may come first.
        let code = loop {
            match c.next().await {
                Incoming::Closed(code) => break code,
                Incoming::Eof => panic!("`{point}`: no close frame"),
                Incoming::Frame(_) => continue,
            }
        };
        assert_eq!(code, 1011, "`{point}` closes with 1011 (internal)");
        drop(c);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_at_any_await_leaves_nothing_behind() {
    // The gateway's dev-dependency on `fail` turns them on; without them every case
    // below would wait for a panic that never comes.
    assert!(fail::has_failpoints(), "fail points compiled in");
    let nats = NatsServer::start();
    let fanout = Process::fanout(&nats.url(), "f1", &["--leave-delay", "100ms"]);
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["*".into()];
        c.anonymous_publish = vec!["*".into()];
        c.max_connections = 3;
        c.room_linger = Duration::from_millis(50);
        c.poll_session_ttl = Duration::from_millis(500);
        // hyper learns that an SSE client went away when it next writes to it.
        c.sse_keepalive = Duration::from_secs(1);
    })
    .await;
    wait_until(SETTLE, "fanout ready", || async {
        http::get(fanout.admin, "/readyz").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let stack = Stack { nats, fanout, gw };

    // A clean close first: the checks hold when nothing went wrong.
    let mut bystander = WsClient::connect(&stack.gw.ws_url(), &jwt::any_room("bystander")).await;
    bystander.subscribe("calm", None).await;
    drop(bystander);
    stack.assert_nothing_left("a clean close").await;

    let subscribe = json!({"op": "subscribe", "id": 9, "room": "lobby", "presence": true});
    for point in ["ws.subscribe", "hub.attach", "ws.presence.join", "ws.presence.follow"] {
        ws_case(&stack, point, subscribe.clone()).await;
    }
    ws_case(
        &stack,
        "ws.publish",
        json!({"op": "publish", "id": 9, "room": "lobby", "data": 1}),
    )
    .await;
    ws_case(
        &stack,
        "ws.presence",
        json!({"op": "presence", "id": 9, "room": "lobby"}),
    )
    .await;
    for point in ["ws.watch", "ws.watch.statuses"] {
        ws_case(
            &stack,
            point,
            json!({"op": "watch", "id": 9, "users": ["dave", "erin"]}),
        )
        .await;
    }

    // The writer runs in the connection's task: its panic ends the connection (no close
    // frame, the writer is gone) and the session gives everything back.
    // Its frames go through the writer, not straight to the socket.
    let mut c = holder(&stack.gw, "victim").await;
    fail::cfg("outbound.direct", "return").expect("fail point configured");
    with_panic(&stack, "ws.write", || async {
        c.op(json!({"op": "ping", "id": 9})).await;
        match c.next().await {
            Incoming::Eof => {}
            other => panic!("`ws.write`: expected the connection to end, got {other:?}"),
        }
        drop(c);
    })
    .await;
    fail::remove("outbound.direct");

    let sse = "/sse?rooms=lobby,news&presence=1&watch=dave&name=v";
    for point in ["sse.positions", "sse.membership", "membership.join"] {
        with_panic(&stack, point, || async {
            let r = stack.http_get(sse).await;
            assert_eq!(r.status, 500, "`{point}` answers 500");
            assert!(r.body.contains(r#""code":"internal""#), "{}", r.body);
        })
        .await;
    }
    // After the response head: the stream ends (the client reconnects with Last-Event-ID).
    for point in [
        "sse.stream",
        "membership.feed",
        "membership.snapshot",
        "membership.statuses",
        "http.attach",
        "hub.attach",
    ] {
        with_panic(&stack, point, || async {
            let mut s = http::Sse::open(stack.gw.addr, sse, &[]).await.expect("SSE opens");
            assert_eq!(s.status, 200);
            while s.next_event(Duration::from_secs(10)).await.is_some() {}
        })
        .await;
    }

    let poll = "/poll?rooms=lobby,news&presence=1&watch=dave&sid=victim-sid-1&wait=20";
    for point in [
        "poll.touch",
        "poll.positions",
        "poll.extra",
        "http.attach",
        "hub.attach",
        "poll.feed",
        "poll.wait",
    ] {
        with_panic(&stack, point, || async {
            let r = stack.http_get(poll).await;
            assert_eq!(r.status, 500, "`{point}` answers 500");
        })
        .await;
    }

    // Every slot is free again: the limit's worth of clients connect.
    let mut all = Vec::new();
    for i in 0..3 {
        let mut c = WsClient::connect(&stack.gw.ws_url(), &jwt::any_room(&format!("after{i}"))).await;
        c.subscribe("lobby", None).await;
        all.push(c);
    }
    let refused = herald_testkit::client::Connect {
        url: stack.gw.ws_url(),
        token: Some(jwt::any_room("one-too-many")),
        ..Default::default()
    };
    assert_eq!(WsClient::open(refused).await.err(), Some(503));
    drop(all);
    stack.assert_nothing_left("the limit's worth of clients").await;

    // A client that goes away mid-request (hyper drops the handler's future) leaves nothing
    // behind either: a held long-poll and an SSE stream (found out at its next keep-alive),
    // with presence and watch.
    for path in [poll, sse] {
        let mut tcp = tokio::net::TcpStream::connect(stack.gw.addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut tcp, head.as_bytes())
            .await
            .unwrap();
        wait_until(SETTLE, "the request is held", || async {
            stack.gw.metric("herald_gateway_connections{").await == 1.0
                && stack.fanout.metric("herald_fanout_presence_members").await >= 1.0
        })
        .await;
        drop(tcp);
        stack.assert_nothing_left(path).await;
    }
}
