//! The server API on NATS (`herald.api.disconnect`), with a real nats-server, two fanout
//! processes answering in a queue group and two in-process gateways: every transport of the
//! user is closed on both gateways, other users are untouched, a revocation keeps the old
//! token out of every gateway (a gateway started later included), and bad requests do
//! nothing.

use std::time::Duration;

use herald_proto::claims::{Claims, Grants};
use herald_proto::frame::{Disconnect, ServerFrame};
use herald_testkit::client::{Connect, Incoming};
use herald_testkit::http::{get, Sse};
use herald_testkit::{jwt, wait_until, NatsServer, WsClient};
use serde_json::{json, Value};

mod api_common;

const WITHIN: Duration = Duration::from_secs(1);

/// Asks `herald.api.disconnect`; the decoded answer.
async fn disconnect(client: &async_nats::Client, body: &str) -> Value {
    let ask = client.request("herald.api.disconnect", body.to_owned().into());
    let reply = tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .expect("an answer within 5 s")
        .expect("the request is answered");
    serde_json::from_slice(&reply.payload).expect("a JSON answer")
}

/// A token for `user` (any room) issued `iat_offset` seconds from now.
fn token_issued(user: &str, iat_offset: i64) -> String {
    let now = jwt::now();
    jwt::sign(
        &Claims {
            sub: user.to_owned(),
            exp: now + 3600,
            iat: Some((now as i64 + iat_offset) as u64),
            name: None,
            herald: Some(Grants {
                sub: vec!["*".into()],
                publish: vec!["*".into()],
            }),
        },
        jwt::SECRET,
    )
}

async fn ws_status(url: &str, token: &str) -> Result<(), u16> {
    let opts = Connect {
        url: url.to_owned(),
        token: Some(token.to_owned()),
        ..Connect::default()
    };
    WsClient::open(opts).await.map(drop)
}

