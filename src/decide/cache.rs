//! A bounded, TTL-based cache of Cerbos verdicts, so an agent loop that sends the same model
//! and tools every turn skips the PDP.
//!
//! The key is everything Cerbos sees for one verdict, serialised exactly: principal id, roles
//! and attributes; resource kind, id and attributes; the action; policy version and scope. Any
//! attribute change is a different key, so a cached verdict is only ever reused for an
//! identical question. PDP errors are never cached. A policy change takes effect for cached
//! questions when their entries expire (`cache.ttl`); the cache is off by default.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{DecideError, Decision, Effect, PolicyEngine, ResourceCheck, Verdict};
use crate::identity::Principal;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Cached {
    effect: Effect,
    policy: Option<String>,
    outputs: Vec<(String, Value)>,
    derived_roles: Vec<String>,
}

/// One cache key. Its two halves are two JSON documents, so distinct questions can never
/// produce the same key. The principal's half (namespace, id, roles, attributes: most of the
/// bytes) is serialised and hashed once per request and shared by the entries of all its
/// resources, so a 20-tool request neither hashes nor stores it 21 times.
#[derive(Clone)]
struct Key {
    principal: Arc<PrincipalKey>,
    resource: Box<[u8]>,
}

struct PrincipalKey {
    bytes: Box<[u8]>,
    /// Of `bytes`, with the cache's own random keys (a client choosing its claims cannot aim
    /// for collisions).
    hash: u64,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        let same_principal = Arc::ptr_eq(&self.principal, &other.principal)
            || (self.principal.hash == other.principal.hash
                && self.principal.bytes == other.principal.bytes);
        same_principal && self.resource == other.resource
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.principal.hash);
        self.resource.hash(state);
    }
}

/// An engine with an optional verdict cache in front.
pub struct CachedEngine<E> {
    inner: E,
    cache: Option<moka::sync::Cache<Key, Cached>>,
    /// Policy version and scope: part of every key.
    namespace: String,
    principal_hasher: RandomState,
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
                .time_to_live(ttl)
                .build()
        });
        Self {
            inner,
            cache,
            namespace,
            principal_hasher: RandomState::new(),
            metrics,
        }
    }

    /// The principal's half of every key of one request, serialised and hashed once.
    fn principal_key(&self, principal: &Principal) -> Arc<PrincipalKey> {
        let mut bytes = Vec::with_capacity(256);
        let whole = (
            &self.namespace,
            &principal.id,
            &principal.roles,
            &principal.attr,
        );
        // Serialising strings, lists and maps of JSON values cannot fail.
        let _ = serde_json::to_writer(&mut bytes, &whole);
        let hash = self.principal_hasher.hash_one(&bytes);
        Arc::new(PrincipalKey {
            bytes: bytes.into_boxed_slice(),
            hash,
        })
    }

    /// The key of one check, serialised straight from it without building a JSON tree first:
    /// 21 keys per 20-tool request are on the hot path.
    fn key(principal: &Arc<PrincipalKey>, check: &ResourceCheck) -> Key {
        let mut resource = Vec::with_capacity(128);
        let whole = (&check.kind, &check.id, &check.action, &check.attr);
        let _ = serde_json::to_writer(&mut resource, &whole);
        Key {
            principal: Arc::clone(principal),
            resource: resource.into_boxed_slice(),
        }
    }
}

