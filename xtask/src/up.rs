//! `cargo xtask up`: the local stack (NATS, fanout, two gateways) in the foreground, with
//! demo links and tokens.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::tools::install;
use crate::{cargo, root, run};
use anyhow::{bail, Context, Result};

/// The HS256 secret of the local stack; printed so that backends can mint tokens.
pub(crate) const DEV_SECRET: &str = "herald-dev-secret";

pub(crate) fn up() -> Result<()> {
    let nats = install()?;
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "-p",
        "herald-gateway",
        "-p",
        "herald-fanout",
    ]))?;
    let bin = root().join("target/release");
    let state = root().join("target/herald-up");
    std::fs::create_dir_all(&state)?;

    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    let mut children: Vec<(&str, Child)> = Vec::new();
    let spawn = |name: &'static str, cmd: &mut Command, children: &mut Vec<(&str, Child)>| -> Result<()> {
        let child = cmd.spawn().with_context(|| format!("cannot start {name}"))?;
        children.push((name, child));
        Ok(())
    };
    spawn(
        "nats-server",
        Command::new(&nats)
            .args(["-js", "-a", "127.0.0.1", "-p", "4222", "-m", "8222", "-sd"])
            .arg(state.join("nats")),
        &mut children,
    )?;
    wait_port(4222)?;
    spawn(
        "fanout",
        Command::new(bin.join("herald-fanout")).env("HERALD_ADMIN_LISTEN", "127.0.0.1:9200"),
        &mut children,
    )?;
    for (name, port, admin, id) in [("gateway-a", 8080, 9100, "gw-a"), ("gateway-b", 8081, 9101, "gw-b")] {
        spawn(
            name,
            Command::new(bin.join("herald-gateway"))
                .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
                .env("HERALD_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
                .env("HERALD_GATEWAY_ID", id)
                .env("HERALD_AUTH_HS256_SECRET", DEV_SECRET)
                .env("HERALD_ALLOW_ANONYMOUS", "true")
                .env("HERALD_DRAIN_TIMEOUT", "3s"),
            &mut children,
        )?;
    }
    wait_port(8080)?;
    wait_port(8081)?;
    let gateways = "http://127.0.0.1:8080,http://127.0.0.1:8081";
    let agent = token("agent-acme", "Acme agent", &["support:acme:*"], DEV_SECRET)?;
    let ann = token("ann", "Ann", &["support:acme:ann"], DEV_SECRET)?;
    println!(
        "\nHerald is up.\n\n  chat demo      http://127.0.0.1:8080/?gateways={gateways}\n                 \
         (open it in several tabs; ?transport=sse, long-poll or poll forces a transport)\n  \
         support desk   agent:    http://127.0.0.1:8080/support.html?company=acme&customers=ann,bob&token={agent}\n                 \
         customer: http://127.0.0.1:8081/support.html?company=acme&customer=ann&token={ann}\n  \
         WebSocket      ws://127.0.0.1:8080/ws   and   ws://127.0.0.1:8081/ws   (anonymous allowed)\n  \
         NATS           nats://127.0.0.1:4222    (monitoring http://127.0.0.1:8222)\n  \
         metrics        http://127.0.0.1:9100/metrics  http://127.0.0.1:9101/metrics  http://127.0.0.1:9200/metrics\n  \
         token secret   {DEV_SECRET}  (HS256, for tokens with rooms and a user id)\n\n\
         Publish from a backend:  publish to NATS subject herald.room.lobby (see README).\nCtrl-C stops everything.\n"
    );
    loop {
        if stop_rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            break;
        }
        if let Some((name, status)) = children
            .iter_mut()
            .find_map(|(n, c)| c.try_wait().ok().flatten().map(|s| (*n, s)))
        {
            eprintln!("xtask: {name} exited ({status}); stopping the stack");
            break;
        }
    }
    // Gateways first (they drain), then fanout (it hands its leases over), then NATS.
    for (name, mut child) in children.into_iter().rev() {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
        eprintln!("xtask: {name} stopped");
    }
    Ok(())
}

pub(crate) fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
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
        name: Some(name.to_owned()),
        herald: Some(herald_proto::claims::Grants {
            sub: rooms.clone(),
            publish: rooms,
        }),
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?)
}

/// Waits for `/readyz` 200 on an admin port.
pub(crate) fn wait_ready(admin: u16) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok_and(|mut s| {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            buf.starts_with("HTTP/1.1 200")
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("127.0.0.1:{admin}/readyz not 200 after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
