use serde_json::{Value, json};

use super::super::JsonAnswer;
use super::super::testing::{deny, run};
use crate::config::{DeniedToolCall, Format};

fn event(e: Value) -> String {
    format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())
}

fn call_item(id: &str, name: &str, arguments: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": format!("call_{id}"), "name": name, "arguments": arguments, "status": "completed"})
}

fn call_events(index: u64, id: &str, name: &str, arguments: &str) -> Vec<String> {
    let mut added = call_item(id, name, "");
    added["status"] = "in_progress".into();
    let mut out = vec![event(
        json!({"type": "response.output_item.added", "output_index": index, "item": added}),
    )];
    for piece in arguments.as_bytes().chunks(5) {
        out.push(event(json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": index,
            "delta": std::str::from_utf8(piece).unwrap()})));
    }
    out.push(event(json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": index, "arguments": arguments})));
    out.push(event(json!({"type": "response.output_item.done", "output_index": index, "item": call_item(id, name, arguments)})));
    out
}

const WEATHER: &str = r#"{"city":"Paris"}"#;
const REFUND: &str = r#"{"ticket_id":"T-999","amount_cents":999999}"#;

/// A message item (0), then get_weather (1) and refund (2), then response.completed.
fn stream() -> Vec<u8> {
    let message = json!({"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}]});
    let mut events = vec![
        event(json!({"type": "response.created", "response": {"id": "resp_1", "output": []}})),
        event(
            json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": []}}),
        ),
        event(
            json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Let me check."}),
        ),
        event(
            json!({"type": "response.output_item.done", "output_index": 0, "item": message.clone()}),
        ),
    ];
    events.extend(call_events(1, "fc_w", "get_weather", WEATHER));
    events.extend(call_events(2, "fc_r", "refund", REFUND));
    events.push(event(json!({"type": "response.completed", "response": {"id": "resp_1", "status": "completed",
        "output": [message, call_item("fc_w", "get_weather", WEATHER), call_item("fc_r", "refund", REFUND)]}})));
    events.concat().into_bytes()
}

/// What a client reads: items by output_index from the events, and the completed output.
fn read(out: &[u8]) -> (Vec<Value>, Vec<Value>) {
    let text = String::from_utf8(out.to_vec()).unwrap();
    let mut items: Vec<Value> = Vec::new();
    let mut completed = Vec::new();
    for raw in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = raw.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let e: Value = serde_json::from_str(data).unwrap();
        match e["type"].as_str().unwrap() {
            "response.output_item.added" => {
                assert_eq!(
                    e["output_index"].as_u64().unwrap() as usize,
                    items.len(),
                    "no gaps"
                );
                items.push(e["item"].clone());
            }
            "response.output_item.done" => {
                items[e["output_index"].as_u64().unwrap() as usize] = e["item"].clone()
            }
            "response.completed" => completed = e["response"]["output"].as_array().unwrap().clone(),
            _ => {}
        }
    }
    (items, completed)
}

#[test]
fn nothing_refused_releases_every_byte_at_every_split() {
    let s = stream();
    for cut in (0..=s.len()).step_by(2) {
        let (out, judged) = run(
            Format::OpenaiResponses,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&[]),
        );
        assert_eq!(out, s, "cut at {cut}");
        assert_eq!(judged.len(), 2);
        assert_eq!(
            judged[1].arguments.as_ref().unwrap()["amount_cents"],
            json!(999999)
        );
    }
}

#[test]
fn a_refused_call_vanishes_from_every_event_at_any_split() {
    let s = stream();
    for cut in (0..=s.len()).step_by(3) {
        let (out, _) = run(
            Format::OpenaiResponses,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&["get_weather"]),
        );
        assert!(
            !String::from_utf8_lossy(&out).contains("fc_w"),
            "cut at {cut}"
        );
        let (items, completed) = read(&out);
        assert_eq!(items.len(), 2);
        assert_eq!(items[1]["name"], "refund");
        assert_eq!(completed.len(), 2);
        assert_eq!(completed[1]["arguments"], REFUND);
    }
}

#[test]
fn an_answer_left_without_calls_ends_with_a_message_saying_why() {
    let (out, _) = run(
        Format::OpenaiResponses,
        DeniedToolCall::Remove,
        &stream(),
        77,
        &deny(&["get_weather", "refund"]),
    );
    let (items, completed) = read(&out);
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["type"], "message");
    assert_eq!(completed.len(), 2);
    assert_eq!(
        completed[1]["content"][0]["text"],
        "agent-authz refused the tool calls get_weather: not allowed; refund: not allowed."
    );
}

#[test]
fn a_call_whose_readings_disagree_is_refused() {
    let s = String::from_utf8(stream()).unwrap();
    // The final item lists other arguments than the ones streamed.
    let tampered = s.replacen(
        &format!("\"arguments\":{}", serde_json::to_string(REFUND).unwrap()),
        "\"arguments\":\"{\\\"ticket_id\\\":\\\"T-100\\\",\\\"amount_cents\\\":1}\"",
        1,
    );
    assert_ne!(tampered, s);
    let (_, judged) = run(
        Format::OpenaiResponses,
        DeniedToolCall::Remove,
        tampered.as_bytes(),
        0,
        &deny(&[]),
    );
    assert!(judged[1].arguments.is_err());
}

