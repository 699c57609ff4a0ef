//! Subscription tokens: a JWT whose `room` claim opens one room the connection token does
//! not grant, for its user, until it expires — on WebSocket (`subscribe` with `token`) and
//! over HTTP (`room_tokens=`).

use herald_proto::claims::SubscriptionClaims;
use herald_proto::frame::ServerFrame;
use herald_proto::ErrorCode;
use herald_testkit::http::get;
use herald_testkit::{jwt, WsClient};
use serde_json::json;

use crate::Stack;

fn room_token(user: &str, room: &str, ttl_s: i64, secret: &str) -> String {
    let now = jwt::now();
    let claims = SubscriptionClaims {
        sub: user.to_owned(),
        room: room.to_owned(),
        exp: (now as i64 + ttl_s) as u64,
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token encodes")
}

/// The answer to a `subscribe` with `token`: the ack's room, or the error's code.
async fn subscribe_with(c: &mut WsClient, room: &str, token: &str) -> Result<String, ErrorCode> {
    c.op(json!({"op": "subscribe", "id": 1, "room": room, "token": token}))
        .await;
    match c.recv().await {
        ServerFrame::Ack(a) => Ok(a.room.expect("the ack names the room")),
        ServerFrame::Error(e) => Err(e.code),
        other => panic!("expected an ack or an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_token_opens_its_room_only_for_its_user_until_it_expires() {
    let stack = Stack::start().await;
    let alice = jwt::token("alice", 3600, &["lobby"], &[]);
    let mut c = WsClient::connect(&stack.a.ws_url(), &alice).await;
    let vip = room_token("alice", "vip", 60, jwt::SECRET);

    assert_eq!(
        subscribe_with(&mut c, "other", &vip).await,
        Err(ErrorCode::Forbidden),
        "room A's token does not open room B"
    );
    let bob_s = room_token("bob", "vip", 60, jwt::SECRET);
    assert_eq!(
        subscribe_with(&mut c, "vip", &bob_s).await,
        Err(ErrorCode::Unauthorized),
        "another user's"
    );
    let expired = room_token("alice", "vip", -5, jwt::SECRET);
    assert_eq!(
        subscribe_with(&mut c, "vip", &expired).await,
        Err(ErrorCode::Unauthorized),
        "expired"
    );
    let forged = room_token("alice", "vip", 60, "not-the-gateway-secret-0123456789");
    assert_eq!(
        subscribe_with(&mut c, "vip", &forged).await,
        Err(ErrorCode::Unauthorized),
        "forged"
    );
    c.op(json!({"op": "subscribe", "id": 1, "room": "vip", "token": "not a jwt"}))
        .await;
    assert!(matches!(c.recv().await, ServerFrame::Error(e) if e.code == ErrorCode::BadRequest));
    assert_eq!(subscribe_with(&mut c, "vip", &vip).await, Ok("vip".to_owned()));

    // It delivers: an event of the room reaches the client.
    let mut publisher = WsClient::connect(&stack.b.ws_url(), &jwt::any_room("pub")).await;
    let ack = publisher.publish("vip", json!({"hi": 1})).await;
    let ev = c.event().await;
    assert_eq!((ev.room.as_str(), ev.seq), ("vip", ack.seq.unwrap()));

    // Over HTTP: `room_tokens=` opens the rooms they name, and nothing else.
    let poll = |rooms: &str, tokens: &str| format!("/poll?rooms={rooms}&wait=0&token={alice}&room_tokens={tokens}");
    let ok = get(stack.a.addr, &poll("lobby,vip", &vip)).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let wrong = get(stack.a.addr, &poll("other", &vip)).await.unwrap();
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    let late = get(stack.a.addr, &poll("vip", &expired)).await.unwrap();
    assert_eq!(late.status, 401, "{}", late.body);
    let junk = get(stack.a.addr, &poll("vip", "a%20b")).await.unwrap();
    assert_eq!(junk.status, 400, "{}", junk.body);
    let sse = herald_testkit::http::Sse::open(
        stack.b.addr,
        &format!("/sse?rooms=vip&token={alice}&room_tokens={vip}"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(sse.status, 200);
}
