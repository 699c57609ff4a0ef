//! Events published to NATS reach subscribers on every gateway, in both codecs.

use herald_proto::frame::ServerFrame;
use herald_proto::Codec;
use herald_testkit::{jwt, WsClient};
use serde_json::json;

use crate::{backend_publish, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_event_reaches_both_gateways_in_both_codecs_with_seq_and_prev() {
    let stack = Stack::start().await;
    let token = jwt::any_room("alice");
    let mut json_a = WsClient::connect_codec(&stack.a.ws_url(), &token, Codec::Json).await;
    let mut mp_b = WsClient::connect_codec(&stack.b.ws_url(), &token, Codec::MsgPack).await;
    assert_eq!(mp_b.codec, Codec::MsgPack);
    let welcome = json_a.welcome.clone().unwrap();
    assert_eq!(welcome.user, "alice");
    assert_eq!(welcome.gateway, stack.a.id);
    assert_eq!(welcome.ping_s, 25);

    let (replayed, ack_a) = json_a.subscribe("lobby", None).await;
    assert!(replayed.is_empty());
    assert_eq!(ack_a.seq, Some(0));
    assert_eq!(ack_a.recovered, Some(true));
    let (_, ack_b) = mp_b.subscribe("lobby", None).await;
    assert_eq!(ack_b.seq, Some(0));

    let nats = stack.nats_client().await;
    for i in 0..3 {
        backend_publish(&nats, "lobby", json!({"text": format!("hello {i}")})).await;
    }
    let mut prev = 0;
    for i in 0..3 {
        let a = json_a.event().await;
        let b = mp_b.event().await;
        assert_eq!(a, b, "JSON and MessagePack clients get the same event");
        assert_eq!(a.room, "lobby");
        assert_eq!(a.prev, prev);
        assert!(a.seq > prev);
        assert_eq!(a.kind.as_deref(), Some("message"));
        assert_eq!(a.from, None);
        assert_eq!(a.data, Some(json!({"text": format!("hello {i}")})));
        assert!(a.ts > 1_700_000_000_000);
        prev = a.seq;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_publish_ack_matches_the_seq_subscribers_on_the_other_gateway_see() {
    let stack = Stack::start().await;
    let mut bob = WsClient::connect(&stack.b.ws_url(), &jwt::token("bob", 3600, &["chat"], &[])).await;
    bob.subscribe("chat", None).await;
    let mut alice = WsClient::connect(&stack.a.ws_url(), &jwt::token("alice", 3600, &[], &["chat"])).await;
    let ack = alice.publish("chat", json!({"text": "hi bob"})).await;
    assert_eq!(ack.room.as_deref(), Some("chat"));
    let ev = bob.event().await;
    let first = ev.seq;
    assert_eq!(Some(ev.seq), ack.seq);
    assert_eq!(ev.prev, 0);
    assert_eq!(ev.from.as_deref(), Some("alice"));
    assert_eq!(ev.data, Some(json!({"text": "hi bob"})));

    // A binary payload from a MessagePack client reaches a JSON client as data_b64.
    let mut mp = WsClient::connect_codec(
        &stack.a.ws_url(),
        &jwt::token("carol", 3600, &[], &["chat"]),
        Codec::MsgPack,
    )
    .await;
    let op = rmp_serde::to_vec_named(&serde_json::json!({"op": "publish", "id": 5, "room": "chat"})).unwrap();
    // Append a binary `data` field by hand: map of 4 instead of 3.
    let mut bytes = vec![0x84];
    bytes.extend_from_slice(&op[1..]);
    bytes.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a', 0xc4, 3, 1, 2, 3]);
    mp.send_raw(fastwebsockets::OpCode::Binary, bytes).await;
    let ServerFrame::Ack(ack) = mp.recv().await else {
        panic!("ack expected")
    };
    let ev = bob.event().await;
    assert_eq!(Some(ev.seq), ack.seq);
    assert_eq!(ev.prev, first);
    assert_eq!(ev.data, None);
    assert_eq!(ev.data_bytes, Some(vec![1, 2, 3]));
    assert_eq!(ev.from.as_deref(), Some("carol"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_and_unsubscribe() {
    let stack = Stack::start().await;
    let mut c = WsClient::connect(&stack.a.ws_url(), &jwt::any_room("dan")).await;
    c.op(json!({"op": "ping", "id": 42})).await;
    let frame = c.recv().await;
    assert_eq!(
        frame,
        ServerFrame::Pong(herald_proto::frame::Pong {
            id: Some(herald_proto::frame::Id::Num(42))
        })
    );
    c.subscribe("news", None).await;
    c.op(json!({"op": "unsubscribe", "id": 2, "room": "news"})).await;
    let ServerFrame::Ack(ack) = c.recv().await else {
        panic!("ack expected")
    };
    assert_eq!(ack.room.as_deref(), Some("news"));
    let nats = stack.nats_client().await;
    backend_publish(&nats, "news", json!(1)).await;
    c.op(json!({"op": "ping", "id": 43})).await;
    // Nothing from `news` arrives before the pong.
    assert!(matches!(c.recv().await, ServerFrame::Pong(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_contract_names_with_real_values() {
    let stack = Stack::start().await;
    let mut c = WsClient::connect(&stack.a.ws_url(), &jwt::any_room("metered")).await;
    c.op(json!({"op": "subscribe", "room": "bad.name"})).await;
    assert!(matches!(c.recv().await, ServerFrame::Error(_)));
    c.subscribe("metered", None).await;
    c.publish("metered", json!({"n": 1})).await;
    let a = &stack.a;
    // The event may be written before or after the ack; wait until it has been.
    herald_testkit::wait_until(std::time::Duration::from_secs(10), "a delivery", || async {
        a.metric("herald_gateway_delivery_latency_seconds_count").await >= 1.0
    })
    .await;
    assert!(a.metric("herald_gateway_connections{transport=\"websocket\"}").await >= 1.0);
    assert!(
        a.metric("herald_gateway_connections_opened_total{transport=\"websocket\"}")
            .await
            >= 1.0
    );
    assert!(
        a.metric("herald_gateway_messages_sent_total{transport=\"websocket\"}")
            .await
            >= 4.0
    );
    assert!(a.metric("herald_gateway_messages_received_total").await >= 3.0);
    assert!(a.metric("herald_gateway_delivery_latency_seconds_count").await >= 1.0);
    assert!(
        a.metric("herald_gateway_delivery_latency_seconds_bucket{le=\"+Inf\"}")
            .await
            >= 1.0
    );
    assert!(a.metric("herald_gateway_room_subscriptions").await >= 1.0);
    assert!(a.metric("herald_gateway_nats_subscriptions").await >= 1.0);
    assert!(a.metric("herald_gateway_errors_total{code=\"bad_request\"}").await >= 1.0);
    let body = herald_testkit::http::get(a.admin, "/metrics").await.unwrap().body;
    assert!(
        body.contains("herald_gateway_slow_consumer_disconnects_total"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE herald_gateway_delivery_latency_seconds histogram"),
        "{body}"
    );
    assert_eq!(
        herald_testkit::http::get(a.admin, "/healthz").await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_the_gateways_own_tls() {
    let nats = herald_testkit::NatsServer::start();
    let cert = herald_testkit::tls::TestCert::new();
    let gw = herald_testkit::TestGateway::start_with(&nats.url(), |c| {
        c.tls_cert = Some(cert.cert_path());
        c.tls_key = Some(cert.key_path());
    })
    .await;
    let token = jwt::any_room("secure");
    let tls = cert.connect(gw.addr).await.expect("TLS handshake");
    let opts = herald_testkit::client::Connect {
        url: "wss://localhost/ws".to_string(),
        token: Some(token.clone()),
        token_in_header: true,
        ..Default::default()
    };
    let mut c = WsClient::open_on(tls, "localhost", "/ws".into(), opts)
        .await
        .expect("wss upgrade");
    assert!(matches!(c.recv().await, ServerFrame::Welcome(_)));
    c.subscribe("vault", None).await;
    c.op(json!({"op": "publish", "id": 1, "room": "vault", "data": "sealed"}))
        .await;
    // The event and the ack may come in either order.
    let (mut ack, mut ev) = (None, None);
    while ack.is_none() || ev.is_none() {
        match c.recv().await {
            ServerFrame::Ack(a) => ack = a.seq,
            ServerFrame::Event(e) => ev = Some(e.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ev, ack);
    // Plain TCP to a TLS listener gets no HTTP answer.
    assert!(WsClient::open(herald_testkit::client::Connect {
        url: gw.ws_url(),
        token: Some(token),
        ..Default::default()
    })
    .await
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_mode_gives_a_fresh_user_and_the_rooms_its_flags_name() {
    let nats = herald_testkit::NatsServer::start();
    let gw = herald_testkit::TestGateway::start_with(&nats.url(), |c| {
        c.allow_anonymous = true;
        c.anonymous_rooms = vec!["anything:*".into()];
        c.anonymous_publish = vec!["anything:*".into()];
    })
    .await;
    let opts = herald_testkit::client::Connect {
        url: format!("{}?name=Guest%20One", gw.ws_url()),
        ..Default::default()
    };
    let mut c = WsClient::open(opts).await.expect("anonymous upgrade");
    let ServerFrame::Welcome(w) = c.recv().await else {
        panic!("welcome expected")
    };
    // Without a sid the id is random: not made of the connection's (which a restarted
    // gateway would hand out again).
    assert!(
        w.user.starts_with("anon-") && w.user.len() == "anon-".len() + 24,
        "{}",
        w.user
    );
    assert!(w.conn.starts_with(&gw.id));
    c.subscribe("anything:goes", None).await;
    let mut other = WsClient::connect(&gw.ws_url(), &jwt::token("member", 3600, &["anything:goes"], &[])).await;
    other.subscribe("anything:goes", None).await;
    c.op(json!({"op": "publish", "id": 1, "room": "anything:goes", "data": {"hi": true}}))
        .await;
    let ev = other.event().await;
    assert_eq!(ev.from.as_deref(), Some(w.user.as_str()));
    // A bad token is still refused in anonymous mode.
    let bad = herald_testkit::client::Connect {
        url: gw.ws_url(),
        token: Some("garbage".into()),
        ..Default::default()
    };
    assert_eq!(WsClient::open(bad).await.err(), Some(401));
}
