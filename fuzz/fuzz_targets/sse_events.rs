//! SSE framing: whatever the chunk boundaries, the events reassemble to the input bytes and
//! no event exceeds the limit unnoticed.
#![no_main]

use agent_authz::rewrite::sse::{EventSplitter, data};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&cut, stream)) = input.split_first() else { return };
    let mut splitter = EventSplitter::new(4096);
    let mut out = Vec::new();
    for chunk in stream.chunks(usize::from(cut).max(1)) {
        match splitter.push(chunk) {
            Ok(events) => {
                for event in events {
                    let _ = data(&event);
                    out.extend(event);
                }
            }
            Err(_) => return,
        }
    }
    out.extend(splitter.finish());
    assert_eq!(out, stream, "events must reassemble to the stream");
});
