//! Tool calls in OpenAI Responses answers: `function_call` output items (`arguments` as JSON
//! text) and `custom_tool_call` items (free-form `input`, judged as `arguments.input`). Items
//! the provider runs itself (`mcp_call`, `web_search_call`, ...) are not judged here.
//!
//! SSE: `response.output_item.added` opens an item at an `output_index`; a call's arguments
//! arrive as `response.function_call_arguments.delta` / `.done` (custom tools:
//! `response.custom_tool_call_input.*`), then `response.output_item.done` carries the whole
//! item, and `response.completed` repeats every item in `response.output`. Items before the
//! first call flow as they arrive; from the first call on, every event of a later item is held
//! (its `output_index` depends on which calls remain) until `response.completed` (or
//! `.incomplete` / `.failed`, or the end). A call whose readings disagree (deltas, `.done`,
//! the final item, the completed list) is refused: a client could read any of them. Released
//! items are renumbered without gaps; refused ones vanish from every event, `response.completed`
//! included; an answer left without calls gains a message item saying why.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::{AnswerError, Flow, Held, Refusals, ToolCall, as_received, read_json, refusal_text};
use crate::config::DeniedToolCall;
use crate::rewrite::sse::Event;

const CALL_TYPES: [&str; 2] = ["function_call", "custom_tool_call"];

fn is_call(item: &Value) -> bool {
    item["type"]
        .as_str()
        .is_some_and(|t| CALL_TYPES.contains(&t))
}

fn item_call(item: &Value) -> ToolCall {
    let name = item["name"].as_str().unwrap_or_default();
    match item["type"].as_str() {
        Some("custom_tool_call") => custom(name, item["input"].as_str().unwrap_or_default()),
        _ => ToolCall::from_text(
            name,
            "function",
            item["arguments"].as_str().unwrap_or_default(),
        ),
    }
}

fn custom(name: &str, input: &str) -> ToolCall {
    ToolCall {
        name: name.to_owned(),
        kind: "custom".to_owned(),
        arguments: Ok(Map::from_iter([("input".to_owned(), json!(input))])),
    }
}

/// The calls of a JSON answer, in output order.
pub fn json_calls(answer: &Value) -> Vec<ToolCall> {
    output(answer)
        .iter()
        .filter(|i| is_call(i))
        .map(item_call)
        .collect()
}

