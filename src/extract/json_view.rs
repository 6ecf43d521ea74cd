//! A built JSON value that borrows its strings from the body: what a dialect needs to probe
//! the members it reads by name (`get`, `as_str`), without serde_json's `Value` costs on the
//! hottest path. A `Value` object is an `IndexMap` (with `preserve_order`): each key hashed
//! with SipHash and allocated, each string copied; a cached check declaring 20 tools built
//! 60 of them. Here an object is a vector of its members, looked up by comparison (objects
//! read this way have a handful of members), and strings without escapes stay in the body.
//!
//! Built by [`strict_json::parse_members`](super::strict_json::parse_members) with the same
//! checks as a `Value` (duplicate keys refused, nesting limit, numbers in range).

use std::borrow::Cow;
use std::collections::HashSet;

use super::strict_json::Tree;

/// A JSON value; numbers are kept as parsed (never read, but checked).
#[derive(Debug, PartialEq)]
pub enum View<'de> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(Cow<'de, str>),
    Array(Vec<View<'de>>),
    Object(Object<'de>),
}

impl<'de> View<'de> {
    /// The member `key` of an object (`None` for anything else), as `Value::get`.
    pub fn get(&self, key: &str) -> Option<&View<'de>> {
        match self {
            View::Object(object) => object.get(key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            View::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            View::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// An object's members in body order. Past a few members, a set of the keys keeps the
/// duplicate check linear for a hostile object with thousands of keys.
#[derive(Debug, Default, PartialEq)]
pub struct Object<'de> {
    members: Vec<(Cow<'de, str>, View<'de>)>,
    keys: Option<HashSet<Cow<'de, str>>>,
}

/// Members compared in place before the key set is built.
const FEW: usize = 8;

impl<'de> Object<'de> {
    pub fn get(&self, key: &str) -> Option<&View<'de>> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    }
}

impl<'de> Tree<'de> for View<'de> {
    type Object = Object<'de>;
    fn null() -> Self {
        View::Null
    }
    fn boolean(v: bool) -> Self {
        View::Bool(v)
    }
    fn number(v: serde_json::Number) -> Self {
        View::Number(v)
    }
    fn string(v: Cow<'de, str>) -> Self {
        View::String(v)
    }
    fn array(items: Vec<Self>) -> Self {
        View::Array(items)
    }
    fn object(members: Object<'de>) -> Self {
        View::Object(members)
    }
    fn insert(
        object: &mut Object<'de>,
        key: Cow<'de, str>,
        value: Self,
    ) -> Result<(), Cow<'de, str>> {
        let known = match &mut object.keys {
            Some(keys) => !keys.insert(key.clone()),
            None => {
                let known = object.members.iter().any(|(k, _)| *k == key);
                if !known && object.members.len() >= FEW {
                    let keys = object.members.iter().map(|(k, _)| k.clone());
                    object.keys = Some(keys.chain([key.clone()]).collect());
                }
                known
            }
        };
        if known {
            return Err(key);
        }
        object.members.push((key, value));
        Ok(())
    }
}

/// What the dialects' shared readers (`llm::model`, `llm::array`, `llm::add_declared`) ask of
/// a built value, a [`View`] or a `serde_json::Value` alike.
pub trait Json: Sized {
    fn as_str(&self) -> Option<&str>;
    fn as_array(&self) -> Option<&[Self]>;
    fn is_null(&self) -> bool;
}

/// A built object, a [`View`]'s or a `serde_json::Map`.
pub trait Members {
    type Value: Json;
    fn member(&self, key: &str) -> Option<&Self::Value>;
}

impl Json for View<'_> {
    fn as_str(&self) -> Option<&str> {
        View::as_str(self)
    }
    fn as_array(&self) -> Option<&[Self]> {
        match self {
            View::Array(items) => Some(items),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        matches!(self, View::Null)
    }
}

impl Json for serde_json::Value {
    fn as_str(&self) -> Option<&str> {
        serde_json::Value::as_str(self)
    }
    fn as_array(&self) -> Option<&[Self]> {
        serde_json::Value::as_array(self).map(Vec::as_slice)
    }
    fn is_null(&self) -> bool {
        serde_json::Value::is_null(self)
    }
}

impl<'de> Members for Object<'de> {
    type Value = View<'de>;
    fn member(&self, key: &str) -> Option<&View<'de>> {
        self.get(key)
    }
}

