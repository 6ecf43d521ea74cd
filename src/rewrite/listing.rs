//! Filtering listings in answers: the tools of MCP `tools/list` results, or an OpenAI model
//! list. Items the principal may not see are removed, every other byte (including
//! `nextCursor`, so pagination keeps working) is kept. A `tools/list` result that carries
//! `cacheScope` (2026-07-28) is marked `"private"`, since the list is now per caller.
//!
//! Which messages are `tools/list` results is decided by their shape, not by matching the
//! JSON-RPC id: every response in the answer (a single message, or each element of a batch
//! answer) whose `result` holds a `tools` array is filtered. The client reads those bytes
//! whatever id they carry (a server may echo a big integer id with less precision than it was
//! sent), so an id that fails to match must never let a list through unfiltered.
//!
//! Duplicate keys resolve as JSON.parse and Python's json do: the last one wins.

use std::ops::Range;

use serde_json::Value;

use super::json_edit::{self, EditError, Edits, Member};

/// The listings found in one answer message.
#[derive(Debug, Default)]
pub struct Listing {
    /// Item names (tool names, model ids) in answer order, over every listed array.
    pub names: Vec<String>,
    /// The items as parsed (a tool's `inputSchema` is read from here).
    pub entries: Vec<Value>,
    arrays: Vec<ListedArray>,
}

/// One array of named items inside the message.
#[derive(Debug)]
struct ListedArray {
    span: Range<usize>,
    items: Vec<Range<usize>>,
    /// Index of this array's first item in [`Listing::names`].
    first: usize,
    cache_scope: Option<Range<usize>>,
}

/// Reads every `tools/list` result in a JSON-RPC message or batch answer; `None` when there
/// is none (notifications, errors, server requests, other results), which pass unchanged.
pub fn tools_list(message: &[u8]) -> Result<Option<Listing>, EditError> {
    let root = json_edit::root(message)?;
    let responses = match message.get(root.start) {
        Some(b'{') => vec![root],
        Some(b'[') => json_edit::elements(message, root)?,
        _ => return Ok(None),
    };
    let mut listing = Listing::default();
    for response in responses {
        if message.get(response.start) != Some(&b'{') {
            continue;
        }
        let members = json_edit::members(message, response)?;
        let Some(result) = last(&members, "result") else {
            continue;
        };
        if message.get(result.value.start) != Some(&b'{') {
            continue;
        }
        let result_members = json_edit::members(message, result.value.clone())?;
        let Some(tools) = last(&result_members, "tools") else {
            continue;
        };
        let cache_scope = last(&result_members, "cacheScope").map(|m| m.value.clone());
        listing.add(message, &tools.value, "name", cache_scope)?;
    }
    Ok((!listing.arrays.is_empty()).then_some(listing))
}

/// Reads an OpenAI model list `{"object":"list","data":[{"id":...}]}`; `None` for any other
/// body.
pub fn model_list(body: &[u8]) -> Result<Option<Listing>, EditError> {
    let root = json_edit::root(body)?;
    if body.get(root.start) != Some(&b'{') {
        return Ok(None);
    }
    let members = json_edit::members(body, root)?;
    let Some(data) = last(&members, "data") else {
        return Ok(None);
    };
    let mut listing = Listing::default();
    listing.add(body, &data.value, "id", None)?;
    Ok((!listing.arrays.is_empty()).then_some(listing))
}

/// The member a JSON parser keeps for `key`: the last.
fn last<'a>(members: &'a [Member], key: &str) -> Option<&'a Member> {
    members.iter().rev().find(|m| m.key == key)
}

impl Listing {
    /// Adds the array at `span` (if it is one), naming each element by its `key` string. An
    /// element without the key makes the listing unreadable.
    fn add(
        &mut self,
        body: &[u8],
        span: &Range<usize>,
        key: &str,
        cache_scope: Option<Range<usize>>,
    ) -> Result<(), EditError> {
        if body.get(span.start) != Some(&b'[') {
            return Ok(());
        }
        let items = json_edit::elements(body, span.clone())?;
        let first = self.names.len();
        for item in &items {
            let entry = body
                .get(item.clone())
                .and_then(|raw| serde_json::from_slice::<Value>(raw).ok())
                .ok_or(EditError(item.start))?;
            let name = entry
                .get(key)
                .and_then(Value::as_str)
                .ok_or(EditError(item.start))?;
            self.names.push(name.to_owned());
            self.entries.push(entry);
        }
        self.arrays.push(ListedArray {
            span: span.clone(),
            items,
            first,
            cache_scope,
        });
        Ok(())
    }

