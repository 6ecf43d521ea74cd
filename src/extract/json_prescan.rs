//! The body's grammar checked in one pass, and what no dialect reads compacted away before
//! serde_json builds the rest.
//!
//! Why: skipping tool schemas and a conversation with serde_json (`deserialize_ignored_any`)
//! cost ~137 k instructions of a ~420 k hot check declaring 20 tools (its string scanner pays
//! a set-up per string, and schemas are hundreds of short ones), and serde_json's reader
//! cannot be moved past a value skipped by other code. So [`compact`] scans the whole body
//! itself (string contents sixteen bytes at a time, see [`scan`], long strings with `memchr` and
//! a vectorised control-character check) and writes a copy in which every value
//! [`parse_members`](super::strict_json::parse_members) would skip is replaced by `null`:
//! top-level members a [`Reading`] does not name, and the members it calls `unread` inside the
//! ones it builds. Their keys stay, so the duplicate-key checks (and `judges_keys`) see exactly
//! the keys they saw before. serde_json then builds the compacted text with all its checks
//! (duplicate keys, nesting limit, number range, surrogates), reading a few hundred bytes
//! instead of the whole body.
//!
//! Soundness (judge what the receiver reads): the compacted text is only used when this module
//! checked the whole body as UTF-8 and against the JSON grammar, every byte of it (but the
//! values a dialect knows whole from an earlier body, see [`KnownValues`]): structure, whitespace
//! (space, tab, line feed, carriage return), strings (no raw byte below 0x20; escapes
//! `\" \\ \/ \b \f \n \r \t` and `\u` with four hex digits), numbers
//! (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`), the literals, and nothing but whitespace
//! after the top-level value. That is the grammar serde_json's own skipping holds the skipped
//! parts to, so a body accepted here is one serde_json accepted, and the values replaced by
//! `null` are exactly the values it skipped: value boundaries are found by the same grammar.
//! Whenever this module is unsure (the top level is not an object, a key it compares holds an
//! escape, a built member nests deeper than serde_json allows, any grammar or UTF-8 error) it
//! answers `None` and the body is read in full as before; when serde_json refuses the compacted
//! text, the caller reads the original body in full too, so every refusal (and its message) is
//! the one the full reading gives. Differential tests and the `json_prescan_differential` fuzz
//! target hold the two readings equal.

use std::ops::Range;

use super::strict_json::Reading;
use scan::special;

mod scan;

/// Deeper built members are left to the full reading (serde_json refuses past 128 levels).
const MAX_BUILT_DEPTH: usize = 128;
/// Skipped values nest freely for serde_json; past this depth the full reading takes over
/// (the scanner's container stack is a fixed array of bits).
const MAX_SKIPPED_DEPTH: usize = 64 * STACK_WORDS;
const STACK_WORDS: usize = 16;

/// Top-level member values a dialect already knows whole, byte for byte, from an earlier body
/// (an agent resends the same `tools` every turn: see `extract/known_tools.rs`).
///
/// Sound because a JSON value delimits itself: when the bytes at a member's value begin with a
/// complete value this module checked before (and serde_json built, and the dialect read), the
/// value there is exactly those bytes, and it is held to the grammar and built exactly as it
/// was then (a top-level member is always at depth 1). The rest of the body is checked as
/// ever. A known value is written out as `null`, its key kept (so the duplicate-key check sees
/// it); the dialect takes what it made of the value from its memory instead.
pub trait KnownValues {
    /// The length of the value of the top-level member `member` when `rest` (the body from the
    /// value's first byte) begins with one known whole; `None` to check and build it.
    fn find(&mut self, member: &str, rest: &[u8]) -> Option<usize>;
    /// The value of the built top-level member `member` spans `span` of the body, checked.
    fn scanned(&mut self, member: &str, span: Range<usize>);
    /// The fast path was abandoned and the body is read in full: forget every `find` and
    /// `scanned` so far.
    fn forget(&mut self);
}

/// Knows no value: every built member is checked and built.
pub struct NoneKnown;

impl KnownValues for NoneKnown {
    fn find(&mut self, _: &str, _: &[u8]) -> Option<usize> {
        None
    }
    fn scanned(&mut self, _: &str, _: Range<usize>) {}
    fn forget(&mut self) {}
}

/// `body` with the values `reading` never reads replaced by `null`, written into `out`; `None`
/// when the body must be read in full (see the module documentation), invalid UTF-8 included.
#[cfg(test)]
pub fn compact<'o>(body: &str, reading: &Reading<'_>, out: &'o mut String) -> Option<&'o str> {
    compact_with(body.as_bytes(), reading, &mut NoneKnown, out)
}

