//! `cargo xtask up`: the local stack (NATS, fanout, two gateways) in the foreground, with
//! demo links and tokens.

use std::sync::mpsc;
use std::time::Duration;

use crate::tools::install;
use crate::{cargo, root, run};
use anyhow::{Context, Result};
use herald_harness::launch::{
    FanoutOptions, GatewayOptions, Logs, Nats, NatsOptions, Program, LOAD_TEST_ANONYMOUS, START_TIMEOUT,
};

/// The HS256 secret of the local stack; printed so that backends can mint tokens.
pub(crate) const DEV_SECRET: &str = "herald-dev-secret-for-this-machine-only";
/// The local stack's server API key (`--api-key`), as fixed and as public as `DEV_SECRET`.
const DEV_API_KEY: &str = "herald-dev-api-key-for-this-machine-only";
/// Where the local stack's fanout serves the server API over HTTP.
const API_PORT: u16 = 9300;
/// Where the support desk's app backend (`demo-backend`) listens for the agent page.
const DESK_PORT: u16 = 9400;

/// Event stream partitions of the local stack: more than one, so that the demo runs the
/// partitioned path (the server's subject mapping, one stream per partition) that large
/// deployments use. The NATS server, fanout and both gateways get the same count.
const STREAM_PARTITIONS: u32 = 4;

pub(crate) fn up() -> Result<()> {
    let nats_bin = install()?;
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "-p",
        "herald-gateway",
        "-p",
        "herald-fanout",
        "-p",
        "demo-backend",
    ]))?;
    let bin = root().join("target/release");
    let localhost = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    let mut nats = Nats::start(NatsOptions {
        binary: Some(nats_bin),
        port: Some(4222),
        monitor: Some(8222),
        store: Some(root().join("target/herald-up/nats")),
        logs: Logs::Inherit,
        stream_partitions: STREAM_PARTITIONS,
        ..NatsOptions::default()
    })?;
    let partitions = ["--stream-partitions".to_owned(), STREAM_PARTITIONS.to_string()];
    let nats_url = nats.url();
    // Started in this order, stopped in reverse: gateways first (they drain), then fanout
    // (it hands its leases over), then NATS.
    let api = localhost(API_PORT).to_string();
    let fanout = FanoutOptions {
        binary: Some(bin.join("herald-fanout")),
        admin: Some(localhost(9200)),
        args: partitions
            .iter()
            .cloned()
            .chain(["--api-listen", &api, "--api-key", DEV_API_KEY].map(String::from))
            .collect(),
        logs: Logs::Inherit,
    };
    let mut programs = vec![Program::fanout(&nats_url, fanout)?];
    for (port, admin, id) in [(8080, 9100, "gw-a"), (8081, 9101, "gw-b")] {
        programs.push(Program::gateway(
            &nats_url,
            GatewayOptions {
                binary: Some(bin.join("herald-gateway")),
                id: id.into(),
                listen: Some(localhost(port)),
                admin: Some(localhost(admin)),
                args: ["--auth-hs256-secret", DEV_SECRET, "--drain-timeout", "3s"]
                    .into_iter()
                    .chain(LOAD_TEST_ANONYMOUS)
                    .map(String::from)
                    .chain(partitions.iter().cloned())
                    .collect(),
                logs: Logs::Inherit,
            },
        )?);
    }
    programs.push(Program::demo_backend(
        Some(bin.join("demo-backend")),
        localhost(DESK_PORT),
        (localhost(API_PORT), DEV_API_KEY),
        DEV_SECRET,
        &["acme:alice", "acme:carol"],
        &Logs::Inherit,
    )?);
    for p in &mut programs {
        p.wait_ready(START_TIMEOUT)?;
    }
    print_links()?;
    supervise(&stop_rx, &mut nats, &mut programs);
    stop(nats, programs);
    Ok(())
}

