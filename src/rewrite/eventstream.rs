//! AWS's binary event-stream framing (`application/vnd.amazon.eventstream`), the way Bedrock
//! streams answers: each message is a prelude (total and header lengths, CRC32), typed
//! headers (`:message-type`, `:event-type`, `:content-type`, ...), a payload and a CRC32 of
//! the whole. Decoding and encoding are the maintained `aws-smithy-eventstream` crate's (the
//! one the AWS SDKs use), so a message reads here exactly as boto3 reads it, and every message
//! re-encoded carries valid checksums.
//!
//! As with [`super::sse`], Envoy's chunk boundaries have nothing to do with message
//! boundaries: bytes are carried over until a message is complete, and each complete message
//! is handed over with its bytes as received, so what is not changed passes byte for byte.

use std::collections::BTreeSet;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder, write_message_to};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};

/// The prelude's first field: the message's total length.
const LENGTH_BYTES: usize = 4;

/// Splits a byte stream into complete, checksum-verified messages.
#[derive(Debug)]
pub struct MessageSplitter {
    pending: Vec<u8>,
    limit: usize,
}

/// One complete message: its bytes as received, and the message they decode to.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub raw: Vec<u8>,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventStreamError {
    #[error("event-stream message exceeds {0} bytes")]
    TooLarge(usize),
    #[error("event-stream message cannot be read: {0}")]
    Unreadable(String),
    #[error("the event stream ends inside a message")]
    Truncated,
}

impl MessageSplitter {
    pub fn new(limit: usize) -> Self {
        Self {
            pending: Vec::new(),
            limit,
        }
    }

    /// Adds a chunk; returns the messages it completed. A message whose checksums do not
    /// match, or that the crate cannot read, is an error: no client could read it either,
    /// and what cannot be read cannot be judged.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Frame>, EventStreamError> {
        self.pending.extend_from_slice(chunk);
        let mut frames = Vec::new();
        loop {
            if let Some(length) = self.pending.first_chunk::<LENGTH_BYTES>()
                && u32::from_be_bytes(*length) as usize > self.limit
            {
                return Err(EventStreamError::TooLarge(self.limit));
            }
            let mut rest = &self.pending[..];
            match MessageFrameDecoder::new().decode_frame(&mut rest) {
                Ok(DecodedFrame::Incomplete) => break,
                Ok(DecodedFrame::Complete(message)) => {
                    // Readers disagree on which of two same-named headers counts (botocore
                    // keeps the last): such a message is not read one way and passed the other.
                    let names = message.headers().iter().map(|h| h.name().as_str());
                    if names.collect::<BTreeSet<_>>().len() != message.headers().len() {
                        return Err(EventStreamError::Unreadable(
                            "a header appears twice".to_owned(),
                        ));
                    }
                    let used = self.pending.len() - rest.len();
                    let raw = self.pending.drain(..used).collect();
                    frames.push(Frame { raw, message });
                }
                Err(e) => return Err(EventStreamError::Unreadable(e.to_string())),
            }
        }
        Ok(frames)
    }

    /// At the end of the stream: bytes left over are a message cut short.
    pub fn finish(&mut self) -> Result<(), EventStreamError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(EventStreamError::Truncated)
        }
    }
}

/// A string header of `message` (`:event-type`, `:message-type`, ...).
pub fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

/// `message` with `payload` in place of its own (headers kept), encoded with fresh checksums.
pub fn with_payload(message: &Message, payload: Vec<u8>) -> Vec<u8> {
    encode(&Message::new_from_parts(
        message.headers().to_vec(),
        payload,
    ))
}

/// A new message with string headers `headers` and `payload`.
pub fn message(headers: &[(&str, &str)], payload: Vec<u8>) -> Vec<u8> {
    let headers = headers
        .iter()
        .map(|(name, value)| {
            Header::new(
                name.to_string(),
                HeaderValue::String(value.to_string().into()),
            )
        })
        .collect();
    encode(&Message::new_from_parts(headers, payload))
}

fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    // Only lengths past 4 GiB fail, and no message read or written here comes near that.
    write_message_to(message, &mut out).expect("an event-stream message under 4 GiB");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, payload: &str) -> Vec<u8> {
        message(
            &[(":event-type", kind), (":message-type", "event")],
            payload.as_bytes().to_vec(),
        )
    }

    #[test]
    fn messages_split_at_every_byte_reassemble_to_the_stream() {
        let stream = [event("a", "{\"x\":1}"), event("b", "")].concat();
        for cut in 0..=stream.len() {
            let mut splitter = MessageSplitter::new(1 << 10);
            let mut frames = splitter.push(&stream[..cut]).unwrap();
            frames.extend(splitter.push(&stream[cut..]).unwrap());
            splitter.finish().unwrap();
            assert_eq!(frames.len(), 2, "cut at {cut}");
            let raw: Vec<u8> = frames.iter().flat_map(|f| f.raw.clone()).collect();
            assert_eq!(raw, stream);
            assert_eq!(header(&frames[0].message, ":event-type"), Some("a"));
            assert_eq!(frames[0].message.payload().as_ref(), b"{\"x\":1}");
        }
    }

    #[test]
    fn a_bad_checksum_a_cut_message_and_an_oversized_one_are_errors() {
        let mut bad = event("a", "{}");
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            MessageSplitter::new(1 << 10).push(&bad),
            Err(EventStreamError::Unreadable(_))
        ));
        let good = event("a", "{}");
        let mut splitter = MessageSplitter::new(1 << 10);
        assert!(splitter.push(&good[..good.len() - 1]).unwrap().is_empty());
        assert_eq!(splitter.finish(), Err(EventStreamError::Truncated));
        assert_eq!(
            MessageSplitter::new(8).push(&good[..4]),
            Err(EventStreamError::TooLarge(8))
        );
        let twice = message(
            &[(":message-type", "exception"), (":message-type", "event")],
            b"{}".to_vec(),
        );
        assert!(matches!(
            MessageSplitter::new(1 << 10).push(&twice),
            Err(EventStreamError::Unreadable(_))
        ));
    }

    #[test]
    fn a_rewritten_payload_carries_valid_checksums() {
        let original = event("a", "{}");
        let frame = MessageSplitter::new(1 << 10).push(&original).unwrap()[0].clone();
        let rewritten = with_payload(&frame.message, b"{\"y\":2}".to_vec());
        let again = MessageSplitter::new(1 << 10).push(&rewritten).unwrap();
        assert_eq!(again[0].message.headers(), frame.message.headers());
        assert_eq!(again[0].message.payload().as_ref(), b"{\"y\":2}");
    }
}
