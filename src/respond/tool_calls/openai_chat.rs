//! Tool calls in OpenAI Chat Completions answers.
//!
//! JSON: `choices[].message.tool_calls[]` (`function` calls with `arguments` as JSON text,
//! `custom` calls with free-form `input`) and the legacy `message.function_call`.
//!
//! SSE (`data: {chunk}` … `data: [DONE]`): a call arrives as `delta.tool_calls[]` fragments
//! sharing an `index` (the first names the call, the rest append to `arguments`), or as legacy
//! `delta.function_call` fragments; `finish_reason` closes the choice. Events carrying
//! fragments are held; every other event passes as it arrives. When every choice with calls
//! has finished (or the stream ends), the calls are judged at once and the held events are
//! released: byte for byte when nothing was refused; otherwise without the refused calls'
//! fragments, the remaining calls renumbered from 0 (the SDKs accumulate fragments by index,
//! and a gap breaks them), and a choice left without calls ends with the refusal as its text
//! and `finish_reason: "stop"`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::{
    AnswerError, Flow, Held, Refusals, ToolCall, as_received, data_event, read_json, refusal_text,
};
use crate::config::DeniedToolCall;
use crate::rewrite::sse::Event;

/// The calls of a JSON answer, choice by choice: each `tool_calls` entry, then the legacy
/// `function_call`.
pub fn json_calls(answer: &Value) -> Vec<ToolCall> {
    let mut calls = Vec::new();
    for choice in choices(answer) {
        let message = &choice["message"];
        if let Some(list) = message["tool_calls"].as_array() {
            calls.extend(list.iter().map(json_call));
        }
        if let Some(call) = message["function_call"].as_object() {
            calls.push(ToolCall::from_text(
                call.get("name").and_then(Value::as_str).unwrap_or_default(),
                "function",
                call.get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ));
        }
    }
    calls
}

fn choices(answer: &Value) -> &[Value] {
    answer["choices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn json_call(call: &Value) -> ToolCall {
    let kind = call["type"].as_str().unwrap_or("function");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match kind {
        "function" => ToolCall::from_text(
            call["function"]["name"].as_str().unwrap_or_default(),
            kind,
            call["function"]["arguments"].as_str().unwrap_or_default(),
        ),
        "custom" => custom(
            &text(&call["custom"]["name"]),
            &text(&call["custom"]["input"]),
        ),
        other => unknown(other),
    }
}

/// A custom tool's free-form input, judged as `arguments.input`.
fn custom(name: &str, input: &str) -> ToolCall {
    ToolCall {
        name: name.to_owned(),
        kind: "custom".to_owned(),
        arguments: Ok(Map::from_iter([("input".to_owned(), json!(input))])),
    }
}

fn unknown(kind: &str) -> ToolCall {
    ToolCall {
        name: kind.to_owned(),
        kind: kind.to_owned(),
        arguments: Err(format!("tool call type {kind:?} cannot be read")),
    }
}

/// Removes the refused calls from a JSON answer (`refusals` in [`json_calls`] order); a
/// choice left without calls ends with the refusal as its text.
pub fn remove_from_json(answer: &mut Value, calls: &[ToolCall], refusals: &Refusals) {
    let mut at = 0;
    let Some(choices) = answer["choices"].as_array_mut() else {
        return;
    };
    for choice in choices {
        let Some(message) = choice.get_mut("message").and_then(Value::as_object_mut) else {
            continue;
        };
        let first = at;
        let mut remaining = 0;
        if let Some(list) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
            list.retain(|_| {
                at += 1;
                let keep = refusals.get(at - 1).is_some_and(Option::is_none);
                remaining += usize::from(keep);
                keep
            });
        }
        if message.get("function_call").is_some_and(Value::is_object) {
            at += 1;
            if refusals.get(at - 1).is_some_and(Option::is_none) {
                remaining += 1;
            } else {
                message.remove("function_call");
            }
        }
        let refused = refusals[first..at].iter().any(Option::is_some);
        if refused && remaining == 0 {
            message.remove("tool_calls");
            let text = refusal_text(&calls[first..at], &refusals[first..at]);
            let content = match message.get("content").and_then(Value::as_str) {
                Some(before) if !before.is_empty() => format!("{before}\n\n{text}"),
                _ => text,
            };
            message.insert("content".into(), content.into());
            choice["finish_reason"] = "stop".into();
        }
    }
}

/// The provider's error object (`denied_tool_call: error`).
pub fn error_body(text: &str) -> Vec<u8> {
    json!({"error": {"message": text, "type": "permission_denied", "param": null, "code": "tool_call_denied"}})
        .to_string()
        .into_bytes()
}

/// Where a call's fragments go: a `tool_calls` index, or the legacy `function_call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Tool(u64),
    Function,
}

#[derive(Debug)]
struct Call {
    choice: u64,
    slot: Slot,
    kind: String,
    name: String,
    arguments: String,
}

