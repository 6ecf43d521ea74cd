//! Google Gemini (`POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent`,
//! any `/models/{model}:{method}` path): the model from the path,
//! `tools[].functionDeclarations[].name`, built-in tools judged by their key
//! (`googleSearch`, `codeExecution`, `urlContext`, ...), and
//! `toolConfig.functionCallingConfig.allowedFunctionNames`.
//!
//! Stripping removes denied declarations and built-in tools (a `tools[]` entry left empty goes
//! too) and removes them from `allowedFunctionNames`; if that list empties, the calling config
//! falls back to `{"mode":"AUTO"}`; with no tool left, `tools` and `toolConfig` go.

use serde_json::Value;

use super::known_tools::KnownTools;
use super::llm;
use super::{
    AgentRequest, DeclaredTool, ExtractError, HttpRequest, LlmRequest, Reading, RequestFormat,
};
use crate::rewrite::json_edit::{self, EditError, Edits};

/// What extraction reads (the model is in the path): function schemas and descriptions are
/// never judged. (An entry-level member of one of these names still counts as a built-in tool:
/// the keys are judged, so unread members stay, as `null`.)
pub const READING: Reading<'static> = Reading {
    members: &["tools", "toolConfig", "cachedContent", "cached_content"],
    unread: &[
        "parameters",
        "parametersJsonSchema",
        "response",
        "responseJsonSchema",
        "description",
    ],
    judges_keys: true,
};

/// Google Gemini generateContent.
pub struct Gemini;

impl RequestFormat for Gemini {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        let (model, method) = model_from_path(request.path)?;
        // The same `tools` as a recent request (an agent's next turn) is taken as read then.
        let mut known = KnownTools::of("gemini", "tools");
        let body = &llm::fields_with(request, &READING, &mut known)?;
        // A cached content may hold its own tools and tool config, which the body does not
        // show (Google's parser reads proto3 JSON: both spellings).
        if ["cachedContent", "cached_content"]
            .iter()
            .any(|k| body.get(*k).is_some_and(|v| !v.is_null()))
        {
            return Err(llm::invalid(
                "cachedContent is refused: a cached content may declare tools agent-authz \
                 cannot see; send the tools in the request",
            ));
        }
        let tools = llm::declared_tools(&mut known, request, body, declared)?;
        let allowed = body
            .get("toolConfig")
            .and_then(|c| c.get("functionCallingConfig"))
            .and_then(|c| c.get("allowedFunctionNames"))
            .and_then(Value::as_array);
        // Mode ANY with a single allowed name forces that function.
        let forced_tools = match allowed.map(Vec::as_slice) {
            Some([only]) => only
                .as_str()
                .map(|n| vec![n.to_owned()])
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(AgentRequest::Llm(LlmRequest {
            model,
            tools,
            forced_tools,
            stream: method == "streamGenerateContent",
        }))
    }

    fn strip_tools(&self, body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        let root = json_edit::root(body)?;
        let Some(tools) = llm::member(body, root.clone(), "tools")? else {
            return Ok(None);
        };
        let entries = json_edit::elements(body, tools.value.clone())?;
        let mut edits = Edits::default();
        let mut stripped = false;
        let mut emptied = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let members = json_edit::members(body, entry.clone())?;
            let mut remove_members = Vec::new();
            let mut inner_edits = Vec::new();
            for (m, member) in members.iter().enumerate() {
                if member.key == "functionDeclarations" {
                    let decls = json_edit::elements(body, member.value.clone())?;
                    let mut drop = Vec::new();
                    for (d, decl) in decls.iter().enumerate() {
                        let value = llm::parse(body, decl)?;
                        if value
                            .get("name")
                            .and_then(Value::as_str)
                            .is_some_and(|n| llm::is_denied(denied, n))
                        {
                            drop.push(d);
                        }
                    }
                    if !drop.is_empty() {
                        stripped = true;
                        if drop.len() == decls.len() {
                            remove_members.push(m);
                        } else {
                            inner_edits.push((decls, drop, json_edit::inner(&member.value)));
                        }
                    }
                } else if llm::is_denied(denied, &member.key) {
                    stripped = true;
                    remove_members.push(m);
                }
            }
            if !members.is_empty() && remove_members.len() == members.len() {
                emptied.push(index);
                continue;
            }
            for (items, drop, inner) in inner_edits {
                edits.delete_items(&items, &drop, inner);
            }
            let spans: Vec<_> = members.iter().map(|m| m.span.clone()).collect();
            edits.delete_items(&spans, &remove_members, json_edit::inner(entry));
        }
        if !stripped {
            return Ok(None);
        }
        if emptied.len() == entries.len() {
            let mut edits = Edits::default();
            llm::drop_members(body, &root, &["tools", "toolConfig"], &mut edits)?;
            return edits.apply(body).map(Some);
        }
        edits.delete_items(&entries, &emptied, json_edit::inner(&tools.value));
        if let Some(config) = llm::member(body, root, "toolConfig")?
            && let Some(calling) = llm::member(body, config.value, "functionCallingConfig")?
            && let Some(allowed) = llm::member(body, calling.value.clone(), "allowedFunctionNames")?
        {
            let names: Vec<Value> = llm::parse(body, &allowed.value)?
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|n| !n.as_str().is_some_and(|n| llm::is_denied(denied, n)))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if names.is_empty() {
                edits.replace(calling.value, r#"{"mode":"AUTO"}"#);
            } else {
                edits.replace(allowed.value, Value::Array(names).to_string());
            }
        }
        edits.apply(body).map(Some)
    }
}

