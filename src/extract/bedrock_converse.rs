//! Amazon Bedrock Converse (`POST /model/{modelId}/converse` and `/converse-stream`): the model
//! from the path, `toolConfig.tools[].toolSpec.name`, and `toolConfig.toolChoice`
//! (`{auto:{}}`, `{any:{}}`, `{tool:{name}}`).
//!
//! Model ids travel unencoded (`anthropic.claude-3-5-sonnet-20241022-v2:0`); an ARN, which
//! needs a percent-encoded `/`, is refused with the other percent-encoded paths.
//!
//! Stripping removes denied `toolSpec`s; a `toolChoice` forcing one becomes `{"auto":{}}`;
//! with no tool left, `toolConfig` goes (Bedrock rejects a toolConfig without tools).

use serde_json::Value;

use super::llm::{self, Tools};
use super::{
    AgentRequest, DeclaredTool, ExtractError, HttpRequest, LlmRequest, Reading, RequestFormat,
};
use crate::rewrite::json_edit::{self, EditError, Edits};

/// What extraction reads (the model is in the path): tool schemas and descriptions are never
/// judged.
const READING: Reading<'static> = Reading {
    members: &["toolConfig"],
    unread: &["inputSchema", "description"],
};

/// Amazon Bedrock Converse.
pub struct BedrockConverse;

impl RequestFormat for BedrockConverse {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        let (model, operation) = model_from_path(request.path)?;
        let body = &llm::fields(request, &READING)?;
        let config = body.get("toolConfig").and_then(Value::as_object);
        let mut tools = Tools::default();
        let mut forced_tools = Vec::new();
        if let Some(config) = config {
            for (i, entry) in llm::array(config, "tools")?.iter().enumerate() {
                if entry.get("cachePoint").is_some() {
                    continue;
                }
                let spec = entry.get("toolSpec").ok_or_else(|| {
                    llm::invalid(&format!("toolConfig.tools[{i}]: expected toolSpec"))
                })?;
                tools.add(DeclaredTool::new(
                    llm::name(spec, "name", &format!("toolConfig.tools[{i}].toolSpec"))?,
                    "function",
                ));
            }
            if let Some(name) = config
                .get("toolChoice")
                .and_then(|c| c.get("tool"))
                .and_then(|t| t.get("name")?.as_str())
            {
                forced_tools.push(name.to_owned());
            }
        }
        Ok(AgentRequest::Llm(LlmRequest {
            model,
            tools: tools.0,
            forced_tools,
            stream: operation == "converse-stream",
        }))
    }

    fn strip_tools(&self, body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        let root = json_edit::root(body)?;
        let Some(config) = llm::member(body, root.clone(), "toolConfig")? else {
            return Ok(None);
        };
        let Some(tools) = llm::member(body, config.value.clone(), "tools")? else {
            return Ok(None);
        };
        let spec_name = |v: &Value| {
            v.get("toolSpec")
                .and_then(|s| s.get("name")?.as_str())
                .map(str::to_owned)
        };
        let drops = |v: &Value| spec_name(v).is_some_and(|n| llm::is_denied(denied, &n));
        let items = json_edit::elements(body, tools.value.clone())?;
        let specs = items
            .iter()
            .map(|i| llm::parse(body, i))
            .collect::<Result<Vec<_>, _>>()?;
        let dropped = specs.iter().filter(|v| drops(v)).count();
        if dropped == 0 {
            return Ok(None);
        }
        let mut edits = Edits::default();
        if specs.iter().all(|v| drops(v) || spec_name(v).is_none()) {
            llm::drop_members(body, &root, &["toolConfig"], &mut edits)?;
            return edits.apply(body).map(Some);
        }
        llm::drop_elements(body, &tools.value, &mut edits, drops)?;
        if let Some(choice) = llm::member(body, config.value, "toolChoice")? {
            let value = llm::parse(body, &choice.value)?;
            let forced = value
                .get("tool")
                .and_then(|t| t.get("name")?.as_str().map(str::to_owned));
            if forced.is_some_and(|n| llm::is_denied(denied, &n)) {
                edits.replace(choice.value, r#"{"auto":{}}"#);
            }
        }
        edits.apply(body).map(Some)
    }
}

/// `/model/{modelId}/converse[-stream]` → (modelId, operation).
fn model_from_path(path: &str) -> Result<(String, &str), ExtractError> {
    let rest = path
        .split_once("/model/")
        .map(|(_, rest)| rest)
        .ok_or_else(|| llm::invalid("Bedrock path must be /model/{modelId}/converse"))?;
    match rest.rsplit_once('/') {
        Some((model, op @ ("converse" | "converse-stream")))
            if !model.is_empty() && !model.contains('/') =>
        {
            Ok((model.to_owned(), op))
        }
        _ => Err(llm::invalid(
            "unsupported Bedrock operation: only converse and converse-stream are judged",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::extract::test_support;

    fn extract(path: &str, body: Value) -> Result<LlmRequest, ExtractError> {
        test_support::read(&BedrockConverse, path, &body)
    }

    #[test]
    fn model_from_the_path_and_tool_specs() {
        let r = extract(
            "/model/anthropic.claude-3-5-sonnet-20241022-v2:0/converse-stream",
            json!({"messages": [], "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {}}}}, {"cachePoint": {"type": "default"}}],
                    "toolChoice": {"tool": {"name": "get_weather"}}}}),
        )
        .unwrap();
        assert_eq!(r.model, "anthropic.claude-3-5-sonnet-20241022-v2:0");
        assert!(r.stream);
        assert_eq!(r.tools, [DeclaredTool::new("get_weather", "function")]);
        assert_eq!(r.forced_tools, ["get_weather"]);
        assert!(
            extract("/model/m/invoke", json!({})).is_err(),
            "InvokeModel is not judged"
        );
        assert!(extract("/model//converse", json!({})).is_err());
        assert!(
            extract(
                "/model/m/converse",
                json!({"toolConfig": {"tools": [{"other": 1}]}})
            )
            .is_err()
        );
    }

    #[test]
    fn strips_specs_and_the_whole_config_when_empty() {
        let body = r#"{"messages":[],"toolConfig":{"tools":[{"toolSpec":{"name":"a"}},{"toolSpec":{"name":"b"}}],"toolChoice":{"tool":{"name":"b"}}},"inferenceConfig":{"temperature":0.50}}"#;
        let strip = |d: &[&str]| test_support::strip(&BedrockConverse, body, d);
        assert_eq!(
            strip(&["b"]).unwrap(),
            r#"{"messages":[],"toolConfig":{"tools":[{"toolSpec":{"name":"a"}}],"toolChoice":{"auto":{}}},"inferenceConfig":{"temperature":0.50}}"#
        );
        assert_eq!(
            strip(&["a", "b"]).unwrap(),
            r#"{"messages":[],"inferenceConfig":{"temperature":0.50}}"#
        );
        assert_eq!(strip(&["z"]), None);
    }
}
