//! OpenAI Chat Completions (`POST /v1/chat/completions`): the model, the declared `tools[]`
//! (`function` and `custom`) and the legacy `functions[]`.
//!
//! A tool entry whose name cannot be read is refused rather than skipped: a skipped entry
//! would reach the model unjudged.
//!
//! Stripping (the ext_proc leg) removes denied tools while keeping the request valid:
//! - `tools[]` and legacy `functions[]` entries naming a denied tool are cut out; every other
//!   byte is kept.
//! - A `tool_choice` (or legacy `function_call`) that names a stripped tool falls back to
//!   `"auto"` (the pipeline already refused the request if `forced_denied_tool: reject`); an
//!   `allowed_tools` choice loses the stripped entries.
//! - When no tool remains, `tools`, `tool_choice` and `parallel_tool_calls` go too (OpenAI
//!   answers 400 to the latter two without tools); likewise `functions` and `function_call`.
//! - Conversation history (`tool_calls`, `role: tool` messages) is left alone: deleting it
//!   would break call/result pairing; the model simply cannot call the tool again.

use std::ops::Range;

use serde_json::{Value, json};

use super::json_view::View;
use super::known_tools::KnownTools;
use super::llm::{self, Tools};
use super::{
    AgentRequest, DeclaredTool, ExtractError, HttpRequest, LlmRequest, Reading, RequestFormat,
};

/// OpenAI Chat Completions.
pub struct OpenaiChat;

impl RequestFormat for OpenaiChat {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        read(request, None).map(AgentRequest::Llm)
    }

    fn strip_tools(&self, body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        strip_tools(body, denied)
    }
}

/// What extraction reads: function schemas, custom-tool grammars and descriptions are never
/// judged.
pub const READING: Reading<'static> = Reading {
    members: &[
        "model",
        "tools",
        "functions",
        "tool_choice",
        "function_call",
        "stream",
    ],
    unread: &["parameters", "format", "description"],
    judges_keys: false,
};

/// Reads a Chat Completions request; the model is `model` when the path names it (an Azure
/// deployment), else the body's.
pub fn read(request: &HttpRequest<'_>, model: Option<String>) -> Result<LlmRequest, ExtractError> {
    let mut scratch = String::new();
    // The same `tools` as a recent request (an agent's next turn) is taken as read then.
    let mut known = KnownTools::of("openai_chat", "tools");
    let body = &llm::view_fields(request, &READING, &mut known, &mut scratch)?;
    let model = match model {
        Some(model) => model,
        None => llm::model(body)?,
    };
    let declared = llm::declared_tools(&mut known, request, body, |entry| {
        tool_entry(entry).map(|t| [t])
    })?;
    // Legacy `functions` (rarely beside `tools`): added after them, unique by name.
    let tools = if llm::array(body, "functions")?.is_empty() {
        declared
    } else {
        let mut tools = Tools(declared.to_vec());
        llm::add_declared(&mut tools, body, "functions", |entry| {
            entry
                .get("name")
                .and_then(View::as_str)
                .filter(|n| !n.is_empty())
                .map(|name| [DeclaredTool::new(name, "function")])
                .ok_or_else(|| "missing name".to_owned())
        })?;
        tools.0.into()
    };
    let stream = body.get("stream").and_then(View::as_bool).unwrap_or(false);
    let forced_tools = ["tool_choice", "function_call"]
        .iter()
        .filter_map(|key| body.get(key))
        .filter_map(|choice| {
            let kind = choice.get("type").and_then(View::as_str);
            let named = match kind {
                Some(k @ ("function" | "custom")) => choice.get(k),
                _ => Some(choice),
            };
            named?.get("name")?.as_str().map(str::to_owned)
        })
        .collect();
    Ok(LlmRequest {
        model,
        tools,
        forced_tools,
        stream,
    })
}

