use serde_json::{Value, json};

use super::super::testing::{deny, run};
use super::super::{JsonAnswer, ToolCall};
use super::*;
use crate::config::{DeniedToolCall, Format};

fn chunk(delta: Value, finish: Value) -> String {
    let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

fn fragment(index: u64, first: Option<(&str, &str)>, arguments: &str) -> Value {
    let mut f = json!({"index": index, "function": {"arguments": arguments}});
    if let Some((id, name)) = first {
        f["id"] = id.into();
        f["type"] = "function".into();
        f["function"]["name"] = name.into();
    }
    json!({"tool_calls": [f]})
}

/// Text, then get_weather (index 0) and refund (index 1) in fragments, then the finish.
fn stream() -> Vec<u8> {
    [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Let me check."}), Value::Null),
        chunk(
            fragment(0, Some(("call_w", "get_weather")), ""),
            Value::Null,
        ),
        chunk(fragment(0, None, "{\"city\":"), Value::Null),
        chunk(fragment(0, None, "\"Paris\"}"), Value::Null),
        chunk(
            fragment(1, Some(("call_r", "refund")), "{\"ticket_id\":\"T-999\","),
            Value::Null,
        ),
        chunk(fragment(1, None, "\"amount_cents\":999999}"), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat()
    .into_bytes()
}

/// What a client reads: each chunk of the stream, up to `[DONE]`.
fn chunks(out: &[u8]) -> Vec<Value> {
    let text = String::from_utf8(out.to_vec()).unwrap();
    let mut all = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").unwrap();
        if data == "[DONE]" {
            all.push(Value::Null);
        } else {
            all.push(serde_json::from_str(data).unwrap());
        }
    }
    all
}

/// The calls as an SDK accumulates them (index → (id, name, arguments)), the text, and the
/// finish reason.
fn accumulate(out: &[u8]) -> (Vec<(String, String, String)>, String, String) {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let (mut text, mut finish) = (String::new(), String::new());
    for c in chunks(out) {
        if c.is_null() {
            continue;
        }
        let choice = &c["choices"][0];
        text += choice["delta"]["content"].as_str().unwrap_or_default();
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_owned();
        }
        for f in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = f["index"].as_u64().unwrap() as usize;
            assert!(i <= calls.len(), "index {i} skips past {}", calls.len());
            if i == calls.len() {
                calls.push(Default::default());
            }
            calls[i].0 += f["id"].as_str().unwrap_or_default();
            calls[i].1 += f["function"]["name"].as_str().unwrap_or_default();
            calls[i].2 += f["function"]["arguments"].as_str().unwrap_or_default();
        }
    }
    (calls, text, finish)
}

#[test]
fn nothing_refused_releases_every_byte_at_every_split() {
    let s = stream();
    for cut in 0..=s.len() {
        let (out, judged) = run(
            Format::OpenaiChat,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&[]),
        );
        assert_eq!(out, s, "cut at {cut}");
        let names: Vec<_> = judged.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["get_weather", "refund"],
            "judged together, cut at {cut}"
        );
        assert_eq!(
            judged[1].arguments.as_ref().unwrap()["amount_cents"],
            json!(999999)
        );
    }
}

#[test]
fn a_refused_call_never_reaches_the_client_at_any_split() {
    let s = stream();
    for cut in 0..=s.len() {
        let (out, _) = run(
            Format::OpenaiChat,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&["refund"]),
        );
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains("refund") && !text.contains("T-999"),
            "cut at {cut}: {text}"
        );
        let (calls, said, finish) = accumulate(&out);
        assert_eq!(
            calls,
            [(
                "call_w".into(),
                "get_weather".into(),
                "{\"city\":\"Paris\"}".into()
            )]
        );
        assert_eq!(
            (said.as_str(), finish.as_str()),
            ("Let me check.", "tool_calls")
        );
        assert!(out.ends_with(b"data: [DONE]\n\n"));
    }
}

#[test]
fn the_remaining_calls_are_renumbered_from_zero() {
    let s = stream();
    let (out, _) = run(
        Format::OpenaiChat,
        DeniedToolCall::Remove,
        &s,
        0,
        &deny(&["get_weather"]),
    );
    let (calls, _, finish) = accumulate(&out);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, "refund");
    assert_eq!(finish, "tool_calls");
}

#[test]
fn an_answer_left_without_calls_ends_as_text_saying_why() {
    let s = stream();
    for cut in 0..=s.len() {
        let (out, _) = run(
            Format::OpenaiChat,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&["refund", "get_weather"]),
        );
        let (calls, said, finish) = accumulate(&out);
        assert!(calls.is_empty());
        assert_eq!(finish, "stop");
        assert!(said.starts_with("Let me check.agent-authz refused the tool calls get_weather: not allowed; refund: not allowed"), "{said}");
    }
}

