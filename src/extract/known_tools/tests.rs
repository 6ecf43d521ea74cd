//! A remembered tool array never changes what is read: every reading with the memory primed
//! equals the reading of the same body with nothing remembered, over bodies that differ from
//! the remembered one anywhere (in the array above all); and the array is known exactly when
//! its bytes are the remembered ones.

use serde_json::{Value, json};

use super::{MAX_ARRAYS, MAX_BYTES, forget_all, hits, remembered, tool_array_counts};
use crate::extract::openai_chat::OpenaiChat;
use crate::extract::test_support::{below, read_bytes};
use crate::extract::{ExtractError, LlmRequest};

/// OpenAI Chat's reading of a body.
pub(super) fn read(body: &[u8]) -> Result<LlmRequest, ExtractError> {
    read_bytes(&OpenaiChat, "/v1/chat/completions", body)
}

/// `n` function tools with schemas and descriptions: well over the remembering threshold.
fn tools(names: &[&str]) -> Value {
    names
        .iter()
        .map(|name| {
            json!({"type": "function", "function": {
                "name": name,
                "description": format!("Looks {name} up for the support agent. \"Quoted\" \u{e9}"),
                "parameters": {"type": "object", "properties": {
                    "ticket_id": {"type": "string", "pattern": "^T-[0-9]+$"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 1.5e0}},
                    "required": ["ticket_id"], "additionalProperties": false}}})
        })
        .collect()
}

const NAMES: [&str; 4] = ["lookup_ticket", "search_kb", "get_weather", "refund"];

fn chat(tools: &Value, user: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": user}],
        "tools": tools,
        "tool_choice": "auto",
    }))
    .unwrap()
}

fn names(r: &LlmRequest) -> Vec<&str> {
    r.tools.iter().map(|t| t.name.as_str()).collect()
}

/// A dialect's reading of a body.
pub(super) type Read = fn(&[u8]) -> Result<LlmRequest, ExtractError>;

/// The reading of `body` with nothing remembered, then with `primer`'s array remembered: equal.
/// Whether the second reading found the array remembered.
fn same_primed(primer: &[u8], body: &[u8]) -> bool {
    same_primed_by(read, primer, body)
}

/// [`same_primed`], read by `read`.
pub(super) fn same_primed_by(read: Read, primer: &[u8], body: &[u8]) -> bool {
    forget_all();
    let cold = read(body).map_err(|e| e.to_string());
    forget_all();
    read(primer).expect("the primer reads");
    assert_eq!(remembered(), 1);
    let before = hits();
    let warm = read(body).map_err(|e| e.to_string());
    assert_eq!(
        cold,
        warm,
        "primed with {}:\n{}",
        String::from_utf8_lossy(primer),
        String::from_utf8_lossy(body)
    );
    hits() > before
}

#[test]
fn the_same_array_sent_again_is_known_and_read_alike() {
    forget_all();
    let array = tools(&NAMES);
    let counted = tool_array_counts();
    let first = read(&chat(&array, "turn one")).unwrap();
    assert_eq!(remembered(), 1);
    let before = hits();
    // The next turn: the conversation grew, the tools are the same bytes.
    let second = read(&chat(&array, "turn one, answer, turn two")).unwrap();
    assert_eq!(hits(), before + 1, "the array was known");
    // The metrics' process-wide counts (other tests count too: at least ours).
    let now = tool_array_counts();
    assert!(now.remembered > counted.remembered && now.known > counted.known);
    assert_eq!(remembered(), 1, "nothing new to remember");
    assert_eq!(names(&first), NAMES);
    assert_eq!(second, first);
}

