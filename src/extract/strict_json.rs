//! Strict, selective JSON parsing of request bodies.
//!
//! Strict: duplicate object keys are refused wherever they could change what is judged.
//! Parsers disagree on which duplicate wins (serde and Python take the last, others the first),
//! so `{"model":"cheap","model":"expensive"}` could be judged as one request and executed as
//! another: such bodies are not judged at all. [`parse`] (MCP messages, whose arguments are
//! judged) refuses duplicates at any depth; [`parse_members`] refuses them among the top-level
//! keys and anywhere inside the members it builds.
//!
//! Selective: a dialect names what it reads ([`Reading`]); everything else (conversation, tool
//! schemas) is skipped: checked by `json_prescan` and replaced by `null` before serde_json
//! reads the body (or, when the prescan steps aside, skipped by serde_json's own scanner,
//! `deserialize_ignored_any`). Nothing there is built, visited or compared, and no
//! duplicate-key check is made: a duplicate there cannot change the model or tools judged, and
//! that check alone cost more than the rest of a cached check. This is the service's hottest
//! code: building those parts as `serde_json::Value` trees (one allocation per string, key and
//! object) dominated every profile. The body's UTF-8 is checked once, in a few long runs (by
//! the prescan, or up front by the full reading), so strings are not re-validated one by one,
//! and object keys are compared where they lie in the body.
//!
//! Skipped parts are held to the JSON grammar, every byte of it: structure, strings (escapes,
//! control characters), numbers and literals, so every parser that accepts the body sees the
//! same members in the same places. They are not held to what their values would mean once
//! built: no nesting limit (the scanner is iterative, so depth costs no stack), no range check
//! on numbers (`1e400`), lone surrogates (`"\ud800"`) accepted. None of these moves a member
//! boundary for any parser (a parser that refuses them refuses the whole body, and then nothing
//! runs), and nothing skipped is judged; checking them meant visiting every token (~6 % of a
//! cached check's instructions). What is built (the members a dialect reads, MCP messages)
//! keeps all of it: nesting limit 128, numbers in range, well-formed surrogates, no duplicate
//! keys.
//!
//! What is built is a [`Tree`]: serde_json's `Value`, or for OpenAI Chat (the hottest dialect,
//! Azure's too) a `json_view::View` that borrows its strings from the body (as compacted by the
//! prescan) and keeps objects as vectors; both are built by the same visitor, so they are
//! checked alike.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::map::Entry;
use serde_json::{Map, Value};

use super::json_prescan::{self, KnownValues};

/// What a dialect reads from a JSON object body.
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    /// Top-level members to build.
    pub members: &'a [&'a str],
    /// Member names, at any depth inside the built members, whose values are never read (tool
    /// schemas, descriptions): skipped like unnamed members (their keys still count for the
    /// duplicate check). At most 64 (they are tracked as bits).
    pub unread: &'a [&'a str],
    /// Whether the dialect judges the names of members inside what it reads: Gemini's built-in
    /// tools are the keys of a `tools[]` entry, Anthropic's MCP toolset `configs` are keyed by
    /// tool name. Then an `unread` member stays, as `null`, so that a tool named like one
    /// (`"description": {}`) is still judged. Otherwise it is left out: no dialect probing
    /// members by name can tell `null` from absent for a value it never reads, and the keys
    /// cost an allocation and an `IndexMap` insert each (two of a function tool's five).
    pub judges_keys: bool,
}

/// How a refused duplicate key's error begins (`duplicate key "model" at line 1 column 30`),
/// so that it is reported as ambiguous, not as broken JSON.
pub const DUPLICATE_KEY: &str = "duplicate key";