fn output(answer: &Value) -> &[Value] {
    answer["output"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The message item an answer left without calls ends with.
fn message_item(text: &str) -> Value {
    json!({"type": "message", "id": "msg_agent_authz", "status": "completed", "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

/// Removes the refused call items; an answer left without calls gains a message saying why.
pub fn remove_from_json(answer: &mut Value, calls: &[ToolCall], refusals: &Refusals) {
    let Some(items) = answer["output"].as_array_mut() else {
        return;
    };
    let mut at = 0;
    let mut remaining = 0;
    items.retain(|item| {
        if !is_call(item) {
            return true;
        }
        at += 1;
        let keep = refusals.get(at - 1).is_some_and(Option::is_none);
        remaining += usize::from(keep);
        keep
    });
    if remaining == 0 && refusals.iter().any(Option::is_some) {
        items.push(message_item(&refusal_text(calls, refusals)));
    }
}

#[derive(Debug)]
struct Call {
    output_index: u64,
    kind: String,
    name: String,
    /// Each reading of the arguments seen (deltas joined, `.done`, the final item).
    streamed: String,
    readings: Vec<String>,
}

/// A streamed Responses answer.
pub struct ResponsesStream {
    denied: DeniedToolCall,
    calls: Vec<Call>,
    holding_from: Option<u64>,
    /// One past the highest `output_index` seen: where an item added after them goes.
    items_seen: u64,
    held: Vec<Held>,
    ended: bool,
}

impl ResponsesStream {
    pub fn new(denied: DeniedToolCall) -> Self {
        Self {
            denied,
            calls: Vec::new(),
            holding_from: None,
            items_seen: 0,
            held: Vec::new(),
            ended: false,
        }
    }

    fn call(&mut self, index: Option<u64>) -> Option<&mut Call> {
        self.calls
            .iter_mut()
            .find(|c| Some(c.output_index) == index)
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
        let index = chunk["output_index"].as_u64();
        if let Some(index) = index {
            self.items_seen = self.items_seen.max(index.saturating_add(1));
        }
        let kind = chunk["type"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "response.output_item.added" if is_call(&chunk["item"]) => {
                let item = &chunk["item"];
                let at = index.ok_or(AnswerError::Unplaced)?;
                self.calls.push(Call {
                    output_index: at,
                    kind: item["type"].as_str().unwrap_or_default().to_owned(),
                    name: item["name"].as_str().unwrap_or_default().to_owned(),
                    streamed: item["arguments"]
                        .as_str()
                        .or(item["input"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    readings: Vec::new(),
                });
                // The lowest call item so far: an item that arrives out of order must not
                // pass as it arrives because a later-numbered one came first.
                self.holding_from = Some(self.holding_from.map_or(at, |from| from.min(at)));
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                if let Some(call) = self.call(index) {
                    call.streamed
                        .push_str(chunk["delta"].as_str().unwrap_or_default());
                }
            }
            "response.function_call_arguments.done" | "response.custom_tool_call_input.done" => {
                let text = chunk["arguments"].as_str().or(chunk["input"].as_str());
                if let (Some(call), Some(text)) = (self.call(index), text) {
                    call.readings.push(text.to_owned());
                }
            }
            "response.output_item.done" if is_call(&chunk["item"]) => {
                let item = chunk["item"].clone();
                let at = index.ok_or(AnswerError::Unplaced)?;
                let text = item["arguments"].as_str().or(item["input"].as_str());
                let text = text.unwrap_or_default().to_owned();
                match self.call(index) {
                    Some(call) => {
                        call.readings.push(text);
                        if item["name"].as_str() != Some(call.name.as_str()) {
                            call.readings.push(format!("\u{0}name {}", item["name"]));
                        }
                    }
                    // A call item no `.added` announced is what the client keeps: judged
                    // as it stands, held like any other.
                    None => {
                        self.calls.push(Call {
                            output_index: at,
                            kind: item["type"].as_str().unwrap_or_default().to_owned(),
                            name: item["name"].as_str().unwrap_or_default().to_owned(),
                            streamed: text,
                            readings: Vec::new(),
                        });
                        self.holding_from = Some(self.holding_from.map_or(at, |from| from.min(at)));
                    }
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                // The final list is what an SDK hands the agent: a call only it lists is
                // judged too, as listed.
                for (at, item) in output(&chunk["response"]).iter().enumerate() {
                    if !is_call(item) {
                        continue;
                    }
                    let text = item["arguments"].as_str().or(item["input"].as_str());
                    let text = text.unwrap_or_default().to_owned();
                    match self.call(Some(at as u64)) {
                        // The list is what the SDK hands the agent: a name (or type) other
                        // than the events' is a reading that disagrees.
                        Some(call) => {
                            call.readings.push(text);
                            if item["name"].as_str() != Some(call.name.as_str())
                                || item["type"].as_str() != Some(call.kind.as_str())
                            {
                                call.readings.push(format!("\u{0}name {}", item["name"]));
                            }
                        }
                        None => self.calls.push(Call {
                            output_index: at as u64,
                            kind: item["type"].as_str().unwrap_or_default().to_owned(),
                            name: item["name"].as_str().unwrap_or_default().to_owned(),
                            streamed: text,
                            readings: Vec::new(),
                        }),
                    }
                }
                if !self.calls.is_empty() {
                    self.held.push(Held { event, chunk });
                    return Ok(Flow::Judge);
                }
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
        let from = self.holding_from.take().unwrap_or(self.items_seen);
        if refusals.iter().all(Option::is_none) {
            return as_received(held);
        }
        let judged = judged(&calls);
        let text = refusal_text(&judged, refusals);
        if self.denied == DeniedToolCall::Error && refusals.iter().any(Option::is_some) {
            self.ended = true;
            let error = json!({"type": "error", "code": "tool_call_denied", "message": text, "param": null});
            return format!("event: error\ndata: {error}\n\n").into_bytes();
        }
        let refused: BTreeSet<u64> = calls
            .iter()
            .zip(refusals)
            .filter(|(_, r)| r.is_some())
            .map(|(c, _)| c.output_index)
            .collect();
        let none_left = calls.len() == refused.len() && !refused.is_empty();
        let indices: BTreeSet<u64> = held
            .iter()
            .filter_map(|h| h.chunk["output_index"].as_u64())
            .collect();
        let mut renumber = BTreeMap::new();
        let mut next = from;
        for index in indices {
            if !refused.contains(&index) {
                renumber.insert(index, next);
                next += 1;
            }
        }
        let mut out = Vec::new();
        let mut said = false;
        for Held { event, mut chunk } in held {
            if let Some(index) = chunk["output_index"].as_u64() {
                match renumber.get(&index) {
                    None => {}
                    Some(&new) if new == index => out.extend(event.raw),
                    Some(&new) => {
                        chunk["output_index"] = new.into();
                        out.extend(event.with_message(chunk.to_string().as_bytes()));
                    }
                }
                continue;
            }
            if none_left && !said {
                out.extend(message_events(next, &text));
                said = true;
            }
            if let Some(items) = chunk["response"]["output"].as_array_mut() {
                let mut at = 0;
                items.retain(|_| {
                    at += 1;
                    !refused.contains(&(at - 1))
                });
                if none_left {
                    items.push(message_item(&text));
                }
                out.extend(event.with_message(chunk.to_string().as_bytes()));
            } else {
                out.extend(event.raw);
            }
        }
        if none_left && !said {
            out.extend(message_events(next, &text));
        }
        out
    }
}

fn judged(calls: &[Call]) -> Vec<ToolCall> {
    calls
        .iter()
        .map(|c| {
            let mut call = match c.kind.as_str() {
                "custom_tool_call" => custom(&c.name, &c.streamed),
                _ => ToolCall::from_text(&c.name, "function", &c.streamed),
            };
            if c.readings.iter().any(|r| *r != c.streamed) {
                call.arguments =
                    Err("its streamed arguments disagree with its final item".to_owned());
            }
            call
        })
        .collect()
}

/// A complete message item at `index` saying `text`, as the events a client accumulates.
fn message_events(index: u64, text: &str) -> Vec<u8> {
    let item = message_item(text);
    let part = &item["content"][0];
    let events = [
        json!({"type": "response.output_item.added", "output_index": index,
               "item": {"type": "message", "id": "msg_agent_authz", "status": "in_progress", "role": "assistant", "content": []}}),
        json!({"type": "response.content_part.added", "item_id": "msg_agent_authz", "output_index": index, "content_index": 0,
               "part": {"type": "output_text", "text": "", "annotations": []}}),
        json!({"type": "response.output_text.delta", "item_id": "msg_agent_authz", "output_index": index, "content_index": 0, "delta": text}),
        json!({"type": "response.output_text.done", "item_id": "msg_agent_authz", "output_index": index, "content_index": 0, "text": text}),
        json!({"type": "response.content_part.done", "item_id": "msg_agent_authz", "output_index": index, "content_index": 0, "part": part}),
        json!({"type": "response.output_item.done", "output_index": index, "item": item}),
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
#[path = "openai_responses_tests.rs"]
mod tests;
