//! Readings from /proc: process RSS and the kernel's TCP memory.

use anyhow::{Context, Result};

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("no process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// Memory the kernel holds for TCP sockets (`/proc/net/sockstat`, `TCP: ... mem <pages>`), KiB.
pub fn tcp_mem_kib() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat")?;
    let line = s.lines().find(|l| l.starts_with("TCP:")).context("no TCP line")?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            let pages: u64 = words.next().context("mem value")?.parse()?;
            return Ok(pages * 4);
        }
    }
    anyhow::bail!("no TCP mem in /proc/net/sockstat")
}

/// CPU time (user + system) a process has used, in seconds (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("no process {pid}"))?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// TCP sockets in use (`/proc/net/sockstat`, `TCP: inuse <n>`).
pub fn tcp_inuse() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat")?;
    let line = s.lines().find(|l| l.starts_with("TCP:")).context("no TCP line")?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "inuse" {
            return Ok(words.next().context("inuse value")?.parse()?);
        }
    }
    anyhow::bail!("no TCP inuse in /proc/net/sockstat")
}

/// Kernel slab memory of sockets (`/proc/slabinfo`: TCP socket, inode, bind bucket and epoll
/// entries), KiB; `None` where slabinfo is not readable (it needs root).
pub fn socket_slab_kib() -> Option<u64> {
    const CACHES: [&str; 6] = [
        "TCP",
        "TCPv6",
        "sock_inode_cache",
        "tcp_bind_bucket",
        "eventpoll_epi",
        "request_sock_TCP",
    ];
    let s = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let bytes: u64 = s
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (name, active, size) = (f.first()?, f.get(1)?, f.get(3)?);
            CACHES
                .contains(name)
                .then(|| Some(active.parse::<u64>().ok()? * size.parse::<u64>().ok()?))?
        })
        .sum();
    Some(bytes / 1024)
}

/// The process listening on TCP `port` on this machine (from `/proc/net/tcp{,6}` and the
/// processes' open sockets), if this user can see it.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|f| {
        std::fs::read_to_string(f).ok()?.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9).map(|i| i.to_string()))?
        })
    })?;
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        std::fs::read_dir(entry.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target))
            .then_some(pid)
    })
}
