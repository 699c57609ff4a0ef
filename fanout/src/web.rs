//! The server API over HTTP (`--api-listen`, off by default): `POST /api/<method>` with
//! the JSON body the NATS API takes (`herald.api.<method>`), the key in `X-API-Key`
//! (one of `--api-key`, compared in constant time), answered `{"result": …}` or the error
//! body of the HTTP transports with its status. docs/api.openapi.json describes it; the
//! test suite checks the implementation against that document.
//!
//! A request is refused before its body is read when its key is wrong (401, whatever else
//! it asks), its method unknown or not POST (404) or its declared length over [`MAX_BODY`] (413); a body that does not
//! arrive within [`BODY_WAIT`] is 400. The API's in-flight bound ([`crate::api`]) is shared
//! with the NATS side: past it, 503 at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_proto::api::{method, ApiError};
use herald_proto::http::ErrorBody;
use herald_proto::ErrorCode;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, info};

use crate::api::{Api, BUSY};

/// The longest request body: NATS's default payload limit, which the NATS API has too.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// How long a request's body may take to arrive.
pub(crate) const BODY_WAIT: Duration = Duration::from_secs(10);
/// How long a request's head may take to arrive (a client that opens connections and sends
/// nothing holds none of them longer).
const HEADER_WAIT: Duration = Duration::from_secs(10);
/// The path prefix of every method.
pub(crate) const PREFIX: &str = "/api/";

/// Serves the HTTP API on `listener` until `stop`.
pub(crate) async fn serve(listener: TcpListener, api: Arc<Api>, keys: Arc<Vec<String>>, stop: Arc<Notify>) {
    info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "Answering the server API over HTTP");
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    debug!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let (api, keys) = (Arc::clone(&api), Arc::clone(&keys));
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (api, keys) = (Arc::clone(&api), Arc::clone(&keys));
                async move { Ok::<_, Infallible>(answer(&api, &keys, req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_WAIT);
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

async fn answer(api: &Api, keys: &[String], req: Request<Incoming>) -> Response<Full<Bytes>> {
    match call(api, keys, req).await {
        Ok(result) => respond(StatusCode::OK, result),
        Err(e) => {
            let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::to_vec(&ErrorBody::new(e.code, e.message)).expect("plain data serializes");
            respond(status, Bytes::from(body))
        }
    }
}

async fn call(api: &Api, keys: &[String], req: Request<Incoming>) -> Result<Bytes, ApiError> {
    // The key first: without it, nothing is answered but 401.
    if !authorized(keys, req.headers().get("x-api-key").map(|v| v.as_bytes())) {
        return Err(ApiError::new(ErrorCode::Unauthorized, "a valid X-API-Key is required"));
    }
    let m = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .and_then(|m| method::ALL.into_iter().find(|known| *known == m))
        .filter(|_| req.method() == Method::POST)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such method: POST /api/<method>"))?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_WAIT, read).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(_)) => return Err(ApiError::bad_request("the request body was cut off")),
        Err(_) => return Err(ApiError::bad_request("the request body did not arrive in time")),
    };
    match api.call(m, &body).await {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::new(ErrorCode::Unavailable, BUSY)),
    }
}

/// Whether `given` is one of `keys`; every key is compared, in constant time.
fn authorized(keys: &[String], given: Option<&[u8]>) -> bool {
    let Some(given) = given else { return false };
    keys.iter()
        .fold(subtle::Choice::from(0), |found, key| {
            found | key.as_bytes().ct_eq(given)
        })
        .into()
}

fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("the request body is over {MAX_BODY} bytes"),
    )
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(body))
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_matches_only_itself() {
        let keys = vec!["k-0123456789abcdef".to_owned(), "k-fedcba9876543210".to_owned()];
        assert!(authorized(&keys, Some(b"k-0123456789abcdef")));
        assert!(authorized(&keys, Some(b"k-fedcba9876543210")));
        for bad in [
            &b""[..],
            b"k-0123456789abcde",
            b"k-0123456789abcdef0",
            b"K-0123456789ABCDEF",
        ] {
            assert!(!authorized(&keys, Some(bad)), "{bad:?}");
        }
        assert!(!authorized(&keys, None));
        assert!(!authorized(&[], Some(b"anything")));
    }
}
