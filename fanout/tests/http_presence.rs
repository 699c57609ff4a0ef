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