fn tool_entry(entry: &View<'_>) -> Result<DeclaredTool, String> {
    let kind = entry
        .get("type")
        .and_then(View::as_str)
        .ok_or("missing type")?;
    let name = match kind {
        "function" | "custom" => entry
            .get(kind)
            .and_then(|f| f.get("name"))
            .and_then(View::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("missing {kind}.name"))?,
        other => return Err(format!("unsupported tool type {other:?}")),
    };
    Ok(DeclaredTool::new(name, kind))
}

// === stripping ===

use crate::rewrite::json_edit::{self, EditError, Edits, Member};

/// Returns the rewritten body, or `None` when no denied tool is declared (nothing to change).
fn strip_tools(body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
    let root = json_edit::root(body)?;
    let members = json_edit::members(body, root.clone())?;
    let find = |key: &str| members.iter().position(|m| m.key == key);
    let mut edits = Edits::default();
    let mut remove_members: Vec<usize> = Vec::new();
    let mut stripped_any = false;

    for (list_key, choice_key, extra_keys, name_of) in [
        (
            "tools",
            "tool_choice",
            &["parallel_tool_calls"][..],
            tool_name as fn(&Value) -> Option<&str>,
        ),
        ("functions", "function_call", &[][..], function_name),
    ] {
        let Some(list_index) = find(list_key) else {
            continue;
        };
        let Some(list) = members.get(list_index) else {
            continue;
        };
        if body.get(list.value.start).is_none_or(|b| *b != b'[') {
            continue;
        }
        let items = json_edit::elements(body, list.value.clone())?;
        let mut drop = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let value: Value = parse(body, item)?;
            if name_of(&value).is_some_and(|n| denied.iter().any(|d| d == n)) {
                drop.push(i);
            }
        }
        if drop.is_empty() {
            continue;
        }
        stripped_any = true;
        let none_left = drop.len() == items.len();
        if none_left {
            remove_members.push(list_index);
            remove_members.extend(extra_keys.iter().filter_map(|k| find(k)));
            remove_members.extend(find(choice_key));
        } else {
            edits.delete_items(&items, &drop, json_edit::inner(&list.value));
            let choice = find(choice_key).and_then(|i| members.get(i));
            if let Some(choice) = choice
                && let Some(new_choice) = repair_choice(&parse(body, &choice.value)?, denied)
            {
                edits.replace(choice.value.clone(), new_choice.to_string());
            }
        }
    }
    if !stripped_any {
        return Ok(None);
    }
    let spans: Vec<Range<usize>> = members.iter().map(|m: &Member| m.span.clone()).collect();
    edits.delete_items(&spans, &remove_members, json_edit::inner(&root));
    edits.apply(body).map(Some)
}

/// The choice to use instead of one that names a denied tool, if it does.
fn repair_choice(choice: &Value, denied: &[String]) -> Option<Value> {
    let is_denied = |n: Option<&str>| n.is_some_and(|n| denied.iter().any(|d| d == n));
    if is_denied(tool_name(choice)) || is_denied(function_name(choice)) {
        return Some(json!("auto"));
    }
    if choice.get("type").and_then(Value::as_str) == Some("allowed_tools") {
        let tools = choice.get("allowed_tools")?.get("tools")?.as_array()?;
        let kept: Vec<Value> = tools
            .iter()
            .filter(|t| !is_denied(tool_name(t)))
            .cloned()
            .collect();
        if kept.len() == tools.len() {
            return None;
        }
        if kept.is_empty() {
            return Some(json!("none"));
        }
        let mut repaired = choice.clone();
        repaired["allowed_tools"]["tools"] = Value::Array(kept);
        return Some(repaired);
    }
    None
}

/// `{"type":"function","function":{"name"}}` or `{"type":"custom","custom":{"name"}}`.
fn tool_name(v: &Value) -> Option<&str> {
    let kind = v.get("type")?.as_str()?;
    v.get(kind)?.get("name")?.as_str()
}

/// Legacy `{"name": ...}`.
fn function_name(v: &Value) -> Option<&str> {
    v.get("name")?.as_str()
}

