//! Signing keys: a JWKS loaded from a file or fetched from a URL and refreshed.
//!
//! Verification reads a snapshot (`Arc<KeySet>`) without waiting on I/O. A refresh that fails
//! keeps the last good key set, so an identity provider outage does not lock every caller out
//! while their tokens are still valid; a failed refresh is logged with the reason.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus_client::metrics::counter::Counter;

use crate::config::JwksSource;

/// One usable verification key.
pub struct Key {
    pub kid: Option<String>,
    /// The `alg` the JWK pins, if it names one: a token must then use exactly it.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

/// The keys currently trusted.
#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read JWKS file {0}: {1}")]
    File(String, std::io::Error),
    #[error("cannot fetch JWKS from {0}: {1}")]
    Fetch(String, String),
    #[error("JWKS is not a JSON object with a `keys` array: {0}")]
    Shape(String),
    #[error("JWKS holds no usable signing key")]
    Empty,
}

impl KeySet {
    /// Parses a JWKS document. Keys that are unusable for signature verification (encryption
    /// keys, symmetric keys, unknown types) are skipped with a log line rather than failing the
    /// whole set, as one odd key in an identity provider's JWKS must not disable the rest.
    pub fn parse(document: &[u8]) -> Result<KeySet, JwksError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document =
            serde_json::from_slice(document).map_err(|e| JwksError::Shape(e.to_string()))?;
        let mut keys = Vec::new();
        for raw in doc.keys {
            let kid = raw.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
            match Self::parse_key(raw) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => tracing::debug!(?kid, "skipping JWKS key not meant for signatures"),
                Err(reason) => tracing::warn!(?kid, %reason, "skipping unusable JWKS key"),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::Empty);
        }
        Ok(KeySet { keys })
    }

    fn parse_key(raw: serde_json::Value) -> Result<Option<Key>, String> {
        if raw
            .get("use")
            .and_then(|u| u.as_str())
            .is_some_and(|u| u != "sig")
        {
            return Ok(None);
        }
        if raw.get("kty").and_then(|k| k.as_str()) == Some("oct") {
            // Symmetric keys are never published for verification; accepting one would let a
            // caller who knows it mint tokens.
            return Ok(None);
        }
        let jwk: Jwk = serde_json::from_value(raw).map_err(|e| e.to_string())?;
        let alg = match jwk.common.key_algorithm {
            Some(ka) => Some(
                ka.to_string()
                    .parse::<Algorithm>()
                    .map_err(|_| format!("alg {ka:?} is not a signature algorithm"))?,
            ),
            None => None,
        };
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        Ok(Some(Key {
            kid: jwk.common.key_id,
            alg,
            decoding,
        }))
    }
}

/// The shared, swappable key set, and where to fetch it again.
pub struct KeyStore {
    current: RwLock<Arc<KeySet>>,
    /// Bumped whenever the key set is replaced, so remembered verifications can be dropped.
    generation: std::sync::atomic::AtomicU64,
    remote: Option<Remote>,
}

struct Remote {
    client: reqwest::Client,
    url: String,
    failures: Counter,
    /// When a token's unknown `kid` last made us fetch.
    last_kid_refetch: tokio::sync::Mutex<Option<Instant>>,
}

/// An unknown `kid` fetches the JWKS again (key rotation), at most this often.
const MIN_REFETCH: Duration = Duration::from_secs(10);

impl KeyStore {
    fn new(initial: KeySet, remote: Option<Remote>) -> Self {
        Self {
            current: RwLock::new(Arc::new(initial)),
            generation: std::sync::atomic::AtomicU64::new(0),
            remote,
        }
    }

    pub fn snapshot(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, keys: KeySet) {
        let keys = Arc::new(keys);
        match self.current.write() {
            Ok(mut guard) => *guard = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Changes whenever the key set is replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_loaded(&self) -> bool {
        !self.snapshot().keys.is_empty()
    }

    /// Loads the configured source. A file must load now (a typo is a start-up error); a URL
    /// that is down at start is retried by the refresh task, and tokens are refused with 503
    /// until keys arrive.
    pub async fn start(source: &JwksSource, failures: Counter) -> Result<Arc<KeyStore>, JwksError> {
        if let Some(path) = &source.file {
            let keys = load_file(path)?;
            tracing::info!(path = %path.display(), keys = keys.keys.len(), "JWKS loaded");
            return Ok(Arc::new(KeyStore::new(keys, None)));
        }
        let Some(url) = source.url.clone() else {
            return Err(JwksError::Shape("no JWKS source configured".into()));
        };
        let client = reqwest::Client::builder()
            .timeout(source.fetch_timeout)
            .build()
            .map_err(|e| JwksError::Fetch(url.clone(), e.to_string()))?;
        let remote = Remote {
            client,
            url,
            failures,
            last_kid_refetch: tokio::sync::Mutex::new(None),
        };
        let store = Arc::new(KeyStore::new(KeySet::default(), Some(remote)));
        store.fetch().await;
        let refresh = source.refresh_interval;
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            // Retry quickly while no key has ever loaded, then settle on the configured period.
            let mut delay = Duration::from_secs(1).min(refresh);
            loop {
                let wait = match weak.upgrade() {
                    Some(store) if store.is_loaded() => refresh,
                    Some(_) => delay,
                    None => return,
                };
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(refresh);
                let Some(store) = weak.upgrade() else { return };
                store.fetch().await;
            }
        });
        Ok(store)
    }

    /// Fetches the JWKS again because a token names a key we do not have (the identity
    /// provider rotated its keys). At most once per [`MIN_REFETCH`], so tokens with made-up
    /// `kid`s cannot turn into a flood against the identity provider; concurrent callers wait
    /// for the one fetch. Returns whether a fetch happened.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        let mut last = remote.last_kid_refetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return false;
        }
        *last = Some(Instant::now());
        self.fetch().await;
        true
    }

    /// One fetch. A failure keeps the last good keys and counts in
    /// `agent_authz_jwks_refresh_failures_total`.
    async fn fetch(&self) {
        let Some(remote) = &self.remote else { return };
        match fetch(&remote.client, &remote.url).await {
            Ok(keys) => {
                tracing::debug!(url = %remote.url, keys = keys.keys.len(), "JWKS fetched");
                self.replace(keys);
            }
            Err(e) => {
                remote.failures.inc();
                tracing::warn!(error = %e, "JWKS fetch failed; keeping the last good keys");
            }
        }
    }

    #[cfg(test)]
    pub fn fixed(keys: KeySet) -> Arc<KeyStore> {
        Arc::new(KeyStore::new(keys, None))
    }
}

fn load_file(path: &Path) -> Result<KeySet, JwksError> {
    let bytes = std::fs::read(path).map_err(|e| JwksError::File(path.display().to_string(), e))?;
    KeySet::parse(&bytes)
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<KeySet, JwksError> {
    let fail = |e: String| JwksError::Fetch(url.to_owned(), e);
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}")));
    }
    let body = response.bytes().await.map_err(|e| fail(e.to_string()))?;
    KeySet::parse(&body)
}
