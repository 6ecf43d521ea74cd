//! The prescan against serde_json: the same grammar verdict on every edge of it, and
//! `parse_members` (prescan, then serde_json on the compacted text) equal to the full reading
//! (`parse_members_in_full`) for every dialect's reading, over the fuzz corpus and mutations
//! of it.

use serde::de::IgnoredAny;
use serde_json::Value;

use super::compact;
use crate::extract::json_view::View;
use crate::extract::strict_json::{Reading, parse_members, parse_members_in_full};
use crate::extract::test_support::below;
use crate::extract::{anthropic_messages, bedrock_converse, gemini, openai_chat, openai_responses};

const MODEL_ONLY: Reading<'static> = Reading {
    members: &["model"],
    unread: &[],
    judges_keys: false,
};

/// Every dialect's reading (Bedrock's Anthropic InvokeModel one built as `bedrock_converse`
/// builds it), and two that build more than any dialect does.
fn readings() -> Vec<Reading<'static>> {
    let mut anthropic_invoke = anthropic_messages::READING.members.to_vec();
    anthropic_invoke.extend(["anthropic_version", "toolConfig"]);
    vec![
        openai_chat::READING,
        openai_responses::READING,
        anthropic_messages::READING,
        Reading {
            members: Vec::leak(anthropic_invoke),
            ..anthropic_messages::READING
        },
        gemini::READING,
        bedrock_converse::READING,
        bedrock_converse::OTHER_READING,
        MODEL_ONLY,
        Reading {
            members: &["model", "messages", "tools", "x", "a", "params"],
            unread: &["content", "description"],
            judges_keys: true,
        },
    ]
}

/// The fast reading equals the full one, as `Value` and as `View`: the same members, or the
/// same refusal (message included). Whether the body was accepted.
fn same(body: &[u8], reading: &Reading<'_>) -> bool {
    let shown = || String::from_utf8_lossy(body).into_owned();
    let full = parse_members_in_full::<Value>(body, reading);
    let fast = parse_members::<Value>(body, reading, &mut String::new());
    let accepted = match (&full, &fast) {
        (Ok(full), Ok(fast)) => {
            assert_eq!(full, fast, "{}", shown());
            true
        }
        (Err(full), Err(fast)) => {
            assert_eq!(full.to_string(), fast.to_string(), "{}", shown());
            false
        }
        _ => panic!("{}: full {full:?}, fast {fast:?}", shown()),
    };
    let mut scratch = String::new();
    let full = parse_members_in_full::<View<'_>>(body, reading);
    let fast = parse_members::<View<'_>>(body, reading, &mut scratch);
    match (&full, &fast) {
        (Ok(full), Ok(fast)) => assert_eq!(full, fast, "{}", shown()),
        (Err(full), Err(fast)) => assert_eq!(full.to_string(), fast.to_string(), "{}", shown()),
        _ => panic!("{}: full {full:?}, fast {fast:?}", shown()),
    }
    accepted
}

/// Whether the prescan takes the fast path for `body`.
fn fast(body: &str, reading: &Reading<'_>) -> bool {
    compact(body, reading, &mut String::new()).is_some()
}

