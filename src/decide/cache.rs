//! A bounded, TTL-based cache of Cerbos verdicts, so an agent loop that sends the same model
//! and tools every turn skips the PDP.
//!
//! Three kinds of entries share one cache. A verdict entry answers one resource check; its key
//! is everything Cerbos sees for that verdict, serialised exactly: principal id, roles and
//! attributes; resource kind, id and attributes; the action; policy version and scope. A
//! request entry answers a whole request (a model and its 20 tools) with one lookup; its key
//! is the whole question ([`Question`]): the same principal and namespace, and every check in
//! order. It also holds the decision record's resources, serialised once
//! ([`SharedResources`]). A request that matches no request entry is answered check by check,
//! so requests sharing only some tools still share their verdicts, and then leaves a request
//! entry for its next turn. A remembered decision goes one step earlier: keyed on the
//! principal and what an LLM request's checks are built from (route, format, model, tools:
//! [`super::vocabulary::Vocabulary::derivation`]), it holds the whole decision, checks
//! included, so a repeated request is answered before its checks are even built
//! ([`PolicyEngine::recall`]); those inputs determine the checks, so it answers exactly the
//! question a request entry would.
//!
//! Keys are compared in full on a hit (the hash only finds the slot), so a cached verdict is
//! only ever reused for an identical question, and any attribute change is a different key.
//! PDP errors are never cached. A policy change takes effect for cached questions when their
//! entries expire (`cache.ttl`); a configuration reload starts an empty cache. `max_entries`
//! bounds the verdicts held: a request entry weighs one per verdict it holds. The cache is
//! off by default; identical questions in flight at once share one call either way
//! ([`InFlight`]).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::in_flight::InFlight;
use super::question::{KeyHasher, Question};
use super::{
    DecideError, Decision, Effect, PolicyEngine, Recall, RecallKey, ResourceCheck, Verdict,
};
use crate::audit::SharedResources;
use crate::identity::SharedPrincipal;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Cached {
    effect: Effect,
    policy: Option<Arc<str>>,
    outputs: Vec<(String, Value)>,
    derived_roles: Vec<String>,
}

impl Cached {
    fn of(verdict: &Verdict) -> Cached {
        Cached {
            effect: verdict.effect,
            policy: verdict.policy.clone(),
            outputs: verdict.outputs.clone(),
            derived_roles: verdict.derived_roles.clone(),
        }
    }

    fn answer(&self, check: ResourceCheck) -> Verdict {
        Verdict {
            check: check.into(),
            effect: self.effect,
            policy: self.policy.clone(),
            outputs: self.outputs.clone(),
            derived_roles: self.derived_roles.clone(),
        }
    }
}

/// A whole request's verdicts, in check order, and its decision record's resources.
struct RequestEntry {
    verdicts: Vec<Cached>,
    records: Arc<SharedResources>,
}

/// A whole decision, checks included, for [`PolicyEngine::recall`].
struct Remembered {
    verdicts: Vec<Verdict>,
    records: Arc<SharedResources>,
}

#[derive(Clone)]
enum Entry {
    Verdict(Cached),
    Request(Arc<RequestEntry>),
    Remembered(Arc<Remembered>),
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Verdict(VerdictKey),
    Request(Arc<Question>),
    /// [`Question::derived`]: distinct from a `Request` key even with the same bytes.
    Derived(Arc<Question>),
}

/// The key of one verdict. Its two halves are two JSON documents, so distinct questions can
/// never produce the same key. The principal's half (namespace, id, roles, attributes: most
/// of the bytes) is serialised and hashed once per request and shared by the entries of all
/// its resources, so a 20-tool request neither hashes nor stores it 21 times.
#[derive(Clone)]
struct VerdictKey {
    principal: Arc<PrincipalKey>,
    resource: Box<[u8]>,
}

struct PrincipalKey {
    bytes: Box<[u8]>,
    /// Of `bytes`, with the cache's own random keys (a client choosing its claims cannot aim
    /// for collisions).
    hash: u64,
}

impl PartialEq for VerdictKey {
    fn eq(&self, other: &Self) -> bool {
        let same_principal = Arc::ptr_eq(&self.principal, &other.principal)
            || (self.principal.hash == other.principal.hash
                && self.principal.bytes == other.principal.bytes);
        same_principal && self.resource == other.resource
    }
}

