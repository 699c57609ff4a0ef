//! Error codes of `error` frames and HTTP errors, and WebSocket close codes.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame or of an HTTP error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    TooManySubscriptions,
    Unavailable,
    Internal,
}

/// WebSocket close codes Herald sends (RFC 6455 §7.4 plus Herald's 4xxx codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode(pub u16);

// === impl ErrorCode ===

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::TooLarge,
        Self::RateLimited,
        Self::TooManySubscriptions,
        Self::Unavailable,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status the HTTP transports answer with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::TooManySubscriptions => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::TooLarge => 413,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl CloseCode ===

impl CloseCode {
    pub const NORMAL: Self = Self(1000);
    pub const GOING_AWAY: Self = Self(1001);
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// A binary frame on the JSON protocol or a text frame on the MessagePack protocol.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// Invalid UTF-8 or an undecodable frame.
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// Policy violation: the token expired during the session.
    pub const POLICY: Self = Self(1008);
    /// A message larger than `--max-message-bytes`.
    pub const TOO_BIG: Self = Self(1009);
    pub const INTERNAL: Self = Self(1011);
    /// The gateway is draining: reconnect elsewhere and resume with `since`.
    pub const DRAINING: Self = Self(1012);
    /// The outbound buffer was exceeded.
    pub const SLOW_CONSUMER: Self = Self(4008);
    /// Rate limited repeatedly.
    pub const RATE_LIMITED: Self = Self(4029);

    /// A short reason sent in the close frame.
    pub fn reason(self) -> &'static str {
        match self.0 {
            1000 => "normal",
            1001 => "going away",
            1002 => "protocol error",
            1003 => "unsupported data",
            1007 => "invalid payload",
            1008 => "token expired",
            1009 => "message too big",
            1011 => "internal error",
            1012 => "draining",
            4008 => "slow consumer",
            4029 => "rate limited",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn http_statuses_match_the_contract() {
        assert_eq!(ErrorCode::BadRequest.http_status(), 400);
        assert_eq!(ErrorCode::Unauthorized.http_status(), 401);
        assert_eq!(ErrorCode::Forbidden.http_status(), 403);
        assert_eq!(ErrorCode::NotFound.http_status(), 404);
        assert_eq!(ErrorCode::TooLarge.http_status(), 413);
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
        assert_eq!(ErrorCode::Unavailable.http_status(), 503);
    }
}