#[test]
fn json_answers_lose_only_the_refused_items() {
    let body = json!({"id": "resp_1", "object": "response", "output": [
        {"type": "message", "id": "m", "role": "assistant", "content": []},
        call_item("fc_w", "get_weather", WEATHER),
        {"type": "custom_tool_call", "id": "ct", "call_id": "c", "name": "run_shell", "input": "rm -rf /"}]});
    let mut answer = JsonAnswer::new(Format::OpenaiResponses, 1 << 20);
    answer.push(body.to_string().as_bytes()).unwrap();
    let (_, parsed) = answer.finish().unwrap();
    let parsed = parsed.unwrap();
    assert_eq!(
        parsed.calls[1].arguments.as_ref().unwrap()["input"],
        "rm -rf /"
    );
    let out: Value =
        serde_json::from_slice(&parsed.rewrite(&[None, Some("no".into())], DeniedToolCall::Remove))
            .unwrap();
    let kinds: Vec<_> = out["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].clone())
        .collect();
    assert_eq!(kinds, [json!("message"), json!("function_call")]);
}

#[test]
fn a_call_only_the_completed_list_names_is_judged() {
    let message = json!({"type": "message", "id": "m", "role": "assistant", "content": []});
    let s = [
        event(json!({"type": "response.output_item.added", "output_index": 0, "item": message.clone()})),
        event(json!({"type": "response.output_item.done", "output_index": 0, "item": message.clone()})),
        event(json!({"type": "response.completed", "response": {"output": [message, call_item("fc_x", "delete_repo", "{}")]}})),
    ]
    .concat();
    let (out, judged) = run(
        Format::OpenaiResponses,
        DeniedToolCall::Remove,
        s.as_bytes(),
        40,
        &deny(&["delete_repo"]),
    );
    assert_eq!(judged.len(), 1);
    assert_eq!(judged[0].name, "delete_repo");
    let (_, completed) = read(&out);
    assert!(
        completed.iter().all(|i| i["name"] != "delete_repo"),
        "{completed:?}"
    );
}

#[test]
fn nothing_refused_releases_every_byte_as_spelt() {
    // Found by fuzz/fuzz_targets/tool_call_answers.rs: `response.completed` was re-serialised
    // (compact) although no call was refused; providers put spaces after `:`.
    let s = String::from_utf8(stream())
        .unwrap()
        .replace(r#""status":"completed""#, r#""status": "completed""#)
        .into_bytes();
    for cut in (0..=s.len()).step_by(7) {
        let (out, judged) = run(
            Format::OpenaiResponses,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&[]),
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&s),
            "cut at {cut}"
        );
        assert_eq!(judged.len(), 2);
    }
}

#[test]
fn a_call_item_numbered_below_an_earlier_one_is_held_too() {
    // Found by fuzz/fuzz_targets/tool_call_answers.rs: holding began at the first call's
    // output_index, so a lower-numbered call arriving later passed unjudged.
    let mut events = call_events(2, "fc_w", "get_weather", WEATHER);
    events.extend(call_events(1, "fc_r", "refund", REFUND));
    let s = events.concat().into_bytes();
    for cut in (0..=s.len()).step_by(3) {
        let (out, judged) = run(
            Format::OpenaiResponses,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&["refund"]),
        );
        assert_eq!(judged.len(), 2, "cut at {cut}");
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("T-999") && !out.contains("fc_r"),
            "cut at {cut}: {out}"
        );
    }
}

#[test]
fn a_call_item_only_its_done_event_announces_is_judged_and_held() {
    // Found by fuzz/fuzz_targets/tool_call_answers.rs: an `.added` without `output_index`
    // was read as item 0, the item's own events (at 1) were not tied to it, and the refusal
    // of "item 0" renumbered the real item to 0 and released it, arguments and all.
    let s = [
        event(json!({"type": "response.output_item.done", "output_index": 1, "item": call_item("fc_r", "refund", REFUND)})),
        event(json!({"type": "response.completed", "response": {"output": [call_item("fc_m", "x", "{}"), call_item("fc_r", "refund", REFUND)]}})),
    ]
    .concat()
    .into_bytes();
    for cut in 0..=s.len() {
        let (out, judged) = run(
            Format::OpenaiResponses,
            DeniedToolCall::Remove,
            &s,
            cut,
            &deny(&["refund"]),
        );
        assert!(judged.iter().any(|c| c.name == "refund"), "cut at {cut}");
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("T-999"), "cut at {cut}: {out}");
    }
}

#[test]
fn a_call_item_without_its_index_is_not_passed_on() {
    let mut added = call_item("fc_r", "refund", "");
    added["status"] = "in_progress".into();
    let s = event(json!({"type": "response.output_item.added", "item": added}));
    let mut answer =
        super::super::StreamAnswer::new(Format::OpenaiResponses, 1 << 20, DeniedToolCall::Remove)
            .unwrap();
    let events = answer.events(s.as_bytes(), true).unwrap();
    let refused = events
        .into_iter()
        .any(|e| matches!(answer.push(e), Err(super::super::AnswerError::Unplaced)));
    assert!(refused);
}

#[test]
fn a_completed_list_naming_a_call_otherwise_refuses_it() {
    // Found by fuzz/fuzz_targets/tool_call_answers.rs: only the arguments of
    // `response.completed` were compared with the events, so the SDK's final response named
    // a tool ("vefund") that was never judged.
    let s = [
        call_events(0, "fc_r", "refund", REFUND),
        vec![event(json!({"type": "response.completed", "response": {"output": [call_item("fc_r", "vefund", REFUND)]}}))],
    ]
    .concat()
    .concat()
    .into_bytes();
    let (out, judged) = run(
        Format::OpenaiResponses,
        DeniedToolCall::Remove,
        &s,
        0,
        &deny(&[]),
    );
    assert!(judged[0].arguments.is_err(), "{judged:?}");
    assert!(!String::from_utf8(out).unwrap().contains("vefund"));
}
