//! Filtering an MCP `tools/list` result: tools the principal may not see are removed, every
//! other byte (including `nextCursor`, so pagination keeps working) is kept. A result that
//! carries `cacheScope` (2026-07-28) is marked `"private"`, since the list is now per caller.

use std::ops::Range;

use serde_json::Value;

use super::json_edit::{self, EditError, Edits};

/// A JSON-RPC message that answers our `tools/list` request.
pub struct ToolsListResult {
    /// Tool names in result order.
    pub names: Vec<String>,
    tools: Range<usize>,
    items: Vec<Range<usize>>,
    cache_scope: Option<Range<usize>>,
}

/// Reads `{"jsonrpc","id":<id>,"result":{"tools":[...]}}`; `None` for any other message
/// (notifications, errors, answers to other requests), which pass unchanged.
pub fn parse(message: &[u8], request_id: &Value) -> Result<Option<ToolsListResult>, EditError> {
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
    if message.get(tools.value.start) != Some(&b'[') {
        return Ok(None);
    }
    let items = json_edit::elements(message, tools.value.clone())?;
    let names = items
        .iter()
        .map(|item| {
            message
                .get(item.clone())
                .and_then(|raw| serde_json::from_slice::<Value>(raw).ok())
                .and_then(|tool| tool.get("name").and_then(Value::as_str).map(str::to_owned))
                .ok_or(EditError(item.start))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(ToolsListResult {
        names,
        tools: tools.value.clone(),
        items,
        cache_scope: result_members
            .iter()
            .find(|m| m.key == "cacheScope")
            .map(|m| m.value.clone()),
    }))
}

impl ToolsListResult {
    /// The message without the tools named in `hidden`.
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
        let list = parse(msg, &json!(3)).unwrap().unwrap();
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
            parse(
                br#"{"jsonrpc":"2.0","id":4,"result":{"tools":[]}}"#,
                &json!(3)
            )
            .unwrap()
            .is_none()
        );
        assert!(
            parse(
                br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#,
                &json!(3)
            )
            .unwrap()
            .is_none()
        );
        assert!(
            parse(
                br#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"x"}}"#,
                &json!(3)
            )
            .unwrap()
            .is_none()
        );
        assert!(parse(br#"[1]"#, &json!(3)).unwrap().is_none());
    }

    #[test]
    fn cache_scope_becomes_private() {
        let msg = br#"{"jsonrpc":"2.0","id":"a","result":{"tools":[{"name":"x"}],"cacheScope":"public","ttlMs":1000}}"#;
        let list = parse(msg, &json!("a")).unwrap().unwrap();
        let out = list.without(msg, &[]).unwrap();
        assert_eq!(out, br#"{"jsonrpc":"2.0","id":"a","result":{"tools":[{"name":"x"}],"cacheScope":"private","ttlMs":1000}}"#);
    }

    #[test]
    fn a_tool_without_a_name_is_an_error() {
        let msg = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"title":"?"}]}}"#;
        assert!(parse(msg, &json!(1)).is_err());
    }
}