fn parse(body: &[u8], span: &Range<usize>) -> Result<Value, EditError> {
    body.get(span.clone())
        .and_then(|bytes| serde_json::from_slice(bytes).ok())
        .ok_or(EditError(span.start))
}

#[cfg(test)]
mod tests {
    use crate::headers::Headers;

    use serde_json::json;

    use super::*;

    fn run(body: Value) -> Result<LlmRequest, ExtractError> {
        let headers =
            Headers::from_iter([("content-type".to_owned(), "application/json".to_owned())]);
        let body = body.to_string().into_bytes();
        read(
            &HttpRequest {
                method: "POST",
                path: "/v1/chat/completions",
                headers: &headers,
                body: &body,
            },
            None,
        )
    }

    fn names(r: &LlmRequest) -> Vec<(&str, &str)> {
        r.tools
            .iter()
            .map(|t| (t.name.as_str(), t.kind.as_str()))
            .collect()
    }

    #[test]
    fn model_and_tools() {
        let r = run(json!({
            "model": "gpt-4o", "stream": true,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
                {"type": "custom", "custom": {"name": "grep"}},
                {"type": "function", "function": {"name": "get_weather"}}
            ],
            "functions": [{"name": "legacy_fn"}]
        }))
        .unwrap();
        assert_eq!(r.model, "gpt-4o");
        assert!(r.stream);
        assert!(r.forced_tools.is_empty());
        assert_eq!(
            names(&r),
            [
                ("get_weather", "function"),
                ("grep", "custom"),
                ("legacy_fn", "function")
            ]
        );
    }

    #[test]
    fn forced_tools_are_named() {
        let r = run(json!({"model": "m", "tools": [{"type": "function", "function": {"name": "a"}}],
            "tool_choice": {"type": "function", "function": {"name": "a"}}, "function_call": {"name": "b"}}))
        .unwrap();
        assert_eq!(r.forced_tools, ["a", "b"]);
        let r = run(json!({"model": "m", "tool_choice": "required"})).unwrap();
        assert!(r.forced_tools.is_empty());
    }

    #[test]
    fn no_tools_is_fine() {
        let r = run(json!({"model": "m", "messages": [], "tools": null})).unwrap();
        assert!(r.tools.is_empty());
        assert!(!r.stream);
    }

    #[test]
    fn unreadable_shapes_are_refused() {
        for body in [
            json!([]),
            json!({"messages": []}),
            json!({"model": ""}),
            json!({"model": 5}),
            json!({"model": "m", "tools": {}}),
            json!({"model": "m", "tools": [{"type": "function"}]}),
            json!({"model": "m", "tools": [{"type": "function", "function": {"name": ""}}]}),
            json!({"model": "m", "tools": [{"function": {"name": "x"}}]}),
            json!({"model": "m", "tools": [{"type": "mystery", "mystery": {"name": "x"}}]}),
            json!({"model": "m", "functions": [{"description": "no name"}]}),
        ] {
            assert!(
                matches!(run(body.clone()), Err(ExtractError::InvalidRequest(_))),
                "{body}"
            );
        }
    }
}

#[cfg(test)]
mod strip_tests {
    use super::*;

    fn strip(body: &str, denied: &[&str]) -> Option<String> {
        let denied: Vec<String> = denied.iter().map(|s| s.to_string()).collect();
        strip_tools(body.as_bytes(), &denied)
            .unwrap()
            .map(|b| String::from_utf8(b).unwrap())
    }

