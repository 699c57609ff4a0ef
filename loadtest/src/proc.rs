//! Readings from /proc: process RSS and the kernel's TCP memory.

use anyhow::{Context, Result};

pub use herald_harness::rss_kib;

/// The `TCP:` line of `/proc/net/sockstat`: sockets in use and the memory the kernel holds
/// for their buffers.
pub struct TcpStat {
    pub inuse: u64,
    pub mem_kib: u64,
}

pub fn tcp_stat() -> Result<TcpStat> {
    let s = std::fs::read_to_string("/proc/net/sockstat")?;
    let line = s.lines().find(|l| l.starts_with("TCP:")).context("no TCP line")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Result<u64> {
        let at = words
            .iter()
            .position(|w| *w == name)
            .with_context(|| format!("no TCP {name}"))?;
        Ok(words.get(at + 1).context("no value")?.parse()?)
    };
    Ok(TcpStat {
        inuse: field("inuse")?,
        // In pages of 4 KiB.
        mem_kib: field("mem")? * 4,
    })
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

/// The processes whose parent is `pid` (from each process's `/proc/<pid>/stat`), in PID order.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: Vec<u32> = dir
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // After the command name (which may hold spaces): state, then the parent's PID.
            let parent: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect();
    children.sort_unstable();
    children
}

/// CPU seconds used by all of `pids` (processes that are gone count 0).
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| cpu_seconds(pid).ok()).sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawned_process_is_a_child_of_this_one() {
        let mut child = std::process::Command::new("sleep").arg("10").spawn().expect("sleep");
        let children = children_of(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(children.contains(&child.id()), "{children:?} lacks {}", child.id());
    }
}
