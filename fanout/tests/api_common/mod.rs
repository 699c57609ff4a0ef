//! The stack the server API tests share (`mod api_common;`): a real nats-server's two
//! fanout processes answering in a queue group and two in-process gateways, once both
//! fanouts hear both gateways.

use std::time::Duration;

use herald_testkit::{wait_until, NatsServer, Process, TestGateway};

pub async fn gateway(nats: &NatsServer) -> TestGateway {
    TestGateway::start_with(&nats.url(), |c| {
        c.presence_heartbeat = Duration::from_millis(200);
    })
    .await
}

/// Two fanouts (`<name>-f1`, `<name>-f2`) and two gateways on `nats`.
pub async fn two_by_two(nats: &NatsServer, name: &str) -> ([Process; 2], TestGateway, TestGateway) {
    let fanouts = [
        Process::fanout(&nats.url(), &format!("{name}-f1"), &[]),
        Process::fanout(&nats.url(), &format!("{name}-f2"), &[]),
    ];
    let (a, b) = (gateway(nats).await, gateway(nats).await);
    for f in &fanouts {
        f.wait_ready().await;
    }
    wait_until(Duration::from_secs(10), "both fanouts hear both gateways", || async {
        fanouts[0].metric("herald_fanout_gateways").await == 2.0
            && fanouts[1].metric("herald_fanout_gateways").await == 2.0
    })
    .await;
    (fanouts, a, b)
}
