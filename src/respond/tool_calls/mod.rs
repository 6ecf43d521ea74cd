//! The response leg for `model_tool_calls: judge`: the tool calls a model's answer carries are
//! judged before the agent that asked for the answer can run them (question 3 for function
//! tools, which never cross the gateway as MCP calls).
//!
//! One reader per answer format, each in the two shapes a provider answers in: a whole JSON
//! body ([`JsonAnswer`], held until complete, bounded) and a server-sent event stream
//! ([`StreamAnswer`], framed by [`crate::rewrite::sse`]; Bedrock's binary event stream is
//! [`bedrock_converse::ConverseStream`], framed by [`crate::rewrite::eventstream`]). A stream
//! is never held as a whole:
//! events without tool-call fragments flow through as they arrive; only the fragments of a
//! call are held, until every call of the answer is complete. Then all of them are judged
//! together (one Cerbos request) and each is released unchanged or withheld. What a denied
//! call becomes is [`DeniedToolCall`]: removed (an answer left without calls ends as an
//! ordinary assistant answer saying why) or the provider's error.

pub mod anthropic;
pub mod bedrock_converse;
pub mod gemini;
mod judge;
pub mod openai_chat;
pub mod openai_responses;

pub use judge::{Judged, Unread};

use serde_json::{Map, Value};

use crate::config::{DeniedToolCall, Format};
use crate::rewrite::eventstream::EventStreamError;
use crate::rewrite::sse::{Event, EventSplitter, SseError};

/// One tool call as the model emitted it: the resource a Cerbos check is about.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The call's type in its format (`function`, `custom`).
    pub kind: String,
    /// The parsed arguments, or why they cannot be judged (the call is then denied).
    pub arguments: Result<Map<String, Value>, String>,
}

impl ToolCall {
    /// A call whose arguments arrive as a JSON value (Anthropic's and Bedrock's `input`).
    pub fn from_object(name: &str, kind: &str, arguments: &Value) -> ToolCall {
        ToolCall {
            name: name.to_owned(),
            kind: kind.to_owned(),
            arguments: match arguments {
                Value::Object(map) => Ok(map.clone()),
                _ => Err("its arguments are not a JSON object".to_owned()),
            },
        }
    }

    /// A call whose arguments arrive as JSON text (OpenAI's `arguments` strings).
    pub fn from_text(name: &str, kind: &str, arguments: &str) -> ToolCall {
        let arguments = match serde_json::from_str::<Value>(arguments) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("its arguments are not a JSON object".to_owned()),
            Err(_) => Err("its arguments are not valid JSON".to_owned()),
        };
        ToolCall {
            name: name.to_owned(),
            kind: kind.to_owned(),
            arguments,
        }
    }
}

/// For each call judged, in order: `None` when it may be released, or why it was refused.
pub type Refusals = [Option<String>];

