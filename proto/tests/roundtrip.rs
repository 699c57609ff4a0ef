//! Round-trip property tests for both codecs, and golden fixtures.

use bytes::Bytes;
use herald_proto::frame::{ClientFrame, ClientOp, EventRef, Id, Payload, ServerFrame};
use herald_proto::Codec;
use proptest::prelude::*;

fn room() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_:@=-]{1,32}"
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn id() -> impl Strategy<Value = Option<Id>> {
    prop_oneof![
        Just(None),
        any::<u64>().prop_map(|n| Some(Id::Num(n))),
        "[a-z0-9]{1,8}".prop_map(|s| Some(Id::Str(s))),
    ]
}

fn op() -> impl Strategy<Value = ClientOp> {
    prop_oneof![
        (room(), proptest::option::of(any::<u64>()), any::<bool>()).prop_map(|(room, since, presence)| {
            ClientOp::Subscribe {
                room,
                since,
                presence,
                token: None,
            }
        }),
        room().prop_map(|room| ClientOp::Unsubscribe { room }),
        (
            room(),
            json_value(),
            proptest::option::of("[a-z]{1,8}"),
            proptest::option::of("[!-~]{1,64}")
        )
            .prop_map(|(room, v, kind, key)| ClientOp::Publish {
                room,
                data: Payload::Json(Bytes::from(serde_json::to_vec(&v).unwrap())),
                kind,
                key
            }),
        room().prop_map(|room| ClientOp::Presence { room }),
        // Decoding sorts user lists and drops repeats.
        prop::collection::btree_set("[a-z]{1,8}", 0..4).prop_map(|users| ClientOp::Watch {
            users: users.into_iter().collect()
        }),
        prop::collection::btree_set("[a-z]{1,8}", 0..4).prop_map(|users| ClientOp::Unwatch {
            users: users.into_iter().collect()
        }),
        Just(ClientOp::Ping),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(id in id(), op in op()) {
        let frame = ClientFrame { id, op };
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = codec.encode_client(&frame).unwrap();
            prop_assert_eq!(codec.decode_client(&bytes).unwrap(), frame.clone());
        }
    }

    #[test]
    fn pretty_printed_payloads_are_framed_on_one_line(v in json_value()) {
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        let pretty = [pretty.as_slice(), b"\r\n"].concat();
        let ev = EventRef { room: "r", seq: 1, prev: 0, ts: 0, kind: None, from: None, payload: &pretty };
        let frame = Codec::Json.encode_event(ev);
        prop_assert!(!frame.contains(&b'\n') && !frame.contains(&b'\r'));
        let ServerFrame::Event(e) = Codec::Json.decode_server(&frame).unwrap() else { panic!("not an event") };
        prop_assert_eq!(e.data.unwrap_or(serde_json::Value::Null), v);
    }

    #[test]
    fn events_decode_the_same_in_both_codecs(
        room in room(), seq in 1u64.., prev in any::<u64>(), ts in any::<u64>(),
        kind in proptest::option::of("[a-z]{1,8}"), from in proptest::option::of("[a-z]{1,8}"),
        v in json_value(), raw in prop::collection::vec(any::<u8>(), 0..64), binary in any::<bool>(),
    ) {
        let json = serde_json::to_vec(&v).unwrap();
        let payload = if binary && !herald_proto::frame::is_json(&raw) { raw } else { json };
        let ev = EventRef { room: &room, seq, prev, ts, kind: kind.as_deref(), from: from.as_deref(), payload: &payload };
        let j = Codec::Json.decode_server(&Codec::Json.encode_event(ev)).unwrap();
        let m = Codec::MsgPack.decode_server(&Codec::MsgPack.encode_event(ev)).unwrap();
        prop_assert_eq!(&j, &m);
        let ServerFrame::Event(e) = j else { panic!("not an event") };
        prop_assert_eq!(e.seq, seq);
        prop_assert_eq!(e.prev, prev);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Codec::Json.decode_client(&bytes);
        let _ = Codec::MsgPack.decode_client(&bytes);
    }
}

/// Golden fixtures: `NAME.json` is a client frame, `NAME.msgpack.hex` its MessagePack form.
/// Fixtures are only ever added, so old clients keep decoding.
#[test]
fn golden_client_frames() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(stem) = name.strip_suffix(".client.json") else {
            continue;
        };
        let json = std::fs::read(&path).unwrap();
        let frame = Codec::Json.decode_client(&json).unwrap();
        let hex = std::fs::read_to_string(dir.join(format!("{stem}.client.msgpack.hex"))).unwrap();
        let mp = decode_hex(hex.trim());
        assert_eq!(Codec::MsgPack.decode_client(&mp).unwrap(), frame, "{stem}");
        seen += 1;
    }
    assert_eq!(seen, 3);
}

#[test]
fn golden_event_frame() {
    let ev = EventRef {
        room: "lobby",
        seq: 58,
        prev: 57,
        ts: 1732312345123,
        kind: Some("message"),
        from: Some("alice"),
        payload: br#"{"text":"hi"}"#,
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let json = std::fs::read_to_string(dir.join("event.server.json")).unwrap();
    assert_eq!(String::from_utf8(Codec::Json.encode_event(ev)).unwrap(), json.trim());
    let hex = std::fs::read_to_string(dir.join("event.server.msgpack.hex")).unwrap();
    assert_eq!(Codec::MsgPack.encode_event(ev), decode_hex(hex.trim()));
}

fn decode_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
