//! Presence across gateways and fanout instances, with a real nats-server, fanout as real
//! processes (so a leader can be killed with SIGKILL) and gateways in-process or as
//! processes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_proto::frame::{Member, Presence, ServerFrame, Status};
use herald_testkit::client::Incoming;
use herald_testkit::{jwt, wait_until, NatsServer, Process, TestGateway, WsClient};
use serde_json::json;

const INTERVAL: Duration = Duration::from_millis(100);
const LEAVE_DELAY: Duration = Duration::from_secs(1);
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(2);

fn fanout(nats: &NatsServer, id: &str, extra: &[&str]) -> Process {
    Process::fanout(&nats.url(), id, extra)
}

async fn gateway(nats: &NatsServer) -> TestGateway {
    TestGateway::start_with(&nats.url(), |c| {
        c.presence_heartbeat = Duration::from_millis(200);
        c.max_watch = 3;
    })
    .await
}

/// A client's view of a room, built from the presence frames it receives.
#[derive(Debug, Default)]
struct View {
    members: BTreeMap<String, Member>,
    count: u64,
    frames: usize,
    /// The users joined and left of every diff that had any.
    changes: Vec<(Vec<String>, Vec<String>)>,
}

impl View {
    fn apply(&mut self, p: &Presence) {
        if let Some(members) = &p.members {
            self.members = members.iter().map(|m| (m.user.clone(), m.clone())).collect();
        }
        for m in &p.joined {
            self.members.insert(m.user.clone(), m.clone());
        }
        for m in &p.left {
            self.members.remove(&m.user);
        }
        self.count = p.count;
        self.frames += 1;
        if !p.joined.is_empty() || !p.left.is_empty() {
            let names = |ms: &[Member]| ms.iter().map(|m| m.user.clone()).collect::<Vec<_>>();
            self.changes.push((names(&p.joined), names(&p.left)));
        }
    }

    fn users(&self) -> Vec<&str> {
        self.members.keys().map(String::as_str).collect()
    }
}

/// Connects `user` and subscribes to `room` with presence: returns the client and its view
/// after the ack and the snapshot.
async fn join(url: &str, user: &str, room: &str) -> (WsClient, View) {
    let mut c = WsClient::connect(url, &jwt::any_room(user)).await;
    c.op(json!({"op": "subscribe", "room": room, "presence": true, "id": 1}))
        .await;
    match c.recv().await {
        ServerFrame::Ack(a) => assert_eq!(a.room.as_deref(), Some(room)),
        other => panic!("{user}: expected the ack, got {other:?}"),
    }
    let mut view = View::default();
    match c.recv().await {
        ServerFrame::Presence(p) => {
            assert!(
                p.members.is_some(),
                "{user}: the first presence frame is a snapshot: {p:?}"
            );
            view.apply(&p);
        }
        other => panic!("{user}: expected the presence snapshot, got {other:?}"),
    }
    (c, view)
}

/// Reads presence frames into `view` until `done` holds; any other frame fails the test.
async fn until(c: &mut WsClient, view: &mut View, within: Duration, what: &str, done: impl Fn(&View) -> bool) {
    let deadline = Instant::now() + within;
    while !done(view) {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_within(left).await {
            Some(Incoming::Frame(ServerFrame::Presence(p))) => view.apply(&p),
            Some(other) => panic!("{what}: unexpected {other:?}"),
            None => panic!("{what}: not within {within:?}; view {view:?}"),
        }
    }
}

/// Fails if any frame arrives within `quiet`.
async fn silent(c: &mut WsClient, quiet: Duration, what: &str) {
    if let Some(frame) = c.next_within(quiet).await {
        panic!("{what}: expected nothing, got {frame:?}");
    }
}

