//! The Bedrock ConverseStream reader (AWS event-stream framing): whatever the bytes and the
//! chunk boundaries, it never panics; what it passes on decodes with valid checksums; a call
//! named `refund` (refused) never reaches the client as a tool block; chunking does not change
//! the output; and with nothing refused, every byte passes unchanged.
//!
//! Input: a chunk size, a mode byte, then either raw stream bytes (even mode) or, so the fuzzer
//! is not stopped by CRCs, messages it spells (odd mode): 0xFF-separated, each an event-type
//! selector byte and a payload, framed with the crate.
#![no_main]

use agent_authz::config::DeniedToolCall;
use agent_authz::respond::tool_calls::bedrock_converse::ConverseStream;
use agent_authz::respond::tool_calls::{Flow, ToolCall};
use agent_authz::rewrite::eventstream::{self, MessageSplitter};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const EVENTS: [&str; 7] = [
    "messageStart",
    "contentBlockStart",
    "contentBlockDelta",
    "contentBlockStop",
    "messageStop",
    "metadata",
    "chunk",
];

fn refused(call: &ToolCall) -> Option<String> {
    match &call.arguments {
        Err(why) => Some(why.clone()),
        Ok(_) if call.name == "refund" => Some("not allowed".to_owned()),
        Ok(_) => None,
    }
}

/// The bytes passed on, and whether any call was refused; `None` when the reader refused
/// the stream (an error cuts it: nothing more is passed).
fn run(stream: &[u8], chunk: usize, denied: DeniedToolCall) -> Option<(Vec<u8>, bool)> {
    let mut answer = ConverseStream::new(1 << 16, denied);
    let mut out = Vec::new();
    let mut any_refused = false;
    let mut apply = |answer: &mut ConverseStream, flow: Flow, out: &mut Vec<u8>| match flow {
        Flow::Emit(bytes) => out.extend(bytes),
        Flow::Judge => {
            let refusals: Vec<_> = answer.pending().iter().map(refused).collect();
            any_refused |= refusals.iter().any(Option::is_some);
            out.extend(answer.release(&refusals));
        }
    };
    let pieces: Vec<&[u8]> = stream.chunks(chunk).collect();
    for (n, piece) in pieces.iter().enumerate() {
        for frame in answer.frames(piece, n + 1 == pieces.len()).ok()? {
            let flow = answer.push(frame).ok()?;
            apply(&mut answer, flow, &mut out);
        }
    }
    let flow = answer.finish();
    apply(&mut answer, flow, &mut out);
    Some((out, any_refused))
}

fn spelt(input: &[u8]) -> Vec<u8> {
    input
        .split(|&b| b == 0xFF)
        .filter_map(|m| m.split_first())
        .flat_map(|(&selector, payload)| {
            let kind = EVENTS[usize::from(selector) % EVENTS.len()];
            let message_type = if selector >= 0xF0 { "exception" } else { "event" };
            eventstream::message(
                &[(":event-type", kind), (":message-type", message_type)],
                payload.to_vec(),
            )
        })
        .collect()
}

fuzz_target!(|input: &[u8]| {
    let [cut, mode, rest @ ..] = input else { return };
    let stream = if mode % 2 == 0 { rest.to_vec() } else { spelt(rest) };
    let chunk = usize::from(*cut).max(1);
    let denied = if mode & 2 == 0 { DeniedToolCall::Remove } else { DeniedToolCall::Error };
    let Some((out, any_refused)) = run(&stream, chunk, denied) else { return };
    let whole = run(&stream, stream.len().max(1), denied).expect("chunking must not change the reading");
    assert_eq!(out, whole.0, "chunking must not change the output");
    if !any_refused {
        assert_eq!(out, stream, "nothing refused: every byte passes unchanged");
    }
    let mut splitter = MessageSplitter::new(1 << 20);
    let frames = splitter.push(&out).expect("what passes decodes, checksums valid");
    splitter.finish().expect("no message cut short");
    for frame in frames {
        let message_type = eventstream::header(&frame.message, ":message-type");
        if matches!(message_type, Some("exception" | "error")) {
            continue;
        }
        let Ok(payload) = serde_json::from_slice::<Value>(frame.message.payload()) else { continue };
        if eventstream::header(&frame.message, ":event-type") == Some("contentBlockStart") {
            assert_ne!(payload["start"]["toolUse"]["name"], "refund", "a refused call was passed on");
        }
    }
});