/// [`compact`], with the values `known` knows whole written out as `null` too. The body's
/// UTF-8 is checked here, all of it but the known values (checked when they were first read).
pub fn compact_with<'o>(
    body: &[u8],
    reading: &Reading<'_>,
    known: &mut dyn KnownValues,
    out: &'o mut String,
) -> Option<&'o str> {
    let mut copy = std::mem::take(out).into_bytes();
    copy.clear();
    copy.reserve(body.len());
    let mut scan = Scan {
        cur: Cursor {
            bytes: body,
            pos: 0,
        },
        copied: 0,
        checked: 0,
        out: &mut copy,
        unread: reading.unread,
        known,
    };
    let scanned = scan
        .top(reading.members)
        .and_then(|()| scan.check_utf8(body.len()));
    scan.out.extend_from_slice(&body[scan.copied..]);
    // Valid UTF-8 whenever the scan went through: what it copied was checked, plus `null`s.
    *out = String::from_utf8(copy).ok()?;
    scanned.map(|()| out.as_str())
}

struct Scan<'t, 'o, 'k> {
    cur: Cursor<'t>,
    /// `bytes[..copied]` is written out (with skipped values as `null`).
    copied: usize,
    /// `bytes[..checked]` is known to be UTF-8.
    checked: usize,
    out: &'o mut Vec<u8>,
    unread: &'t [&'t str],
    known: &'k mut dyn KnownValues,
}

