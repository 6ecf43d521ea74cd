//! Aggregates for the console's overview charts, computed from the retained (filtered)
//! records on request: decisions per minute by effect, check latency and Cerbos failures per
//! minute, Cerbos' own latency, and who and what was refused most.

use std::collections::HashMap;

use serde::Serialize;

use super::ring::Entry;

/// Minutes shown in the per-minute charts, ending now.
const MINUTES: u64 = 30;
/// Names in each top list.
const TOP: usize = 10;

#[derive(Debug, Serialize, Default, Clone, PartialEq)]
pub struct Minute {
    /// Start of the minute, Unix milliseconds.
    pub start_ms: u64,
    pub allow: u64,
    pub deny: u64,
    /// Allowed with declared tools denied (stripped or passed).
    pub stripped: u64,
    /// Requests refused because Cerbos did not answer.
    pub cerbos_errors: u64,
    /// Median and 95th percentile of the time to judge a request, Cerbos included.
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    /// The same for the time spent asking Cerbos (its round trips, or the verdict cache).
    pub cerbos_p50_ms: f64,
    pub cerbos_p95_ms: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Overview {
    pub records: usize,
    pub per_minute: Vec<Minute>,
    pub top_denied_principals: Vec<(String, u64)>,
    /// Tools stripped, passed while denied, hidden from `tools/list`, or refused in a call.
    pub top_denied_tools: Vec<(String, u64)>,
    pub top_denied_models: Vec<(String, u64)>,
}

impl Overview {
    pub fn of<'a>(entries: impl Iterator<Item = &'a Entry>, now_ms: u64) -> Overview {
        let first_minute = (now_ms / 60_000).saturating_sub(MINUTES - 1);
        let mut minutes: Vec<Minute> = (0..MINUTES)
            .map(|i| Minute {
                start_ms: (first_minute + i) * 60_000,
                ..Minute::default()
            })
            .collect();
        let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); MINUTES as usize];
        let mut cerbos: Vec<Vec<f64>> = vec![Vec::new(); MINUTES as usize];
        let (mut principals, mut tools, mut models) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        let mut records = 0;
        for entry in entries {
            records += 1;
            let r = &entry.record;
            let denied = r.effect == "deny";
            if let Some(i) = (entry.at_ms / 60_000)
                .checked_sub(first_minute)
                .filter(|i| *i < MINUTES)
            {
                let m = &mut minutes[i as usize];
                // A decision is its request record; `strip` and `response` records follow it.
                match (r.phase == "request", denied, r.denied_tools.is_empty()) {
                    (false, _, _) => {}
                    (true, true, _) => m.deny += 1,
                    (true, false, true) => m.allow += 1,
                    (true, false, false) => m.stripped += 1,
                }
                if r.refusal == Some("policy_unavailable") {
                    m.cerbos_errors += 1;
                }
                if r.phase == "request" {
                    latencies[i as usize].push(r.latency_ms);
                }
                if let Some(ms) = r.cerbos_ms {
                    cerbos[i as usize].push(ms);
                }
            }
            if denied && let Some(p) = &r.principal {
                *principals.entry(p.id.clone()).or_insert(0) += 1;
            }
            // The `strip` record repeats its request's denied tools: counted once.
            let denied_tools = if r.phase == "strip" {
                &[][..]
            } else {
                &r.denied_tools[..]
            };
            for tool in denied_tools.iter().chain(&r.hidden) {
                *tools.entry(tool.clone()).or_insert(0) += 1;
            }
            for resource in r.resources.iter().filter(|x| !x.effect.allows()) {
                let attr = |k: &str| resource.attr.get(k).and_then(|v| v.as_str());
                if attr("method") == Some("tools/call") && r.phase == "request" {
                    *tools.entry(resource.id.clone()).or_insert(0) += 1;
                } else if r.model.as_deref() == Some(resource.id.as_str())
                    && !resource.attr.contains_key("model")
                {
                    *models.entry(resource.id.clone()).or_insert(0) += 1;
                }
            }
        }
        for ((minute, mut checks), mut asks) in minutes.iter_mut().zip(latencies).zip(cerbos) {
            checks.sort_by(f64::total_cmp);
            asks.sort_by(f64::total_cmp);
            minute.latency_p50_ms = percentile(&checks, 0.50);
            minute.latency_p95_ms = percentile(&checks, 0.95);
            minute.cerbos_p50_ms = percentile(&asks, 0.50);
            minute.cerbos_p95_ms = percentile(&asks, 0.95);
        }
        Overview {
            records,
            per_minute: minutes,
            top_denied_principals: top(principals),
            top_denied_tools: top(tools),
            top_denied_models: top(models),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The most frequent names, most frequent first, ties by name.
fn top(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.truncate(TOP);
    counts
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::audit::tests::record;
    use crate::audit::{PrincipalRecord, ResourceRecord};
    use crate::decide::Effect;

    const NOW: u64 = 1_800_000_000_000;

    fn entry(at_ms: u64, edit: impl FnOnce(&mut crate::audit::DecisionRecord)) -> Entry {
        let mut record = record(0);
        edit(&mut record);
        Entry {
            seq: 1,
            at_ms,
            record,
        }
    }

    fn denial_of(principal: &str, model: &str) -> impl FnOnce(&mut crate::audit::DecisionRecord) {
        move |r| {
            r.effect = "deny";
            r.model = Some(model.into());
            r.principal = Some(PrincipalRecord::from(crate::identity::Principal {
                id: principal.into(),
                roles: vec![],
                attr: Default::default(),
                token: None,
            }));
            r.resources.push(ResourceRecord {
                kind: "llm_model".into(),
                id: model.into(),
                action: "invoke".into(),
                effect: Effect::Deny,
                policy: None,
                reason_rule: None,
                reason: String::new(),
                derived_roles: vec![],
                attr: json!({"route": "/v1", "format": "openai_chat"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            });
        }
    }

    #[test]
    fn counts_each_minute_by_effect_and_names_the_most_refused() {
        let entries = [
            entry(NOW, denial_of("bob", "o1")),
            entry(NOW, denial_of("bob", "o1")),
            entry(NOW - 60_000, denial_of("eve", "gpt-4o")),
            entry(NOW, |r| r.denied_tools = vec!["shell".into()]),
            entry(NOW, |r| {
                r.latency_ms = 7.0;
                r.cerbos_ms = Some(4.0);
            }),
            entry(NOW, |r| {
                r.effect = "deny";
                r.refusal = Some("policy_unavailable");
            }),
            // The ext_proc leg's confirmation of a strip: not a second decision.
            entry(NOW, |r| {
                r.phase = "strip";
                r.denied_tools = vec!["shell".into()];
            }),
            // Outside the charted half hour: still in the top lists.
            entry(NOW - 3_600_000, denial_of("bob", "o1")),
        ];
        let o = Overview::of(entries.iter(), NOW);
        assert_eq!(o.records, 8);
        assert_eq!(o.per_minute.len(), 30);
        let last = o.per_minute.last().unwrap();
        assert_eq!(last.start_ms, NOW / 60_000 * 60_000);
        assert_eq!((last.allow, last.deny, last.stripped), (1, 3, 1));
        assert_eq!(last.cerbos_errors, 1);
        assert_eq!(last.latency_p95_ms, 7.0);
        assert_eq!((last.cerbos_p50_ms, last.cerbos_p95_ms), (4.0, 4.0));
        assert_eq!(o.per_minute[28].deny, 1);
        assert_eq!(
            o.top_denied_principals,
            [("bob".to_owned(), 3), ("eve".to_owned(), 1)]
        );
        assert_eq!(
            o.top_denied_models,
            [("o1".to_owned(), 3), ("gpt-4o".to_owned(), 1)]
        );
        assert_eq!(o.top_denied_tools, [("shell".to_owned(), 1)]);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.95), 95.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
