//! The presence state machine, driven step by step.

use super::*;

const DELAY: Duration = Duration::from_secs(3);

fn state() -> State {
    State::new(Settings {
        leave_delay: DELAY,
        large_room: 2,
        namespaces: Default::default(),
        gateway_timeout: Duration::from_secs(15),
    })
}

fn msg(gw: &str, epoch: u64, body: Body) -> GatewayMsg {
    GatewayMsg {
        gw: gw.into(),
        epoch,
        body,
    }
}

fn snapshot(gw: &str, epoch: u64, seq: u64, conns: &[(&str, &str)], members: &[(&str, &str)]) -> GatewayMsg {
    let user = |conn: &str| {
        conns
            .iter()
            .find(|(c, _)| *c == conn)
            .map(|(_, u)| u.to_string())
            .unwrap()
    };
    msg(
        gw,
        epoch,
        Body::Snapshot {
            seq,
            part: 0,
            parts: 1,
            conns: conns
                .iter()
                .map(|(conn, user)| Conn {
                    conn: conn.to_string(),
                    user: user.to_string(),
                })
                .collect(),
            members: members
                .iter()
                .map(|(room, conn)| Join {
                    room: room.to_string(),
                    conn: conn.to_string(),
                    user: user(conn),
                    name: None,
                })
                .collect(),
        },
    )
}

fn changes(gw: &str, first: u64, changes: Vec<Change>) -> GatewayMsg {
    msg(gw, 1, Body::Changes { first, changes })
}

fn open(conn: &str, user: &str) -> Change {
    Change::Open(Conn {
        conn: conn.into(),
        user: user.into(),
    })
}

fn joined(room: &str, conn: &str, user: &str) -> Change {
    join(room, conn, user, &None)
}

fn diffs(out: &[Output]) -> Vec<(Vec<String>, Vec<String>, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Presence(p) => Some((
                p.joined.iter().map(|m| m.user.clone()).collect(),
                p.left.iter().map(|m| m.user.clone()).collect(),
                p.count,
            )),
            _ => None,
        })
        .collect()
}

fn synced(s: &mut State, now: Instant) {
    s.on_gateway(snapshot("a", 1, 0, &[], &[]), now);
    assert_eq!(s.tick(now), []);
}

#[test]
fn crafted_gateway_messages_neither_panic_nor_grow_nor_reach_subjects() {
    let t = Instant::now();
    let mut s = state();
    synced(&mut s, t);
    // Numbers at the edges: no overflow, nothing applied.
    s.on_gateway(changes("a", 0, vec![]), t);
    s.on_gateway(changes("a", 1, vec![]), t);
    s.on_gateway(changes("a", u64::MAX, vec![open("c1", "bob"), open("c2", "eve")]), t);
    s.on_gateway(msg("a", 1, Body::Heartbeat { seq: u64::MAX }), t);
    assert_eq!(s.totals().conns, 0);
    // Snapshot parts that cannot be: none is kept.
    for (part, parts) in [(0, 0), (5, 5), (0, u32::MAX)] {
        let body = Body::Snapshot {
            seq: 1,
            part,
            parts,
            conns: vec![],
            members: vec![],
        };
        s.on_gateway(msg("b", 1, body), t);
        assert!(
            s.gateways.get("b").is_none_or(|g| g.assembly.is_none()),
            "{part}/{parts}"
        );
    }
    // Names that would become wildcard subjects or break frames are dropped.
    let mut s = state();
    synced(&mut s, t);
    s.on_gateway(
        changes(
            "a",
            1,
            vec![
                open("c1", "bob"),
                joined("lobby.>", "c1", "bob"),
                joined("lobby", "c1", "bob"),
                open("c2", "e*ve"),
                joined("lobby", &"c".repeat(300), "bob"),
            ],
        ),
        t,
    );
    let out = s.tick(t);
    assert_eq!(diffs(&out), [(vec!["bob".to_owned()], vec![], 1)]);
    assert_eq!(s.room_names(), ["lobby"]);
    assert!(!s.online("e*ve"));
}

#[test]
fn a_gap_in_the_change_numbers_asks_for_a_snapshot_that_repairs_it() {
    let (mut s, t) = (state(), Instant::now());
    synced(&mut s, t);
    s.on_gateway(
        changes("a", 1, vec![open("c1", "bob"), joined("lobby", "c1", "bob")]),
        t,
    );
    // Change 3 is lost; 4 arrives.
    s.on_gateway(changes("a", 4, vec![open("c2", "eve")]), t);
    let out = s.tick(t);
    assert!(out.contains(&Output::Sync { gw: "a".into() }), "{out:?}");
    assert_eq!(diffs(&out), [(vec!["bob".to_owned()], vec![], 1)]);
    // Ignored until the snapshot comes (it says what 3 and 4 did).
    s.on_gateway(changes("a", 5, vec![open("c3", "zed")]), t);
    s.on_gateway(
        snapshot(
            "a",
            1,
            5,
            &[("c1", "bob"), ("c2", "eve"), ("c3", "zed")],
            &[("lobby", "c1"), ("lobby", "c2")],
        ),
        t,
    );
    let out = s.tick(t);
    assert_eq!(diffs(&out), [(vec!["eve".to_owned()], vec![], 2)]);
    assert_eq!(s.snapshot("lobby").count, 2);
    assert!(s.online("zed"));
    // In step again.
    s.on_gateway(changes("a", 6, vec![joined("lobby", "c3", "zed")]), t);
    assert_eq!(s.snapshot("lobby").count, 3);
}

