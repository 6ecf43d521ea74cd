//! The key of a whole question to Cerbos: everything one `CheckResources` call asks, as bytes
//! that two requests share only when they ask exactly the same thing. It keys the request
//! entries of the verdict cache ([`super::cache`]) and the calls shared in flight
//! ([`super::in_flight`]).
//!
//! The bytes are a prefix-free binary form of the question: each string carries its length,
//! each JSON value a tag for its kind (integers and floats apart, as their JSON spellings
//! are), each list and object its size. The principal is the exception: its JSON, written once
//! per remembered token by the identity stage, is copied, not encoded again. So distinct
//! questions give distinct bytes, without the escaping a JSON serialisation spends most of its
//! time on (the key is built for every request: it was ~6 % of a cached 20-tool check as JSON).
//! The bytes are hashed once, with the engine's random keys; a lookup compares the hash, then
//! every byte.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use prost::encoding::encode_varint;
use serde_json::{Map, Value};

use super::ResourceCheck;
use crate::identity::SharedPrincipal;

pub struct Question {
    bytes: Box<[u8]>,
    hash: u64,
}

/// What questions and keys are hashed with: foldhash, seeded at random per engine, not SipHash.
/// Hashing a question's few hundred bytes with SipHash was ~1 % of every check; a lookup
/// compares every byte after the hash, so a collision costs a comparison, never a wrong answer,
/// and the random seed keeps a client choosing its claims from aiming for collisions.
pub type KeyHasher = foldhash::quality::RandomState;

impl Question {
    /// Policy version and scope (`namespace`), the principal's id, roles and attributes, and
    /// each check's kind, id, action and attributes, in order. A bearer token sent as auxData
    /// is not part of it: requests carrying one are neither cached nor shared.
    pub fn new(
        hasher: &KeyHasher,
        namespace: &str,
        principal: &SharedPrincipal,
        checks: &[ResourceCheck],
    ) -> Arc<Question> {
        let mut out = Vec::with_capacity(256 + 128 * checks.len());
        asked_by(&mut out, namespace, principal);
        length(&mut out, checks.len());
        for check in checks {
            string(&mut out, &check.kind);
            string(&mut out, &check.id);
            string(&mut out, &check.action);
            object(&mut out, &check.attr);
        }
        Self::hashed(hasher, out)
    }

    /// The question of a request whose checks all follow from `derivation` (prefix-free bytes
    /// of every input they are built from, [`super::vocabulary::Vocabulary::derivation`]): the
    /// same namespace and principal as [`Question::new`], then those bytes. Two requests with
    /// the same derivation ask Cerbos exactly the same checks.
    pub fn derived(
        hasher: &KeyHasher,
        namespace: &str,
        principal: &SharedPrincipal,
        derivation: &[u8],
    ) -> Arc<Question> {
        let mut out = Vec::with_capacity(256 + derivation.len());
        asked_by(&mut out, namespace, principal);
        out.extend_from_slice(derivation);
        Self::hashed(hasher, out)
    }

    fn hashed(hasher: &KeyHasher, bytes: Vec<u8>) -> Arc<Question> {
        let hash = hasher.hash_one(&bytes);
        Arc::new(Question {
            bytes: bytes.into_boxed_slice(),
            hash,
        })
    }
}

/// Who asks, in which policy namespace: every question starts with it. The principal part is
/// the principal's JSON (`{"id", "roles", "attr"}`), written once per remembered token by the
/// identity stage: a JSON object is prefix-free (it ends at its matching `}`) and distinct
/// principals serialise to distinct JSON, so the bytes after it cannot blur into it.
fn asked_by(out: &mut Vec<u8>, namespace: &str, principal: &SharedPrincipal) {
    string(out, namespace);
    out.extend_from_slice(principal.json().get().as_bytes());
}

#[cfg(test)]
impl Question {
    /// A stand-in question for tests of what is keyed on questions.
    pub fn of_text(text: &str) -> Arc<Question> {
        let mut hasher = std::hash::DefaultHasher::new();
        text.hash(&mut hasher);
        Arc::new(Question {
            bytes: text.as_bytes().into(),
            hash: hasher.finish(),
        })
    }
}

impl PartialEq for Question {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.bytes == other.bytes
    }
}

impl Eq for Question {}

