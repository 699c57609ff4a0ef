//! The admin listener: `/metrics`, `/healthz` and `/readyz`, on a port of its own.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Why a process is not ready (`None`: ready).
pub type Readiness = Arc<dyn Fn() -> Option<&'static str> + Send + Sync>;

/// Serves /metrics /healthz /readyz until `stop` fires.
pub async fn admin_loop(listener: TcpListener, metrics: PrometheusHandle, ready: Readiness, stop: Arc<Notify>) {
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let tcp: TcpStream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let (metrics, ready) = (metrics.clone(), Arc::clone(&ready));
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (metrics, ready) = (metrics.clone(), Arc::clone(&ready));
                async move { Ok::<_, Infallible>(route(&metrics, &*ready, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn route(
    metrics: &PrometheusHandle,
    ready: &(dyn Fn() -> Option<&'static str> + Send + Sync),
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, metrics.render()),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match ready() {
            None => text(StatusCode::OK, "ready\n".into()),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}
