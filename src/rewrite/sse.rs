//! Server-Sent Events framing for streamed response rewriting, read exactly as the WHATWG
//! event-stream rules say a client reads it (HTML Living Standard, "Parsing an event stream"):
//!
//! - lines end with CRLF, LF or CR (a CR at the end of a chunk may still become CRLF, so it
//!   waits for the next byte);
//! - a blank line ends an event; a line starting with `:` is a comment; `field:value` drops
//!   one space after the colon; a line without a colon is a field with an empty value;
//! - `data` lines are joined with LF; an event whose data buffer stays empty dispatches
//!   nothing (the id/retry-only priming event MCP's TypeScript SDK opens every answer with);
//! - one U+FEFF byte-order mark at the very start of the stream is skipped.
//!
//! Envoy hands the body over in chunks whose boundaries have nothing to do with event
//! boundaries, so bytes are carried over until an event is complete. Complete events are
//! released as soon as they are whole; an event larger than the limit is an error rather than
//! an unbounded buffer. A client that decoded these bytes sees exactly the messages
//! [`Event::message`] returns: that is the property the filter relies on.

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Splits a byte stream into complete SSE events.
#[derive(Debug)]
pub struct EventSplitter {
    pending: Vec<u8>,
    /// Where the scan for the end of the current event resumes (bytes before it hold no
    /// blank line).
    scanned: usize,
    limit: usize,
    /// No byte has been released yet: a BOM may still start the stream.
    at_start: bool,
}

/// One complete event: its bytes as received, and how a client reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Every byte of the event, its terminating blank line included.
    pub raw: Vec<u8>,
    /// Byte offset in `raw` where fields start (past a stream-opening BOM).
    fields_start: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("server-sent event exceeds {0} bytes")]
    TooLarge(usize),
    #[error("server-sent event is not UTF-8")]
    NotUtf8,
}

impl EventSplitter {
    pub fn new(limit: usize) -> Self {
        Self {
            pending: Vec::new(),
            scanned: 0,
            limit,
            at_start: true,
        }
    }

    /// Adds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.event_end() {
            let rest = self.pending.split_off(end);
            let raw = std::mem::replace(&mut self.pending, rest);
            events.push(self.event(raw));
            self.scanned = 0;
        }
        if self.pending.len() > self.limit {
            return Err(SseError::TooLarge(self.limit));
        }
        Ok(events)
    }

    /// Whatever is left when the stream ends: an unterminated last event. The standard has
    /// clients discard it, but some parsers flush it at end of stream, so it is read (and
    /// filtered) like any other event.
    pub fn finish(&mut self) -> Event {
        let raw = std::mem::take(&mut self.pending);
        self.scanned = 0;
        self.event(raw)
    }

    fn event(&mut self, raw: Vec<u8>) -> Event {
        let fields_start = if std::mem::take(&mut self.at_start) && raw.starts_with(BOM) {
            BOM.len()
        } else {
            0
        };
        Event { raw, fields_start }
    }

    /// The end (exclusive) of the first complete event in `pending`: after the terminator
    /// of its first empty line.
    fn event_end(&mut self) -> Option<usize> {
        let buf = &self.pending;
        let mut line_start = self.scanned;
        if self.at_start && line_start == 0 && buf.starts_with(BOM) {
            line_start = BOM.len();
        }
        loop {
            let Some((end, next)) = line_end(buf, line_start) else {
                self.scanned = line_start;
                return None;
            };
            if end == line_start {
                return Some(next);
            }
            line_start = next;
        }
    }
}

/// The first line from `start`: (end of its content, start of the next line); `None` while
/// its terminator has not fully arrived.
fn line_end(buf: &[u8], start: usize) -> Option<(usize, usize)> {
    let rest = buf.get(start..)?;
    let at = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
    let end = start + at;
    match (buf.get(end), buf.get(end + 1)) {
        (Some(b'\r'), Some(b'\n')) => Some((end, end + 2)),
        // A CR as the last byte may be the first half of CRLF.
        (Some(b'\r'), None) => None,
        _ => Some((end, end + 1)),
    }
}

