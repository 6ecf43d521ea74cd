//! OpenAI Responses and Gemini remember their `tools` arrays as OpenAI Chat does: a resent
//! array is known and read alike, no reading changes with an array remembered (MCP tools with
//! their allowed tools, namespaces, built-in tools), and an array one dialect read is never known
//! to another that reads the same bytes differently.

use serde_json::{Value, json};

use super::tests::{mutations_read_alike, same_primed_by};
use super::{forget_all, hits, remembered};
use crate::extract::gemini::Gemini;
use crate::extract::openai_responses::OpenaiResponses;
use crate::extract::test_support::read_bytes;
use crate::extract::{ExtractError, LlmRequest};

fn responses(body: &[u8]) -> Result<LlmRequest, ExtractError> {
    read_bytes(&OpenaiResponses, "/v1/responses", body)
}

fn gemini(body: &[u8]) -> Result<LlmRequest, ExtractError> {
    read_bytes(
        &Gemini,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        body,
    )
}

fn schema(name: &str) -> Value {
    json!({"type": "object", "description": format!("{name}'s input. \"Quoted\" \u{e9}"),
        "properties": {"ticket_id": {"type": "string", "pattern": "^T-[0-9]+$"}},
        "required": ["ticket_id"]})
}

/// Responses: function tools, a namespace, an MCP server narrowed to two tools, a built-in.
fn responses_body(names: &[&str], input: &str) -> Vec<u8> {
    let mut tools: Vec<Value> = names
        .iter()
        .map(|n| json!({"type": "function", "name": n, "description": "Looks it up. ".repeat(4), "parameters": schema(n)}))
        .collect();
    tools.push(json!({"type": "namespace", "name": "crm", "tools": [{"type": "function", "name": "lookup_customer"}]}));
    tools.push(
        json!({"type": "mcp", "server_label": "github", "server_url": "https://gh.example/mcp",
        "allowed_tools": ["search", "get_issue"], "require_approval": "never"}),
    );
    tools.push(json!({"type": "web_search"}));
    serde_json::to_vec(&json!({"model": "gpt-4.1", "input": input, "tools": tools,
        "tool_choice": {"type": "function", "name": names[0]}}))
    .unwrap()
}

/// Gemini: function declarations (with unread `parameters`) and a built-in tool.
fn gemini_body(names: &[&str], text: &str) -> Vec<u8> {
    let declarations: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "description": "Looks it up. ".repeat(4), "parameters": schema(n)}))
        .collect();
    serde_json::to_vec(
        &json!({"contents": [{"role": "user", "parts": [{"text": text}]}],
        "tools": [{"functionDeclarations": declarations}, {"googleSearch": {}}],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}}),
    )
    .unwrap()
}

const NAMES: [&str; 4] = ["lookup_ticket", "search_kb", "get_weather", "close_ticket"];

type Dialect = (
    fn(&[u8]) -> Result<LlmRequest, ExtractError>,
    fn(&[&str], &str) -> Vec<u8>,
);
const DIALECTS: [(&str, Dialect); 2] = [
    ("responses", (responses, responses_body)),
    ("gemini", (gemini, gemini_body)),
];

#[test]
fn an_agent_loop_resending_its_tools_is_known_and_read_alike() {
    for (dialect, (read, body)) in DIALECTS {
        forget_all();
        let first = read(&body(&NAMES, "turn one")).unwrap();
        assert_eq!(remembered(), 1, "{dialect}");
        let before = hits();
        let second = read(&body(&NAMES, "turn one, answer, turn two")).unwrap();
        assert_eq!(hits(), before + 1, "{dialect}: the array was known");
        assert_eq!(second, first, "{dialect}");
        assert!(
            second.tools.len() >= NAMES.len(),
            "{dialect}: {:?}",
            second.tools
        );
        // One name one byte off: read afresh, the new name read.
        let renamed = String::from_utf8(body(&NAMES, "turn three"))
            .unwrap()
            .replacen("\"search_kb\"", "\"search_kc\"", 1);
        assert!(!same_primed_by(
            read,
            &body(&NAMES, "x"),
            renamed.as_bytes()
        ));
        let read_again = read(renamed.as_bytes()).unwrap();
        assert!(
            read_again.tools.iter().any(|t| t.name == "search_kc"),
            "{dialect}"
        );
    }
}

#[test]
fn a_remembered_array_never_changes_a_reading() {
    for (seed, (dialect, (read, body))) in DIALECTS.into_iter().enumerate() {
        let primers = [body(&NAMES, "hi"), body(&NAMES[1..], "")];
        let (checked, known, accepted) =
            mutations_read_alike(read, &primers, 0x51ed_270b_27c3_d5a1 + seed as u64);
        assert_eq!(checked, 600, "{dialect}");
        assert!(known > 150, "{dialect}: known {known} of {checked}");
        assert!(
            accepted > 100,
            "{dialect}: accepted {accepted} of {checked}"
        );
    }
}

#[test]
fn an_array_chat_read_is_not_known_to_responses() {
    // Entries both dialects accept, read as different tools: Chat names `function.name`,
    // Responses the entry's own `name`.
    let entry = |i: usize| {
        json!({"type": "function", "name": format!("responses_{i}"),
            "function": {"name": format!("chat_{i}")}, "description": "x".repeat(100)})
    };
    let array = Value::Array((0..6).map(entry).collect());
    let body =
        serde_json::to_vec(&json!({"model": "m", "messages": [], "input": "", "tools": array}))
            .unwrap();
    let chat = |body: &[u8]| super::tests::read(body).unwrap();
    forget_all();
    assert_eq!(chat(&body).tools[0].name, "chat_0");
    let before = hits();
    assert_eq!(responses(&body).unwrap().tools[0].name, "responses_0");
    assert_eq!(hits(), before, "Chat's array is not Responses'");
    assert_eq!(responses(&body).unwrap().tools[0].name, "responses_0");
    assert_eq!(hits(), before + 1, "Responses knows its own reading");
}
