//! Tool calls in Anthropic Messages answers: `tool_use` content blocks (`input` is the
//! arguments object). `server_tool_use` and `mcp_tool_use` blocks are run by the provider
//! itself, never by the agent, and are not judged here.
//!
//! SSE: `content_block_start` (a `tool_use` block, `input: {}`), `content_block_delta`
//! `input_json_delta` fragments (the input's JSON text), `content_block_stop`; `message_delta`
//! carries `stop_reason: tool_use`. Blocks before the first tool block flow as they arrive;
//! from the first tool block on, content-block events are held (a later block's `index` depends
//! on which calls remain) until `message_delta` (or `message_stop`, or the end), when the calls
//! are judged at once. Released blocks are renumbered without gaps (the SDK accumulates by
//! index); an answer left without calls gains a text block saying why and ends `end_turn`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{AnswerError, Flow, Held, Refusals, ToolCall, as_received, read_json, refusal_text};
use crate::config::DeniedToolCall;
use crate::rewrite::sse::Event;

/// The calls of a JSON answer, in content order.
pub fn json_calls(answer: &Value) -> Vec<ToolCall> {
    blocks(answer)
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| {
            ToolCall::from_object(
                b["name"].as_str().unwrap_or_default(),
                "tool_use",
                &b["input"],
            )
        })
        .collect()
}

