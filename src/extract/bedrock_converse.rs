//! Amazon Bedrock Runtime: Converse (`POST /model/{modelId}/converse` and `/converse-stream`)
//! and InvokeModel (`/model/{modelId}/invoke` and `/invoke-with-response-stream`). The model is
//! the path's; Converse declares tools in `toolConfig.tools[].toolSpec.name` and forces one
//! with `toolConfig.toolChoice` (`{auto:{}}`, `{any:{}}`, `{tool:{name}}`).
//!
//! InvokeModel carries the provider's own body. An Anthropic body (an Anthropic Messages
//! request without `model`: the model id names Anthropic, or the body has
//! `anthropic_version`) is read as Anthropic Messages. Other providers' bodies are judged on the
//! model alone, and refused when they declare tools: a tool list we cannot read would reach the
//! model unjudged.
//!
//! Model ids are percent-decoded exactly once: SDKs send `anthropic.claude-3-haiku-20240307-v1:0`
//! as `...-v1%3A0`, and an ARN's `/` as `%2F`. Only those two escapes are accepted, and only in
//! the model segment (see [`mask_model`]): every other escape, and a decoded id that is not a
//! plain model id or ARN, is refused, so no path is routed on one reading and judged on another.
//!
//! Stripping removes denied `toolSpec`s; a `toolChoice` forcing one becomes `{"auto":{}}`;
//! with no tool left, `toolConfig` goes (Bedrock rejects a toolConfig without tools). An
//! Anthropic InvokeModel body is stripped as Anthropic Messages.

use serde_json::{Map, Value};

use super::llm::{self, Tools};
use super::{
    AgentRequest, DeclaredTool, ExtractError, HttpRequest, LlmRequest, Reading, RequestFormat,
    anthropic_messages,
};
use crate::rewrite::json_edit::{self, EditError, Edits};

/// What Converse extraction reads (the model is in the path): tool schemas and descriptions
/// are never judged. `tools` is read only to refuse it (it is not a Converse field).
pub const READING: Reading<'static> = Reading {
    members: &["toolConfig", "tools", "additionalModelRequestFields"],
    unread: &["inputSchema", "input_schema", "description"],
    // `additionalModelRequestFields.tools` are Anthropic declarations: `mcp_toolset` configs
    // are keyed by tool name.
    judges_keys: true,
};

/// The top-level members through which the providers Bedrock serves declare tools
/// (Cohere, Mistral, AI21, OpenAI: `tools`; Amazon Nova: `toolConfig`; ...).
const TOOL_MEMBERS: [&str; 6] = [
    "tools",
    "toolConfig",
    "tool_config",
    "tool_choice",
    "toolChoice",
    "functions",
];

/// What is read of the body of a provider we do not read: whether it declares tools.
pub const OTHER_READING: Reading<'static> = Reading {
    members: &TOOL_MEMBERS,
    unread: &["input_schema", "inputSchema", "parameters", "description"],
    judges_keys: false,
};

/// The path prefix before the model id.
const MODEL_PREFIX: &str = "/model/";

/// Amazon Bedrock Runtime (Converse and InvokeModel).
pub struct BedrockConverse;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Converse,
    ConverseStream,
    Invoke,
    InvokeStream,
}

impl RequestFormat for BedrockConverse {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        let (model, operation) = model_from_path(request.path)?;
        let llm = match operation {
            Operation::Converse | Operation::ConverseStream => {
                converse(request, model, operation == Operation::ConverseStream)?
            }
            Operation::Invoke | Operation::InvokeStream => {
                invoke(request, model, operation == Operation::InvokeStream)?
            }
        };
        Ok(AgentRequest::Llm(llm))
    }

    /// Converse bodies declare tools in `toolConfig`, Anthropic InvokeModel bodies in `tools`
    /// (extraction refuses a body with the other dialect's member), so both are stripped.
    fn strip_tools(&self, body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        let converse = strip_converse(body, denied)?;
        let after = converse.as_deref().unwrap_or(body);
        Ok(anthropic_messages::strip(after, denied)?.or(converse))
    }
}

