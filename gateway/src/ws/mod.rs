//! The WebSocket transport (`/ws`, and `/echo` for conformance runs): after the upgrade,
//! [`session`] reads frames and runs ops, [`writer`] drains the connection's outbound queue,
//! and [`input`] hands the frame reader one frame at a time.

mod input;
mod session;
mod socket;
mod writer;

pub(crate) use session::{run, Accepted, Compression, Mode};
