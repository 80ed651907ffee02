//! The signing keys an identity provider publishes at `JWT_JWKS_URL`, cached
//! by `kid`. The first token with a `kid` loads the document; an unknown
//! `kid` later refetches it, at most once a minute, so a flood of made-up
//! `kid`s costs the IdP one request a minute and each of them a 401, never
//! a stall.
//!
//! Each key decides its own algorithm (from its type and curve, and its
//! `alg` when it names one): a token can pick a key by `kid`, never the
//! algorithm a key is used with. Symmetric (`oct`) keys are ignored: an
//! IdP's HS256 secret is `JWT_SECRET`'s business, not a public document's.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The least time between two fetches of the document.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// A cached document older than this is refetched on its next use, so keys
/// the IdP withdrew stop being accepted.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// How long a fetch may take; requests waiting on it wait no longer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The first fetch loads the keys; every later one is a refetch, at most
/// one per `REFETCH_INTERVAL`.
#[derive(Default)]
struct Fetches {
    first_done: bool,
    last_refetch: Option<Instant>,
}

impl Fetches {
    /// Whether a fetch may start now; if so, it is counted.
    fn may_fetch(&mut self) -> bool {
        if !self.first_done {
            self.first_done = true;
            return true;
        }
        if self
            .last_refetch
            .is_some_and(|at| at.elapsed() < REFETCH_INTERVAL)
        {
            return false;
        }
        self.last_refetch = Some(Instant::now());
        true
    }
}

/// A published key and the one algorithm it verifies.
pub struct VerifyingKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

pub struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, Arc<VerifyingKey>>>,
    /// Held across a fetch so concurrent misses wait for one fetch
    /// instead of starting their own.
    fetches: Mutex<Fetches>,
    fetched_at: RwLock<Option<Instant>>,
}

impl Jwks {
    pub fn new(url: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        Self {
            url: url.into(),
            client,
            keys: RwLock::default(),
            fetches: Mutex::new(Fetches::default()),
            fetched_at: RwLock::new(None),
        }
    }

    /// The key published under `kid`: from the cache, else from a refetch
    /// when none happened within `REFETCH_INTERVAL`, else `None`.
    pub async fn key(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        if !self.is_stale() {
            if let Some(key) = self.cached(kid) {
                return Some(key);
            }
        }
        let Ok(mut fetches) = tokio::time::timeout(FETCH_TIMEOUT, self.fetches.lock()).await else {
            return self.cached(kid);
        };
        // Another request may have fetched while this one waited.
        if let Some(key) = self.cached(kid).filter(|_| !self.is_stale()) {
            return Some(key);
        }
        if !fetches.may_fetch() {
            return self.cached(kid);
        }
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched the JWKS");
                if let Ok(mut cache) = self.keys.write() {
                    *cache = keys;
                }
                if let Ok(mut at) = self.fetched_at.write() {
                    *at = Some(Instant::now());
                }
            }
            // The keys fetched before stay in use.
            Err(error) => tracing::warn!(url = %self.url, %error, "could not fetch the JWKS"),
        }
        self.cached(kid)
    }

    fn cached(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    fn is_stale(&self) -> bool {
        self.fetched_at
            .read()
            .map(|at| at.is_none_or(|at| at.elapsed() > MAX_AGE))
            .unwrap_or(true)
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<VerifyingKey>>, reqwest::Error> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(usable_keys(&set))
    }
}

/// The keys of `set` that have a `kid` and an asymmetric algorithm we verify.
pub fn usable_keys(set: &JwkSet) -> HashMap<String, Arc<VerifyingKey>> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let algorithm = algorithm_of(jwk)?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, Arc::new(VerifyingKey { algorithm, key })))
        })
        .collect()
}

/// The algorithm a key verifies: RS256 for RSA, ES256 for P-256, EdDSA for
/// Ed25519. A key whose `alg` names anything else is not used.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let declared = jwk.common.key_algorithm;
    let agrees = match declared {
        None => true,
        Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => algorithm == Algorithm::EdDSA,
        Some(_) => false,
    };
    agrees.then_some(algorithm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_kidless_keys_are_not_used() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "shared", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "mislabelled", "alg": "RS256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]}))
        .expect("a JWKS document");
        let keys = usable_keys(&set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ed"]);
        assert_eq!(keys["ed"].algorithm, Algorithm::EdDSA);
    }
}
