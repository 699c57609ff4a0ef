//! Presence and status over the HTTP transports: SSE streams and polling sessions are
//! members and online like WebSocket connections, on any gateway.

use std::time::Duration;

use herald_proto::frame::{Presence, ServerFrame, Status};
use herald_testkit::http::{self, Sse};
use herald_testkit::{jwt, wait_until, NatsServer, Process, TestGateway, WsClient};
use serde_json::{json, Value};

async fn stack() -> (NatsServer, Process, TestGateway, TestGateway) {
    let nats = NatsServer::start();
    let f = Process::fanout(&nats.url(), "f1", &[]);
    let edit = |c: &mut herald_gateway::Config| {
        c.presence_heartbeat = Duration::from_millis(200);
        c.poll_session_ttl = Duration::from_secs(2);
    };
    let a = TestGateway::start_with(&nats.url(), edit).await;
    let b = TestGateway::start_with(&nats.url(), edit).await;
    f.wait_ready().await;
    wait_until(Duration::from_secs(10), "a leader", || async {
        f.metric("herald_fanout_leader{partition=\"0\"}").await == 1.0
    })
    .await;
    (nats, f, a, b)
}

fn users(p: &Presence) -> Vec<String> {
    p.members.iter().flatten().map(|m| m.user.clone()).collect()
}

