//! Crafted and flooding messages on the internal subjects (`herald.sys.gw.*`), published
//! on a real NATS next to a real gateway: fanout drops what no gateway sends (an id that
//! is too long or not its subject's, an over-large batch or snapshot part, more gateways
//! than it tracks), counts each drop by reason, keeps the real gateway's members, and
//! keeps answering snapshot requests during the flood.

use std::time::Duration;

use herald_proto::frame::ServerFrame;
use herald_testkit::client::Incoming;
use herald_testkit::{jwt, wait_until, NatsServer, Process, TestGateway, WsClient};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
/// Fanout's gateway timeout in these tests (testkit's default for fanout).
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(2);

async fn publish(nats: &async_nats::Client, gw_token: &str, body: serde_json::Value) {
    let subject = format!("herald.sys.gw.{gw_token}");
    nats.publish(subject, body.to_string().into()).await.expect("published");
}

/// Subscribes `user` to `room` with presence; the client, after the ack.
async fn join(gw: &TestGateway, user: &str, room: &str) -> WsClient {
    let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room(user)).await;
    c.op(json!({"op": "subscribe", "room": room, "presence": true, "id": 1}))
        .await;
    c
}

/// The users of the room's snapshot, asked with a `presence` op (diffs are skipped).
async fn snapshot(c: &mut WsClient, room: &str) -> Vec<String> {
    c.op(json!({"op": "presence", "room": room, "id": "p"})).await;
    loop {
        if let ServerFrame::Presence(p) = c.recv().await {
            if p.id.is_some() {
                return p.members.unwrap_or_default().into_iter().map(|m| m.user).collect();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_and_flooding_sys_messages_are_dropped_and_the_real_members_stay() {
    let nats = NatsServer::start();
    let f = Process::fanout(&nats.url(), "f1", &["--leave-delay", "0s"]);
    let gw = TestGateway::start_with(&nats.url(), |c| c.presence_heartbeat = Duration::from_millis(200)).await;
    f.wait_ready().await;
    wait_until(WAIT, "fanout leads", || async {
        f.metric("herald_fanout_leader{partition=\"0\"}").await == 1.0
    })
    .await;
    let mut alice = join(&gw, "alice", "lobby").await;
    wait_until(WAIT, "alice is a member", || async {
        f.metric("herald_fanout_presence_members").await == 1.0
    })
    .await;

    let hostile = async_nats::connect(nats.url()).await.expect("NATS connects");
    // Another subject speaking for the real gateway: an empty snapshot of a new epoch
    // would replace its membership.
    let impostor = json!({"gw": gw.id, "epoch": 999, "k": "snapshot", "seq": 0, "part": 0, "parts": 1,
                          "conns": [], "members": []});
    publish(&hostile, "evil", impostor).await;
    // An id longer than any gateway's (on its own subject).
    let long = "g".repeat(300);
    publish(
        &hostile,
        &long,
        json!({"gw": long, "epoch": 1, "k": "heartbeat", "seq": 0}),
    )
    .await;
    // A batch and a snapshot part larger than any gateway sends.
    let opens: Vec<_> = (0..5000)
        .map(|i| json!({"c": "open", "conn": format!("c{i}"), "user": "u"}))
        .collect();
    publish(
        &hostile,
        "big",
        json!({"gw": "big", "epoch": 1, "k": "changes", "first": 1, "changes": opens}),
    )
    .await;
    let conns: Vec<_> = (0..20_000)
        .map(|i| json!({"conn": format!("c{i}"), "user": "u"}))
        .collect();
    let part = json!({"gw": "bigsnap", "epoch": 1, "k": "snapshot", "seq": 0, "part": 0, "parts": 1,
                      "conns": conns, "members": []});
    publish(&hostile, "bigsnap", part).await;
    hostile.flush().await.expect("flushed");
    for reason in ["subject_mismatch", "gateway_id", "too_many_items"] {
        let want = if reason == "too_many_items" { 2.0 } else { 1.0 };
        wait_until(WAIT, &format!("dropped as {reason}"), || async {
            f.metric(&format!("herald_fanout_sys_dropped_total{{reason=\"{reason}\"}}"))
                .await
                == want
        })
        .await;
    }

    // A flood: batches from 1,100 made-up gateways, more than fanout tracks.
    let flood = tokio::spawn(async move {
        for i in 0..1100 {
            let gw = format!("flood-{i}");
            let changes: Vec<_> = (0..50)
                .map(|j| json!({"c": "open", "conn": format!("{gw}-{j}"), "user": format!("u{j}")}))
                .collect();
            publish(
                &hostile,
                &gw,
                json!({"gw": gw, "epoch": 1, "k": "changes", "first": 1, "changes": changes}),
            )
            .await;
        }
        hostile.flush().await.expect("flushed");
    });
    // Meanwhile a snapshot request is answered, and holds alice.
    let mut bob = join(&gw, "bob", "lobby").await;
    let users = tokio::time::timeout(Duration::from_secs(3), snapshot(&mut bob, "lobby"))
        .await
        .expect("a snapshot during the flood");
    assert!(users.contains(&"alice".to_owned()), "{users:?}");
    flood.await.expect("flood sent");
    wait_until(WAIT, "gateways past the bound dropped", || async {
        f.metric("herald_fanout_sys_dropped_total{reason=\"too_many_gateways\"}")
            .await
            >= 1.0
    })
    .await;

    // The made-up gateways expire (they send no heartbeats); the real one never does: alice
    // is not seen leaving for longer than the gateway timeout, and stays in the snapshot.
    let quiet = tokio::time::Instant::now() + GATEWAY_TIMEOUT + Duration::from_secs(1);
    loop {
        let left = quiet.saturating_duration_since(tokio::time::Instant::now());
        match alice.next_within(left).await {
            None => break,
            Some(Incoming::Frame(ServerFrame::Presence(p))) => {
                assert!(!p.left.iter().any(|m| m.user == "alice"), "alice left: {p:?}");
            }
            Some(Incoming::Frame(_)) => {}
            Some(other) => panic!("alice's connection: {other:?}"),
        }
    }
    let users = tokio::time::timeout(WAIT, snapshot(&mut bob, "lobby"))
        .await
        .expect("a snapshot");
    assert_eq!(users, ["alice", "bob"]);
    assert!(f.metric("herald_fanout_gateways").await <= 1025.0);
}
