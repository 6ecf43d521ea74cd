//! A remembered tool array never changes a reading: a body made from a primer (an OpenAI Chat,
//! Anthropic Messages, OpenAI Responses or Gemini request declaring a large `tools` array) by the
//! fuzzer's edits is read with nothing remembered, then again with the primer's array remembered,
//! and both readings must agree (the same request, or the same refusal). The edits land anywhere: in the array (where
//! the memory must not match), before it and after it (where it must match and the rest still be
//! checked).
#![no_main]

use std::sync::LazyLock;

use agent_authz::extract::known_tools::forget_all;
use agent_authz::extract::anthropic_messages::AnthropicMessages;
use agent_authz::extract::gemini::Gemini;
use agent_authz::extract::{HttpRequest, RequestFormat, openai_chat, openai_responses};
use agent_authz::headers::Headers;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn tools(names: &[&str]) -> Value {
    names
        .iter()
        .map(|name| {
            json!({"type": "function", "function": {"name": name,
                "description": format!("Looks {name} up. \"Quoted\" \u{e9} \u{2603}"),
                "parameters": {"type": "object", "properties": {
                    "ticket_id": {"type": "string", "pattern": "^T-[0-9]+$"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 1.5e0}},
                    "required": ["ticket_id"]}}})
        })
        .collect()
}

/// Anthropic Messages tools: custom ones with schemas, a server tool, an MCP toolset whose
/// per-tool configs are judged by key.
fn anthropic_tools(names: &[&str]) -> Value {
    let mut tools: Vec<Value> = names
        .iter()
        .map(|name| {
            json!({"name": name, "description": format!("Looks {name} up. \"Quoted\" \u{e9}"),
                "input_schema": {"type": "object", "properties": {
                    "ticket_id": {"type": "string", "pattern": "^T-[0-9]+$"}}}})
        })
        .collect();
    tools.push(json!({"type": "web_search_20250305", "name": "web_search"}));
    tools.push(json!({"type": "mcp_toolset", "mcp_server_name": "crm", "default_config": {"enabled": false},
        "configs": {"lookup_customer": {"enabled": true}, "refund": {"enabled": true}}}));
    Value::Array(tools)
}

/// Which dialect reads a primer and the bodies made from it.
#[derive(Clone, Copy)]
enum Dialect {
    Chat,
    Messages,
    Responses,
    Gemini,
}

static PRIMERS: LazyLock<Vec<(Vec<u8>, Dialect)>> = LazyLock::new(|| {
    let names = ["lookup_ticket", "search_kb", "get_weather", "refund"];
    let chat = vec![
        serde_json::to_vec(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "tools": tools(&names), "tool_choice": "auto"}))
        .unwrap(),
        serde_json::to_vec_pretty(&json!({"tools": tools(&names[1..]), "model": "m",
            "functions": [{"name": "run_shell"}], "messages": []}))
        .unwrap(),
        format!(
            r#"{{"tools" : [ {{"type":"custom","custom":{{"name":"gr\u0065p","format":{{"type":"grammar","definition":"{}"}}}}}},{{"type":"function","function":{{"name":"a"}}}} ] , "model":"m", "tool_choice":{{"type":"function","function":{{"name":"a"}}}}}}"#,
            "x".repeat(600)
        )
        .into_bytes(),
    ];
    let messages = vec![
        serde_json::to_vec(&json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}], "tools": anthropic_tools(&names),
            "tool_choice": {"type": "tool", "name": "search_kb"},
            "mcp_servers": [{"type": "url", "url": "https://crm.example/mcp", "name": "crm"},
                {"type": "url", "url": "https://docs.example/mcp", "name": "docs"}]}))
        .unwrap(),
        serde_json::to_vec_pretty(&json!({"tools": anthropic_tools(&names[1..]), "model": "m",
            "max_tokens": 1, "messages": []}))
        .unwrap(),
    ];
    let schema = json!({"type": "object", "properties": {"q": {"type": "string", "description": "\u{2603} \"q\""}}});
    let functions: Vec<Value> = names
        .iter()
        .map(|n| json!({"type": "function", "name": n, "description": "Looks it up. ".repeat(4), "parameters": schema}))
        .chain([json!({"type": "mcp", "server_label": "gh", "server_url": "https://gh.example/mcp",
            "allowed_tools": ["search", "get_issue"]}), json!({"type": "namespace", "name": "crm",
            "tools": [{"type": "function", "name": "lookup_customer"}]})])
        .collect();
    let responses = serde_json::to_vec(&json!({"model": "gpt-4.1", "input": "hi", "tools": functions,
        "tool_choice": {"type": "function", "name": "search_kb"}}))
    .unwrap();
    let declarations: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "description": "Looks it up. ".repeat(4), "parameters": schema}))
        .collect();
    let gemini = serde_json::to_vec(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "tools": [{"functionDeclarations": declarations}, {"googleSearch": {}}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["refund"]}}}))
    .unwrap();
    chat.into_iter()
        .map(|p| (p, Dialect::Chat))
        .chain(messages.into_iter().map(|p| (p, Dialect::Messages)))
        .chain([(responses, Dialect::Responses), (gemini, Dialect::Gemini)])
        .collect()
});

fn read(body: &[u8], dialect: Dialect) -> Result<String, String> {
    let headers = Headers::from_iter([("content-type".to_owned(), "application/json".to_owned())]);
    let request = |path| HttpRequest { method: "POST", path, headers: &headers, body };
    let read = match dialect {
        Dialect::Chat => openai_chat::read(&request("/v1/chat/completions"), None).map(|r| format!("{r:?}")),
        Dialect::Messages => AnthropicMessages.extract(&request("/v1/messages")).map(|r| format!("{r:?}")),
        Dialect::Responses => openai_responses::read(&request("/v1/responses"), None).map(|r| format!("{r:?}")),
        Dialect::Gemini => Gemini
            .extract(&request("/v1beta/models/gemini-2.5-flash:generateContent"))
            .map(|r| format!("{r:?}")),
    };
    read.map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, edits)) = data.split_first() else { return };
    let (primer, dialect) = &PRIMERS[usize::from(which) % PRIMERS.len()];
    let dialect = *dialect;
    let mut body = primer.clone();
    // Each edit: a position (two bytes), an operation, a byte.
    for edit in edits.chunks_exact(4) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % (body.len() + 1);
        match edit[2] % 4 {
            0 if at < body.len() => body[at] = edit[3],
            1 => body.insert(at, edit[3]),
            2 if at < body.len() => {
                body.remove(at);
            }
            3 => body.truncate(at),
            _ => {}
        }
    }
    forget_all();
    let cold = read(&body, dialect);
    forget_all();
    read(primer, dialect).expect("the primer reads");
    let warm = read(&body, dialect);
    assert_eq!(cold, warm, "primed and cold readings differ");
});