fn converse(
    request: &HttpRequest<'_>,
    model: String,
    stream: bool,
) -> Result<LlmRequest, ExtractError> {
    let body = &llm::fields(request, &READING)?;
    if body.contains_key("tools") {
        return Err(llm::invalid(
            "`tools` is not a Converse field: declare tools in toolConfig.tools",
        ));
    }
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
    for tool in additional_tools(body)? {
        tools.add(tool);
    }
    Ok(LlmRequest {
        model,
        tools: tools.0.into(),
        forced_tools,
        stream,
    })
}

/// Tools passed to the model through `additionalModelRequestFields` (how Anthropic's
/// computer-use and other typed tools reach Claude on Converse): `tools[]` entries are read as
/// Anthropic declarations and judged; the body editor does not cut them, so a denied one
/// refuses the request. Any other tool member there is refused: it would reach the model
/// unjudged.
fn additional_tools(body: &Map<String, Value>) -> Result<Vec<DeclaredTool>, ExtractError> {
    let Some(extra) = body.get("additionalModelRequestFields") else {
        return Ok(Vec::new());
    };
    let Some(extra) = extra.as_object() else {
        return Err(llm::invalid(
            "additionalModelRequestFields must be an object",
        ));
    };
    if let Some(member) = TOOL_MEMBERS
        .iter()
        .chain(["mcp_servers"].iter())
        .find(|m| **m != "tools" && extra.contains_key(**m))
    {
        return Err(llm::invalid(&format!(
            "additionalModelRequestFields.{member} is not read by agent-authz: declare tools in \
             toolConfig.tools (or additionalModelRequestFields.tools)"
        )));
    }
    let mut tools = Tools::default();
    llm::add_declared(&mut tools, extra, "tools", anthropic_messages::declared)
        .map_err(|e| llm::invalid(&format!("additionalModelRequestFields.{e}")))?;
    Ok(tools
        .0
        .into_iter()
        .map(DeclaredTool::unstrippable)
        .collect())
}

/// InvokeModel: an Anthropic body is read as Anthropic Messages; any other provider's body is
/// judged on the model, and refused if it declares tools.
fn invoke(
    request: &HttpRequest<'_>,
    model: String,
    stream: bool,
) -> Result<LlmRequest, ExtractError> {
    // InvokeModel's `contentType` defaults to JSON, and boto3 sends no header for the default.
    let (headers, with_default_type);
    let request = if request.headers.contains_key("content-type") {
        request
    } else {
        let mut typed = request.headers.clone();
        typed.insert("content-type".to_owned(), "application/json".to_owned());
        headers = typed;
        with_default_type = HttpRequest {
            headers: &headers,
            ..*request
        };
        &with_default_type
    };
    let anthropic_body = {
        let mut members = anthropic_messages::READING.members.to_vec();
        members.extend(["anthropic_version", "toolConfig"]);
        llm::fields(
            request,
            &Reading {
                members: &members,
                ..anthropic_messages::READING
            },
        )?
    };
    if is_anthropic(&model, &anthropic_body) {
        for member in ["model", "toolConfig"] {
            if anthropic_body.contains_key(member) {
                return Err(llm::invalid(&format!(
                    "an Anthropic InvokeModel body has no `{member}` (the model is the path's)"
                )));
            }
        }
        let mut llm = anthropic_messages::read(&anthropic_body, model)?;
        llm.stream = stream;
        return Ok(llm);
    }
    let body = llm::fields(request, &OTHER_READING)?;
    if let Some(member) = TOOL_MEMBERS.iter().find(|m| body.contains_key(**m)) {
        return Err(llm::invalid(&format!(
            "InvokeModel body for {model} declares tools (`{member}`), and only Anthropic \
             InvokeModel bodies are read: use Converse to declare tools to this model"
        )));
    }
    Ok(LlmRequest {
        model,
        tools: Vec::new().into(),
        forced_tools: Vec::new(),
        stream,
    })
}

/// An Anthropic model (`anthropic.claude-...`, an inference profile `us.anthropic.claude-...`,
/// or an ARN ending in either), or a body that says it is one.
fn is_anthropic(model: &str, body: &Map<String, Value>) -> bool {
    let id = model.rsplit('/').next().unwrap_or(model);
    body.contains_key("anthropic_version") || id.split('.').take(2).any(|p| p == "anthropic")
}

