//! MCP Streamable HTTP: one JSON-RPC message per POST (a batch array in 2025-03-26), plus the
//! bodiless GET (server stream) and DELETE (session end) exchanges.
//!
//! Revisions handled (see `shared/docs/protocols.md` §5):
//! - 2025-03-26: batches allowed; judged element by element.
//! - 2025-06-18 / 2025-11-25: no batches; `Mcp-Session-Id` passes through untouched.
//! - 2026-07-28: stateless; `Mcp-Method` and `Mcp-Name` headers route the request, so they
//!   must agree with the body (the body is what the server executes), or the request is
//!   refused with `-32020 HeaderMismatch`.
//!
//! Method names are matched exactly: `Tools/Call` or `tools/call ` is not `tools/call`, and
//! is judged as an unknown method (which policies deny unless they name it).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use super::{
    AgentRequest, ExtractError, HttpRequest, McpMessage, McpOperation, McpRequest, RequestFormat,
    json_body,
};
use crate::rewrite::json_edit::EditError;

/// JSON-RPC 2.0 "Invalid Request".
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC 2.0 "Invalid params".
pub const INVALID_PARAMS: i64 = -32602;
/// MCP 2026-07-28 `HeaderMismatch`.
pub const HEADER_MISMATCH: i64 = -32020;

/// The revision whose batching rules 2025-03-26 defined; assumed when no version header is sent.
const BATCHING_REVISION: &str = "2025-03-26";
/// First revision that routes on `Mcp-Method`/`Mcp-Name` headers.
const HEADER_ROUTING_REVISION: &str = "2026-07-28";

/// Methods judged as use of the server as a whole (action `connect` by default).
fn is_session_method(method: &str) -> bool {
    method.starts_with("notifications/")
        || matches!(
            method,
            "initialize"
                | "ping"
                | "tools/list"
                | "resources/list"
                | "resources/templates/list"
                | "prompts/list"
                | "logging/setLevel"
                | "server/discover"
                | "subscriptions/listen"
        )
}

/// MCP Streamable HTTP.
pub struct Mcp;

impl RequestFormat for Mcp {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        extract(request).map(AgentRequest::Mcp)
    }

    /// MCP requests declare no tools: their `tools/list` answers are filtered instead.
    fn strip_tools(&self, _: &[u8], _: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        Ok(None)
    }
}

fn extract(request: &HttpRequest<'_>) -> Result<McpRequest, ExtractError> {
    let protocol_version = request
        .headers
        .get("mcp-protocol-version")
        .map(|v| v.trim().to_owned());
    let bodiless = |method: &str| McpRequest {
        batch: false,
        protocol_version: protocol_version.clone(),
        messages: vec![McpMessage {
            id: None,
            method: method.to_owned(),
            operation: McpOperation::Session,
        }],
    };
    match request.method {
        "POST" => {}
        "GET" => return Ok(bodiless("GET")),
        "DELETE" => return Ok(bodiless("DELETE")),
        other => return Err(ExtractError::McpMethodNotAllowed(other.to_owned())),
    }
    let body = json_body(request).map_err(|e| match e {
        ExtractError::NotJson(why) => ExtractError::Mcp {
            id: None,
            code: -32700,
            message: format!("parse error: {why}"),
        },
        ambiguous @ ExtractError::DuplicateKey(_) => ExtractError::Mcp {
            id: None,
            code: INVALID_REQUEST,
            message: ambiguous.to_string(),
        },
        other => other,
    })?;
    let (batch, raw_messages) = match body {
        Value::Array(items) => {
            let version = protocol_version.as_deref().unwrap_or(BATCHING_REVISION);
            if version != BATCHING_REVISION {
                return Err(mcp_error(
                    None,
                    INVALID_REQUEST,
                    format!("JSON-RPC batches are not allowed in MCP {version}"),
                ));
            }
            if items.is_empty() {
                return Err(mcp_error(None, INVALID_REQUEST, "empty batch".into()));
            }
            (true, items)
        }
        Value::Object(_) => (false, vec![body]),
        _ => {
            return Err(mcp_error(
                None,
                INVALID_REQUEST,
                "body must be a JSON-RPC object".into(),
            ));
        }
    };
    let messages = raw_messages
        .into_iter()
        .map(message)
        .collect::<Result<Vec<_>, _>>()?;
    if let (false, Some(first)) = (batch, messages.first()) {
        check_routing_headers(request, protocol_version.as_deref(), first)?;
    }
    Ok(McpRequest {
        batch,
        protocol_version,
        messages,
    })
}

