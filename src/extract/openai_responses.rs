//! OpenAI Responses (`POST /v1/responses`): `model`; `tools[]` of type `function` and `custom`
//! (name at top level), `namespace` (nested function/custom tools), `mcp` (a remote MCP server
//! OpenAI calls itself: its `allowed_tools` are judged as that server's `tools/call/<tool>`,
//! with no arguments to judge; without `allowed_tools` the declaration is judged as
//! `tools/call/*`, which only a policy granting every tool allows), and built-in tools
//! (`web_search`, `file_search`, `code_interpreter`, ...) judged by their type.
//!
//! Stripping removes denied function/custom/built-in entries, narrows an `mcp` entry's
//! `allowed_tools` (dropping the entry when none remains) and a namespace's tools; a
//! `tool_choice` naming a stripped tool becomes `"auto"`, an `allowed_tools` choice loses it;
//! with no tool left, `tools`, `tool_choice` and `parallel_tool_calls` go.

use serde_json::{Value, json};

use super::known_tools::KnownTools;
use super::llm;
use super::{
    AgentRequest, DeclaredTool, ExtractError, HttpRequest, LlmRequest, Reading, RequestFormat,
};
use crate::rewrite::json_edit::{self, EditError, Edits};

/// What extraction reads: function schemas and descriptions are never judged.
pub const READING: Reading<'static> = Reading {
    members: &["model", "tools", "tool_choice", "stream", "prompt"],
    unread: &["parameters", "description"],
    judges_keys: false,
};

/// OpenAI Responses.
pub struct OpenaiResponses;

impl RequestFormat for OpenaiResponses {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        read(request, None).map(AgentRequest::Llm)
    }

    fn strip_tools(&self, body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        let root = json_edit::root(body)?;
        let Some(tools) = llm::member(body, root.clone(), "tools")? else {
            return Ok(None);
        };
        let items = json_edit::elements(body, tools.value.clone())?;
        let mut edits = Edits::default();
        let mut drop = Vec::new();
        let mut stripped = false;
        for (i, item) in items.iter().enumerate() {
            let value = llm::parse(body, item)?;
            let Ok(declared) = declared(&value) else {
                continue;
            };
            let denied_here: Vec<&DeclaredTool> = declared
                .iter()
                .filter(|t| llm::is_denied(denied, &t.key()))
                .collect();
            if denied_here.is_empty() {
                continue;
            }
            stripped = true;
            if denied_here.len() == declared.len() {
                drop.push(i);
                continue;
            }
            // Narrow rather than drop: some of this entry's tools stay.
            let kept: Vec<Value> = declared
                .iter()
                .filter(|t| !llm::is_denied(denied, &t.key()))
                .map(|t| json!(t.name))
                .collect();
            match value.get("type").and_then(Value::as_str) {
                Some("mcp") => {
                    if let Some(allowed) = llm::member(body, item.clone(), "allowed_tools")? {
                        let narrowed = match llm::parse(body, &allowed.value)? {
                            Value::Object(mut filter) => {
                                filter.insert("tool_names".into(), Value::Array(kept));
                                Value::Object(filter)
                            }
                            _ => Value::Array(kept),
                        };
                        edits.replace(allowed.value, narrowed.to_string());
                    }
                }
                Some("namespace") => {
                    if let Some(nested) = llm::member(body, item.clone(), "tools")? {
                        llm::drop_elements(body, &nested.value, &mut edits, |t| {
                            named(t).is_some_and(|n| llm::is_denied(denied, n))
                        })?;
                    }
                }
                _ => {}
            }
        }
        if !stripped {
            return Ok(None);
        }
        if drop.len() == items.len() {
            let mut edits = Edits::default();
            llm::drop_members(
                body,
                &root,
                &["tools", "tool_choice", "parallel_tool_calls"],
                &mut edits,
            )?;
            return edits.apply(body).map(Some);
        }
        edits.delete_items(&items, &drop, json_edit::inner(&tools.value));
        if let Some(choice) = llm::member(body, root, "tool_choice")? {
            let value = llm::parse(body, &choice.value)?;
            if choice_key(&value).is_some_and(|k| llm::is_denied(denied, &k)) {
                edits.replace(choice.value, "\"auto\"");
            } else if value.get("type").and_then(Value::as_str) == Some("allowed_tools")
                && let Some(list) = value.get("tools").and_then(Value::as_array)
            {
                let kept: Vec<Value> = list
                    .iter()
                    .filter(|t| !choice_key(t).is_some_and(|k| llm::is_denied(denied, &k)))
                    .cloned()
                    .collect();
                if kept.len() != list.len() {
                    let mut repaired = value.clone();
                    repaired["tools"] = Value::Array(kept.clone());
                    let new = if kept.is_empty() {
                        json!("none")
                    } else {
                        repaired
                    };
                    edits.replace(choice.value, new.to_string());
                }
            }
        }
        edits.apply(body).map(Some)
    }
}

