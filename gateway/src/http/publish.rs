//! `POST /publish`: a client's event, stored once (idempotency `key`), acknowledged with its seq.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_proto::http::PublishReply;
use herald_proto::{text, ErrorCode};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::addr::ClientAddr;
use crate::state::{RateKind, Shared};

use super::{bad_request, identify, json, session_id, Body, HttpError};

#[derive(Deserialize)]
struct PublishBody<'a> {
    room: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "type")]
    kind: Option<String>,
    key: Option<String>,
}

/// `POST /publish` with `{"room","data","type"?,"key"?}` → `{"room","seq","repeat"?}` once
/// stored; a `key` seen before (same user and room, within the duplicate window) answers with
/// the stored event's seq and `"repeat":true`.
pub(crate) async fn publish(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    remote: ClientAddr,
) -> Result<Response<Body>, HttpError> {
    let who = identify(shared, &req, remote).await?;
    session_id(&req)?;
    let max = shared.config.max_message_bytes;
    // A client that sends its body slowly (or never) holds the request no longer than a handshake.
    let read = Limited::new(req.into_body(), max).collect();
    let body = tokio::time::timeout(shared.config.handshake_timeout, read)
        .await
        .map_err(|_| HttpError::new(ErrorCode::BadRequest, "the body did not arrive in time"))?
        .map_err(|_| HttpError::new(ErrorCode::TooLarge, format!("body larger than {max} bytes")))?
        .to_bytes();
    let p: PublishBody<'_> = serde_json::from_slice(&body)
        .map_err(|e| HttpError::new(ErrorCode::BadRequest, format!("malformed body: {e}")))?;
    shared.may_publish(&who, &p.room)?;
    if let Some(kind) = &p.kind {
        text::validate_type(kind).map_err(bad_request)?;
    }
    if let Some(key) = &p.key {
        text::validate_key(key).map_err(bad_request)?;
    }
    if !shared.http_allowed(RateKind::Publish, &who) || !shared.namespace_rate_allows(&who, &p.room) {
        return Err(HttpError::new(ErrorCode::RateLimited, "publish rate exceeded"));
    }
    let data = p
        .data
        .ok_or_else(|| HttpError::new(ErrorCode::BadRequest, "`data` is required"))?;
    let unavailable =
        |e: &dyn std::fmt::Display| HttpError::new(ErrorCode::Unavailable, format!("publish failed: {e}"));
    let payload = Bytes::copy_from_slice(data.get().as_bytes());
    if shared.ephemeral(&p.room) {
        shared
            .hub
            .publish_ephemeral(&p.room, payload, p.kind.as_deref(), &who.user)
            .await
            .map_err(|e| unavailable(&e))?;
        crate::metrics::received();
        let reply = PublishReply {
            room: p.room,
            seq: 0,
            repeat: None,
        };
        let body = serde_json::to_string(&reply).map_err(|e| unavailable(&e))?;
        return Ok(json(StatusCode::OK, body));
    }
    let retention = shared.retention(&p.room);
    let ack = shared
        .hub
        .publish(
            &p.room,
            payload,
            p.kind.as_deref(),
            p.key.as_deref(),
            &who.user,
            retention.ttl,
        )
        .await
        .map_err(|e| unavailable(&e))?;
    let ack = tokio::time::timeout(Duration::from_secs(10), ack)
        .await
        .map_err(|e| unavailable(&e))?
        .map_err(|e| unavailable(&e))?;
    if let Some(keep) = retention.keep {
        shared.hub.trim(&p.room, keep).await;
    }
    crate::metrics::received();
    crate::metrics::published(ack.duplicate);
    let reply = PublishReply {
        room: p.room,
        seq: ack.sequence,
        repeat: ack.duplicate.then_some(true),
    };
    let body = serde_json::to_string(&reply).map_err(|e| unavailable(&e))?;
    Ok(json(StatusCode::OK, body))
}