#[test]
fn a_heartbeat_ahead_of_what_was_applied_asks_for_a_snapshot() {
    let (mut s, t) = (state(), Instant::now());
    synced(&mut s, t);
    s.on_gateway(msg("a", 1, Body::Heartbeat { seq: 0 }), t);
    assert_eq!(s.tick(t), []);
    s.on_gateway(msg("a", 1, Body::Heartbeat { seq: 2 }), t);
    assert_eq!(s.tick(t), [Output::Sync { gw: "a".into() }]);
}

#[test]
fn a_restarted_gateway_s_old_connections_go_when_its_new_snapshot_comes() {
    let (mut s, t) = (state(), Instant::now());
    s.on_gateway(snapshot("a", 1, 3, &[("c1", "bob")], &[("lobby", "c1")]), t);
    s.tick(t);
    // Same gateway id, new epoch: c1 is now someone else.
    s.on_gateway(msg("a", 2, Body::Heartbeat { seq: 0 }), t);
    assert_eq!(s.tick(t), [Output::Sync { gw: "a".into() }]);
    s.on_gateway(snapshot("a", 2, 0, &[("c1", "amy")], &[("lobby", "c1")]), t);
    let out = s.tick(t);
    assert_eq!(diffs(&out), [(vec!["amy".to_owned()], vec![], 2)]);
    let later = t + DELAY;
    assert_eq!(diffs(&s.tick(later)), [(vec![], vec!["bob".to_owned()], 1)]);
}

#[test]
fn diffs_net_out_within_a_window_and_large_rooms_get_counts() {
    let (mut s, t) = (state(), Instant::now());
    synced(&mut s, t);
    s.on_gateway(
        changes(
            "a",
            1,
            vec![
                open("c1", "bob"),
                joined("lobby", "c1", "bob"),
                Change::Leave {
                    room: "lobby".into(),
                    conn: "c1".into(),
                },
            ],
        ),
        t,
    );
    let out = s.tick(t);
    assert_eq!(diffs(&out), [], "joined and left within one window: nothing");
    // Lifecycle still tells the room was occupied then vacated.
    assert_eq!(out.len(), 3, "{out:?}");
    s.on_gateway(
        changes(
            "a",
            4,
            vec![
                joined("lobby", "c1", "bob"),
                open("c2", "amy"),
                joined("lobby", "c2", "amy"),
                open("c3", "eve"),
                joined("lobby", "c3", "eve"),
            ],
        ),
        t,
    );
    let out = s.tick(t);
    assert_eq!(diffs(&out), [(vec![], vec![], 3)], "above large_room = 2: counts only");
    assert_eq!(s.snapshot("lobby").members, None);
}

#[test]
fn a_silent_gateway_expires_without_the_leave_delay() {
    let (mut s, t) = (state(), Instant::now());
    s.on_gateway(snapshot("a", 1, 0, &[("c1", "bob")], &[("lobby", "c1")]), t);
    s.on_gateway(snapshot("b", 1, 0, &[("c2", "amy")], &[("lobby", "c2")]), t);
    s.tick(t);
    s.on_gateway(msg("b", 1, Body::Heartbeat { seq: 0 }), t + Duration::from_secs(10));
    let out = s.tick(t + Duration::from_secs(15));
    assert_eq!(diffs(&out), [(vec![], vec!["bob".to_owned()], 1)]);
    assert!(out.contains(&Output::Status(Status {
        user: "bob".into(),
        online: false
    })));
    assert_eq!(s.expired, 1);
    assert!(s.online("amy"));
}

#[test]
fn a_gateway_heard_from_before_its_messages_are_applied_does_not_expire() {
    let (mut s, t) = (state(), Instant::now());
    s.on_gateway(snapshot("a", 1, 0, &[("c1", "bob")], &[("lobby", "c1")]), t);
    s.tick(t);
    // Its heartbeats arrived (the intake noted them) but wait behind other work.
    s.heard("a", t + Duration::from_secs(10));
    s.heard("a", t + Duration::from_secs(5));
    s.heard("unknown", t + Duration::from_secs(10));
    let out = s.tick(t + Duration::from_secs(15));
    assert!(diffs(&out).is_empty(), "{out:?}");
    assert_eq!((s.expired, s.online("bob")), (0, true));
    s.tick(t + Duration::from_secs(25));
    assert_eq!((s.expired, s.online("bob")), (1, false));
}
