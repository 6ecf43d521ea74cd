use base64::Engine as _;
use serde_json::{Value, json};

use super::super::testing::deny;
use super::super::{Flow, JsonAnswer, ToolCall};
use super::{ConverseStream, event};
use crate::config::{DeniedToolCall, Format};
use crate::rewrite::eventstream::{self, MessageSplitter};

fn tool_block(index: u64, id: &str, name: &str, input: &str) -> Vec<Vec<u8>> {
    let mut out = vec![event(
        "contentBlockStart",
        &json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
    )];
    for piece in input.as_bytes().chunks(6) {
        out.push(event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": std::str::from_utf8(piece).unwrap()}}}),
        ));
    }
    out.push(event(
        "contentBlockStop",
        &json!({ "contentBlockIndex": index }),
    ));
    out
}

/// Text (block 0), get_weather (block 1), refund (block 2), then the end and the metadata.
fn stream_with(refund_input: &str) -> Vec<u8> {
    let mut messages = vec![
        event("messageStart", &json!({"role": "assistant"})),
        event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": "Let me check."}}),
        ),
        event("contentBlockStop", &json!({"contentBlockIndex": 0})),
    ];
    messages.extend(tool_block(
        1,
        "tooluse_w",
        "get_weather",
        r#"{"city":"Paris"}"#,
    ));
    messages.extend(tool_block(2, "tooluse_r", "refund", refund_input));
    messages.push(event("messageStop", &json!({"stopReason": "tool_use"})));
    messages.push(event(
        "metadata",
        &json!({"usage": {"inputTokens": 1, "outputTokens": 9, "totalTokens": 10}, "metrics": {"latencyMs": 1}}),
    ));
    messages.concat()
}