/// The whole body as a [`Value`], refusing duplicate keys.
pub fn parse(body: &[u8]) -> Result<Value, serde_json::Error> {
    let text = utf8(body)?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Build::<Value>::new(&[], false).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// The members of the body that `reading` names, built as `T` ([`Value`], or the lighter
/// [`View`](super::json_view::View)); `None` when the body is JSON but not an object. The
/// whole body must be valid JSON; duplicate keys are refused at the top level and inside the
/// members built.
///
/// Fast path: the body's grammar is checked, and what is never read replaced by `null`, by
/// `json_prescan` (into `scratch`, which the built `T` may borrow from); serde_json builds that.
/// Whatever the fast path is unsure of or refuses is read in full ([`parse_members_in_full`]),
/// so the answer, refusals included, is always the full reading's.
#[cfg(any(test, fuzzing))]
pub fn parse_members<'de, T: Tree<'de>>(
    body: &'de [u8],
    reading: &Reading<'_>,
    scratch: &'de mut String,
) -> Result<Option<T::Object>, serde_json::Error> {
    parse_members_with::<T>(body, reading, &mut json_prescan::NoneKnown, scratch)
}

/// [`parse_members`], where the top-level members whose values `known` knows whole are built
/// as `null` (the caller takes them from `known`). On the full reading nothing is known:
/// `known` is told to forget, and every member is built.
pub fn parse_members_with<'de, T: Tree<'de>>(
    body: &'de [u8],
    reading: &Reading<'_>,
    known: &mut dyn KnownValues,
    scratch: &'de mut String,
) -> Result<Option<T::Object>, serde_json::Error> {
    if let Some(compacted) = json_prescan::compact_with(body, reading, known, scratch)
        && let Ok(members) = members_of::<T>(compacted, reading)
    {
        return Ok(members);
    }
    known.forget();
    parse_members_in_full::<T>(body, reading)
}

/// [`parse_members`] without the fast path: serde_json reads the whole body, skipping what is
/// not built. The fast path's fallback, and what the differential tests compare it with.
pub fn parse_members_in_full<'de, T: Tree<'de>>(
    body: &'de [u8],
    reading: &Reading<'_>,
) -> Result<Option<T::Object>, serde_json::Error> {
    members_of::<T>(utf8(body)?, reading)
}

fn members_of<'de, T: Tree<'de>>(
    text: &'de str,
    reading: &Reading<'_>,
) -> Result<Option<T::Object>, serde_json::Error> {
    debug_assert!(
        reading.unread.len() <= 64,
        "unread members are tracked as bits"
    );
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let members = deserializer.deserialize_any(Members::<T> {
        reading,
        tree: PhantomData,
    })?;
    deserializer.end()?;
    Ok(members)
}

/// What built JSON is made of: [`Value`] (owned, faithful: MCP messages, most dialects) or a
/// lighter tree borrowing from the body (`json_view::View`).
pub trait Tree<'de>: Sized {
    /// An object under construction, then built.
    type Object: Default;
    fn null() -> Self;
    fn boolean(v: bool) -> Self;
    fn number(v: serde_json::Number) -> Self;
    fn string(v: Cow<'de, str>) -> Self;
    fn array(items: Vec<Self>) -> Self;
    fn object(members: Self::Object) -> Self;
    /// Adds a member; the key back when the object already has it.
    fn insert(
        object: &mut Self::Object,
        key: Cow<'de, str>,
        value: Self,
    ) -> Result<(), Cow<'de, str>>;
}

impl<'de> Tree<'de> for Value {
    type Object = Map<String, Value>;
    fn null() -> Self {
        Value::Null
    }
    fn boolean(v: bool) -> Self {
        Value::Bool(v)
    }
    fn number(v: serde_json::Number) -> Self {
        Value::Number(v)
    }
    fn string(v: Cow<'de, str>) -> Self {
        Value::String(v.into_owned())
    }
    fn array(items: Vec<Self>) -> Self {
        Value::Array(items)
    }
    fn object(members: Map<String, Value>) -> Self {
        Value::Object(members)
    }
    fn insert(
        object: &mut Map<String, Value>,
        key: Cow<'de, str>,
        value: Self,
    ) -> Result<(), Cow<'de, str>> {
        // The map's own lookup is the duplicate check: no second set of keys.
        match object.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(value);
                Ok(())
            }
            Entry::Occupied(known) => Err(Cow::Owned(known.key().clone())),
        }
    }
}

fn utf8(body: &[u8]) -> Result<&str, serde_json::Error> {
    std::str::from_utf8(body).map_err(|e| {
        serde_json::Error::custom(format!(
            "invalid UTF-8 at byte {} of the body",
            e.valid_up_to()
        ))
    })
}

