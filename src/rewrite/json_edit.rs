//! Byte-preserving edits of a JSON document: find the byte spans of object members and array
//! elements, and cut some out, leaving every other byte exactly as the client sent it (field
//! order, number spelling, unicode escapes, whitespace).
//!
//! Re-serialising a parsed body would normalise numbers (`1.0` → `1`, big integers → floats)
//! and escapes, so the upstream would receive a request the client never wrote. The scanner
//! here assumes a document serde_json has already accepted, yet still refuses (rather than
//! panics on) anything unexpected.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot edit JSON at byte {0}")]
pub struct EditError(pub usize);

/// One `"key": value` of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: String,
    /// From the key's opening quote to the end of the value.
    pub span: Range<usize>,
    pub value: Range<usize>,
}

/// The span of the top-level value (surrounding whitespace excluded).
pub fn root(doc: &[u8]) -> Result<Range<usize>, EditError> {
    let start = skip_ws(doc, 0);
    let end = skip_value(doc, start)?;
    Ok(start..end)
}

/// The members of the object at `span`, in document order.
pub fn members(doc: &[u8], span: Range<usize>) -> Result<Vec<Member>, EditError> {
    let mut pos = expect(doc, span.start, b'{')?;
    let mut out = Vec::new();
    pos = skip_ws(doc, pos);
    if doc.get(pos) == Some(&b'}') {
        return Ok(out);
    }
    loop {
        let key_start = pos;
        let key_end = skip_string(doc, pos)?;
        let key: String =
            serde_json::from_slice(doc.get(key_start..key_end).ok_or(EditError(pos))?)
                .map_err(|_| EditError(key_start))?;
        pos = expect(doc, skip_ws(doc, key_end), b':')?;
        let value_start = skip_ws(doc, pos);
        let value_end = skip_value(doc, value_start)?;
        out.push(Member {
            key,
            span: key_start..value_end,
            value: value_start..value_end,
        });
        pos = skip_ws(doc, value_end);
        match doc.get(pos) {
            Some(b',') => pos = skip_ws(doc, pos + 1),
            Some(b'}') => return Ok(out),
            _ => return Err(EditError(pos)),
        }
    }
}

/// The element spans of the array at `span`.
pub fn elements(doc: &[u8], span: Range<usize>) -> Result<Vec<Range<usize>>, EditError> {
    let mut pos = skip_ws(doc, expect(doc, span.start, b'[')?);
    let mut out = Vec::new();
    if doc.get(pos) == Some(&b']') {
        return Ok(out);
    }
    loop {
        let end = skip_value(doc, pos)?;
        out.push(pos..end);
        pos = skip_ws(doc, end);
        match doc.get(pos) {
            Some(b',') => pos = skip_ws(doc, pos + 1),
            Some(b']') => return Ok(out),
            _ => return Err(EditError(pos)),
        }
    }
}

/// A set of non-overlapping replacements, applied in one pass.
#[derive(Debug, Default)]
pub struct Edits {
    ops: Vec<(Range<usize>, Vec<u8>)>,
}

impl Edits {
    pub fn replace(&mut self, span: Range<usize>, with: impl Into<Vec<u8>>) {
        self.ops.push((span, with.into()));
    }

    pub fn delete(&mut self, span: Range<usize>) {
        self.ops.push((span, Vec::new()));
    }