    /// The message without the items named in `hidden`.
    pub fn without(&self, message: &[u8], hidden: &[String]) -> Result<Vec<u8>, EditError> {
        let mut edits = Edits::default();
        for array in &self.arrays {
            let drop: Vec<usize> = (0..array.items.len())
                .filter(|i| {
                    self.names
                        .get(array.first + i)
                        .is_some_and(|n| hidden.contains(n))
                })
                .collect();
            edits.delete_items(&array.items, &drop, json_edit::inner(&array.span));
            if let Some(scope) = &array.cache_scope {
                edits.replace(scope.clone(), "\"private\"");
            }
        }
        edits.apply(message)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hidden_tools_go_and_the_cursor_stays() {
        let msg = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"refund","inputSchema":{}},{"name":"delete_repo"},{"name":"lookup_ticket"}],"nextCursor":"c2"}}"#;
        let list = tools_list(msg).unwrap().unwrap();
        assert_eq!(list.names, ["refund", "delete_repo", "lookup_ticket"]);
        let out = list.without(msg, &["delete_repo".into()]).unwrap();
        assert_eq!(
            out,
            br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"refund","inputSchema":{}},{"name":"lookup_ticket"}],"nextCursor":"c2"}}"#
        );
        let all = list.without(msg, &list.names.clone()).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&all).unwrap()["result"]["tools"],
            json!([])
        );
    }

    #[test]
    fn other_messages_are_not_touched() {
        for other in [
            &br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#[..],
            br#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"x"}}"#,
            br#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#,
            br#"[1]"#,
        ] {
            assert!(tools_list(other).unwrap().is_none());
        }
    }

    #[test]
    fn any_id_is_filtered_even_one_that_does_not_match() {
        // A server that parsed 9000000000000001 as a double echoes 9000000000000000.
        let msg = br#"{"jsonrpc":"2.0","id":9000000000000000,"result":{"tools":[{"name":"a"},{"name":"b"}]}}"#;
        let list = tools_list(msg).unwrap().unwrap();
        assert_eq!(
            list.without(msg, &["b".into()]).unwrap(),
            br#"{"jsonrpc":"2.0","id":9000000000000000,"result":{"tools":[{"name":"a"}]}}"#
        );
    }

    #[test]
    fn batch_answers_are_filtered_element_by_element() {
        let msg = br#"[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":"x","result":{"tools":[{"name":"a"},{"name":"b"}]}},{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"b"}]}}]"#;
        let list = tools_list(msg).unwrap().unwrap();
        assert_eq!(list.names, ["a", "b", "b"]);
        assert_eq!(
            list.without(msg, &["b".into()]).unwrap(),
            br#"[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":"x","result":{"tools":[{"name":"a"}]}},{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}]"#
        );
    }

    #[test]
    fn the_last_duplicate_key_is_the_one_filtered() {
        let msg =
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}],"tools":[{"name":"b"}]}}"#;
        let list = tools_list(msg).unwrap().unwrap();
        assert_eq!(list.names, ["b"]);
    }

    #[test]
    fn cache_scope_becomes_private() {
        let msg = br#"{"jsonrpc":"2.0","id":"a","result":{"tools":[{"name":"x"}],"cacheScope":"public","ttlMs":1000}}"#;
        let list = tools_list(msg).unwrap().unwrap();
        let out = list.without(msg, &[]).unwrap();
        assert_eq!(out, br#"{"jsonrpc":"2.0","id":"a","result":{"tools":[{"name":"x"}],"cacheScope":"private","ttlMs":1000}}"#);
    }

    #[test]
    fn model_lists_lose_hidden_models() {
        let body = br#"{"object":"list","data":[{"id":"gpt-4o","object":"model"},{"id":"gpt-4o-mini","object":"model"}]}"#;
        let list = model_list(body).unwrap().unwrap();
        assert_eq!(list.names, ["gpt-4o", "gpt-4o-mini"]);
        assert_eq!(
            list.without(body, &["gpt-4o".into()]).unwrap(),
            br#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"}]}"#
        );
        assert!(model_list(b"[]").unwrap().is_none());
        assert!(model_list(br#"{"data":[{"object":"model"}]}"#).is_err());
    }

    #[test]
    fn a_tool_without_a_name_is_an_error() {
        let msg = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"title":"?"}]}}"#;
        assert!(tools_list(msg).is_err());
    }
}
