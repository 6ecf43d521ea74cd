//! Anthropic Messages (`POST /v1/messages`): `model`, custom `tools[].name`, server tools by
//! their fixed name (attribute `type` carries the versioned type, e.g. `web_search_20250305`),
//! MCP toolsets (`mcp_toolset`, judged as their server's tools), the MCP connector's
//! `mcp_servers` (see [`connector_tools`]), and `tool_choice {type: auto|any|tool|none, name}`.
//!
//! Stripping removes denied entries from `tools[]`; an MCP toolset with any denied tool is
//! removed whole (its per-tool `configs` are not narrowed). A `tool_choice` naming a stripped
//! tool becomes `{"type":"auto"}`; with no tool left, `tools` and `tool_choice` go. History
//! (`tool_use` / `tool_result` blocks) is never touched: Anthropic rejects unpaired blocks.

use std::sync::Arc;

use serde_json::Value;

use super::known_tools::KnownTools;
use super::llm::{self, Tools};
use super::{
    AgentRequest, DeclaredTool, ExtractError, HttpRequest, LlmRequest, Reading, RequestFormat,
};
use crate::rewrite::json_edit::{self, EditError, Edits};

/// What extraction reads: tool schemas and descriptions are never judged.
pub const READING: Reading<'static> = Reading {
    members: &["model", "tools", "tool_choice", "stream", "mcp_servers"],
    unread: &["input_schema", "description"],
    // `mcp_toolset` configs are keyed by tool name.
    judges_keys: true,
};

/// Anthropic Messages.
pub struct AnthropicMessages;

impl RequestFormat for AnthropicMessages {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        // The same `tools` as a recent request (an agent's next turn) is taken as read then,
        // as for OpenAI Chat (see `extract/known_tools.rs`).
        let mut known = KnownTools::of("anthropic_messages", "tools");
        let body = &llm::fields_with(request, &READING, &mut known)?;
        let model = llm::model(body)?;
        let declared = llm::declared_tools(&mut known, request, body, declared)?;
        read_declaring(body, model, declared).map(AgentRequest::Llm)
    }

    fn strip_tools(&self, body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        strip(body, denied)
    }
}

/// Reads a Messages body (its members named by [`READING`]) invoking `model`: the body's own
/// `model`, or the one in the path of Bedrock's InvokeModel, whose Anthropic bodies have none.
pub fn read(
    body: &serde_json::Map<String, Value>,
    model: String,
) -> Result<LlmRequest, ExtractError> {
    let mut tools = Tools::default();
    llm::add_declared(&mut tools, body, "tools", declared)?;
    read_declaring(body, model, tools.0.into())
}

/// [`read`], with `tools[]`'s tools already read (from this body, or remembered from the same
/// bytes): the MCP connector's servers and `tool_choice` are read from the body either way.
fn read_declaring(
    body: &serde_json::Map<String, Value>,
    model: String,
    declared: Arc<[DeclaredTool]>,
) -> Result<LlmRequest, ExtractError> {
    let connector = connector_tools(body, &declared)?;
    let tools = if connector.is_empty() {
        declared
    } else {
        let mut tools = Tools(declared.to_vec());
        for tool in connector {
            tools.add(tool);
        }
        tools.0.into()
    };
    let forced_tools = body
        .get("tool_choice")
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("tool"))
        .and_then(|c| c.get("name")?.as_str())
        .map(|n| vec![n.to_owned()])
        .unwrap_or_default();
    Ok(LlmRequest {
        model,
        tools,
        forced_tools,
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// Removes the denied entries of `tools[]` (see the module doc).
pub fn strip(body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
    let root = json_edit::root(body)?;
    let Some(tools) = llm::member(body, root.clone(), "tools")? else {
        return Ok(None);
    };
    let drops =
        |v: &Value| declared(v).is_ok_and(|ts| ts.iter().any(|t| llm::is_denied(denied, &t.key())));
    let mut probe = Edits::default();
    let (total, dropped) = llm::drop_elements(body, &tools.value, &mut probe, drops)?;
    if dropped == 0 {
        return Ok(None);
    }
    let mut edits = Edits::default();
    if dropped == total {
        llm::drop_members(body, &root, &["tools", "tool_choice"], &mut edits)?;
        return edits.apply(body).map(Some);
    }
    llm::drop_elements(body, &tools.value, &mut edits, drops)?;
    if let Some(choice) = llm::member(body, root, "tool_choice")? {
        let value = llm::parse(body, &choice.value)?;
        let forced = value.get("type").and_then(Value::as_str) == Some("tool");
        if forced
            && value
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| llm::is_denied(denied, n))
        {
            edits.replace(choice.value, r#"{"type":"auto"}"#);
        }
    }
    edits.apply(body).map(Some)
}

/// The tools the MCP connector's `mcp_servers[]` make callable by the model without an
/// `mcp_toolset` naming them (the 2025-04-04 beta: `tool_configuration.allowed_tools`, or every
/// tool of the server unless `enabled: false`). Servers a toolset names are judged through it.
/// The body editor does not narrow these, so a denied one refuses the request.
fn connector_tools(
    body: &serde_json::Map<String, Value>,
    declared: &[DeclaredTool],
) -> Result<Vec<DeclaredTool>, ExtractError> {
    let mut out = Vec::new();
    for (i, server) in llm::array(body, "mcp_servers")?.iter().enumerate() {
        let at = |why: &str| llm::invalid(&format!("mcp_servers[{i}]: {why}"));
        let name = server
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| at("missing name"))?;
        if declared.iter().any(|t| t.server.as_deref() == Some(name)) {
            continue;
        }
        let config = server.get("tool_configuration");
        if config
            .and_then(|c| c.get("enabled"))
            .and_then(Value::as_bool)
            == Some(false)
        {
            continue;
        }
        match config.and_then(|c| c.get("allowed_tools")) {
            None | Some(Value::Null) => out.push(DeclaredTool::remote("*", name).unstrippable()),
            Some(Value::Array(allowed)) => {
                for tool in allowed {
                    let tool = tool
                        .as_str()
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| at("allowed_tools holds a non-name"))?;
                    out.push(DeclaredTool::remote(tool, name).unstrippable());
                }
            }
            Some(_) => return Err(at("allowed_tools must be a list of tool names")),
        }
    }
    Ok(out)
}