impl Eq for VerdictKey {}

impl Hash for VerdictKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.principal.hash);
        self.resource.hash(state);
    }
}

/// An engine with an optional verdict cache in front, sharing identical calls in flight.
pub struct CachedEngine<E> {
    inner: Arc<E>,
    cache: Option<moka::sync::Cache<Key, Entry>>,
    /// Policy version and scope: part of every key.
    namespace: String,
    hasher: KeyHasher,
    in_flight: InFlight,
    metrics: std::sync::Arc<Metrics>,
}

impl<E: PolicyEngine> CachedEngine<E> {
    /// `ttl` zero or `max_entries` zero disables caching.
    pub fn new(
        inner: E,
        ttl: Duration,
        max_entries: u64,
        namespace: String,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        let cache = (!ttl.is_zero() && max_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .weigher(|_: &Key, entry: &Entry| match entry {
                    Entry::Verdict(_) => 1,
                    Entry::Request(r) => u32::try_from(r.verdicts.len()).unwrap_or(u32::MAX),
                    Entry::Remembered(r) => u32::try_from(r.verdicts.len()).unwrap_or(u32::MAX),
                })
                .time_to_live(ttl)
                .build()
        });
        Self {
            inner: Arc::new(inner),
            cache,
            namespace,
            hasher: KeyHasher::default(),
            in_flight: InFlight::default(),
            metrics,
        }
    }

    /// The principal's half of every key of one request, serialised and hashed once.
    /// Its principal part is the principal's JSON as the identity stage wrote it (once per
    /// remembered token); after the namespace's JSON string, both prefix-free.
    fn principal_key(&self, principal: &SharedPrincipal) -> Arc<PrincipalKey> {
        let json = principal.json().get();
        let mut bytes = Vec::with_capacity(self.namespace.len() + 3 + json.len());
        // Serialising a string cannot fail.
        let _ = serde_json::to_writer(&mut bytes, &self.namespace);
        bytes.extend_from_slice(json.as_bytes());
        let hash = self.hasher.hash_one(&bytes);
        Arc::new(PrincipalKey {
            bytes: bytes.into_boxed_slice(),
            hash,
        })
    }

    /// The key of one check, serialised straight from it without building a JSON tree first.
    fn key(principal: &Arc<PrincipalKey>, check: &ResourceCheck) -> Key {
        let mut resource = Vec::with_capacity(128);
        let whole = (&check.kind, &check.id, &check.action, &check.attr);
        let _ = serde_json::to_writer(&mut resource, &whole);
        Key::Verdict(VerdictKey {
            principal: Arc::clone(principal),
            resource: resource.into_boxed_slice(),
        })
    }

    /// Asks the engine `question` (the bytes of exactly these checks), sharing the call with
    /// identical questions in flight.
    async fn ask(
        &self,
        question: Arc<Question>,
        principal: &Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        request_id: &str,
    ) -> Result<Decision, DecideError> {
        // What a check is about is not part of the question: each request keeps its own.
        let subjects: Vec<_> = checks.iter().map(|c| c.subject.clone()).collect();
        let inner = Arc::clone(&self.inner);
        // The shared principal, not a copy of its claims, goes with the call.
        let (principal, request_id) = (Arc::clone(principal), request_id.to_owned());
        let call = move || async move { inner.check(&principal, checks, &request_id).await };
        let answer = self.in_flight.share(question, call).await?;
        // The only holder unless other requests shared the call.
        let mut decision = Arc::try_unwrap(answer).unwrap_or_else(|shared| (*shared).clone());
        if decision.verdicts.len() != subjects.len() {
            return Err(DecideError::Protocol(format!(
                "{} verdicts for {} questions",
                decision.verdicts.len(),
                subjects.len()
            )));
        }
        for (verdict, subject) in decision.verdicts.iter_mut().zip(subjects) {
            Arc::make_mut(&mut verdict.check).subject = subject;
        }
        Ok(decision)
    }
}

