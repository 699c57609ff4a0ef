//! Whole-stack accounting: the CPU time and RSS of every server process a run measures
//! (gateways, nats-server, fanout; nginx for the Nchan reference), so that each figure says
//! which processes it covers.

use serde::Serialize;

use crate::proc;

/// What a measured process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Gateway,
    NatsServer,
    Fanout,
    /// nginx's master or a worker (`loadtest chat --target nchan`).
    Nginx,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::NatsServer => "nats-server",
            Role::Fanout => "fanout",
            Role::Nginx => "nginx",
        }
    }
}

/// The server processes of a run.
#[derive(Debug, Clone, Default)]
pub struct Procs {
    list: Vec<(Role, u32)>,
}

/// CPU seconds and RSS of each process of a [`Procs`], in its order, at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub cpu_s: Vec<f64>,
    pub rss_kib: Vec<u64>,
}

/// One role's share of a difference between two [`Usage`]s.
#[derive(Debug, Clone, Serialize)]
pub struct Share {
    pub role: Role,
    pub processes: usize,
    pub cpu_s: f64,
    pub rss_growth_kib: i64,
    pub rss_kib: u64,
}

// === impl Procs ===

impl Procs {
    /// The gateways, then nats-server and fanout where their PIDs are known.
    pub fn new(gateways: &[u32], nats: Option<u32>, fanout: Option<u32>) -> Self {
        let mut list: Vec<(Role, u32)> = gateways.iter().map(|&p| (Role::Gateway, p)).collect();
        list.extend(nats.map(|p| (Role::NatsServer, p)));
        list.extend(fanout.map(|p| (Role::Fanout, p)));
        Self { list }
    }

    /// nginx's master and workers.
    pub fn nginx(pids: &[u32]) -> Self {
        Self {
            list: pids.iter().map(|&p| (Role::Nginx, p)).collect(),
        }
    }

    /// How many processes of `role` are measured.
    pub fn count(&self, role: Role) -> usize {
        self.list.iter().filter(|(r, _)| *r == role).count()
    }

    pub fn sample(&self) -> Usage {
        Usage {
            cpu_s: self
                .list
                .iter()
                .map(|&(_, p)| proc::cpu_seconds(p).unwrap_or(0.0))
                .collect(),
            rss_kib: self.list.iter().map(|&(_, p)| proc::rss_kib(p).unwrap_or(0)).collect(),
        }
    }

    /// The processes a figure covers, e.g. "gateway ×2 + nats-server + fanout".
    pub fn covers(&self) -> String {
        let mut parts = Vec::new();
        for role in [Role::Gateway, Role::NatsServer, Role::Fanout, Role::Nginx] {
            match self.list.iter().filter(|(r, _)| *r == role).count() {
                0 => {}
                1 => parts.push(role.name().to_owned()),
                n => parts.push(format!("{} ×{n}", role.name())),
            }
        }
        if parts.is_empty() {
            "no process (no PID given)".into()
        } else {
            parts.join(" + ")
        }
    }

    /// Each role's CPU and RSS growth from `before` to `after`.
    pub fn shares(&self, before: &Usage, after: &Usage) -> Vec<Share> {
        let mut out: Vec<Share> = Vec::new();
        for (i, &(role, _)) in self.list.iter().enumerate() {
            let cpu = after.cpu_s.get(i).copied().unwrap_or(0.0) - before.cpu_s.get(i).copied().unwrap_or(0.0);
            let rss = after.rss_kib.get(i).copied().unwrap_or(0);
            let growth = rss as i64 - before.rss_kib.get(i).copied().unwrap_or(0) as i64;
            match out.iter_mut().find(|s| s.role == role) {
                Some(s) => {
                    s.processes += 1;
                    s.cpu_s += cpu;
                    s.rss_growth_kib += growth;
                    s.rss_kib += rss;
                }
                None => out.push(Share {
                    role,
                    processes: 1,
                    cpu_s: cpu,
                    rss_growth_kib: growth,
                    rss_kib: rss,
                }),
            }
        }
        out
    }
}

/// The sum of CPU seconds over `shares`.
pub fn cpu_total(shares: &[Share]) -> f64 {
    shares.iter().map(|s| s.cpu_s).sum()
}

/// The CPU seconds of one role in `shares`.
pub fn cpu_of(shares: &[Share], role: Role) -> f64 {
    shares.iter().filter(|s| s.role == role).map(|s| s.cpu_s).sum()
}

/// The sum of RSS growth over `shares`, KiB.
pub fn growth_total(shares: &[Share]) -> i64 {
    shares.iter().map(|s| s.rss_growth_kib).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_each_role_and_name_what_they_cover() {
        let procs = Procs::new(&[11, 12], Some(13), None);
        assert_eq!(procs.covers(), "gateway ×2 + nats-server");
        let before = Usage {
            cpu_s: vec![1.0, 2.0, 3.0],
            rss_kib: vec![100, 100, 50],
        };
        let after = Usage {
            cpu_s: vec![1.5, 3.0, 3.25],
            rss_kib: vec![300, 150, 40],
        };
        let shares = procs.shares(&before, &after);
        assert_eq!(shares.len(), 2);
        assert_eq!((shares[0].role, shares[0].processes), (Role::Gateway, 2));
        assert_eq!(shares[0].cpu_s, 1.5);
        assert_eq!(shares[0].rss_growth_kib, 250);
        assert_eq!(shares[0].rss_kib, 450);
        assert_eq!((shares[1].role, shares[1].rss_growth_kib), (Role::NatsServer, -10));
        assert_eq!(cpu_total(&shares), 1.75);
        assert_eq!(cpu_of(&shares, Role::NatsServer), 0.25);
        assert_eq!(growth_total(&shares), 240);
    }

    #[test]
    fn nginx_is_covered_as_its_processes() {
        assert_eq!(Procs::nginx(&[1, 2, 3]).covers(), "nginx ×3");
    }

    #[test]
    fn a_process_that_is_gone_reads_zero() {
        let procs = Procs::new(&[u32::MAX], None, None);
        let u = procs.sample();
        assert_eq!((u.cpu_s, u.rss_kib), (vec![0.0], vec![0]));
    }
}
