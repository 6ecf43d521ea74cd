//! A remembered tool array never changes a reading: a body made from a primer (an OpenAI Chat or
//! Anthropic Messages request declaring a large `tools` array) by the fuzzer's edits is read with
//! nothing remembered, then again with the primer's array remembered, and both readings must
//! agree (the same request, or the same refusal). The edits land anywhere: in the array (where
//! the memory must not match), before it and after it (where it must match and the rest still be
//! checked).
#![no_main]

use std::sync::LazyLock;

use agent_authz::extract::known_tools::forget_all;
use agent_authz::extract::anthropic_messages::AnthropicMessages;
use agent_authz::extract::{HttpRequest, RequestFormat, openai_chat};
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

/// (primer, read by Anthropic Messages)
static PRIMERS: LazyLock<Vec<(Vec<u8>, bool)>> = LazyLock::new(|| {
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
    chat.into_iter().map(|p| (p, false)).chain(messages.into_iter().map(|p| (p, true))).collect()
});

fn read(body: &[u8], anthropic: bool) -> Result<String, String> {
    let headers = Headers::from_iter([("content-type".to_owned(), "application/json".to_owned())]);
    if anthropic {
        let request = HttpRequest { method: "POST", path: "/v1/messages", headers: &headers, body };
        return AnthropicMessages.extract(&request).map(|r| format!("{r:?}")).map_err(|e| e.to_string());
    }
    let request = HttpRequest { method: "POST", path: "/v1/chat/completions", headers: &headers, body };
    openai_chat::read(&request, None).map(|r| format!("{r:?}")).map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, edits)) = data.split_first() else { return };
    let (primer, anthropic) = &PRIMERS[usize::from(which) % PRIMERS.len()];
    let anthropic = *anthropic;
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
    let cold = read(&body, anthropic);
    forget_all();
    read(primer, anthropic).expect("the primer reads");
    let warm = read(&body, anthropic);
    assert_eq!(cold, warm, "primed and cold readings differ");
});
