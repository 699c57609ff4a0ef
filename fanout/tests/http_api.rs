//! The server API over HTTP (`--api-listen`) against its OpenAPI document
//! (docs/api.openapi.json), with a real nats-server, a fanout process and an in-process
//! gateway: every documented method answers its example with a body its schema accepts,
//! the document names exactly the methods there are, a wrong or missing key is 401 with
//! nothing done, malformed bodies are 400, and a flood of API requests leaves a client's
//! traffic flowing.

use std::net::SocketAddr;
use std::time::Duration;

use herald_proto::api::method;
use herald_proto::frame::ServerFrame;
use herald_testkit::http::{request, Response};
use herald_testkit::{free_port, jwt, NatsServer, Process, TestGateway, WsClient};
use serde_json::{json, Value};

const KEY: &str = "test-key-0123456789";
const OTHER_KEY: &str = "rotated-key-9876543210";

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/api.openapi.json")).expect("JSON")
}

/// A validator for `schema`, resolving `#/components/…` in `doc`.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let rooted = json!({"allOf": [schema], "components": doc["components"]});
    jsonschema::validator_for(&rooted).unwrap_or_else(|e| panic!("{schema}: not a schema: {e}"))
}

fn assert_valid(doc: &Value, schema: &Value, body: &Value, what: &str) {
    let v = validator(doc, schema);
    let errors: Vec<String> = v.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what}: {body} does not fit the document: {errors:?}"
    );
}

async fn post(addr: SocketAddr, path: &str, key: Option<&str>, body: &str) -> Response {
    let key = key.map(|k| format!("X-API-Key: {k}\r\n")).unwrap_or_default();
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    request(addr, &raw).await.expect("an HTTP answer")
}

