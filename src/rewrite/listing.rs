//! Filtering listings in answers: an MCP `tools/list` result, or an OpenAI model list. Items the
//! principal may not see are removed, every other byte (including `nextCursor`, so pagination
//! keeps working) is kept. A `tools/list` result that carries `cacheScope` (2026-07-28) is
//! marked `"private"`, since the list is now per caller.

use std::ops::Range;

use serde_json::Value;

use super::json_edit::{self, EditError, Edits};

/// A listing found in an answer.
pub struct Listing {
    /// Item names (tool names, model ids) in answer order.
    pub names: Vec<String>,
    /// The items as parsed (a tool's `inputSchema` is read from here).
    pub entries: Vec<Value>,
    tools: Range<usize>,
    items: Vec<Range<usize>>,
    cache_scope: Option<Range<usize>>,
}

/// Reads `{"jsonrpc","id":<id>,"result":{"tools":[...]}}`; `None` for any other message
/// (notifications, errors, answers to other requests), which pass unchanged.
pub fn tools_list(message: &[u8], request_id: &Value) -> Result<Option<Listing>, EditError> {
    let root = json_edit::root(message)?;
    if message.get(root.start) != Some(&b'{') {
        return Ok(None);
    }
    let members = json_edit::members(message, root)?;
    let id_matches = members.iter().any(|m| {
        m.key == "id"
            && message
                .get(m.value.clone())
                .and_then(|raw| serde_json::from_slice::<Value>(raw).ok())
                .is_some_and(|id| &id == request_id)
    });
    let Some(result) = members.iter().find(|m| m.key == "result") else {
        return Ok(None);
    };
    if !id_matches || message.get(result.value.start) != Some(&b'{') {
        return Ok(None);
    }
    let result_members = json_edit::members(message, result.value.clone())?;
    let Some(tools) = result_members.iter().find(|m| m.key == "tools") else {
        return Ok(None);
    };
    let Some((items, names, entries)) = named_items(message, &tools.value, "name")? else {
        return Ok(None);
    };
    Ok(Some(Listing {
        names,
        entries,
        tools: tools.value.clone(),
        items,
        cache_scope: result_members
            .iter()
            .find(|m| m.key == "cacheScope")
            .map(|m| m.value.clone()),
    }))
}

/// Reads an OpenAI model list `{"object":"list","data":[{"id":...}]}`; `None` for any other
/// body.
pub fn model_list(body: &[u8]) -> Result<Option<Listing>, EditError> {
    let root = json_edit::root(body)?;
    if body.get(root.start) != Some(&b'{') {
        return Ok(None);
    }
    let members = json_edit::members(body, root)?;
    let Some(data) = members.iter().find(|m| m.key == "data") else {
        return Ok(None);
    };
    let Some((items, names, entries)) = named_items(body, &data.value, "id")? else {
        return Ok(None);
    };
    Ok(Some(Listing {
        names,
        entries,
        tools: data.value.clone(),
        items,
        cache_scope: None,
    }))
}

/// An array's element spans, their names, and the elements as parsed.
type NamedItems = (Vec<Range<usize>>, Vec<String>, Vec<Value>);

/// The element spans of the array at `span` and each element's `key` string; `None` when
/// `span` is not an array. An element without the key makes the listing unreadable.
fn named_items(
    body: &[u8],
    span: &Range<usize>,
    key: &str,
) -> Result<Option<NamedItems>, EditError> {
    if body.get(span.start) != Some(&b'[') {
        return Ok(None);
    }
    let items = json_edit::elements(body, span.clone())?;
    let mut names = Vec::with_capacity(items.len());
    let mut entries = Vec::with_capacity(items.len());
    for item in &items {
        let entry = body
            .get(item.clone())
            .and_then(|raw| serde_json::from_slice::<Value>(raw).ok())
            .ok_or(EditError(item.start))?;
        let name = entry
            .get(key)
            .and_then(Value::as_str)
            .ok_or(EditError(item.start))?;
        names.push(name.to_owned());
        entries.push(entry);
    }
    Ok(Some((items, names, entries)))
}

impl Listing {
    /// The message without the items named in `hidden`.
    pub fn without(&self, message: &[u8], hidden: &[String]) -> Result<Vec<u8>, EditError> {
        let drop: Vec<usize> = self
            .names
            .iter()
            .enumerate()
            .filter(|(_, n)| hidden.contains(n))
            .map(|(i, _)| i)
            .collect();
        let mut edits = Edits::default();
        edits.delete_items(&self.items, &drop, json_edit::inner(&self.tools));
        if let Some(scope) = &self.cache_scope {
            edits.replace(scope.clone(), "\"private\"");
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
        let list = tools_list(msg, &json!(3)).unwrap().unwrap();
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
        assert!(
            tools_list(
                br#"{"jsonrpc":"2.0","id":4,"result":{"tools":[]}}"#,
                &json!(3)
            )
            .unwrap()
            .is_none()
        );
        assert!(
            tools_list(
                br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#,
                &json!(3)
            )
            .unwrap()
            .is_none()
        );
        assert!(
            tools_list(
                br#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"x"}}"#,
                &json!(3)
            )
            .unwrap()
            .is_none()
        );
        assert!(tools_list(br#"[1]"#, &json!(3)).unwrap().is_none());
    }

    #[test]
    fn cache_scope_becomes_private() {
        let msg = br#"{"jsonrpc":"2.0","id":"a","result":{"tools":[{"name":"x"}],"cacheScope":"public","ttlMs":1000}}"#;
        let list = tools_list(msg, &json!("a")).unwrap().unwrap();
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
        assert!(tools_list(msg, &json!(1)).is_err());
    }
}