impl Members for serde_json::Map<String, serde_json::Value> {
    type Value = serde_json::Value;
    fn member(&self, key: &str) -> Option<&serde_json::Value> {
        self.get(key)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::extract::strict_json::{Reading, parse_members};

    fn to_value(view: &View<'_>) -> Value {
        match view {
            View::Null => Value::Null,
            View::Bool(b) => Value::Bool(*b),
            View::Number(n) => Value::Number(n.clone()),
            View::String(s) => Value::String(s.to_string()),
            View::Array(items) => Value::Array(items.iter().map(to_value).collect()),
            View::Object(object) => Value::Object(
                object
                    .members
                    .iter()
                    .map(|(k, v)| (k.to_string(), to_value(v)))
                    .collect(),
            ),
        }
    }

    /// Both trees from one body: the same members, or both refused with the same message.
    fn both(body: &[u8], reading: &Reading<'_>) -> Result<Value, String> {
        let value =
            parse_members::<Value>(body, reading, &mut String::new()).map(|m| m.map(Value::Object));
        let mut scratch = String::new();
        let view = parse_members::<View<'_>>(body, reading, &mut scratch)
            .map(|m| m.map(|o| to_value(&View::Object(o))));
        match (value, view) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{:?}", String::from_utf8_lossy(body));
                Ok(a.unwrap_or(Value::Null))
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                Err(a.to_string())
            }
            (a, b) => panic!("{:?}: {a:?} vs {b:?}", String::from_utf8_lossy(body)),
        }
    }

    #[test]
    fn a_view_is_built_and_refused_exactly_as_a_value() {
        let wide: Map<String, Value> = (0..20).map(|i| (format!("k{i}"), json!(i))).collect();
        let wide = Value::Object(wide).to_string();
        let reading = Reading {
            members: &["model", "tools", "tool_choice"],
            unread: &["parameters", "description"],
            judges_keys: false,
        };
        let body = br#"{"model":"m\u00e9","messages":[{"x":1,"x":2}],"tools":[{"type":"function",
            "function":{"name":"a","parameters":{"type":"object"},"description":"d"}},
            {"type":"custom","custom":{"n\u0061me":"b"}},[1,-2,1.5,18446744073709551615,true,null]],
            "tool_choice":{"type":"function","function":{"name":"a"}}}"#;
        let got = both(body, &reading).unwrap();
        assert_eq!(
            got["tools"][0],
            json!({"type":"function","function":{"name":"a"}})
        );
        assert_eq!(got["tools"][1]["custom"]["name"], "b");
        let wide_member = format!(r#"{{"model":"m","tools":[{wide}]}}"#);
        assert_eq!(
            both(wide_member.as_bytes(), &reading).unwrap()["tools"][0]["k19"],
            19
        );
        for refused in [
            br#"{"model":"a","model":"b"}"#.to_vec(),
            br#"{"tools":[{"name":"a","n\u0061me":"b"}]}"#.to_vec(),
            br#"{"tools":[{"parameters":{},"parameters":{}}]}"#.to_vec(),
            format!(r#"{{"tools":[{}, "k3":0}}]}}"#, &wide[..wide.len() - 1]).into_bytes(),
            br#"{"tools":[1e400]}"#.to_vec(),
            br#"{"model":"\ud800"}"#.to_vec(),
            format!(r#"{{"tools":{}{}}}"#, "[".repeat(127), "]".repeat(127)).into_bytes(),
        ] {
            assert!(both(&refused, &reading).is_err());
        }
    }

    #[test]
    fn probes_answer_as_on_a_value() {
        let body = br#"{"model":"m","tools":[{"type":"function","function":{"name":"a"}},null,"s"],"stream":true}"#;
        let reading = Reading {
            members: &["model", "tools", "stream"],
            unread: &[],
            judges_keys: false,
        };
        let mut scratch = String::new();
        let view = parse_members::<View<'_>>(body, &reading, &mut scratch)
            .unwrap()
            .unwrap();
        let value = parse_members::<Value>(body, &reading, &mut String::new())
            .unwrap()
            .unwrap();
        assert_eq!(view.get("stream").and_then(View::as_bool), Some(true));
        assert_eq!(view.get("model").and_then(View::as_str), Some("m"));
        assert_eq!(view.get("absent"), None);
        let (tools, value_tools) = (
            view.member("tools").and_then(Json::as_array).unwrap(),
            value.member("tools").and_then(Json::as_array).unwrap(),
        );
        assert_eq!(tools.len(), value_tools.len());
        for (t, v) in tools.iter().zip(value_tools) {
            assert_eq!(
                t.get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(View::as_str),
                v.get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
            );
            assert_eq!(t.get("type").is_none(), v.get("type").is_none());
            assert_eq!(Json::is_null(t), Json::is_null(v));
            assert_eq!(Json::as_str(t), Json::as_str(v));
        }
    }
}
