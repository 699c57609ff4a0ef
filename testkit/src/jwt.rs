//! Token minting for tests.

use herald_proto::claims::{Claims, Grants};
use jsonwebtoken::{encode, EncodingKey, Header};

/// The HS256 secret test gateways use.
pub const SECRET: &str = "herald-test-secret-0123456789abcdef";

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An HS256 token for `user`, valid for `ttl_s` seconds (negative: already expired), with
/// room grants (`None`: no `herald` claim).
pub fn token(user: &str, ttl_s: i64, sub: &[&str], publish: &[&str]) -> String {
    let claims = Claims {
        sub: user.to_owned(),
        exp: (now() as i64 + ttl_s) as u64,
        iat: Some(now()),
        name: Some(user.to_uppercase()),
        herald: Some(Grants {
            sub: sub.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
        }),
    };
    sign(&claims, SECRET)
}

/// A token for `user` that may subscribe and publish anywhere, valid for an hour.
pub fn any_room(user: &str) -> String {
    token(user, 3600, &["*"], &["*"])
}

pub fn sign(claims: &Claims, secret: &str) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("token encodes")
}
