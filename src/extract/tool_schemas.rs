//! The `inputSchema` each MCP server published for its tools, learnt from the `tools/list`
//! answers the ext_proc leg filters, so a `tools/call` is judged on arguments of the types the
//! server will read.
//!
//! Why: a policy written for numbers (`R.attr.arguments.amount_cents > P.attr.refund_limit_cents`)
//! does not match a string (`"999999"`): CEL reports a type error and the deny rule does not
//! apply, while a lenient server (pydantic, for one) coerces the string and executes. A call
//! whose argument types contradict the published schema is therefore refused (`-32602`) before
//! any policy sees it. Until a server's tools were listed through the gateway, calls are judged
//! as sent (write policies that also check types, as `policies/mcp_server.yaml` does).

use std::collections::HashMap;
use std::sync::RwLock;

use serde_json::Value;

/// Learnt schemas: server name → tool name → `inputSchema`.
#[derive(Default)]
pub struct ToolSchemas {
    servers: RwLock<HashMap<String, HashMap<String, Value>>>,
}

/// Most tools remembered per server; a server listing more is only partly learnt.
const MAX_TOOLS_PER_SERVER: usize = 4096;

impl ToolSchemas {
    /// Remembers the schemas of the tools a `tools/list` answer describes.
    pub fn learn(&self, server: &str, tools: &[Value]) {
        let Ok(mut servers) = self.servers.write() else {
            return;
        };
        let known = servers.entry(server.to_owned()).or_default();
        for tool in tools {
            if let (Some(name), Some(schema)) = (
                tool.get("name").and_then(Value::as_str),
                tool.get("inputSchema"),
            ) && (known.len() < MAX_TOOLS_PER_SERVER || known.contains_key(name))
            {
                known.insert(name.to_owned(), schema.clone());
            }
        }
    }

    /// Checks `arguments` against the tool's schema; unknown tools pass (judged as sent).
    pub fn check(&self, server: &str, tool: &str, arguments: &Value) -> Result<(), String> {
        let Ok(servers) = self.servers.read() else {
            return Ok(());
        };
        match servers.get(server).and_then(|tools| tools.get(tool)) {
            Some(schema) => conforms(schema, arguments, "arguments"),
            None => Ok(()),
        }
    }
}

/// Type conformance: `type` (one or a list), `properties` of objects and `items` of arrays,
/// recursively. Other keywords (required, enum, ranges) are the server's to enforce: they cannot
/// make a value be read as another type.
fn conforms(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(types) = schema.get("type") {
        let names: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !names.is_empty() && !names.iter().any(|t| has_type(value, t)) {
            return Err(format!(
                "{at} must be {} per the tool's inputSchema",
                names.join(" or ")
            ));
        }
    }
    if let (Some(Value::Object(properties)), Value::Object(fields)) =
        (schema.get("properties"), value)
    {
        for (key, field) in fields {
            if let Some(sub) = properties.get(key) {
                conforms(sub, field, &format!("{at}.{key}"))?;
            }
        }
    }
    if let (Some(items), Value::Array(elements)) = (schema.get("items"), value) {
        for (i, element) in elements.iter().enumerate() {
            conforms(items, element, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refund_schema() -> ToolSchemas {
        let s = ToolSchemas::default();
        s.learn(
            "support",
            &[json!({"name": "refund", "inputSchema": {"type": "object", "properties": {
                "ticket_id": {"type": "string"}, "amount_cents": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "meta": {"type": "object", "properties": {"note": {"type": ["string", "null"]}}}}}})],
        );
        s
    }

    #[test]
    fn arguments_of_the_wrong_type_are_refused() {
        let s = refund_schema();
        assert!(
            s.check(
                "support",
                "refund",
                &json!({"ticket_id": "T-1", "amount_cents": 5})
            )
            .is_ok()
        );
        assert!(
            s.check(
                "support",
                "refund",
                &json!({"ticket_id": "T-1", "amount_cents": 5.0})
            )
            .is_ok()
        );
        let err = s
            .check(
                "support",
                "refund",
                &json!({"ticket_id": "T-1", "amount_cents": "999999"}),
            )
            .unwrap_err();
        assert!(
            err.contains("arguments.amount_cents must be integer"),
            "{err}"
        );
        assert!(
            s.check("support", "refund", &json!({"amount_cents": 1.5}))
                .is_err()
        );
        assert!(
            s.check("support", "refund", &json!({"ticket_id": 100}))
                .is_err()
        );
        assert!(
            s.check("support", "refund", &json!({"tags": ["a", 1]}))
                .is_err()
        );
        assert!(
            s.check("support", "refund", &json!({"meta": {"note": null}}))
                .is_ok()
        );
        assert!(
            s.check("support", "refund", &json!({"meta": {"note": 3}}))
                .is_err()
        );
        assert!(
            s.check("support", "refund", &json!("not an object"))
                .is_err()
        );
    }

    #[test]
    fn unknown_servers_and_tools_pass_as_sent() {
        let s = refund_schema();
        assert!(
            s.check("other", "refund", &json!({"amount_cents": "1"}))
                .is_ok()
        );
        assert!(s.check("support", "lookup", &json!({"x": "1"})).is_ok());
    }
}
