//! Server-Sent Events framing for streamed response rewriting.
//!
//! Envoy hands the body over in chunks whose boundaries have nothing to do with event
//! boundaries, so bytes are carried over until an event is complete (a blank line ends it).
//! Complete events are released as soon as they are whole; an event larger than the limit is
//! an error rather than an unbounded buffer.

/// Splits a byte stream into complete SSE events.
#[derive(Debug)]
pub struct EventSplitter {
    pending: Vec<u8>,
    limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event exceeds {0} bytes")]
pub struct EventTooLarge(pub usize);

impl EventSplitter {
    pub fn new(limit: usize) -> Self {
        Self {
            pending: Vec::new(),
            limit,
        }
    }

    /// Adds a chunk; returns the events it completed, each with its terminating blank line.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, EventTooLarge> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = event_end(&self.pending) {
            let rest = self.pending.split_off(end);
            events.push(std::mem::replace(&mut self.pending, rest));
        }
        if self.pending.len() > self.limit {
            return Err(EventTooLarge(self.limit));
        }
        Ok(events)
    }

    /// Whatever is left when the stream ends (an unterminated last event), unchanged.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// The end (exclusive) of the first complete event: after `\n\n`, `\r\n\r\n` or `\r\r`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        match (buf.get(i), buf.get(i + 1), buf.get(i + 2), buf.get(i + 3)) {
            (Some(b'\r'), Some(b'\n'), Some(b'\r'), Some(b'\n')) => return Some(i + 4),
            (Some(b'\n'), Some(b'\n'), _, _) | (Some(b'\r'), Some(b'\r'), _, _) => {
                return Some(i + 2);
            }
            // A lone `\r\n\r` may still become `\r\n\r\n`: wait for more bytes.
            (Some(b'\r'), Some(b'\n'), Some(b'\r'), None) => return None,
            _ => i += 1,
        }
    }
    None
}

/// The `data:` payload of an event (lines joined with `\n`), if it has one.
pub fn data(event: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(event).ok()?;
    let mut out: Option<Vec<u8>> = None;
    for line in text.split(['\n', '\r']) {
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut out {
                Some(buf) => {
                    buf.push(b'\n');
                    buf.extend_from_slice(value.as_bytes());
                }
                None => out = Some(value.as_bytes().to_vec()),
            }
        }
    }
    out
}

/// The event with its data replaced by `new_data` (one `data:` line; other fields kept).
pub fn with_data(event: &[u8], new_data: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(event);
    let mut out = Vec::with_capacity(event.len());
    let mut wrote_data = false;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if line.starts_with("data:") {
            if !wrote_data {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(new_data);
                out.push(b'\n');
                wrote_data = true;
            }
        } else {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"event: message\r\nid: 1\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: keep-alive\n\ndata: {\"b\":2}\n\n";

    #[test]
    fn events_survive_every_chunk_boundary() {
        for split in 0..=STREAM.len() {
            for second in split..=STREAM.len() {
                let mut s = EventSplitter::new(1 << 20);
                let mut events = s.push(&STREAM[..split]).unwrap();
                events.extend(s.push(&STREAM[split..second]).unwrap());
                events.extend(s.push(&STREAM[second..]).unwrap());
                assert_eq!(events.len(), 3, "split at {split}/{second}");
                assert_eq!(events.concat(), STREAM);
                assert!(s.finish().is_empty());
            }
        }
    }

    #[test]
    fn data_lines_are_joined_and_replaced() {
        let mut s = EventSplitter::new(1 << 20);
        let events = s.push(STREAM).unwrap();
        assert_eq!(data(&events[0]).unwrap(), b"{\"a\":\n1}");
        assert_eq!(data(&events[1]), None);
        assert_eq!(
            with_data(&events[0], b"{\"x\":0}"),
            b"event: message\nid: 1\ndata: {\"x\":0}\n\n"
        );
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut s = EventSplitter::new(8);
        assert!(s.push(b"data: 0123456789").is_err());
        let mut s = EventSplitter::new(8);
        assert_eq!(s.push(b"data: 1\n\n").unwrap().len(), 1);
        assert_eq!(s.push(b"data: 2").unwrap().len(), 0);
        assert_eq!(s.finish(), b"data: 2");
    }
}