/// The tools one `tools[]` entry declares.
pub fn declared(entry: &Value) -> Result<Vec<DeclaredTool>, String> {
    let kind = entry
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("custom");
    if kind == "mcp_toolset" {
        let server = entry
            .get("mcp_server_name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("mcp_toolset without mcp_server_name")?;
        let enabled_by_default = entry
            .get("default_config")
            .and_then(|c| c.get("enabled"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let names: Vec<String> = if enabled_by_default {
            vec!["*".to_owned()]
        } else {
            entry
                .get("configs")
                .and_then(Value::as_object)
                .map(|configs| {
                    configs
                        .iter()
                        .filter(|(_, c)| c.get("enabled").and_then(Value::as_bool).unwrap_or(true))
                        .map(|(name, _)| name.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        return Ok(names
            .into_iter()
            .map(|name| DeclaredTool::remote(&name, server))
            .collect());
    }
    let name = entry
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("missing name")?;
    Ok(vec![DeclaredTool::new(name, kind)])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::extract::test_support;

    fn extract(body: Value) -> Result<LlmRequest, ExtractError> {
        test_support::read(&AnthropicMessages, "/v1/messages", &body)
    }

    fn strip(body: &str, denied: &[&str]) -> Option<String> {
        test_support::strip(&AnthropicMessages, body, denied)
    }

    #[test]
    fn reads_custom_server_and_mcp_tools() {
        let r = extract(json!({
            "model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [],
            "tools": [
                {"name": "get_weather", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
                {"type": "mcp_toolset", "mcp_server_name": "github"},
                {"type": "mcp_toolset", "mcp_server_name": "jira", "default_config": {"enabled": false},
                 "configs": {"create_issue": {"enabled": true}, "delete_issue": {"enabled": false}}}
            ],
            "tool_choice": {"type": "tool", "name": "get_weather"}
        }))
        .unwrap();
        let keys: Vec<_> = r.tools.iter().map(|t| (t.key(), t.kind.clone())).collect();
        assert_eq!(
            keys,
            [
                ("get_weather".into(), "custom".into()),
                ("web_search".into(), "web_search_20250305".into()),
                ("github/*".into(), "mcp".into()),
                ("jira/create_issue".into(), "mcp".into())
            ]
        );
        assert_eq!(r.forced_tools, ["get_weather"]);
        assert!(extract(json!({"model": "m", "tools": [{"input_schema": {}}]})).is_err());
        assert!(extract(json!({"model": "m", "tools": [{"type": "mcp_toolset"}]})).is_err());
    }

    #[test]
    fn strips_and_repairs_tool_choice() {
        let body = r#"{"model":"m","tools":[{"name":"a","input_schema":{}},{"name":"b","input_schema":{}}],"tool_choice":{"type":"tool","name":"b"},"max_tokens":1.0}"#;
        assert_eq!(
            strip(body, &["b"]).unwrap(),
            r#"{"model":"m","tools":[{"name":"a","input_schema":{}}],"tool_choice":{"type":"auto"},"max_tokens":1.0}"#
        );
        assert_eq!(
            strip(body, &["a", "b"]).unwrap(),
            r#"{"model":"m","max_tokens":1.0}"#
        );
        assert_eq!(strip(body, &["c"]), None);
        let toolset = r#"{"model":"m","tools":[{"type":"mcp_toolset","mcp_server_name":"github"},{"name":"a"}]}"#;
        assert_eq!(
            strip(toolset, &["github/*"]).unwrap(),
            r#"{"model":"m","tools":[{"name":"a"}]}"#
        );
    }

    #[test]
    fn connector_servers_are_judged_and_cannot_be_stripped() {
        let r = extract(json!({
            "model": "m", "max_tokens": 1, "messages": [],
            "mcp_servers": [
                {"type": "url", "url": "https://a.example/mcp", "name": "crm",
                 "tool_configuration": {"allowed_tools": ["get_invoice", "issue_credit"]}},
                {"type": "url", "url": "https://b.example/mcp", "name": "wiki"},
                {"type": "url", "url": "https://c.example/mcp", "name": "off",
                 "tool_configuration": {"enabled": false}},
                {"type": "url", "url": "https://d.example/mcp", "name": "github"}
            ],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "github"}]
        }))
        .unwrap();
        let keys: Vec<_> = r.tools.iter().map(|t| (t.key(), t.strippable)).collect();
        assert_eq!(
            keys,
            [
                ("github/*".into(), true),
                ("crm/get_invoice".into(), false),
                ("crm/issue_credit".into(), false),
                ("wiki/*".into(), false)
            ]
        );
        assert!(extract(json!({"model": "m", "mcp_servers": [{"url": "u"}]})).is_err());
    }
}
