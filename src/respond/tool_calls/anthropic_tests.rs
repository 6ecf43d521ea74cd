use serde_json::{Value, json};

use super::super::JsonAnswer;
use super::super::testing::{deny, run};
use crate::config::{DeniedToolCall, Format};

fn event(e: Value) -> String {
    format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())
}

fn tool_block(index: u64, id: &str, name: &str, input: &str) -> Vec<String> {
    let mut out = vec![event(json!({"type": "content_block_start", "index": index,
        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}))];
    for piece in input.as_bytes().chunks(6) {
        out.push(event(json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": std::str::from_utf8(piece).unwrap()}})));
    }
    out.push(event(json!({"type": "content_block_stop", "index": index})));
    out
}

/// A text block, then get_weather (block 1) and refund (block 2), then the end.
fn stream() -> Vec<u8> {
    let mut events = vec![
        event(
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "m", "stop_reason": null}}),
        ),
        event(
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}),
        ),
        event(json!({"type": "content_block_stop", "index": 0})),
        event(json!({"type": "ping"})),
    ];
    events.extend(tool_block(
        1,
        "toolu_w",
        "get_weather",
        r#"{"city":"Paris"}"#,
    ));
    events.extend(tool_block(
        2,
        "toolu_r",
        "refund",
        r#"{"ticket_id":"T-999","amount_cents":999999}"#,
    ));
    events.push(event(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}})));
    events.push(event(json!({"type": "message_stop"})));
    events.concat().into_bytes()
}

/// The message as the SDK accumulates it: blocks by index (text or (name, input)), and the
/// stop reason.
fn accumulate(out: &[u8]) -> (Vec<Value>, String) {
    let text = String::from_utf8(out.to_vec()).unwrap();
    let mut blocks: Vec<Value> = Vec::new();
    let mut partial: Vec<String> = Vec::new();
    let mut stop = String::new();
    for raw in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = raw.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let e: Value = serde_json::from_str(data).unwrap();
        match e["type"].as_str().unwrap() {
            "content_block_start" => {
                assert_eq!(
                    e["index"].as_u64().unwrap() as usize,
                    blocks.len(),
                    "no gaps"
                );
                blocks.push(e["content_block"].clone());
                partial.push(String::new());
            }
            "content_block_delta" => {
                let i = e["index"].as_u64().unwrap() as usize;
                match e["delta"]["type"].as_str().unwrap() {
                    "text_delta" => {
                        let t = blocks[i]["text"].as_str().unwrap().to_owned();
                        blocks[i]["text"] = (t + e["delta"]["text"].as_str().unwrap()).into();
                    }
                    _ => partial[i] += e["delta"]["partial_json"].as_str().unwrap(),
                }
            }
            "content_block_stop" => {
                let i = e["index"].as_u64().unwrap() as usize;
                if blocks[i]["type"] == "tool_use" {
                    blocks[i]["input"] = serde_json::from_str(&partial[i]).unwrap();
                }
            }
            "message_delta" => stop = e["delta"]["stop_reason"].as_str().unwrap().to_owned(),
            _ => {}
        }
    }
    (blocks, stop)
}

#[test]
fn nothing_refused_releases_every_byte_at_every_split() {
    let s = stream();
    for cut in 0..=s.len() {
        let (out, judged) = run(
            Format::AnthropicMessages,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&[]),
        );
        assert_eq!(out, s, "cut at {cut}");
        assert_eq!(judged.len(), 2);
        assert_eq!(judged[1].arguments.as_ref().unwrap()["ticket_id"], "T-999");
    }
}

#[test]
fn a_refused_call_never_reaches_the_client_at_any_split() {
    let s = stream();
    for cut in 0..=s.len() {
        let (out, _) = run(
            Format::AnthropicMessages,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&["get_weather"]),
        );
        assert!(
            !String::from_utf8_lossy(&out).contains("get_weather"),
            "cut at {cut}"
        );
        let (blocks, stop) = accumulate(&out);
        assert_eq!(blocks.len(), 2, "cut at {cut}");
        assert_eq!(blocks[0]["text"], "Let me check.");
        assert_eq!(blocks[1]["name"], "refund");
        assert_eq!(blocks[1]["input"]["amount_cents"], json!(999999));
        assert_eq!(stop, "tool_use");
    }
}

#[test]
fn an_answer_left_without_calls_ends_with_text_saying_why() {
    let s = stream();
    for cut in (0..=s.len()).step_by(3) {
        let (out, _) = run(
            Format::AnthropicMessages,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&["get_weather", "refund"]),
        );
        let (blocks, stop) = accumulate(&out);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1]["type"], "text");
        assert_eq!(
            blocks[1]["text"],
            "agent-authz refused the tool calls get_weather: not allowed; refund: not allowed."
        );
        assert_eq!(stop, "end_turn");
        assert!(out.ends_with(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    }
}

