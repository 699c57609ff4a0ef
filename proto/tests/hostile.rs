//! Hostile client frames: whatever a client sends, decoding never panics, and whatever it
//! accepts holds only strings that are valid where the gateway will put them (NATS subjects
//! and headers, JSON frames, SSE lines).

use herald_proto::codec::DecodeError;
use herald_proto::frame::{ClientOp, Id};
use herald_proto::{room, text, Codec};
use proptest::prelude::*;

/// Strings a fuzzer would pick: control characters, separators of every layer, long runs.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_:@=-]{1,16}",
        ".{0,24}",
        "[\\x00-\\x1f\\x7f\r\n .*>,:]{0,8}",
        "[a-z]{1,4}[\r\n\0][a-z]{1,4}",
        (1usize..400).prop_map(|n| "x".repeat(n)),
    ]
}

fn json_id() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        nasty().prop_map(serde_json::Value::from),
        Just(serde_json::json!(1.5)),
        Just(serde_json::json!({"a": 1})),
    ]
}

fn op_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("subscribe".to_owned()),
        Just("unsubscribe".to_owned()),
        Just("publish".to_owned()),
        Just("presence".to_owned()),
        Just("watch".to_owned()),
        Just("unwatch".to_owned()),
        Just("ping".to_owned()),
        nasty(),
    ]
}

fn frame() -> impl Strategy<Value = serde_json::Value> {
    (
        op_name(),
        proptest::option::of(json_id()),
        proptest::option::of(nasty()),
        proptest::option::of(prop_oneof![
            any::<u64>().prop_map(serde_json::Value::from),
            Just(serde_json::json!(u64::MAX)),
            Just(serde_json::json!(-1)),
            Just(serde_json::json!("18446744073709551616")),
        ]),
        proptest::option::of(nasty()),
        proptest::option::of(prop::collection::vec(nasty(), 0..6)),
        proptest::option::of(nasty().prop_map(serde_json::Value::from)),
        proptest::option::of(nasty()),
    )
        .prop_map(|(op, id, room, since, kind, users, data, key)| {
            let mut v = serde_json::json!({ "op": op });
            let m = v.as_object_mut().unwrap();
            let mut put = |k: &str, x: Option<serde_json::Value>| {
                if let Some(x) = x {
                    m.insert(k.to_owned(), x);
                }
            };
            put("id", id);
            put("room", room.map(Into::into));
            put("since", since);
            put("type", kind.map(Into::into));
            put("users", users.map(Into::into));
            put("data", data);
            put("key", key.map(Into::into));
            v
        })
}

fn check_accepted(codec: Codec, bytes: &[u8]) {
    match codec.decode_client(bytes) {
        Ok(frame) => {
            if let Some(id) = &frame.id {
                assert!(text::validate_id(id).is_ok(), "accepted id {id:?}");
            }
            match &frame.op {
                ClientOp::Subscribe { room, .. } | ClientOp::Unsubscribe { room } | ClientOp::Presence { room } => {
                    assert!(room::validate(room).is_ok(), "accepted room {room:?}")
                }
                ClientOp::Publish { room, kind, key, .. } => {
                    assert!(room::validate(room).is_ok(), "accepted room {room:?}");
                    if let Some(key) = key {
                        assert!(text::validate_key(key).is_ok(), "accepted key {key:?}");
                    }
                    if let Some(kind) = kind {
                        assert!(text::validate_type(kind).is_ok(), "accepted type {kind:?}");
                    }
                }
                ClientOp::Watch { users } | ClientOp::Unwatch { users } => {
                    assert!(users.len() <= text::MAX_USERS_PER_OP);
                    for u in users {
                        assert!(text::validate_user(u).is_ok(), "accepted user {u:?}");
                    }
                }
                ClientOp::Ping => {}
            }
        }
        Err(DecodeError::BadRequest {
            id: Some(Id::Str(s)), ..
        }) => {
            assert!(s.len() <= text::MAX_ID_LEN, "echoed a long id");
        }
        Err(DecodeError::BadRequest { message, .. }) => assert!(message.len() < 1024, "long message"),
        Err(DecodeError::Undecodable(_)) => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_json_op_is_either_valid_or_refused(v in frame()) {
        check_accepted(Codec::Json, &serde_json::to_vec(&v).unwrap());
        check_accepted(Codec::MsgPack, &rmp_serde::to_vec_named(&v).unwrap());
    }

    /// The stable-toolchain twin of the `http_query` fuzz target.
    #[test]
    fn any_query_string_parses_without_panicking(q in "([a-z]{1,8}=([^&]|%[0-9a-fA-F]{2}|%){0,40}&?){0,6}") {
        for name in ["rooms", "cursor", "name", "sid", "watch"] {
            let Some(v) = herald_proto::query::param(&q, name) else { continue };
            let _ = text::validate_name(&v);
            let _ = text::validate_sid(&v);
            if let Ok(c) = herald_proto::cursor::Cursor::parse(&v) {
                prop_assert_eq!(herald_proto::cursor::Cursor::parse(&c.to_string()), Ok(c));
            }
        }
    }

    #[test]
    fn any_cursor_text_parses_or_is_refused(s in "([a-z:]{0,6}:[0-9+ -]{0,22},?){0,8}") {
        if let Ok(c) = herald_proto::cursor::Cursor::parse(&s) {
            for (room, _) in c.iter() {
                prop_assert!(room::validate(room).is_ok());
            }
            prop_assert_eq!(herald_proto::cursor::Cursor::parse(&c.to_string()), Ok(c));
        }
    }

    #[test]
    fn any_bytes_decode_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_accepted(Codec::Json, &bytes);
        check_accepted(Codec::MsgPack, &bytes);
    }
}

#[test]
fn the_frame_that_took_a_gateway_down_is_a_bad_request() {
    let e = Codec::Json
        .decode_client(br#"{"op":"publish","id":1,"room":"lobby","data":1,"type":"a\nb"}"#)
        .unwrap_err();
    assert_eq!(
        e,
        DecodeError::BadRequest {
            id: Some(Id::Num(1)),
            message: text::TextError::Type.to_string()
        }
    );
}

#[test]
fn bad_rooms_users_and_ids_are_refused_with_the_id_when_it_is_safe() {
    let refused = |bytes: &[u8]| match Codec::Json.decode_client(bytes) {
        Err(DecodeError::BadRequest { id, message }) => (id, message),
        other => panic!("expected a bad request, got {other:?}"),
    };
    let (id, message) = refused(br#"{"op":"subscribe","id":2,"room":"a.b"}"#);
    assert_eq!(id, Some(Id::Num(2)));
    assert!(message.starts_with("invalid room \"a.b\""), "{message}");
    let (id, message) = refused(br#"{"op":"watch","id":3,"users":["ok","bad.user"]}"#);
    assert_eq!(id, Some(Id::Num(3)));
    assert!(message.contains("`bad.user` is not a valid user id"), "{message}");
    let long = "i".repeat(text::MAX_ID_LEN + 1);
    let (id, message) = refused(format!(r#"{{"op":"ping","id":"{long}"}}"#).as_bytes());
    assert_eq!(id, None, "a long id is not echoed");
    assert_eq!(message, text::TextError::Id.to_string());
    let (id, _) = refused(format!(r#"{{"op":"ping","id":"{long}","x":}}"#).as_bytes());
    assert_eq!(id, None, "nor in a malformed frame");
}
