//! The scan against a byte-by-byte reference, on whichever path this target compiles.

use super::{is_special, special};

/// A small deterministic generator (xorshift64*): the inputs are reproducible from the seed.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Mostly plain text, with the special bytes and their neighbours (0x1f, 0x20, 0x21,
    /// 0x5b, 0x5d, 0x7f, 0x80, 0xff) often enough to land in every position.
    fn byte(&mut self) -> u8 {
        const EDGES: [u8; 14] = [
            b'"', b'\\', 0, 0x1f, 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0x9f, 0xdc, 0xff,
        ];
        let r = self.next();
        if r.is_multiple_of(16) {
            EDGES[(r >> 8) as usize % EDGES.len()]
        } else {
            (r >> 16) as u8
        }
    }
}

fn reference(bytes: &[u8], at: usize) -> Option<usize> {
    (at..bytes.len()).find(|&i| is_special(bytes[i]))
}

#[test]
fn the_first_special_byte_is_found_at_every_position_for_every_byte_value() {
    for len in [16, 17, 40] {
        for position in 0..len {
            for value in 0..=255u8 {
                let mut bytes = vec![b'a'; len];
                bytes[position] = value;
                let expected = is_special(value).then_some(position);
                assert_eq!(special(&bytes, 0), expected, "{len} {position} {value:#x}");
            }
        }
    }
}

#[test]
fn the_scan_equals_the_reference_on_random_bytes() {
    let mut random = Bytes(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = (random.next() % 200) as usize;
        // Sparse special bytes, so long runs reach the long-string path too.
        let dense = random.next().is_multiple_of(2);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let b = random.byte();
                if dense || !is_special(b) || random.next().is_multiple_of(8) {
                    b
                } else {
                    b'a'
                }
            })
            .collect();
        for at in 0..=len {
            assert_eq!(
                special(&bytes, at),
                reference(&bytes, at),
                "{bytes:?} from {at}"
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use super::super::{is_special, special16};
    use super::Bytes;

    #[allow(unsafe_code)]
    fn mask(chunk: &[u8; 16]) -> u32 {
        // SAFETY: SSE2 is in the x86_64 baseline (see `first16`).
        unsafe { special16(chunk) }
    }

    fn reference(chunk: &[u8; 16]) -> u32 {
        (0..16)
            .filter(|&i| is_special(chunk[i]))
            .fold(0, |mask, i| mask | 1 << i)
    }

    #[test]
    fn every_byte_value_at_every_position_sets_exactly_its_bit() {
        for background in [b'a', 0x20, 0x7f, 0xff, 0x1f] {
            for position in 0..16 {
                for value in 0..=255u8 {
                    let mut chunk = [background; 16];
                    chunk[position] = value;
                    assert_eq!(mask(&chunk), reference(&chunk), "{position} {value:#x}");
                }
            }
        }
    }

    #[test]
    fn the_mask_equals_the_reference_on_random_chunks() {
        let mut random = Bytes(0x0123_4567_89ab_cdef);
        for _ in 0..200_000 {
            let chunk: [u8; 16] = std::array::from_fn(|_| random.byte());
            assert_eq!(mask(&chunk), reference(&chunk), "{chunk:?}");
        }
    }
}
