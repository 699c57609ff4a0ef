//! Token verification: HS256 with a shared secret, RS256/ES256/EdDSA with a public key, or
//! the keys of a JWKS chosen by `kid` (see [`crate::jwks`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use herald_proto::api::Revocation;
use herald_proto::claims::{glob_match, Claims, SubscriptionClaims};
use herald_proto::{room, text, ErrorCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::addr::ClientAddr;
use crate::config::{Config, ConfigError};
use crate::jwks::Jwks;

/// Verifies client tokens.
#[derive(Clone)]
pub(crate) struct Authenticator {
    keys: Vec<(DecodingKey, Validation)>,
    jwks: Option<Arc<Jwks>>,
    /// The validation of JWKS keys, less the algorithm (set per key).
    jwks_validation: Validation,
    /// What anonymous clients may use; `None` when anonymous mode is off.
    anonymous: Option<Arc<AnonymousGrants>>,
    revocations: Arc<Revocations>,
}

/// Users whose older tokens are refused (`herald.api.disconnect` with `revoke`), as
/// fanout's commands and the revocation bucket tell this gateway. Entries lapse at their
/// `until` (the bucket's own expiry sends no word of it).
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    map: RwLock<Lapsing>,
}

/// The revocations, and the size at which lapsed ones are next dropped: a sweep on every
/// `set` would make a gateway that starts with many entries in the bucket (each replayed
/// through `set`) take quadratic time, all of it under the lock tokens are checked with.
#[derive(Debug, Default)]
struct Lapsing {
    map: HashMap<String, Revocation>,
    sweep_at: usize,
}

/// The fewest entries at which lapsed ones are swept.
const SWEEP_MIN: usize = 1024;

/// A connection token's claims, and the claim that makes a token a subscription token
/// instead (see [`SubscriptionClaims`]): a token with it is refused as a connection token.
#[derive(serde::Deserialize)]
struct ConnectionClaims {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    room: Option<serde::de::IgnoredAny>,
}

/// The rooms anonymous clients may use (`--anonymous-rooms`, `--anonymous-publish`).
#[derive(Debug, Default)]
pub(crate) struct AnonymousGrants {
    pub rooms: Vec<String>,
    pub publish: Vec<String>,
}

/// What an anonymous client is: the address it is counted by, and its grants.
#[derive(Debug, Clone)]
pub(crate) struct Anonymous {
    pub addr: ClientAddr,
    grants: Arc<AnonymousGrants>,
}

/// Who a connection is.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub user: String,
    pub name: Option<String>,
    /// The token's claims; `None` for anonymous users.
    pub claims: Option<Claims>,
    /// Set for anonymous users (boxed: most connections carry a token).
    pub anonymous: Option<Box<Anonymous>>,
}

/// What a client wants to do with a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Subscribe,
    Publish,
}

/// A room refused to a client: the contract's code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomRefused {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token names a `kid` the JWKS does not hold (yet): a refresh may bring it.
    #[error("invalid token: unknown key id `{0}`")]
    UnknownKey(String),
    #[error("the token has been revoked")]
    Revoked,
}

// === impl Authenticator ===