#[test]
fn text_deltas_are_never_held() {
    let mut answer =
        super::super::StreamAnswer::new(Format::OpenaiChat, 1 << 20, DeniedToolCall::Remove)
            .unwrap();
    let s = stream();
    let events = answer.events(&s, false).unwrap();
    let flows: Vec<_> = events
        .into_iter()
        .map(|e| answer.push(e).unwrap())
        .collect();
    assert!(
        matches!(&flows[1], Flow::Emit(b) if String::from_utf8_lossy(b).contains("Let me check."))
    );
    assert_eq!(flows[2], Flow::Emit(vec![]), "a fragment is held");
    assert_eq!(flows[7], Flow::Judge, "the finish completes the answer");
}

#[test]
fn arguments_that_are_not_an_object_are_refused_with_that_reason() {
    let s = [
        chunk(fragment(0, Some(("c", "refund")), "[1,2]"), Value::Null),
        chunk(json!({}), json!("tool_calls")),
    ]
    .concat();
    let (out, judged) = run(
        Format::OpenaiChat,
        DeniedToolCall::Remove,
        s.as_bytes(),
        10,
        &deny(&[]),
    );
    assert_eq!(
        judged[0].arguments,
        Err("its arguments are not a JSON object".to_owned())
    );
    let (calls, said, finish) = accumulate(&out);
    assert!(calls.is_empty());
    assert_eq!(finish, "stop");
    assert!(said.contains("refund: its arguments are not a JSON object"));
}

#[test]
fn a_stream_cut_short_still_judges_its_calls() {
    let s = chunk(fragment(0, Some(("c", "refund")), "{}"), Value::Null);
    let (out, judged) = run(
        Format::OpenaiChat,
        DeniedToolCall::Remove,
        s.as_bytes(),
        5,
        &deny(&["refund"]),
    );
    assert_eq!(judged.len(), 1);
    let (calls, said, finish) = accumulate(&out);
    assert!(calls.is_empty() && finish == "stop" && said.contains("refund"));
}

#[test]
fn error_mode_ends_the_stream_with_an_error_event() {
    let s = stream();
    let (out, _) = run(
        Format::OpenaiChat,
        DeniedToolCall::Error,
        &s,
        33,
        &deny(&["refund"]),
    );
    let all = chunks(&out);
    let last = all.last().unwrap();
    assert_eq!(last["error"]["code"], "tool_call_denied");
    assert!(!String::from_utf8_lossy(&out).contains("get_weather"));
    assert!(!out.ends_with(b"data: [DONE]\n\n"));
}

#[test]
fn legacy_function_call_fragments_are_judged() {
    let s = [
        chunk(
            json!({"function_call": {"name": "refund", "arguments": ""}}),
            Value::Null,
        ),
        chunk(
            json!({"function_call": {"arguments": "{\"a\":1}"}}),
            Value::Null,
        ),
        chunk(json!({}), json!("function_call")),
    ]
    .concat();
    for cut in 0..=s.len() {
        let (out, judged) = run(
            Format::OpenaiChat,
            DeniedToolCall::Remove,
            s.as_bytes(),
            cut,
            &deny(&["refund"]),
        );
        assert_eq!(judged[0].name, "refund");
        assert!(!String::from_utf8_lossy(&out).contains("function_call"));
        assert_eq!(accumulate(&out).2, "stop");
    }
}

const JSON_ANSWER: &str = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"id":"b","type":"function","function":{"name":"refund","arguments":"{\"ticket_id\":\"T-999\"}"}}]},"finish_reason":"tool_calls"}]}"#;

fn judge_json(refused: &[Option<String>], denied: DeniedToolCall) -> (Vec<ToolCall>, Value) {
    let mut answer = JsonAnswer::new(Format::OpenaiChat, 1 << 20);
    for byte in JSON_ANSWER.as_bytes().chunks(1) {
        answer.push(byte).unwrap();
    }
    let (body, parsed) = answer.finish().unwrap();
    assert_eq!(body, JSON_ANSWER.as_bytes());
    let parsed = parsed.unwrap();
    let calls = parsed.calls.clone();
    let out = parsed.rewrite(refused, denied);
    (calls, serde_json::from_slice(&out).unwrap())
}

