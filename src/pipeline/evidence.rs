//! The evidence a request's decision leaves: its decision record (who asked for what, the
//! resources and arguments judged, the effect, the policies, the reason) and the check and
//! decision counters it adds to.

use prometheus_client::metrics::counter::Counter;

use super::{CheckInput, Pipeline, Trace};
use crate::audit::{
    AllowedTools, DecisionRecord, PrincipalRecord, ResourceRecord, Resources, now_rfc3339,
};
use crate::config::{DeniedTools, Format};
use crate::decide::PolicyEngine;
use crate::extract::{self, AgentRequest};
use crate::metrics::{CheckLabels, DecisionLabels};

impl<E: PolicyEngine> Pipeline<E> {
    /// The decision counters `resources` add to, with how many each: one per distinct (kind,
    /// action, effect), so a 20-tool request is usually two of them, not 21. Actions are
    /// labelled from a bounded set (a tool's name is request text: one series per name would
    /// grow without end).
    fn decision_counters(&self, resources: &[ResourceRecord]) -> Vec<(Counter, u64)> {
        let mut tally: Vec<(&str, std::borrow::Cow<'_, str>, &'static str, u64)> = Vec::new();
        for r in resources {
            let action = self.vocabulary.action_label(&r.action);
            match tally
                .iter_mut()
                .find(|t| t.0 == r.kind && t.1 == action && t.2 == r.effect.as_str())
            {
                Some(t) => t.3 += 1,
                None => tally.push((r.kind.as_str(), action, r.effect.as_str(), 1)),
            }
        }
        tally
            .into_iter()
            .map(|(kind, action, effect, n)| {
                let labels = DecisionLabels {
                    kind: kind.to_owned(),
                    action: action.into_owned(),
                    effect,
                };
                (self.metrics.decisions.get_or_create(&labels).clone(), n)
            })
            .collect()
    }

    /// Adds a decision to the check counter and, per resource, to the decision counters.
    pub(super) fn count(&self, record: &DecisionRecord) {
        self.metrics
            .check_duration
            .observe(record.latency_ms / 1000.0);
        self.metrics
            .checks
            .get_or_create(&CheckLabels {
                route: record.route.clone().unwrap_or_default(),
                format: record.format.unwrap_or(""),
                effect: record.effect,
                refusal: record.refusal.unwrap_or(""),
                dry_run: record.dry_run,
            })
            .inc();
        // A remembered decision's records are shared: so are the counters they add to.
        match &record.resources {
            Resources::Shared(shared) => {
                for (counter, n) in shared.counters(|list| self.decision_counters(list)) {
                    counter.inc_by(*n);
                }
            }
            Resources::Owned(list) => {
                for (counter, n) in self.decision_counters(list) {
                    counter.inc_by(n);
                }
            }
        }
        if self.denied_tools == DeniedTools::Strip && record.effect == "allow" {
            self.metrics
                .count_removed("strip", record.denied_tools.len());
        }
    }
}

/// The decision record; consumes the trace (nothing reads it after the answer is built).
pub(super) fn record(
    input: &CheckInput,
    trace: Trace,
    status: u16,
    reason: String,
    refusal: Option<&'static str>,
    dry_run: bool,
) -> DecisionRecord {
    let allowed_tools = AllowedTools::of(
        &trace.decision.verdicts,
        trace.decision.shared_records.as_ref(),
    );
    let model = match &trace.request {
        Some(AgentRequest::Llm(llm)) => Some(llm.model.clone()),
        _ => None,
    };
    DecisionRecord {
        time: now_rfc3339(),
        phase: "request",
        decision_id: trace.decision_id,
        request_id: trace.request_id,
        trace_id: input.headers.get("traceparent").and_then(|t| trace_id(t)),
        effect: if refusal.is_none() { "allow" } else { "deny" },
        dry_run,
        status,
        reason,
        refusal,
        principal: trace.principal.map(PrincipalRecord::from),
        method: input.method.clone(),
        path: extract::path_without_query(&input.path).to_owned(),
        route: trace.route.map(|r| r.label().to_owned()),
        format: trace.format.map(Format::as_str),
        model,
        resources: Resources::of(trace.decision.verdicts, trace.decision.shared_records),
        allowed_tools,
        denied_tools: trace.denied_tools,
        hidden: Vec::new(),
        cerbos_call_ids: trace.decision.call_ids,
        cerbos_ms: trace.decision.engine_ms,
        latency_ms: trace.started.elapsed().as_secs_f64() * 1000.0,
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32);
    valid.then(|| id.to_ascii_lowercase())
}
