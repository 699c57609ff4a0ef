//! The server API's commands as one gateway carries them out (`herald.sys.ctl`, asked here
//! as fanout asks them), and the edges of subscription tokens: what a command reaches, what
//! a client learns once, and what a token of the wrong kind opens.

use std::time::Duration;

use herald_proto::claims::SubscriptionClaims;
use herald_proto::sys::{Control, ControlReply};
use herald_testkit::http::{get, Sse};
use herald_testkit::{jwt, wait_until, NatsServer, TestGateway, WsClient};
use serde_json::{json, Value};

/// Sends `command` to the gateways on `herald.sys.ctl`; the first answer.
async fn command(nats: &async_nats::Client, command: &Control) -> ControlReply {
    let body = serde_json::to_vec(command).unwrap();
    let ask = nats.request("herald.sys.ctl", body.into());
    let reply = tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .expect("a gateway answers within 5 s")
        .expect("the command is answered");
    serde_json::from_slice(&reply.payload).expect("a control reply")
}

fn disconnect(user: &str) -> Control {
    Control::Disconnect {
        user: user.to_owned(),
        code: 4000,
        reason: "disconnected".into(),
        reconnect: true,
        revocation: None,
    }
}

fn room_token(user: &str, room: &str) -> String {
    let now = jwt::now();
    let claims = SubscriptionClaims {
        sub: user.to_owned(),
        room: room.to_owned(),
        exp: now + 600,
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(jwt::SECRET.as_bytes()),
    )
    .expect("token encodes")
}

