//! Signing keys: a JWKS loaded from a file (and watched) or fetched from a URL and refreshed.
//!
//! Verification reads a snapshot (`Arc<KeySet>`) without waiting on I/O. A refresh that fails
//! keeps the last good key set, so an identity provider outage does not lock every caller out
//! while their tokens are still valid; a failed refresh is logged with the reason. The same
//! holds across configuration reloads: [`KeyStores`] hands a reload the running store when the
//! JWKS source is unchanged, so a reload never starts from an empty key set.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
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
    #[error("no signing keys could be loaded from the new JWKS source {0}")]
    NewSourceUnavailable(String),
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

/// The shared, swappable key set, and where to load it again.
pub struct KeyStore {
    current: RwLock<Arc<KeySet>>,
    /// Bumped whenever the key set is replaced, so remembered verifications can be dropped.
    generation: std::sync::atomic::AtomicU64,
    origin: Origin,
}

enum Origin {
    #[cfg(test)]
    Fixed,
    File(WatchedFile),
    Remote(Remote),
}

/// A JWKS file, re-read by content: editing it (revoking a key) or Kubernetes swapping the
/// ConfigMap symlink takes effect within [`FILE_POLL`], without a reload.
struct WatchedFile {
    path: PathBuf,
    /// What the last read saw (content or error), so each change is acted on and logged once.
    last: Mutex<Result<Vec<u8>, String>>,
}

struct Remote {
    client: reqwest::Client,
    url: String,
    failures: Counter,
    /// How long a token naming an unknown `kid` waits for the fetch it triggered.
    unknown_kid_wait: Duration,
    /// The last fetch made outside the periodic schedule (unknown `kid`, reload) and whether
    /// it has finished: callers share it rather than starting their own.
    on_demand: Mutex<Option<OnDemand>>,
}

struct OnDemand {
    started: Instant,
    done: tokio::sync::watch::Receiver<bool>,
}

/// Fetches outside the periodic schedule (a token's unknown `kid`, a reload) happen at most
/// this often, so made-up `kid`s and SIGHUP storms cannot turn into a flood against the IdP.
const MIN_REFETCH: Duration = Duration::from_secs(10);

/// How often a JWKS file is re-read.
const FILE_POLL: Duration = Duration::from_secs(1);

/// The largest JWKS document accepted. Real ones are a few KiB; the cap keeps a broken or
/// hostile endpoint from making the process buffer an unbounded body.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// What a token with an unknown `kid` learned from [`KeyStore::refetch_for_unknown_kid`].
#[derive(Debug, PartialEq, Eq)]
pub enum Refetch {
    /// A fetch finished: the current keys are as fresh as they get.
    Fetched,
    /// Keys were fetched moments ago (or come from a file): the `kid` is unknown.
    NotNeeded,
    /// The fetch is still running after `unknown_kid_wait`; it completes in the background.
    StillRunning,
}

impl KeyStore {
    fn new(initial: KeySet, origin: Origin) -> Self {
        Self {
            current: RwLock::new(Arc::new(initial)),
            generation: std::sync::atomic::AtomicU64::new(0),
            origin,
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

    /// Loads the configured source. A file must load now (a typo is a start-up error) and is
    /// then watched; a URL that is down at start is retried by the refresh task, and tokens
    /// are refused with 503 until keys arrive.
    pub async fn start(source: &JwksSource, failures: Counter) -> Result<Arc<KeyStore>, JwksError> {
        if let Some(path) = &source.file {
            let bytes =
                std::fs::read(path).map_err(|e| JwksError::File(path.display().to_string(), e))?;
            let keys = KeySet::parse(&bytes)?;
            tracing::info!(path = %path.display(), keys = keys.keys.len(), "JWKS loaded");
            let watched = WatchedFile {
                path: path.clone(),
                last: Mutex::new(Ok(bytes)),
            };
            let store = Arc::new(KeyStore::new(keys, Origin::File(watched)));
            let weak = Arc::downgrade(&store);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(FILE_POLL).await;
                    let Some(store) = weak.upgrade() else { return };
                    store.reread_file();
                }
            });
            return Ok(store);
        }
        let Some(url) = source.url.clone() else {
            return Err(JwksError::Shape("no JWKS source configured".into()));
        };
        let client = reqwest::Client::builder()
            .timeout(source.fetch_timeout)
            // A redirect is refused, not followed: the configured URL is the one trusted
            // (https, or loopback http), and a redirect could lead anywhere, in the clear.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| JwksError::Fetch(url.clone(), e.to_string()))?;
        let remote = Remote {
            client,
            url,
            failures,
            unknown_kid_wait: source.unknown_kid_wait,
            on_demand: Mutex::new(None),
        };
        let store = Arc::new(KeyStore::new(KeySet::default(), Origin::Remote(remote)));
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