#[test]
fn text_before_the_first_tool_block_is_never_held() {
    let mut answer =
        super::super::StreamAnswer::new(Format::AnthropicMessages, 1 << 20, DeniedToolCall::Remove)
            .unwrap();
    let flows: Vec<_> = answer
        .events(&stream(), false)
        .unwrap()
        .into_iter()
        .map(|e| answer.push(e).unwrap())
        .collect();
    assert!(matches!(&flows[2], super::super::Flow::Emit(b) if !b.is_empty()));
    assert!(
        matches!(&flows[4], super::super::Flow::Emit(b) if !b.is_empty()),
        "ping flows"
    );
    assert_eq!(
        flows[5],
        super::super::Flow::Emit(vec![]),
        "the tool block is held"
    );
}

#[test]
fn error_mode_ends_the_stream_with_an_error_event() {
    let (out, _) = run(
        Format::AnthropicMessages,
        DeniedToolCall::Error,
        &stream(),
        50,
        &deny(&["refund"]),
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("\n\n") && text.contains("event: error\ndata: {\"type\":\"error\""));
    assert!(!text.contains("message_stop") && !text.contains("T-999\""));
}

const JSON_ANSWER: &str = r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"ok"},{"type":"tool_use","id":"a","name":"get_weather","input":{"city":"Paris"}},{"type":"tool_use","id":"b","name":"refund","input":{"ticket_id":"T-999"}}],"stop_reason":"tool_use"}"#;

fn judge_json(refused: &[Option<String>]) -> Value {
    let mut answer = JsonAnswer::new(Format::AnthropicMessages, 1 << 20);
    answer.push(JSON_ANSWER.as_bytes()).unwrap();
    let (_, parsed) = answer.finish().unwrap();
    let parsed = parsed.unwrap();
    assert_eq!(parsed.calls.len(), 2);
    serde_json::from_slice(&parsed.rewrite(refused, DeniedToolCall::Remove)).unwrap()
}

#[test]
fn json_answers_lose_only_the_refused_blocks() {
    let out = judge_json(&[None, Some("no".into())]);
    let names: Vec<_> = out["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].clone())
        .collect();
    assert_eq!(names, [Value::Null, json!("get_weather")]);
    assert_eq!(out["stop_reason"], "tool_use");
    let out = judge_json(&[Some("a".into()), Some("b".into())]);
    assert_eq!(out["content"].as_array().unwrap().len(), 2);
    assert_eq!(
        out["content"][1]["text"],
        "agent-authz refused the tool calls get_weather: a; refund: b."
    );
    assert_eq!(out["stop_reason"], "end_turn");
}

#[test]
fn a_tool_block_numbered_below_an_earlier_one_is_held_too() {
    // Found by fuzz/fuzz_targets/tool_call_answers.rs (in Responses): holding began at the
    // first tool block's index, so a lower-numbered block arriving later passed unjudged.
    let s = [
        tool_block(2, "toolu_w", "get_weather", r#"{"city":"Paris"}"#),
        tool_block(1, "toolu_r", "refund", r#"{"ticket_id":"T-999"}"#),
        vec![event(
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
        )],
    ]
    .concat()
    .concat()
    .into_bytes();
    for cut in 0..=s.len() {
        let (out, judged) = run(
            Format::AnthropicMessages,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&["refund"]),
        );
        assert_eq!(judged.len(), 2, "cut at {cut}");
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("T-999") && !out.contains("toolu_r"),
            "cut at {cut}: {out}"
        );
    }
}

#[test]
fn a_tool_block_without_its_index_is_not_passed_on() {
    // Read as block 0 before, its deltas and its refusal went by another index.
    let s = event(json!({"type": "content_block_start",
        "content_block": {"type": "tool_use", "id": "toolu_r", "name": "refund", "input": {"ticket_id": "T-999"}}}));
    let mut answer =
        super::super::StreamAnswer::new(Format::AnthropicMessages, 1 << 20, DeniedToolCall::Remove)
            .unwrap();
    let events = answer.events(s.as_bytes(), true).unwrap();
    let refused = events
        .into_iter()
        .any(|e| matches!(answer.push(e), Err(super::super::AnswerError::Unplaced)));
    assert!(refused);
}

#[test]
fn arguments_arriving_after_the_calls_were_judged_are_not_passed_on() {
    // The SDK would add the late fragment to the released call: `{"city":"Paris"}` judged,
    // something else run.
    let mut events = tool_block(0, "toolu_w", "get_weather", r#"{"city":"Paris"}"#);
    events.push(event(
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
    ));
    events.push(event(json!({"type": "content_block_delta", "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": ",\"to\":\"x\"}"}})));
    let mut answer =
        super::super::StreamAnswer::new(Format::AnthropicMessages, 1 << 20, DeniedToolCall::Remove)
            .unwrap();
    let mut outcome = Ok(());
    for e in answer.events(events.concat().as_bytes(), true).unwrap() {
        match answer.push(e) {
            Ok(super::super::Flow::Judge) => {
                let calls = answer.pending();
                answer.release(&vec![None; calls.len()]);
            }
            Ok(super::super::Flow::Emit(_)) => {}
            Err(e) => outcome = Err(e),
        }
    }
    assert!(
        matches!(outcome, Err(super::super::AnswerError::Unjudged(_))),
        "{outcome:?}"
    );
}