/// The keys of one object seen so far. Most objects have a handful of keys: comparing them
/// in place beats hashing them (and needs no allocation); an object with many keys switches
/// to a hash set, so a hostile body cannot make the check quadratic.
struct SeenKeys<'de> {
    few: [Cow<'de, str>; FEW],
    len: usize,
    many: Option<HashSet<Cow<'de, str>>>,
}

const FEW: usize = 8;

impl<'de> SeenKeys<'de> {
    fn new() -> Self {
        Self {
            few: Default::default(),
            len: 0,
            many: None,
        }
    }

    /// Records `key` (a borrowed key is cloned for free); an error if the object already had
    /// it.
    fn insert<E: serde::de::Error>(&mut self, key: Cow<'de, str>) -> Result<(), E> {
        let fresh = match &mut self.many {
            Some(set) => set.insert(key.clone()),
            None if self.few[..self.len].contains(&key) => false,
            None if self.len < FEW => {
                self.few[self.len] = key.clone();
                self.len += 1;
                true
            }
            None => {
                let mut set: HashSet<Cow<'de, str>> = self.few.iter().cloned().collect();
                set.insert(key.clone());
                self.many = Some(set);
                true
            }
        };
        if fresh { Ok(()) } else { Err(duplicate(&key)) }
    }
}

fn duplicate<E: serde::de::Error>(key: &str) -> E {
    E::custom(format!("{DUPLICATE_KEY} {key:?}"))
}

/// An object key, borrowed from the body unless it contains escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The top level: builds the members `reading` names, skips the rest.
struct Members<'r, T> {
    reading: &'r Reading<'r>,
    tree: PhantomData<T>,
}

impl<'de, T: Tree<'de>> Visitor<'de> for Members<'_, T> {
    type Value = Option<T::Object>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = SeenKeys::new();
        let mut out = T::Object::default();
        while let Some(key) = map.next_key_seed(Key)? {
            seen.insert::<A::Error>(key.clone())?;
            if self.reading.members.contains(&key.as_ref()) {
                let value = map.next_value_seed(Build::<T>::new(
                    self.reading.unread,
                    self.reading.judges_keys,
                ))?;
                T::insert(&mut out, key, value).map_err(|key| duplicate(&key))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A JSON value built as a `T`, with the members named in `unread` skipped: left out, or
/// kept as `null` when `keep_unread`.
struct Build<'u, T> {
    unread: &'u [&'u str],
    keep_unread: bool,
    tree: PhantomData<T>,
}

impl<'u, T> Build<'u, T> {
    fn new(unread: &'u [&'u str], keep_unread: bool) -> Self {
        Self {
            unread,
            keep_unread,
            tree: PhantomData,
        }
    }
}

impl<T> Clone for Build<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Build<'_, T> {}

