//! The answer Envoy receives for a request's decision: for an allowed request the headers it
//! adds and removes, the rule outputs it forwards and the handoff to the ext_proc leg; for
//! every decision the dynamic metadata Envoy's access log and later filters read.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{
    CheckInput, DECISION_ID_HEADER, DENIED_TOOLS_HEADER, MCP_SESSION_HEADER, PRINCIPAL_HEADER,
    Pipeline, STRIP_PENDING_HEADER, Trace,
};
use crate::config::{DeniedTools, ModelToolCalls};
use crate::decide::{Decision, PolicyEngine};
use crate::extract::{self, AgentRequest};
use crate::handoff::{self, Handoff, ToolsListHandoff};
use crate::respond::Outcome;

impl<E: PolicyEngine> Pipeline<E> {
    /// The answer to an allowed request, or to a policy denial dry-run lets through.
    pub(super) fn allow(&self, input: &CheckInput, trace: &Trace, reason: &str) -> Outcome {
        let mut headers = vec![(DECISION_ID_HEADER.to_owned(), trace.decision_id.clone())];
        if let Some(p) = &trace.principal {
            headers.push((PRINCIPAL_HEADER.to_owned(), p.id.clone()));
        }
        if let Some(session) = &trace.session {
            headers.push((MCP_SESSION_HEADER.to_owned(), session.clone()));
        }
        if self.output_headers {
            headers.extend(output_headers(&trace.decision));
        }
        let mut remove_headers: Vec<String> = input
            .headers
            .keys()
            .filter(|name| {
                self.protected_prefixes
                    .iter()
                    .any(|p| name.starts_with(p.as_str()))
                    && !headers.iter().any(|(set, _)| set == *name)
            })
            .cloned()
            .collect();
        let mut response_headers = Vec::new();
        if self.denied_tools_header && !trace.denied_tools.is_empty() {
            response_headers.push((DENIED_TOOLS_HEADER.to_owned(), trace.denied_tools.join(",")));
        }
        let mut metadata = metadata(trace, "allow", reason);
        if let Some(handoff) = self.handoff(input, trace) {
            if !handoff.strip_tools.is_empty() {
                headers.push((STRIP_PENDING_HEADER.to_owned(), trace.decision_id.clone()));
                remove_headers.retain(|name| name != STRIP_PENDING_HEADER);
            }
            // An answer the ext_proc leg filters must arrive readable: ask the upstream for it
            // uncompressed (the leg refuses any encoding that is left).
            if handoff.filters_answer() && input.headers.contains_key("accept-encoding") {
                remove_headers.push("accept-encoding".to_owned());
            }
            metadata.insert(handoff::METADATA_KEY.into(), handoff.to_value());
        }
        Outcome::Allow {
            headers,
            remove_headers,
            response_headers,
            metadata,
        }
    }

    /// What the ext_proc leg needs to apply this decision without asking Cerbos again.
    fn handoff<'t>(&self, input: &CheckInput, trace: &'t Trace) -> Option<Handoff<&'t RawValue>> {
        let principal = trace.principal.as_ref()?;
        let strip_tools = if self.denied_tools == DeniedTools::Strip {
            trace.denied_tools.clone()
        } else {
            Vec::new()
        };
        // Answers that may carry a tools/list result: to a request or batch holding one, and
        // every GET stream: a resumed one (Last-Event-ID) may replay an earlier answer; one
        // opened without a session id may be the 2024-11-05 HTTP+SSE transport's (which
        // answers every request there), so it is filtered throughout; one of a Streamable HTTP
        // session is held until its first event tells its transport (see the leg).
        let tools_list = match (&trace.request, &trace.route) {
            (Some(AgentRequest::Mcp(mcp)), Some(route)) => {
                let get = mcp.messages.iter().any(|m| m.method == "GET");
                let resumed = get && input.headers.contains_key("last-event-id");
                (get || mcp.messages.iter().any(|m| m.method == "tools/list")).then(|| {
                    ToolsListHandoff {
                        request_ids: extract::mcp::tools_list_ids(&input.body),
                        server: route.mcp_server.clone().unwrap_or_default(),
                        kind: self.vocabulary.mcp_kind(route),
                        probe_transport: get
                            && !resumed
                            && input.headers.contains_key(MCP_SESSION_HEADER),
                    }
                })
            }
            _ => None,
        };
        Some(Handoff {
            decision_id: trace.decision_id.clone(),
            request_id: trace.request_id.clone(),
            format: trace.format,
            principal: principal.json(),
            strip_tools,
            tools_list,
            models_list: match (&trace.request, &trace.route) {
                (Some(AgentRequest::ModelList), Some(route)) => Some(route.label().to_owned()),
                _ => None,
            },
            judge_tool_calls: match (&trace.request, &trace.route, trace.format) {
                (Some(AgentRequest::Llm(llm)), Some(route), Some(format))
                    if route.model_tool_calls.unwrap_or(self.model_tool_calls)
                        == ModelToolCalls::Judge
                        && format.answers_with_tool_calls() =>
                {
                    Some(llm.model.clone())
                }
                _ => None,
            },
        })
    }
}

/// `x-authz-*` entries of the outputs of allowing rules, as upstream headers. Values that are
/// not strings are sent as JSON; a value with control characters is dropped (Envoy would
/// refuse the mutation).
fn output_headers(decision: &Decision) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for verdict in decision.verdicts.iter().filter(|v| v.effect.allows()) {
        for (_, output) in &verdict.outputs {
            let Value::Object(fields) = output else {
                continue;
            };
            for (key, value) in fields {
                let key = key.to_ascii_lowercase();
                if !key.starts_with("x-authz-")
                    || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    continue;
                }
                let value = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if !value.chars().any(char::is_control) && !headers.iter().any(|(k, _)| *k == key) {
                    headers.push((key, value));
                }
            }
        }
    }
    headers
}

/// Dynamic metadata for Envoy's access log (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:...)%`).
pub(super) fn metadata(trace: &Trace, effect: &str, reason: &str) -> Map<String, Value> {
    // Room for every entry below and the handoff, so the map is allocated once.
    let mut m = Map::with_capacity(6);
    m.insert("decision_id".into(), trace.decision_id.clone().into());
    m.insert("effect".into(), effect.into());
    m.insert("reason".into(), reason.into());
    if let Some(p) = &trace.principal {
        m.insert("principal".into(), p.id.clone().into());
    }
    if !trace.denied_tools.is_empty() {
        m.insert("denied_tools".into(), trace.denied_tools.join(",").into());
    }
    m
}
