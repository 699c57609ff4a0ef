//! The public listener: TLS, HTTP/1 with a header timeout, routing to the transports, and the
//! WebSocket upgrade checks (drain, Origin, sub-protocol, token, connection limit).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use herald_proto::http::path;
use herald_proto::{codec, Codec, ErrorCode};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::panic::AssertUnwindSafe;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, warn};

use crate::addr::ClientAddr;
use crate::auth::Identity;
use crate::config::WsCompression;
use crate::deadline::{WriteDeadline, SOCKET_DEADLINE_MARGIN};
use crate::deflate;
use crate::http::{self as transport, full, token, Body, HttpError};
use crate::outbound::Deflate;
use crate::state::Shared;
use crate::sync::panic_message;
use crate::ws::{self, Accepted, Mode};

// === public listener ===

/// Accepts connections until `stop` fires.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: Arc<Notify>,
) {
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let _ = tcp.set_nodelay(true);
        let tcp = WriteDeadline::new(tcp, shared.config.write_timeout + SOCKET_DEADLINE_MARGIN);
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        tokio::spawn(async move {
            let timeout = shared.config.handshake_timeout;
            match tls {
                None => serve_io(shared, tcp, remote).await,
                Some(tls) => match tokio::time::timeout(timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_io(shared, stream, remote).await,
                    Ok(Err(e)) => debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%remote, "TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_io<I>(shared: Arc<Shared>, io: I, remote: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let timeout = shared.config.handshake_timeout;
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move {
            // A panic in a handler answers its request with 500 and ends nothing else; the
            // handler's guards release what it held.
            let routed = AssertUnwindSafe(route(shared, req, remote.ip())).catch_unwind().await;
            Ok::<_, Infallible>(routed.unwrap_or_else(|panic| {
                error!(panic = panic_message(&*panic), "Request handler panicked");
                HttpError::new(ErrorCode::Internal, "internal error").into_response()
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(HTTP_BUFFER)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!(%remote, error = %e, "HTTP connection ended with an error");
    }
}

/// Bytes hyper buffers per connection, each way: a request head must fit (browsers send a
/// few KiB; a cursor of `--max-subscriptions` rooms some tens), and an answer hyper has taken
/// but not written is at most this (hyper asks for more of a body only below it), so an
/// answer holds its connection slot until little of it is left.
const HTTP_BUFFER: usize = 64 * 1024;

async fn route(shared: Arc<Shared>, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let remote = shared.client_addr(peer, &req);
    let result = match (req.method(), req.uri().path()) {
        (&Method::GET, path::WS) => upgrade(shared, req, Mode::Herald, remote).await,
        (&Method::GET, path::POLL) => {
            transport::cors(&shared, origin, transport::poll::poll(&shared, req, remote).await)
        }
        (&Method::GET, path::SSE) => transport::cors(&shared, origin, transport::sse::sse(&shared, req, remote).await),
        (&Method::POST, path::POLL_LEAVE) => {
            transport::cors(&shared, origin, transport::poll::leave(&shared, req, remote).await)
        }
        (&Method::POST, path::PUBLISH) => {
            transport::cors(&shared, origin, transport::publish::publish(&shared, req, remote).await)
        }
        (&Method::OPTIONS, path::POLL | path::POLL_LEAVE | path::SSE | path::PUBLISH | path::PRESENCE) => {
            transport::cors(&shared, origin, transport::preflight(&shared, &req))
        }
        (&Method::GET, path::ECHO) if shared.config.echo_endpoint => upgrade(shared, req, Mode::Echo, remote).await,
        (&Method::GET, path::PRESENCE) => transport::cors(
            &shared,
            origin,
            transport::presence::presence(&shared, req, remote).await,
        ),
        (method, path) => match (method, transport::web::asset(&shared, path)) {
            (&Method::GET, Some(page)) => Ok(page),
            _ => Err(HttpError::new(
                ErrorCode::NotFound,
                format!("no route for {} {}", req.method(), req.uri().path()),
            )),
        },
    };
    result.unwrap_or_else(HttpError::into_response)
}

async fn upgrade(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    mode: Mode,
    addr: ClientAddr,
) -> Result<Response<Body>, HttpError> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return Err(HttpError::new(ErrorCode::BadRequest, "expected a WebSocket upgrade"));
    }
    if !shared.origin_allowed(&req) {
        return Err(HttpError::new(ErrorCode::Forbidden, "origin not allowed"));
    }
    let codec = negotiate(&req)?;
    let config = &shared.config;
    let agreed = match config.ws_compression {
        WsCompression::Off => None,
        WsCompression::On | WsCompression::PerConnection => deflate::negotiate(
            req.headers()
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ),
    };
    let min = config.ws_compression_min_bytes;
    let compression = ws::Compression {
        inbound: agreed.is_some(),
        events: agreed
            .as_ref()
            .filter(|a| a.compress_events)
            .map(|_| match config.ws_compression {
                WsCompression::PerConnection => Deflate::PerDelivery(min),
                _ => Deflate::Shared(min),
            }),
    };
    let (conn_id, conn) = shared.new_conn();
    let identity = match mode {
        Mode::Echo => None,
        Mode::Herald => {
            let name = transport::display_name(&req)?;
            let sid = transport::session_id(&req)?;
            let anon_id = transport::anon_id(sid.as_deref());
            Some(
                shared
                    .auth
                    .verify(token(&req).as_deref(), &anon_id, name.as_deref(), addr)
                    .await?,
            )
        }
    };
    let identity = identity.unwrap_or_else(|| Identity {
        user: format!("echo-{conn}"),
        name: None,
        claims: None,
        anonymous: None,
    });
    // An anonymous client's connects count against its address's requests (a fresh sid per
    // connect is a fresh user; the churn of connections is what costs fanout).
    if identity.anonymous.is_some() {
        transport::request_allowed(&shared, &identity)?;
    }
    let slot = shared.reserve(conn_id, &identity)?;
    let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req)
        .map_err(|e| HttpError::new(ErrorCode::BadRequest, format!("bad upgrade: {e}")))?;
    let offered_protocol = req.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL);
    let accepted = Box::new(Accepted {
        slot,
        conn_id,
        conn,
        identity,
        codec,
        compression,
        mode,
    });
    tokio::spawn(ws::run(shared, fut, accepted));
    let (mut parts, _) = resp.into_parts();
    if let Some(answer) = agreed.and_then(|a| HeaderValue::from_str(&a.answer).ok()) {
        parts.headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
    }
    if offered_protocol {
        parts.headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.protocol()),
        );
    }
    Ok(Response::from_parts(parts, full(Bytes::new())))
}

/// Picks the first offered sub-protocol Herald speaks; none offered means JSON.
fn negotiate(req: &Request<Incoming>) -> Result<Codec, HttpError> {
    let offered: Vec<&str> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(Codec::Json);
    }
    offered.iter().find_map(|p| Codec::from_protocol(p)).ok_or_else(|| {
        HttpError::new(
            ErrorCode::BadRequest,
            format!(
                "unsupported sub-protocol; use {} or {}",
                codec::JSON_PROTOCOL,
                codec::MSGPACK_PROTOCOL
            ),
        )
    })
}