impl Authenticator {
    pub(crate) fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.auth_hs256_secret {
            keys.push((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256, config),
            ));
        }
        if let Some(key) = &config.auth_public_key {
            let pem = if key.trim_start().starts_with("-----BEGIN") {
                key.clone().into_bytes()
            } else {
                std::fs::read(key).map_err(|e| ConfigError::Read(key.clone(), e))?
            };
            keys.push(public_key(&pem, config)?);
        }
        let jwks = match &config.jwks_url {
            Some(url) => {
                let jwks = Arc::new(
                    Jwks::new(url, config.jwks_min_interval, config.jwks_insecure_http).map_err(ConfigError::Key)?,
                );
                Some(jwks)
            }
            None => None,
        };
        Ok(Self {
            keys,
            jwks,
            jwks_validation: validation(Algorithm::RS256, config),
            anonymous: config.allow_anonymous.then(|| {
                Arc::new(AnonymousGrants {
                    rooms: config.anonymous_rooms.clone(),
                    publish: config.anonymous_publish.clone(),
                })
            }),
            revocations: Arc::default(),
        })
    }

    /// The revocations this authenticator checks tokens against.
    pub(crate) fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The JWKS, if `--jwks-url` is set (the gateway fetches it at start and on a timer).
    pub(crate) fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// [`Authenticator::authenticate`], fetching the JWKS again (within its rate limit) when
    /// the token names an unknown `kid`; the wait for that fetch is bounded (see
    /// [`Jwks::refresh`]), after which the token is refused as unauthorized.
    pub(crate) async fn verify(
        &self,
        token: Option<&str>,
        anon_id: &str,
        anon_name: Option<&str>,
        addr: ClientAddr,
    ) -> Result<Identity, AuthError> {
        match self.authenticate(token, anon_id, anon_name, addr) {
            Err(AuthError::UnknownKey(kid)) => {
                if let Some(jwks) = &self.jwks {
                    jwks.refresh().await;
                }
                self.authenticate(token, anon_id, anon_name, addr).map_err(|e| match e {
                    AuthError::UnknownKey(_) => AuthError::UnknownKey(kid),
                    other => other,
                })
            }
            other => other,
        }
    }

    /// Verifies `token`; with no token, an anonymous identity counted by `addr` if
    /// anonymous mode is on.
    pub(crate) fn authenticate(
        &self,
        token: Option<&str>,
        anon_id: &str,
        anon_name: Option<&str>,
        addr: ClientAddr,
    ) -> Result<Identity, AuthError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            if let Some(grants) = &self.anonymous {
                return Ok(Identity {
                    user: format!("anon-{anon_id}"),
                    name: anon_name.and_then(text::clean_name),
                    claims: None,
                    anonymous: Some(Box::new(Anonymous {
                        addr,
                        grants: Arc::clone(grants),
                    })),
                });
            }
            return Err(AuthError::Missing);
        };
        let ConnectionClaims { claims, room } = self.decode(token)?;
        if room.is_some() {
            // Handed out to open one room (and sent along in URLs), a subscription token
            // would otherwise open a connection as its user, with the user's personal room.
            return Err(AuthError::Invalid(
                "a subscription token (with a `room` claim) is not a connection token".into(),
            ));
        }
        if let Err(e) = text::validate_user(&claims.sub) {
            return Err(AuthError::Invalid(format!("`sub`: {e}")));
        }
        if self
            .revocations
            .refuses(&claims.sub, claims.iat, herald_service::now_ms())
        {
            return Err(AuthError::Revoked);
        }
        Ok(Identity {
            user: claims.sub.clone(),
            name: claims.name.as_deref().and_then(text::clean_name),
            claims: Some(claims),
            anonymous: None,
        })
    }

    /// Checks a subscription token: signed by one of the keys, unexpired, for `user`, not
    /// revoked; the room it opens. Fetches the JWKS again for an unknown `kid`, as
    /// [`Authenticator::verify`] does.
    pub(crate) async fn verify_room(&self, token: &str, user: &str) -> Result<String, AuthError> {
        let claims = match self.decode::<SubscriptionClaims>(token) {
            Err(AuthError::UnknownKey(kid)) => {
                if let Some(jwks) = &self.jwks {
                    jwks.refresh().await;
                }
                self.decode::<SubscriptionClaims>(token).map_err(|e| match e {
                    AuthError::UnknownKey(_) => AuthError::UnknownKey(kid),
                    other => other,
                })?
            }
            other => other?,
        };
        if claims.sub != user {
            return Err(AuthError::Invalid("the subscription token is another user's".into()));
        }
        if self.revocations.refuses(user, claims.iat, herald_service::now_ms()) {
            return Err(AuthError::Revoked);
        }
        Ok(claims.room)
    }

    /// Verifies `token`'s signature (a JWKS key chosen by `kid`, or a static key) and its
    /// time claims, and decodes its claims.
    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        let mut last = AuthError::Invalid("no key configured".into());
        let mut candidates: Vec<(DecodingKey, Validation)> = Vec::new();
        if let Some(jwks) = &self.jwks {
            let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
            if let Some(kid) = header.kid {
                match jwks.key(&kid) {
                    Some(k) => {
                        let mut v = self.jwks_validation.clone();
                        v.algorithms = vec![k.alg];
                        candidates.push((k.key, v));
                    }
                    // A static key may still verify it; else a refresh may bring the kid.
                    None => last = AuthError::UnknownKey(kid),
                }
            }
        }
        let unknown = matches!(last, AuthError::UnknownKey(_));
        for (key, validation) in candidates.iter().chain(&self.keys) {
            match jsonwebtoken::decode::<T>(token, key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                    return Err(AuthError::Expired)
                }
                Err(e) if !unknown => last = AuthError::Invalid(e.to_string()),
                Err(_) => {}
            }
        }
        Err(last)
    }
}

