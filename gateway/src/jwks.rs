//! `--jwks-url`: verification keys an identity provider publishes as a JSON Web Key Set,
//! chosen by the token's `kid`. The set is fetched at start, again every `--jwks-refresh`,
//! and when a token names a `kid` the gateway does not know — at most once per
//! `--jwks-min-interval`, however many such tokens arrive, so a flood of made-up `kid`s
//! cannot hammer the provider. Each fetch replaces the whole set: a key the provider removed
//! stops verifying tokens from then on.
//!
//! A fetch runs in a task of its own, never under a lock a request waits on: a request with
//! an unknown `kid` waits at most [`KID_WAIT`] for a fetch in flight, and at most
//! [`MAX_KID_WAITERS`] requests wait at once; the others are refused at once. A slow
//! provider and a flood of made-up `kid`s therefore cannot park requests (which hold a
//! socket and a task, before `--max-connections` counts them) for a fetch's whole timeout.
//!
//! Only signature keys of the three supported families are taken: RSA (RS256), EC P-256
//! (ES256) and Ed25519 (EdDSA); symmetric keys in a JWKS are ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::sync::lock;

/// The largest key set accepted.
const MAX_BODY: usize = 1 << 20;
/// One fetch's time limit.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a request with an unknown `kid` waits for a fetch in flight before it is
/// refused as unauthorized: long enough for a provider that answers normally (a key
/// rotation verifies at once), short next to the fetch timeout.
pub(crate) const KID_WAIT: Duration = Duration::from_secs(1);
/// The most requests waiting for a fetch at once; more are refused without waiting. Each
/// holds a socket and a task outside `--max-connections`.
pub(crate) const MAX_KID_WAITERS: usize = 64;

/// A key of the set: the key and the one algorithm it verifies.
#[derive(Clone)]
pub(crate) struct Key {
    pub key: DecodingKey,
    pub alg: Algorithm,
}

/// The cached key set of one JWKS URL.
pub(crate) struct Jwks {
    url: http::Uri,
    keys: Mutex<HashMap<String, Key>>,
    fetches: Mutex<Fetches>,
    /// Told when a fetch ends.
    fetched: Notify,
    /// Requests waiting for a fetch, bounded by [`MAX_KID_WAITERS`].
    waiters: AtomicUsize,
    min_interval: Duration,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

/// When the last fetch started, and whether one is in flight.
#[derive(Default)]
struct Fetches {
    last: Option<Instant>,
    running: bool,
}

/// Counts one request among [`Jwks::waiters`] while it lives.
struct Waiter<'a>(&'a AtomicUsize);

// === impl Jwks ===