/// `value` in a member no reading builds: the prescan accepts it exactly when serde_json
/// does, and `parse_members` answers as the full reading. The value is read both near the end
/// of the body and followed by more (string contents are scanned sixteen bytes at a time while
/// that many remain, byte by byte after).
fn verdict(value: &str) -> bool {
    let at_end = format!(r#"{{"model":"m","x":{value}}}"#);
    let followed = format!(r#"{{"model":"m","x":{value},"more":"0123456789abcdef0123"}}"#);
    let serde = serde_json::from_str::<IgnoredAny>(&at_end).is_ok();
    for body in [at_end, followed] {
        assert_eq!(serde_json::from_str::<IgnoredAny>(&body).is_ok(), serde);
        assert_eq!(fast(&body, &MODEL_ONLY), serde, "{body:?}");
        for reading in readings() {
            let accepted = same(body.as_bytes(), &reading);
            if !reading.members.contains(&"x") {
                assert_eq!(accepted, serde, "{body:?}");
            }
        }
    }
    serde
}

#[test]
fn strings_are_held_to_the_grammar() {
    for ok in [
        r#""""#,
        r#""plain""#,
        r#""\"\\\/\b\f\n\r\t""#,
        r#""\u0041\u00e9\uD83D\uDE00\uABcd""#,
        r#""\ud800""#,
        "\"\u{7f}\"",
        "\"caf\u{e9} \u{1F600}\"",
        r#""a long string that takes the long path: more than four words of content \n""#,
        r#""0123456789abcdef0123456789abcdef0123456789abcdef\"0123456789abcdef""#,
    ] {
        assert!(verdict(ok), "{ok}");
    }
    for bad in [
        r#""\q""#,
        r#""\x41""#,
        r#""\U0041""#,
        r#""\u12""#,
        r#""\u12G4""#,
        r#""\u004""#,
        r#""\"#,
        r#""\u"#,
        r#""unterminated"#,
        "\"a\tb\"",
        "\"a\nb\"",
        "\"a\rb\"",
        "\"\u{0}\"",
        "\"\u{1f}\"",
        "\"a long string with a raw control character far into it: \u{8} end\"",
        "\"0123456789abcdef0123456789abcdef0123456789abcdef\u{1}\"",
        "'single'",
    ] {
        assert!(!verdict(bad), "{bad}");
    }
    for code in 0u8..0x20 {
        let raw = format!("\"a{}b\"", char::from(code));
        assert!(!verdict(&raw), "{code:#x}");
    }
}

#[test]
fn numbers_and_literals_are_held_to_the_grammar() {
    for ok in [
        "0",
        "-0",
        "1",
        "-1",
        "10",
        "1.5",
        "-0.0",
        "1e5",
        "1E+5",
        "1e-5",
        "0e0",
        "1.5E-07",
        "1e400",
        "-1e999",
        "123456789012345678901234567890",
        "true",
        "false",
        "null",
    ] {
        assert!(verdict(ok), "{ok}");
    }
    for bad in [
        "-",
        "01",
        "-01",
        "00",
        "1.",
        ".5",
        "1e",
        "1E+",
        "1e-",
        "+1",
        "--1",
        "1.e5",
        "0x10",
        "Infinity",
        "NaN",
        "1_000",
        "tru",
        "True",
        "nul",
        "nulll",
        "falsey",
        "undefined",
    ] {
        assert!(!verdict(bad), "{bad}");
    }
}

#[test]
fn structure_and_whitespace_are_held_to_the_grammar() {
    for ok in [
        "[]",
        "{}",
        "[[],{},[{}],{\"a\":[]}]",
        " [ 1 , 2 ] ",
        "\t{\n\"a\"\r:\n1 }",
        r#"{"a":{"b":{"c":[1,{"d":null}]}}}"#,
        r#"{"a\u0041":1,"a\"b":2}"#,
    ] {
        assert!(verdict(ok), "{ok:?}");
    }
    for bad in [
        "[1,]",
        "[,1]",
        "{\"a\":1,}",
        "{\"a\"}",
        "{\"a\" 1}",
        "{a:1}",
        "{1:1}",
        "[1 2]",
        "[}",
        "{]",
        "[",
        "]",
        "",
        "\u{c}1",
        "\u{b}1",
        "\u{a0}1",
        "[1]]",
        "{\"a\":1}}",
    ] {
        assert!(!verdict(bad), "{bad:?}");
    }
    for (body, ok) in [
        ("{}", true),
        (" {} \n", true),
        ("{\"model\":\"m\"} x", false),
        ("{\"model\":\"m\"}{}", false),
        ("{\"model\":\"m\"}\u{c}", false),
        ("{\"model\":\"m\",}", false),
        ("{\"model\":\"m\"", false),
        ("{", false),
    ] {
        for reading in readings() {
            assert_eq!(same(body.as_bytes(), &reading), ok, "{body:?}");
        }
        assert_eq!(fast(body, &MODEL_ONLY), ok, "{body:?}");
    }
}

#[test]
fn deep_nesting_is_left_to_the_full_reading() {
    // Skipped parts nest freely for serde_json; past the prescan's stack it steps aside.
    for depth in [10, 500, 1023, 1024, 1025, 5000] {
        let deep = format!(
            r#"{{"model":"m","x":{}1{}}}"#,
            "[{\"a\":".repeat(depth),
            "}]".repeat(depth)
        );
        for reading in readings() {
            // A reading that builds `x` meets serde_json's nesting limit.
            let built = reading.members.contains(&"x");
            assert_eq!(
                same(deep.as_bytes(), &reading),
                !built || depth < 63,
                "{depth} {reading:?}"
            );
        }
        assert_eq!(fast(&deep, &MODEL_ONLY), 2 * depth < 1024, "{depth}");
        let broken = deep.replacen("1}", "1,}", 1);
        for reading in readings() {
            assert!(!same(broken.as_bytes(), &reading), "{depth}");
        }
    }
    // Built members keep serde_json's nesting limit (127 levels inside the body's object).
    for depth in [126, 127, 128, 200] {
        let deep = format!(r#"{{"model":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        assert_eq!(same(deep.as_bytes(), &MODEL_ONLY), depth < 127, "{depth}");
    }
}

#[test]
fn unread_values_become_null_and_their_keys_stay() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],
        "tools":[{"type":"function","function":{"name":"a","parameters":{"type":"object"},
        "description":"d"}}],"temperature":0.2}"#;
    let mut out = String::new();
    let compacted = compact(body, &openai_chat::READING, &mut out).unwrap();
    assert_eq!(
        compacted,
        r#"{"model":"m","messages":null,
        "tools":[{"type":"function","function":{"name":"a","parameters":null,
        "description":null}}],"temperature":null}"#
    );
    for reading in readings() {
        assert!(same(body.as_bytes(), &reading));
    }
}

