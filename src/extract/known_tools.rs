//! Tool arrays declared before, remembered byte for byte with the tools read from them, so that
//! the same `tools` sent again is neither checked nor built again.
//!
//! Why: an agent loop resends its whole tool set every turn while only the conversation grows,
//! and tool declarations are most of a typical request (14.4 KiB of the bench's 16 KiB chat
//! declaring 20 tools). Checking them against the JSON grammar and building the names out of
//! them was nearly half the instructions of a check the decision cache answers (~168 k of ~350 k,
//! `bench/CALLGRIND.md`); comparing them with the array remembered from the previous turn is a
//! `memcmp`.
//!
//! Sound (judge what the receiver reads): a value is known only when the body's bytes at the
//! member's value begin with every byte of an array read before; a JSON value delimits itself,
//! so the value there is exactly those bytes, which were held to the grammar, built and read
//! into these tools before (see `json_prescan::KnownValues`). Nothing is matched by a hash, so
//! nothing can collide into a remembered array; an array differing in any byte, or sent with
//! more after a prefix of it, is read as ever. Only tools read without error are remembered,
//! and only from the fast path (a body read in full remembers nothing). Only what the body
//! declares is remembered, never a decision: policy changes, principals and the decision cache
//! are not involved.
//!
//! Bounded: each thread remembers its own (a body is read synchronously, so a tokio worker
//! needs no lock), at most [`MAX_ARRAYS`] arrays and [`MAX_BYTES`] of them, the least recently
//! used dropped first; arrays shorter than [`MIN_BYTES`] are not remembered (checking them
//! costs about what remembering does), nor longer than [`MAX_ARRAY_BYTES`]. A miss costs one
//! comparison per remembered array, each ending at the first differing byte, and a copy of the
//! array.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::DeclaredTool;
use super::json_prescan::KnownValues;

/// Most arrays each thread remembers: a gateway's agents, each with its tool set.
const MAX_ARRAYS: usize = 16;
/// Most bytes of arrays each thread remembers.
const MAX_BYTES: usize = 4 << 20;
/// Shorter arrays are checked every time.
const MIN_BYTES: usize = 512;
/// Longer arrays are checked every time.
const MAX_ARRAY_BYTES: usize = 1 << 20;

/// The tools a dialect read from the value of one top-level member (`tools`), when that value
/// is one remembered; see the module documentation.
pub struct KnownTools {
    /// Which reader made the tools: an array is only known to the reader that read it (the same
    /// bytes are other tools to another dialect).
    reader: &'static str,
    member: &'static str,
    known: Option<Arc<[DeclaredTool]>>,
    /// Where the member's value lies in the body, when it was checked this time.
    checked: Option<Range<usize>>,
}

impl KnownTools {
    /// Looks the value of the top-level member `member` up among the arrays `reader` (a
    /// dialect's name) remembered.
    pub fn of(reader: &'static str, member: &'static str) -> Self {
        Self {
            reader,
            member,
            known: None,
            checked: None,
        }
    }

    /// The tools read from the member's value before, when its bytes were remembered.
    pub fn take_known(&mut self) -> Option<Arc<[DeclaredTool]>> {
        self.known.take()
    }

    /// Remembers `tools`, read from the member's value in `body`, when that value was checked
    /// and built this time and is worth remembering.
    pub fn remember(&self, body: &[u8], tools: &Arc<[DeclaredTool]>) {
        let Some(value) = self.checked.clone().and_then(|span| body.get(span)) else {
            return;
        };
        if (MIN_BYTES..=MAX_ARRAY_BYTES).contains(&value.len())
            && value.first() == Some(&b'[')
            && value.last() == Some(&b']')
        {
            REMEMBERED.with_borrow_mut(|arrays| arrays.insert(self.reader, value, tools));
        }
    }
}

impl KnownValues for KnownTools {
    fn find(&mut self, member: &str, rest: &[u8]) -> Option<usize> {
        if member != self.member {
            return None;
        }
        let (len, tools) = REMEMBERED.with_borrow_mut(|arrays| arrays.find(self.reader, rest))?;
        self.known = Some(tools);
        Some(len)
    }

    fn scanned(&mut self, member: &str, span: Range<usize>) {
        if member == self.member {
            self.checked = Some(span);
        }
    }

    fn forget(&mut self) {
        self.known = None;
        self.checked = None;
    }
}

/// How the known tool arrays fared since start, every reader on every thread: arrays taken as
/// read, and arrays remembered. Operators see from them whether their agents resend identical
/// tool arrays (many known per remembered) or churn the memory (about as many remembered as
/// read). Process-wide atomics, as a body is read without the metrics registry at hand; the
/// metrics read them at each scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolArrayCounts {
    pub known: u64,
    pub remembered: u64,
}

static KNOWN_TOTAL: AtomicU64 = AtomicU64::new(0);
static REMEMBERED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// See [`ToolArrayCounts`].
pub fn tool_array_counts() -> ToolArrayCounts {
    ToolArrayCounts {
        known: KNOWN_TOTAL.load(Ordering::Relaxed),
        remembered: REMEMBERED_TOTAL.load(Ordering::Relaxed),
    }
}

thread_local! {
    static REMEMBERED: RefCell<Arrays> =
        const { RefCell::new(Arrays { recent: Vec::new(), bytes: 0 }) };
}

/// One thread's remembered arrays, most recently used first.
struct Arrays {
    recent: Vec<Remembered>,
    bytes: usize,
}

struct Remembered {
    reader: &'static str,
    /// The array's bytes, from `[` to `]`.
    value: Box<[u8]>,
    tools: Arc<[DeclaredTool]>,
}

impl Arrays {
    /// The length of the remembered array `rest` begins with, and its tools.
    fn find(&mut self, reader: &str, rest: &[u8]) -> Option<(usize, Arc<[DeclaredTool]>)> {
        let at = self
            .recent
            .iter()
            .position(|r| r.reader == reader && rest.starts_with(&r.value))?;
        KNOWN_TOTAL.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        HITS.set(HITS.get() + 1);
        self.recent[..=at].rotate_right(1);
        let found = &self.recent[0];
        Some((found.value.len(), Arc::clone(&found.tools)))
    }

    fn insert(&mut self, reader: &'static str, value: &[u8], tools: &Arc<[DeclaredTool]>) {
        REMEMBERED_TOTAL.fetch_add(1, Ordering::Relaxed);
        self.bytes += value.len();
        self.recent.insert(
            0,
            Remembered {
                reader,
                value: value.into(),
                tools: Arc::clone(tools),
            },
        );
        while self.recent.len() > MAX_ARRAYS || self.bytes > MAX_BYTES {
            let dropped = self.recent.pop().expect("the array just inserted fits");
            self.bytes -= dropped.value.len();
        }
    }
}

/// Forgets what this thread remembers (tests compare readings with and without).
#[cfg(any(test, fuzzing))]
pub fn forget_all() {
    REMEMBERED.with_borrow_mut(|arrays| {
        arrays.recent.clear();
        arrays.bytes = 0;
    });
}

/// How many arrays this thread remembers.
#[cfg(test)]
pub fn remembered() -> usize {
    REMEMBERED.with_borrow(|arrays| arrays.recent.len())
}

#[cfg(test)]
thread_local! {
    static HITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many values this thread has found remembered.
#[cfg(test)]
pub fn hits() -> usize {
    HITS.get()
}

#[cfg(test)]
mod anthropic_tests;
#[cfg(test)]
mod responses_gemini_tests;
#[cfg(test)]
mod tests;