/// What to open, where to publish, and the token secret.
fn print_links() -> Result<()> {
    let gateways = "http://127.0.0.1:8080,http://127.0.0.1:8081";
    let alice = token("alice", "Alice (agent)", &["support:acme:*"], DEV_SECRET)?;
    let carol = token("carol", "Carol (agent)", &["support:acme:*"], DEV_SECRET)?;
    let ann = token("ann", "Ann", &["support:acme:ann:*"], DEV_SECRET)?;
    let bob = token("bob", "Bob", &["support:acme:bob:*"], DEV_SECRET)?;
    let desk = format!("company=acme&agents=alice,carol&backend=http://127.0.0.1:{DESK_PORT}");
    println!(
        "\nHerald is up.\n\n  chat demo      http://127.0.0.1:8080/?gateways={gateways}\n                 \
         (open it in several tabs; ?transport=sse, long-poll or poll forces a transport)\n  \
         support desk   agent Alice:  http://127.0.0.1:8080/support.html?{desk}&agent=alice&customers=ann,bob&token={alice}\n                 \
         agent Carol:  http://127.0.0.1:8081/support.html?{desk}&agent=carol&customers=&token={carol}\n                 \
         customer Ann: http://127.0.0.1:8081/support.html?company=acme&customer=ann&agent=alice&token={ann}\n                 \
         customer Bob: http://127.0.0.1:8080/support.html?company=acme&customer=bob&agent=alice&token={bob}\n                 \
         (Alice can end a customer's session, or move a customer to Carol: the desk's backend\n                 \
         at http://127.0.0.1:{DESK_PORT} calls the server API; demo/src/main.rs)\n  \
         WebSocket      ws://127.0.0.1:8080/ws   and   ws://127.0.0.1:8081/ws   (anonymous allowed)\n  \
         NATS           nats://127.0.0.1:4222    (monitoring http://127.0.0.1:8222)\n  \
         server API     http://127.0.0.1:{API_PORT}/api/<method>   X-API-Key: {DEV_API_KEY}   (docs/api.openapi.json; or NATS herald.api.<method>)\n  \
         event stream   {STREAM_PARTITIONS} partitions, HERALD_ROOMS_0..{last} (--stream-partitions)\n  \
         metrics        http://127.0.0.1:9100/metrics  http://127.0.0.1:9101/metrics  http://127.0.0.1:9200/metrics\n  \
         token secret   {DEV_SECRET}  (HS256, for tokens with rooms and a user id)\n\n\
         Publish from a backend:  publish to NATS subject herald.room.lobby (see README).\nCtrl-C stops everything.\n",
        last = STREAM_PARTITIONS - 1
    );
    Ok(())
}

/// Returns on Ctrl-C or when any process of the stack exits.
fn supervise(stop_rx: &mpsc::Receiver<()>, nats: &mut Nats, programs: &mut [Program]) {
    loop {
        if stop_rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            return;
        }
        if let Some(status) = nats.exited() {
            eprintln!("xtask: nats-server exited ({status}); stopping the stack");
            return;
        }
        if let Some((name, status)) = programs
            .iter_mut()
            .find_map(|p| p.exited().map(|s| (p.name().to_owned(), s)))
        {
            eprintln!("xtask: {name} exited ({status}); stopping the stack");
            return;
        }
    }
}

/// Gateways first (they drain), then fanout (it hands its leases over), then NATS.
fn stop(mut nats: Nats, programs: Vec<Program>) {
    for mut p in programs.into_iter().rev() {
        p.terminate(Duration::from_secs(10));
        eprintln!("xtask: {} stopped", p.name());
    }
    nats.terminate(Duration::from_secs(10));
    eprintln!("xtask: nats-server stopped");
}

/// An HS256 token for `user` that may subscribe and publish to `rooms`, valid for a day.
pub(crate) fn token(user: &str, name: &str, rooms: &[&str], secret: &str) -> Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 86_400;
    let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    let claims = herald_proto::claims::Claims {
        sub: user.to_owned(),
        exp,
        iat: Some(exp - 86_400),
        name: Some(name.to_owned()),
        herald: Some(herald_proto::claims::Grants {
            sub: rooms.clone(),
            publish: rooms,
        }),
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?)
}