fn json_of(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{}: not JSON: {e}", r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_is_what_its_openapi_document_says() {
    let doc = document();
    let nats = NatsServer::start();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let keys = format!("{KEY},{OTHER_KEY}");
    let fanout = Process::fanout(
        &nats.url(),
        "http-api",
        &["--api-listen", &api.to_string(), "--api-key", &keys],
    );
    let gw = TestGateway::start_with(&nats.url(), |c| c.presence_heartbeat = Duration::from_millis(200)).await;
    fanout.wait_ready().await;

    // The document names exactly the methods there are, each a POST with an example.
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort_unstable();
    let mut implemented: Vec<String> = method::ALL.iter().map(|m| format!("/api/{m}")).collect();
    implemented.sort_unstable();
    assert_eq!(documented, implemented);

    let mut bob = WsClient::connect(&gw.ws_url(), &jwt::token("bob", 3600, &["lobby"], &[])).await;
    // Every method's example answers 200 with a body its schema accepts (in an order whose
    // effects are checked below).
    for m in [
        "subscribe",
        "unsubscribe",
        "publish",
        "history",
        "presence",
        "rooms",
        "connections",
        "disconnect",
    ] {
        let path = format!("/api/{m}");
        let op = &paths[&path]["post"];
        let body = &op["requestBody"]["content"]["application/json"];
        let example = &body["example"];
        assert_valid(&doc, &body["schema"], example, &format!("{path}'s example request"));
        let answer = post(api, &path, Some(KEY), &example.to_string()).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
        assert_valid(&doc, schema, &json_of(&answer), &path);
    }
    // Their effects: bob was subscribed to team:7 and back out, then disconnected (revoked).
    let mut seen = Vec::new();
    loop {
        match bob.next_within(Duration::from_secs(5)).await {
            Some(herald_testkit::client::Incoming::Frame(f)) => seen.push(f),
            Some(herald_testkit::client::Incoming::Closed(code)) => {
                assert_eq!(code, 4003);
                break;
            }
            other => panic!("bob: {other:?} after {seen:?}"),
        }
    }
    assert!(
        matches!(&seen[0], ServerFrame::Subscribed(s) if s.room == "team:7" && s.seq == 0),
        "{seen:?}"
    );
    // The example publish came after the unsubscribe was answered: bob gets it only if his
    // session took both commands after it was stored (subscribed at seq 0, it replays what
    // follows), or took the unsubscribe after the live event. Either way, only that event.
    if matches!(&seen[1], ServerFrame::Event(_)) {
        assert!(
            matches!(&seen[1], ServerFrame::Event(e) if e.room == "team:7" && e.seq == 1),
            "{seen:?}"
        );
        seen.remove(1);
    }
    assert!(
        matches!(&seen[1], ServerFrame::Unsubscribed(u) if u.room == "team:7"),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[2], ServerFrame::Disconnect(d) if d.code == 4003),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Reading backwards is documented too.
    let back = json!({"room": "team:7", "last": 50, "before": 1_000_000});
    let op = &paths["/api/history"]["post"];
    assert_valid(
        &doc,
        &op["requestBody"]["content"]["application/json"]["schema"],
        &back,
        "a `last` read",
    );
    let answer = post(api, "/api/history", Some(KEY), &back.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let result = json_of(&answer);
    assert_valid(
        &doc,
        &op["responses"]["200"]["content"]["application/json"]["schema"],
        &result,
        "a `last` read",
    );
    assert_eq!(result["result"]["events"].as_array().map(Vec::len), Some(1), "{result}");

    // Every error answer fits the document's error schema, with the documented status.
    let error_schema = json!({"$ref": "#/components/schemas/Error"});
    let history = |since: u64| json!({"room": "team:7", "since": since}).to_string();
    let stored = |r: &Response| json_of(r)["result"]["events"].as_array().map_or(0, Vec::len);
    let before = stored(&post(api, "/api/history", Some(OTHER_KEY), &history(0)).await);
    assert_eq!(before, 1, "the example publish, stored once (a rotated key works too)");
    let publish = r#"{"room":"team:7","data":{"forged":true}}"#;
    for (path, key, body, status, code) in [
        ("/api/publish", None, publish, 401, "unauthorized"),
        (
            "/api/publish",
            Some("test-key-0123456788"),
            publish,
            401,
            "unauthorized",
        ),
        ("/api/publish", Some(""), publish, 401, "unauthorized"),
        ("/api/nothing", None, "{}", 401, "unauthorized"),
        ("/api/nothing", Some(KEY), "{}", 404, "not_found"),
        ("/api/publish", Some(KEY), "{not json", 400, "bad_request"),
        ("/api/publish", Some(KEY), r#"{"room":"team:7"}"#, 400, "bad_request"),
        (
            "/api/publish",
            Some(KEY),
            r#"{"room":"a b","data":1}"#,
            400,
            "bad_request",
        ),
        (
            "/api/disconnect",
            Some(KEY),
            r#"{"user":"bob","code":99999}"#,
            400,
            "bad_request",
        ),
        (
            "/api/history",
            Some(KEY),
            r#"{"room":"team:7","limit":1001}"#,
            400,
            "bad_request",
        ),
    ] {
        let answer = post(api, path, key, body).await;
        assert_eq!(answer.status, status, "{path} {key:?}: {}", answer.body);
        let body = json_of(&answer);
        assert_valid(&doc, &error_schema, &body, path);
        assert_eq!(body["error"]["code"], code, "{path}");
    }
    // Over 1 MiB declared: refused (413) before the body is read. The client sends only the
    // head and a few bytes: the server answers and closes at once, and a client still
    // writing a whole 2 MiB body would meet a broken pipe instead of the answer.
    let huge = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {api}\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"room\"",
        2 << 20
    );
    let answer = request(api, &huge).await.expect("an HTTP answer");
    assert_eq!(answer.status, 413, "{}", answer.body);
    let body = json_of(&answer);
    assert_valid(&doc, &error_schema, &body, "/api/publish");
    assert_eq!(body["error"]["code"], "too_large");
    let get = format!("GET /api/history HTTP/1.1\r\nHost: {api}\r\nX-API-Key: {KEY}\r\nConnection: close\r\n\r\n");
    assert_eq!(request(api, &get).await.unwrap().status, 404, "POST only");
    let after = stored(&post(api, "/api/history", Some(KEY), &history(0)).await);
    assert_eq!(after, before, "nothing refused was stored");

    // A flood of API requests (history reads, 8 connections at once, for 3 s) while a
    // client publishes and receives in another room: every one of its events arrives.
    let mut alice = WsClient::connect(&gw.ws_url(), &jwt::any_room("alice")).await;
    alice.subscribe("chat", None).await;
    let flood_until = tokio::time::Instant::now() + Duration::from_secs(3);
    let flooders: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let (mut ok, mut busy) = (0u32, 0u32);
                while tokio::time::Instant::now() < flood_until {
                    match post(api, "/api/history", Some(KEY), &history(0)).await.status {
                        200 => ok += 1,
                        503 => busy += 1,
                        other => panic!("flood: {other}"),
                    }
                }
                (ok, busy)
            })
        })
        .collect();
    let mut delivered = 0;
    for n in 0..20 {
        alice
            .op(json!({"op": "publish", "id": n, "room": "chat", "data": n}))
            .await;
        let mut got = (false, false);
        while !(got.0 && got.1) {
            match alice.recv().await {
                ServerFrame::Ack(_) => got.0 = true,
                ServerFrame::Event(e) if e.data == Some(json!(n)) => got.1 = true,
                other => panic!("alice: {other:?}"),
            }
        }
        delivered += 1;
    }
    let mut answered = 0;
    for f in flooders {
        let (ok, busy) = f.await.unwrap();
        answered += ok + busy;
    }
    assert_eq!(delivered, 20);
    assert!(answered > 0, "the flood ran");
}
