//! Tool calls in Gemini `generateContent` answers: `functionCall` parts (`args` is the
//! arguments object) of `candidates[].content.parts`.
//!
//! SSE (`streamGenerateContent?alt=sse`): every event is a whole `GenerateContentResponse`
//! chunk, and a call arrives whole in one part (clients concatenate the chunks' parts; nothing
//! is indexed across chunks). Chunks without calls flow as they arrive; chunks carrying calls
//! are held until a candidate finishes (`finishReason`) or the stream ends, then all calls are
//! judged at once and the held chunks are released without the refused calls' parts. An answer
//! left without calls gains a text part saying why.

use serde_json::{Value, json};

use super::{AnswerError, Flow, Held, Refusals, ToolCall, as_received, read_json, refusal_text};
use crate::config::DeniedToolCall;
use crate::rewrite::sse::Event;

fn candidates(answer: &Value) -> &[Value] {
    answer["candidates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn parts(candidate: &Value) -> &[Value] {
    candidate["content"]["parts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A part's call, under either spelling clients accept (`functionCall`, or the proto field
/// name `function_call`, which google-genai also reads); a part spelling both is refused.
fn part_call(part: &Value) -> Option<ToolCall> {
    let (camel, snake) = (part.get("functionCall"), part.get("function_call"));
    let call = camel.or(snake)?;
    if camel.is_some() && snake.is_some() {
        return Some(ToolCall {
            name: call["name"].as_str().unwrap_or_default().to_owned(),
            kind: "function".to_owned(),
            arguments: Err(
                "the part names a call twice (functionCall and function_call)".to_owned(),
            ),
        });
    }
    Some(ToolCall {
        name: call["name"].as_str().unwrap_or_default().to_owned(),
        kind: "function".to_owned(),
        arguments: match &call["args"] {
            Value::Object(map) => Ok(map.clone()),
            Value::Null => Ok(Default::default()),
            _ => Err("its arguments are not a JSON object".to_owned()),
        },
    })
}

/// The calls of one answer (or chunk), candidate by candidate, part by part.
pub fn json_calls(answer: &Value) -> Vec<ToolCall> {
    candidates(answer)
        .iter()
        .flat_map(|c| parts(c).iter().filter_map(part_call))
        .collect()
}

/// Removes the refused `functionCall` parts, counting calls from `*at` (in [`json_calls`]
/// order); whether any part was removed.
fn remove_parts(answer: &mut Value, refusals: &Refusals, at: &mut usize) -> bool {
    let mut removed = false;
    let Some(list) = answer["candidates"].as_array_mut() else {
        return false;
    };
    for candidate in list {
        let Some(parts) = candidate["content"]["parts"].as_array_mut() else {
            continue;
        };
        parts.retain(|part| {
            if part_call(part).is_none() {
                return true;
            }
            *at += 1;
            let keep = refusals.get(*at - 1).is_some_and(Option::is_none);
            removed |= !keep;
            keep
        });
    }
    removed
}

/// Adds `text` as a part of the first candidate.
fn say(answer: &mut Value, text: &str) {
    if !answer["candidates"].is_array() || candidates(answer).is_empty() {
        answer["candidates"] = json!([{"content": {"role": "model", "parts": []}, "index": 0}]);
    }
    let candidate = &mut answer["candidates"][0];
    if !candidate["content"]["parts"].is_array() {
        candidate["content"] = json!({"role": "model", "parts": []});
    }
    if let Some(parts) = candidate["content"]["parts"].as_array_mut() {
        parts.push(json!({"text": text}));
    }
}

/// Removes the refused calls from a JSON answer; one left without calls says why.
pub fn remove_from_json(answer: &mut Value, calls: &[ToolCall], refusals: &Refusals) {
    remove_parts(answer, refusals, &mut 0);
    if refusals.iter().all(Option::is_some) && !refusals.is_empty() {
        say(answer, &refusal_text(calls, refusals));
    }
}

/// Gemini's error object (`denied_tool_call: error`).
pub fn error_body(text: &str) -> Vec<u8> {
    json!({"error": {"code": 403, "message": text, "status": "PERMISSION_DENIED"}})
        .to_string()
        .into_bytes()
}

/// A streamed Gemini answer.
pub struct GeminiStream {
    denied: DeniedToolCall,
    calls: Vec<ToolCall>,
    held: Vec<Held>,
    ended: bool,
}

impl GeminiStream {
    pub fn new(denied: DeniedToolCall) -> Self {
        Self {
            denied,
            calls: Vec::new(),
            held: Vec::new(),
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
        let calls = json_calls(&chunk);
        let finishes = candidates(&chunk)
            .iter()
            .any(|c| !c["finishReason"].is_null() || !c["finish_reason"].is_null());
        if calls.is_empty() && (!finishes || self.calls.is_empty()) {
            return Ok(Flow::Emit(event.raw));
        }
        self.calls.extend(calls);
        self.held.push(Held { event, chunk });
        Ok(if finishes {
            Flow::Judge
        } else {
            Flow::Emit(Vec::new())
        })
    }

    pub fn finish(&mut self) -> Flow {
        if self.calls.is_empty() || self.ended {
            Flow::Emit(Vec::new())
        } else {
            Flow::Judge
        }
    }

    pub fn pending(&self) -> Vec<ToolCall> {
        self.calls.clone()
    }

    pub fn release(&mut self, refusals: &Refusals) -> Vec<u8> {
        let calls = std::mem::take(&mut self.calls);
        let held = std::mem::take(&mut self.held);
        if refusals.iter().all(Option::is_none) {
            return as_received(held);
        }
        let text = refusal_text(&calls, refusals);
        if self.denied == DeniedToolCall::Error && refusals.iter().any(Option::is_some) {
            self.ended = true;
            let mut out = b"data: ".to_vec();
            out.extend(error_body(&text));
            out.extend_from_slice(b"\n\n");
            return out;
        }
        let none_left = !refusals.is_empty() && refusals.iter().all(Option::is_some);
        let last = held.len().saturating_sub(1);
        let mut at = 0;
        let mut out = Vec::new();
        for (n, Held { event, mut chunk }) in held.into_iter().enumerate() {
            let mut changed = remove_parts(&mut chunk, refusals, &mut at);
            if none_left && n == last {
                say(&mut chunk, &text);
                changed = true;
            }
            let says_nothing = candidates(&chunk).iter().all(|c| {
                parts(c).is_empty() && c["finishReason"].is_null() && c["finish_reason"].is_null()
            }) && chunk["usageMetadata"].is_null()
                && chunk["usage_metadata"].is_null();
            match (changed, says_nothing) {
                (false, _) => out.extend(event.raw),
                (true, true) => {}
                (true, false) => out.extend(event.with_message(chunk.to_string().as_bytes())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::testing::run;
    use super::super::{JsonAnswer, ToolCall};
    use crate::config::{DeniedToolCall, Format};

    fn chunk(parts: Value, finish: Option<&str>) -> String {
        let mut c =
            json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}]});
        if let Some(f) = finish {
            c["candidates"][0]["finishReason"] = f.into();
        }
        format!("data: {c}\r\n\r\n")
    }

    fn stream() -> Vec<u8> {
        [
            chunk(json!([{"text": "Let me check."}]), None),
            chunk(
                json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]),
                None,
            ),
            chunk(
                json!([{"functionCall": {"name": "refund", "args": {"ticket_id": "T-999"}}}]),
                Some("STOP"),
            ),
        ]
        .concat()
        .into_bytes()
    }

    /// The calls and text a client reads, concatenating the chunks' parts.
    fn read(out: &[u8]) -> (Vec<String>, String) {
        let (mut calls, mut text) = (Vec::new(), String::new());
        for raw in String::from_utf8(out.to_vec())
            .unwrap()
            .split("\r\n\r\n")
            .filter(|e| !e.is_empty())
        {
            let c: Value = serde_json::from_str(raw.strip_prefix("data: ").unwrap()).unwrap();
            for part in c["candidates"][0]["content"]["parts"].as_array().unwrap() {
                if let Some(name) = part["functionCall"]["name"].as_str() {
                    calls.push(name.to_owned());
                }
                text += part["text"].as_str().unwrap_or_default();
            }
        }
        (calls, text)
    }

    fn deny(names: &'static [&'static str]) -> impl Fn(&ToolCall) -> Option<String> {
        move |c: &ToolCall| {
            names
                .contains(&c.name.as_str())
                .then(|| "not allowed".to_owned())
        }
    }

    #[test]
    fn streams_lose_only_the_refused_calls_at_every_split() {
        let s = stream();
        for cut in 0..=s.len() {
            let (out, judged) = run(Format::Gemini, DeniedToolCall::Remove, &s, cut, &deny(&[]));
            assert_eq!(out, s, "cut at {cut}");
            assert_eq!(judged.len(), 2);
            let (out, _) = run(
                Format::Gemini,
                DeniedToolCall::Remove,
                &s,
                cut,
                &deny(&["refund"]),
            );
            assert_eq!(
                read(&out),
                (vec!["get_weather".to_owned()], "Let me check.".to_owned())
            );
            let (out, _) = run(
                Format::Gemini,
                DeniedToolCall::Remove,
                &s,
                cut,
                &deny(&["refund", "get_weather"]),
            );
            let (calls, text) = read(&out);
            assert!(calls.is_empty());
            assert_eq!(
                text,
                "Let me check.agent-authz refused the tool calls get_weather: not allowed; refund: not allowed."
            );
        }
    }

    #[test]
    fn snake_case_calls_are_judged_too() {
        let s = [
            chunk(
                json!([{"function_call": {"name": "delete_repo", "args": {}}}]),
                None,
            ),
            chunk(json!([{"text": "done"}]), Some("STOP")),
        ]
        .concat();
        let (out, judged) = run(
            Format::Gemini,
            DeniedToolCall::Remove,
            s.as_bytes(),
            9,
            &deny(&["delete_repo"]),
        );
        assert_eq!(judged[0].name, "delete_repo");
        assert!(!String::from_utf8_lossy(&out).contains("delete_repo\""));
        let both = json!({"candidates": [{"content": {"parts": [
            {"functionCall": {"name": "get_weather", "args": {}}, "function_call": {"name": "delete_repo", "args": {}}}]}}]});
        assert!(super::json_calls(&both)[0].arguments.is_err());
    }

    #[test]
    fn json_answers_lose_only_the_refused_calls() {
        let body = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {}}}, {"functionCall": {"name": "refund", "args": []}}]},
            "finishReason": "STOP"}]});
        let mut answer = JsonAnswer::new(Format::Gemini, 1 << 20);
        answer.push(body.to_string().as_bytes()).unwrap();
        let (_, parsed) = answer.finish().unwrap();
        let parsed = parsed.unwrap();
        assert!(
            parsed.calls[1].arguments.is_err(),
            "args that are not an object"
        );
        let out: Value = serde_json::from_slice(
            &parsed.rewrite(&[None, Some("no".into())], DeniedToolCall::Remove),
        )
        .unwrap();
        assert_eq!(
            out["candidates"][0]["content"]["parts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