impl<'de, T: Tree<'de>> DeserializeSeed<'de> for Build<'_, T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Tree<'de>> Visitor<'de> for Build<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<T, E> {
        Ok(T::boolean(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<T, E> {
        Ok(T::number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<T, E> {
        Ok(T::number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<T, E> {
        Ok(serde_json::Number::from_f64(v).map_or_else(T::null, T::number))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<T, E> {
        Ok(T::string(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<T, E> {
        Ok(T::string(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<T, E> {
        Ok(T::string(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::null())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(T::array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut out = T::Object::default();
        // The unread members left out, by their index in `unread`: a duplicate of one is
        // refused like any other.
        let mut left_out = 0u64;
        while let Some(key) = map.next_key_seed(Key)? {
            let value = match self.unread.iter().position(|u| *u == key) {
                Some(i) => {
                    map.next_value::<IgnoredAny>()?;
                    if !self.keep_unread {
                        let bit = 1u64 << (i % 64);
                        if left_out & bit != 0 {
                            return Err(duplicate(&key));
                        }
                        left_out |= bit;
                        continue;
                    }
                    T::null()
                }
                None => map.next_value_seed(self)?,
            };
            T::insert(&mut out, key, value).map_err(|key| duplicate(&key))?;
        }
        Ok(T::object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MODEL_ONLY: Reading<'static> = Reading {
        members: &["model"],
        unread: &[],
        judges_keys: false,
    };

    /// `{"k0":0,...,"k<n-1>":<n-1><more>}`: an object with `n` distinct keys, then `more`.
    fn wide_object(n: usize, more: &str) -> String {
        let keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
        format!("{{{}{more}}}", keys.join(","))
    }

    #[test]
    fn only_named_members_are_built_and_unread_ones_are_left_out_or_null() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"h\u00e9"}],
            "tools":[{"type":"function","function":{"name":"a","parameters":{"type":"object"},"description":"d"}}]}"#;
        let got = parse_members::<Value>(body, &MODEL_ONLY, &mut String::new())
            .unwrap()
            .unwrap();
        assert_eq!(Value::Object(got), json!({"model": "m"}));
        let mut reading = Reading {
            members: &["tools"],
            unread: &["parameters", "description"],
            judges_keys: false,
        };
        let got = parse_members::<Value>(body, &reading, &mut String::new())
            .unwrap()
            .unwrap();
        assert_eq!(
            Value::Object(got),
            json!({"tools": [{"type": "function", "function": {"name": "a"}}]})
        );
        reading.judges_keys = true;
        let got = parse_members::<Value>(body, &reading, &mut String::new())
            .unwrap()
            .unwrap();
        assert_eq!(
            Value::Object(got),
            json!({"tools": [{"type": "function", "function": {"name": "a", "parameters": null, "description": null}}]})
        );
        assert_eq!(
            parse_members::<Value>(b"[1,2]", &MODEL_ONLY, &mut String::new()).unwrap(),
            None
        );
        assert_eq!(
            parse_members::<Value>(b"\"s\"", &MODEL_ONLY, &mut String::new()).unwrap(),
            None
        );
    }

    #[test]
    fn duplicate_keys_are_refused_wherever_they_could_change_the_judgement() {
        // Past the in-place comparison (FEW keys) at the top level: found by the hash set.
        let many_keys = wide_object(20, r#","k3":0"#);
        for judges_keys in [false, true] {
            let reading = Reading {
                members: &["model", "tools"],
                unread: &["description", "parameters"],
                judges_keys,
            };
            for dup in [
                br#"{"model":"m","messages":[],"messages":[]}"#.to_vec(),
                br#"{"model":"a","model":"b"}"#.to_vec(),
                br#"{"tools":[{"name":"a","name":"b"}]}"#.to_vec(),
                br#"{"tools":[{"name":"a","n\u0061me":"b"}]}"#.to_vec(),
                br#"{"tools":[{"parameters":{},"parameters":{}}]}"#.to_vec(),
                br#"{"tools":[{"parameters":{},"description":"","name":"a","parameters":1}]}"#
                    .to_vec(),
                format!(r#"{{"tools":{many_keys}}}"#).into_bytes(),
                many_keys.clone().into_bytes(),
            ] {
                let why = parse_members::<Value>(&dup, &reading, &mut String::new())
                    .unwrap_err()
                    .to_string();
                assert!(why.contains("duplicate key"), "{why}");
                let why = parse(&dup).unwrap_err().to_string();
                assert!(why.contains("duplicate key"), "{why}");
            }
            // Parts no dialect reads are only checked to be JSON; a full parse refuses them.
            for unread_dup in [
                br#"{"model":"m","messages":[{"role":"a","role":"b"}]}"#.to_vec(),
                br#"{"model":"m","x":{"a\u0041":1,"aA":2}}"#.to_vec(),
                br#"{"tools":[{"parameters":{"x":1,"x":2}}]}"#.to_vec(),
                format!(r#"{{"model":"m","big":{many_keys}}}"#).into_bytes(),
            ] {
                assert!(parse_members::<Value>(&unread_dup, &reading, &mut String::new()).is_ok());
                let why = parse(&unread_dup).unwrap_err().to_string();
                assert!(why.contains("duplicate key"), "{why}");
            }
        }
    }

    #[test]
    fn whole_values_are_built_faithfully() {
        let body = br#"{"a":{"k":1},"b":[{"k":2},null,true],"n":1.5,"i":-3,"u":18446744073709551615,"s":"\"\u00e9"}"#;
        assert_eq!(
            parse(body).unwrap(),
            json!({"a":{"k":1},"b":[{"k":2},null,true],"n":1.5,"i":-3,"u":18446744073709551615u64,"s":"\"é"})
        );
        let wide = wide_object(50, "");
        assert_eq!(
            parse(wide.as_bytes()).unwrap().as_object().unwrap().len(),
            50
        );
    }

    /// Decimals are rounded to the nearest `f64`, as Python, JavaScript and Go read them: an
    /// MCP argument or a read member judged as one number and executed as another (one ulp
    /// apart) would be two readings of one body. serde_json's default parser is off by one
    /// ulp on some long decimals; its `float_roundtrip` feature is not.
    #[test]
    fn long_decimals_are_read_as_upstream_parsers_read_them() {
        let body = br#"{"a":131447044970104456659733,"b":27955896730047547.4708123870035e-151,"c":7.159532431055664e-222}"#;
        let expected = [
            1.3144704497010445e23,
            2.7955896730047546e-135,
            7.159532431055664e-222,
        ];
        let whole = parse(body).unwrap();
        let reading = Reading {
            members: &["a", "b", "c"],
            unread: &[],
            judges_keys: false,
        };
        let members = parse_members::<Value>(body, &reading, &mut String::new())
            .unwrap()
            .unwrap();
        for (key, expected) in ["a", "b", "c"].into_iter().zip(expected) {
            assert_eq!(whole[key].as_f64(), Some(expected), "{key}");
            assert_eq!(members[key].as_f64(), Some(expected), "{key}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b"{"[..],
            br#"{"model":"m"} trailing"#,
            br#"{"model":"m","deep":"#,
            b"\xef\xbb\xbf{}",
            b"{\"model\":\"\xff\"}",
            b"{\"model\":\"m\"}\xff",
            br#"{"model":"m","messages":[1,]}"#,
            br#"{"model":"m","messages":"\q"}"#,
            br#"{"model":"m","messages":01}"#,
            b"{\"model\":\"m\",\"messages\":\"a\x01\"}",
            br#"{"model":"m","messages":{"a":}}"#,
            br#"{"model":"\ud800"}"#,
            br#"{"model":1e400}"#,
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert!(
                parse_members::<Value>(bad, &MODEL_ONLY, &mut String::new()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes()).is_err(), "deep nesting");
        // Built members keep the parser's nesting limit (127 levels, the body's object
        // included).
        let deep = format!(r#"{{"model":{}{}}}"#, "[".repeat(127), "]".repeat(127));
        assert!(parse_members::<Value>(deep.as_bytes(), &MODEL_ONLY, &mut String::new()).is_err());
        let deep = format!(r#"{{"model":{}{}}}"#, "[".repeat(126), "]".repeat(126));
        assert!(parse_members::<Value>(deep.as_bytes(), &MODEL_ONLY, &mut String::new()).is_ok());
    }

    /// Skipped parts are held to the JSON grammar (every byte: structure, strings and their
    /// escapes, control characters, numbers, literals), not to what their values would mean
    /// once built: nesting depth, a number's range and lone surrogates change no parser's view
    /// of where members begin and end, and nothing in them is judged.
    #[test]
    fn skipped_parts_are_checked_for_grammar_not_meaning() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_conversation = format!(r#"{{"model":"m","messages":{deep}}}"#);
        for body in [
            deep_conversation.as_bytes(),
            br#"{"model":"m","seed":1e400}"#,
            br#"{"model":"m","messages":[{"content":"\ud800"}]}"#,
            br#"{"model":"m","tools":[{"parameters":{"default":"\udfff","max":-1e999}}]}"#,
        ] {
            let reading = Reading {
                members: &["model", "tools"],
                unread: &["parameters"],
                judges_keys: false,
            };
            let got = parse_members::<Value>(body, &reading, &mut String::new())
                .unwrap()
                .unwrap();
            assert_eq!(got["model"], "m");
            assert!(parse(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        // Grammar is still checked all the way down, past any depth a visitor could reach.
        let broken = format!(
            r#"{{"model":"m","messages":{}1,]{}}}"#,
            "[".repeat(1000),
            "]".repeat(999)
        );
        assert!(
            parse_members::<Value>(broken.as_bytes(), &MODEL_ONLY, &mut String::new()).is_err()
        );
    }
}