// === impl Revocations ===

impl Revocations {
    /// Records `user`'s revocation: of two, the later `before` holds, until the later `until`.
    pub(crate) fn set(&self, user: &str, r: &Revocation, now: u64) {
        let mut lapsing = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Lapsing { map, sweep_at } = &mut *lapsing;
        if map.len() >= *sweep_at {
            map.retain(|_, old| old.until > now);
            *sweep_at = (2 * map.len()).max(SWEEP_MIN);
        }
        // The times alone: what closes connections is not kept per user.
        let entry = map.entry(user.to_owned()).or_insert(Revocation {
            before: r.before,
            until: r.until,
            close: None,
        });
        entry.before = entry.before.max(r.before);
        entry.until = entry.until.max(r.until);
    }

    /// Forgets `user`'s revocation (its bucket entry was deleted).
    pub(crate) fn remove(&self, user: &str) {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map
            .remove(user);
    }

    /// Whether `user`'s token issued at `iat` is refused at `now` (ms since the epoch).
    pub(crate) fn refuses(&self, user: &str, iat: Option<u64>, now: u64) -> bool {
        let lapsing = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        !lapsing.map.is_empty() && lapsing.map.get(user).is_some_and(|r| r.refuses(iat, now))
    }
}

/// Whether a shared (not personal) room matches one of `globs`.
fn shared_match(globs: &[String], room: &str) -> bool {
    room::personal_owner(room).is_none() && globs.iter().any(|g| glob_match(g, room))
}

/// `exp` and `sub` required, `nbf` checked when present, no leeway; `aud` and `iss` required
/// and checked when `--jwt-audience` / `--jwt-issuer` are set.
fn validation(alg: Algorithm, config: &Config) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = 0;
    v.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &config.jwt_audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    if let Some(iss) = &config.jwt_issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

fn public_key(pem: &[u8], config: &Config) -> Result<(DecodingKey, Validation), ConfigError> {
    let bad = |e: jsonwebtoken::errors::Error| ConfigError::Key(e.to_string());
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, validation(Algorithm::RS256, config)));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, validation(Algorithm::ES256, config)));
    }
    DecodingKey::from_ed_pem(pem)
        .map(|k| (k, validation(Algorithm::EdDSA, config)))
        .map_err(bad)
}

// === impl Identity ===

impl Identity {
    /// A token's grants; an anonymous client's `--anonymous-rooms`; nobody else's personal
    /// room either way.
    pub(crate) fn may_subscribe(&self, room: &str) -> bool {
        match (&self.claims, &self.anonymous) {
            (Some(c), _) => c.may_subscribe(room),
            (None, Some(a)) => self.owns(room) || shared_match(&a.grants.rooms, room),
            (None, None) => self.owns(room),
        }
    }

    pub(crate) fn may_publish(&self, room: &str) -> bool {
        match (&self.claims, &self.anonymous) {
            (Some(c), _) => c.may_publish(room),
            (None, Some(a)) => shared_match(&a.grants.publish, room),
            (None, None) => false,
        }
    }

    fn owns(&self, room: &str) -> bool {
        room::personal_owner(room) == Some(self.user.as_str())
    }

    /// The address an anonymous client is counted by; `None` for users with a token (they
    /// are counted by user id).
    pub(crate) fn anonymous_addr(&self) -> Option<ClientAddr> {
        self.anonymous.as_ref().map(|a| a.addr)
    }

    /// Checks a room name (`bad_request`) and this identity's grant for it (`forbidden`).
    pub(crate) fn check_room(&self, room: &str, access: Access) -> Result<(), RoomRefused> {
        let refuse = |code, message| Err(RoomRefused { code, message });
        if let Err(e) = room::validate(room) {
            return refuse(ErrorCode::BadRequest, format!("invalid room {room:?}: {e}"));
        }
        match access {
            Access::Subscribe if !self.may_subscribe(room) => {
                refuse(ErrorCode::Forbidden, format!("may not subscribe to {room}"))
            }
            Access::Publish if !self.may_publish(room) => {
                refuse(ErrorCode::Forbidden, format!("may not publish to {room}"))
            }
            _ => Ok(()),
        }
    }

