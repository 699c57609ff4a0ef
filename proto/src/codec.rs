//! The two sub-protocols: `herald.v1.json` (text frames) and `herald.v1.msgpack` (binary
//! frames, MessagePack maps with the same field names).

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frame::{ClientFrame, ClientOp, Event, EventRef, Id, Payload, ServerFrame};
use crate::{room, text};

/// The sub-protocol name of the JSON codec.
pub const JSON_PROTOCOL: &str = "herald.v1.json";
/// The sub-protocol name of the MessagePack codec.
pub const MSGPACK_PROTOCOL: &str = "herald.v1.msgpack";

/// A wire codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Json,
    MsgPack,
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a value of the codec at all (close 1007).
    #[error("undecodable frame: {0}")]
    Undecodable(String),
    /// A value, but not a valid op (`bad_request`; the connection stays open).
    #[error("{message}")]
    BadRequest { id: Option<Id>, message: String },
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("binary data cannot be sent over the JSON protocol")]
    BinaryOverJson,
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    MsgPack(#[from] rmp_serde::encode::Error),
}

/// A client op as it appears on the wire, before validation. Unknown fields are ignored.
#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct WireOp<D> {
    op: Option<String>,
    id: Option<Id>,
    room: Option<String>,
    since: Option<u64>,
    presence: Option<bool>,
    /// Present (even as `null`) or absent.
    #[serde(default, deserialize_with = "present")]
    data: Option<D>,
    #[serde(rename = "type")]
    kind: Option<String>,
    key: Option<String>,
    users: Option<Vec<String>>,
    token: Option<String>,
}

/// A field that is present, whatever its value: `null` data is data.
fn present<'de, D: Deserialize<'de>, De: serde::Deserializer<'de>>(de: De) -> Result<Option<D>, De::Error> {
    D::deserialize(de).map(Some)
}

#[derive(Serialize)]
struct EventOut<'a, D> {
    t: &'static str,
    room: &'a str,
    seq: u64,
    prev: u64,
    ts: u64,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_b64: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MsgPackData<'a> {
    Value(serde_json::Value),
    Bytes(#[serde(with = "serde_bytes")] &'a [u8]),
}

// === impl Codec ===

impl Codec {
    /// The codec of a `Sec-WebSocket-Protocol` name.
    pub fn from_protocol(name: &str) -> Option<Self> {
        match name.trim() {
            JSON_PROTOCOL => Some(Self::Json),
            MSGPACK_PROTOCOL => Some(Self::MsgPack),
            _ => None,
        }
    }