fn declared(entry: &Value) -> Result<Vec<DeclaredTool>, String> {
    let entry = entry.as_object().ok_or("must be an object")?;
    let mut out = Vec::new();
    for (key, value) in entry {
        if key == "functionDeclarations" {
            let decls = value
                .as_array()
                .ok_or("functionDeclarations must be an array")?;
            for decl in decls {
                let name = decl
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or("function declaration without a name")?;
                out.push(DeclaredTool::new(name, "function"));
            }
        } else {
            out.push(DeclaredTool::new(key, "builtin"));
        }
    }
    Ok(out)
}

/// `.../models/{model}:{method}` → (model, method).
fn model_from_path(path: &str) -> Result<(String, &str), ExtractError> {
    let last = path
        .split_once("/models/")
        .map(|(_, rest)| rest)
        .ok_or_else(|| llm::invalid("Gemini path must be /.../models/{model}:{method}"))?;
    match last.split_once(':') {
        Some((model, method))
            if !model.is_empty() && !model.contains('/') && !method.is_empty() =>
        {
            Ok((model.to_owned(), method))
        }
        _ => Err(llm::invalid(
            "Gemini path must be /.../models/{model}:{method}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::extract::test_support;

    fn extract(path: &str, body: Value) -> Result<LlmRequest, ExtractError> {
        test_support::read(&Gemini, path, &body)
    }

    #[test]
    fn model_from_the_path_declarations_and_builtins() {
        let r = extract(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            json!({"contents": [], "tools": [{"functionDeclarations": [{"name": "get_weather"}, {"name": "delete_repo"}]}, {"googleSearch": {}}],
                   "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["delete_repo"]}}}),
        )
        .unwrap();
        assert_eq!(r.model, "gemini-2.5-flash");
        assert!(r.stream);
        let keys: Vec<_> = r
            .tools
            .iter()
            .map(|t| (t.name.as_str(), t.kind.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("get_weather", "function"),
                ("delete_repo", "function"),
                ("googleSearch", "builtin")
            ]
        );
        assert_eq!(r.forced_tools, ["delete_repo"]);
        assert!(extract("/v1beta/models/:generateContent", json!({})).is_err());
        assert!(extract("/v1beta/gemini:generateContent", json!({})).is_err());
        assert!(
            extract(
                "/v1beta/models/m:generateContent",
                json!({"tools": [{"functionDeclarations": [{}]}]})
            )
            .is_err()
        );
    }

    #[test]
    fn strips_declarations_builtins_and_allowed_names() {
        let body = r#"{"contents":[],"tools":[{"functionDeclarations":[{"name":"a"},{"name":"b"}]},{"googleSearch":{}}],"toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["a","b"]}}}"#;
        let strip = |d: &[&str]| test_support::strip(&Gemini, body, d);
        assert_eq!(
            strip(&["b", "googleSearch"]).unwrap(),
            r#"{"contents":[],"tools":[{"functionDeclarations":[{"name":"a"}]}],"toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["a"]}}}"#
        );
        assert_eq!(
            strip(&["a", "b"]).unwrap(),
            r#"{"contents":[],"tools":[{"googleSearch":{}}],"toolConfig":{"functionCallingConfig":{"mode":"AUTO"}}}"#
        );
        assert_eq!(
            strip(&["a", "b", "googleSearch"]).unwrap(),
            r#"{"contents":[]}"#
        );
        assert_eq!(strip(&["z"]), None);
    }
}
