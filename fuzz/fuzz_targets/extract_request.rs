//! Every body extractor (all formats): arbitrary bytes and paths never panic; they yield a
//! request or a typed refusal.
#![no_main]

use agent_authz::config::Format;
use agent_authz::extract::{HttpRequest, extract};
use agent_authz::headers::Headers;
use libfuzzer_sys::fuzz_target;

const PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1beta/models/gemini-2.5-flash:generateContent",
    "/model/anthropic.claude-3-haiku/converse",
    "/mcp",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let format = Format::ALL[usize::from(selector) % Format::ALL.len()];
    let path = PATHS[usize::from(selector >> 4) % PATHS.len()];
    let mut headers = Headers::from_iter([("content-type".to_owned(), "application/json".to_owned())]);
    if selector & 0x80 != 0 {
        headers.insert("mcp-protocol-version".to_owned(), "2026-07-28".to_owned());
        headers.insert("mcp-method".to_owned(), "tools/call".to_owned());
    }
    let method = if selector & 0x40 != 0 { "GET" } else { "POST" };
    let _ = extract(format, &HttpRequest { method, path, headers: &headers, body });
});
