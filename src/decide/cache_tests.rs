//! The verdict cache and request entries, against a fake engine counting its questions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::*;
use crate::decide::Subject;
use crate::decide::test_support::{check, principal};
use crate::identity::{Principal, SharedPrincipal};

/// `p` as the identity stage shares it.
fn shared(p: &Principal) -> Arc<SharedPrincipal> {
    SharedPrincipal::new(p.clone())
}

/// Allows everything; counts the questions it is asked.
#[derive(Default)]
struct Counting(AtomicUsize);

impl PolicyEngine for Counting {
    async fn check(
        &self,
        _: &Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        _: &str,
    ) -> Result<Decision, DecideError> {
        self.0.fetch_add(checks.len(), Ordering::SeqCst);
        Ok(Decision::each(checks, Some("p"), |_| Effect::Allow))
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
        .check(
            &shared(&p),
            vec![check("a", json!({})), check("b", json!({}))],
            "r",
        )
        .await
        .unwrap();
    assert_eq!(e.inner.0.load(Ordering::SeqCst), 2);
    let second = e
        .check(
            &shared(&p),
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
        &shared(&principal(json!({"limit": 1}))),
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
        e.check(&shared(&p), vec![c], "r").await.unwrap();
        assert_eq!(e.inner.0.load(Ordering::SeqCst), before + 1);
    }
}

#[tokio::test]
async fn entries_expire_and_zero_ttl_disables() {
    let e = engine(Duration::from_millis(50));
    let p = principal(json!({}));
    e.check(&shared(&p), vec![check("a", json!({}))], "r")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    e.check(&shared(&p), vec![check("a", json!({}))], "r")
        .await
        .unwrap();
    assert_eq!(e.inner.0.load(Ordering::SeqCst), 2);
    let off = engine(Duration::ZERO);
    off.check(&shared(&p), vec![check("a", json!({}))], "r")
        .await
        .unwrap();
    off.check(&shared(&p), vec![check("a", json!({}))], "r")
        .await
        .unwrap();
    assert_eq!(off.inner.0.load(Ordering::SeqCst), 2);
}

fn model(name: &str) -> ResourceCheck {
    ResourceCheck {
        kind: "llm_model".into(),
        id: name.into(),
        action: "invoke".into(),
        attr: json!({"model": name}).as_object().cloned().unwrap(),
        subject: Subject::Model(name.into()),
    }
}

/// A model and two tools, as an agent loop sends every turn.
fn turn() -> Vec<ResourceCheck> {
    vec![
        model("m"),
        check("a", json!({"tool_name": "a"})),
        check("b", json!({"tool_name": "b"})),
    ]
}

fn asked(e: &CachedEngine<Counting>) -> usize {
    e.inner.0.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_repeated_request_is_answered_by_its_request_entry() {
    let e = engine(Duration::from_secs(60));
    let p = principal(json!({"team": "a"}));
    let first = e.check(&shared(&p), turn(), "r1").await.unwrap();
    assert_eq!(asked(&e), 3);
    let mut again = turn();
    again[2].subject = Subject::Tool("b, as this request names it".into());
    let second = e.check(&shared(&p), again, "r2").await.unwrap();
    assert_eq!(asked(&e), 3, "nothing asked again");
    // The request entry answered (its records are the first answer's), with this request's
    // own checks.
    let (one, two) = (
        first.shared_records.unwrap(),
        second.shared_records.unwrap(),
    );
    assert!(Arc::ptr_eq(&one, &two));
    assert_eq!(
        second.verdicts[2].check.subject,
        Subject::Tool("b, as this request names it".into())
    );
    assert!(second.call_ids.is_empty());
    let ids: Vec<_> = second
        .verdicts
        .iter()
        .map(|v| v.check.id.as_str())
        .collect();
    assert_eq!(ids, ["m", "a", "b"]);
    let text = e.metrics.encode();
    assert!(
        text.contains("agent_authz_cache_hits_total 3")
            && text.contains("agent_authz_cache_misses_total 3"),
        "{text}"
    );
}

#[tokio::test]
async fn any_change_to_the_request_misses_its_entry_and_reuses_the_unchanged_verdicts() {
    let e = engine(Duration::from_secs(60));
    let p = principal(json!({"team": "a"}));
    let first = e
        .check(&shared(&p), turn(), "r")
        .await
        .unwrap()
        .shared_records;
    let changed_tool = {
        let mut t = turn();
        t[2].attr.insert("tool_name".into(), json!("b2"));
        t
    };
    let other_model = {
        let mut t = turn();
        t[0] = model("n");
        t
    };
    let one_more_tool = {
        let mut t = turn();
        t.push(check("c", json!({"tool_name": "c"})));
        t
    };
    let reordered = {
        let mut t = turn();
        t.swap(1, 2);
        t
    };
    let mut seen = vec![first.unwrap()];
    // (principal, checks, questions Cerbos must be asked)
    for (who, checks, new_questions) in [
        (p.clone(), changed_tool, 1),
        (p.clone(), other_model, 1),
        (p.clone(), one_more_tool, 1),
        (p.clone(), reordered, 0),
        (principal(json!({"team": "b"})), turn(), 3),
        (
            Principal {
                roles: vec!["admin".into()],
                ..p.clone()
            },
            turn(),
            3,
        ),
    ] {
        let before = asked(&e);
        let decision = e.check(&shared(&who), checks.clone(), "r").await.unwrap();
        assert_eq!(asked(&e), before + new_questions, "{checks:?}");
        let records = decision.shared_records.unwrap();
        assert!(
            seen.iter().all(|s| !Arc::ptr_eq(s, &records)),
            "answered by another request's entry: {checks:?}"
        );
        // The record describes this request's checks.
        let ids = records_ids(&records);
        let want: Vec<_> = checks.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, want);
        seen.push(records);
    }
}

fn records_ids(records: &Arc<SharedResources>) -> Vec<String> {
    let resources = crate::audit::Resources::Shared(Arc::clone(records));
    resources.iter().map(|r| r.id.clone()).collect()
}

/// Denies tool `b`, counts its calls, answers when told to.
#[derive(Default)]
struct Gated {
    calls: AtomicUsize,
    open: tokio::sync::Notify,
}

impl PolicyEngine for Gated {
    async fn check(
        &self,
        _: &Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        request_id: &str,
    ) -> Result<Decision, DecideError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.open.notified().await;
        let mut decision = Decision::each(checks, Some("p"), |c| {
            if c.id == "b" {
                Effect::Deny
            } else {
                Effect::Allow
            }
        });
        decision.call_ids = vec![format!("call for {request_id}")];
        Ok(decision)
    }
}