    pub fn protocol(self) -> &'static str {
        match self {
            Self::Json => JSON_PROTOCOL,
            Self::MsgPack => MSGPACK_PROTOCOL,
        }
    }

    /// Whether frames of this codec travel as binary WebSocket frames.
    pub fn is_binary(self) -> bool {
        self == Self::MsgPack
    }

    // --- client frames ---

    pub fn decode_client(self, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
        match self {
            Self::Json => decode_client_json(bytes),
            Self::MsgPack => decode_client_msgpack(bytes),
        }
    }

    pub fn encode_client(self, frame: &ClientFrame) -> Result<Vec<u8>, EncodeError> {
        let value = client_to_json(frame)?;
        self.encode_value(&value)
    }

    // --- server frames ---

    /// Encodes a stored event. The hot path: called once per event per codec, not per client.
    pub fn encode_event(self, ev: EventRef<'_>) -> Vec<u8> {
        let json = crate::frame::is_json(ev.payload);
        fn out<'a, D>(ev: &EventRef<'a>, data: Option<D>, data_b64: Option<String>) -> EventOut<'a, D> {
            EventOut {
                t: "event",
                room: ev.room,
                seq: ev.seq,
                prev: ev.prev,
                ts: ev.ts,
                kind: ev.kind,
                from: ev.from,
                data,
                data_b64,
            }
        }
        let encoded = match self {
            Self::Json if json => {
                let compact = one_line_json(ev.payload);
                let raw: &RawValue = serde_json::from_slice(&compact).expect("checked above");
                serde_json::to_vec(&out(&ev, Some(raw), None)).map_err(EncodeError::from)
            }
            Self::Json => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(ev.payload);
                serde_json::to_vec(&out(&ev, None::<&RawValue>, Some(b64))).map_err(EncodeError::from)
            }
            Self::MsgPack => {
                let data = match serde_json::from_slice::<serde_json::Value>(ev.payload) {
                    Ok(v) if json => MsgPackData::Value(v),
                    _ => MsgPackData::Bytes(ev.payload),
                };
                rmp_serde::to_vec_named(&out(&ev, Some(data), None)).map_err(EncodeError::from)
            }
        };
        encoded.expect("an event of plain fields always encodes")
    }

    pub fn encode_server(self, frame: &ServerFrame) -> Vec<u8> {
        if let ServerFrame::Event(ev) = frame {
            let payload = match (&ev.data, &ev.data_bytes) {
                (_, Some(b)) => b.clone(),
                (Some(v), None) => serde_json::to_vec(v).expect("a JSON value encodes"),
                (None, None) => b"null".to_vec(),
            };
            return self.encode_event(EventRef {
                room: &ev.room,
                seq: ev.seq,
                prev: ev.prev,
                ts: ev.ts,
                kind: ev.kind.as_deref(),
                from: ev.from.as_deref(),
                payload: &payload,
            });
        }
        match self {
            Self::Json => serde_json::to_vec(frame).expect("server frames always encode"),
            Self::MsgPack => rmp_serde::to_vec_named(frame).expect("server frames always encode"),
        }
    }

    pub fn decode_server(self, bytes: &[u8]) -> Result<ServerFrame, DecodeError> {
        let undecodable = |e: &dyn std::fmt::Display| DecodeError::Undecodable(e.to_string());
        let (mut value, bin) = match self {
            Self::Json => (serde_json::from_slice(bytes).map_err(|e| undecodable(&e))?, None),
            Self::MsgPack => {
                let mut v = read_msgpack(bytes)?;
                let bin = take_binary_data(&mut v);
                (serde_json::to_value(&v).map_err(|e| undecodable(&e))?, bin)
            }
        };
        let b64 = value
            .as_object_mut()
            .and_then(|m| m.remove("data_b64"))
            .and_then(|v| v.as_str().map(str::to_owned));
        let mut frame: ServerFrame = serde_json::from_value(value).map_err(|e| undecodable(&e))?;
        if let ServerFrame::Event(Event { data_bytes, .. }) = &mut frame {
            *data_bytes = match (bin, b64) {
                (Some(b), _) => Some(b),
                (None, Some(s)) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| undecodable(&e))?,
                ),
                (None, None) => None,
            };
        }
        Ok(frame)
    }

    fn encode_value(self, value: &serde_json::Value) -> Result<Vec<u8>, EncodeError> {
        Ok(match self {
            Self::Json => serde_json::to_vec(value)?,
            Self::MsgPack => rmp_serde::to_vec_named(value)?,
        })
    }
}

/// The JSON text with no line breaks: CR and LF can only be whitespace between tokens in
/// valid JSON (inside strings they are escaped), so whitespace outside strings is dropped
/// when there is a line break. A frame then always fits on one line, which SSE's `data:`
/// field and line-based tools need.
fn one_line_json(json: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !json.iter().any(|&b| b == b'\n' || b == b'\r') {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            out.push(b);
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn decode_client_json(bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    match serde_json::from_slice::<WireOp<Box<RawValue>>>(bytes) {
        Ok(wire) => validate(wire, |raw| {
            Ok(Payload::Json(Bytes::copy_from_slice(raw.get().as_bytes())))
        }),
        Err(e) => {
            let id = serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .and_then(|id| serde_json::from_value(id).ok())
                .filter(|id| text::validate_id(id).is_ok());
            Err(DecodeError::BadRequest {
                id,
                message: malformed(&e),
            })
        }
    }
}

fn decode_client_msgpack(bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    let value = read_msgpack(bytes)?;
    let id = value
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("id")))
        .and_then(|(_, v)| rmpv::ext::from_value(v.clone()).ok())
        .filter(|id| text::validate_id(id).is_ok());
    let wire: WireOp<rmpv::Value> = rmpv::ext::from_value(value).map_err(|e| DecodeError::BadRequest {
        id,
        message: malformed(&e),
    })?;
    validate(wire, |data| match data {
        rmpv::Value::Binary(b) => Ok(Payload::Binary(Bytes::from(b))),
        other => serde_json::to_vec(&other)
            .map(|v| Payload::Json(Bytes::from(v)))
            .map_err(|e| format!("data is not representable as JSON: {e}")),
    })
}