#[test]
fn an_array_differing_in_any_way_is_read_afresh() {
    let array = tools(&NAMES);
    let primer = chat(&array, "hi");
    let text = String::from_utf8(primer.clone()).unwrap();
    // Another tool after the remembered ones: the remembered bytes are a prefix up to its `]`.
    let more = chat(&tools(&[&NAMES[..], &["delete_repo"]].concat()), "hi");
    assert!(!same_primed(&primer, &more));
    assert_eq!(names(&read(&more).unwrap()).last(), Some(&"delete_repo"));
    // One name one byte off, and one tool fewer.
    for body in [
        text.replacen("\"refund\"", "\"refunD\"", 1).into_bytes(),
        chat(&tools(&NAMES[..3]), "hi"),
    ] {
        assert!(!same_primed(&primer, &body));
    }
    // The remembered array followed by more than a member may hold: refused as without it.
    let tools_at = text.find("\"tools\":").unwrap() + "\"tools\":".len();
    let end = tools_at + serde_json::to_string(&array).unwrap().len();
    for tail in [
        "x",
        ",{\"type\":\"function\",\"function\":{\"name\":\"delete_repo\"}}]",
        "]",
        ",\"tools\":[]",
    ] {
        let mut body = text.clone();
        body.insert_str(end, tail);
        let known = same_primed(&primer, body.as_bytes());
        assert!(read(body.as_bytes()).is_err(), "{body}");
        assert!(known, "the prefix was known, what follows refused: {tail}");
    }
    // A second `tools` member holding the remembered array: ambiguous, refused.
    let dup = text.replacen(
        "\"tools\":",
        &format!(
            "\"tools\":{},\"tools\":",
            serde_json::to_string(&array).unwrap()
        ),
        1,
    );
    same_primed(&primer, dup.as_bytes());
    assert!(matches!(
        read(dup.as_bytes()),
        Err(ExtractError::DuplicateKey(_))
    ));
}

/// Bodies differing from the remembered one at random places (a third inside the tools array,
/// a third before it, a third after it): byte flips, inserted quotes, backslashes, control
/// characters and structure, truncations, copied slices. Each is read alike with and without the
/// array remembered.
#[test]
fn a_remembered_array_never_changes_a_reading() {
    let primers = [
        chat(&tools(&NAMES), "hi"),
        serde_json::to_vec_pretty(&json!({"model": "m", "tools": tools(&NAMES[1..]),
            "messages": []}))
        .unwrap(),
        format!(
            r#"{{"tools" : [ {{"type":"custom","custom":{{"name":"gr\u0065p","format":{{"type":"grammar","definition":"{}"}}}}}},{{"type":"function","function":{{"name":"a"}}}} ] , "model":"m"}}"#,
            "x".repeat(600)
        )
        .into_bytes(),
    ];
    let (checked, known, accepted) = mutations_read_alike(read, &primers, 0x2545_f491_4f6c_dd1d);
    assert_eq!(checked, 900);
    // Mutations after the array leave it known; most inside it break it or make it another.
    assert!(known > 250, "known {known} of {checked}");
    assert!(accepted > 200, "accepted {accepted} of {checked}");
}

/// 300 mutations of each primer, each read alike with and without the primer's array
/// remembered ([`same_primed_by`]): how many were checked, found known, and accepted.
pub(super) fn mutations_read_alike(
    read: Read,
    primers: &[Vec<u8>],
    seed: u64,
) -> (usize, usize, usize) {
    let mut next = below(seed);
    const INSERTS: [&[u8]; 12] = [
        b"\"", b"\\", b"\x01", b"\t", b"{", b"}", b"[", b"]", b",", b":", b"0", b" ",
    ];
    let (mut checked, mut known, mut accepted) = (0, 0, 0);
    for primer in primers {
        // Where the remembered array lies in the primer.
        forget_all();
        read(primer).unwrap();
        let array = super::REMEMBERED.with_borrow(|arrays| arrays.recent[0].value.clone());
        let start = primer
            .windows(array.len())
            .position(|w| *w == *array)
            .unwrap();
        let end = start + array.len() - 1;
        for _ in 0..300 {
            let mut body = primer.clone();
            // A third in the array, a third before it, a third after it.
            let at = match next(3) {
                0 => start + next(end - start + 1),
                1 => next(start + 1),
                _ => end + 1 + next(body.len() - end),
            };
            match next(5) {
                0 if at < body.len() => body[at] = next(256) as u8,
                1 | 4 => {
                    let insert = INSERTS[next(INSERTS.len())];
                    body.splice(at..at, insert.iter().copied());
                }
                2 => body.truncate(at),
                // Whitespace or a member where one may go: outside the array the body stays
                // valid, and the array known.
                3 if at <= start || at > end => {
                    let at = if at <= start { start } else { body.len() - 1 };
                    let insert: &[u8] = [b" \n\t ".as_slice(), b",\"x\":[1,\"]\"]", b"\r"][next(3)];
                    let insert = if at == start { &insert[..1] } else { insert };
                    body.splice(at..at, insert.iter().copied());
                }
                _ => {
                    let from = next(body.len() + 1);
                    let to = (from + next(40)).min(body.len());
                    let slice = body[from..to].to_vec();
                    body.splice(at..at, slice);
                }
            }
            let k = same_primed_by(read, primer, &body);
            known += usize::from(k);
            accepted += usize::from(read(&body).is_ok());
            checked += 1;
        }
    }
    (checked, known, accepted)
}