impl<E: PolicyEngine> PolicyEngine for CachedEngine<E> {
    async fn check(
        &self,
        principal: &Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        request_id: &str,
    ) -> Result<Decision, DecideError> {
        // Tokens travel to Cerbos as auxData and may change its answer: never cache or share
        // those.
        if checks.is_empty() || principal.token.is_some() {
            return self.inner.check(principal, checks, request_id).await;
        }
        let whole = Question::new(&self.hasher, &self.namespace, principal, &checks);
        let Some(cache) = &self.cache else {
            return self.ask(whole, principal, checks, request_id).await;
        };
        let asked = checks.len();
        let request_key = Key::Request(Arc::clone(&whole));
        if let Some(Entry::Request(hit)) = cache.get(&request_key) {
            self.metrics.cache_hits.inc_by(asked as u64);
            let verdicts = checks
                .into_iter()
                .zip(&hit.verdicts)
                .map(|(check, cached)| cached.answer(check))
                .collect();
            return Ok(Decision {
                verdicts,
                call_ids: Vec::new(),
                engine_ms: None,
                shared_records: Some(Arc::clone(&hit.records)),
            });
        }
        let principal_key = self.principal_key(principal);
        let keys: Vec<Key> = checks
            .iter()
            .map(|c| Self::key(&principal_key, c))
            .collect();
        let mut slots: Vec<Option<Verdict>> = Vec::with_capacity(asked);
        let mut misses = Vec::new();
        for (check, key) in checks.into_iter().zip(&keys) {
            match cache.get(key) {
                Some(Entry::Verdict(hit)) => slots.push(Some(hit.answer(check))),
                _ => {
                    slots.push(None);
                    misses.push(check);
                }
            }
        }
        self.metrics
            .cache_hits
            .inc_by((asked - misses.len()) as u64);
        self.metrics.cache_misses.inc_by(misses.len() as u64);
        let mut call_ids = Vec::new();
        if !misses.is_empty() {
            let asking = if misses.len() == asked {
                whole
            } else {
                Question::new(&self.hasher, &self.namespace, principal, &misses)
            };
            let answer = self.ask(asking, principal, misses, request_id).await?;
            call_ids = answer.call_ids;
            let mut fresh = answer.verdicts.into_iter();
            for (slot, key) in slots.iter_mut().zip(keys) {
                if slot.is_none() {
                    let verdict = fresh.next().ok_or_else(|| {
                        DecideError::Protocol("fewer verdicts than questions".into())
                    })?;
                    cache.insert(key, Entry::Verdict(Cached::of(&verdict)));
                    *slot = Some(verdict);
                }
            }
        }
        let verdicts: Vec<Verdict> = slots
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| DecideError::Protocol("missing verdict".into()))?;
        let records = SharedResources::of(&verdicts);
        let entry = RequestEntry {
            verdicts: verdicts.iter().map(Cached::of).collect(),
            records: Arc::clone(&records),
        };
        cache.insert(request_key, Entry::Request(Arc::new(entry)));
        Ok(Decision {
            verdicts,
            call_ids,
            engine_ms: None,
            shared_records: Some(records),
        })
    }

    fn recall(
        &self,
        principal: &SharedPrincipal,
        derivation: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Recall {
        // As in `check`: a token sent to Cerbos may change its answer, so it is never kept.
        let Some(cache) = self.cache.as_ref().filter(|_| principal.token.is_none()) else {
            return Recall::Unknown(None);
        };
        let Some(derivation) = derivation() else {
            return Recall::Unknown(None);
        };
        let question = Question::derived(&self.hasher, &self.namespace, principal, &derivation);
        match cache.get(&Key::Derived(Arc::clone(&question))) {
            Some(Entry::Remembered(hit)) => {
                self.metrics.cache_hits.inc_by(hit.verdicts.len() as u64);
                Recall::Answered(Decision {
                    verdicts: hit.verdicts.clone(),
                    call_ids: Vec::new(),
                    engine_ms: None,
                    shared_records: Some(Arc::clone(&hit.records)),
                })
            }
            _ => Recall::Unknown(Some(RecallKey(question))),
        }
    }

    fn remember(&self, key: RecallKey, decision: &Decision) {
        // Decisions this cache made carry their records; any other is not kept.
        let (Some(cache), Some(records)) = (&self.cache, &decision.shared_records) else {
            return;
        };
        let remembered = Remembered {
            verdicts: decision.verdicts.clone(),
            records: Arc::clone(records),
        };
        cache.insert(Key::Derived(key.0), Entry::Remembered(Arc::new(remembered)));
    }

    fn ready(&self) -> impl std::future::Future<Output = bool> + Send {
        self.inner.ready()
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