/// A decoder's complaint, cut short: it may quote the client's input.
fn malformed(e: &dyn std::fmt::Display) -> String {
    format!("malformed op: {}", text::printable_long(&e.to_string()))
}

fn read_msgpack(bytes: &[u8]) -> Result<rmpv::Value, DecodeError> {
    let mut rest = bytes;
    let value = rmpv::decode::read_value(&mut rest).map_err(|e| DecodeError::Undecodable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Undecodable("trailing bytes after the value".into()));
    }
    Ok(value)
}

/// Removes a binary `data` field from a MessagePack map, returning its bytes.
fn take_binary_data(value: &mut rmpv::Value) -> Option<Vec<u8>> {
    let rmpv::Value::Map(entries) = value else {
        return None;
    };
    let pos = entries
        .iter()
        .position(|(k, v)| k.as_str() == Some("data") && matches!(v, rmpv::Value::Binary(_)))?;
    match entries.remove(pos).1 {
        rmpv::Value::Binary(b) => Some(b),
        _ => None,
    }
}

/// Checks a decoded op against every rule of the protocol: after this, each string in a
/// [`ClientFrame`] is valid for the subject, header or frame it will go into.
fn validate<D>(
    wire: WireOp<D>,
    payload: impl FnOnce(D) -> Result<Payload, String>,
) -> Result<ClientFrame, DecodeError> {
    let id = match wire.id {
        Some(id) if text::validate_id(&id).is_err() => {
            return Err(DecodeError::BadRequest {
                id: None,
                message: text::TextError::Id.to_string(),
            })
        }
        id => id,
    };
    let bad = |message: String| DecodeError::BadRequest {
        id: id.clone(),
        message,
    };
    let need_room = || {
        let room = wire.room.clone().ok_or_else(|| bad("`room` is required".into()))?;
        room::validate(&room).map_err(|e| bad(format!("invalid room \"{}\": {e}", text::printable(&room))))?;
        Ok(room)
    };
    let need_users = || {
        let users = wire.users.as_deref().ok_or_else(|| bad("`users` is required".into()))?;
        text::validate_users(users).map_err(|e| bad(e.to_string()))
    };
    let op = match wire.op.as_deref() {
        Some("subscribe") => {
            if let Some(token) = &wire.token {
                text::validate_token(token).map_err(|e| bad(e.to_string()))?;
            }
            ClientOp::Subscribe {
                room: need_room()?,
                since: wire.since,
                presence: wire.presence.unwrap_or(false),
                token: wire.token,
            }
        }
        Some("unsubscribe") => ClientOp::Unsubscribe { room: need_room()? },
        Some("publish") => {
            let room = need_room()?;
            if let Some(kind) = &wire.kind {
                text::validate_type(kind).map_err(|e| bad(e.to_string()))?;
            }
            if let Some(key) = &wire.key {
                text::validate_key(key).map_err(|e| bad(e.to_string()))?;
            }
            let data = wire.data.ok_or_else(|| bad("`data` is required".into()))?;
            ClientOp::Publish {
                room,
                data: payload(data).map_err(bad)?,
                kind: wire.kind,
                key: wire.key,
            }
        }
        Some("presence") => ClientOp::Presence { room: need_room()? },
        Some("watch") => ClientOp::Watch { users: need_users()? },
        Some("unwatch") => ClientOp::Unwatch { users: need_users()? },
        Some("ping") => ClientOp::Ping,
        Some(other) => return Err(bad(format!("unknown op `{}`", text::printable(other)))),
        None => return Err(bad("`op` is required".into())),
    };
    Ok(ClientFrame { id, op })
}

