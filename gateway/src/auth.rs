//! Token verification: HS256 with a shared secret, or RS256/ES256/EdDSA with a public key.

use herald_proto::claims::Claims;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{Config, ConfigError};

/// Verifies client tokens.
#[derive(Clone)]
pub struct Authenticator {
    keys: Vec<(DecodingKey, Validation)>,
    allow_anonymous: bool,
}

/// Who a connection is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub name: Option<String>,
    /// `None` for anonymous users, who may use any room.
    pub claims: Option<Claims>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

// === impl Authenticator ===

impl Authenticator {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.auth_hs256_secret {
            keys.push((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256),
            ));
        }
        if let Some(key) = &config.auth_public_key {
            let pem = if key.trim_start().starts_with("-----BEGIN") {
                key.clone().into_bytes()
            } else {
                std::fs::read(key).map_err(|e| ConfigError::Read(key.clone(), e))?
            };
            keys.push(public_key(&pem)?);
        }
        Ok(Self {
            keys,
            allow_anonymous: config.allow_anonymous,
        })
    }

    /// Verifies `token`; with no token, an anonymous identity if anonymous mode is on.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        anon_id: &str,
        anon_name: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            if self.allow_anonymous {
                return Ok(Identity {
                    user: format!("anon-{anon_id}"),
                    name: anon_name.map(|n| n.chars().take(64).collect()),
                    claims: None,
                });
            }
            return Err(AuthError::Missing);
        };
        let mut last = AuthError::Invalid("no key configured".into());
        for (key, validation) in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims.sub.is_empty() || !claims.sub.bytes().all(is_user_byte) {
                        return Err(AuthError::Invalid("`sub` must be 1+ of A-Z a-z 0-9 _ - @ =".into()));
                    }
                    return Ok(Identity {
                        user: claims.sub.clone(),
                        name: claims.name.clone(),
                        claims: Some(claims),
                    });
                }
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                    return Err(AuthError::Expired)
                }
                Err(e) => last = AuthError::Invalid(e.to_string()),
            }
        }
        Err(last)
    }
}

/// User ids appear in room names (`user:<id>`) and subjects (`herald.status.<id>`).
fn is_user_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'@' | b'=')
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = 0;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "sub"]);
    v
}

fn public_key(pem: &[u8]) -> Result<(DecodingKey, Validation), ConfigError> {
    let bad = |e: jsonwebtoken::errors::Error| ConfigError::Key(e.to_string());
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, validation(Algorithm::RS256)));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, validation(Algorithm::ES256)));
    }
    DecodingKey::from_ed_pem(pem)
        .map(|k| (k, validation(Algorithm::EdDSA)))
        .map_err(bad)
}

// === impl Identity ===

impl Identity {
    pub fn may_subscribe(&self, room: &str) -> bool {
        self.claims.as_ref().is_none_or(|c| c.may_subscribe(room))
    }

    pub fn may_publish(&self, room: &str) -> bool {
        self.claims.as_ref().is_none_or(|c| c.may_publish(room))
    }

    /// Token expiry, seconds since the epoch.
    pub fn expires_at(&self) -> Option<u64> {
        self.claims.as_ref().map(|c| c.exp)
    }
}