/// The text an answer whose calls were all removed ends with, so an agent loop stops
/// cleanly and the user learns why.
pub fn refusal_text(calls: &[ToolCall], refusals: &Refusals) -> String {
    let why: Vec<String> = calls
        .iter()
        .zip(refusals)
        .filter_map(|(call, refused)| {
            refused
                .as_ref()
                .map(|reason| format!("{}: {reason}", call.name))
        })
        .collect();
    format!(
        "agent-authz refused the tool call{} {}.",
        if why.len() == 1 { "" } else { "s" },
        why.join("; ")
    )
}

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer exceeds {0} bytes")]
    TooLarge(usize),
    #[error("the answer is not valid JSON")]
    NotJson,
    #[error(transparent)]
    Sse(#[from] SseError),
    #[error(transparent)]
    EventStream(#[from] EventStreamError),
    /// An answer whose calls no reader here can judge: cut rather than passed unjudged.
    #[error("{0} cannot be judged")]
    Unjudged(&'static str),
    /// Parsers disagree on which duplicate key wins: a call judged under one reading could
    /// run under the other, so such an answer is not passed on.
    #[error("the answer has duplicate keys (or cannot be read strictly)")]
    Ambiguous,
    /// A call whose event does not say where it goes (no index): it could not be kept out of
    /// every event a client reads if it were refused, so such an answer is not passed on.
    #[error("the answer has a tool call without its index")]
    Unplaced,
}

/// An answer (or one event's data) as every client reads it: `None` when it is not JSON (no
/// client reads a call from it); `Err` when it is JSON that parsers could read differently.
pub fn read_json(bytes: &[u8]) -> Result<Option<Value>, AnswerError> {
    match crate::extract::strict_json::parse(bytes) {
        Ok(value) => Ok(Some(value)),
        Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            Err(AnswerError::Ambiguous)
        }
        Err(_) => Ok(None),
    }
}

/// A whole JSON answer, held until its last byte.
pub struct JsonAnswer {
    format: Format,
    body: Vec<u8>,
    limit: usize,
}

/// The answer as parsed, with the calls found in it (in a format-defined order).
pub struct ParsedAnswer {
    pub format: Format,
    pub value: Value,
    pub calls: Vec<ToolCall>,
}

impl JsonAnswer {
    pub fn new(format: Format, limit: usize) -> Self {
        Self {
            format,
            body: Vec::new(),
            limit,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), AnswerError> {
        self.body.extend_from_slice(chunk);
        if self.body.len() > self.limit {
            return Err(AnswerError::TooLarge(self.limit));
        }
        Ok(())
    }

    /// The complete body and the calls it carries. A body that is not JSON carries no call a
    /// client could read, and passes as it is.
    pub fn finish(self) -> Result<(Vec<u8>, Option<ParsedAnswer>), AnswerError> {
        let Some(value) = read_json(&self.body)? else {
            return Ok((self.body, None));
        };
        let calls = match self.format {
            Format::OpenaiChat | Format::AzureOpenaiChat => openai_chat::json_calls(&value),
            Format::AnthropicMessages => anthropic::json_calls(&value),
            Format::Gemini => gemini::json_calls(&value),
            Format::BedrockConverse => bedrock_converse::json_calls(&value),
            Format::OpenaiResponses | Format::AzureOpenaiResponses => {
                openai_responses::json_calls(&value)
            }
            _ => Vec::new(),
        };
        let parsed = ParsedAnswer {
            format: self.format,
            value,
            calls,
        };
        Ok((self.body, Some(parsed)))
    }
}

impl ParsedAnswer {
    /// The answer with the refused calls applied as `denied` says.
    pub fn rewrite(mut self, refusals: &Refusals, denied: DeniedToolCall) -> Vec<u8> {
        let text = refusal_text(&self.calls, refusals);
        match (self.format, denied) {
            (Format::OpenaiChat | Format::AzureOpenaiChat, DeniedToolCall::Remove) => {
                openai_chat::remove_from_json(&mut self.value, &self.calls, refusals);
                serde_json::to_vec(&self.value).unwrap_or_default()
            }
            (Format::OpenaiChat | Format::AzureOpenaiChat, DeniedToolCall::Error) => {
                openai_chat::error_body(&text)
            }
            (Format::AnthropicMessages, DeniedToolCall::Remove) => {
                anthropic::remove_from_json(&mut self.value, &self.calls, refusals);
                serde_json::to_vec(&self.value).unwrap_or_default()
            }
            (Format::AnthropicMessages, DeniedToolCall::Error) => anthropic::error_body(&text),
            (Format::Gemini, DeniedToolCall::Remove) => {
                gemini::remove_from_json(&mut self.value, &self.calls, refusals);
                serde_json::to_vec(&self.value).unwrap_or_default()
            }
            (Format::Gemini, DeniedToolCall::Error) => gemini::error_body(&text),
            (Format::BedrockConverse, DeniedToolCall::Remove) => {
                bedrock_converse::remove_from_json(&mut self.value, &self.calls, refusals);
                serde_json::to_vec(&self.value).unwrap_or_default()
            }
            (Format::BedrockConverse, DeniedToolCall::Error) => bedrock_converse::error_body(&text),
            (Format::OpenaiResponses | Format::AzureOpenaiResponses, DeniedToolCall::Remove) => {
                openai_responses::remove_from_json(&mut self.value, &self.calls, refusals);
                serde_json::to_vec(&self.value).unwrap_or_default()
            }
            (Format::OpenaiResponses | Format::AzureOpenaiResponses, DeniedToolCall::Error) => {
                openai_chat::error_body(&text)
            }
            _ => serde_json::to_vec(&self.value).unwrap_or_default(),
        }
    }
}

/// An event a stream reader holds back until the calls before it are judged: as received,
/// and as parsed (`Null` for a chunk that is not JSON, such as Chat's `[DONE]`).
struct Held {
    event: Event,
    chunk: Value,
}

/// The held events as they arrived: what a judgement that refused nothing releases, byte for
/// byte (renumbering or re-serialising would change what the upstream said for no reason).
fn as_received(held: Vec<Held>) -> Vec<u8> {
    held.into_iter().flat_map(|h| h.event.raw).collect()
}

/// What the stream reader makes of one event.
#[derive(Debug, PartialEq)]
pub enum Flow {
    /// Bytes to pass on now (possibly none: the event is held).
    Emit(Vec<u8>),
    /// Every call of the answer is complete: judge [`StreamAnswer::pending`], then
    /// [`StreamAnswer::release`].
    Judge,
}

/// A streamed answer, read event by event.
pub struct StreamAnswer {
    splitter: EventSplitter,
    reader: StreamReader,
    denied: DeniedToolCall,
    limit: usize,
    /// Bytes of the events held since the calls were last judged: an upstream that never
    /// completes its calls must not grow the leg's memory past `limit`.
    held: usize,
    /// An error event ended the answer: the readers drop what follows instead of holding it.
    ended: bool,
}

enum StreamReader {
    OpenaiChat(openai_chat::ChatStream),
    Anthropic(anthropic::MessagesStream),
    Responses(openai_responses::ResponsesStream),
    Gemini(gemini::GeminiStream),
}

impl StreamAnswer {
    /// A reader for `format`'s stream; `None` for a format whose streams are not read.
    pub fn new(format: Format, limit: usize, denied: DeniedToolCall) -> Option<Self> {
        let reader = match format {
            Format::OpenaiChat | Format::AzureOpenaiChat => {
                StreamReader::OpenaiChat(openai_chat::ChatStream::new(denied))
            }
            Format::AnthropicMessages => {
                StreamReader::Anthropic(anthropic::MessagesStream::new(denied))
            }
            Format::OpenaiResponses | Format::AzureOpenaiResponses => {
                StreamReader::Responses(openai_responses::ResponsesStream::new(denied))
            }
            Format::Gemini => StreamReader::Gemini(gemini::GeminiStream::new(denied)),
            _ => return None,
        };
        Some(Self {
            splitter: EventSplitter::new(limit),
            reader,
            denied,
            limit,
            held: 0,
            ended: false,
        })
    }

    /// The complete events in `chunk` (and, at the end, whatever is left).
    pub fn events(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Vec<Event>, SseError> {
        let mut events = self.splitter.push(chunk)?;
        if end_of_stream {
            let mut tail = self.splitter.finish();
            if !tail.raw.is_empty() {
                // The stream ends inside an event, which the readers read as a whole one.
                // Held calls released after it would run into it on the client's side (their
                // first event lost, a call read without its first fragment): it is closed so
                // the client reads what was judged.
                tail.raw.extend_from_slice(b"\n\n");
                events.push(tail);
            }
        }
        Ok(events)
    }

    /// What to do with `event`; an answer holding more than the limit is refused (fail
    /// closed: the held calls are never passed unjudged).
    pub fn push(&mut self, event: Event) -> Result<Flow, AnswerError> {
        let size = event.raw.len();
        let flow = match &mut self.reader {
            StreamReader::OpenaiChat(r) => r.push(event),
            StreamReader::Anthropic(r) => r.push(event),
            StreamReader::Responses(r) => r.push(event),
            StreamReader::Gemini(r) => r.push(event),
        }?;
        if matches!(&flow, Flow::Emit(bytes) if bytes.is_empty()) && !self.ended {
            self.held += size;
            if self.held > self.limit {
                return Err(AnswerError::TooLarge(self.limit));
            }
        }
        Ok(flow)
    }

    /// At the end of the stream: calls still held (an answer cut short) are judged too.
    pub fn finish(&mut self) -> Flow {
        match &mut self.reader {
            StreamReader::OpenaiChat(r) => r.finish(),
            StreamReader::Anthropic(r) => r.finish(),
            StreamReader::Responses(r) => r.finish(),
            StreamReader::Gemini(r) => r.finish(),
        }
    }

    /// The calls waiting for judgement, in the order [`Self::release`] expects.
    pub fn pending(&self) -> Vec<ToolCall> {
        match &self.reader {
            StreamReader::OpenaiChat(r) => r.pending(),
            StreamReader::Anthropic(r) => r.pending(),
            StreamReader::Responses(r) => r.pending(),
            StreamReader::Gemini(r) => r.pending(),
        }
    }

    /// The held events with the judgement applied, and the event that completed the answer.
    pub fn release(&mut self, refusals: &Refusals) -> Vec<u8> {
        self.held = 0;
        self.ended |= self.denied == DeniedToolCall::Error && refusals.iter().any(Option::is_some);
        match &mut self.reader {
            StreamReader::OpenaiChat(r) => r.release(refusals),
            StreamReader::Anthropic(r) => r.release(refusals),
            StreamReader::Responses(r) => r.release(refusals),
            StreamReader::Gemini(r) => r.release(refusals),
        }
    }
}

/// An SSE event carrying `data` as its one data line.
pub fn data_event(data: &[u8]) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
pub(crate) mod testing {
    //! Drives a [`StreamAnswer`] the way the ext_proc leg does, with a fixed judgement.
    use super::*;

    /// A judgement refusing the calls named in `names`, and every call whose arguments do
    /// not parse (with that reason), as the leg does.
    pub fn deny(names: &'static [&'static str]) -> impl Fn(&ToolCall) -> Option<String> {
        move |c: &ToolCall| match &c.arguments {
            Err(why) => Some(why.clone()),
            Ok(_) => names
                .contains(&c.name.as_str())
                .then(|| "not allowed".to_owned()),
        }
    }

    /// The bytes a client receives when `stream` arrives in two chunks cut at `cut`, and the
    /// names of the calls judged; `judge` refuses a call by name.
    pub fn run(
        format: Format,
        denied: DeniedToolCall,
        stream: &[u8],
        cut: usize,
        judge: &dyn Fn(&ToolCall) -> Option<String>,
    ) -> (Vec<u8>, Vec<ToolCall>) {
        let mut answer = StreamAnswer::new(format, 1 << 20, denied).unwrap();
        let mut out = Vec::new();
        let mut judged = Vec::new();
        let mut apply = |answer: &mut StreamAnswer, flow: Flow, out: &mut Vec<u8>| match flow {
            Flow::Emit(bytes) => out.extend(bytes),
            Flow::Judge => {
                let calls = answer.pending();
                let refusals: Vec<_> = calls.iter().map(judge).collect();
                judged.extend(calls);
                out.extend(answer.release(&refusals));
            }
        };
        for (chunk, last) in [(&stream[..cut], false), (&stream[cut..], true)] {
            for event in answer.events(chunk, last).unwrap() {
                let flow = answer.push(event).unwrap();
                apply(&mut answer, flow, &mut out);
            }
        }
        let flow = answer.finish();
        apply(&mut answer, flow, &mut out);
        (out, judged)
    }
}