#[test]
fn small_arrays_are_not_remembered_and_memory_is_bounded() {
    forget_all();
    read(&chat(
        &json!([{"type": "function", "function": {"name": "a"}}]),
        "hi",
    ))
    .unwrap();
    assert_eq!(
        remembered(),
        0,
        "a short array costs less to check than to remember"
    );
    for i in 0..MAX_ARRAYS + 5 {
        let name = format!("tool_{i}");
        read(&chat(&tools(&[&name, "b", "c"]), "hi")).unwrap();
    }
    assert_eq!(
        remembered(),
        MAX_ARRAYS,
        "the least recently used are dropped"
    );
    // Big arrays: never more than MAX_BYTES of them.
    let description = "d".repeat(300 * 1024);
    for i in 0..20 {
        let array = json!([{"type": "function", "function": {"name": format!("t{i}"),
            "description": description}}]);
        read(&chat(&array, "hi")).unwrap();
        super::REMEMBERED.with_borrow(|arrays| {
            assert!(arrays.bytes <= MAX_BYTES);
            assert_eq!(
                arrays.bytes,
                arrays.recent.iter().map(|r| r.value.len()).sum::<usize>()
            );
        });
    }
    assert!(remembered() < MAX_ARRAYS);
}

#[test]
fn an_array_is_known_only_to_the_reader_that_read_it() {
    use crate::extract::json_prescan::KnownValues;
    use crate::extract::known_tools::KnownTools;

    forget_all();
    let array = serde_json::to_vec(&tools(&NAMES)).unwrap();
    read(&chat(&tools(&NAMES), "hi")).unwrap();
    let mut rest = array.clone();
    rest.extend_from_slice(b",\"model\":\"m\"}");
    let mut other = KnownTools::of("another_dialect", "tools");
    assert_eq!(other.find("tools", &rest), None);
    assert!(other.take_known().is_none());
    let mut chat_reader = KnownTools::of("openai_chat", "tools");
    assert_eq!(chat_reader.find("messages", &rest), None, "only its member");
    assert_eq!(chat_reader.find("tools", &rest), Some(array.len()));
    assert_eq!(
        chat_reader
            .take_known()
            .unwrap()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        NAMES
    );
}

/// The known array is the only part of a body whose UTF-8 is not checked again: invalid UTF-8
/// anywhere else is refused, as it is with nothing remembered.
#[test]
fn invalid_utf8_around_a_known_array_is_refused() {
    let array = tools(&NAMES);
    let primer = chat(&array, "hi");
    let array_text = serde_json::to_string(&array).unwrap();
    let at = String::from_utf8(primer.clone())
        .unwrap()
        .find(&array_text)
        .unwrap();
    for (place, byte) in [
        (primer.iter().position(|&b| b == b'h').unwrap(), 0xff),
        (at - 2, 0xc3),
        (at + array_text.len() + 1, 0x80),
        (primer.len() - 2, 0xe2),
    ] {
        let mut body = primer.clone();
        body.insert(place, byte);
        same_primed(&primer, &body);
        let refused = read(&body).unwrap_err().to_string();
        assert!(refused.contains("UTF-8"), "{refused}");
    }
    // In the user's message, before the array: the array is still found known, then refused.
    let mut body = primer.clone();
    let hi = primer.windows(4).position(|w| w == b"\"hi\"").unwrap();
    body.splice(hi + 1..hi + 3, [0xed, 0xa0, 0x80]); // a UTF-16 surrogate, invalid in UTF-8
    assert!(same_primed(&primer, &body));
    assert!(read(&body).unwrap_err().to_string().contains("UTF-8"));
}

/// Legacy `functions` beside a known `tools` array are added after the remembered tools, a name
/// declared in both kept once, as with nothing remembered.
#[test]
fn functions_beside_a_known_array_are_read_as_ever() {
    let array = tools(&NAMES);
    let primer = chat(&array, "hi");
    let mut body: Value = serde_json::from_slice(&primer).unwrap();
    body["functions"] = json!([{"name": "run_shell"}, {"name": "refund"}]);
    let body = serde_json::to_vec(&body).unwrap();
    assert!(same_primed(&primer, &body));
    let read = read(&body).unwrap();
    assert_eq!(names(&read), [&NAMES[..], &["run_shell"]].concat());
}
