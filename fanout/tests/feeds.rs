//! What following presence and statuses costs a gateway: two NATS subscriptions (one
//! wildcard per kind) however many rooms and users its clients follow, and at most
//! `--max-feeds` followed subjects, past which a `watch` or a presence subscribe gets
//! `unavailable` and everything else keeps working. With a real nats-server, fanout as a
//! process and an in-process gateway.

use std::time::{Duration, Instant};

use herald_proto::frame::{Id, Presence, ServerFrame, Status};
use herald_proto::ErrorCode;
use herald_testkit::client::{Connect, Incoming};
use herald_testkit::{jwt, wait_until, NatsServer, Process, TestGateway, WsClient};
use serde_json::json;

const WATCHED: usize = 1000;
const ROOMS: usize = 100;

/// The next frame that is not presence fanout sent unasked: diffs (the follower's own joins
/// make some) and the snapshots a new leader publishes. A snapshot answering an op carries
/// the op's id.
async fn next_but_diffs(c: &mut WsClient) -> ServerFrame {
    loop {
        match c.recv().await {
            ServerFrame::Presence(p) if p.id.is_none() => continue,
            other => return other,
        }
    }
}

/// Subscribes to `room` with presence: the ack, then the snapshot.
async fn follow(c: &mut WsClient, room: &str) {
    c.op(json!({"op": "subscribe", "room": room, "presence": true, "id": room}))
        .await;
    match next_but_diffs(c).await {
        ServerFrame::Ack(a) => assert_eq!(a.room.as_deref(), Some(room)),
        other => panic!("{room}: expected the ack, got {other:?}"),
    }
    match next_but_diffs(c).await {
        ServerFrame::Presence(p) => assert_eq!(p.room, room),
        other => panic!("{room}: expected the snapshot, got {other:?}"),
    }
}

/// Reads until `want` comes; presence diffs and statuses of other users are skipped.
async fn wait_for(c: &mut WsClient, want: &ServerFrame) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c.next_within(deadline.saturating_duration_since(Instant::now())).await {
            Some(Incoming::Frame(f)) if f == *want => return,
            Some(Incoming::Frame(ServerFrame::Presence(_) | ServerFrame::Status(_))) => {}
            other => panic!("waiting for {want:?}, got {other:?}"),
        }
    }
}

/// Asserts that `f` is an `unavailable` error answering op `id`.
fn assert_unavailable(f: ServerFrame, id: &str) {
    match f {
        ServerFrame::Error(e) => assert_eq!((e.id, e.code), (Some(Id::Str(id.into())), ErrorCode::Unavailable)),
        other => panic!("{id}: expected unavailable, got {other:?}"),
    }
}