/// A streamed Chat Completions answer.
pub struct ChatStream {
    denied: DeniedToolCall,
    calls: Vec<Call>,
    held: Vec<Held>,
    finished: BTreeSet<u64>,
    /// An error event ended the answer for the client: nothing more is passed.
    ended: bool,
}

impl ChatStream {
    pub fn new(denied: DeniedToolCall) -> Self {
        Self {
            denied,
            calls: Vec::new(),
            held: Vec::new(),
            finished: BTreeSet::new(),
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
        if data.trim_ascii() == b"[DONE]" {
            if self.calls.is_empty() {
                return Ok(Flow::Emit(event.raw));
            }
            self.held.push(Held {
                event,
                chunk: Value::Null,
            });
            return Ok(Flow::Judge);
        }
        // A chunk no client can parse carries no call a client could run.
        let Some(chunk) = read_json(&data)? else {
            return Ok(Flow::Emit(event.raw));
        };
        let (fragments, closes) = self.read(&chunk);
        if !fragments && (!closes || self.calls.is_empty()) {
            return Ok(Flow::Emit(event.raw));
        }
        self.held.push(Held { event, chunk });
        let complete = self.calls.iter().all(|c| self.finished.contains(&c.choice));
        Ok(if closes && complete {
            Flow::Judge
        } else {
            Flow::Emit(Vec::new())
        })
    }

    /// Adds the chunk's fragments to their calls; whether it had any, and whether it
    /// finished a choice.
    fn read(&mut self, chunk: &Value) -> (bool, bool) {
        let (mut fragments, mut closes) = (false, false);
        for choice in choices(chunk) {
            let index = choice["index"].as_u64().unwrap_or(0);
            let delta = &choice["delta"];
            if let Some(list) = delta["tool_calls"].as_array() {
                for (position, fragment) in list.iter().enumerate() {
                    let slot = Slot::Tool(fragment["index"].as_u64().unwrap_or(position as u64));
                    let call = self.call(index, slot);
                    if let Some(kind) = fragment["type"].as_str() {
                        call.kind = kind.to_owned();
                    }
                    let body = match call.kind.as_str() {
                        "custom" => (&fragment["custom"]["name"], &fragment["custom"]["input"]),
                        _ => (
                            &fragment["function"]["name"],
                            &fragment["function"]["arguments"],
                        ),
                    };
                    call.name.push_str(body.0.as_str().unwrap_or_default());
                    call.arguments.push_str(body.1.as_str().unwrap_or_default());
                    fragments = true;
                }
            }
            if let Some(fragment) = delta["function_call"].as_object() {
                let call = self.call(index, Slot::Function);
                let text = |k: &str| fragment.get(k).and_then(Value::as_str).unwrap_or_default();
                call.name.push_str(text("name"));
                call.arguments.push_str(text("arguments"));
                fragments = true;
            }
            if !choice["finish_reason"].is_null() {
                self.finished.insert(index);
                closes = true;
            }
        }
        (fragments, closes)
    }

    fn call(&mut self, choice: u64, slot: Slot) -> &mut Call {
        let at = match self
            .calls
            .iter()
            .position(|c| c.choice == choice && c.slot == slot)
        {
            Some(at) => at,
            None => {
                self.calls.push(Call {
                    choice,
                    slot,
                    kind: "function".to_owned(),
                    name: String::new(),
                    arguments: String::new(),
                });
                self.calls.len() - 1
            }
        };
        &mut self.calls[at]
    }

    /// The stream ended: calls still held are judged (never passed unjudged).
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
        self.finished.clear();
        if refusals.iter().all(Option::is_none) {
            return as_received(held);
        }
        let judged = judged(&calls);
        if self.denied == DeniedToolCall::Error && refusals.iter().any(Option::is_some) {
            self.ended = true;
            return data_event(&error_body(&refusal_text(&judged, refusals)));
        }
        let plan = Plan::new(&calls, &judged, refusals);
        let mut out = Vec::new();
        let mut closed = BTreeSet::new();
        let mut template = None;
        for Held { event, mut chunk } in held {
            if chunk.is_null() {
                out.extend(plan.closings(&closed, template.as_ref()));
                closed.extend(plan.texts.keys().copied());
                out.extend(event.raw);
                continue;
            }
            template.get_or_insert_with(|| chunk.clone());
            match plan.apply(&mut chunk, &mut closed) {
                Apply::Unchanged => out.extend(event.raw),
                Apply::Changed => out.extend(event.with_message(chunk.to_string().as_bytes())),
                Apply::Empty => {}
            }
        }
        out.extend(plan.closings(&closed, template.as_ref()));
        out
    }
}

/// The calls as judged.
fn judged(calls: &[Call]) -> Vec<ToolCall> {
    calls
        .iter()
        .map(|c| match c.kind.as_str() {
            "function" => ToolCall::from_text(&c.name, "function", &c.arguments),
            "custom" => custom(&c.name, &c.arguments),
            other => unknown(other),
        })
        .collect()
}

