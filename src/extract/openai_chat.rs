//! OpenAI Chat Completions (`POST /v1/chat/completions`): the model, the declared `tools[]`
//! (`function` and `custom`) and the legacy `functions[]`.
//!
//! A tool entry whose name cannot be read is refused rather than skipped: a skipped entry
//! would reach the model unjudged.

use serde_json::{Map, Value};

use super::{DeclaredTool, ExtractError, HttpRequest, LlmRequest, json_body};

pub fn extract(request: &HttpRequest<'_>) -> Result<LlmRequest, ExtractError> {
    let body = json_body(request)?;
    let body = body
        .as_object()
        .ok_or_else(|| invalid("body must be a JSON object"))?;
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(invalid("`model` must be a non-empty string")),
    };
    let mut tools: Vec<DeclaredTool> = Vec::new();
    let mut add = |tool: DeclaredTool| {
        if !tools.iter().any(|t| t.name == tool.name) {
            tools.push(tool);
        }
    };
    for (i, entry) in array_field(body, "tools")?.iter().enumerate() {
        add(tool_entry(entry).map_err(|why| invalid(&format!("tools[{i}]: {why}")))?);
    }
    for (i, entry) in array_field(body, "functions")?.iter().enumerate() {
        let name = entry
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid(&format!("functions[{i}]: missing name")))?;
        add(DeclaredTool {
            name: name.to_owned(),
            kind: "function".into(),
        });
    }
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let forced_tools = ["tool_choice", "function_call"]
        .iter()
        .filter_map(|key| body.get(*key))
        .filter_map(|choice| {
            let kind = choice.get("type").and_then(Value::as_str);
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

fn tool_entry(entry: &Value) -> Result<DeclaredTool, String> {
    let kind = entry
        .get("type")
        .and_then(Value::as_str)
        .ok_or("missing type")?;
    let name = match kind {
        "function" | "custom" => entry
            .get(kind)
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("missing {kind}.name"))?,
        other => return Err(format!("unsupported tool type {other:?}")),
    };
    Ok(DeclaredTool {
        name: name.to_owned(),
        kind: kind.to_owned(),
    })
}

fn array_field<'a>(body: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], ExtractError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(invalid(&format!("`{key}` must be an array"))),
    }
}

fn invalid(why: &str) -> ExtractError {
    ExtractError::InvalidRequest(why.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn run(body: Value) -> Result<LlmRequest, ExtractError> {
        let headers = HashMap::from([("content-type".to_owned(), "application/json".to_owned())]);
        let body = body.to_string().into_bytes();
        extract(&HttpRequest {
            method: "POST",
            path: "/v1/chat/completions",
            headers: &headers,
            body: &body,
        })
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