fn stream() -> Vec<u8> {
    stream_with(r#"{"ticket_id":"T-999","amount_cents":999999}"#)
}

/// The bytes a client receives when `stream` arrives in two chunks cut at `cut`, and the calls
/// judged (the ext_proc leg's loop, as `testing::run` drives the SSE readers).
fn run(
    denied: DeniedToolCall,
    stream: &[u8],
    cut: usize,
    judge: &dyn Fn(&ToolCall) -> Option<String>,
) -> (Vec<u8>, Vec<ToolCall>) {
    let mut answer = ConverseStream::new(1 << 20, denied);
    let mut out = Vec::new();
    let mut judged = Vec::new();
    let mut apply = |answer: &mut ConverseStream, flow: Flow, out: &mut Vec<u8>| match flow {
        Flow::Emit(bytes) => out.extend(bytes),
        Flow::Judge => {
            let calls = answer.pending();
            let refusals: Vec<_> = calls.iter().map(judge).collect();
            judged.extend(calls);
            out.extend(answer.release(&refusals));
        }
    };
    for (chunk, last) in [(&stream[..cut], false), (&stream[cut..], true)] {
        for frame in answer.frames(chunk, last).unwrap() {
            let flow = answer.push(frame).unwrap();
            apply(&mut answer, flow, &mut out);
        }
    }
    let flow = answer.finish();
    apply(&mut answer, flow, &mut out);
    (out, judged)
}

/// What a client decodes (checksums verified by the crate): each message's headers
/// `:message-type` and `:event-type` (or `:exception-type`), and its payload.
fn decode(out: &[u8]) -> Vec<(String, String, Value)> {
    let mut splitter = MessageSplitter::new(1 << 20);
    let frames = splitter.push(out).expect("valid prelude and message CRCs");
    splitter.finish().expect("no message cut short");
    frames
        .iter()
        .map(|f| {
            let m = &f.message;
            let kind = eventstream::header(m, ":event-type")
                .or(eventstream::header(m, ":exception-type"))
                .unwrap_or_default();
            (
                eventstream::header(m, ":message-type").unwrap().to_owned(),
                kind.to_owned(),
                serde_json::from_slice(m.payload()).unwrap(),
            )
        })
        .collect()
}

/// The message as a client accumulates it by `contentBlockIndex` (text, or toolUse with its
/// input parsed), and the stop reason. Indices must start at 0 and have no gaps.
fn accumulate(out: &[u8]) -> (Vec<Value>, String) {
    let mut blocks: Vec<Value> = Vec::new();
    let mut stop = String::new();
    for (message_type, kind, e) in decode(out) {
        assert_eq!(message_type, "event");
        let index = e["contentBlockIndex"].as_u64().map(|i| i as usize);
        match kind.as_str() {
            "contentBlockStart" => {
                assert_eq!(index, Some(blocks.len()), "no gaps");
                let tool = &e["start"]["toolUse"];
                blocks.push(json!({"toolUse": {"name": tool["name"], "input": ""}}));
            }
            "contentBlockDelta" => {
                let i = index.unwrap();
                if i == blocks.len() {
                    blocks.push(json!({"text": ""}));
                }
                let block = &mut blocks[i];
                if let Some(text) = e["delta"]["text"].as_str() {
                    block["text"] = (block["text"].as_str().unwrap().to_owned() + text).into();
                } else {
                    let input = block["toolUse"]["input"].as_str().unwrap().to_owned();
                    block["toolUse"]["input"] =
                        (input + e["delta"]["toolUse"]["input"].as_str().unwrap()).into();
                }
            }
            "contentBlockStop" => {
                let block = &mut blocks[index.unwrap()];
                if let Some(input) = block["toolUse"]["input"].as_str() {
                    block["toolUse"]["input"] = serde_json::from_str(input).unwrap();
                }
            }
            "messageStop" => stop = e["stopReason"].as_str().unwrap().to_owned(),
            _ => {}
        }
    }
    (blocks, stop)
}

#[test]
fn nothing_refused_releases_every_byte_at_every_split() {
    let s = stream();
    for cut in 0..=s.len() {
        let (out, judged) = run(DeniedToolCall::Remove, &s, cut, &deny(&[]));
        assert_eq!(out, s, "cut at {cut}");
        assert_eq!(judged.len(), 2);
        assert_eq!(judged[0].name, "get_weather");
        assert_eq!(judged[0].kind, "toolUse");
        assert_eq!(judged[1].arguments.as_ref().unwrap()["ticket_id"], "T-999");
    }
}

#[test]
fn a_refused_call_never_reaches_the_client_at_any_split() {
    let s = stream();
    for cut in 0..=s.len() {
        let (out, _) = run(DeniedToolCall::Remove, &s, cut, &deny(&["refund"]));
        assert!(
            !String::from_utf8_lossy(&out).contains("T-999")
                && !String::from_utf8_lossy(&out).contains("tooluse_r"),
            "cut at {cut}"
        );
        let (blocks, stop) = accumulate(&out);
        assert_eq!(blocks.len(), 2, "cut at {cut}");
        assert_eq!(blocks[0]["text"], "Let me check.");
        assert_eq!(blocks[1]["toolUse"]["name"], "get_weather");
        assert_eq!(blocks[1]["toolUse"]["input"], json!({"city": "Paris"}));
        assert_eq!(stop, "tool_use");
    }
}

#[test]
fn a_refused_first_call_renumbers_the_one_after_it() {
    let s = stream();
    for cut in (0..=s.len()).step_by(7) {
        let (out, _) = run(DeniedToolCall::Remove, &s, cut, &deny(&["get_weather"]));
        assert!(!String::from_utf8_lossy(&out).contains("get_weather"));
        let (blocks, stop) = accumulate(&out);
        assert_eq!(blocks.len(), 2, "cut at {cut}");
        assert_eq!(blocks[1]["toolUse"]["name"], "refund");
        assert_eq!(blocks[1]["toolUse"]["input"]["amount_cents"], json!(999999));
        assert_eq!(stop, "tool_use");
    }
}

#[test]
fn an_answer_left_without_calls_ends_with_text_saying_why() {
    let s = stream();
    for cut in (0..=s.len()).step_by(3) {
        let (out, _) = run(
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&["get_weather", "refund"]),
        );
        let (blocks, stop) = accumulate(&out);
        assert_eq!(blocks.len(), 2, "cut at {cut}");
        assert_eq!(
            blocks[1]["text"],
            "agent-authz refused the tool calls get_weather: not allowed; refund: not allowed."
        );
        assert_eq!(stop, "end_turn");
        let kinds: Vec<_> = decode(&out).into_iter().map(|(_, k, _)| k).collect();
        assert_eq!(kinds[kinds.len() - 2..], ["messageStop", "metadata"]);
    }
}

