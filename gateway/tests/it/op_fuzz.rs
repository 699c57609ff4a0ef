//! A property test of the whole client-op path: random sequences of valid and hostile frames
//! go through a real WebSocket to a real gateway (decode → validate → session → hub → NATS
//! headers and subjects, against a real nats-server). Whatever the input, the connection
//! either answers every frame or closes with a contract code — never 1011 (a panic) — and
//! the gateway keeps serving everyone else. Bounded: a fixed number of cases.

use std::time::Duration;

use fastwebsockets::OpCode;
use herald_proto::frame::{Id, ServerFrame};
use herald_testkit::client::Incoming;
use herald_testkit::{jwt, NatsServer, TestGateway, WsClient};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use crate::backend_publish;

const CASES: u32 = 40;

fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("lobby".to_owned()),
        Just("user:fuzzer".to_owned()),
        Just("user:someone-else".to_owned()),
        "[A-Za-z0-9_:@=-]{1,12}",
        ".{0,16}",
        "[\\x00-\\x1f\\x7f\r\n .*>,:]{1,6}",
        "[a-z]{1,3}[\r\n\0][a-z]{1,3}",
        (100usize..300).prop_map(|n| "x".repeat(n)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!("7")),
        Just(json!(18446744073709551615u64)),
    ]
}

fn op() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        Just("subscribe"),
        Just("unsubscribe"),
        Just("publish"),
        Just("presence"),
        Just("watch"),
        Just("unwatch"),
        Just("ping"),
        Just("fly"),
    ];
    (
        name,
        proptest::option::of(prop_oneof![number(), nasty().prop_map(Value::from)]),
        proptest::option::of(nasty()),
        proptest::option::of(number()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(nasty()),
        proptest::option::of(prop::collection::vec(nasty(), 0..4)),
        proptest::option::of(prop_oneof![
            Just(json!({"text": "hi"})),
            Just(Value::Null),
            nasty().prop_map(Value::from),
            Just(json!([1, {"a": [null]}])),
        ]),
    )
        .prop_map(|(op, id, room, since, presence, kind, users, data)| {
            let mut v = json!({ "op": op });
            let m = v.as_object_mut().unwrap();
            for (k, x) in [
                ("id", id),
                ("room", room.map(Value::from)),
                ("since", since),
                ("presence", presence.map(Value::from)),
                ("type", kind.map(Value::from)),
                ("users", users.map(Value::from)),
                ("data", data),
            ] {
                if let Some(x) = x {
                    m.insert(k.to_owned(), x);
                }
            }
            v
        })
}

#[derive(Debug, Clone)]
enum Input {
    Op(Value),
    /// Not a JSON object: a bad request, the connection stays.
    Text(String),
    /// Binary on the JSON protocol: close 1003.
    Binary(Vec<u8>),
    /// Not UTF-8: close 1007.
    Bytes(Vec<u8>),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        8 => op().prop_map(Input::Op),
        1 => ".{0,40}".prop_map(Input::Text),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Input::Binary),
        1 => Just(Input::Bytes(vec![b'{', 0xff, 0xfe, b'}'])),
    ]
}

/// Sends the inputs, then a ping; returns how the connection ended up.
async fn run(url: &str, inputs: &[Input]) -> Result<(), String> {
    let mut c = WsClient::connect(url, &jwt::any_room("fuzzer")).await;
    for i in inputs {
        let (op, bytes) = match i {
            Input::Op(v) => (OpCode::Text, serde_json::to_vec(v).unwrap()),
            Input::Text(s) => (OpCode::Text, s.clone().into_bytes()),
            Input::Binary(b) => (OpCode::Binary, b.clone()),
            Input::Bytes(b) => (OpCode::Text, b.clone()),
        };
        c.send_raw(op, bytes).await;
    }
    c.send_raw(OpCode::Text, br#"{"op":"ping","id":"end"}"#.to_vec()).await;
    loop {
        match c.next_within(Duration::from_secs(15)).await {
            None => return Err("no answer within 15 s".into()),
            Some(Incoming::Frame(ServerFrame::Pong(p))) if p.id == Some(Id::Str("end".into())) => return Ok(()),
            Some(Incoming::Frame(ServerFrame::Error(e))) if e.code == herald_proto::ErrorCode::Internal => {
                return Err(format!("internal error: {}", e.message))
            }
            Some(Incoming::Frame(_)) => continue,
            Some(Incoming::Closed(code)) if [1002, 1003, 1007, 1009, 4029].contains(&code) => return Ok(()),
            Some(Incoming::Closed(code)) => return Err(format!("closed with {code}")),
            Some(Incoming::Eof) => return Err("connection dropped without a close frame".into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_sequence_of_frames_is_answered_or_closed_with_a_contract_code() {
    let nats = NatsServer::start();
    let gw = TestGateway::start(&nats.url()).await;
    let url = gw.ws_url();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut bystander = WsClient::connect(&url, &jwt::any_room("bystander")).await;
    bystander.subscribe("calm", None).await;

    let mut runner = TestRunner::new(Config::default());
    let strategy = prop::collection::vec(input(), 1..12);
    for case in 0..CASES {
        let inputs = strategy.new_tree(&mut runner).expect("a case").current();
        if let Err(why) = run(&url, &inputs).await {
            panic!("case {case}: {why}\ninputs: {inputs:#?}");
        }
        backend_publish(&client, "calm", json!({"case": case})).await;
        let ev = bystander.event().await;
        assert_eq!(ev.data, Some(json!({"case": case})), "the bystander got every event");
    }
    assert_eq!(gw.readyz().await, 200);
}
