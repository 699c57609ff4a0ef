//! `GET /presence?room=R`: a room's members, without joining it.

use std::sync::Arc;

use herald_proto::http::param;
use herald_proto::ErrorCode;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::addr::ClientAddr;
use crate::auth::Access;
use crate::state::Shared;

use super::{identify, json, query_param, request_allowed, session_id, Body, HttpError};

/// `GET /presence?room=R` → the room's snapshot (`presence` frame JSON), without joining it.
pub(crate) async fn presence(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    remote: ClientAddr,
) -> Result<Response<Body>, HttpError> {
    let who = identify(shared, &req, remote).await?;
    let room = query_param(&req, param::ROOM).unwrap_or_default();
    who.check_room(&room, Access::Subscribe)?;
    session_id(&req)?;
    request_allowed(shared, &who)?;
    let snapshot = shared
        .presence
        .snapshot(&room)
        .await
        .ok_or_else(|| HttpError::new(ErrorCode::Unavailable, "the presence service did not answer"))?;
    let frame = herald_proto::frame::ServerFrame::Presence(snapshot);
    Ok(json(StatusCode::OK, herald_proto::Codec::Json.encode_server(&frame)))
}