impl Jwks {
    /// A set for `url`; `allow_http` also takes an `http://` URL (`--jwks-insecure-http`).
    pub(crate) fn new(url: &str, min_interval: Duration, allow_http: bool) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("--jwks-url {url:?}: {e}"))?;
        let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
        let http_ok = allow_http && scheme.as_deref() == Some("http");
        if !(scheme.as_deref() == Some("https") || http_ok) || uri.host().is_none() {
            return Err(format!(
                "--jwks-url {url:?}: expected an https URL (http only with --jwks-insecure-http)"
            ));
        }
        // The provider is named: with both rustls backends in one build, there is no default.
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("--jwks-url: TLS: {e}"))?;
        // Without the flag the connector itself refuses plain http, whatever the URL says.
        let https = if allow_http {
            builder.https_or_http().enable_http1().build()
        } else {
            builder.https_only().enable_http1().build()
        };
        Ok(Self {
            url: uri,
            keys: Mutex::default(),
            fetches: Mutex::default(),
            fetched: Notify::new(),
            waiters: AtomicUsize::new(0),
            min_interval,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// The key with id `kid`, if the set holds it.
    pub(crate) fn key(&self, kid: &str) -> Option<Key> {
        lock(&self.keys).get(kid).cloned()
    }

    /// Fetches the set and waits for the fetch (or the one in flight) to end: the first
    /// fetch, before the gateway serves.
    pub(crate) async fn fetch_now(self: &Arc<Self>) {
        let fetched = self.fetched.notified();
        if self.start_fetch(true) || lock(&self.fetches).running {
            // A fetch ends within FETCH_TIMEOUT; the bound only guards against a lost task.
            let _ = tokio::time::timeout(FETCH_TIMEOUT * 2, fetched).await;
        }
    }

    /// For a token with an unknown `kid`: starts a fetch unless one ran within
    /// `--jwks-min-interval`, then waits for the one in flight, if any, at most
    /// [`KID_WAIT`], and not at all when [`MAX_KID_WAITERS`] requests already wait.
    pub(crate) async fn refresh(self: &Arc<Self>) {
        // Created before the check, so an end between the two is not missed.
        let fetched = self.fetched.notified();
        self.start_fetch(false);
        if !lock(&self.fetches).running {
            return;
        }
        let Some(_waiter) = Waiter::enter(&self.waiters) else {
            return;
        };
        let _ = tokio::time::timeout(KID_WAIT, fetched).await;
    }

    /// Starts a fetch in a task of its own unless one is in flight or (without `force`) one
    /// started within `--jwks-min-interval`; whether it started one.
    fn start_fetch(self: &Arc<Self>, force: bool) -> bool {
        {
            let mut f = lock(&self.fetches);
            let recent = f.last.is_some_and(|t| t.elapsed() < self.min_interval);
            if f.running || (recent && !force) {
                return false;
            }
            f.running = true;
            f.last = Some(Instant::now());
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.fetch().await;
            lock(&this.fetches).running = false;
            this.fetched.notify_waiters();
        });
        true
    }

    /// Refreshes every `every`, for as long as the gateway holds the set.
    pub(crate) async fn run(this: std::sync::Weak<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(jwks) = this.upgrade() else { return };
            jwks.start_fetch(true);
        }
    }

    async fn fetch(&self) {
        match tokio::time::timeout(FETCH_TIMEOUT, self.get()).await {
            Ok(Ok(keys)) => {
                info!(url = %self.url, keys = keys.len(), "JWKS fetched");
                *lock(&self.keys) = keys;
            }
            // The set in hand stays: tokens keep verifying while the provider is down.
            Ok(Err(e)) => warn!(url = %self.url, error = %e, "JWKS fetch failed"),
            Err(_) => warn!(url = %self.url, "JWKS fetch timed out"),
        }
    }

    async fn get(&self) -> Result<HashMap<String, Key>, String> {
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        Ok(keys_of(&set))
    }
}

/// The usable signature keys of a set, by `kid`.
pub(crate) fn keys_of(set: &JwkSet) -> HashMap<String, Key> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else { continue };
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => continue,
        };
        let declared = match jwk.common.key_algorithm {
            None => Some(alg),
            Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
            Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
            Some(_) => None,
        };
        if declared != Some(alg) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.insert(kid.clone(), Key { key, alg });
        }
    }
    keys
}

// === impl Waiter ===

impl<'a> Waiter<'a> {
    /// One more waiter, unless there are [`MAX_KID_WAITERS`] already.
    fn enter(count: &'a AtomicUsize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_KID_WAITERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts the timer refresh of `jwks`.
pub(crate) fn spawn_refresh(jwks: &Arc<Jwks>, every: Duration) {
    tokio::spawn(Jwks::run(Arc::downgrade(jwks), every));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signature_keys_of_the_three_families_are_taken() {
        let ed = |kid: &str, extra: serde_json::Value| {
            let mut k = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
            k.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            k
        };
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            ed("plain", serde_json::json!({})),
            ed("declared", serde_json::json!({"alg": "EdDSA", "use": "sig"})),
            ed("for-encryption", serde_json::json!({"use": "enc"})),
            ed("other-alg", serde_json::json!({"alg": "ES256"})),
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            // RFC 7517, appendix A.1.
            {"kty": "RSA", "kid": "rsa", "alg": "RS256", "e": "AQAB",
             "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]}))
        .unwrap();
        let keys = keys_of(&set);
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, ["declared", "plain", "rsa"]);
        assert_eq!(keys["rsa"].alg, Algorithm::RS256);
        assert_eq!(keys["plain"].alg, Algorithm::EdDSA);
    }

    #[test]
    fn the_url_must_be_https_unless_http_is_allowed() {
        let s = Duration::from_secs(1);
        assert!(Jwks::new("https://id.example/.well-known/jwks.json", s, false).is_ok());
        assert!(Jwks::new("http://id.example/.well-known/jwks.json", s, false).is_err());
        assert!(Jwks::new("http://127.0.0.1:9/jwks", s, true).is_ok());
        assert!(Jwks::new("ftp://id.example/jwks", s, true).is_err());
        assert!(Jwks::new("not a url", s, true).is_err());
    }
}