    /// Re-reads a watched JWKS file and applies it when its content changed and parses. A file
    /// that does not parse (half-written, emptied by mistake) keeps the last good keys. A
    /// replaced key set bumps the generation, which drops every remembered verification at
    /// once: a key removed from the file stops verifying on the next request.
    pub fn reread_file(&self) {
        let Origin::File(file) = &self.origin else {
            return;
        };
        let seen = std::fs::read(&file.path).map_err(|e| e.to_string());
        let mut last = match file.last.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *last == seen {
            return;
        }
        let path = file.path.display();
        match &seen {
            Ok(bytes) => match KeySet::parse(bytes) {
                Ok(keys) => {
                    tracing::info!(%path, keys = keys.keys.len(), "JWKS file changed; keys replaced");
                    self.replace(keys);
                }
                Err(e) => {
                    tracing::warn!(%path, error = %e, "JWKS file changed but is unusable; keeping the last good keys");
                }
            },
            Err(e) => {
                tracing::warn!(%path, error = %e, "JWKS file unreadable; keeping the last good keys");
            }
        }
        *last = seen;
    }

    /// Fetches the JWKS again because a token names a key we do not have (the identity
    /// provider rotated its keys). At most once per [`MIN_REFETCH`]; concurrent callers share
    /// the one fetch. The caller waits at most `unknown_kid_wait` (kept below Envoy's check
    /// timeout); a slower fetch finishes in the background and later tokens see its keys.
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>) -> Refetch {
        let Origin::Remote(remote) = &self.origin else {
            return Refetch::NotNeeded;
        };
        let Some(mut done) = self.fetch_on_demand(true) else {
            return Refetch::NotNeeded;
        };
        match tokio::time::timeout(remote.unknown_kid_wait, done.wait_for(|d| *d)).await {
            Ok(_) => Refetch::Fetched,
            Err(_) => Refetch::StillRunning,
        }
    }

    /// A configuration reload kept this store: fetch (or re-read) now, unless that happened
    /// within [`MIN_REFETCH`]. Never waits; the running keys stay in force whatever happens.
    pub fn refresh_on_reload(self: &Arc<Self>) {
        match &self.origin {
            #[cfg(test)]
            Origin::Fixed => {}
            Origin::File(_) => self.reread_file(),
            Origin::Remote(_) => {
                let _ = self.fetch_on_demand(false);
            }
        }
    }

    /// Starts a background fetch unless one started within [`MIN_REFETCH`]. Returns what to
    /// wait on: the new fetch, or (with `join_running`) one still in flight.
    fn fetch_on_demand(
        self: &Arc<Self>,
        join_running: bool,
    ) -> Option<tokio::sync::watch::Receiver<bool>> {
        let Origin::Remote(remote) = &self.origin else {
            return None;
        };
        let mut slot = match remote.on_demand.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(last) = slot.as_ref()
            && last.started.elapsed() < MIN_REFETCH
        {
            let running = !*last.done.borrow();
            return (join_running && running).then(|| last.done.clone());
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let store = Arc::clone(self);
        tokio::spawn(async move {
            store.fetch().await;
            let _ = tx.send(true);
        });
        *slot = Some(OnDemand {
            started: Instant::now(),
            done: rx.clone(),
        });
        Some(rx)
    }

    /// One fetch. A failure keeps the last good keys and counts in
    /// `agent_authz_jwks_refresh_failures_total`.
    async fn fetch(&self) {
        let Origin::Remote(remote) = &self.origin else {
            return;
        };
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
        Arc::new(KeyStore::new(keys, Origin::Fixed))
    }
}

/// The key store in force, kept across configuration reloads. A reload whose JWKS source is
/// unchanged gets the running store (its keys, its refresh schedule) plus one rate-limited
/// refresh; a changed source must load keys before the reload is accepted when the running
/// store has any, so a reload never swaps good keys for none.
pub struct KeyStores {
    failures: Counter,
    running: tokio::sync::Mutex<Option<(JwksSource, Arc<KeyStore>)>>,
}

impl KeyStores {
    /// `failures` counts failed JWKS fetches.
    pub fn new(failures: Counter) -> Self {
        Self {
            failures,
            running: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn get(&self, source: &JwksSource) -> Result<Arc<KeyStore>, JwksError> {
        let mut running = self.running.lock().await;
        if let Some((running_source, store)) = running.as_ref()
            && running_source == source
        {
            store.refresh_on_reload();
            return Ok(Arc::clone(store));
        }
        let had_keys = running.as_ref().is_some_and(|(_, s)| s.is_loaded());
        let store = KeyStore::start(source, self.failures.clone()).await?;
        if had_keys && !store.is_loaded() {
            let name = source
                .url
                .clone()
                .or_else(|| source.file.as_ref().map(|f| f.display().to_string()))
                .unwrap_or_default();
            return Err(JwksError::NewSourceUnavailable(name));
        }
        *running = Some((source.clone(), Arc::clone(&store)));
        Ok(store)
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<KeySet, JwksError> {
    let fail = |e: String| JwksError::Fetch(url.to_owned(), e);
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(fail(format!(
            "HTTP {status}: redirects are not followed; configure the final URL"
        )));
    }
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}")));
    }
    let too_large = || fail(format!("response larger than {MAX_JWKS_BYTES} bytes"));
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::parse(&body)
}