fn blocks(answer: &Value) -> &[Value] {
    answer["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Removes the refused `tool_use` blocks; an answer left without calls gains a text block
/// saying why and ends `end_turn`.
pub fn remove_from_json(answer: &mut Value, calls: &[ToolCall], refusals: &Refusals) {
    let Some(content) = answer["content"].as_array_mut() else {
        return;
    };
    let mut at = 0;
    let mut remaining = 0;
    content.retain(|block| {
        if block["type"] != "tool_use" {
            return true;
        }
        at += 1;
        let keep = refusals.get(at - 1).is_some_and(Option::is_none);
        remaining += usize::from(keep);
        keep
    });
    if remaining == 0 && refusals.iter().any(Option::is_some) {
        content.push(json!({"type": "text", "text": refusal_text(calls, refusals)}));
        answer["stop_reason"] = "end_turn".into();
    }
}

/// Anthropic's error object (`denied_tool_call: error`).
pub fn error_body(text: &str) -> Vec<u8> {
    json!({"type": "error", "error": {"type": "permission_error", "message": text}})
        .to_string()
        .into_bytes()
}

#[derive(Debug)]
struct Call {
    index: u64,
    name: String,
    start_input: Value,
    partial: String,
}

/// A streamed Messages answer.
pub struct MessagesStream {
    denied: DeniedToolCall,
    calls: Vec<Call>,
    /// Index of the first tool block: from it on, content-block events are held.
    holding_from: Option<u64>,
    held: Vec<Held>,
    /// The calls were judged (at `message_delta`): content after that is refused, since the
    /// SDK would add a late `input_json_delta` to a call already judged and released.
    judged: bool,
    ended: bool,
}

impl MessagesStream {
    pub fn new(denied: DeniedToolCall) -> Self {
        Self {
            denied,
            calls: Vec::new(),
            holding_from: None,
            held: Vec::new(),
            judged: false,
            ended: false,
        }
    }

    pub fn push(&mut self, event: Event) -> Result<Flow, AnswerError> {
        if self.ended {
            return Ok(Flow::Emit(Vec::new()));
        }
        let Some(data) = event.message()? else {
            return Ok(Flow::Emit(event.raw));
        };
        let Some(chunk) = read_json(&data)? else {
            return Ok(Flow::Emit(event.raw));
        };
        let index = chunk["index"].as_u64();
        let kind = chunk["type"].as_str().unwrap_or_default();
        if self.judged && kind.starts_with("content_block_") {
            return Err(AnswerError::Unjudged(
                "a content block after the answer's calls were judged",
            ));
        }
        match kind {
            "content_block_start" if chunk["content_block"]["type"] == "tool_use" => {
                let block = &chunk["content_block"];
                let at = index.ok_or(AnswerError::Unplaced)?;
                self.calls.push(Call {
                    index: at,
                    name: block["name"].as_str().unwrap_or_default().to_owned(),
                    start_input: block["input"].clone(),
                    partial: String::new(),
                });
                // The lowest tool block so far: a block that arrives out of order must not
                // pass as it arrives because a later-numbered one came first.
                self.holding_from = Some(self.holding_from.map_or(at, |from| from.min(at)));
            }
            "content_block_delta" => {
                if let Some(call) = self.calls.iter_mut().find(|c| Some(c.index) == index) {
                    call.partial
                        .push_str(chunk["delta"]["partial_json"].as_str().unwrap_or_default());
                }
            }
            "message_delta" | "message_stop" if !self.calls.is_empty() => {
                self.held.push(Held { event, chunk });
                return Ok(Flow::Judge);
            }
            _ => {}
        }
        let held = self
            .holding_from
            .is_some_and(|from| index.is_some_and(|i| i >= from));
        if held {
            self.held.push(Held { event, chunk });
            Ok(Flow::Emit(Vec::new()))
        } else {
            Ok(Flow::Emit(event.raw))
        }
    }

    pub fn finish(&mut self) -> Flow {
        if self.calls.is_empty() || self.ended {
            Flow::Emit(Vec::new())
        } else {
            Flow::Judge
        }
    }

    pub fn pending(&self) -> Vec<ToolCall> {
        judged(&self.calls)
    }

    pub fn release(&mut self, refusals: &Refusals) -> Vec<u8> {
        let calls = std::mem::take(&mut self.calls);
        let held = std::mem::take(&mut self.held);
        let from = self.holding_from.take().unwrap_or(0);
        self.judged = true;
        if refusals.iter().all(Option::is_none) {
            return as_received(held);
        }
        let judged = judged(&calls);
        if self.denied == DeniedToolCall::Error && refusals.iter().any(Option::is_some) {
            self.ended = true;
            let mut out = b"event: error\ndata: ".to_vec();
            out.extend(error_body(&refusal_text(&judged, refusals)));
            out.extend_from_slice(b"\n\n");
            return out;
        }
        let refused: BTreeSet<u64> = calls
            .iter()
            .zip(refusals)
            .filter(|(_, r)| r.is_some())
            .map(|(c, _)| c.index)
            .collect();
        let kept = calls.len() - refused.len();
        // Held blocks renumbered past the refused ones.
        let mut renumber = BTreeMap::new();
        let mut next = from;
        let indices: BTreeSet<u64> = held
            .iter()
            .filter_map(|h| h.chunk["index"].as_u64())
            .collect();
        for index in indices {
            if !refused.contains(&index) {
                renumber.insert(index, next);
                next += 1;
            }
        }
        let text = (kept == 0 && !refused.is_empty()).then(|| refusal_text(&judged, refusals));
        let mut out = Vec::new();
        let mut said = false;
        for Held { event, mut chunk } in held {
            let kind = chunk["type"].as_str().unwrap_or_default().to_owned();
            if let Some(index) = chunk["index"].as_u64() {
                match renumber.get(&index) {
                    None => continue,
                    Some(&new) if new == index => out.extend(event.raw),
                    Some(&new) => {
                        chunk["index"] = new.into();
                        out.extend(event.with_message(chunk.to_string().as_bytes()));
                    }
                }
                continue;
            }
            if let Some(text) = text.as_ref().filter(|_| !said) {
                out.extend(text_block(next, text));
                said = true;
            }
            if kind == "message_delta" && text.is_some() {
                chunk["delta"]["stop_reason"] = "end_turn".into();
                out.extend(event.with_message(chunk.to_string().as_bytes()));
            } else {
                out.extend(event.raw);
            }
        }
        if let Some(text) = text.filter(|_| !said) {
            out.extend(text_block(next, &text));
        }
        out
    }
}

fn judged(calls: &[Call]) -> Vec<ToolCall> {
    calls
        .iter()
        .map(|c| {
            if c.partial.trim().is_empty() {
                ToolCall::from_object(&c.name, "tool_use", &c.start_input)
            } else {
                ToolCall::from_text(&c.name, "tool_use", &c.partial)
            }
        })
        .collect()
}

/// A complete text block at `index`, as three events.
fn text_block(index: u64, text: &str) -> Vec<u8> {
    let events = [
        json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
        json!({"type": "content_block_stop", "index": index}),
    ];
    let mut out = Vec::new();
    for e in events {
        out.extend(
            format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().unwrap_or_default()
            )
            .into_bytes(),
        );
    }
    out
}

#[cfg(test)]
#[path = "anthropic_tests.rs"]
mod tests;