fn message(raw: Value) -> Result<McpMessage, ExtractError> {
    let Value::Object(obj) = raw else {
        return Err(mcp_error(
            None,
            INVALID_REQUEST,
            "batch element is not an object".into(),
        ));
    };
    let id = match obj.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(_) => {
            return Err(mcp_error(
                None,
                INVALID_REQUEST,
                "id must be a string or a number".into(),
            ));
        }
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(mcp_error(
            id,
            INVALID_REQUEST,
            "jsonrpc must be \"2.0\"".into(),
        ));
    }
    let method = match obj.get("method") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => {
            return Err(mcp_error(
                id,
                INVALID_REQUEST,
                "method must be a string".into(),
            ));
        }
        None if id.is_some() && (obj.contains_key("result") || obj.contains_key("error")) => {
            // The client answering a server request (sampling, elicitation, roots).
            return Ok(McpMessage {
                id,
                method: "response".into(),
                operation: McpOperation::Session,
            });
        }
        None => return Err(mcp_error(id, INVALID_REQUEST, "missing method".into())),
    };
    let empty = Map::new();
    let params = match obj.get("params") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err(mcp_error(
                id,
                INVALID_PARAMS,
                "params must be an object".into(),
            ));
        }
    };
    let operation = match method.as_str() {
        "tools/call" => McpOperation::ToolCall {
            name: required_string(params, "name", &id)?,
            arguments: object_or_empty(params, "arguments", &id)?,
        },
        "resources/read" => McpOperation::ResourceRead {
            uri: required_string(params, "uri", &id)?,
        },
        "prompts/get" => McpOperation::PromptGet {
            name: required_string(params, "name", &id)?,
            arguments: object_or_empty(params, "arguments", &id)?,
        },
        m if is_session_method(m) => McpOperation::Session,
        _ => McpOperation::Other,
    };
    if matches!(
        operation,
        McpOperation::ToolCall { .. } | McpOperation::PromptGet { .. }
    ) && id.is_none()
    {
        return Err(mcp_error(
            None,
            INVALID_REQUEST,
            format!("{method} must carry an id"),
        ));
    }
    Ok(McpMessage {
        id,
        method,
        operation,
    })
}