/// Reads a WebSocket client's `disconnect` frame and then its close code.
async fn closed_by_api(c: &mut WsClient, what: &str) -> (Disconnect, u16) {
    let frame = match c.next_within(WITHIN).await {
        Some(Incoming::Frame(ServerFrame::Disconnect(d))) => d,
        other => panic!("{what}: expected the disconnect frame within {WITHIN:?}, got {other:?}"),
    };
    match c.next_within(WITHIN).await {
        Some(Incoming::Closed(code)) => (frame, code),
        other => panic!("{what}: expected the close within {WITHIN:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_reaches_every_transport_on_every_gateway_and_revoke_keeps_the_user_out() {
    let nats = NatsServer::start();
    let (fanouts, a, b) = api_common::two_by_two(&nats, "api").await;
    let client = async_nats::connect(nats.url()).await.expect("NATS connects");

    let bob = jwt::any_room("bob");
    let mut bob_a = WsClient::connect(&a.ws_url(), &bob).await;
    bob_a.subscribe("lobby", None).await;
    let mut bob_b = WsClient::connect(&b.ws_url(), &bob).await;
    let mut bob_sse = Sse::open(b.addr, &format!("/sse?rooms=lobby&token={bob}"), &[])
        .await
        .expect("SSE opens");
    assert_eq!(bob_sse.status, 200);
    let long_poll = {
        let (addr, path) = (a.addr, format!("/poll?rooms=lobby&wait=20&token={bob}"));
        tokio::spawn(async move { get(addr, &path).await })
    };
    let mut alice = WsClient::connect(&a.ws_url(), &jwt::any_room("alice")).await;
    alice.subscribe("lobby", None).await;
    // Dan polls with a session (presence): between his polls, his session is what there is.
    let dan = jwt::any_room("dan");
    let dan_poll = format!("/poll?rooms=lobby&sid=dan-tab-0123456789abcdef&presence=lobby&wait=0&token={dan}");
    assert_eq!(get(b.addr, &dan_poll).await.unwrap().status, 200);
    // Held means attached to its room: bob's WebSocket, his SSE stream, his long-poll and
    // alice make four subscriptions (both gateways count in this process's metrics).
    wait_until(Duration::from_secs(5), "the long-poll is held", || async {
        a.metric("herald_gateway_connections{transport=\"long-poll\"}").await == 1.0
            && a.metric("herald_gateway_room_subscriptions").await == 4.0
    })
    .await;
    wait_until(Duration::from_secs(5), "the SSE stream is open", || async {
        b.metric("herald_gateway_connections{transport=\"sse\"}").await == 1.0
    })
    .await;

    // Bad requests: refused, nothing done.
    for (body, why) in [
        ("not json", "invalid request"),
        (r#"{"user":7}"#, "invalid request"),
        (r#"{"user":"bob","code":1000}"#, "`code`"),
        (r#"{"user":"bob","reason":"a\u0007b"}"#, "`reason`"),
        (r#"{"user":"bo.b"}"#, "`user`"),
        (r#"{"user":"bob","reason":"x","code":5000}"#, "`code`"),
    ] {
        let answer = disconnect(&client, body).await;
        assert_eq!(answer["error"]["code"], "bad_request", "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{body}: {answer}");
    }
    if let Some(unexpected) = bob_a.next_within(Duration::from_millis(200)).await {
        panic!("a refused request reached bob: {unexpected:?}");
    }

    let answer = disconnect(
        &client,
        r#"{"user":"bob","code":4001,"reason":"banned","reconnect":false,"revoke":true}"#,
    )
    .await;
    let result = &answer["result"];
    assert_eq!(
        result["connections"], 4,
        "two WebSockets, an SSE stream, a long-poll: {answer}"
    );
    assert_eq!(result["gateways"], 2, "{answer}");
    assert!(result.get("missing").is_none(), "{answer}");
    assert!(result["revoked_before"].as_u64().is_some(), "{answer}");

    let told = Disconnect {
        code: 4001,
        reason: "banned".into(),
        reconnect: false,
    };
    for (c, what) in [(&mut bob_a, "bob on a"), (&mut bob_b, "bob on b")] {
        assert_eq!(closed_by_api(c, what).await, (told.clone(), 4001), "{what}");
    }
    let ev = bob_sse.next_event(WITHIN).await.expect("the SSE disconnect event");
    assert_eq!(ev.event.as_deref(), Some("disconnect"));
    let frame: ServerFrame = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(frame, ServerFrame::Disconnect(told.clone()));
    assert!(bob_sse.next_event(WITHIN).await.is_none(), "the SSE stream ends");
    let polled = tokio::time::timeout(WITHIN, long_poll)
        .await
        .expect("the long-poll is answered within 1 s")
        .unwrap()
        .unwrap();
    assert_eq!(polled.status, 200);
    let body: Value = serde_json::from_str(&polled.body).unwrap();
    assert_eq!(body["events"], json!([]));
    assert_eq!(
        body["disconnect"],
        json!({"code": 4001, "reason": "banned", "reconnect": false})
    );

    // Alice was not touched: her publish is acked, and its event reaches her (in either order).
    alice
        .op(json!({"op": "publish", "id": 9, "room": "lobby", "data": {"still": "here"}}))
        .await;
    let (mut acked, mut event) = (None, None);
    while acked.is_none() || event.is_none() {
        match alice.recv().await {
            ServerFrame::Ack(a) => acked = a.seq,
            ServerFrame::Event(e) => event = Some((e.seq, e.data)),
            other => panic!("alice: unexpected {other:?}"),
        }
    }
    assert_eq!(event, Some((acked.unwrap(), Some(json!({"still": "here"})))));

    // The old token is refused on every gateway and transport; a newer one is not.
    for gw in [&a, &b] {
        assert_eq!(ws_status(&gw.ws_url(), &bob).await, Err(401));
        let sse = Sse::open(gw.addr, &format!("/sse?rooms=lobby&token={bob}"), &[])
            .await
            .unwrap();
        assert_eq!(sse.status, 401);
        let poll = get(gw.addr, &format!("/poll?rooms=lobby&wait=0&token={bob}"))
            .await
            .unwrap();
        assert_eq!(poll.status, 401, "{}", poll.body);
        assert_eq!(ws_status(&gw.ws_url(), &token_issued("bob", 2)).await, Ok(()));
    }
    // A gateway started after the revocation learns it from the bucket.
    let c = api_common::gateway(&nats).await;
    wait_until(
        Duration::from_secs(5),
        "the new gateway refuses the old token",
        || async { ws_status(&c.ws_url(), &bob).await == Err(401) },
    )
    .await;
    assert_eq!(ws_status(&c.ws_url(), &token_issued("bob", 2)).await, Ok(()));

    // Without revoke: dan's session ends, his next poll says so (reconnect: true), and the
    // one after that is an ordinary poll.
    let answer = disconnect(&client, r#"{"user":"dan"}"#).await;
    assert_eq!(answer["result"]["connections"], 1, "dan's polling session: {answer}");
    assert!(answer["result"].get("revoked_before").is_none(), "{answer}");
    let next: Value = serde_json::from_str(&get(b.addr, &dan_poll).await.unwrap().body).unwrap();
    assert_eq!(
        next["disconnect"],
        json!({"code": 4000, "reason": "disconnected", "reconnect": true}),
        "{next}"
    );
    let after: Value = serde_json::from_str(&get(b.addr, &dan_poll).await.unwrap().body).unwrap();
    assert!(after.get("disconnect").is_none(), "{after}");
    assert_eq!(ws_status(&a.ws_url(), &dan).await, Ok(()), "dan was not revoked");

    // A user with no connection anywhere: nothing reached, every gateway answered.
    wait_until(Duration::from_secs(10), "both fanouts hear three gateways", || async {
        fanouts[0].metric("herald_fanout_gateways").await == 3.0
            && fanouts[1].metric("herald_fanout_gateways").await == 3.0
    })
    .await;
    let answer = disconnect(&client, r#"{"user":"nobody"}"#).await;
    assert_eq!(answer["result"], json!({"connections": 0, "gateways": 3}), "{answer}");
}