fn strip_converse(body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
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

/// The path with its model segment replaced by `m`, for the normalisation check: the model
/// segment is the one place a Bedrock path may hold (two) percent-escapes, and
/// [`model_from_path`] decodes and checks it. `None` when the path has no model segment.
pub fn mask_model(path: &str) -> Option<String> {
    let (before, rest) = path.split_once(MODEL_PREFIX)?;
    let (segment, after) = rest.split_once('/').unwrap_or((rest, ""));
    if segment.is_empty() {
        return None;
    }
    let tail = if rest.contains('/') { "/" } else { "" };
    Some(format!("{before}{MODEL_PREFIX}m{tail}{after}"))
}

/// `/model/{modelId}/{operation}` → (modelId decoded, operation).
fn model_from_path(path: &str) -> Result<(String, Operation), ExtractError> {
    let rest = path
        .split_once(MODEL_PREFIX)
        .map(|(_, rest)| rest)
        .ok_or_else(|| llm::invalid("Bedrock path must be /model/{modelId}/{operation}"))?;
    let Some((segment, operation)) = rest.split_once('/') else {
        return Err(llm::invalid(
            "Bedrock path must be /model/{modelId}/{operation}",
        ));
    };
    let operation = match operation {
        "converse" => Operation::Converse,
        "converse-stream" => Operation::ConverseStream,
        "invoke" => Operation::Invoke,
        "invoke-with-response-stream" => Operation::InvokeStream,
        _ => {
            return Err(llm::invalid(
                "unsupported Bedrock operation: converse, converse-stream, invoke and \
                 invoke-with-response-stream are judged",
            ));
        }
    };
    Ok((decode_model_id(segment)?, operation))
}

/// Decodes the model segment once. Only `%3A` (`:`) and `%2F` (`/`) are escapes a model id or
/// ARN needs; the decoded id must be a model id or ARN (`A-Z a-z 0-9 . - _ : /`, no empty,
/// `.` or `..` part between slashes), so it reads the same to every party that decodes it.
fn decode_model_id(segment: &str) -> Result<String, ExtractError> {
    let bad = |why: &str| llm::invalid(&format!("Bedrock model id {segment:?}: {why}"));
    let mut model = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some((plain, escaped)) = rest.split_once('%') {
        model.push_str(plain);
        let (code, after) = escaped
            .split_at_checked(2)
            .ok_or_else(|| bad("truncated percent-escape"))?;
        model.push(match code.to_ascii_uppercase().as_str() {
            "3A" => ':',
            "2F" => '/',
            _ => return Err(bad("only %3A and %2F may be percent-encoded")),
        });
        rest = after;
    }
    model.push_str(rest);
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/');
    if model.is_empty() || model.len() > 2048 || !model.chars().all(allowed) {
        return Err(bad("not a model id or ARN"));
    }
    if model
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(bad("empty or dot segment"));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::extract::test_support;

    fn extract(path: &str, body: Value) -> Result<LlmRequest, ExtractError> {
        test_support::read(&BedrockConverse, path, &body)
    }

    fn converse_of(body: Value) -> Result<LlmRequest, ExtractError> {
        extract(
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            body,
        )
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
        assert_eq!(*r.tools, [DeclaredTool::new("get_weather", "function")]);
        assert_eq!(r.forced_tools, ["get_weather"]);
        assert!(extract("/model/m/retrieve", json!({})).is_err());
        assert!(extract("/model//converse", json!({})).is_err());
        assert!(extract("/model/a/b/converse", json!({})).is_err());
        assert!(
            extract(
                "/model/m/converse",
                json!({"toolConfig": {"tools": [{"other": 1}]}})
            )
            .is_err()
        );
        assert!(
            extract("/model/m/converse", json!({"tools": [{"name": "x"}]})).is_err(),
            "an Anthropic-style tool list on Converse would go unjudged"
        );
    }

    #[test]
    fn model_ids_are_decoded_exactly_once() {
        let model = |path: &str| extract(path, json!({"messages": []})).map(|r| r.model);
        assert_eq!(
            model("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse").unwrap(),
            "anthropic.claude-3-haiku-20240307-v1:0"
        );
        assert_eq!(
            model("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2fus.anthropic.claude-3-haiku-20240307-v1%3A0/converse").unwrap(),
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"
        );
        for bad in [
            "/model/a%253A0/converse", // double-encoded: decoded once it still holds %
            "/model/a%41/converse",    // an escape no model id needs
            "/model/a%3/converse",     // truncated
            "/model/a%2F..%2Fb/converse", // dot segment once decoded
            "/model/%2Fa/converse",    // empty part once decoded
            "/model/a%2F%2Fb/converse",
            "/model/a%20b/converse",
        ] {
            assert!(model(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_model_segment_is_masked() {
        assert_eq!(
            mask_model("/model/a%3A0/converse").as_deref(),
            Some("/model/m/converse")
        );
        assert_eq!(
            mask_model("/bedrock/model/a%3A0/x%2F").as_deref(),
            Some("/bedrock/model/m/x%2F")
        );
        assert_eq!(mask_model("/model//converse"), None);
        assert_eq!(mask_model("/v1/chat"), None);
    }

    #[test]
    fn invoke_model_reads_anthropic_bodies_and_refuses_unread_tools() {
        let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "messages": [],
                          "tools": [{"name": "get_weather", "input_schema": {}}, {"name": "run_shell", "input_schema": {}}],
                          "tool_choice": {"type": "tool", "name": "run_shell"}});
        let r = extract(
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream",
            body.clone(),
        )
        .unwrap();
        assert_eq!(r.model, "anthropic.claude-3-haiku-20240307-v1:0");
        assert!(r.stream);
        let names: Vec<_> = r.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "run_shell"]);
        assert_eq!(r.forced_tools, ["run_shell"]);
        // A provisioned model's ARN does not name the provider; the body does.
        let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Aprovisioned-model%2Fabc/invoke";
        assert_eq!(extract(arn, body.clone()).unwrap().tools.len(), 2);
        let mut with_model = body.clone();
        with_model["model"] = json!("claude-opus-4-1");
        assert!(extract("/model/anthropic.claude-3-haiku/invoke", with_model).is_err());
        let r = extract(
            "/model/meta.llama3-70b-instruct-v1%3A0/invoke",
            json!({"prompt": "hi"}),
        )
        .unwrap();
        assert_eq!(
            (r.model.as_str(), r.tools.len()),
            ("meta.llama3-70b-instruct-v1:0", 0)
        );
        for tools in [
            json!({"tools": []}),
            json!({"toolConfig": {}}),
            json!({"tool_choice": "auto"}),
        ] {
            let err = extract("/model/cohere.command-r-v1%3A0/invoke", tools).unwrap_err();
            assert!(err.to_string().contains("declares tools"), "{err}");
        }
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
        let anthropic = r#"{"anthropic_version":"bedrock-2023-05-31","tools":[{"name":"a","input_schema":{}},{"name":"b","input_schema":{}}]}"#;
        assert_eq!(
            test_support::strip(&BedrockConverse, anthropic, &["b"]).unwrap(),
            r#"{"anthropic_version":"bedrock-2023-05-31","tools":[{"name":"a","input_schema":{}}]}"#
        );
    }

    #[test]
    fn tools_in_additional_model_request_fields_are_judged_not_passed() {
        let r = converse_of(json!({
            "messages": [],
            "toolConfig": {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {}}}}]},
            "additionalModelRequestFields": {
                "tools": [{"type": "computer_20250124", "name": "computer", "display_width_px": 1024}],
                "anthropic_beta": ["computer-use-2025-01-24"]
            }
        }))
        .unwrap();
        let keys: Vec<_> = r.tools.iter().map(|t| (t.key(), t.strippable)).collect();
        assert_eq!(keys, [("lookup".into(), true), ("computer".into(), false)]);
        for refused in [
            json!({"messages": [], "additionalModelRequestFields": {"tool_choice": {"type": "any"}}}),
            json!({"messages": [], "additionalModelRequestFields": {"mcp_servers": []}}),
            json!({"messages": [], "additionalModelRequestFields": "tools"}),
        ] {
            assert!(converse_of(refused).is_err());
        }
    }
}