impl<E: PolicyEngine> PolicyEngine for CachedEngine<E> {
    async fn check(
        &self,
        principal: &Principal,
        checks: Vec<ResourceCheck>,
        request_id: &str,
    ) -> Result<Decision, DecideError> {
        let Some(cache) = &self.cache else {
            return self.inner.check(principal, checks, request_id).await;
        };
        // Tokens travel to Cerbos as auxData and may change its answer: never cache those.
        if principal.token.is_some() {
            return self.inner.check(principal, checks, request_id).await;
        }
        let principal_key = self.principal_key(principal);
        let asked = checks.len();
        let keys: Vec<Key> = checks
            .iter()
            .map(|c| Self::key(&principal_key, c))
            .collect();
        let mut slots: Vec<Option<Verdict>> = Vec::with_capacity(asked);
        let mut misses = Vec::new();
        for (check, key) in checks.into_iter().zip(&keys) {
            match cache.get(key) {
                Some(hit) => slots.push(Some(Verdict {
                    check,
                    effect: hit.effect,
                    policy: hit.policy,
                    outputs: hit.outputs,
                    derived_roles: hit.derived_roles,
                })),
                None => {
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
            let answer = self.inner.check(principal, misses, request_id).await?;
            call_ids = answer.call_ids;
            let mut fresh = answer.verdicts.into_iter();
            for (slot, key) in slots.iter_mut().zip(keys) {
                if slot.is_none() {
                    let verdict = fresh.next().ok_or_else(|| {
                        DecideError::Protocol("fewer verdicts than questions".into())
                    })?;
                    cache.insert(
                        key,
                        Cached {
                            effect: verdict.effect,
                            policy: verdict.policy.clone(),
                            outputs: verdict.outputs.clone(),
                            derived_roles: verdict.derived_roles.clone(),
                        },
                    );
                    *slot = Some(verdict);
                }
            }
        }
        let verdicts = slots
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| DecideError::Protocol("missing verdict".into()))?;
        Ok(Decision {
            verdicts,
            call_ids,
            engine_ms: None,
        })
    }

    fn ready(&self) -> impl std::future::Future<Output = bool> + Send {
        self.inner.ready()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::{Map, json};

    use super::*;
    use crate::decide::Subject;

    /// Allows everything; counts the questions it is asked.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl PolicyEngine for Counting {
        async fn check(
            &self,
            _: &Principal,
            checks: Vec<ResourceCheck>,
            _: &str,
        ) -> Result<Decision, DecideError> {
            self.0.fetch_add(checks.len(), Ordering::SeqCst);
            Ok(Decision::each(checks, Some("p"), |_| Effect::Allow))
        }
    }

    fn principal(attr: Value) -> Principal {
        Principal {
            id: "alice".into(),
            roles: vec!["support".into()],
            attr: attr.as_object().cloned().unwrap_or_default(),
            token: None,
        }
    }

    fn check(id: &str, attr: Value) -> ResourceCheck {
        ResourceCheck {
            kind: "llm_tool".into(),
            id: id.into(),
            action: "expose".into(),
            attr: attr.as_object().cloned().unwrap_or_else(Map::new),
            subject: Subject::Tool(id.into()),
        }
    }

    fn engine(ttl: Duration) -> CachedEngine<Counting> {
        CachedEngine::new(
            Counting::default(),
            ttl,
            100,
            "default/".into(),
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn repeated_questions_skip_the_pdp_and_keep_their_order() {
        let e = engine(Duration::from_secs(60));
        let p = principal(json!({"team": "a"}));
        let first = e
            .check(&p, vec![check("a", json!({})), check("b", json!({}))], "r")
            .await
            .unwrap();
        assert_eq!(e.inner.0.load(Ordering::SeqCst), 2);
        let second = e
            .check(
                &p,
                vec![
                    check("c", json!({})),
                    check("b", json!({})),
                    check("a", json!({})),
                ],
                "r",
            )
            .await
            .unwrap();
        assert_eq!(e.inner.0.load(Ordering::SeqCst), 3, "only c was asked");
        let ids: Vec<_> = second
            .verdicts
            .iter()
            .map(|v| v.check.id.as_str())
            .collect();
        assert_eq!(ids, ["c", "b", "a"]);
        assert_eq!(first.verdicts[0].policy.as_deref(), Some("p"));
        let text = e.metrics.encode();
        assert!(
            text.contains("agent_authz_cache_hits_total 2")
                && text.contains("agent_authz_cache_misses_total 3"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn any_attribute_change_misses() {
        let e = engine(Duration::from_secs(60));
        e.check(
            &principal(json!({"limit": 1})),
            vec![check("a", json!({"model": "m"}))],
            "r",
        )
        .await
        .unwrap();
        for (p, c) in [
            (
                principal(json!({"limit": 2})),
                check("a", json!({"model": "m"})),
            ),
            (
                principal(json!({"limit": 1})),
                check("a", json!({"model": "n"})),
            ),
            (
                principal(json!({"limit": 1, "extra": true})),
                check("a", json!({"model": "m"})),
            ),
            (
                Principal {
                    roles: vec!["admin".into()],
                    ..principal(json!({"limit": 1}))
                },
                check("a", json!({"model": "m"})),
            ),
            (
                Principal {
                    id: "bob".into(),
                    ..principal(json!({"limit": 1}))
                },
                check("a", json!({"model": "m"})),
            ),
            (
                principal(json!({"limit": 1})),
                ResourceCheck {
                    action: "invoke".into(),
                    ..check("a", json!({"model": "m"}))
                },
            ),
            (
                principal(json!({"limit": 1})),
                ResourceCheck {
                    kind: "llm_model".into(),
                    ..check("a", json!({"model": "m"}))
                },
            ),
        ] {
            let before = e.inner.0.load(Ordering::SeqCst);
            e.check(&p, vec![c], "r").await.unwrap();
            assert_eq!(e.inner.0.load(Ordering::SeqCst), before + 1);
        }
    }

    #[tokio::test]
    async fn entries_expire_and_zero_ttl_disables() {
        let e = engine(Duration::from_millis(50));
        let p = principal(json!({}));
        e.check(&p, vec![check("a", json!({}))], "r").await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        e.check(&p, vec![check("a", json!({}))], "r").await.unwrap();
        assert_eq!(e.inner.0.load(Ordering::SeqCst), 2);
        let off = engine(Duration::ZERO);
        off.check(&p, vec![check("a", json!({}))], "r")
            .await
            .unwrap();
        off.check(&p, vec![check("a", json!({}))], "r")
            .await
            .unwrap();
        assert_eq!(off.inner.0.load(Ordering::SeqCst), 2);
    }
}