    /// Token expiry, seconds since the epoch.
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.claims.as_ref().map(|c| c.exp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;
    use herald_proto::claims::Grants;
    use jsonwebtoken::{EncodingKey, Header};

    fn data(name: &str) -> String {
        format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn auth(edit: impl FnOnce(&mut Config)) -> Authenticator {
        let mut c = Config::parse_from(["herald-gateway"]);
        edit(&mut c);
        Authenticator::from_config(&c).unwrap()
    }

    fn here() -> ClientAddr {
        ClientAddr::of("192.0.2.1".parse().unwrap())
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(sub: &str, ttl: i64) -> Claims {
        Claims {
            sub: sub.into(),
            exp: (now() as i64 + ttl) as u64,
            iat: None,
            name: Some("Alice".into()),
            herald: Some(Grants {
                sub: vec!["lobby".into()],
                publish: vec![],
            }),
        }
    }

    fn sign(alg: Algorithm, key: &EncodingKey, c: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(alg), c, key).unwrap()
    }

    fn pem(name: &str) -> Vec<u8> {
        std::fs::read(data(name)).unwrap()
    }

    #[test]
    fn every_public_key_algorithm_verifies() {
        let cases = [
            (
                Algorithm::RS256,
                "rsa",
                EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap(),
            ),
            (
                Algorithm::ES256,
                "ec",
                EncodingKey::from_ec_pem(&pem("ec_private.pem")).unwrap(),
            ),
            (
                Algorithm::EdDSA,
                "ed",
                EncodingKey::from_ed_pem(&pem("ed_private.pem")).unwrap(),
            ),
        ];
        for (alg, name, key) in &cases {
            let a = auth(|c| c.auth_public_key = Some(data(&format!("{name}_public.pem"))));
            let id = a
                .authenticate(Some(&sign(*alg, key, &claims("alice", 60))), "c1", None, here())
                .unwrap();
            assert_eq!(id.user, "alice", "{name}");
            assert_eq!(id.name.as_deref(), Some("Alice"));
            assert!(id.may_subscribe("lobby") && !id.may_subscribe("other"));
            let expired = sign(*alg, key, &claims("alice", -5));
            assert_eq!(
                a.authenticate(Some(&expired), "c1", None, here()).unwrap_err(),
                AuthError::Expired,
                "{name}"
            );
            // A token from another key pair is refused.
            for (other_alg, other_name, other_key) in &cases {
                if other_name != name {
                    let t = sign(*other_alg, other_key, &claims("mallory", 60));
                    assert!(
                        matches!(a.authenticate(Some(&t), "c1", None, here()), Err(AuthError::Invalid(_))),
                        "{name} accepted {other_name}"
                    );
                }
            }
        }
    }

    #[test]
    fn inline_pem_and_hs256_together() {
        let public = String::from_utf8(pem("ec_public.pem")).unwrap();
        let a = auth(|c| {
            c.auth_public_key = Some(public);
            c.auth_hs256_secret = Some("s3cret".into());
        });
        let ec = EncodingKey::from_ec_pem(&pem("ec_private.pem")).unwrap();
        assert!(a
            .authenticate(Some(&sign(Algorithm::ES256, &ec, &claims("a", 60))), "c", None, here())
            .is_ok());
        let hs = EncodingKey::from_secret(b"s3cret");
        assert!(a
            .authenticate(Some(&sign(Algorithm::HS256, &hs, &claims("b", 60))), "c", None, here())
            .is_ok());
        let wrong = EncodingKey::from_secret(b"guess");
        assert!(a
            .authenticate(
                Some(&sign(Algorithm::HS256, &wrong, &claims("b", 60))),
                "c",
                None,
                here()
            )
            .is_err());
        // "alg: none" and an HS256 token signed with the public key text are refused.
        let forged = EncodingKey::from_secret(&pem("ec_public.pem"));
        assert!(a
            .authenticate(
                Some(&sign(Algorithm::HS256, &forged, &claims("x", 60))),
                "c",
                None,
                here()
            )
            .is_err());
    }

    #[test]
    fn anonymous_and_missing_tokens() {
        let strict = auth(|c| c.auth_hs256_secret = Some("s".into()));
        assert_eq!(
            strict.authenticate(None, "x1", None, here()).unwrap_err(),
            AuthError::Missing
        );
        let open = auth(|c| {
            c.allow_anonymous = true;
            c.anonymous_rooms = vec!["news:*".into(), "lobby".into(), "*".into()];
            c.anonymous_publish = vec!["lobby".into()];
        });
        let id = open.authenticate(None, "x1", Some("Guest"), here()).unwrap();
        assert_eq!(id.user, "anon-x1");
        assert_eq!(id.name.as_deref(), Some("Guest"));
        assert_eq!(id.anonymous_addr(), Some(here()));
        assert!(id.may_subscribe("news:today") && id.may_subscribe("anything"));
        assert!(id.may_publish("lobby") && !id.may_publish("news:today"));
        assert!(id.may_subscribe("user:anon-x1"), "its own personal room");
        assert!(!id.may_publish("user:anon-x1"), "personal rooms are for backends");
        assert!(
            !id.may_subscribe("user:bob") && !id.may_publish("user:bob"),
            "not bob's"
        );
        // Without the flags an anonymous client reads and writes nothing shared.
        let bare = auth(|c| c.allow_anonymous = true);
        let id = bare.authenticate(None, "x2", None, here()).unwrap();
        assert!(!id.may_subscribe("lobby") && !id.may_publish("lobby"));
        assert!(id.may_subscribe("user:anon-x2"));
    }

    #[test]
    fn audience_issuer_and_not_before() {
        let key = EncodingKey::from_secret(b"s");
        let a = auth(|c| {
            c.auth_hs256_secret = Some("s".into());
            c.jwt_audience = Some("herald".into());
            c.jwt_issuer = Some("https://id.example".into());
        });
        let token = |extra: serde_json::Value| {
            let mut v = serde_json::to_value(claims("alice", 60)).unwrap();
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &v, &key).unwrap()
        };
        let ok = token(serde_json::json!({"aud": "herald", "iss": "https://id.example"}));
        assert_eq!(a.authenticate(Some(&ok), "c", None, here()).unwrap().user, "alice");
        for bad in [
            serde_json::json!({"iss": "https://id.example"}),
            serde_json::json!({"aud": "other", "iss": "https://id.example"}),
            serde_json::json!({"aud": "herald"}),
            serde_json::json!({"aud": "herald", "iss": "https://evil.example"}),
            serde_json::json!({"aud": "herald", "iss": "https://id.example", "nbf": now() + 3600}),
        ] {
            let t = token(bad.clone());
            assert!(a.authenticate(Some(&t), "c", None, here()).is_err(), "{bad}");
        }
        // Without the flags, `aud` and `iss` are not required; `nbf` is still checked.
        let plain = auth(|c| c.auth_hs256_secret = Some("s".into()));
        assert!(plain
            .authenticate(Some(&token(serde_json::json!({}))), "c", None, here())
            .is_ok());
        let early = token(serde_json::json!({"nbf": now() + 3600}));
        assert!(plain.authenticate(Some(&early), "c", None, here()).is_err());
    }

    #[test]
    fn user_ids_that_would_break_subjects_are_refused() {
        let a = auth(|c| c.auth_hs256_secret = Some("s".into()));
        let key = EncodingKey::from_secret(b"s");
        for bad in ["a.b", "a b", "a*", ""] {
            let t = sign(Algorithm::HS256, &key, &claims(bad, 60));
            assert!(a.authenticate(Some(&t), "c", None, here()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn revocations_lapse_and_are_swept_as_they_grow() {
        let r = Revocations::default();
        let at = |until| Revocation {
            before: 1_000,
            until,
            close: None,
        };
        r.set("gone", &at(2_000), 0);
        r.set("kept", &at(u64::MAX), 0);
        assert!(r.refuses("gone", Some(1), 1_500) && !r.refuses("gone", Some(1), 2_000));
        // Entries that lapse as fast as they come: the map stays within twice the sweep size.
        for i in 0..10 * SWEEP_MIN as u64 {
            r.set(&format!("u{i}"), &at(3_000 + i), 3_000 + i);
        }
        r.set("late", &at(u64::MAX), 5_000);
        let lapsing = r.map.read().unwrap();
        assert!(!lapsing.map.contains_key("gone") && !lapsing.map.contains_key("u0"));
        assert!(lapsing.map.len() <= 2 * SWEEP_MIN, "{}", lapsing.map.len());
        assert!(lapsing.map.contains_key("kept") && lapsing.map.contains_key("late"));
        drop(lapsing);
        assert!(r.refuses("kept", None, 5_000) && r.refuses("late", Some(1), 5_000));
    }
}
