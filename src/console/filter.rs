//! The console's filters, read from the query string so a filtered view is a shareable URL.
//! Unknown parameters are refused (a misspelt filter would otherwise show everything).

use serde::Deserialize;

use super::ring::{Entry, unix_millis};
use crate::audit::DecisionRecord;

/// `GET /api/v1/decisions` (and `decisions/stream`, `overview`) parameters. Empty values
/// count as absent, so a form can send every field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Part of the principal id (case-insensitive).
    pub principal: Option<String>,
    /// `allow`, `deny`, or `stripped` (allowed with denied tools removed or passed).
    pub effect: Option<String>,
    /// A resource kind judged (`llm_model`, `mcp_server`, `agent_authz_console`, ...).
    pub kind: Option<String>,
    /// The model an LLM call invoked (or that a declared tool was judged with).
    pub model: Option<String>,
    /// A declared LLM tool (allowed, denied or hidden) or an MCP tool.
    pub tool: Option<String>,
    /// An MCP tool a `tools/call` named.
    pub mcp_tool: Option<String>,
    /// The route's path prefix.
    pub route: Option<String>,
    /// `request`, `strip` (the ext_proc leg confirming a strip) or `response`.
    pub phase: Option<String>,
    /// RFC 3339 times: records at or after `since`, before `until`.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Part of the reason (case-insensitive).
    pub q: Option<String>,
    /// The list's page: records older than this cursor (a `next_cursor`).
    pub cursor: Option<String>,
    /// Records per page (default 50, at most 500).
    pub limit: Option<usize>,
}

/// A filter checked and ready to apply.
#[derive(Debug, Default)]
pub struct Matcher {
    principal: Option<String>,
    effect: Option<String>,
    kind: Option<String>,
    model: Option<String>,
    tool: Option<String>,
    mcp_tool: Option<String>,
    route: Option<String>,
    phase: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    q: Option<String>,
}

/// A parameter that does not parse, named for the answer.
#[derive(Debug, PartialEq)]
pub struct BadFilter(pub String);

fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn time(name: &str, value: &Option<String>) -> Result<Option<u64>, BadFilter> {
    match given(value) {
        None => Ok(None),
        Some(v) if humantime::parse_rfc3339_weak(&v).is_ok() => Ok(Some(unix_millis(&v))),
        Some(v) => Err(BadFilter(format!(
            "{name}: {v:?} is not an RFC 3339 time (2026-01-31T12:00:00Z)"
        ))),
    }
}

impl Filter {
    pub fn matcher(&self) -> Result<Matcher, BadFilter> {
        let effect = given(&self.effect);
        if let Some(e) = &effect
            && !matches!(e.as_str(), "allow" | "deny" | "stripped")
        {
            return Err(BadFilter(format!(
                "effect: {e:?} is not allow, deny or stripped"
            )));
        }
        let phase = given(&self.phase);
        if let Some(p) = &phase
            && !matches!(p.as_str(), "request" | "strip" | "response")
        {
            return Err(BadFilter(format!(
                "phase: {p:?} is not request, strip or response"
            )));
        }
        Ok(Matcher {
            principal: given(&self.principal).map(|p| p.to_lowercase()),
            effect,
            kind: given(&self.kind),
            model: given(&self.model),
            tool: given(&self.tool),
            mcp_tool: given(&self.mcp_tool),
            route: given(&self.route),
            phase,
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
            q: given(&self.q).map(|q| q.to_lowercase()),
        })
    }

    /// The page asked for: records with a smaller sequence number than the cursor.
    pub fn before(&self) -> Result<Option<u64>, BadFilter> {
        match given(&self.cursor) {
            None => Ok(None),
            Some(c) => c
                .parse()
                .map(Some)
                .map_err(|_| BadFilter(format!("cursor: {c:?} is not a cursor from this API"))),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 500)
    }
}

impl Matcher {
    pub fn matches(&self, entry: &Entry) -> bool {
        let r = &entry.record;
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        eq(&self.phase, Some(r.phase))
            && eq(&self.route, r.route.as_deref())
            && self.effect.as_deref().is_none_or(|e| effect_is(r, e))
            && self.principal.as_deref().is_none_or(|p| {
                r.principal
                    .as_ref()
                    .is_some_and(|pr| pr.id.to_lowercase().contains(p))
            })
            && self
                .q
                .as_deref()
                .is_none_or(|q| r.reason.to_lowercase().contains(q))
            && self.since_ms.is_none_or(|s| entry.at_ms >= s)
            && self.until_ms.is_none_or(|u| entry.at_ms < u)
            && self
                .kind
                .as_deref()
                .is_none_or(|k| r.resources.iter().any(|x| x.kind == k))
            && self.model.as_deref().is_none_or(|m| {
                r.model.as_deref() == Some(m)
                    || r.resources.iter().any(|x| attr(x, "model") == Some(m))
            })
            && self.tool.as_deref().is_none_or(|t| {
                [&r.allowed_tools[..], &r.denied_tools, &r.hidden]
                    .iter()
                    .any(|list| list.iter().any(|x| x == t))
                    || r.resources.iter().any(|x| attr(x, "tool_name") == Some(t))
            })
            && self.mcp_tool.as_deref().is_none_or(|t| {
                r.resources.iter().any(|x| {
                    attr(x, "method") == Some("tools/call") && attr(x, "tool_name") == Some(t)
                })
            })
    }
}