fn client_to_json(frame: &ClientFrame) -> Result<serde_json::Value, EncodeError> {
    use serde_json::{json, Value};
    let mut v = match &frame.op {
        ClientOp::Subscribe {
            room,
            since,
            presence,
            token,
        } => {
            let mut v = json!({"op": "subscribe", "room": room});
            if let Some(since) = since {
                v["since"] = json!(since);
            }
            if let Some(token) = token {
                v["token"] = json!(token);
            }
            if *presence {
                v["presence"] = json!(true);
            }
            v
        }
        ClientOp::Unsubscribe { room } => json!({"op": "unsubscribe", "room": room}),
        ClientOp::Publish { room, data, kind, key } => {
            let data: Value = match data {
                Payload::Json(b) => serde_json::from_slice(b)?,
                Payload::Binary(_) => return Err(EncodeError::BinaryOverJson),
            };
            let mut v = json!({"op": "publish", "room": room, "data": data});
            if let Some(kind) = kind {
                v["type"] = json!(kind);
            }
            if let Some(key) = key {
                v["key"] = json!(key);
            }
            v
        }
        ClientOp::Presence { room } => json!({"op": "presence", "room": room}),
        ClientOp::Watch { users } => json!({"op": "watch", "users": users}),
        ClientOp::Unwatch { users } => json!({"op": "unwatch", "users": users}),
        ClientOp::Ping => json!({"op": "ping"}),
    };
    if let Some(id) = &frame.id {
        v["id"] = serde_json::to_value(id)?;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_view_reads_what_the_gateway_encodes_and_nothing_else() {
        let ev = EventRef {
            room: "r\"1",
            seq: 7,
            prev: 5,
            ts: 99,
            kind: Some("k"),
            from: None,
            payload: br#"{"t0":1}"#,
        };
        let bytes = Codec::Json.encode_event(ev);
        let view = crate::frame::EventView::decode(&bytes).expect("an event");
        assert_eq!((view.room.as_ref(), view.seq, view.prev, view.ts), ("r\"1", 7, 5, 99));
        assert_eq!(view.data.map(|d| d.get()), Some(r#"{"t0":1}"#));
        assert!(crate::frame::EventView::decode(br#"{"t":"ack","id":1}"#).is_none());
        assert!(crate::frame::EventView::decode(br#"{"t":"pong","room":"r","seq":1,"prev":0,"ts":1}"#).is_none());
        assert!(crate::frame::EventView::decode(b"not json").is_none());
    }
    use crate::code::ErrorCode;
    use crate::frame::{Ack, ErrorFrame};

    #[test]
    fn negotiates_protocols() {
        assert_eq!(Codec::from_protocol("herald.v1.json"), Some(Codec::Json));
        assert_eq!(Codec::from_protocol(" herald.v1.msgpack"), Some(Codec::MsgPack));
        assert_eq!(Codec::from_protocol("mqtt"), None);
    }

    #[test]
    fn a_subscribe_carries_a_subscription_token() {
        let f = Codec::Json
            .decode_client(br#"{"op":"subscribe","room":"lobby","token":"aGk.eyJ9.c2ln"}"#)
            .unwrap();
        assert!(matches!(f.op, ClientOp::Subscribe { token: Some(ref t), .. } if t == "aGk.eyJ9.c2ln"));
        let back = Codec::Json
            .decode_client(&Codec::Json.encode_client(&f).unwrap())
            .unwrap();
        assert_eq!(back, f);
        for bad in [
            &br#"{"op":"subscribe","room":"a","token":"a b"}"#[..],
            br#"{"op":"subscribe","room":"a","token":""}"#,
        ] {
            assert!(matches!(
                Codec::Json.decode_client(bad),
                Err(DecodeError::BadRequest { .. })
            ));
        }
        let long = format!(r#"{{"op":"subscribe","room":"a","token":"{}"}}"#, "a".repeat(4097));
        assert!(matches!(
            Codec::Json.decode_client(long.as_bytes()),
            Err(DecodeError::BadRequest { .. })
        ));
    }

    #[test]
    fn decodes_a_json_subscribe() {
        let f = Codec::Json
            .decode_client(br#"{"op":"subscribe","id":7,"room":"lobby","since":42,"x":1}"#)
            .unwrap();
        assert_eq!(f.id, Some(Id::Num(7)));
        assert_eq!(
            f.op,
            ClientOp::Subscribe {
                room: "lobby".into(),
                since: Some(42),
                presence: false,
                token: None,
            }
        );
    }

    #[test]
    fn malformed_json_is_a_bad_request_with_the_id_when_there_is_one() {
        let e = Codec::Json
            .decode_client(br#"{"op":"subscribe","id":"a"}"#)
            .unwrap_err();
        assert_eq!(
            e,
            DecodeError::BadRequest {
                id: Some(Id::Str("a".into())),
                message: "`room` is required".into()
            }
        );
        let e = Codec::Json.decode_client(br#"{"op":"subscribe","id":3,"since":"x"}"#);
        assert!(matches!(
            e,
            Err(DecodeError::BadRequest {
                id: Some(Id::Num(3)),
                ..
            })
        ));
        let e = Codec::Json.decode_client(b"not json");
        assert!(matches!(e, Err(DecodeError::BadRequest { id: None, .. })));
        let e = Codec::Json.decode_client(br#"{"op":"fly"}"#).unwrap_err();
        assert_eq!(e.to_string(), "unknown op `fly`");
    }

    #[test]
    fn garbage_msgpack_is_undecodable() {
        assert!(matches!(
            Codec::MsgPack.decode_client(&[0x92, 0x01]),
            Err(DecodeError::Undecodable(_))
        ));
        assert!(matches!(
            Codec::MsgPack.decode_client(&[0x90, 0x90]),
            Err(DecodeError::Undecodable(_))
        ));
    }

    #[test]
    fn json_event_embeds_the_payload_verbatim() {
        let ev = EventRef {
            room: "lobby",
            seq: 58,
            prev: 57,
            ts: 1732312345123,
            kind: Some("message"),
            from: Some("alice"),
            payload: br#"{"text":"hi"}"#,
        };
        assert_eq!(
            String::from_utf8(Codec::Json.encode_event(ev)).unwrap(),
            r#"{"t":"event","room":"lobby","seq":58,"prev":57,"ts":1732312345123,"type":"message","from":"alice","data":{"text":"hi"}}"#
        );
        let bin = EventRef {
            payload: &[0xff, 0x00],
            kind: None,
            from: None,
            ..ev
        };
        assert_eq!(
            String::from_utf8(Codec::Json.encode_event(bin)).unwrap(),
            r#"{"t":"event","room":"lobby","seq":58,"prev":57,"ts":1732312345123,"data_b64":"/wA="}"#
        );
    }

    #[test]
    fn multi_line_json_is_sent_on_one_line() {
        let ev = EventRef {
            room: "lobby",
            seq: 1,
            prev: 0,
            ts: 2,
            kind: None,
            from: None,
            payload: b"{\r\n  \"text\": \"a \\\"b\\\" \\n c\",\n  \"n\": [1,\n 2]\n}\n",
        };
        assert_eq!(
            String::from_utf8(Codec::Json.encode_event(ev)).unwrap(),
            r#"{"t":"event","room":"lobby","seq":1,"prev":0,"ts":2,"data":{"text":"a \"b\" \n c","n":[1,2]}}"#
        );
        let one_line = br#"{ "a" : "x y" }"#;
        assert!(
            matches!(one_line_json(one_line), std::borrow::Cow::Borrowed(_)),
            "no copy without a line break"
        );
    }

    #[test]
    fn both_codecs_decode_to_the_same_event() {
        let ev = EventRef {
            room: "lobby",
            seq: 2,
            prev: 1,
            ts: 5,
            kind: None,
            from: Some("bob"),
            payload: br#"{"n":[1,2.5,"x",null,true]}"#,
        };
        let j = Codec::Json.decode_server(&Codec::Json.encode_event(ev)).unwrap();
        let m = Codec::MsgPack.decode_server(&Codec::MsgPack.encode_event(ev)).unwrap();
        assert_eq!(j, m);
        let bin = EventRef {
            payload: &[1, 2, 3],
            ..ev
        };
        let j = Codec::Json.decode_server(&Codec::Json.encode_event(bin)).unwrap();
        let m = Codec::MsgPack.decode_server(&Codec::MsgPack.encode_event(bin)).unwrap();
        assert_eq!(j, m);
        let ServerFrame::Event(e) = m else {
            panic!("not an event")
        };
        assert_eq!(e.data_bytes, Some(vec![1, 2, 3]));
    }

    #[test]
    fn other_frames_round_trip() {
        for codec in [Codec::Json, Codec::MsgPack] {
            for frame in [
                ServerFrame::Ack(Ack {
                    id: Some(Id::Num(1)),
                    room: Some("lobby".into()),
                    seq: Some(9),
                    recovered: Some(true),
                    repeat: None,
                }),
                ServerFrame::Ack(Ack {
                    id: Some(Id::Num(2)),
                    room: Some("lobby".into()),
                    seq: Some(9),
                    recovered: None,
                    repeat: Some(true),
                }),
                ServerFrame::Error(ErrorFrame::new(None, ErrorCode::Forbidden, "no")),
            ] {
                assert_eq!(codec.decode_server(&codec.encode_server(&frame)).unwrap(), frame);
            }
        }
    }
}