/// Splits `text` into lines as the event-stream rules do (CRLF, LF, CR), each with its
/// terminator.
fn lines(text: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= text.len() {
            return None;
        }
        let start = pos;
        let (end, next) = match line_end(text, start) {
            Some(found) => found,
            // The last CR of a complete event, or an unterminated tail.
            None if text.last() == Some(&b'\r') => (text.len() - 1, text.len()),
            None => (text.len(), text.len()),
        };
        pos = next;
        Some((text.get(start..end)?, text.get(end..next)?))
    })
}

/// A line's field name and value (`:`-comments have no field).
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.first() == Some(&b':') {
        return None;
    }
    Some(match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let value = line.get(colon + 1..).unwrap_or_default();
            (
                line.get(..colon).unwrap_or_default(),
                value.strip_prefix(b" ").unwrap_or(value),
            )
        }
        None => (line, &[][..]),
    })
}

impl Event {
    /// The message this event dispatches, as a client reads it: its `data` lines joined with
    /// LF. `None` when it dispatches nothing a client would parse: no data, or data that is
    /// empty or only whitespace (MCP clients skip those; JSON parsers reject them).
    pub fn message(&self) -> Result<Option<Vec<u8>>, SseError> {
        let fields = self.raw.get(self.fields_start..).unwrap_or_default();
        if std::str::from_utf8(fields).is_err() {
            return Err(SseError::NotUtf8);
        }
        let mut data: Option<Vec<u8>> = None;
        for (line, _) in lines(fields) {
            if let Some((b"data", value)) = field(line) {
                match &mut data {
                    Some(buf) => {
                        buf.push(b'\n');
                        buf.extend_from_slice(value);
                    }
                    None => data = Some(value.to_vec()),
                }
            }
        }
        Ok(data.filter(|d| !d.iter().all(u8::is_ascii_whitespace)))
    }

    /// The event's type as a client dispatches it: its last `event` field, `message` when it
    /// has none (or an empty one).
    pub fn event_type(&self) -> String {
        let fields = self.raw.get(self.fields_start..).unwrap_or_default();
        let mut kind = String::new();
        for (line, _) in lines(fields) {
            if let Some((b"event", value)) = field(line) {
                kind = String::from_utf8_lossy(value).into_owned();
            }
        }
        if kind.is_empty() {
            "message".to_owned()
        } else {
            kind
        }
    }

    /// The event with its data replaced by `new_data` (written as one `data:` line per line
    /// of it, where the first `data` line stood); every other line is kept byte for byte.
    pub fn with_message(&self, new_data: &[u8]) -> Vec<u8> {
        let (head, fields) = self.raw.split_at(self.fields_start.min(self.raw.len()));
        let mut out = Vec::with_capacity(self.raw.len() + new_data.len());
        out.extend_from_slice(head);
        let mut wrote_data = false;
        for (line, terminator) in lines(fields) {
            if !matches!(field(line), Some((b"data", _))) {
                out.extend_from_slice(line);
                out.extend_from_slice(terminator);
                continue;
            }
            if !std::mem::replace(&mut wrote_data, true) {
                for data_line in new_data.split(|&b| b == b'\n') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(data_line);
                    out.push(b'\n');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(stream: &[u8], cuts: &[usize]) -> Vec<Event> {
        let mut s = EventSplitter::new(1 << 20);
        let mut events = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([stream.len()].iter()) {
            events.extend(s.push(&stream[from..cut]).unwrap());
            from = cut;
        }
        let tail = s.finish();
        if !tail.raw.is_empty() {
            events.push(tail);
        }
        events
    }

    fn messages(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| e.message().unwrap())
            .map(|m| String::from_utf8(m).unwrap())
            .collect()
    }

    const STREAM: &[u8] = b"event: message\r\nid: 1\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: keep-alive\n\ndata: {\"b\":2}\n\n";

    #[test]
    fn events_survive_every_chunk_boundary() {
        for split in 0..=STREAM.len() {
            for second in split..=STREAM.len() {
                let events = split_all(STREAM, &[split, second]);
                assert_eq!(events.len(), 3, "split at {split}/{second}");
                let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.clone()).collect();
                assert_eq!(raw, STREAM);
                assert_eq!(messages(&events), ["{\"a\":\n1}", "{\"b\":2}"]);
            }
        }
    }

    #[test]
    fn the_priming_event_dispatches_nothing() {
        let stream =
            b"id: 0_1\nretry: 5000\ndata: \n\nevent: message\nid: 0_2\ndata: {\"x\":1}\n\n";
        let events = split_all(stream, &[]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].message().unwrap(), None);
        assert_eq!(messages(&events), ["{\"x\":1}"]);
        // Only id/retry, a bare `data` field, whitespace data: nothing to parse either.
        for quiet in [
            &b"id: 7\n\n"[..],
            b"retry: 10\n\n",
            b"data\n\n",
            b"data:  \n\n",
        ] {
            assert_eq!(split_all(quiet, &[])[0].message().unwrap(), None);
        }
    }