async fn json_get(gw: &TestGateway, path: &str) -> (u16, Value) {
    let r = get(gw.addr, path).await.expect("HTTP answer");
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_token_is_not_a_connection_token() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    // Handed out to open one room (and carried in URLs): it must not open a connection as
    // its user, with the user's personal room.
    let vip = room_token("alice", "vip");
    let opts = herald_testkit::client::Connect {
        url: gw.ws_url(),
        token: Some(vip.clone()),
        ..Default::default()
    };
    assert_eq!(WsClient::open(opts).await.map(drop), Err(401), "WebSocket");
    let sse = Sse::open(gw.addr, &format!("/sse?rooms=user:alice&token={vip}"), &[])
        .await
        .unwrap();
    assert_eq!(sse.status, 401, "SSE");
    let (status, body) = json_get(&gw, &format!("/poll?rooms=user:alice&wait=0&token={vip}")).await;
    assert_eq!(status, 401, "poll: {body}");
    // The connection token still works, and the subscription token still opens its room.
    let alice = jwt::token("alice", 600, &["lobby"], &[]);
    let (status, body) = json_get(&gw, &format!("/poll?rooms=vip&wait=0&token={alice}&room_tokens={vip}")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_session_disconnected_mid_poll_is_told_once() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let dan = jwt::any_room("dan");
    let path =
        |wait: u32| format!("/poll?rooms=lobby&sid=dan-tab-0123456789abcdef&presence=lobby&wait={wait}&token={dan}");
    assert_eq!(json_get(&gw, &path(0)).await.0, 200);
    // A long-poll of the session is held when the command comes.
    let held = {
        let (addr, path) = (gw.addr, path(20));
        tokio::spawn(async move { get(addr, &path).await })
    };
    // Registered, and so reachable, before its room is attached. (Asked of the gateway, not
    // of its gauges: in-process gateways of other tests share the metrics.)
    wait_until(Duration::from_secs(5), "the long-poll is held", || async {
        let reply = command(&client, &Control::Connections { user: "dan".into() }).await;
        reply.conns.iter().any(|c| c.transport == "long-poll")
    })
    .await;
    let reply = command(&client, &disconnect("dan")).await;
    assert_eq!(reply.connections, 1, "the held poll: {reply:?}");
    let answered = tokio::time::timeout(Duration::from_secs(1), held)
        .await
        .expect("the held poll is answered within 1 s")
        .unwrap()
        .unwrap();
    let body: Value = serde_json::from_str(&answered.body).unwrap();
    assert_eq!(
        body["disconnect"],
        json!({"code": 4000, "reason": "disconnected", "reconnect": true})
    );
    // Told to reconnect, the client polls again: an ordinary answer, not a second
    // disconnect (herald.js would report the same disconnect twice, and reconnect twice).
    let (status, again) = json_get(&gw, &path(0)).await;
    assert_eq!(status, 200);
    assert!(again.get("disconnect").is_none(), "told twice: {again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_polling_session_is_reached_by_the_server_api() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["lobby".into()];
    })
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let sid = "anon-tab-0123456789abcdef";
    let user = format!("anon-{}", herald_proto::text::anonymous_id(sid));
    let path = format!("/poll?rooms=lobby&sid={sid}&presence=lobby&wait=0");
    assert_eq!(json_get(&gw, &path).await.0, 200);

    let reply = command(
        &client,
        &Control::Subscribe {
            user: user.clone(),
            room: "news".into(),
            presence: false,
        },
    )
    .await;
    assert_eq!(reply.connections, 1, "the session, between its polls: {reply:?}");
    let (_, next) = json_get(&gw, &path).await;
    assert_eq!(next["subscribed"][0]["room"], "news", "{next}");

    let reply = command(&client, &disconnect(&user)).await;
    assert_eq!(reply.connections, 1, "the session: {reply:?}");
    let (_, next) = json_get(&gw, &path).await;
    assert_eq!(next["disconnect"]["code"], 4000, "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_tokens_are_checked_after_the_request_rate() {
    let nats = NatsServer::start();
    // A burst of 2 requests, then one a minute.
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.max_subscriptions = 2;
        c.op_rate = 1.0 / 60.0;
    })
    .await;
    let alice = jwt::token("alice", 600, &["lobby"], &[]);
    for _ in 0..2 {
        let (status, body) = json_get(&gw, &format!("/poll?rooms=lobby&wait=0&token={alice}")).await;
        assert_eq!(status, 200, "{body}");
    }
    // Every subscription token costs a signature check (or a JWKS fetch, or a grant lookup
    // for the room): a client past its rate gets 429 before any of them is made.
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";
    let (status, body) = json_get(
        &gw,
        &format!("/poll?rooms=vip,vip2&wait=0&token={alice}&room_tokens={forged},{forged}"),
    )
    .await;
    assert_eq!(status, 429, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_that_reaches_a_gateway_only_through_its_bucket_closes_the_users_old_connections() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let claims = |user: &str, iat: u64| herald_proto::claims::Claims {
        sub: user.to_owned(),
        exp: jwt::now() + 600,
        iat: Some(iat),
        name: None,
        herald: None,
    };
    let mut old = WsClient::connect(&gw.ws_url(), &jwt::sign(&claims("zed", jwt::now() - 60), jwt::SECRET)).await;
    let mut fresh = WsClient::connect(&gw.ws_url(), &jwt::sign(&claims("zed", jwt::now() + 60), jwt::SECRET)).await;
    let mut other = WsClient::connect(&gw.ws_url(), &jwt::sign(&claims("amy", jwt::now() - 60), jwt::SECRET)).await;

    // What fanout writes before its command, with the command's close; the command itself
    // never comes (this gateway was cut off, or too slow to answer).
    let js = async_nats::jetstream::new(client.clone());
    let bucket = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "HERALD_REVOKED".into(),
            ..Default::default()
        })
        .await
        .expect("bucket");
    let now_ms = jwt::now() * 1000;
    let revocation = herald_proto::api::Revocation {
        before: now_ms,
        until: now_ms + 600_000,
        close: Some(herald_proto::frame::Disconnect {
            code: 4011,
            reason: "banned".into(),
            reconnect: false,
        }),
    };
    bucket
        .put(
            herald_proto::api::revocation_key("zed"),
            serde_json::to_vec(&revocation).unwrap().into(),
        )
        .await
        .expect("stored");

    // Within the bucket's retry (2 s), the watch, and the command's grace (2 s).
    match old.next_within(Duration::from_secs(10)).await {
        Some(herald_testkit::client::Incoming::Frame(herald_proto::frame::ServerFrame::Disconnect(d))) => {
            assert_eq!((d.code, d.reason.as_str(), d.reconnect), (4011, "banned", false));
        }
        other => panic!("expected a disconnect frame, got {other:?}"),
    }
    match old.next_within(Duration::from_secs(5)).await {
        Some(herald_testkit::client::Incoming::Closed(code)) => assert_eq!(code, 4011),
        other => panic!("expected the close, got {other:?}"),
    }
    // A token issued after the revocation, and another user: open.
    for c in [&mut fresh, &mut other] {
        c.op(json!({"op": "ping", "id": 1})).await;
        assert!(
            matches!(c.recv().await, herald_proto::frame::ServerFrame::Pong(_)),
            "still open"
        );
    }
    // And the revoked token is refused from now on.
    let again = herald_testkit::http::get(
        gw.addr,
        &format!(
            "/poll?rooms=lobby&wait=0&token={}",
            jwt::sign(&claims("zed", jwt::now() - 60), jwt::SECRET)
        ),
    )
    .await
    .unwrap();
    assert_eq!(again.status, 401, "{}", again.body);
}