#[test]
fn json_answers_lose_only_the_refused_calls() {
    let (calls, out) = judge_json(&[None, Some("no".into())], DeniedToolCall::Remove);
    assert_eq!(calls.len(), 2);
    let message = &out["choices"][0]["message"];
    assert_eq!(message["tool_calls"].as_array().unwrap().len(), 1);
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn a_json_answer_left_without_calls_says_why() {
    let (_, out) = judge_json(
        &[Some("a".into()), Some("b".into())],
        DeniedToolCall::Remove,
    );
    let message = &out["choices"][0]["message"];
    assert!(message.get("tool_calls").is_none());
    assert_eq!(
        message["content"],
        "agent-authz refused the tool calls get_weather: a; refund: b."
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    let (_, out) = judge_json(&[None, Some("b".into())], DeniedToolCall::Error);
    assert_eq!(out["error"]["code"], "tool_call_denied");
}

#[test]
fn answers_with_duplicate_keys_are_not_passed_on() {
    // A first-wins client would run delete_repo; serde (last wins) would judge get_weather.
    let dup = r#"{"choices":[{"index":0,"message":{"tool_calls":[{"id":"a","type":"function","function":{"name":"delete_repo","name":"get_weather","arguments":"{}"}}]}}]}"#;
    let mut answer = JsonAnswer::new(Format::OpenaiChat, 1 << 20);
    answer.push(dup.as_bytes()).unwrap();
    assert!(matches!(
        answer.finish(),
        Err(super::super::AnswerError::Ambiguous)
    ));
    let mut stream =
        super::super::StreamAnswer::new(Format::OpenaiChat, 1 << 20, DeniedToolCall::Remove)
            .unwrap();
    let event = format!("data: {}\n\n", &dup[..dup.len()]);
    let events = stream.events(event.as_bytes(), true).unwrap();
    assert!(stream.push(events.into_iter().next().unwrap()).is_err());
}

#[test]
fn a_call_whose_fragments_outgrow_the_limit_fails_closed() {
    // Found by fuzz/fuzz_targets/tool_call_answers.rs: every event was bounded, the events
    // held for a call were not.
    let s = stream();
    let mut answer =
        super::super::StreamAnswer::new(Format::OpenaiChat, 300, DeniedToolCall::Remove).unwrap();
    let mut out = Vec::new();
    let mut refused = false;
    for event in answer.events(&s, true).unwrap() {
        match answer.push(event) {
            Ok(Flow::Emit(bytes)) => out.extend(bytes),
            Ok(Flow::Judge) => panic!("judged although the answer outgrew the limit"),
            Err(e) => {
                assert!(matches!(e, AnswerError::TooLarge(300)), "{e}");
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "the held fragments grew past the limit");
    assert!(!String::from_utf8(out).unwrap().contains("get_weather"));
}

#[test]
fn nothing_refused_releases_the_upstreams_own_indices() {
    // Found by the fuzz target: a lone call at index 3 came out renumbered to 0.
    let s = [
        chunk(
            fragment(3, Some(("call_w", "get_weather")), "{\"city\":"),
            Value::Null,
        ),
        chunk(fragment(3, None, "\"Paris\"}"), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat()
    .into_bytes();
    for cut in 0..=s.len() {
        let (out, judged) = run(
            Format::OpenaiChat,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&[]),
        );
        assert_eq!(out, s, "cut at {cut}");
        assert_eq!(judged.len(), 1);
    }
}

#[test]
fn calls_released_after_an_unfinished_last_event_reach_the_client_whole() {
    // Found by fuzz/fuzz_targets/tool_call_answers.rs: the stream ended inside an event that
    // passed, the held call was released after it, and its first fragment ran into that
    // event: the client read a call without the name (or arguments) that were judged.
    let tail = chunk(json!({"content": "bye"}), Value::Null);
    let s = [
        chunk(
            fragment(0, Some(("call_w", "get_weather")), "{\"x\":"),
            Value::Null,
        ),
        chunk(fragment(0, None, "{\"city\":\"Paris\"}}"), Value::Null),
        tail.trim_end().to_owned(),
    ]
    .concat()
    .into_bytes();
    for cut in 0..=s.len() {
        let (out, judged) = run(
            Format::OpenaiChat,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&[]),
        );
        assert_eq!(judged[0].name, "get_weather");
        let (calls, text, _) = accumulate(&out);
        assert_eq!(text, "bye", "cut at {cut}");
        assert_eq!(
            calls,
            [(
                "call_w".to_owned(),
                "get_weather".to_owned(),
                "{\"x\":{\"city\":\"Paris\"}}".to_owned()
            )],
            "cut at {cut}"
        );
    }
}