    /// Deletes the items at `remove` (indices into `items`, which are the spans of one
    /// container's members or elements, in order), together with the separators that would
    /// otherwise dangle. `inner` is the container's interior (between its brackets).
    pub fn delete_items(&mut self, items: &[Range<usize>], remove: &[usize], inner: Range<usize>) {
        let keep: Vec<bool> = (0..items.len()).map(|i| !remove.contains(&i)).collect();
        if !keep.contains(&true) {
            if !items.is_empty() {
                self.delete(inner);
            }
            return;
        }
        let mut i = 0;
        while i < items.len() {
            if keep.get(i) == Some(&true) {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < items.len() && keep.get(i) == Some(&false) {
                i += 1;
            }
            let (Some(first), Some(last)) = (items.get(run_start), items.get(i - 1)) else {
                return;
            };
            match (
                run_start.checked_sub(1).and_then(|p| items.get(p)),
                items.get(i),
            ) {
                // `prev, removed…` → `prev`
                (Some(prev), _) => self.delete(prev.end..last.end),
                // `removed…, next` → `next`
                (None, Some(next)) => self.delete(first.start..next.start),
                (None, None) => self.delete(inner.clone()),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn apply(mut self, doc: &[u8]) -> Result<Vec<u8>, EditError> {
        self.ops.sort_by_key(|(span, _)| span.start);
        let mut out = Vec::with_capacity(doc.len());
        let mut pos = 0;
        for (span, with) in self.ops {
            if span.start < pos || span.end > doc.len() {
                return Err(EditError(span.start));
            }
            out.extend_from_slice(doc.get(pos..span.start).ok_or(EditError(pos))?);
            out.extend_from_slice(&with);
            pos = span.end;
        }
        out.extend_from_slice(doc.get(pos..).ok_or(EditError(pos))?);
        Ok(out)
    }
}

/// The interior of a container span (between its brackets).
pub fn inner(span: &Range<usize>) -> Range<usize> {
    span.start + 1..span.end.saturating_sub(1)
}

fn skip_ws(doc: &[u8], mut pos: usize) -> usize {
    while matches!(doc.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

fn expect(doc: &[u8], pos: usize, byte: u8) -> Result<usize, EditError> {
    if doc.get(pos) == Some(&byte) {
        Ok(pos + 1)
    } else {
        Err(EditError(pos))
    }
}

fn skip_string(doc: &[u8], pos: usize) -> Result<usize, EditError> {
    let mut i = expect(doc, pos, b'"')?;
    loop {
        match doc.get(i) {
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => i += 2,
            Some(_) => i += 1,
            None => return Err(EditError(pos)),
        }
    }
}

fn skip_value(doc: &[u8], pos: usize) -> Result<usize, EditError> {
    match doc.get(pos) {
        Some(b'"') => skip_string(doc, pos),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut i = pos;
            loop {
                match doc.get(i) {
                    Some(b'"') => {
                        i = skip_string(doc, i)?;
                        continue;
                    }
                    Some(b'{' | b'[') => depth += 1,
                    Some(b'}' | b']') => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    Some(_) => {}
                    None => return Err(EditError(pos)),
                }
                i += 1;
            }
        }
        Some(_) => {
            let mut i = pos;
            while let Some(b) = doc.get(i) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                i += 1;
            }
            if i == pos { Err(EditError(pos)) } else { Ok(i) }
        }
        None => Err(EditError(pos)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(doc: &str, remove: &[usize]) -> String {
        let doc = doc.as_bytes();
        let span = root(doc).unwrap();
        let items = elements(doc, span.clone()).unwrap();
        let mut edits = Edits::default();
        edits.delete_items(&items, remove, inner(&span));
        String::from_utf8(edits.apply(doc).unwrap()).unwrap()
    }

    #[test]
    fn deleting_elements_keeps_separators_valid() {
        let doc = "[ 1, \"a,]\" , {\"x\":[2]} ,3 ]";
        assert_eq!(cut(doc, &[]), doc);
        assert_eq!(cut(doc, &[0]), "[ \"a,]\" , {\"x\":[2]} ,3 ]");
        assert_eq!(cut(doc, &[1]), "[ 1 , {\"x\":[2]} ,3 ]");
        assert_eq!(cut(doc, &[3]), "[ 1, \"a,]\" , {\"x\":[2]} ]");
        assert_eq!(cut(doc, &[1, 2]), "[ 1 ,3 ]");
        assert_eq!(cut(doc, &[0, 1, 3]), "[ {\"x\":[2]} ]");
        assert_eq!(cut(doc, &[0, 1, 2, 3]), "[]");
        assert_eq!(cut("[]", &[]), "[]");
        for remove in [vec![0], vec![1, 3], vec![0, 2], vec![2, 3]] {
            let out = cut(doc, &remove);
            assert!(
                serde_json::from_str::<serde_json::Value>(&out).is_ok(),
                "{out}"
            );
        }
    }

    #[test]
    fn members_are_found_with_escaped_keys_and_nested_values() {
        let doc = br#"{"a\"b" : {"c": "}"}, "n": 1.50e3, "t": true}"#;
        let m = members(doc, root(doc).unwrap()).unwrap();
        let keys: Vec<_> = m.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["a\"b", "n", "t"]);
        assert_eq!(&doc[m[1].value.clone()], b"1.50e3");
        let mut edits = Edits::default();
        let spans: Vec<_> = m.iter().map(|m| m.span.clone()).collect();
        edits.delete_items(&spans, &[0], inner(&root(doc).unwrap()));
        assert_eq!(edits.apply(doc).unwrap(), br#"{"n": 1.50e3, "t": true}"#);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for doc in [&b""[..], b"{", b"[1,", b"{\"a\" 1}", b"\"abc", b"{\"a\":}"] {
            let r = root(doc).and_then(|s| members(doc, s));
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(doc));
        }
    }
}
