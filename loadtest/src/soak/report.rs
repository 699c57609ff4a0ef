//! The soak's report: samples over time, slopes of memory and descriptors, loss and
//! duplicates, reconnects and hostile actions by outcome.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::soak::{Hostile, Sample};

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) revision: String,
    pub(crate) connections: usize,
    pub(crate) connected: u64,
    pub(crate) failed_connects: u64,
    pub(crate) gateways: usize,
    pub(crate) rooms: usize,
    pub(crate) rate: f64,
    pub(crate) churn: f64,
    pub(crate) duration_s: f64,
    pub(crate) published: u64,
    pub(crate) delivered: u64,
    pub(crate) gaps: u64,
    pub(crate) duplicates: u64,
    pub(crate) reconnects: u64,
    pub(crate) reconnect_failures: u64,
    /// Why connections ended and why reconnects failed, by count.
    pub(crate) ends: BTreeMap<String, u64>,
    pub(crate) reconnect_failure_causes: BTreeMap<String, u64>,
    pub(crate) behind: u64,
    pub(crate) not_ready_samples: u64,
    /// Least-squares slope over the second half of the run, per gateway.
    pub(crate) rss_slope_kib_per_min: Vec<f64>,
    pub(crate) fd_slope_per_min: Vec<f64>,
    pub(crate) hostile: Hostile,
    pub(crate) samples: Vec<Sample>,
}

/// Least-squares slope of (seconds, value) points, per minute.
pub(crate) fn slope_per_min(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var * 60.0
    }
}

pub(crate) fn write_report(dir: &std::path::Path, r: &Report) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    let mut md = String::new();
    let first = r.samples.first();
    let last = r.samples.last();
    md.push_str(&format!(
        "# Soak\n\nRevision `{}`. {} connections ({} connected, {} failed) over {} gateways, {} rooms with \
         presence, {} events/s, {} reconnects/s, hostile clients mixed in; {:.0} s.\n\n",
        r.revision, r.connections, r.connected, r.failed_connects, r.gateways, r.rooms, r.rate, r.churn, r.duration_s
    ));
    md.push_str("| | value |\n|---|---|\n");
    for (k, v) in [
        ("events published", r.published.to_string()),
        ("events delivered", r.delivered.to_string()),
        ("gaps (lost)", r.gaps.to_string()),
        ("duplicates", r.duplicates.to_string()),
        ("connections behind at the end", r.behind.to_string()),
        ("reconnects (resumed with since)", r.reconnects.to_string()),
        ("reconnects that failed", r.reconnect_failures.to_string()),
        ("samples with /readyz ≠ 200", r.not_ready_samples.to_string()),
        (
            "gateway RSS slope, 2nd half (KiB/min)",
            format!("{:.1?}", r.rss_slope_kib_per_min),
        ),
        (
            "gateway fd slope, 2nd half (per min)",
            format!("{:.2?}", r.fd_slope_per_min),
        ),
        (
            "gateway RSS first → last (KiB)",
            format!(
                "{:?} → {:?}",
                first.map(|s| &s.gateway_rss_kib),
                last.map(|s| &s.gateway_rss_kib)
            ),
        ),
        (
            "gateway fds first → last",
            format!(
                "{:?} → {:?}",
                first.map(|s| &s.gateway_fds),
                last.map(|s| &s.gateway_fds)
            ),
        ),
    ] {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    md.push_str("\n| connection ended by | count |\n|---|---|\n");
    for (k, n) in &r.ends {
        md.push_str(&format!("| {k} | {n} |\n"));
    }
    md.push_str("\n| reconnect failed with | count |\n|---|---|\n");
    for (k, n) in &r.reconnect_failure_causes {
        md.push_str(&format!("| {k} | {n} |\n"));
    }
    md.push_str("\n| hostile action | done | not as the contract says |\n|---|---|---|\n");
    for (k, n) in &r.hostile.done {
        md.push_str(&format!(
            "| {k} | {n} | {} |\n",
            r.hostile.unexpected.get(k).unwrap_or(&0)
        ));
    }
    std::fs::write(dir.join("report.md"), md)?;
    eprintln!("soak: report in {}", dir.display());
    Ok(())
}