/// Fails if any frame arrives within `quiet`, except a snapshot that fanout broadcasts when
/// it takes a partition's lease over (a lease a loaded box let lapse is retaken): that one
/// must show the members `view` has.
async fn unchanged(c: &mut WsClient, view: &View, quiet: Duration, what: &str) {
    let deadline = Instant::now() + quiet;
    while let Some(frame) = c.next_within(deadline.saturating_duration_since(Instant::now())).await {
        match frame {
            Incoming::Frame(ServerFrame::Presence(p)) if p.id.is_none() && p.members.is_some() => {
                assert_eq!(users(&p), view.users(), "{what}: a repair snapshot that differs: {p:?}");
            }
            other => panic!("{what}: expected nothing, got {other:?}"),
        }
    }
}

/// Asks for a snapshot; presence frames broadcast meanwhile are skipped.
async fn snapshot(c: &mut WsClient, room: &str) -> Presence {
    c.op(json!({"op": "presence", "room": room, "id": "p"})).await;
    loop {
        match c.recv().await {
            ServerFrame::Presence(p) if p.id.is_some() => return p,
            ServerFrame::Presence(_) => {}
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }
}

async fn status(c: &mut WsClient) -> Status {
    match c.recv().await {
        ServerFrame::Status(s) => s,
        other => panic!("expected a status frame, got {other:?}"),
    }
}

fn users(p: &Presence) -> Vec<&str> {
    p.members.iter().flatten().map(|m| m.user.as_str()).collect()
}

async fn leader_of(fanouts: &[&Process]) -> usize {
    let mut leaders = Vec::new();
    for (i, f) in fanouts.iter().enumerate() {
        if f.metric("herald_fanout_leader{partition=\"0\"}").await == 1.0 {
            leaders.push(i);
        }
    }
    assert_eq!(leaders.len(), 1, "exactly one leader");
    leaders[0]
}

async fn one_leader(fanouts: &[&Process]) -> usize {
    wait_until(Duration::from_secs(10), "one presence leader", || async {
        let mut n = 0.0;
        for f in fanouts {
            n += f.metric("herald_fanout_leader{partition=\"0\"}").await;
        }
        n == 1.0
    })
    .await;
    leader_of(fanouts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_across_two_gateways_and_two_fanouts() {
    let nats = NatsServer::start();
    let (f1, f2) = (fanout(&nats, "f1", &[]), fanout(&nats, "f2", &[]));
    let (a, b) = (gateway(&nats).await, gateway(&nats).await);
    f1.wait_ready().await;
    f2.wait_ready().await;
    one_leader(&[&f1, &f2]).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut lifecycle = nc.subscribe("herald.lifecycle.lobby").await.unwrap();
    nc.flush().await.unwrap();

    let (mut alice, mut va) = join(&a.ws_url(), "alice", "lobby").await;
    let (mut bob, mut vb) = join(&b.ws_url(), "bob", "lobby").await;
    let (mut carol, vc) = join(&a.ws_url(), "carol", "lobby").await;
    assert_eq!(vc.users(), ["alice", "bob", "carol"], "carol's snapshot holds everyone");
    let all = |v: &View| v.users() == ["alice", "bob", "carol"] && v.count == 3;
    until(&mut alice, &mut va, Duration::from_secs(5), "alice sees all", all).await;
    until(&mut bob, &mut vb, Duration::from_secs(5), "bob sees all", all).await;
    for v in [&va, &vb, &vc] {
        assert_eq!(v.members["bob"].name.as_deref(), Some("BOB"));
        assert_eq!(v.members["bob"].conns, Some(1));
    }

    // A leave is seen everywhere within the presence interval + 1 s.
    carol.op(json!({"op": "unsubscribe", "room": "lobby", "id": 2})).await;
    let gone = |v: &View| v.users() == ["alice", "bob"] && v.count == 2;
    let within = INTERVAL + Duration::from_secs(1);
    until(&mut alice, &mut va, within, "alice sees carol leave", gone).await;
    until(&mut bob, &mut vb, within, "bob sees carol leave", gone).await;
    // Carol may still get diffs sent before her unsubscribe, then the ack, then nothing.
    loop {
        match carol.recv().await {
            ServerFrame::Presence(p) => assert!(p.left.is_empty(), "{p:?}"),
            ServerFrame::Ack(a) => break assert_eq!(a.room.as_deref(), Some("lobby")),
            other => panic!("expected the unsubscribe ack, got {other:?}"),
        }
    }
    silent(&mut carol, INTERVAL * 5, "carol gets no more diffs").await;

    // Snapshots from either fanout agree (whichever answers).
    for _ in 0..4 {
        assert_eq!(users(&snapshot(&mut carol, "lobby").await), ["alice", "bob"]);
    }

    // One occupied event, from the leader only; vacated after everyone has gone.
    drop(alice);
    drop(bob);
    let first = tokio::time::timeout(Duration::from_secs(5), lifecycle.next())
        .await
        .unwrap()
        .unwrap();
    let first: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(
        (first["room"].as_str(), first["event"].as_str()),
        (Some("lobby"), Some("occupied"))
    );
    let second = tokio::time::timeout(LEAVE_DELAY + Duration::from_secs(3), lifecycle.next())
        .await
        .unwrap()
        .unwrap();
    let second: serde_json::Value = serde_json::from_slice(&second.payload).unwrap();
    assert_eq!(second["event"], "vacated");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), lifecycle.next())
            .await
            .is_err(),
        "no duplicate lifecycle event"
    );
    for f in [&f1, &f2] {
        assert_eq!(f.metric("herald_fanout_gateways").await, 2.0);
        // fanout counts its own NATS connection, and carries no gateway series.
        assert_eq!(
            f.metric("herald_fanout_nats_events_total{event=\"connected\"}").await,
            1.0
        );
        let text = herald_testkit::http::get(f.admin, "/metrics").await.unwrap().body;
        assert!(!text.contains("herald_gateway_"), "fanout's /metrics: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_for_two_tabs_and_no_leave_for_a_quick_reconnect() {
    let nats = NatsServer::start();
    let f = fanout(&nats, "f1", &[]);
    let (a, b) = (gateway(&nats).await, gateway(&nats).await);
    f.wait_ready().await;
    one_leader(&[&f]).await;
    let (mut alice, mut va) = join(&a.ws_url(), "alice", "lobby").await;
    alice.op(json!({"op": "watch", "users": ["bob"], "id": "w"})).await;
    assert!(matches!(alice.recv().await, ServerFrame::Ack(_)));
    assert_eq!(
        status(&mut alice).await,
        Status {
            user: "bob".into(),
            online: false
        }
    );

    let (tab1, _) = join(&a.ws_url(), "bob", "lobby").await;
    let (tab2, _) = join(&b.ws_url(), "bob", "lobby").await;
    // Exactly one online status and one joined diff for two tabs, whatever order they come in.
    let mut online = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while online == 0 || va.users() != ["alice", "bob"] {
        match alice
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Incoming::Frame(ServerFrame::Status(s))) => {
                assert_eq!(
                    s,
                    Status {
                        user: "bob".into(),
                        online: true
                    }
                );
                online += 1;
            }
            Some(Incoming::Frame(ServerFrame::Presence(p))) => va.apply(&p),
            other => panic!("unexpected {other:?}; view {va:?}"),
        }
    }
    unchanged(&mut alice, &va, LEAVE_DELAY, "the second tab changes nothing").await;
    let p = snapshot(&mut alice, "lobby").await;
    assert_eq!((p.count, p.conns), (2, Some(3)));
    assert_eq!(
        p.members.as_ref().unwrap()[1].conns,
        Some(2),
        "bob: one member, two connections"
    );

    // Closing one tab: no leave, no offline.
    drop(tab1);
    unchanged(
        &mut alice,
        &va,
        LEAVE_DELAY + Duration::from_millis(800),
        "one tab closed",
    )
    .await;
    assert_eq!(snapshot(&mut alice, "lobby").await.conns, Some(2));

    // The other tab drops and comes back within the leave delay: still nothing.
    drop(tab2);
    tokio::time::sleep(LEAVE_DELAY / 4).await;
    let (tab3, _) = join(&b.ws_url(), "bob", "lobby").await;
    unchanged(
        &mut alice,
        &va,
        LEAVE_DELAY + Duration::from_millis(800),
        "quick reconnect",
    )
    .await;

    // Gone for good: one leave, one offline.
    drop(tab3);
    let mut offline = 0;
    let deadline = Instant::now() + LEAVE_DELAY + Duration::from_secs(2);
    while offline == 0 || va.users() != ["alice"] {
        match alice
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Incoming::Frame(ServerFrame::Status(s))) => {
                assert_eq!(
                    s,
                    Status {
                        user: "bob".into(),
                        online: false
                    }
                );
                offline += 1;
            }
            Some(Incoming::Frame(ServerFrame::Presence(p))) => {
                assert_eq!(p.left.len(), 1, "{p:?}");
                va.apply(&p);
            }
            other => panic!("unexpected {other:?}; view {va:?}"),
        }
    }
    unchanged(&mut alice, &va, INTERVAL * 5, "nothing more").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_s_members_leave_and_the_others_stay() {
    let nats = NatsServer::start();
    let f = fanout(&nats, "f1", &[]);
    let a = gateway(&nats).await;
    let mut k = Process::gateway(&nats.url(), "gw-doomed", &["--presence-heartbeat", "200ms"]).await;
    f.wait_ready().await;
    one_leader(&[&f]).await;
    let (mut alice, mut va) = join(&a.ws_url(), "alice", "lobby").await;
    let (_frank, _) = join(&a.ws_url(), "frank", "lobby").await;
    let (_dave, _) = join(&k.ws_url(), "dave", "lobby").await;
    let (_erin, _) = join(&k.ws_url(), "erin", "lobby").await;
    let everyone = |v: &View| v.users() == ["alice", "dave", "erin", "frank"];
    until(&mut alice, &mut va, Duration::from_secs(3), "all four", everyone).await;

    k.kill9();
    let survivors = |v: &View| v.users() == ["alice", "frank"] && v.count == 2;
    let within = GATEWAY_TIMEOUT + Duration::from_secs(2);
    until(
        &mut alice,
        &mut va,
        within,
        "the killed gateway's members leave",
        survivors,
    )
    .await;
    assert_eq!(users(&snapshot(&mut alice, "lobby").await), ["alice", "frank"]);
    wait_until(Duration::from_secs(3), "the expiry counted", || async {
        f.metric("herald_fanout_gateways_expired_total").await == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_when_the_leader_is_killed() {
    let nats = NatsServer::start();
    let mut fanouts = vec![fanout(&nats, "f1", &[]), fanout(&nats, "f2", &[])];
    let (a, b) = (gateway(&nats).await, gateway(&nats).await);
    for f in &fanouts {
        f.wait_ready().await;
    }
    let leader = one_leader(&[&fanouts[0], &fanouts[1]]).await;
    let (mut alice, mut va) = join(&a.ws_url(), "alice", "lobby").await;
    let (bob, _) = join(&b.ws_url(), "bob", "lobby").await;
    until(&mut alice, &mut va, Duration::from_secs(3), "bob joins", |v| {
        v.users() == ["alice", "bob"]
    })
    .await;

    let mut dead = fanouts.remove(leader);
    dead.kill9();
    let killed = Instant::now();
    // Changes while nobody leads: they reach alice once the standby has taken over.
    drop(bob);
    let (_carol, _) = join(&b.ws_url(), "carol", "lobby").await;
    let (_dave, _) = join(&a.ws_url(), "dave", "lobby").await;
    let truth = |v: &View| v.users() == ["alice", "carol", "dave"] && v.count == 3;
    until(
        &mut alice,
        &mut va,
        Duration::from_secs(10),
        "diffs continue after the takeover",
        truth,
    )
    .await;
    let takeover = killed.elapsed();
    assert_eq!(fanouts[0].metric("herald_fanout_leader{partition=\"0\"}").await, 1.0);

    // Diffs keep flowing from the new leader, and a snapshot equals the true membership.
    let (_erin, _) = join(&b.ws_url(), "erin", "lobby").await;
    let more = |v: &View| v.users() == ["alice", "carol", "dave", "erin"];
    until(
        &mut alice,
        &mut va,
        Duration::from_secs(3),
        "a diff from the new leader",
        more,
    )
    .await;
    let p = snapshot(&mut alice, "lobby").await;
    assert_eq!(
        users(&p),
        ["alice", "carol", "dave", "erin"],
        "no ghost, no missing member"
    );
    assert_eq!((p.count, p.conns), (4, Some(4)));
    eprintln!("takeover seen by a client after {takeover:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_started_after_the_gateways_has_a_complete_first_snapshot() {
    let nats = NatsServer::start();
    let (a, b) = (gateway(&nats).await, gateway(&nats).await);
    let mut clients = Vec::new();
    for (user, gw) in [("alice", &a), ("bob", &b), ("carol", &b)] {
        let mut c = WsClient::connect(&gw.ws_url(), &jwt::any_room(user)).await;
        c.op(json!({"op": "subscribe", "room": "lobby", "presence": true, "id": 1}))
            .await;
        assert!(matches!(c.recv().await, ServerFrame::Ack(_)));
        match c.recv().await {
            ServerFrame::Error(e) => assert_eq!(e.code.as_str(), "unavailable"),
            other => panic!("without fanout the snapshot is unavailable, got {other:?}"),
        }
        clients.push(c);
    }

    let f = fanout(&nats, "late", &[]);
    f.wait_ready().await;
    let p = snapshot(&mut clients[0], "lobby").await;
    assert_eq!(users(&p), ["alice", "bob", "carol"]);
    assert_eq!(p.members.unwrap()[2].name.as_deref(), Some("CAROL"));
    // Clients that joined before fanout get its first snapshot as a presence frame.
    let mut view = View::default();
    until(
        &mut clients[1],
        &mut view,
        Duration::from_secs(5),
        "bob gets the first snapshot",
        |v| v.users() == ["alice", "bob", "carol"],
    )
    .await;
    wait_until(Duration::from_secs(3), "3 connections counted", || async {
        f.metric("herald_fanout_connections").await == 3.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_user_across_gateways() {
    let nats = NatsServer::start();
    let f = fanout(&nats, "f1", &[]);
    let (a, b) = (gateway(&nats).await, gateway(&nats).await);
    f.wait_ready().await;
    one_leader(&[&f]).await;
    let mut alice = WsClient::connect(&a.ws_url(), &jwt::any_room("alice")).await;
    alice.op(json!({"op": "watch", "users": ["bob", "zed"], "id": 1})).await;
    assert!(matches!(alice.recv().await, ServerFrame::Ack(_)));
    assert_eq!(
        status(&mut alice).await,
        Status {
            user: "bob".into(),
            online: false
        }
    );
    assert_eq!(
        status(&mut alice).await,
        Status {
            user: "zed".into(),
            online: false
        }
    );

    let bob_a = WsClient::connect(&a.ws_url(), &jwt::any_room("bob")).await;
    assert_eq!(
        status(&mut alice).await,
        Status {
            user: "bob".into(),
            online: true
        }
    );
    let bob_b = WsClient::connect(&b.ws_url(), &jwt::any_room("bob")).await;
    drop(bob_a);
    silent(
        &mut alice,
        LEAVE_DELAY + Duration::from_millis(800),
        "bob is still online on b",
    )
    .await;
    drop(bob_b);
    let within = LEAVE_DELAY + Duration::from_secs(2);
    match alice.next_within(within).await {
        Some(Incoming::Frame(ServerFrame::Status(s))) => assert_eq!(
            s,
            Status {
                user: "bob".into(),
                online: false
            }
        ),
        other => panic!("expected bob offline, got {other:?}"),
    }

    // After unwatch, nothing more.
    alice.op(json!({"op": "unwatch", "users": ["bob"], "id": 2})).await;
    assert!(matches!(alice.recv().await, ServerFrame::Ack(_)));
    let _bob = WsClient::connect(&b.ws_url(), &jwt::any_room("bob")).await;
    silent(&mut alice, Duration::from_secs(1), "unwatched").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_refuses_forbidden_rooms_and_long_watch_lists() {
    let nats = NatsServer::start();
    let f = fanout(&nats, "f1", &[]);
    let a = gateway(&nats).await;
    f.wait_ready().await;
    one_leader(&[&f]).await;
    let (mut bystander, mut vb) = join(&a.ws_url(), "bystander", "lobby").await;
    let mut c = WsClient::connect(&a.ws_url(), &jwt::token("mallory", 3600, &["lobby"], &[])).await;
    let expect = |code: &'static str, id: &'static str| {
        move |frame: ServerFrame| match frame {
            ServerFrame::Error(e) => {
                assert_eq!(
                    (e.code.as_str(), e.id),
                    (code, Some(herald_proto::frame::Id::Str(id.into())))
                )
            }
            other => panic!("expected {code}, got {other:?}"),
        }
    };
    c.op(json!({"op": "presence", "room": "secret", "id": "p"})).await;
    expect("forbidden", "p")(c.recv().await);
    c.op(json!({"op": "subscribe", "room": "secret", "presence": true, "id": "s"}))
        .await;
    expect("forbidden", "s")(c.recv().await);
    c.op(json!({"op": "watch", "users": ["u1", "u2", "u3", "u4"], "id": "w"}))
        .await;
    expect("bad_request", "w")(c.recv().await);
    c.op(json!({"op": "watch", "users": ["not a user"], "id": "x"})).await;
    expect("bad_request", "x")(c.recv().await);
    c.op(json!({"op": "watch", "users": ["u1", "u2", "u3"], "id": "ok"}))
        .await;
    assert!(matches!(c.recv().await, ServerFrame::Ack(_)));
    for _ in 0..3 {
        assert!(!status(&mut c).await.online);
    }
    c.op(json!({"op": "watch", "users": ["u4"], "id": "y"})).await;
    expect("bad_request", "y")(c.recv().await);
    // The connection still works, and the bystander saw only mallory's join.
    c.op(json!({"op": "ping", "id": 9})).await;
    assert!(matches!(c.recv().await, ServerFrame::Pong(_)));
    c.op(json!({"op": "subscribe", "room": "lobby", "presence": true, "id": 1}))
        .await;
    assert!(matches!(c.recv().await, ServerFrame::Ack(_)));
    until(
        &mut bystander,
        &mut vb,
        Duration::from_secs(3),
        "mallory joins lobby",
        |v| v.users() == ["bystander", "mallory"],
    )
    .await;
    // The bystander may see its own join in a diff after its snapshot; besides that, only
    // mallory's join.
    let joined: Vec<String> = vb
        .changes
        .iter()
        .flat_map(|c| c.0.clone())
        .filter(|u| u != "bystander")
        .collect();
    assert_eq!(joined, ["mallory"], "{:?}", vb.changes);
    assert!(vb.changes.iter().all(|c| c.1.is_empty()), "{:?}", vb.changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_rooms_get_coalesced_diffs_and_large_rooms_counts_only() {
    let nats = NatsServer::start();
    let f = fanout(&nats, "f1", &["--large-room", "30", "--presence-interval", "250ms"]);
    let a = gateway(&nats).await;
    f.wait_ready().await;
    one_leader(&[&f]).await;
    let (mut watcher, mut view) = join(&a.ws_url(), "watcher", "hall").await;

    // 20 joins in a burst: a few coalesced diffs, not 20.
    let mut crowd = Vec::new();
    for i in 0..20 {
        let mut c = WsClient::connect(&a.ws_url(), &jwt::any_room(&format!("u{i:02}"))).await;
        c.op(json!({"op": "subscribe", "room": "hall", "presence": true})).await;
        crowd.push(c);
    }
    until(&mut watcher, &mut view, Duration::from_secs(5), "20 joins", |v| {
        v.count == 21
    })
    .await;
    assert_eq!(view.members.len(), 21);
    let diffs = view.changes.len();
    assert!(diffs < 20, "coalesced: {diffs} diff frames for 20 joins");

    // Above the large-room size: counts only.
    for i in 20..40 {
        let mut c = WsClient::connect(&a.ws_url(), &jwt::any_room(&format!("u{i:02}"))).await;
        c.op(json!({"op": "subscribe", "room": "hall", "presence": true})).await;
        crowd.push(c);
    }
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while last.as_ref().is_none_or(|p: &Presence| p.count != 41) {
        match watcher
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Incoming::Frame(ServerFrame::Presence(p))) => {
                if p.count > 30 {
                    assert!(p.joined.is_empty() && p.left.is_empty() && p.members.is_none(), "{p:?}");
                }
                last = Some(p);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let p = snapshot(&mut watcher, "hall").await;
    assert_eq!((p.count, p.conns, p.members), (41, Some(41), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_leader_hands_over_and_exits_cleanly() {
    let nats = NatsServer::start();
    let mut fanouts = vec![fanout(&nats, "f1", &[]), fanout(&nats, "f2", &[])];
    let a = gateway(&nats).await;
    for f in &fanouts {
        f.wait_ready().await;
    }
    let leader = one_leader(&[&fanouts[0], &fanouts[1]]).await;
    let (mut alice, mut va) = join(&a.ws_url(), "alice", "lobby").await;
    let mut old = fanouts.remove(leader);
    let stopped = Instant::now();
    let status = tokio::task::spawn_blocking(move || old.terminate(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "exit 0 after the drain");
    let standby = &fanouts[0];
    wait_until(Duration::from_secs(5), "the standby leads", || async {
        standby.metric("herald_fanout_leader{partition=\"0\"}").await == 1.0
    })
    .await;
    eprintln!("handover after {:?}", stopped.elapsed());
    let (_bob, _) = join(&a.ws_url(), "bob", "lobby").await;
    until(
        &mut alice,
        &mut va,
        Duration::from_secs(3),
        "diffs from the new leader",
        |v| v.users() == ["alice", "bob"],
    )
    .await;
}

#[test]
fn help_names_every_flag_and_its_variable_and_bad_flags_exit_64() {
    let bin = env!("CARGO_BIN_EXE_herald-fanout");
    let help = std::process::Command::new(bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for (flag, var) in [
        ("--nats-url", "HERALD_NATS_URL"),
        ("--presence-interval", "HERALD_PRESENCE_INTERVAL"),
        ("--gateway-timeout", "HERALD_GATEWAY_TIMEOUT"),
        ("--leave-delay", "HERALD_LEAVE_DELAY"),
        ("--large-room", "HERALD_LARGE_ROOM"),
        ("--partitions", "HERALD_PARTITIONS"),
        ("--leader-lease", "HERALD_LEADER_LEASE"),
        ("--sync-window", "HERALD_SYNC_WINDOW"),
        ("--stream-replicas", "HERALD_STREAM_REPLICAS"),
        ("--stream-partitions", "HERALD_STREAM_PARTITIONS"),
        ("--drain-timeout", "HERALD_DRAIN_TIMEOUT"),
    ] {
        assert!(text.contains(flag) && text.contains(var), "{flag} / {var} in:\n{text}");
    }
    for bad in [
        ["--partitions", "0"],
        ["--stream-partitions", "0"],
        ["--stream-partitions", "1025"],
        ["--leader-lease", "10ms"],
        ["--presence-interval", "0s"],
    ] {
        let out = std::process::Command::new(bin).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(bad[0]), "{bad:?}");
    }
}