/// How the judgement changes the held chunks.
struct Plan {
    /// (choice, slot) → new index for released `tool_calls` fragments; refused ones absent.
    released: BTreeMap<(u64, Slot), u64>,
    /// Choices left without calls: the text they end with.
    texts: BTreeMap<u64, String>,
}

enum Apply {
    Unchanged,
    Changed,
    /// Nothing left to send.
    Empty,
}

impl Plan {
    fn new(calls: &[Call], judged: &[ToolCall], refusals: &Refusals) -> Plan {
        let mut released = BTreeMap::new();
        let mut by_choice: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (at, call) in calls.iter().enumerate() {
            by_choice.entry(call.choice).or_default().push(at);
        }
        let mut texts = BTreeMap::new();
        for (choice, ats) in by_choice {
            let mut slots: Vec<(Slot, usize)> =
                ats.iter().map(|&at| (calls[at].slot, at)).collect();
            slots.sort();
            let mut next = 0;
            for (slot, at) in slots {
                if refusals.get(at).is_some_and(Option::is_none) {
                    released.insert((choice, slot), next);
                    next += u64::from(matches!(slot, Slot::Tool(_)));
                }
            }
            let refused = ats
                .iter()
                .any(|&at| !matches!(refusals.get(at), Some(None)));
            if refused && !released.keys().any(|(c, _)| *c == choice) {
                let (mine, why): (Vec<ToolCall>, Vec<Option<String>>) = ats
                    .iter()
                    .map(|&at| (judged[at].clone(), refusals.get(at).cloned().flatten()))
                    .unzip();
                texts.insert(choice, refusal_text(&mine, &why));
            }
        }
        Plan { released, texts }
    }

    fn apply(&self, chunk: &mut Value, closed: &mut BTreeSet<u64>) -> Apply {
        let Some(list) = chunk["choices"].as_array_mut() else {
            return Apply::Unchanged;
        };
        let mut changed = false;
        list.retain_mut(|choice| {
            let index = choice["index"].as_u64().unwrap_or(0);
            let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
                return true;
            };
            let mut had_fragments = false;
            if let Some(fragments) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                had_fragments = true;
                let mut position = 0;
                fragments.retain_mut(|fragment| {
                    let slot = Slot::Tool(fragment["index"].as_u64().unwrap_or(position));
                    position += 1;
                    match self.released.get(&(index, slot)) {
                        Some(&new) => {
                            if fragment["index"].as_u64() != Some(new) {
                                fragment["index"] = new.into();
                                changed = true;
                            }
                            true
                        }
                        None => {
                            changed = true;
                            false
                        }
                    }
                });
                if fragments.is_empty() {
                    delta.remove("tool_calls");
                }
            }
            if delta.contains_key("function_call")
                && !self.released.contains_key(&(index, Slot::Function))
            {
                had_fragments = true;
                delta.remove("function_call");
                changed = true;
            }
            let finishes = !choice["finish_reason"].is_null();
            if finishes && let Some(text) = self.texts.get(&index) {
                choice["delta"]["content"] = text.as_str().into();
                choice["finish_reason"] = "stop".into();
                closed.insert(index);
                changed = true;
            }
            // A fragment-only delta whose fragments all went says nothing.
            let empty = choice["delta"]
                .as_object()
                .is_some_and(|d| d.iter().all(|(k, v)| k == "role" || v.is_null()));
            !(had_fragments && empty && !finishes)
        });
        let says_more = chunk
            .as_object()
            .is_some_and(|o| o.get("usage").is_some_and(|u| !u.is_null()));
        match (
            changed,
            chunk["choices"].as_array().is_some_and(Vec::is_empty) && !says_more,
        ) {
            (false, _) => Apply::Unchanged,
            (true, true) => Apply::Empty,
            (true, false) => Apply::Changed,
        }
    }

    /// Closing chunks for the choices left without calls whose finish never came (an answer
    /// cut short, or `[DONE]` without `finish_reason`).
    fn closings(&self, closed: &BTreeSet<u64>, template: Option<&Value>) -> Vec<u8> {
        let mut out = Vec::new();
        for (choice, text) in self.texts.iter().filter(|(c, _)| !closed.contains(c)) {
            let mut chunk = template.cloned().unwrap_or_else(|| json!({}));
            chunk["object"] = "chat.completion.chunk".into();
            chunk["choices"] =
                json!([{"index": choice, "delta": {"content": text}, "finish_reason": "stop"}]);
            if let Some(o) = chunk.as_object_mut() {
                o.remove("usage");
            }
            out.extend(data_event(chunk.to_string().as_bytes()));
        }
        out
    }
}

#[cfg(test)]
#[path = "openai_chat_tests.rs"]
mod tests;