#[test]
fn arguments_that_are_not_an_object_are_refused_with_that_reason() {
    for (input, why) in [
        ("[1,2]", "its arguments are not a JSON object"),
        (r#"{"ticket_id":"#, "its arguments are not valid JSON"),
    ] {
        let s = stream_with(input);
        let (out, judged) = run(DeniedToolCall::Remove, &s, 40, &deny(&[]));
        assert_eq!(judged[1].arguments, Err(why.to_owned()));
        let (blocks, stop) = accumulate(&out);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1]["toolUse"]["name"], "get_weather");
        assert_eq!(stop, "tool_use");
    }
}

#[test]
fn text_before_the_first_tool_block_is_never_held() {
    let mut answer = ConverseStream::new(1 << 20, DeniedToolCall::Remove);
    let flows: Vec<_> = answer
        .frames(&stream(), false)
        .unwrap()
        .into_iter()
        .map(|f| answer.push(f).unwrap())
        .collect();
    for (i, flow) in flows[..3].iter().enumerate() {
        assert!(
            matches!(flow, Flow::Emit(b) if !b.is_empty()),
            "message {i} flows"
        );
    }
    assert_eq!(flows[3], Flow::Emit(vec![]), "the tool block is held");
}

#[test]
fn error_mode_ends_the_stream_with_an_exception_message() {
    let s = stream();
    for cut in (0..=s.len()).step_by(11) {
        let (out, _) = run(DeniedToolCall::Error, &s, cut, &deny(&["refund"]));
        let messages = decode(&out);
        let (message_type, kind, payload) = messages.last().unwrap();
        assert_eq!(
            (message_type.as_str(), kind.as_str()),
            ("exception", "validationException")
        );
        assert_eq!(
            payload["message"],
            "agent-authz refused the tool call refund: not allowed."
        );
        assert!(
            messages[..messages.len() - 1]
                .iter()
                .all(|(_, k, _)| k == "messageStart"
                    || k == "contentBlockDelta"
                    || k == "contentBlockStop")
        );
        assert!(!String::from_utf8_lossy(&out).contains("T-999"));
    }
}

#[test]
fn an_invoke_model_stream_carrying_a_tool_call_is_cut() {
    let chunk = |e: Value| {
        let bytes = base64::engine::general_purpose::STANDARD.encode(e.to_string());
        event("chunk", &json!({ "bytes": bytes }))
    };
    let text = chunk(
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
    );
    let tool = chunk(
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "refund", "input": {}}}),
    );
    let mut answer = ConverseStream::new(1 << 20, DeniedToolCall::Remove);
    let frames = answer.frames(&[text.clone(), tool].concat(), true).unwrap();
    let mut frames = frames.into_iter();
    assert_eq!(
        answer.push(frames.next().unwrap()).unwrap(),
        Flow::Emit(text)
    );
    assert!(answer.push(frames.next().unwrap()).is_err());
}

#[test]
fn a_stream_cut_inside_a_message_or_with_a_bad_checksum_is_an_error() {
    let s = stream();
    let mut answer = ConverseStream::new(1 << 20, DeniedToolCall::Remove);
    assert!(answer.frames(&s[..s.len() - 1], true).is_err());
    let mut bad = s.clone();
    bad[20] ^= 1;
    let mut answer = ConverseStream::new(1 << 20, DeniedToolCall::Remove);
    assert!(answer.frames(&bad, false).is_err());
}

const JSON_ANSWER: &str = r#"{"output":{"message":{"role":"assistant","content":[{"text":"ok"},{"toolUse":{"toolUseId":"a","name":"get_weather","input":{"city":"Paris"}}},{"toolUse":{"toolUseId":"b","name":"refund","input":{"ticket_id":"T-999"}}}]}},"stopReason":"tool_use","usage":{"inputTokens":1,"outputTokens":2,"totalTokens":3}}"#;

fn judge_json(answer: &str, refused: &[Option<String>], denied: DeniedToolCall) -> Value {
    let mut json = JsonAnswer::new(Format::BedrockConverse, 1 << 20);
    json.push(answer.as_bytes()).unwrap();
    let (_, parsed) = json.finish().unwrap();
    let parsed = parsed.unwrap();
    assert_eq!(parsed.calls.len(), 2);
    serde_json::from_slice(&parsed.rewrite(refused, denied)).unwrap()
}