/// The subjects the gateway's NATS connection subscribes to, from nats-server's `/connz`.
async fn gateway_subscriptions(nats: &NatsServer, gw: &TestGateway) -> Vec<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], nats.monitor_port()));
    let body = herald_testkit::http::get(addr, "/connz?subs=1&limit=1000")
        .await
        .expect("/connz answers")
        .body;
    let v: serde_json::Value = serde_json::from_str(&body).expect("/connz is JSON");
    let name = format!("herald-gateway {}", gw.id);
    let conn = v["connections"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name.as_str()))
        .unwrap_or_else(|| panic!("no connection named {name}: {body}"));
    conn["subscriptions_list"]
        .as_array()
        .map(|subs| subs.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watched_users_and_a_hundred_presence_rooms_cost_two_subscriptions_under_a_cap() {
    let nats = NatsServer::start();
    let f = Process::fanout(&nats.url(), "f1", &[]);
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["*".into()];
        c.max_presence_rooms = ROOMS + 2;
        c.op_rate = 10_000.0;
        c.max_subscriptions = 2 * ROOMS;
        c.max_watch = WATCHED + 2;
        c.max_feeds = WATCHED + ROOMS + 1;
    })
    .await;
    f.wait_ready().await;
    wait_until(Duration::from_secs(10), "a fanout leader", || async {
        f.metric("herald_fanout_leader{partition=\"0\"}").await == 1.0
    })
    .await;

    // An anonymous client watches 999 random ids and bob, and follows 100 rooms' presence.
    let mut anon = WsClient::open(Connect {
        url: gw.ws_url(),
        ..Connect::default()
    })
    .await
    .expect("anonymous connection opens");
    assert!(matches!(anon.recv().await, ServerFrame::Welcome(_)));
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .subsec_nanos();
    let mut users: Vec<String> = (1..WATCHED).map(|i| format!("u{salt}-{i}")).collect();
    users.push("bob".into());
    anon.op(json!({"op": "watch", "users": users, "id": "w"})).await;
    assert!(matches!(anon.recv().await, ServerFrame::Ack(a) if a.id == Some(Id::Str("w".into()))));
    let mut offline = Vec::new();
    for _ in &users {
        match anon.recv().await {
            ServerFrame::Status(Status { user, online: false }) => offline.push(user),
            other => panic!("expected an offline status, got {other:?}"),
        }
    }
    offline.sort_unstable();
    users.sort_unstable();
    assert_eq!(offline, users);
    for i in 0..ROOMS {
        follow(&mut anon, &format!("r{i}")).await;
    }

    // Two subscriptions for all of that, counted in the gauge with the others the gateway
    // holds for clients (not its NATS client's reply inbox, fanout's sync requests and
    // commands, nor the stream-leader advisories that make it rescan its rooms).
    let subs: Vec<String> = gateway_subscriptions(&nats, &gw)
        .await
        .into_iter()
        .filter(|s| {
            !s.starts_with("_INBOX.")
                && s != "herald.sys.sync"
                && s != "herald.sys.ctl"
                && !s.starts_with("$JS.EVENT.ADVISORY.")
        })
        .collect();
    let mut feeds: Vec<&str> = subs
        .iter()
        .map(String::as_str)
        .filter(|s| s.starts_with("herald.presence.") || s.starts_with("herald.status."))
        .collect();
    feeds.sort_unstable();
    assert_eq!(feeds, ["herald.presence.*", "herald.status.>"], "all: {subs:?}");
    assert_eq!(
        gw.metric("herald_gateway_nats_subscriptions").await,
        subs.len() as f64,
        "the gauge counts every subscription: {subs:?}"
    );

    // The cap: 1,100 followed, 1,101 allowed. Two more users are refused whole...
    anon.op(json!({"op": "watch", "users": ["x1", "x2"], "id": "cap"}))
        .await;
    assert_unavailable(next_but_diffs(&mut anon).await, "cap");
    anon.op(json!({"op": "ping", "id": "ping"})).await;
    assert!(
        matches!(next_but_diffs(&mut anon).await, ServerFrame::Pong(_)),
        "and nothing else came"
    );
    // ...so one more room fits, and the next one's presence does not (its events do).
    follow(&mut anon, "last").await;
    anon.op(json!({"op": "subscribe", "room": "over", "presence": true, "id": "over"}))
        .await;
    assert!(matches!(next_but_diffs(&mut anon).await, ServerFrame::Ack(a) if a.room.as_deref() == Some("over")));
    assert_unavailable(next_but_diffs(&mut anon).await, "over");

    // What is followed already can still be followed by anyone.
    let mut carol = WsClient::connect(&gw.ws_url(), &jwt::any_room("carol")).await;
    carol.op(json!({"op": "watch", "users": ["bob"], "id": "w"})).await;
    assert!(matches!(next_but_diffs(&mut carol).await, ServerFrame::Ack(_)));
    let offline = ServerFrame::Status(Status {
        user: "bob".into(),
        online: false,
    });
    assert_eq!(next_but_diffs(&mut carol).await, offline);

    // bob comes online and joins r7: the watchers hear of it, r7's follower too.
    let mut bob = WsClient::connect(&gw.ws_url(), &jwt::any_room("bob")).await;
    bob.op(json!({"op": "subscribe", "room": "r7", "presence": true})).await;
    let online = ServerFrame::Status(Status {
        user: "bob".into(),
        online: true,
    });
    wait_for(&mut carol, &online).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut status, mut joined) = (false, false);
    while !(status && joined) {
        match anon
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Incoming::Frame(f)) if f == online => status = true,
            Some(Incoming::Frame(ServerFrame::Presence(Presence { room, joined: j, .. })))
                if room == "r7" && j.iter().any(|m| m.user == "bob") =>
            {
                joined = true
            }
            Some(Incoming::Frame(ServerFrame::Presence(_))) => {}
            other => panic!("waiting for bob's status and join, got {other:?}"),
        }
    }
    drop(bob);
}
