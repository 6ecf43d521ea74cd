//! Tool calls in Amazon Bedrock answers. Converse: `output.message.content[].toolUse`
//! (`{toolUseId, name, input}`, `input` the arguments object), `stopReason: tool_use`. The same
//! routes serve InvokeModel, whose answers are the provider's own: an Anthropic body's answer
//! is an Anthropic message, read as [`super::anthropic`] reads it.
//!
//! ConverseStream answers in AWS's binary event-stream framing ([`crate::rewrite::eventstream`]):
//! `messageStart`, `contentBlockStart` (`start.toolUse {toolUseId, name}`), `contentBlockDelta`
//! (`delta.text`, or `delta.toolUse.input`: fragments of the input's JSON text),
//! `contentBlockStop`, `messageStop` (`stopReason`), `metadata`. As with Anthropic's stream,
//! blocks before the first tool block flow as they arrive; from the first tool block on,
//! messages are held in order (a later block's `contentBlockIndex` depends on which calls
//! remain) until `messageStop` (or the end), when the calls are judged at once. Released blocks
//! shift down past the refused ones, so indices stay without gaps; an answer left without
//! calls gains a text block saying why and ends `end_turn`. `error` mode ends the stream with a `validationException` message, as
//! Bedrock frames a stream's exceptions (boto3 raises `EventStreamError`).
//!
//! An InvokeModel stream (`chunk` messages, each a base64 provider event) is passed on while
//! its chunks carry no tool call; one that does cannot be judged here yet and cuts the stream
//! (fail closed).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde_json::{Value, json};

use super::{AnswerError, Flow, Refusals, ToolCall, anthropic, read_json, refusal_text};
use crate::config::DeniedToolCall;
use crate::rewrite::eventstream::{self, Frame, MessageSplitter};

/// The calls of a JSON answer: Converse's `toolUse` blocks, then any Anthropic `tool_use`
/// blocks (an InvokeModel answer). Both are read whatever the answer looks like, so no call
/// is left unjudged because the answer also carries the other shape.
pub fn json_calls(answer: &Value) -> Vec<ToolCall> {
    let mut calls = converse_calls(answer);
    calls.extend(anthropic::json_calls(answer));
    calls
}

fn converse_calls(answer: &Value) -> Vec<ToolCall> {
    content(answer)
        .iter()
        .filter_map(|block| block.get("toolUse"))
        .map(|tool| {
            ToolCall::from_object(
                tool["name"].as_str().unwrap_or_default(),
                "toolUse",
                &tool["input"],
            )
        })
        .collect()
}