    #[test]
    fn every_line_ending_is_a_line_ending() {
        for (stream, want) in [
            (&b"data: {}\r\r"[..], "{}"),
            (b"data: {}\r\n\r\n", "{}"),
            (b"data: {}\n\r\n", "{}"),
            (b"data: {}\r\n\n", "{}"),
            (b"data:{\"a\":\rdata:1}\r\r", "{\"a\":\n1}"),
        ] {
            for cut in 0..=stream.len() {
                let events = split_all(stream, &[cut]);
                assert_eq!(messages(&events), [want], "{stream:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_bom_opens_the_stream_once() {
        let stream = b"\xEF\xBB\xBFdata: {\"first\":1}\n\n\xEF\xBB\xBFdata: {\"second\":2}\n\n";
        let events = split_all(stream, &[1]);
        assert_eq!(messages(&events), ["{\"first\":1}"]);
        let filtered = events[0].with_message(b"{}");
        assert_eq!(filtered, b"\xEF\xBB\xBFdata: {}\n\n");
    }

    #[test]
    fn fields_are_read_as_a_client_reads_them() {
        let event = &split_all(b": c\ndata:a\ndata : no\nDATA: no\ndata:  b\n\n", &[])[0];
        assert_eq!(event.message().unwrap().unwrap(), b"a\n b");
    }

    #[test]
    fn data_is_replaced_in_place() {
        let events = split_all(STREAM, &[]);
        assert_eq!(
            events[0].with_message(b"{\"x\":\n0}"),
            b"event: message\r\nid: 1\r\ndata: {\"x\":\ndata: 0}\n\r\n"
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_not_a_pass() {
        let events = split_all(b"data: {\"a\":\"\xff\"}\n\n", &[]);
        assert_eq!(events[0].message(), Err(SseError::NotUtf8));
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut s = EventSplitter::new(8);
        assert!(s.push(b"data: 0123456789").is_err());
        let mut s = EventSplitter::new(8);
        assert_eq!(s.push(b"data: 1\n\n").unwrap().len(), 1);
        assert_eq!(s.push(b"data: 2").unwrap().len(), 0);
        assert_eq!(s.finish().raw, b"data: 2");
    }

    #[test]
    fn the_event_type_is_the_last_event_field() {
        let events = split_all(
            b"data: x\n\nevent: a\nevent: endpoint\ndata: /m\n\nevent:\n\n",
            &[],
        );
        let kinds: Vec<_> = events.iter().map(Event::event_type).collect();
        assert_eq!(kinds, ["message", "endpoint", "message"]);
    }
}