/// Reads the WebSocket client's presence frames until its view of `room` equals `want`.
async fn ws_sees(c: &mut WsClient, want: &[&str]) {
    let mut members: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while members != want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_within(left).await {
            Some(herald_testkit::client::Incoming::Frame(ServerFrame::Presence(p))) => {
                if let Some(all) = &p.members {
                    members = all.iter().map(|m| m.user.clone()).collect();
                }
                members.extend(p.joined.iter().map(|m| m.user.clone()));
                members.retain(|u| !p.left.iter().any(|m| &m.user == u));
                members.sort();
                members.dedup();
            }
            other => panic!("expected presence frames towards {want:?}, got {other:?} (view {members:?})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_are_members_and_carry_presence_and_status() {
    let (_nats, _f, a, b) = stack().await;
    let mut alice = WsClient::connect(&a.ws_url(), &jwt::any_room("alice")).await;
    alice
        .op(json!({"op": "subscribe", "room": "lobby", "presence": true}))
        .await;
    assert!(matches!(alice.recv().await, ServerFrame::Ack(_)));
    ws_sees(&mut alice, &["alice"]).await;

    let token = jwt::any_room("bob");
    let path = format!("/sse?rooms=lobby&presence=1&watch=alice&token={token}");
    let mut bob = Sse::open(b.addr, &path, &[]).await.unwrap();
    assert_eq!(bob.status, 200);
    let first = bob.next_event(Duration::from_secs(5)).await.expect("snapshot");
    assert_eq!(first.event.as_deref(), Some("presence"));
    assert_eq!(first.id, None, "presence frames do not move the cursor");
    let snap: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snap["t"], "presence");
    let snap: Presence = serde_json::from_value(snap).unwrap();
    assert_eq!(users(&snap), ["alice", "bob"]);
    let status = bob.next_event(Duration::from_secs(5)).await.expect("status");
    assert_eq!(status.event.as_deref(), Some("status"));
    assert_eq!(
        serde_json::from_str::<Value>(&status.data).unwrap(),
        json!({"t": "status", "user": "alice", "online": true})
    );
    ws_sees(&mut alice, &["alice", "bob"]).await;

    // Alice leaves the room: bob's stream gets the diff; she closes: bob gets her status.
    alice.op(json!({"op": "unsubscribe", "room": "lobby"})).await;
    let mut saw_leave = false;
    let mut saw_offline = false;
    while !(saw_leave && saw_offline) {
        let ev = bob
            .next_event(Duration::from_secs(5))
            .await
            .expect("a presence or status event");
        match ev.event.as_deref() {
            Some("presence") => {
                let p: Presence = serde_json::from_str(&ev.data).unwrap();
                if p.left.iter().any(|m| m.user == "alice") {
                    saw_leave = true;
                    drop(std::mem::replace(
                        &mut alice,
                        WsClient::connect(&a.ws_url(), &jwt::any_room("carol")).await,
                    ));
                }
            }
            Some("status") if ev.data.contains("\"online\":true") => {}
            Some("status") => {
                let s: Status = serde_json::from_value(
                    serde_json::from_str::<Value>(&ev.data)
                        .map(|mut v| {
                            v.as_object_mut().unwrap().remove("t");
                            v
                        })
                        .unwrap(),
                )
                .unwrap();
                assert_eq!(
                    s,
                    Status {
                        user: "alice".into(),
                        online: false
                    }
                );
                assert!(saw_leave, "offline comes after she closed");
                saw_offline = true;
            }
            other => panic!("unexpected SSE event {other:?}: {ev:?}"),
        }
    }

    // Bob's stream ends: he leaves lobby (after the leave delay).
    drop(bob);
    wait_until(Duration::from_secs(5), "bob gone", || async {
        let mut c = WsClient::connect(&a.ws_url(), &jwt::any_room("dave")).await;
        c.op(json!({"op": "presence", "room": "lobby", "id": 2})).await;
        matches!(c.recv().await, ServerFrame::Presence(p) if p.count == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_sessions_are_members_across_gateways_until_they_stop() {
    let (_nats, _f, a, b) = stack().await;
    let mut alice = WsClient::connect(&a.ws_url(), &jwt::any_room("alice")).await;
    alice
        .op(json!({"op": "subscribe", "room": "lobby", "presence": true}))
        .await;
    assert!(matches!(alice.recv().await, ServerFrame::Ack(_)));
    ws_sees(&mut alice, &["alice"]).await;

    let token = jwt::any_room("pat");
    // Without a session id, presence is refused.
    let r = http::get(a.addr, &format!("/poll?rooms=lobby&presence=1&token={token}"))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);

    // Ajax polls alternating between the gateways: one member, answers hold the snapshot.
    for (i, gw) in [a.addr, b.addr, a.addr].into_iter().enumerate() {
        let path = format!("/poll?rooms=lobby&presence=lobby&watch=alice&sid=pat-tab-1&wait=0&token={token}");
        let r = http::get(gw, &path).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["events"], json!([]));
        assert_eq!(body["status"], json!([{"user": "alice", "online": true}]));
        let snap: Presence = serde_json::from_value(body["presence"][0].clone()).unwrap();
        assert_eq!(users(&snap), ["alice", "pat"], "poll {i}");
    }
    ws_sees(&mut alice, &["alice", "pat"]).await;

    // A long-poll ends early when presence changes, and its answer holds the new snapshot.
    let path = format!("/poll?rooms=lobby&presence=lobby&sid=pat-tab-1&wait=20&token={token}");
    let b_addr = b.addr;
    let poll = tokio::spawn(async move { http::get(b_addr, &path).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut carol = WsClient::connect(&a.ws_url(), &jwt::any_room("carol")).await;
    carol
        .op(json!({"op": "subscribe", "room": "lobby", "presence": true}))
        .await;
    let r = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("woken")
        .unwrap();
    let body: Value = serde_json::from_str(&r.body).unwrap();
    let snap: Presence = serde_json::from_value(body["presence"][0].clone()).unwrap();
    assert_eq!(users(&snap), ["alice", "carol", "pat"]);

    // No more polls: pat leaves once the session's time to live (2 s) and the leave delay pass.
    let mut view = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !view.iter().any(|u: &String| u == "pat") {
        match alice
            .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            Some(herald_testkit::client::Incoming::Frame(ServerFrame::Presence(p))) => {
                view.extend(p.left.iter().map(|m| m.user.clone()));
            }
            other => panic!("expected pat to leave, got {other:?}"),
        }
    }
    assert_eq!(view, ["pat"]);
}

/// Reads presence frames for `within`; returns the users that joined and left, in order.
async fn presence_changes(c: &mut WsClient, within: Duration) -> (Vec<String>, Vec<String>) {
    let (mut joined, mut left) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_within(rest).await {
            None => return (joined, left),
            Some(herald_testkit::client::Incoming::Frame(ServerFrame::Presence(p))) => {
                joined.extend(p.joined.iter().map(|m| m.user.clone()));
                left.extend(p.left.iter().map(|m| m.user.clone()));
            }
            other => panic!("expected presence frames, got {other:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    Joins,
    Leaves,
}

/// Waits (5 s at most) until `user` joins or leaves in `alice`'s view; nothing else may
/// change (alice's own join may still come as a diff after her snapshot).
async fn changes(alice: &mut WsClient, user: &str, change: Change) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
        match alice.next_within(rest).await {
            Some(herald_testkit::client::Incoming::Frame(ServerFrame::Presence(p))) => {
                let joined: Vec<&str> = p
                    .joined
                    .iter()
                    .map(|m| m.user.as_str())
                    .filter(|u| *u != "alice")
                    .collect();
                let left: Vec<&str> = p.left.iter().map(|m| m.user.as_str()).collect();
                let (seen, other) = match change {
                    Change::Joins => (joined, left),
                    Change::Leaves => (left, joined),
                };
                assert!(other.is_empty(), "{p:?}");
                if seen == [user] {
                    return;
                }
                assert!(seen.is_empty(), "{p:?}");
            }
            other => panic!("expected {user} {change:?} within 5 s, got {other:?}"),
        }
    }
}

async fn post(addr: std::net::SocketAddr, path: &str) -> u16 {
    let raw = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    http::request(addr, &raw).await.unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_client_leaves_when_it_says_so_or_its_long_poll_is_dropped() {
    let nats = NatsServer::start();
    let f = Process::fanout(&nats.url(), "f1", &[]);
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.presence_heartbeat = Duration::from_millis(200);
        // Long enough that only a leave or the grace can explain a departure.
        c.poll_session_ttl = Duration::from_secs(60);
        c.poll_leave_grace = Duration::from_millis(500);
    })
    .await;
    f.wait_ready().await;
    let mut alice = WsClient::connect(&gw.ws_url(), &jwt::any_room("alice")).await;
    alice
        .op(json!({"op": "subscribe", "room": "lobby", "presence": true}))
        .await;
    assert!(matches!(alice.recv().await, ServerFrame::Ack(_)));
    ws_sees(&mut alice, &["alice"]).await;

    // An ajax poller says it leaves (herald.js on `pagehide`): gone within the leave delay.
    let pat = jwt::any_room("pat");
    let poll = format!("/poll?rooms=lobby&presence=1&sid=pat-tab-1&wait=0&token={pat}");
    assert_eq!(http::get(gw.addr, &poll).await.unwrap().status, 200);
    changes(&mut alice, "pat", Change::Joins).await;
    assert_eq!(
        post(gw.addr, &format!("/poll/leave?sid=pat-tab-1&token={pat}")).await,
        204
    );
    changes(&mut alice, "pat", Change::Leaves).await;
    // Idempotent; authenticated and keyed like /poll.
    assert_eq!(
        post(gw.addr, &format!("/poll/leave?sid=pat-tab-1&token={pat}")).await,
        204
    );
    assert_eq!(post(gw.addr, &format!("/poll/leave?token={pat}")).await, 400);
    assert_eq!(post(gw.addr, "/poll/leave?sid=pat-tab-1&token=forged").await, 401);
    assert_eq!(post(gw.addr, &format!("/poll/leave?sid=a%0Ab&token={pat}")).await, 400);

    // Another user's leave does not end pat's session: the sid is pat's.
    assert_eq!(http::get(gw.addr, &poll).await.unwrap().status, 200);
    changes(&mut alice, "pat", Change::Joins).await;
    let mallory = jwt::any_room("mallory");
    assert_eq!(
        post(gw.addr, &format!("/poll/leave?sid=pat-tab-1&token={mallory}")).await,
        204
    );
    let (joined, left) = presence_changes(&mut alice, Duration::from_secs(2)).await;
    assert!(joined.is_empty() && left.is_empty(), "{joined:?} {left:?}");
    assert_eq!(
        post(gw.addr, &format!("/poll/leave?sid=pat-tab-1&token={pat}")).await,
        204
    );
    changes(&mut alice, "pat", Change::Leaves).await;

    // A long-poll whose client goes away (a closed tab) starts the grace, not the TTL.
    // Quinn joins with a poll that does not wait first: a presence change ends a long-poll's
    // wait, so quinn's own join could answer (and so keep) the long-poll this drops.
    let quinn = jwt::any_room("quinn");
    let join = format!("/poll?rooms=lobby&presence=1&sid=quinn-tab-1&wait=0&token={quinn}");
    assert_eq!(http::get(gw.addr, &join).await.unwrap().status, 200);
    changes(&mut alice, "quinn", Change::Joins).await;
    let long = format!("/poll?rooms=lobby&presence=1&sid=quinn-tab-1&wait=30&token={quinn}");
    let waiting = "herald_gateway_connections{transport=\"long-poll\"}";
    let before = gw.metric(waiting).await;
    let held = {
        let long = long.clone();
        let addr = gw.addr;
        tokio::spawn(async move { http::get(addr, &long).await })
    };
    // Dropped only once the gateway holds it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.metric(waiting).await <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long-poll is held within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    held.abort();
    changes(&mut alice, "quinn", Change::Leaves).await;

    // A reload (a new poll within the grace) is no departure; nor is a dropped long-poll
    // while another of the session is still held.
    let first = {
        let long = long.clone();
        let addr = gw.addr;
        tokio::spawn(async move { http::get(addr, &long).await })
    };
    changes(&mut alice, "quinn", Change::Joins).await;
    let second = {
        let long = long.clone();
        let addr = gw.addr;
        tokio::spawn(async move { http::get(addr, &long).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.abort();
    let (joined, left) = presence_changes(&mut alice, Duration::from_secs(3)).await;
    assert!(joined.is_empty() && left.is_empty(), "{joined:?} {left:?}");
    second.abort();
    changes(&mut alice, "quinn", Change::Leaves).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_answer_holds_the_snapshots_its_byte_budget_allows_and_the_next_the_rest() {
    let nats = NatsServer::start();
    let f = Process::fanout(&nats.url(), "f1", &[]);
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.presence_heartbeat = Duration::from_millis(200);
        // About one snapshot of eight long-named members per answer.
        c.replay_max_bytes = 1500;
    })
    .await;
    f.wait_ready().await;
    let rooms = ["big1", "big2", "big3"];
    let mut members = Vec::new();
    for n in 0..8 {
        let user = format!("member-{n}-{}", "x".repeat(80));
        let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room(&user)).await;
        for room in rooms {
            c.op(json!({"op": "subscribe", "room": room, "presence": true})).await;
            assert!(matches!(c.recv().await, ServerFrame::Ack(_)));
            assert!(matches!(c.recv().await, ServerFrame::Presence(_)), "the snapshot");
        }
        members.push(c);
    }
    let token = jwt::any_room("poller");
    let poll = || async {
        let raw = format!(
            "GET /poll?rooms=big1,big2,big3&presence=1&sid=poller-sid-0001 HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let r = http::request(gw.addr, &raw).await.expect("HTTP answer");
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str::<Value>(&r.body).unwrap()
    };
    // Every room's snapshot counts its 8 members and the poller.
    wait_until(Duration::from_secs(10), "fanout sees every member", || async {
        let answer = poll().await;
        answer["presence"]
            .as_array()
            .is_some_and(|p| p.first().is_some_and(|s| s["count"] == 9))
    })
    .await;
    // Each answer is within its budget and says `more` until its round of answers has
    // brought every room's members; the next round starts over.
    let mut seen: Vec<String> = Vec::new();
    let mut rounds_ended = 0;
    for _ in 0..8 {
        let answer = poll().await;
        let presence = answer["presence"].as_array().expect("presence").clone();
        assert!(
            presence.len() < rooms.len(),
            "the whole presence in one answer: {answer}"
        );
        for p in &presence {
            assert_eq!(p["members"].as_array().map(Vec::len), Some(9), "{p}");
            seen.push(p["room"].as_str().unwrap().to_owned());
        }
        if answer["more"] != json!(true) {
            rounds_ended += 1;
        }
    }
    assert!(rounds_ended >= 2, "rounds end: {rounds_ended} in 8 answers");
    seen.sort();
    seen.dedup();
    assert_eq!(seen, rooms, "every room's members came");
}