#[test]
fn json_answers_lose_only_the_refused_blocks() {
    let out = judge_json(
        JSON_ANSWER,
        &[None, Some("no".into())],
        DeniedToolCall::Remove,
    );
    let content = &out["output"]["message"]["content"];
    assert_eq!(content.as_array().unwrap().len(), 2);
    assert_eq!(content[1]["toolUse"]["name"], "get_weather");
    assert_eq!(out["stopReason"], "tool_use");
    assert!(out.get("content").is_none(), "no Anthropic member added");
    let out = judge_json(
        JSON_ANSWER,
        &[Some("a".into()), Some("b".into())],
        DeniedToolCall::Remove,
    );
    let content = &out["output"]["message"]["content"];
    assert_eq!(content.as_array().unwrap().len(), 2);
    assert_eq!(
        content[1]["text"],
        "agent-authz refused the tool calls get_weather: a; refund: b."
    );
    assert_eq!(out["stopReason"], "end_turn");
    let out = judge_json(
        JSON_ANSWER,
        &[None, Some("b".into())],
        DeniedToolCall::Error,
    );
    assert_eq!(
        out,
        json!({"message": "agent-authz refused the tool call refund: b."})
    );
}

#[test]
fn json_arguments_that_are_not_an_object_are_refused() {
    let answer = JSON_ANSWER.replace(r#"{"city":"Paris"}"#, r#""Paris""#);
    let mut json = JsonAnswer::new(Format::BedrockConverse, 1 << 20);
    json.push(answer.as_bytes()).unwrap();
    let calls = json.finish().unwrap().1.unwrap().calls;
    assert_eq!(
        calls[0].arguments,
        Err("its arguments are not a JSON object".to_owned())
    );
}

#[test]
fn invoke_model_answers_of_anthropic_bodies_are_read_as_anthropic_messages() {
    let answer = r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"tool_use","id":"a","name":"get_weather","input":{"city":"Paris"}},{"type":"tool_use","id":"b","name":"refund","input":{"ticket_id":"T-999"}}],"stop_reason":"tool_use"}"#;
    let out = judge_json(answer, &[None, Some("no".into())], DeniedToolCall::Remove);
    let names: Vec<_> = out["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].clone())
        .collect();
    assert_eq!(names, [json!("get_weather")]);
    assert!(out.get("output").is_none(), "no Converse member added");
}

#[test]
fn tool_messages_no_reader_could_place_are_errors() {
    let no_index = event(
        "contentBlockStart",
        &json!({"start": {"toolUse": {"toolUseId": "t", "name": "refund"}}}),
    );
    let orphan = event(
        "contentBlockDelta",
        &json!({"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{}"}}}),
    );
    let reused = [
        event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": "hi"}}),
        ),
        event(
            "contentBlockStart",
            &json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": "refund"}}}),
        ),
    ]
    .concat();
    let mut answer = ConverseStream::new(1 << 20, DeniedToolCall::Remove);
    let mut frames = answer.frames(&reused, true).unwrap().into_iter();
    assert!(matches!(answer.push(frames.next().unwrap()), Ok(Flow::Emit(b)) if !b.is_empty()));
    assert!(answer.push(frames.next().unwrap()).is_err());
    for bad in [no_index, orphan] {
        let mut answer = ConverseStream::new(1 << 20, DeniedToolCall::Remove);
        let frame = answer.frames(&bad, true).unwrap().pop().unwrap();
        assert!(answer.push(frame).is_err());
    }
}

#[test]
fn a_message_botocore_reads_as_an_event_is_judged_whatever_its_message_type_says() {
    let start = eventstream::message(
        &[
            (":event-type", "contentBlockStart"),
            (":message-type", "Event"),
        ],
        json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "refund"}}})
            .to_string()
            .into_bytes(),
    );
    let mut answer = ConverseStream::new(1 << 20, DeniedToolCall::Remove);
    let frame = answer.frames(&start, true).unwrap().pop().unwrap();
    assert_eq!(answer.push(frame).unwrap(), Flow::Emit(vec![]), "held");
    assert_eq!(answer.finish(), Flow::Judge);
}