#[test]
fn duplicate_keys_are_refused_exactly_where_the_full_reading_refuses_them() {
    for (body, refused) in [
        (r#"{"model":"a","model":"b"}"#, true),
        (r#"{"model":"m","messages":[],"messages":[]}"#, true),
        (r#"{"model":"m","tools":[{"name":"a","name":"b"}]}"#, true),
        (
            r#"{"model":"m","tools":[{"parameters":{},"parameters":{}}]}"#,
            true,
        ),
        (
            r#"{"model":"m","tools":[{"description":1,"name":"a","description":2}]}"#,
            true,
        ),
        (
            r#"{"model":"m","tools":[{"parameters":{"x":1,"x":2}}]}"#,
            false,
        ),
        (
            r#"{"model":"m","messages":[{"role":"a","role":"b"}]}"#,
            false,
        ),
        (r#"{"model":"m","x":{"a":1,"a":2}}"#, false),
    ] {
        let reading = Reading {
            members: &["model", "tools"],
            unread: &["parameters", "description"],
            judges_keys: false,
        };
        assert_eq!(!same(body.as_bytes(), &reading), refused, "{body}");
        for reading in readings() {
            same(body.as_bytes(), &reading);
        }
    }
    // Keys with escapes are compared decoded: the prescan leaves them to the full reading.
    let escaped = r#"{"model":"a","m\u006fdel":"b"}"#;
    assert!(!fast(escaped, &MODEL_ONLY));
    assert!(!same(escaped.as_bytes(), &MODEL_ONLY));
    let escaped = r#"{"model":"m","tools":[{"name":"a","n\u0061me":"b"}]}"#;
    assert!(!same(escaped.as_bytes(), &openai_chat::READING));
}

/// The fuzz corpus's bodies, a few of each dialect, and mutations of them: byte flips,
/// inserted quotes, backslashes, control characters and structure, truncations, copied
/// slices (duplicate members): for every reading, the fast reading equals the full one, and
/// it is taken for every body serde_json accepts unless the prescan has a reason to step aside.
#[test]
fn the_fast_reading_equals_the_full_one_over_the_corpus_and_mutations() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/extract_request");
    let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(corpus)
        .unwrap()
        .map(|entry| {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            data.get(1..).unwrap_or_default().to_vec()
        })
        .collect();
    assert!(bodies.len() > 1000, "the corpus is there");
    bodies.sort();
    bodies.extend(
        [
            r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief.\n\"Quoted\" \u00e9"},{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather.","parameters":{"type":"object","properties":{"city":{"type":"string","description":"City"},"days":{"type":"integer","minimum":1,"maximum":7,"default":1.5e0}},"required":["city"],"additionalProperties":false}}},{"type":"custom","custom":{"name":"grep","format":{"type":"grammar","syntax":"lark","definition":"start: /.+/"}}}],"tool_choice":{"type":"function","function":{"name":"get_weather"}},"temperature":0.2,"stream":true}"#,
            r#"{"model":"claude-x","max_tokens":1024,"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"tools":[{"name":"lookup","description":"d","input_schema":{"type":"object"}},{"type":"mcp_toolset","mcp_server_name":"s","configs":{"description":{"enabled":false}}}],"mcp_servers":[{"type":"url","url":"https://x","name":"s"}]}"#,
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"tools":[{"functionDeclarations":[{"name":"f","description":"d","parameters":{"type":"OBJECT"},"response":{"type":"STRING"}}]},{"googleSearch":{}}],"toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["f"]}}}"#,
            r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"toolConfig":{"tools":[{"toolSpec":{"name":"t","description":"d","inputSchema":{"json":{"type":"object"}}}}],"toolChoice":{"tool":{"name":"t"}}},"additionalModelRequestFields":{"tools":[{"type":"mcp_toolset","configs":{"x":{}}}]}}"#,
            r#"{"model":"o4","input":[{"role":"user","content":"hi"}],"tools":[{"type":"function","name":"f","description":"d","parameters":{"type":"object","properties":{}}},{"type":"mcp","server_label":"s","server_url":"https://x","allowed_tools":["a"]}],"tool_choice":"auto","prompt":{"id":"p"}}"#,
            "{\n  \"model\": \"m\",\n  \"tools\": [\n    {\"type\": \"function\", \"function\": {\"name\": \"a\", \"parameters\": {}}}\n  ]\n}\n",
        ]
        .map(|b| b.as_bytes().to_vec()),
    );
    let readings = readings();
    let mut next = below(0x9e37_79b9_7f4a_7c15);
    const INSERTS: [&[u8]; 14] = [
        b"\"", b"\\", b"\x01", b"\t", b"\x7f", b"{", b"}", b"[", b",", b":", b"0", b"e", b"-",
        b"\\u00",
    ];
    let (mut checked, mut taken, mut stepped_aside) = (0, 0, 0);
    for seed in &bodies {
        let mut variants = vec![seed.clone()];
        for _ in 0..12 {
            let mut body = seed.clone();
            let at = next(body.len() + 1);
            match next(5) {
                0 if !body.is_empty() => {
                    let last = body.len() - 1;
                    body[at.min(last)] = next(256) as u8;
                }
                1 => {
                    let insert = INSERTS[next(INSERTS.len())];
                    body.splice(at..at, insert.iter().copied());
                }
                2 => body.truncate(at),
                3 => {
                    let from = next(body.len() + 1);
                    let to = (from + next(40)).min(body.len());
                    let slice = body[from..to].to_vec();
                    body.splice(at..at, slice);
                }
                _ => {
                    // A member duplicated in place: `,"k":v` after an existing member.
                    if let Some(key) = body.windows(2).position(|w| w == b"\":") {
                        let start = body[..key].iter().rposition(|&b| b == b'"').unwrap_or(0);
                        let member = body[start..key + 2].to_vec();
                        let mut dup = member.clone();
                        dup.extend_from_slice(b"1,");
                        body.splice(start..start, dup);
                    }
                }
            }
            variants.push(body);
        }
        for body in &variants {
            for reading in &readings {
                let accepted = same(body, reading);
                checked += 1;
                let Ok(text) = std::str::from_utf8(body) else {
                    continue;
                };
                let went_fast = fast(text, reading);
                taken += usize::from(went_fast);
                if accepted && !went_fast {
                    // Only for the reasons the module gives: a compared key with an escape,
                    // the top level not an object, nesting past the scanner's stack.
                    assert!(
                        text.contains('\\')
                            || !text.trim_start().starts_with('{')
                            || text.matches(['[', '{']).count() > 1000,
                        "stepped aside for {text:?}"
                    );
                    stepped_aside += 1;
                }
            }
        }
    }
    assert!(checked > 100_000, "{checked}");
    // Most mutations break the body; the fast path still reads thousands.
    assert!(taken > 5_000, "fast path taken {taken} of {checked}");
    assert!(
        stepped_aside > 0,
        "bodies with escaped keys are in the corpus"
    );
}

/// A `KnownValues` that claims a span no value can have (empty, past the body) sends the body to
/// the full reading, and is told to forget; one that cuts a value short leaves what follows
/// unreadable, with the same end.
#[test]
fn a_known_span_that_cannot_be_a_value_goes_to_the_full_reading() {
    use std::ops::Range;

    use super::KnownValues;
    use crate::extract::strict_json::parse_members_with;

    struct Claims {
        len: usize,
        forgotten: bool,
    }
    impl KnownValues for Claims {
        fn find(&mut self, member: &str, _: &[u8]) -> Option<usize> {
            (member == "tools").then_some(self.len)
        }
        fn scanned(&mut self, _: &str, _: Range<usize>) {}
        fn forget(&mut self) {
            self.forgotten = true;
        }
    }
    let body = br#"{"model":"m","tools":[{"type":"function","function":{"name":"a\u00e9"}}]}"#;
    let full = parse_members_in_full::<Value>(body, &openai_chat::READING).unwrap();
    for len in [0, body.len(), 3] {
        let mut claims = Claims {
            len,
            forgotten: false,
        };
        let got = parse_members_with::<Value>(
            body,
            &openai_chat::READING,
            &mut claims,
            &mut String::new(),
        )
        .unwrap();
        assert_eq!(got, full, "{len}");
        assert!(claims.forgotten, "{len}");
    }
}