fn content(answer: &Value) -> &[Value] {
    answer["output"]["message"]["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Removes the refused `toolUse` blocks (and `tool_use` blocks, as [`anthropic`] does); an
/// answer left without calls gains a text block saying why and ends `end_turn`.
pub fn remove_from_json(answer: &mut Value, calls: &[ToolCall], refusals: &Refusals) {
    let converse = converse_calls(answer).len().min(calls.len());
    let (calls, invoke_calls) = calls.split_at(converse);
    let (refusals, invoke_refusals) = refusals.split_at(converse.min(refusals.len()));
    // (Indexing a missing member mutably would add it: each shape is edited only if present.)
    if !invoke_calls.is_empty() {
        anthropic::remove_from_json(answer, invoke_calls, invoke_refusals);
    }
    if calls.is_empty() {
        return;
    }
    let Some(content) = answer["output"]["message"]["content"].as_array_mut() else {
        return;
    };
    let mut at = 0;
    let mut remaining = 0;
    content.retain(|block| {
        if block.get("toolUse").is_none() {
            return true;
        }
        at += 1;
        let keep = refusals.get(at - 1).is_some_and(Option::is_none);
        remaining += usize::from(keep);
        keep
    });
    if remaining == 0 && refusals.iter().any(Option::is_some) {
        content.push(json!({"text": refusal_text(calls, refusals)}));
        answer["stopReason"] = "end_turn".into();
    }
}

/// Bedrock's error body (`denied_tool_call: error`), as [`crate::respond::refusal`] answers.
pub fn error_body(text: &str) -> Vec<u8> {
    json!({ "message": text }).to_string().into_bytes()
}

#[derive(Debug)]
struct Call {
    index: u64,
    name: String,
    partial: String,
}

/// A message held back until the calls are judged, with its payload as parsed.
struct Held {
    frame: Frame,
    payload: Value,
}

/// A streamed Converse answer (or an InvokeModel stream on the same route).
pub struct ConverseStream {
    splitter: MessageSplitter,
    denied: DeniedToolCall,
    calls: Vec<Call>,
    /// While calls are held, the lowest index of their tool blocks (where the refusal text
    /// goes when no block is left after it); every message is held meanwhile.
    holding_from: Option<u64>,
    held: Vec<Held>,
    /// Bytes of the messages held, bounded by `limit` like every other reader's: each message
    /// is bounded by the splitter, their sum must be too.
    held_bytes: usize,
    limit: usize,
    /// Indices of the blocks already passed on: a tool block may not reuse one.
    passed: BTreeSet<u64>,
    ended: bool,
}

impl ConverseStream {
    pub fn new(limit: usize, denied: DeniedToolCall) -> Self {
        Self {
            splitter: MessageSplitter::new(limit),
            denied,
            calls: Vec::new(),
            holding_from: None,
            held: Vec::new(),
            held_bytes: 0,
            limit,
            passed: BTreeSet::new(),
            ended: false,
        }
    }

    /// The complete messages in `chunk`; at the end, a message cut short is an error.
    pub fn frames(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Vec<Frame>, AnswerError> {
        let frames = self.splitter.push(chunk)?;
        if end_of_stream {
            self.splitter.finish()?;
        }
        Ok(frames)
    }

    pub fn push(&mut self, frame: Frame) -> Result<Flow, AnswerError> {
        if self.ended {
            return Ok(Flow::Emit(Vec::new()));
        }
        // Exceptions carry no call: they pass as they are. Anything else is read as an event,
        // as botocore reads it (whatever its `:message-type`).
        let message_type = eventstream::header(&frame.message, ":message-type");
        if matches!(message_type, Some("exception" | "error")) {
            return Ok(Flow::Emit(frame.raw));
        }
        let kind = eventstream::header(&frame.message, ":event-type").unwrap_or_default();
        // A payload that is not JSON carries no call; it keeps its place among held messages.
        let payload = read_json(frame.message.payload())?.unwrap_or(Value::Null);
        let index = payload["contentBlockIndex"].as_u64();
        match kind {
            "contentBlockStart" if payload["start"].get("toolUse").is_some() => {
                let Some(index) = index else {
                    return Err(AnswerError::Unjudged(
                        "a tool block without contentBlockIndex",
                    ));
                };
                if self.passed.contains(&index) {
                    return Err(AnswerError::Unjudged(
                        "a tool block reusing a block's index",
                    ));
                }
                self.calls.push(Call {
                    index,
                    name: payload["start"]["toolUse"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    partial: String::new(),
                });
                self.holding_from = Some(self.holding_from.map_or(index, |f| f.min(index)));
            }
            "contentBlockDelta" => {
                let fragment = payload["delta"].get("toolUse");
                match self.calls.iter_mut().find(|c| Some(c.index) == index) {
                    Some(call) => {
                        let input = fragment.map_or(&Value::Null, |f| &f["input"]);
                        call.partial.push_str(input.as_str().unwrap_or_default());
                    }
                    // Arguments of no call a start named: nothing to judge them as.
                    None if fragment.is_some() => {
                        return Err(AnswerError::Unjudged(
                            "a toolUse fragment outside a tool block",
                        ));
                    }
                    None => {}
                }
            }
            "messageStop" if !self.calls.is_empty() => {
                self.hold(frame, payload)?;
                return Ok(Flow::Judge);
            }
            "chunk" if invoke_chunk_calls(&payload) => {
                return Err(AnswerError::Unjudged(
                    "an InvokeModel stream carrying tool calls",
                ));
            }
            _ => {}
        }
        // Once a tool block started, every message waits its turn (in order: a late message
        // of an earlier block too), until the calls are judged.
        if self.holding_from.is_some() {
            self.hold(frame, payload)?;
            Ok(Flow::Emit(Vec::new()))
        } else {
            self.passed.extend(index);
            Ok(Flow::Emit(frame.raw))
        }
    }

    /// Holds a message until the calls are judged; an answer holding more than the limit is
    /// refused (fail closed) rather than growing the leg's memory.
    fn hold(&mut self, frame: Frame, payload: Value) -> Result<(), AnswerError> {
        self.held_bytes += frame.raw.len();
        if self.held_bytes > self.limit {
            return Err(AnswerError::TooLarge(self.limit));
        }
        self.held.push(Held { frame, payload });
        Ok(())
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
        self.held_bytes = 0;
        let from = self.holding_from.take().unwrap_or(0);
        let judged = judged(&calls);
        if self.denied == DeniedToolCall::Error && refusals.iter().any(Option::is_some) {
            self.ended = true;
            return exception(&refusal_text(&judged, refusals));
        }
        let refused: BTreeSet<u64> = calls
            .iter()
            .zip(refusals)
            .filter(|(_, r)| r.is_some())
            .map(|(c, _)| c.index)
            .collect();
        let kept = calls.len() - refused.len();
        // Held blocks shift down past the refused ones (nothing refused: nothing changes).
        let mut renumber = BTreeMap::new();
        let mut next = from;
        let indices: BTreeSet<u64> = held
            .iter()
            .filter_map(|h| h.payload["contentBlockIndex"].as_u64())
            .collect();
        for index in indices {
            if !refused.contains(&index) {
                let below = refused.range(..index).count() as u64;
                renumber.insert(index, index - below);
                next = index - below + 1;
            }
        }
        let text = (kept == 0 && !refused.is_empty()).then(|| refusal_text(&judged, refusals));
        let mut out = Vec::new();
        let mut said = false;
        for Held { frame, mut payload } in held {
            if let Some(index) = payload["contentBlockIndex"].as_u64() {
                let new = renumber.get(&index).copied();
                self.passed.extend(new);
                match new {
                    None => continue,
                    Some(new) if new == index => out.extend(frame.raw),
                    Some(new) => {
                        payload["contentBlockIndex"] = new.into();
                        out.extend(rewritten(&frame, &payload));
                    }
                }
                continue;
            }
            let stop = eventstream::header(&frame.message, ":event-type") == Some("messageStop");
            if let Some(text) = text.as_ref().filter(|_| stop && !said) {
                out.extend(text_block(next, text));
                self.passed.insert(next);
                said = true;
            }
            if stop && text.is_some() {
                payload["stopReason"] = "end_turn".into();
                out.extend(rewritten(&frame, &payload));
            } else {
                out.extend(frame.raw);
            }
        }
        if let Some(text) = text.filter(|_| !said) {
            out.extend(text_block(next, &text));
            self.passed.insert(next);
        }
        out
    }
}

fn judged(calls: &[Call]) -> Vec<ToolCall> {
    calls
        .iter()
        .map(|c| ToolCall::from_text(&c.name, "toolUse", &c.partial))
        .collect()
}

fn rewritten(frame: &Frame, payload: &Value) -> Vec<u8> {
    eventstream::with_payload(&frame.message, payload.to_string().into_bytes())
}

fn event(kind: &str, payload: &Value) -> Vec<u8> {
    eventstream::message(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().into_bytes(),
    )
}

/// A complete text block at `index` (Bedrock opens text blocks with their first delta).
fn text_block(index: u64, text: &str) -> Vec<u8> {
    let mut out = event(
        "contentBlockDelta",
        &json!({"contentBlockIndex": index, "delta": {"text": text}}),
    );
    out.extend(event(
        "contentBlockStop",
        &json!({ "contentBlockIndex": index }),
    ));
    out
}

/// The exception message a stream ends with in `error` mode.
fn exception(text: &str) -> Vec<u8> {
    eventstream::message(
        &[
            (":exception-type", "validationException"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        error_body(text),
    )
}

/// Whether an InvokeModel stream's chunk (`{"bytes": base64 provider event}`) carries a tool
/// call: an Anthropic block that is not text or thinking, or any provider's tool-call member.
fn invoke_chunk_calls(payload: &Value) -> bool {
    let Some(bytes) = payload["bytes"].as_str() else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(bytes) else {
        return true;
    };
    let Ok(inner) = serde_json::from_slice::<Value>(&decoded) else {
        return false;
    };
    let block = inner["content_block"]["type"].as_str();
    block.is_some_and(|t| !matches!(t, "text" | "thinking" | "redacted_thinking"))
        || mentions_tool_call(&inner)
}

fn mentions_tool_call(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(key, value)| {
            matches!(
                key.as_str(),
                "toolUse" | "tool_use" | "tool_calls" | "functionCall" | "function_call"
            ) || mentions_tool_call(value)
        }),
        Value::Array(items) => items.iter().any(mentions_tool_call),
        _ => false,
    }
}

#[cfg(test)]
#[path = "bedrock_converse_tests.rs"]
mod tests;
