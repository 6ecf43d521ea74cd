//! Where a run of plain string content ends: the first `"`, `\\` or control character.
//!
//! Why its own module: it is the prescan's hottest loop (about half its instructions on a chat
//! body of hundreds of short tool-schema strings), and on x86_64 it holds the library's one
//! `unsafe` block: sixteen bytes compared at once with SSE2, which every x86_64 CPU has (the
//! target's baseline; asserted at compile time below). Other targets scan the same sixteen bytes
//! as two `u64` words with bit tricks, in safe Rust.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x, _mm_set1_epi8,
};

// `special16` needs nothing but SSE2, which is part of the x86_64 baseline: this fails the
// build of any x86_64 target configured without it rather than relying on it silently.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(cfg!(target_feature = "sse2"));

/// How many sixteen-byte steps a string takes before the rest goes to [`long_special`].
const SHORT_STEPS: usize = 3;

/// The position of the first byte from `at` that ends a run of plain string content: `"`,
/// `\\` or a control character (below 0x20). Sixteen bytes a step ([`first16`]), which suits
/// the short strings of tool schemas (no call, no set-up); past [`SHORT_STEPS`] steps the rest
/// of a long string goes to [`long_special`]. The last few bytes of the body, byte by byte.
#[inline(always)]
pub(super) fn special(bytes: &[u8], mut at: usize) -> Option<usize> {
    let mut steps = 0;
    while let Some(chunk) = bytes.get(at..at + 16) {
        if steps == SHORT_STEPS {
            return long_special(bytes, at);
        }
        steps += 1;
        if let Some(first) = first16(chunk.try_into().ok()?) {
            return Some(at + first);
        }
        at += 16;
    }
    let tail = bytes.get(at..)?;
    let found = tail.iter().position(|&b| is_special(b))?;
    Some(at + found)
}

fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// [`special`] for long strings (prose in a conversation): `memchr` finds the next quote or
/// backslash many bytes at a time, then the span before it is checked for control characters
/// (no early exit, so the compiler vectorises it).
fn long_special(bytes: &[u8], at: usize) -> Option<usize> {
    let rest = bytes.get(at..)?;
    let end = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    let span = &rest[..end];
    let controls = span.iter().fold(0u8, |seen, &b| seen | u8::from(b < 0x20));
    if controls == 0 {
        return (end < rest.len()).then_some(at + end);
    }
    span.iter().position(|&b| b < 0x20).map(|i| at + i)
}

/// The index of the first special byte of `chunk`, if any.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
fn first16(chunk: &[u8; 16]) -> Option<usize> {
    // SAFETY: calling a `#[target_feature]` function is unsafe only because the CPU might lack
    // the feature. `special16` enables nothing but SSE2, which every x86_64 CPU has (it is in
    // the target's baseline, and the `const` assertion above fails the build otherwise). It
    // reads no memory through pointers: its argument is a reference to sixteen bytes, turned
    // into a vector from two integer words.
    let mask = unsafe { special16(chunk) };
    (mask != 0).then(|| mask.trailing_zeros() as usize)
}

/// One bit per byte of `chunk` (bit `i` for byte `i`) that is `"`, `\\` or below 0x20.
/// Control bytes are those the unsigned minimum with 0x1f leaves unchanged.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
#[inline]
fn special16(chunk: &[u8; 16]) -> u32 {
    let (low, high) = chunk.split_at(8);
    let low = i64::from_le_bytes(low.try_into().unwrap_or_default());
    let high = i64::from_le_bytes(high.try_into().unwrap_or_default());
    let v = _mm_set_epi64x(high, low);
    let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
    let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
    let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
    let any = _mm_or_si128(_mm_or_si128(quote, backslash), control);
    // The sign bits of sixteen bytes: the result fits in the low 16 bits.
    _mm_movemask_epi8(any) as u32
}

#[cfg(not(target_arch = "x86_64"))]
const ONES: u64 = 0x0101_0101_0101_0101;
#[cfg(not(target_arch = "x86_64"))]
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The index of the first special byte of `chunk`, if any, as two words ([`flags`]).
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn first16(chunk: &[u8; 16]) -> Option<usize> {
    let (low, high) = chunk.split_at(8);
    let low = flags(u64::from_le_bytes(low.try_into().ok()?));
    let high = flags(u64::from_le_bytes(high.try_into().ok()?));
    if low | high == 0 {
        return None;
    }
    let first = if low != 0 {
        low.trailing_zeros()
    } else {
        64 + high.trailing_zeros()
    };
    Some((first / 8) as usize)
}

/// The high bit of each byte of `word` that is `"`, `\\` or below 0x20. For each condition,
/// the lowest flagged byte is exact (a false flag can only sit above a true one, where the
/// subtraction's borrow carries), so the lowest flag of all three is the first special byte.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn flags(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    ((quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash)
        | (word.wrapping_sub(ONES * 0x20) & !word))
        & HIGHS
}

#[cfg(test)]
mod tests;