#[tokio::test]
async fn identical_requests_in_flight_share_one_call_with_the_cache_off() {
    let e = Arc::new(CachedEngine::new(
        Gated::default(),
        Duration::ZERO,
        100,
        "default/".into(),
        Arc::new(Metrics::new()),
    ));
    let p = principal(json!({"team": "a"}));
    let mut requests = Vec::new();
    for n in 0..3 {
        let (e, p) = (Arc::clone(&e), p.clone());
        let mut checks = turn();
        checks[2].subject = Subject::Tool(format!("b of request {n}"));
        requests.push(tokio::spawn(async move {
            e.check(&shared(&p), checks, &format!("r{n}")).await
        }));
    }
    // Another principal asks the same tools: its own call.
    let other = {
        let e = Arc::clone(&e);
        tokio::spawn(async move {
            e.check(&shared(&principal(json!({"team": "b"}))), turn(), "o")
                .await
        })
    };
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(e.inner.calls.load(Ordering::SeqCst), 2);
    e.inner.open.notify_waiters();
    for (n, request) in requests.into_iter().enumerate() {
        let decision = request.await.unwrap().unwrap();
        assert_eq!(decision.call_ids, ["call for r0"]);
        let effects: Vec<_> = decision.verdicts.iter().map(|v| v.effect).collect();
        assert_eq!(effects, [Effect::Allow, Effect::Allow, Effect::Deny]);
        assert_eq!(
            decision.verdicts[2].check.subject,
            Subject::Tool(format!("b of request {n}")),
            "each request keeps what its checks are about"
        );
    }
    assert_eq!(other.await.unwrap().unwrap().call_ids, ["call for o"]);
}

#[tokio::test]
async fn a_remembered_decision_answers_only_the_same_principal_and_derivation() {
    let e = engine(Duration::from_secs(60));
    let p = principal(json!({"team": "a"}));
    let Recall::Unknown(Some(key)) = e.recall(&shared(&p), || Some(b"chat gpt-4o a b".to_vec()))
    else {
        panic!("nothing is remembered yet");
    };
    let decision = e
        .check(
            &shared(&p),
            vec![check("a", json!({})), check("b", json!({}))],
            "r",
        )
        .await
        .unwrap();
    e.remember(key, &decision);
    let Recall::Answered(recalled) = e.recall(&shared(&p), || Some(b"chat gpt-4o a b".to_vec()))
    else {
        panic!("remembered");
    };
    assert_eq!(recalled.verdicts, decision.verdicts);
    assert_eq!(recalled.shared_records, decision.shared_records);
    assert_eq!(e.inner.0.load(Ordering::SeqCst), 2, "recalled, not asked");
    let other_team = principal(json!({"team": "b"}));
    let with_token = Principal {
        token: Some(crate::identity::BearerToken::for_tests("t")),
        ..p.clone()
    };
    assert!(matches!(
        e.recall(&shared(&p), || Some(b"chat gpt-4o a".to_vec())),
        Recall::Unknown(Some(_))
    ));
    assert!(matches!(
        e.recall(&shared(&other_team), || Some(b"chat gpt-4o a b".to_vec())),
        Recall::Unknown(Some(_))
    ));
    assert!(
        matches!(
            e.recall(&shared(&with_token), || Some(b"chat gpt-4o a b".to_vec())),
            Recall::Unknown(None)
        ),
        "a token sent to Cerbos is never kept"
    );
    let off = engine(Duration::ZERO);
    assert!(matches!(
        off.recall(&shared(&p), || Some(b"chat gpt-4o a b".to_vec())),
        Recall::Unknown(None)
    ));
}

/// Allows everything; keeps the principals it is asked for.
#[derive(Default)]
struct Keeping(std::sync::Mutex<Vec<Arc<SharedPrincipal>>>);

impl PolicyEngine for Keeping {
    async fn check(
        &self,
        principal: &Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        _: &str,
    ) -> Result<Decision, DecideError> {
        self.0.lock().unwrap().push(Arc::clone(principal));
        Ok(Decision::each(checks, Some("p"), |_| Effect::Allow))
    }
}

#[tokio::test]
async fn the_engine_is_asked_with_the_shared_principal_not_a_copy() {
    for ttl in [Duration::from_secs(60), Duration::ZERO] {
        let e = CachedEngine::new(
            Keeping::default(),
            ttl,
            100,
            "default/".into(),
            Arc::new(Metrics::new()),
        );
        let p = shared(&principal(json!({"team": "a"})));
        e.check(&p, vec![check("a", json!({}))], "r").await.unwrap();
        let asked = e.inner.0.lock().unwrap();
        assert_eq!(asked.len(), 1);
        assert!(Arc::ptr_eq(&asked[0], &p), "{ttl:?}");
    }
}
