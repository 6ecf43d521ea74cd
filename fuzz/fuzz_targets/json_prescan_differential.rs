//! The body reading's fast path (`strict_json::parse_members`: the prescan, then serde_json on
//! the compacted body) against the full reading it falls back to
//! (`strict_json::parse_members_in_full`), for every dialect's reading: the same members built,
//! or the same refusal with the same message.
#![no_main]

use agent_authz::extract::strict_json::{parse_members, parse_members_in_full};
use agent_authz::extract::{
    Reading, anthropic_messages, bedrock_converse, gemini, openai_chat, openai_responses,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const READINGS: [Reading<'static>; 8] = [
    openai_chat::READING,
    openai_responses::READING,
    anthropic_messages::READING,
    gemini::READING,
    bedrock_converse::READING,
    bedrock_converse::OTHER_READING,
    Reading { members: &["model"], unread: &[], judges_keys: false },
    // Builds more than any dialect, so that more of the body goes through both paths.
    Reading {
        members: &["model", "messages", "tools", "contents", "input", "x", "a", "params"],
        unread: &["content", "description", "parameters"],
        judges_keys: true,
    },
];

fuzz_target!(|data: &[u8]| {
    // The first byte selects the reading (the extract_request corpus uses it likewise).
    let Some((&selector, body)) = data.split_first() else { return };
    let reading = &READINGS[usize::from(selector) % READINGS.len()];
    let full = parse_members_in_full::<Value>(body, reading);
    let fast = parse_members::<Value>(body, reading, &mut String::new());
    match (&full, &fast) {
        (Ok(full), Ok(fast)) => assert_eq!(full, fast, "different members"),
        (Err(full), Err(fast)) => assert_eq!(full.to_string(), fast.to_string()),
        _ => panic!("full {full:?}, fast {fast:?}"),
    }
});