    fn tool(name: &str) -> String {
        format!(r#"{{"type":"function","function":{{"name":"{name}","parameters":{{}}}}}}"#)
    }

    #[test]
    fn only_denied_tools_are_cut_and_every_other_byte_stays() {
        let body = format!(
            "{{\"model\":\"gpt-4o\",\n \"temperature\": 1.0, \"seed\": 12345678901234567890, \"messages\":[{{\"role\":\"user\",\"content\":\"h\\u00e9llo \u{1F600}\"}}],\n \"tools\": [{}, {}, {}], \"tool_choice\":\"required\", \"parallel_tool_calls\": false}}",
            tool("get_weather"),
            tool("delete_repo"),
            tool("run_shell")
        );
        let out = strip(&body, &["delete_repo", "run_shell"]).unwrap();
        let expected = body.replace(
            &format!(", {}, {}", tool("delete_repo"), tool("run_shell")),
            "",
        );
        assert_eq!(out, expected);
        assert!(
            out.contains("1.0")
                && out.contains("12345678901234567890")
                && out.contains("h\\u00e9llo \u{1F600}")
        );
        assert_eq!(strip(&body, &["absent"]), None, "nothing to strip");
    }

    #[test]
    fn stripping_every_tool_removes_the_tool_fields() {
        let body = format!(
            r#"{{"tool_choice":"auto","model":"m","tools":[{}],"parallel_tool_calls":true,"stream":true}}"#,
            tool("delete_repo")
        );
        let out = strip(&body, &["delete_repo"]).unwrap();
        assert_eq!(out, r#"{"model":"m","stream":true}"#);
    }

    #[test]
    fn tool_choice_naming_a_stripped_tool_falls_back_to_auto() {
        let forced = r#"{"type":"function","function":{"name":"delete_repo"}}"#;
        let body = format!(
            r#"{{"model":"m","tools":[{},{}],"tool_choice":{forced}}}"#,
            tool("get_weather"),
            tool("delete_repo")
        );
        let out = strip(&body, &["delete_repo"]).unwrap();
        assert_eq!(
            out,
            format!(
                r#"{{"model":"m","tools":[{}],"tool_choice":"auto"}}"#,
                tool("get_weather")
            )
        );
        // A choice naming a kept tool is untouched.
        let kept = r#"{"type":"function","function":{"name":"get_weather"}}"#;
        let body = format!(
            r#"{{"model":"m","tools":[{},{}],"tool_choice":{kept}}}"#,
            tool("get_weather"),
            tool("delete_repo")
        );
        assert!(
            strip(&body, &["delete_repo"])
                .unwrap()
                .ends_with(&format!("\"tool_choice\":{kept}}}"))
        );
    }

    #[test]
    fn allowed_tools_choices_lose_stripped_entries() {
        let choice = r#"{"type":"allowed_tools","allowed_tools":{"mode":"auto","tools":[{"type":"function","function":{"name":"get_weather"}},{"type":"function","function":{"name":"delete_repo"}}]}}"#;
        let body = format!(
            r#"{{"model":"m","tools":[{},{}],"tool_choice":{choice}}}"#,
            tool("get_weather"),
            tool("delete_repo")
        );
        let out: Value = serde_json::from_str(&strip(&body, &["delete_repo"]).unwrap()).unwrap();
        assert_eq!(
            out["tool_choice"]["allowed_tools"]["tools"],
            json!([{"type":"function","function":{"name":"get_weather"}}])
        );
        assert_eq!(out["tool_choice"]["allowed_tools"]["mode"], "auto");
    }

    #[test]
    fn legacy_functions_are_stripped_too() {
        let body =
            r#"{"model":"m","functions":[{"name":"a"},{"name":"b"}],"function_call":{"name":"b"}}"#;
        assert_eq!(
            strip(body, &["b"]).unwrap(),
            r#"{"model":"m","functions":[{"name":"a"}],"function_call":"auto"}"#
        );
        assert_eq!(strip(body, &["a", "b"]).unwrap(), r#"{"model":"m"}"#);
    }

    #[test]
    fn custom_tools_are_matched_by_name() {
        let body = r#"{"model":"m","tools":[{"type":"custom","custom":{"name":"grep"}},{"type":"function","function":{"name":"x"}}]}"#;
        assert_eq!(
            strip(body, &["grep"]).unwrap(),
            r#"{"model":"m","tools":[{"type":"function","function":{"name":"x"}}]}"#
        );
    }
}
