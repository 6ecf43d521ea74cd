//! SSE framing: whatever the chunk boundaries, the events reassemble to the input bytes, every
//! event reads the same as when the stream arrives whole, and no event exceeds the limit
//! unnoticed.
#![no_main]

use agent_authz::rewrite::sse::EventSplitter;
use libfuzzer_sys::fuzz_target;

fn read(stream: &[u8], chunk: usize) -> Option<(Vec<u8>, Vec<Option<Vec<u8>>>)> {
    let mut splitter = EventSplitter::new(4096);
    let mut raw = Vec::new();
    let mut messages = Vec::new();
    let mut take = |event: agent_authz::rewrite::sse::Event| {
        messages.push(event.message().ok().flatten());
        raw.extend(event.raw);
    };
    for part in stream.chunks(chunk) {
        for event in splitter.push(part).ok()? {
            take(event);
        }
    }
    take(splitter.finish());
    Some((raw, messages))
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, stream)) = input.split_first() else { return };
    let Some((raw, messages)) = read(stream, usize::from(cut).max(1)) else { return };
    assert_eq!(raw, stream, "events must reassemble to the stream");
    if let Some((_, whole)) = read(stream, stream.len().max(1)) {
        assert_eq!(messages, whole, "chunking must not change what a client reads");
    }
});