/// 2026-07-28 routing headers must agree with the body they route.
fn check_routing_headers(
    request: &HttpRequest<'_>,
    version: Option<&str>,
    message: &McpMessage,
) -> Result<(), ExtractError> {
    let header_routed = version.is_some_and(|v| v >= HEADER_ROUTING_REVISION);
    let mismatch = |what: String| Err(mcp_error(message.id.clone(), HEADER_MISMATCH, what));
    match request.headers.get("mcp-method").map(|m| m.trim()) {
        Some(m) if m != message.method => {
            return mismatch(format!(
                "Mcp-Method header {m:?} does not match body method {:?}",
                message.method
            ));
        }
        None if header_routed && message.method != "response" => {
            return mismatch(format!(
                "MCP {} requires the Mcp-Method header",
                version.unwrap_or("")
            ));
        }
        _ => {}
    }
    let body_name = match &message.operation {
        McpOperation::ToolCall { name, .. } | McpOperation::PromptGet { name, .. } => Some(name),
        McpOperation::ResourceRead { uri } => Some(uri),
        McpOperation::Session | McpOperation::Other => None,
    };
    match (request.headers.get("mcp-name"), body_name) {
        (Some(raw), Some(name)) => {
            let header = decode_header_value(raw.trim()).ok_or_else(|| {
                mcp_error(
                    message.id.clone(),
                    HEADER_MISMATCH,
                    "Mcp-Name is not decodable".into(),
                )
            })?;
            if &header != name {
                return mismatch(format!(
                    "Mcp-Name header {header:?} does not match body name {name:?}"
                ));
            }
        }
        (Some(_), None) => {
            return mismatch(format!("Mcp-Name header sent for {}", message.method));
        }
        (None, Some(_)) if header_routed => {
            return mismatch(format!(
                "MCP {} requires the Mcp-Name header",
                version.unwrap_or("")
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Header values outside ASCII are sent as `=?base64?<base64>?=`.
fn decode_header_value(raw: &str) -> Option<String> {
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(encoded) => String::from_utf8(STANDARD.decode(encoded).ok()?).ok(),
        None => Some(raw.to_owned()),
    }
}

fn required_string(
    params: &Map<String, Value>,
    key: &str,
    id: &Option<Value>,
) -> Result<String, ExtractError> {
    match params.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(mcp_error(
            id.clone(),
            INVALID_PARAMS,
            format!("params.{key} must be a non-empty string"),
        )),
    }
}

fn object_or_empty(
    params: &Map<String, Value>,
    key: &str,
    id: &Option<Value>,
) -> Result<Value, ExtractError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(mcp_error(
            id.clone(),
            INVALID_PARAMS,
            format!("params.{key} must be an object"),
        )),
    }
}

/// Refuses a message of the 2024-11-05 HTTP+SSE transport: a POST naming its session in the
/// query string (`?sessionId=` in the TypeScript SDK, `?session_id=` in Python's), whose answer
/// travels on the session's GET stream. That session id cannot be bound to a principal the way
/// `Mcp-Session-Id` is (another caller holding the URL would act in the session), so the
/// transport is not served: clients use Streamable HTTP.
pub fn refuse_legacy_messages(method: &str, target: &str) -> Result<(), ExtractError> {
    let Some((_, query)) = target.split_once('?') else {
        return Ok(());
    };
    let legacy = query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        name.eq_ignore_ascii_case("sessionid") || name.eq_ignore_ascii_case("session_id")
    });
    if method == "POST" && legacy {
        return Err(mcp_error(
            None,
            INVALID_REQUEST,
            "the 2024-11-05 HTTP+SSE transport (a session id in the query string) is not \
             served: its sessions cannot be bound to the caller; use Streamable HTTP"
                .into(),
        ));
    }
    Ok(())
}

/// The JSON-RPC ids of the `tools/list` messages in a request body (one message or a batch),
/// each as its exact JSON text: ids are opaque, and a number beyond 2^53 must not be rounded
/// on its way to the evidence. Unreadable parts are skipped (the body was already accepted).
pub fn tools_list_ids(body: &[u8]) -> Vec<String> {
    use crate::rewrite::json_edit;
    let Ok(root) = json_edit::root(body) else {
        return Vec::new();
    };
    let messages = match body.get(root.start) {
        Some(b'[') => json_edit::elements(body, root).unwrap_or_default(),
        _ => vec![root],
    };
    let raw = |span: &std::ops::Range<usize>| body.get(span.clone()).unwrap_or_default();
    messages
        .iter()
        .filter_map(|m| json_edit::members(body, m.clone()).ok())
        .filter(|members| {
            members
                .iter()
                .rev()
                .find(|m| m.key == "method")
                .is_some_and(|m| {
                    serde_json::from_slice::<String>(raw(&m.value)).is_ok_and(|v| v == "tools/list")
                })
        })
        .filter_map(|members| members.into_iter().rev().find(|m| m.key == "id"))
        .map(|id| String::from_utf8_lossy(raw(&id.value)).into_owned())
        .collect()
}

fn mcp_error(id: Option<Value>, code: i64, message: String) -> ExtractError {
    ExtractError::Mcp { id, code, message }
}

#[cfg(test)]
mod tests {
    use crate::headers::Headers;

    use serde_json::json;

    use super::*;

    fn post(headers: &[(&str, &str)], body: Value) -> Result<McpRequest, ExtractError> {
        let mut h: Headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h.insert("content-type".into(), "application/json".into());
        let body = body.to_string().into_bytes();
        extract(&HttpRequest {
            method: "POST",
            path: "/mcp",
            headers: &h,
            body: &body,
        })
    }

    fn call(name: &str, args: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": args}})
    }

    fn code(r: Result<McpRequest, ExtractError>) -> i64 {
        match r {
            Err(ExtractError::Mcp { code, .. }) => code,
            other => panic!("expected an MCP error, got {other:?}"),
        }
    }

