//! `--jwks-url`: verification keys an identity provider publishes as a JSON Web Key Set,
//! chosen by the token's `kid`. The set is fetched at start, again every `--jwks-refresh`,
//! and when a token names a `kid` the gateway does not know — at most once per
//! `--jwks-min-interval`, however many such tokens arrive, so a flood of made-up `kid`s
//! cannot hammer the provider. Each fetch replaces the whole set: a key the provider removed
//! stops verifying tokens from then on.
//!
//! Only signature keys of the three supported families are taken: RSA (RS256), EC P-256
//! (ES256) and Ed25519 (EdDSA); symmetric keys in a JWKS are ignored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tracing::{info, warn};

use crate::sync::lock;

/// The largest key set accepted.
const MAX_BODY: usize = 1 << 20;
/// One fetch's time limit.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// When the last fetch started; held across a fetch, so concurrent callers wait for it.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Jwks {
    pub(crate) fn new(url: &str, min_interval: Duration) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("--jwks-url {url:?}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!("--jwks-url {url:?}: expected an http(s) URL"));
        }
        // The provider is named: with both rustls backends in one build, there is no default.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("--jwks-url: TLS: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            url: uri,
            keys: Mutex::default(),
            last_fetch: tokio::sync::Mutex::new(None),
            min_interval,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// The key with id `kid`, if the set holds it.
    pub(crate) fn key(&self, kid: &str) -> Option<Key> {
        lock(&self.keys).get(kid).cloned()
    }

    /// Fetches the set unless one was fetched within `--jwks-min-interval`; a caller that
    /// finds a fetch in progress waits for it. Returns once the set is as fresh as allowed.
    pub(crate) async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch().await;
    }

    /// Refreshes every `every`, for as long as the gateway holds the set.
    pub(crate) async fn run(this: std::sync::Weak<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(jwks) = this.upgrade() else { return };
            *jwks.last_fetch.lock().await = Some(Instant::now());
            jwks.fetch().await;
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
    fn the_url_must_be_http_or_https() {
        assert!(Jwks::new("https://id.example/.well-known/jwks.json", Duration::from_secs(1)).is_ok());
        assert!(Jwks::new("ftp://id.example/jwks", Duration::from_secs(1)).is_err());
        assert!(Jwks::new("not a url", Duration::from_secs(1)).is_err());
    }
}