/// Reads a Responses request; the model is `model` when the path names it (an Azure
/// deployment), else the body's.
pub fn read(request: &HttpRequest<'_>, model: Option<String>) -> Result<LlmRequest, ExtractError> {
    // The same `tools` as a recent request (an agent's next turn) is taken as read then.
    let mut known = KnownTools::of("openai_responses", "tools");
    let body = &llm::fields_with(request, &READING, &mut known)?;
    // A stored prompt may carry its own model and tools, which the body does not show.
    if body.get("prompt").is_some_and(|p| !p.is_null()) {
        return Err(llm::invalid(
            "stored prompts (`prompt`) are refused: they may declare a model and tools \
             agent-authz cannot see; send model and tools in the request",
        ));
    }
    let model = match model {
        Some(model) => model,
        None => llm::model(body)?,
    };
    let tools = llm::declared_tools(&mut known, request, body, declared)?;
    let forced_tools = body
        .get("tool_choice")
        .and_then(choice_key)
        .into_iter()
        .collect();
    Ok(LlmRequest {
        model,
        tools,
        forced_tools,
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
    })
}

fn named(entry: &Value) -> Option<&str> {
    entry
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

/// The tools one `tools[]` entry declares.
fn declared(entry: &Value) -> Result<Vec<DeclaredTool>, String> {
    let kind = entry
        .get("type")
        .and_then(Value::as_str)
        .ok_or("missing type")?;
    match kind {
        "function" | "custom" => Ok(vec![DeclaredTool::new(
            named(entry).ok_or("missing name")?,
            kind,
        )]),
        "namespace" => entry
            .get("tools")
            .and_then(Value::as_array)
            .ok_or("namespace without tools")?
            .iter()
            .map(|t| {
                let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
                Ok(DeclaredTool::new(
                    named(t).ok_or("namespace tool without a name")?,
                    kind,
                ))
            })
            .collect(),
        "mcp" => {
            let server = entry
                .get("server_label")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or("mcp tool without server_label")?;
            let names: Vec<String> = match entry.get("allowed_tools") {
                None | Some(Value::Null) => vec!["*".to_owned()],
                Some(Value::Array(names)) => names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect(),
                Some(Value::Object(filter)) => {
                    match filter.get("tool_names").and_then(Value::as_array) {
                        Some(names) => names
                            .iter()
                            .filter_map(|n| n.as_str().map(str::to_owned))
                            .collect(),
                        None => vec!["*".to_owned()],
                    }
                }
                Some(_) => return Err("allowed_tools must be a list or a filter".into()),
            };
            Ok(names
                .into_iter()
                .map(|name| DeclaredTool::remote(&name, server))
                .collect())
        }
        builtin => Ok(vec![DeclaredTool::new(builtin, "builtin")]),
    }
}

/// The tool a `tool_choice` (or an `allowed_tools` entry) names, as a [`DeclaredTool::key`].
fn choice_key(choice: &Value) -> Option<String> {
    match choice.get("type")?.as_str()? {
        "function" | "custom" => named(choice).map(str::to_owned),
        "mcp" => {
            let server = choice.get("server_label")?.as_str()?;
            Some(format!("{server}/{}", named(choice).unwrap_or("*")))
        }
        "allowed_tools" => None,
        builtin => Some(builtin.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::test_support;

    fn extract(body: Value) -> Result<LlmRequest, ExtractError> {
        test_support::read(&OpenaiResponses, "/v1/responses", &body)
    }

    fn strip(body: &str, denied: &[&str]) -> Option<String> {
        test_support::strip(&OpenaiResponses, body, denied)
    }

    #[test]
    fn reads_every_tool_kind() {
        let r = extract(json!({
            "model": "gpt-5", "input": "hi", "stream": true,
            "tools": [
                {"type": "function", "name": "get_weather", "parameters": {}},
                {"type": "web_search"},
                {"type": "mcp", "server_label": "github", "server_url": "https://x", "allowed_tools": ["search", "delete_repo"]},
                {"type": "mcp", "server_label": "jira", "server_url": "https://y"},
                {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "inner"}]}
            ],
            "tool_choice": {"type": "mcp", "server_label": "github", "name": "search"}
        }))
        .unwrap();
        let keys: Vec<_> = r.tools.iter().map(|t| t.key()).collect();
        assert_eq!(
            keys,
            [
                "get_weather",
                "web_search",
                "github/search",
                "github/delete_repo",
                "jira/*",
                "inner"
            ]
        );
        assert_eq!(r.forced_tools, ["github/search"]);
        assert!(r.stream);
        assert!(extract(json!({"model": "m", "tools": [{"name": "x"}]})).is_err());
        assert!(extract(json!({"model": "m", "tools": [{"type": "mcp"}]})).is_err());
    }

    #[test]
    fn mcp_entries_are_narrowed_not_dropped() {
        let body = r#"{"model":"m","tools":[{"type":"mcp","server_label":"github","allowed_tools":["search","delete_repo"],"require_approval":"never"},{"type":"function","name":"f"}]}"#;
        assert_eq!(
            strip(body, &["github/delete_repo"]).unwrap(),
            r#"{"model":"m","tools":[{"type":"mcp","server_label":"github","allowed_tools":["search"],"require_approval":"never"},{"type":"function","name":"f"}]}"#
        );
        assert_eq!(
            strip(body, &["github/delete_repo", "github/search"]).unwrap(),
            r#"{"model":"m","tools":[{"type":"function","name":"f"}]}"#
        );
        let filter = r#"{"model":"m","tools":[{"type":"mcp","server_label":"g","allowed_tools":{"tool_names":["a","b"],"read_only":true}}]}"#;
        let out: Value = serde_json::from_str(&strip(filter, &["g/b"]).unwrap()).unwrap();
        assert_eq!(
            out["tools"][0]["allowed_tools"],
            json!({"tool_names": ["a"], "read_only": true})
        );
    }

    #[test]
    fn builtins_namespaces_and_choices() {
        let body = r#"{"model":"m","tools":[{"type":"web_search"},{"type":"namespace","name":"ns","tools":[{"type":"function","name":"a"},{"type":"function","name":"b"}]}],"tool_choice":{"type":"function","name":"b"},"parallel_tool_calls":true}"#;
        assert_eq!(
            strip(body, &["web_search", "b"]).unwrap(),
            r#"{"model":"m","tools":[{"type":"namespace","name":"ns","tools":[{"type":"function","name":"a"}]}],"tool_choice":"auto","parallel_tool_calls":true}"#
        );
        assert_eq!(
            strip(body, &["web_search", "a", "b"]).unwrap(),
            r#"{"model":"m"}"#
        );
        assert_eq!(strip(body, &["nope"]), None);
    }
}
