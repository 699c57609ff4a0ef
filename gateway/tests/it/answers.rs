//! HTTP answers that their client does not read: the answer keeps its connection slot while
//! hyper still holds most of it, and the connection is dropped once a write has made no
//! progress for `--write-timeout`.

use std::time::Duration;

use herald_testkit::client::Connect;
use herald_testkit::{jwt, wait_until, NatsServer, TestGateway, WsClient};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_answer_holds_its_slot_until_the_write_timeout_drops_it() {
    let nats = NatsServer::start();
    let gw = TestGateway::start_with(&nats.url(), |c| {
        c.max_connections = 1;
        c.write_timeout = Duration::from_secs(2);
        c.replay_max_bytes = 32 << 20;
    })
    .await;
    // 24 MB of history in one room: far more than the kernel's buffers and hyper's take.
    let backend = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(backend);
    let data = format!("\"{}\"", "x".repeat(900_000));
    for _ in 0..27 {
        js.publish("herald.room.big", data.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A client asks for all of it and never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(gw.addr).await.unwrap();
    let token = jwt::any_room("hoarder");
    let head = format!("GET /poll?rooms=big&cursor=big:0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let connect = || {
        WsClient::open(Connect {
            url: gw.ws_url(),
            token: Some(jwt::any_room("next")),
            ..Default::default()
        })
    };
    // While the answer is being written, it is a connection: the only slot is taken. (Waited
    // for by the refusal itself: the bytes-sent metric is shared by every test in this
    // binary, so another test's poll could end a wait on it before this answer started.)
    wait_until(Duration::from_secs(20), "the unread answer holds its slot", || async {
        connect().await.err() == Some(503)
    })
    .await;
    // A write that makes no progress for --write-timeout drops the connection, slot and all.
    wait_until(Duration::from_secs(20), "the slot given back", || async {
        connect().await.is_ok()
    })
    .await;
    drop(tcp);
}
