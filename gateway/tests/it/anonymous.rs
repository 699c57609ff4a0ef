//! Anonymous clients: what they may use, and limits they cannot reset by naming themselves
//! anew (a fresh `sid` per request), counted by client address (behind trusted proxies, the
//! address the proxy forwards).

use std::net::SocketAddr;

use herald_proto::frame::{ErrorFrame, ServerFrame};
use herald_proto::ErrorCode;
use herald_testkit::client::Connect;
use herald_testkit::{jwt, NatsServer, TestGateway, WsClient};
use serde_json::json;

use crate::request;

fn code_of(frame: ServerFrame) -> ErrorCode {
    match frame {
        ServerFrame::Error(ErrorFrame { code, .. }) => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A `subscribe` with presence went through: its ack, then (no fanout runs in these tests)
/// the error that the snapshot did not come.
async fn joined(c: &mut WsClient, room: &str) {
    assert!(matches!(c.recv().await, ServerFrame::Ack(_)), "{room}");
    assert_eq!(code_of(c.recv().await), ErrorCode::Unavailable, "{room}");
}

async fn anonymous(gw: &TestGateway, query: &str) -> Result<WsClient, u16> {
    let mut c = WsClient::open(Connect {
        url: format!("{}?{query}", gw.ws_url()),
        ..Default::default()
    })
    .await?;
    match c.recv().await {
        ServerFrame::Welcome(w) => c.welcome = Some(w),
        other => panic!("expected a welcome, got {other:?}"),
    }
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_read_and_write_only_the_rooms_the_flags_name() {
    let nats = NatsServer::start();
    // Anonymous mode alone: nothing shared to read or write.
    let bare = TestGateway::start_with(&nats.url(), |c| c.allow_anonymous = true).await;
    let mut c = anonymous(&bare, "sid=anonymous-bare-1").await.unwrap();
    c.op(json!({"op": "subscribe", "id": 1, "room": "lobby"})).await;
    assert_eq!(code_of(c.recv().await), ErrorCode::Forbidden);
    c.op(json!({"op": "publish", "id": 2, "room": "lobby", "data": 1}))
        .await;
    assert_eq!(code_of(c.recv().await), ErrorCode::Forbidden);
    let (status, body) = request(bare.addr, "POST", "/publish", "", r#"{"room":"lobby","data":1}"#).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(request(bare.addr, "GET", "/poll?rooms=lobby", "", "").await.0, 403);

    // Read-only feeds: subscribe where `--anonymous-rooms` says, publish nowhere.
    let feeds = TestGateway::start_with(&nats.url(), |c| {
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["news:*".into()];
    })
    .await;
    let mut c = anonymous(&feeds, "sid=anonymous-feeds-1").await.unwrap();
    c.subscribe("news:today", None).await;
    for (id, room) in [(1, "support:acme:1"), (2, "lobby")] {
        c.op(json!({"op": "subscribe", "id": id, "room": room})).await;
        assert_eq!(code_of(c.recv().await), ErrorCode::Forbidden, "{room}");
    }
    c.op(json!({"op": "publish", "id": 3, "room": "news:today", "data": 1}))
        .await;
    assert_eq!(code_of(c.recv().await), ErrorCode::Forbidden);

    // And publish only where `--anonymous-publish` says.
    let chat = TestGateway::start_with(&nats.url(), |c| {
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["*".into()];
        c.anonymous_publish = vec!["chat:*".into()];
    })
    .await;
    let mut c = anonymous(&chat, "sid=anonymous-chat-1").await.unwrap();
    let ack = c.publish("chat:x", json!({"text": "hi"})).await;
    assert!(ack.seq.is_some());
    c.op(json!({"op": "publish", "id": 4, "room": "support:acme:1", "data": 1}))
        .await;
    assert_eq!(code_of(c.recv().await), ErrorCode::Forbidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_holds_its_share_of_connections_and_memberships_whatever_sids_it_uses() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["*".into()];
        c.max_anonymous_connections_per_address = 3;
        c.max_anonymous_memberships_per_address = 2;
        c.max_presence_rooms = 2;
    })
    .await;
    let mut held = Vec::new();
    for n in 0..2 {
        held.push(anonymous(&gw, &format!("sid=rotating-sid-{n:03}")).await.unwrap());
    }
    // Presence rooms: two per connection, and two per address over all its connections.
    let c = &mut held[0];
    for (id, room) in [(1, "p1"), (2, "p2")] {
        c.op(json!({"op": "subscribe", "id": id, "room": room, "presence": true}))
            .await;
        joined(c, room).await;
    }
    c.op(json!({"op": "subscribe", "id": 3, "room": "p3", "presence": true}))
        .await;
    assert_eq!(code_of(c.recv().await), ErrorCode::TooManySubscriptions);
    let other = &mut held[1];
    other
        .op(json!({"op": "subscribe", "id": 4, "room": "p1", "presence": true}))
        .await;
    assert_eq!(
        code_of(other.recv().await),
        ErrorCode::RateLimited,
        "the address's share"
    );
    let (status, body) = request(gw.addr, "GET", "/poll?rooms=p1&presence=1&sid=rotating-sid-996", "", "").await;
    assert_eq!(status, 429);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("presence memberships"), "{message}");
    // Leaving a presence room gives its membership back.
    held[0].op(json!({"op": "unsubscribe", "id": 5, "room": "p2"})).await;
    assert!(matches!(held[0].recv().await, ServerFrame::Ack(_)));
    let other = &mut held[1];
    other
        .op(json!({"op": "subscribe", "id": 6, "room": "p1", "presence": true}))
        .await;
    joined(other, "p1").await;

    // Connections: three per address, whatever sid each names.
    held.push(anonymous(&gw, "sid=rotating-sid-002").await.unwrap());
    assert_eq!(anonymous(&gw, "sid=rotating-sid-999").await.err(), Some(429));
    let (status, body) = request(gw.addr, "GET", "/sse?rooms=r&sid=rotating-sid-998", "", "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")));
    // A user with a token is not counted by address.
    let mut member = WsClient::connect(&gw.ws_url(), &jwt::any_room("member")).await;
    member.op(json!({"op": "ping", "id": 1})).await;
    assert!(matches!(member.recv().await, ServerFrame::Pong(_)));
    // A connection that goes gives its place back.
    drop(held.pop());
    let gw_ref = &gw;
    herald_testkit::wait_until(std::time::Duration::from_secs(10), "a freed place", || async move {
        anonymous(gw_ref, "sid=rotating-sid-997").await.is_ok()
    })
    .await;
    // An SSE stream asking for more presence rooms than allowed is refused.
    let token = jwt::any_room("member");
    let (status, body) = request(
        gw.addr,
        "GET",
        "/sse?rooms=a,b,c&presence=1",
        &format!("Authorization: Bearer {token}\r\n"),
        "",
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("too_many_subscriptions"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_sessions_of_anonymous_clients_are_capped_per_address() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["*".into()];
        c.max_poll_sessions_per_user = 2;
    })
    .await;
    // Polls without presence or watch open no session, whatever their sid.
    for n in 0..4 {
        let path = format!("/poll?rooms=p0&wait=0&sid=plain-sid-{n:04}");
        assert_eq!(request(gw.addr, "GET", &path, "", "").await.0, 200);
    }
    let mut statuses = Vec::new();
    for n in 0..4 {
        let path = format!("/poll?rooms=p0,p1&presence=1&wait=0&sid=flood-sid-{n:04}");
        statuses.push(request(gw.addr, "GET", &path, "", "").await.0);
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "two sessions per address, whatever the sids"
    );
    // An open session polls again.
    let again = "/poll?rooms=p0,p1&presence=1&wait=0&sid=flood-sid-0001";
    assert_eq!(request(gw.addr, "GET", again, "", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_client() {
    let nats = NatsServer::start();
    let config = |trusted: Vec<ipnet::IpNet>| {
        move |c: &mut herald_gateway::Config| {
            c.allow_anonymous = true;
            c.anonymous_rooms = vec!["*".into()];
            c.anonymous_publish = vec!["*".into()];
            c.publish_rate = 1.0;
            c.trusted_proxies = trusted;
        }
    };
    let publish = |gw: SocketAddr, from: &'static str| async move {
        let xff = format!("X-Forwarded-For: 6.6.6.6, {from}\r\n");
        request(gw, "POST", "/publish", &xff, r#"{"room":"r","data":1}"#)
            .await
            .0
    };
    let proxied = TestGateway::start_with(&nats.url(), config(vec!["127.0.0.0/8".parse().unwrap()])).await;
    let statuses = [
        publish(proxied.addr, "198.51.100.1").await,
        publish(proxied.addr, "198.51.100.1").await,
        publish(proxied.addr, "198.51.100.2").await,
    ];
    assert_eq!(statuses, [200, 429, 200], "one bucket per forwarded client");
    // From a peer that is not a trusted proxy the header is the client's word: ignored.
    let direct = TestGateway::start_with(&nats.url(), config(Vec::new())).await;
    let statuses = [
        publish(direct.addr, "198.51.100.1").await,
        publish(direct.addr, "198.51.100.2").await,
    ];
    assert_eq!(statuses, [200, 429], "one bucket: the peer's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_id_without_a_sid_is_new_after_a_restart() {
    let nats = NatsServer::start();
    let mut users = Vec::new();
    for _ in 0..2 {
        let gw = TestGateway::start_with(&nats.url(), |c| {
            c.allow_anonymous = true;
            c.gateway_id = Some("fixed-id".into());
        })
        .await;
        let c = anonymous(&gw, "name=guest").await.unwrap();
        users.push(c.welcome.clone().expect("welcome").user);
        drop(c);
        gw.shutdown().await;
    }
    assert_ne!(
        users[0], users[1],
        "a restarted gateway gives the old client's id to nobody"
    );
    assert!(!users[0].contains("fixed-id"), "{}", users[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_s_connects_and_watched_users_are_counted_whatever_sids_it_uses() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["*".into()];
        c.max_anonymous_watches_per_address = 3;
        // The op burst is the larger of --max-subscriptions and twice the rate: 4 here.
        c.op_rate = 0.01;
        c.max_subscriptions = 4;
    })
    .await;
    let mut a = anonymous(&gw, "sid=watcher-sid-0001").await.unwrap();
    let mut b = anonymous(&gw, "sid=watcher-sid-0002").await.unwrap();
    a.op(json!({"op": "watch", "id": 1, "users": ["u1", "u2"]})).await;
    assert!(matches!(a.recv().await, ServerFrame::Ack(_)));
    // Another connection of the address: two more would make four.
    b.op(json!({"op": "watch", "id": 2, "users": ["u3", "u4"]})).await;
    assert_eq!(code_of(b.recv().await), ErrorCode::RateLimited);
    // Connects count against the address's requests too: two went, two more are in the
    // burst (with the watches above), the next is refused.
    assert_eq!(anonymous(&gw, "sid=watcher-sid-0003").await.err(), Some(429));
    // A user with a token is counted by user, not by address.
    let mut member = WsClient::connect(&gw.ws_url(), &jwt::any_room("member")).await;
    member
        .op(json!({"op": "watch", "id": 3, "users": ["u5", "u6", "u7", "u8"]}))
        .await;
    assert!(matches!(member.recv().await, ServerFrame::Ack(_)));
}
