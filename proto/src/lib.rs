//! Herald's wire protocol, with no I/O and no async runtime.
//!
//! Everything a client, a gateway, fanout or an app backend exchanges is defined here once:
//!
//! - [`frame`]: client ops ([`frame::ClientOp`]) and server frames ([`frame::ServerFrame`]), and the
//!   two codecs ([`codec::Codec`]: JSON text frames and MessagePack binary frames).
//! - [`code`]: error codes (with their HTTP statuses) and WebSocket close codes.
//! - [`subject`]: NATS subjects, [`header`]: NATS headers, [`room`]: room-name rules,
//!   [`cursor`]: the `room:seq,...` cursor of the HTTP transports, [`query`]: their query strings, [`claims`]: JWT claims and
//!   room globs, [`sys`]: internal gateway ↔ fanout messages, [`text`]: the rules for every
//!   other string a client controls.
//! - [`http`]: the bodies of the HTTP transports (poll answer, publish reply, errors, SSE
//!   event names); [`backend`]: the status and lifecycle events fanout publishes for backends;
//!   [`api`]: the server API's requests and replies.
//!
//! Start with [`frame`] and [`codec`].

pub mod api;
pub mod backend;
pub mod claims;
pub mod code;
pub mod codec;
pub mod cursor;
pub mod frame;
pub mod header;
pub mod http;
pub mod query;
pub mod room;
pub mod subject;
pub mod sys;
pub mod text;

pub use code::{CloseCode, ErrorCode};
pub use codec::Codec;
pub use frame::{ClientOp, ServerFrame};
