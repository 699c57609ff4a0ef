//! The process's Prometheus recorder: installed once, whatever calls it first.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder from `builder` (the caller's buckets) on the first call; every
/// call then runs its `describe` (descriptions and the series that start at zero), so a test
/// process that embeds a gateway and fanout gets both sets. If another recorder was installed
/// first, the handle renders an empty registry.
pub fn install(builder: impl FnOnce() -> PrometheusBuilder, describe: impl FnOnce()) -> PrometheusHandle {
    let handle = HANDLE
        .get_or_init(|| {
            builder()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone();
    describe();
    handle
}

/// Runs the recorder's periodic upkeep (histogram housekeeping).
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}