impl<'t> Scan<'t, '_, '_> {
    /// The top-level object: named members built, the rest replaced.
    fn top(&mut self, members: &[&str]) -> Option<()> {
        self.cur.expect(b'{')?;
        self.cur.whitespace();
        if self.cur.peek()? == b'}' {
            self.cur.pos += 1;
        } else {
            loop {
                let key = self.plain_key()?;
                self.cur.expect(b':')?;
                if let Some(&member) = members.iter().find(|m| m.as_bytes() == key) {
                    self.cur.whitespace();
                    let start = self.cur.pos;
                    match self.known.find(member, &self.cur.bytes[start..]) {
                        Some(len) => {
                            // A span that cannot be a value: the full reading, which forgets it.
                            if !self.is_known_value(start, start + len) {
                                return None;
                            }
                            // Its bytes were checked when it was first read: UTF-8 included.
                            self.check_utf8(start)?;
                            self.checked = start + len;
                            self.write_null(start, start + len);
                        }
                        None => {
                            self.built(1)?;
                            self.known.scanned(member, start..self.cur.pos);
                        }
                    }
                } else {
                    self.replaced()?;
                }
                self.cur.whitespace();
                match self.cur.peek()? {
                    b',' => self.cur.pos += 1,
                    b'}' => {
                        self.cur.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.cur.whitespace();
        (self.cur.pos == self.cur.bytes.len()).then_some(())
    }

    /// A key that is compared with member names: without escapes, so that its bytes are its
    /// name (a key with escapes sends the body to the full reading).
    fn plain_key(&mut self) -> Option<&'t [u8]> {
        self.cur.whitespace();
        if self.cur.peek()? != b'"' {
            return None;
        }
        let start = self.cur.pos + 1;
        if self.cur.string()? {
            return None;
        }
        let bytes = self.cur.bytes;
        Some(&bytes[start..self.cur.pos - 1])
    }

    /// Whether `start..end` can be a known value: within the body, from an ASCII byte to an
    /// ASCII byte (an array's brackets), so that no character straddles its edges.
    fn is_known_value(&self, start: usize, end: usize) -> bool {
        let bytes = self.cur.bytes;
        end > start && end <= bytes.len() && bytes[start].is_ascii() && bytes[end - 1].is_ascii()
    }

    /// Checks `bytes[checked..upto]` as UTF-8.
    fn check_utf8(&mut self, upto: usize) -> Option<()> {
        std::str::from_utf8(&self.cur.bytes[self.checked..upto]).ok()?;
        self.checked = upto;
        Some(())
    }

    /// A value that is built: copied as it is, with `unread` members inside replaced.
    /// `depth` counts the containers around it (the top-level object is 1).
    fn built(&mut self, depth: usize) -> Option<()> {
        self.cur.whitespace();
        match self.cur.peek()? {
            b'{' => {
                if depth >= MAX_BUILT_DEPTH {
                    return None;
                }
                self.cur.pos += 1;
                self.cur.whitespace();
                if self.cur.peek()? == b'}' {
                    self.cur.pos += 1;
                    return Some(());
                }
                loop {
                    let key = self.plain_key()?;
                    self.cur.expect(b':')?;
                    if self.unread.iter().any(|u| u.as_bytes() == key) {
                        self.replaced()?;
                    } else {
                        self.built(depth + 1)?;
                    }
                    self.cur.whitespace();
                    match self.cur.peek()? {
                        b',' => self.cur.pos += 1,
                        b'}' => {
                            self.cur.pos += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                if depth >= MAX_BUILT_DEPTH {
                    return None;
                }
                self.cur.pos += 1;
                self.cur.whitespace();
                if self.cur.peek()? == b']' {
                    self.cur.pos += 1;
                    return Some(());
                }
                loop {
                    self.built(depth + 1)?;
                    self.cur.whitespace();
                    match self.cur.peek()? {
                        b',' => self.cur.pos += 1,
                        b']' => {
                            self.cur.pos += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => self.cur.scalar(),
        }
    }

    /// A value that is not read: checked, and replaced by `null` in the output.
    fn replaced(&mut self) -> Option<()> {
        self.cur.whitespace();
        let start = self.cur.pos;
        // A local copy, so that the position stays in a register.
        let mut cur = self.cur;
        cur.skipped()?;
        self.write_null(start, cur.pos);
        Some(())
    }

    /// The value at `start..end` written out as `null`; reading goes on after it.
    fn write_null(&mut self, start: usize, end: usize) {
        self.out
            .extend_from_slice(&self.cur.bytes[self.copied..start]);
        self.out.extend_from_slice(b"null");
        self.cur.pos = end;
        self.copied = end;
    }
}

/// A position in the body, and the JSON grammar read from there.
#[derive(Clone, Copy)]
struct Cursor<'t> {
    bytes: &'t [u8],
    /// The next byte to read.
    pos: usize,
}

impl Cursor<'_> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline(always)]
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `byte` after optional whitespace.
    #[inline(always)]
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.whitespace();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Checks one value without building anything; iterative, so depth costs no stack.
    fn skipped(&mut self) -> Option<()> {
        // Bit set: the container at that depth is an object; `object`: the innermost one is.
        let mut objects = [0u64; STACK_WORDS];
        let mut depth = 0usize;
        let mut object = false;
        loop {
            // A value starts here.
            self.whitespace();
            let open = self.peek()?;
            if open == b'{' || open == b'[' {
                self.pos += 1;
                self.whitespace();
                if self.peek()? == open + 2 {
                    // `{}` or `[]` (the closing byte is two above the opening one).
                    self.pos += 1;
                } else {
                    if depth == MAX_SKIPPED_DEPTH {
                        return None;
                    }
                    let (word, bit) = (depth / 64, 1u64 << (depth % 64));
                    object = open == b'{';
                    if object {
                        objects[word] |= bit;
                        self.key()?;
                    } else {
                        objects[word] &= !bit;
                    }
                    depth += 1;
                    continue;
                }
            } else {
                self.scalar()?;
            }
            // A value ended: go on to the next member, or close the containers it ends.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.whitespace();
                let next = self.peek()?;
                self.pos += 1;
                if next == b',' {
                    if object {
                        self.key()?;
                    }
                    break;
                }
                if next != if object { b'}' } else { b']' } {
                    return None;
                }
                depth -= 1;
                if depth > 0 {
                    object = objects[(depth - 1) / 64] & (1u64 << ((depth - 1) % 64)) != 0;
                }
            }
        }
    }

    /// An object key and its colon, in a skipped value (any valid string).
    #[inline(always)]
    fn key(&mut self) -> Option<()> {
        self.whitespace();
        if self.peek()? != b'"' {
            return None;
        }
        self.string()?;
        self.expect(b':')
    }

    /// A string, number or literal.
    #[inline(always)]
    fn scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; what follows is the caller's to check.
    #[inline(always)]
    fn number(&mut self) -> Option<()> {
        if self.peek()? == b'-' {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    #[inline(always)]
    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    #[inline(always)]
    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }

    /// A string from its opening quote; whether it holds escapes.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        let mut at = self.pos + 1;
        let mut escapes = false;
        loop {
            at = special(self.bytes, at)?;
            match self.bytes[at] {
                b'"' => {
                    self.pos = at + 1;
                    return Some(escapes);
                }
                b'\\' => {}
                _ => return None,
            }
            escapes = true;
            at += match self.bytes.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                b'u' => {
                    let hex = self.bytes.get(at + 2..at + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    6
                }
                _ => return None,
            };
        }
    }
}

#[cfg(test)]
mod tests;