    #[test]
    fn tools_call_keeps_name_arguments_and_id() {
        let r = post(
            &[("mcp-protocol-version", "2025-11-25")],
            call("refund", json!({"ticket_id": "T-1", "amount_cents": 5})),
        )
        .unwrap();
        assert!(!r.batch);
        assert_eq!(r.protocol_version.as_deref(), Some("2025-11-25"));
        assert_eq!(r.messages[0].id, Some(json!(7)));
        assert_eq!(
            r.messages[0].operation,
            McpOperation::ToolCall {
                name: "refund".into(),
                arguments: json!({"ticket_id": "T-1", "amount_cents": 5})
            }
        );
        let r = post(
            &[],
            json!({"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": {"name": "x"}}),
        )
        .unwrap();
        assert_eq!(
            r.messages[0].operation,
            McpOperation::ToolCall {
                name: "x".into(),
                arguments: json!({})
            }
        );
    }

    #[test]
    fn methods_are_classified() {
        let op = |m: &str, params: Value| {
            post(
                &[],
                json!({"jsonrpc": "2.0", "id": 1, "method": m, "params": params}),
            )
            .unwrap()
            .messages[0]
                .operation
                .clone()
        };
        assert_eq!(
            op("initialize", json!({"protocolVersion": "2025-11-25"})),
            McpOperation::Session
        );
        assert_eq!(
            op("tools/list", json!({"cursor": "c"})),
            McpOperation::Session
        );
        assert_eq!(op("server/discover", json!({})), McpOperation::Session);
        assert_eq!(
            op("resources/read", json!({"uri": "file:///x"})),
            McpOperation::ResourceRead {
                uri: "file:///x".into()
            }
        );
        assert_eq!(
            op("prompts/get", json!({"name": "p", "arguments": {"k": "v"}})),
            McpOperation::PromptGet {
                name: "p".into(),
                arguments: json!({"k": "v"})
            }
        );
        assert_eq!(
            op("Tools/Call", json!({"name": "refund"})),
            McpOperation::Other
        );
        assert_eq!(
            op("tools/call ", json!({"name": "refund"})),
            McpOperation::Other
        );
        assert_eq!(op("tasks/get", json!({})), McpOperation::Other);
        let n = post(
            &[],
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .unwrap();
        assert_eq!(
            (n.messages[0].id.clone(), n.messages[0].operation.clone()),
            (None, McpOperation::Session)
        );
        let resp = post(&[], json!({"jsonrpc": "2.0", "id": 3, "result": {}})).unwrap();
        assert_eq!(resp.messages[0].method, "response");
    }

    #[test]
    fn bad_messages_are_refused_with_jsonrpc_codes() {
        assert_eq!(
            code(post(&[], json!({"id": 1, "method": "ping"}))),
            INVALID_REQUEST
        );
        assert_eq!(
            code(post(
                &[],
                json!({"jsonrpc": "2.0", "id": null, "method": "ping"})
            )),
            INVALID_REQUEST
        );
        assert_eq!(
            code(post(&[], json!({"jsonrpc": "2.0", "id": 1, "method": 5}))),
            INVALID_REQUEST
        );
        assert_eq!(code(post(&[], json!("text"))), INVALID_REQUEST);
        assert_eq!(code(post(&[], call("", json!({}))),), INVALID_PARAMS);
        assert_eq!(
            code(post(&[], call("refund", json!("999")))),
            INVALID_PARAMS
        );
        assert_eq!(
            code(post(
                &[],
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": []})
            )),
            INVALID_PARAMS
        );
        assert_eq!(
            code(post(
                &[],
                json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "refund"}})
            )),
            INVALID_REQUEST,
            "a tools/call notification would execute without an answer to deny"
        );
        let headers =
            Headers::from_iter([("content-type".to_owned(), "application/json".to_owned())]);
        let r = extract(&HttpRequest {
            method: "POST",
            path: "/mcp",
            headers: &headers,
            body: b"{",
        });
        assert_eq!(code(r), -32700);
    }

    #[test]
    fn batches_only_in_2025_03_26() {
        let batch = json!([call("refund", json!({"amount_cents": 1})), {"jsonrpc": "2.0", "method": "notifications/initialized"}]);
        let r = post(&[], batch.clone()).unwrap();
        assert!(r.batch);
        assert_eq!(r.messages.len(), 2);
        assert!(post(&[("mcp-protocol-version", "2025-03-26")], batch.clone()).is_ok());
        assert_eq!(
            code(post(
                &[("mcp-protocol-version", "2025-06-18")],
                batch.clone()
            )),
            INVALID_REQUEST
        );
        assert_eq!(
            code(post(&[("mcp-protocol-version", "2026-07-28")], batch)),
            INVALID_REQUEST
        );
        assert_eq!(code(post(&[], json!([]))), INVALID_REQUEST);
        assert_eq!(
            code(post(&[], json!([call("a", json!({})), 5]))),
            INVALID_REQUEST
        );
    }

    #[test]
    fn routing_headers_must_match_the_body() {
        let v26 = ("mcp-protocol-version", "2026-07-28");
        let body = call("refund", json!({}));
        assert!(
            post(
                &[v26, ("mcp-method", "tools/call"), ("mcp-name", "refund")],
                body.clone()
            )
            .is_ok()
        );
        assert_eq!(
            code(post(
                &[v26, ("mcp-method", "tools/call"), ("mcp-name", "lookup")],
                body.clone()
            )),
            HEADER_MISMATCH
        );
        assert_eq!(
            code(post(
                &[v26, ("mcp-method", "tools/list"), ("mcp-name", "refund")],
                body.clone()
            )),
            HEADER_MISMATCH
        );
        assert_eq!(
            code(post(&[v26, ("mcp-name", "refund")], body.clone())),
            HEADER_MISMATCH,
            "Mcp-Method required"
        );
        assert_eq!(
            code(post(&[v26, ("mcp-method", "tools/call")], body.clone())),
            HEADER_MISMATCH,
            "Mcp-Name required"
        );
        // Older revisions need no headers, but any header that is sent must still agree.
        assert!(post(&[("mcp-protocol-version", "2025-11-25")], body.clone()).is_ok());
        assert_eq!(
            code(post(&[("mcp-method", "ping")], body.clone())),
            HEADER_MISMATCH
        );
        // Non-ASCII names travel base64-encoded.
        let uni = call("café", json!({}));
        let encoded = format!("=?base64?{}?=", STANDARD.encode("café"));
        assert!(
            post(
                &[v26, ("mcp-method", "tools/call"), ("mcp-name", &encoded)],
                uni.clone()
            )
            .is_ok()
        );
        assert_eq!(
            code(post(
                &[
                    v26,
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "=?base64?!!?=")
                ],
                uni
            )),
            HEADER_MISMATCH
        );
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        assert!(post(&[v26, ("mcp-method", "tools/list")], list.clone()).is_ok());
        assert_eq!(
            code(post(
                &[v26, ("mcp-method", "tools/list"), ("mcp-name", "x")],
                list
            )),
            HEADER_MISMATCH
        );
    }

    #[test]
    fn get_and_delete_are_session_exchanges() {
        let headers = Headers::default();
        for method in ["GET", "DELETE"] {
            let r = extract(&HttpRequest {
                method,
                path: "/mcp",
                headers: &headers,
                body: b"",
            })
            .unwrap();
            assert_eq!(r.messages[0].operation, McpOperation::Session);
            assert_eq!(r.messages[0].method, method);
        }
        let r = extract(&HttpRequest {
            method: "PUT",
            path: "/mcp",
            headers: &headers,
            body: b"",
        });
        assert_eq!(r, Err(ExtractError::McpMethodNotAllowed("PUT".into())));
    }

    #[test]
    fn legacy_transport_messages_are_refused() {
        for target in [
            "/mcp/messages?sessionId=abc",
            "/messages/?session_id=abc",
            "/m?x=1&SESSIONID=a",
        ] {
            assert!(refuse_legacy_messages("POST", target).is_err(), "{target}");
        }
        for (method, target) in [
            ("POST", "/mcp"),
            ("POST", "/mcp?x=1"),
            ("GET", "/sse?sessionId=a"),
        ] {
            assert!(
                refuse_legacy_messages(method, target).is_ok(),
                "{method} {target}"
            );
        }
    }
}