#[test]
fn an_answer_in_both_shapes_has_both_read() {
    let both = JSON_ANSWER.replacen(
        '{',
        r#"{"content":[{"type":"tool_use","id":"c","name":"delete_repo","input":{}}],"#,
        1,
    );
    let mut json = JsonAnswer::new(Format::BedrockConverse, 1 << 20);
    json.push(both.as_bytes()).unwrap();
    let parsed = json.finish().unwrap().1.unwrap();
    let names: Vec<_> = parsed.calls.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["get_weather", "refund", "delete_repo"]);
    let out: Value = serde_json::from_slice(
        &parsed.rewrite(&[None, None, Some("no".into())], DeniedToolCall::Remove),
    )
    .unwrap();
    assert!(!out.to_string().contains("delete_repo\""));
    assert_eq!(
        out["output"]["message"]["content"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(out["stopReason"], "tool_use");
}

/// Fuzz regression: a message whose payload is not JSON, after the first tool block, was
/// passed at once, ahead of the held blocks (and a broken `messageStop` with it).
#[test]
fn a_message_that_is_not_json_keeps_its_place_among_held_ones() {
    let not_json = eventstream::message(
        &[
            (":event-type", "contentBlockStart"),
            (":message-type", "event"),
        ],
        b"{\"contentBlockIndex\": 2, \"start\": {\"to\x02".to_vec(),
    );
    let mut messages = vec![event("messageStart", &json!({"role": "assistant"}))];
    messages.extend(tool_block(0, "t", "get_weather", r#"{"city":"Paris"}"#));
    messages.push(not_json);
    messages.push(eventstream::message(
        &[(":event-type", "messageStop"), (":message-type", "event")],
        b"{\"stopReason : \"tool_use\"}".to_vec(),
    ));
    let s = messages.concat();
    for cut in 0..=s.len() {
        let (out, judged) = run(DeniedToolCall::Remove, &s, cut, &deny(&[]));
        assert_eq!(out, s, "cut at {cut}");
        assert_eq!(judged.len(), 1);
    }
    let (out, _) = run(DeniedToolCall::Remove, &s, 9, &deny(&["get_weather"]));
    assert!(!String::from_utf8_lossy(&out).contains("get_weather\""));
}

/// Fuzz regression: a tool block numbered below the first one was passed at once (index
/// below the holding point), so a refused call's start reached the client.
#[test]
fn a_tool_block_numbered_below_the_first_is_held_too() {
    let mut messages = vec![event("messageStart", &json!({"role": "assistant"}))];
    messages.extend(tool_block(5, "w", "get_weather", r#"{"city":"Paris"}"#));
    messages.extend(tool_block(3, "r", "refund", r#"{"ticket_id":"T-999"}"#));
    messages.push(event("messageStop", &json!({"stopReason": "tool_use"})));
    let s = messages.concat();
    for cut in 0..=s.len() {
        let (out, judged) = run(DeniedToolCall::Remove, &s, cut, &deny(&["refund"]));
        assert_eq!(judged.len(), 2);
        let out = String::from_utf8_lossy(&out);
        assert!(
            !out.contains("refund") && !out.contains("T-999"),
            "cut at {cut}"
        );
        assert!(out.contains("get_weather"));
    }
}

/// Fuzz regression: a late message of a block before the first tool block passed ahead of
/// the held ones.
#[test]
fn a_late_message_of_an_earlier_block_keeps_its_place() {
    let mut messages = vec![event("messageStart", &json!({"role": "assistant"}))];
    messages.push(event(
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0, "delta": {"text": "hi"}}),
    ));
    messages.extend(tool_block(1, "w", "get_weather", r#"{"city":"Paris"}"#));
    messages.push(event("contentBlockStop", &json!({"contentBlockIndex": 0})));
    messages.push(event("messageStop", &json!({"stopReason": "tool_use"})));
    let s = messages.concat();
    for cut in 0..=s.len() {
        let (out, _) = run(DeniedToolCall::Error, &s, cut, &deny(&[]));
        assert_eq!(out, s, "cut at {cut}");
    }
}

#[test]
fn a_tool_call_held_past_the_limit_is_refused_not_grown() {
    // Every message fits the limit; together, the held ones do not.
    let input = format!(r#"{{"note":"{}"}}"#, "x".repeat(600));
    let mut messages = tool_block(0, "tooluse_big", "get_weather", &input);
    messages.push(event("messageStop", &json!({"stopReason": "tool_use"})));
    let limit = 1024;
    assert!(messages.iter().all(|m| m.len() < limit));
    let mut answer = ConverseStream::new(limit, DeniedToolCall::Remove);
    let refused = messages.iter().find_map(|message| {
        let frames = answer.frames(message, false).unwrap();
        frames.into_iter().find_map(|f| answer.push(f).err())
    });
    assert!(
        matches!(refused, Some(super::super::AnswerError::TooLarge(1024))),
        "{refused:?}"
    );
}