impl Hash for Question {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A count (of items, of bytes), as a varint.
pub fn length(out: &mut Vec<u8>, n: usize) {
    encode_varint(n as u64, out);
}

/// A string, after its length.
pub fn string(out: &mut Vec<u8>, s: &str) {
    length(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    length(out, map.len());
    for (name, value) in map {
        string(out, name);
        self::value(out, value);
    }
}

fn value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(0),
        Value::Bool(b) => out.push(1 + u8::from(*b)),
        Value::Number(n) => {
            // Exactly one of these holds for a JSON number: a non-negative integer, a negative
            // one, or a float.
            if let Some(u) = n.as_u64() {
                out.push(3);
                out.extend_from_slice(&u.to_le_bytes());
            } else if let Some(i) = n.as_i64() {
                out.push(4);
                out.extend_from_slice(&i.to_le_bytes());
            } else {
                out.push(5);
                let f = n.as_f64().unwrap_or(f64::NAN);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
        }
        Value::String(s) => {
            out.push(6);
            string(out, s);
        }
        Value::Array(items) => {
            out.push(7);
            length(out, items.len());
            for item in items {
                self::value(out, item);
            }
        }
        Value::Object(map) => {
            out.push(8);
            object(out, map);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::decide::Subject;
    use crate::decide::test_support::{check, principal};
    use crate::identity::Principal;

    #[test]
    fn questions_are_equal_only_when_everything_asked_is() {
        let hasher = KeyHasher::default();
        let q = |p: &Principal, checks: &[ResourceCheck]| {
            let shared = SharedPrincipal::new(p.clone());
            Question::new(&hasher, "default/", &shared, checks)
        };
        let p = principal(json!({"team": "a", "n": 1}));
        let base = [check("a", json!({"x": [1, "b"]})), check("b", json!({}))];
        assert!(*q(&p, &base) == *q(&p.clone(), &base.clone()));
        // The subject is what a check is about in this request, not part of the question.
        let mut other_subject = base.clone();
        other_subject[0].subject = Subject::Model("a".into());
        assert!(*q(&p, &base) == *q(&p, &other_subject));
        let variants: Vec<(Principal, Vec<ResourceCheck>)> = vec![
            (principal(json!({"team": "a", "n": 1.0})), base.to_vec()),
            (principal(json!({"team": "a", "n": -1})), base.to_vec()),
            (principal(json!({"team": "a", "n": "1"})), base.to_vec()),
            (principal(json!({"n": 1, "team": "a"})), base.to_vec()),
            (
                principal(json!({"team": "a", "n": 1, "x": null})),
                base.to_vec(),
            ),
            (principal(json!({"team": "ab", "n": 1})), base.to_vec()),
            (principal(json!({"tea": "ma", "n": 1})), base.to_vec()),
            (
                Principal {
                    roles: vec!["support".into(), String::new()],
                    ..p.clone()
                },
                base.to_vec(),
            ),
            (
                Principal {
                    id: "alicesupport".into(),
                    roles: vec![],
                    ..p.clone()
                },
                base.to_vec(),
            ),
            (p.clone(), vec![base[1].clone(), base[0].clone()]),
            (p.clone(), vec![base[0].clone()]),
            (
                p.clone(),
                vec![check("a", json!({"x": [1, "b", false]})), base[1].clone()],
            ),
            (
                p.clone(),
                vec![check("a", json!({"x": [[1], "b"]})), base[1].clone()],
            ),
            (
                p.clone(),
                vec![check("a", json!({"x": {"1": "b"}})), base[1].clone()],
            ),
            (
                p.clone(),
                vec![
                    ResourceCheck {
                        action: "invoke".into(),
                        ..base[0].clone()
                    },
                    base[1].clone(),
                ],
            ),
            (
                p.clone(),
                vec![
                    ResourceCheck {
                        kind: "llm_model".into(),
                        ..base[0].clone()
                    },
                    base[1].clone(),
                ],
            ),
        ];
        let mut seen = vec![q(&p, &base)];
        for (principal, checks) in &variants {
            let question = q(principal, checks);
            assert!(
                seen.iter().all(|s| **s != *question),
                "{principal:?} {checks:?} equals an earlier question"
            );
            seen.push(question);
        }
        let elsewhere = Question::new(&hasher, "v2/", &SharedPrincipal::new(p.clone()), &base);
        assert!(seen.iter().all(|s| **s != *elsewhere));
    }
}
