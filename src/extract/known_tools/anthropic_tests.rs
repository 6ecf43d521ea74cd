//! Anthropic Messages remembers its `tools` arrays as OpenAI Chat does: a resent array is known
//! and read alike, and no reading changes with an array remembered, including an MCP toolset
//! whose per-tool `configs` are judged by key and the MCP connector's servers beside the array.

use serde_json::{Value, json};

use super::tests::{mutations_read_alike, same_primed_by};
use super::{forget_all, hits, remembered};
use crate::extract::anthropic_messages::AnthropicMessages;
use crate::extract::test_support::read_bytes;
use crate::extract::{ExtractError, LlmRequest};

fn read(body: &[u8]) -> Result<LlmRequest, ExtractError> {
    read_bytes(&AnthropicMessages, "/v1/messages", body)
}

/// Custom tools with schemas (well over the remembering threshold), a server tool and an MCP
/// toolset enabling two of its tools by name.
fn tools(names: &[&str]) -> Value {
    let mut tools: Vec<Value> = names
        .iter()
        .map(|name| {
            json!({"name": name, "description": format!("Looks {name} up. \"Quoted\" \u{e9}"),
                "input_schema": {"type": "object", "properties": {
                    "ticket_id": {"type": "string", "pattern": "^T-[0-9]+$"}},
                    "required": ["ticket_id"]}})
        })
        .collect();
    tools.push(json!({"type": "web_search_20250305", "name": "web_search", "max_uses": 5}));
    tools.push(json!({"type": "mcp_toolset", "mcp_server_name": "crm",
        "default_config": {"enabled": false},
        "configs": {"lookup_customer": {"enabled": true}, "refund": {"enabled": true}}}));
    Value::Array(tools)
}

const NAMES: [&str; 4] = ["lookup_ticket", "search_kb", "get_weather", "close_ticket"];

fn messages(tools: &Value, user: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": user}],
        "tools": tools,
        "tool_choice": {"type": "auto"},
        "mcp_servers": [
            {"type": "url", "url": "https://crm.example/mcp", "name": "crm"},
            {"type": "url", "url": "https://docs.example/mcp", "name": "docs",
             "tool_configuration": {"allowed_tools": ["search_docs"]}},
        ],
    }))
    .unwrap()
}

fn keys(r: &LlmRequest) -> Vec<String> {
    r.tools.iter().map(|t| t.key()).collect()
}

#[test]
fn an_agent_loop_resending_its_tools_is_known_and_read_alike() {
    forget_all();
    let array = tools(&NAMES);
    let first = read(&messages(&array, "turn one")).unwrap();
    assert_eq!(remembered(), 1);
    let before = hits();
    let second = read(&messages(&array, "turn one, answer, turn two")).unwrap();
    assert_eq!(hits(), before + 1, "the array was known");
    assert_eq!(second, first);
    // The toolset's tools and the connector's server outside the array are read either way.
    let keys = keys(&second);
    for expected in [
        "lookup_ticket",
        "web_search",
        "crm/lookup_customer",
        "crm/refund",
        "docs/search_docs",
    ] {
        assert!(keys.iter().any(|k| k == expected), "{expected} in {keys:?}");
    }
}

#[test]
fn a_remembered_array_never_changes_a_reading() {
    let primers = [
        messages(&tools(&NAMES), "hi"),
        serde_json::to_vec_pretty(
            &json!({"model": "m", "max_tokens": 1, "tools": tools(&NAMES[1..]),
            "messages": []}),
        )
        .unwrap(),
    ];
    let (checked, known, accepted) = mutations_read_alike(read, &primers, 0x9e37_79b9_7f4a_7c15);
    assert_eq!(checked, 600);
    assert!(known > 150, "known {known} of {checked}");
    assert!(accepted > 100, "accepted {accepted} of {checked}");
}

#[test]
fn a_toolset_config_key_sent_twice_is_refused_whether_or_not_the_array_is_known() {
    let primer = messages(&tools(&NAMES), "hi");
    let text = String::from_utf8(primer.clone()).unwrap();
    // The same array but for a second `refund` config disabling it: which one counts is
    // ambiguous, so the body is refused, primed or not.
    let twice = text.replacen(
        "\"refund\":{\"enabled\":true}",
        "\"refund\":{\"enabled\":true},\"refund\":{\"enabled\":false}",
        1,
    );
    assert_ne!(twice, text);
    assert!(!same_primed_by(read, &primer, twice.as_bytes()));
    assert!(matches!(
        read(twice.as_bytes()),
        Err(ExtractError::DuplicateKey(_))
    ));
}

#[test]
fn an_array_one_dialect_read_is_not_known_to_the_other() {
    // Entries both dialects accept, read as different tools: OpenAI Chat names
    // `function.name`, Anthropic the entry's own `name`.
    let entry = |i: usize| {
        json!({"type": "function", "name": format!("anthropic_{i}"),
            "function": {"name": format!("openai_{i}")}, "input_schema": {"type": "object"},
            "description": "x".repeat(100)})
    };
    let array = Value::Array((0..6).map(entry).collect());
    let body = serde_json::to_vec(&json!({"model": "m", "max_tokens": 1, "messages": [],
        "tools": array}))
    .unwrap();
    let chat = |body: &[u8]| super::tests::read(body).unwrap();
    forget_all();
    assert_eq!(chat(&body).tools[0].name, "openai_0");
    let before = hits();
    assert_eq!(read(&body).unwrap().tools[0].name, "anthropic_0");
    assert_eq!(hits(), before, "OpenAI Chat's array is not Anthropic's");
    assert_eq!(chat(&body).tools[0].name, "openai_0");
    assert_eq!(read(&body).unwrap().tools[0].name, "anthropic_0");
    assert_eq!(hits(), before + 2, "each dialect knows its own reading");
}