fn attr<'a>(resource: &'a crate::audit::ResourceRecord, key: &str) -> Option<&'a str> {
    resource.attr.get(key).and_then(|v| v.as_str())
}

/// `stripped`: allowed, with declared tools the policy denied.
fn effect_is(record: &DecisionRecord, effect: &str) -> bool {
    match effect {
        "stripped" => record.effect == "allow" && !record.denied_tools.is_empty(),
        other => record.effect == other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::audit::tests::record;
    use crate::audit::{PrincipalRecord, ResourceRecord};
    use crate::decide::Effect;

    fn entry(record: DecisionRecord) -> Entry {
        Entry {
            seq: 1,
            at_ms: unix_millis(&record.time),
            record,
        }
    }

    fn parse(q: &str) -> Result<Filter, String> {
        let uri: axum::http::Uri = format!("/?{q}").parse().unwrap();
        axum::extract::Query::<Filter>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|e| e.body_text())
    }

    fn query(q: &str) -> Filter {
        parse(q).unwrap()
    }

    fn refund_denial() -> DecisionRecord {
        let mut r = record(1);
        r.time = "2026-01-31T12:00:00.000Z".into();
        r.effect = "deny";
        r.reason = "policy denied: refunds above 100 EUR need a supervisor".into();
        r.route = Some("/mcp/support".into());
        r.principal = Some(PrincipalRecord::from(crate::identity::Principal {
            id: "Alice".into(),
            roles: vec!["support".into()],
            attr: Default::default(),
            token: None,
        }));
        r.resources.push(ResourceRecord {
            kind: "mcp_server".into(),
            id: "refund".into(),
            action: "tools/call:refund".into(),
            effect: Effect::Deny,
            policy: None,
            reason_rule: None,
            reason: "over limit".into(),
            derived_roles: vec![],
            attr: json!({"server": "support", "tool_name": "refund", "method": "tools/call",
                         "arguments": {"amount_cents": 50000}})
            .as_object()
            .cloned()
            .unwrap(),
        });
        r
    }

    fn stripped_chat() -> DecisionRecord {
        let mut r = record(2);
        r.time = "2026-01-31T12:05:00.000Z".into();
        r.model = Some("gpt-4o".into());
        r.allowed_tools = vec!["search".into()].into();
        r.denied_tools = vec!["shell".into()];
        r
    }

    #[test]
    fn each_filter_narrows_to_the_records_it_names() {
        let records = [entry(refund_denial()), entry(stripped_chat())];
        let hits = |q: &str| -> Vec<String> {
            let m = query(q).matcher().unwrap();
            records
                .iter()
                .filter(|e| m.matches(e))
                .map(|e| e.record.decision_id.clone())
                .collect()
        };
        assert_eq!(hits(""), ["d-1", "d-2"]);
        assert_eq!(hits("principal=alice"), ["d-1"]);
        assert_eq!(hits("effect=deny"), ["d-1"]);
        assert_eq!(hits("effect=stripped"), ["d-2"]);
        assert_eq!(hits("effect=allow"), ["d-2"]);
        assert_eq!(hits("kind=mcp_server"), ["d-1"]);
        assert_eq!(hits("model=gpt-4o"), ["d-2"]);
        assert_eq!(hits("tool=shell"), ["d-2"]);
        assert_eq!(hits("tool=refund"), ["d-1"]);
        assert_eq!(hits("mcp_tool=refund"), ["d-1"]);
        assert_eq!(hits("mcp_tool=shell"), Vec::<String>::new());
        assert_eq!(hits("route=%2Fmcp%2Fsupport"), ["d-1"]);
        assert_eq!(hits("phase=response"), Vec::<String>::new());
        assert_eq!(hits("q=SUPERVISOR"), ["d-1"]);
        assert_eq!(hits("since=2026-01-31T12:01:00Z"), ["d-2"]);
        assert_eq!(hits("until=2026-01-31T12:01:00Z"), ["d-1"]);
        assert_eq!(hits("principal=&effect=&q="), ["d-1", "d-2"]);
    }

    #[test]
    fn bad_values_and_unknown_filters_are_refused() {
        assert!(parse("pricipal=alice").unwrap_err().contains("pricipal"));
        assert!(query("effect=maybe").matcher().is_err());
        assert!(query("phase=later").matcher().is_err());
        assert!(query("since=yesterday").matcher().is_err());
        assert!(query("cursor=abc").before().is_err());
        assert_eq!(query("cursor=17").before(), Ok(Some(17)));
        assert_eq!(query("limit=100000").limit(), 500);
        assert_eq!(query("").limit(), 50);
    }
}
