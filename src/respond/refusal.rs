//! Every reason to refuse a request, and the one exhaustive mapping from reason to answer.
//!
//! Answers speak the caller's dialect so its client library surfaces them well:
//! - LLM routes: OpenAI's `{"error":{"message","type","code"}}`; the `openai` SDK raises
//!   `AuthenticationError` (401), `PermissionDeniedError` (403), `BadRequestError` (400).
//! - MCP routes: a JSON-RPC error carrying the request's id. A policy denial is sent with HTTP
//!   200 by default (`mcp.denied_http_status`): MCP clients surface it as an error naming the
//!   tool, whereas python-sdk 1.x hangs on a 4xx and OAuth-enabled clients resend after a 403.
//!   Our JSON-RPC codes mirror the HTTP status (403, 401, 503) and stay outside the ranges
//!   JSON-RPC and MCP reserve.

use serde_json::{Value, json};

use super::Denial;
use crate::config::Format;
use crate::decide::{DecideError, ResourceCheck, Subject, Verdict};
use crate::extract::{ExtractError, mcp};
use crate::identity::IdentityError;

/// Why a request does not go through.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Unauthenticated(IdentityError),
    BadRequest(ExtractError),
    /// The path matches no configured route and `unclassified_routes` is `deny`.
    UnclassifiedRoute(String),
    /// Cerbos denied at least one check; these are the denied verdicts.
    PolicyDenied(Vec<Verdict>),
    PolicyUnavailable(DecideError),
    /// More checks in flight than `server.max_concurrent_checks`.
    Overloaded,
    /// An `Mcp-Session-Id` not sealed for this principal: a session the server would not know
    /// under this caller, answered as MCP answers an ended session (`404`), so a client starts
    /// a new one and a hijacker learns nothing.
    UnknownSession,
    /// Envoy's route describes a route that cannot be (its context extensions name an unknown
    /// format): a configuration error, answered 500 rather than read in a guessed format.
    RouteMisconfigured(String),
}

/// What the answer needs to know about the request it refuses.
#[derive(Debug, Clone, PartialEq)]
pub enum Dialect {
    /// An LLM API, answered in its provider's error shape (OpenAI's for unclassified routes).
    Llm(Format),
    /// MCP: the JSON-RPC ids of the exchange's requests (notifications have none).
    Mcp {
        ids: Vec<Option<Value>>,
        batch: bool,
    },
}

/// Answer-shaping settings, from the config.
#[derive(Debug, Clone, Copy)]
pub struct AnswerSettings {
    pub pdp_unavailable_status: u16,
    pub mcp_denied_status: u16,
}

/// Mnemonic JSON-RPC codes (see the module doc).
const RPC_DENIED: i64 = 403;
const RPC_UNAUTHENTICATED: i64 = 401;
const RPC_UNAVAILABLE: i64 = 503;
const RPC_NOT_FOUND: i64 = 404;

impl Refusal {
    /// A short plain-text reason for logs and metadata.
    pub fn reason(&self, principal: &str) -> String {
        match self {
            Refusal::Unauthenticated(e) => e.to_string(),
            Refusal::BadRequest(e) => e.to_string(),
            Refusal::UnclassifiedRoute(path) => format!("no route is configured for {path}"),
            Refusal::PolicyDenied(verdicts) => denial_sentence(principal, verdicts),
            Refusal::PolicyUnavailable(e) => e.to_string(),
            Refusal::Overloaded => "too many requests in flight; retry later".to_owned(),
            Refusal::UnknownSession => {
                "MCP session not found for this caller (Mcp-Session-Id is not one agent-authz \
                 sealed for this principal)"
                    .to_owned()
            }
            Refusal::RouteMisconfigured(why) => why.clone(),
        }
    }

    /// A stable label for the kind of refusal (logs, metrics).
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::UnclassifiedRoute(_) => "unclassified_route",
            Refusal::PolicyDenied(_) => "policy_denied",
            Refusal::PolicyUnavailable(_) => "policy_unavailable",
            Refusal::Overloaded => "overloaded",
            Refusal::UnknownSession => "unknown_session",
            Refusal::RouteMisconfigured(_) => "route_misconfigured",
        }
    }

    pub fn answer(&self, principal: &str, dialect: &Dialect, settings: AnswerSettings) -> Denial {
        let reason = self.reason(principal);
        let (status, kind, code, rpc_code) = match self {
            Refusal::Unauthenticated(
                IdentityError::KeysUnavailable | IdentityError::KeysRefreshing,
            ) => (
                503,
                "service_unavailable",
                "keys_unavailable",
                RPC_UNAVAILABLE,
            ),
            Refusal::Unauthenticated(IdentityError::MissingToken) => (
                401,
                "authentication_error",
                "missing_token",
                RPC_UNAUTHENTICATED,
            ),
            Refusal::Unauthenticated(_) => (
                401,
                "authentication_error",
                "invalid_token",
                RPC_UNAUTHENTICATED,
            ),
            Refusal::BadRequest(e) => {
                let (status, rpc) = match e {
                    ExtractError::BodyTooLarge { .. } | ExtractError::TruncatedBody => {
                        (413, mcp::INVALID_REQUEST)
                    }
                    ExtractError::UnsupportedContentType(_)
                    | ExtractError::UnsupportedContentEncoding(_) => (415, mcp::INVALID_REQUEST),
                    ExtractError::McpMethodNotAllowed(_) => (405, mcp::INVALID_REQUEST),
                    ExtractError::Mcp { code, .. } => (400, *code),
                    ExtractError::NotJson(_) => (400, -32700),
                    ExtractError::DuplicateKey(_)
                    | ExtractError::EmptyBody
                    | ExtractError::TooManyResources { .. }
                    | ExtractError::UnnormalizedPath(_)
                    | ExtractError::InvalidRequest(_) => (400, mcp::INVALID_REQUEST),
                };
                (status, "invalid_request_error", "invalid_request", rpc)
            }
            Refusal::UnclassifiedRoute(_) => (403, "permission_denied", "route_denied", RPC_DENIED),
            Refusal::PolicyDenied(verdicts) => {
                let code = if verdicts
                    .iter()
                    .any(|v| matches!(v.check.subject, Subject::Model(_)))
                {
                    "model_denied"
                } else {
                    "tool_denied"
                };
                (403, "permission_denied", code, RPC_DENIED)
            }
            Refusal::PolicyUnavailable(_) => (
                settings.pdp_unavailable_status,
                "service_unavailable",
                "policy_unavailable",
                RPC_UNAVAILABLE,
            ),
            Refusal::Overloaded => (503, "service_unavailable", "overloaded", RPC_UNAVAILABLE),
            Refusal::UnknownSession => (404, "not_found", "session_not_found", RPC_NOT_FOUND),
            Refusal::RouteMisconfigured(_) => (
                500,
                "server_error",
                "route_misconfigured",
                -32603, // JSON-RPC internal error
            ),
        };
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Refusal::Unauthenticated(e) = self {
            match e {
                IdentityError::MissingToken => headers
                    .push(("www-authenticate".into(), "Bearer realm=\"agent-authz\"".into())),
                IdentityError::KeysUnavailable | IdentityError::KeysRefreshing => {}
                other => headers.push((
                    "www-authenticate".into(),
                    format!(
                        "Bearer realm=\"agent-authz\", error=\"invalid_token\", error_description=\"{}\"",
                        other.to_string().replace(['"', '\\'], "'")
                    ),
                )),
            }
        }
        if let Refusal::Overloaded = self {
            headers.push(("retry-after".into(), "1".into()));
        }
        if let Refusal::BadRequest(ExtractError::McpMethodNotAllowed(_)) = self {
            headers.push(("allow".into(), "GET, POST, DELETE".into()));
        }
        let message = format!("agent-authz: {reason}");
        match dialect {
            Dialect::Llm(format) => provider_error(*format, status, headers, kind, code, &message),
            Dialect::Mcp { ids, batch } => {
                let status = match self {
                    Refusal::PolicyDenied(_) => settings.mcp_denied_status,
                    _ => status,
                };
                let id_of_error = match self {
                    Refusal::BadRequest(ExtractError::Mcp { id, .. }) => Some(id.clone()),
                    _ => None,
                };
                let body =
                    mcp_error_body(self, ids, *batch, id_of_error, rpc_code, &message, &reason);
                Denial {
                    status,
                    headers,
                    body: body.to_string(),
                }
            }
        }
    }
}

/// The error body each provider's SDK reads, so it raises its own typed error with our message:
/// OpenAI `{"error":{message,type,code}}`, Anthropic `{"type":"error","error":{type,message}}`,
/// Gemini `{"error":{code,message,status}}`, Bedrock `{"message"}` with `x-amzn-errortype`.
fn provider_error(
    format: Format,
    status: u16,
    mut headers: Vec<(String, String)>,
    kind: &str,
    code: &str,
    message: &str,
) -> Denial {
    let body = match format {
        Format::AnthropicMessages => {
            let kind = match status {
                401 => "authentication_error",
                403 => "permission_error",
                413 => "request_too_large",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        Format::Gemini => {
            let grpc = match status {
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                400..=499 => "INVALID_ARGUMENT",
                _ => "UNAVAILABLE",
            };
            json!({"error": {"code": status, "message": message, "status": grpc}})
        }
        Format::BedrockConverse => {
            let kind = match status {
                401 => "UnrecognizedClientException",
                403 => "AccessDeniedException",
                400..=499 => "ValidationException",
                _ => "ServiceUnavailableException",
            };
            headers.push(("x-amzn-errortype".to_owned(), kind.to_owned()));
            json!({"message": message})
        }
        Format::OpenaiChat
        | Format::OpenaiResponses
        | Format::OpenaiModels
        | Format::AzureOpenaiChat
        | Format::AzureOpenaiResponses
        | Format::Mcp => {
            json!({"error": {"message": message, "type": kind, "code": code}})
        }
    };
    Denial {
        status,
        headers,
        body: body.to_string(),
    }
}

/// JSON-RPC error(s). A denied batch is refused whole: each request in it gets an error, the
/// denied ones with their own reason. Every error's `data` has the same shape,
/// `{refusal, action, resource, reason}`: `action` and `resource` name the denied check, and are
/// null when the refusal is not about one (no token, a bad body, a request refused with its
/// batch).
fn mcp_error_body(
    refusal: &Refusal,
    ids: &[Option<Value>],
    batch: bool,
    explicit_id: Option<Option<Value>>,
    code: i64,
    message: &str,
    reason: &str,
) -> Value {
    let error = |id: &Option<Value>, message: &str, data: Value| {
        json!({"jsonrpc": "2.0", "id": id.clone().unwrap_or(Value::Null),
               "error": {"code": code, "message": message, "data": data}})
    };
    let label = refusal.label();
    let general = |reason: &str| json!({"refusal": label, "action": Value::Null, "resource": Value::Null, "reason": reason});
    let denied = |index: usize| -> Option<Value> {
        match refusal {
            Refusal::PolicyDenied(verdicts) => verdicts
                .iter()
                .find(|v| v.check.subject == Subject::McpMessage(index))
                .map(|v| json!({"refusal": label, "action": v.check.action, "resource": v.check.id, "reason": v.reason()})),
            _ => None,
        }
    };
    if let Some(id) = explicit_id {
        return error(&id, message, general(reason));
    }
    if !batch {
        let data = denied(0).unwrap_or_else(|| general(reason));
        return error(ids.first().unwrap_or(&None), message, data);
    }
    const WHOLE: &str = "the batch was refused as a whole";
    let errors: Vec<Value> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| id.is_some())
        .map(|(i, id)| match denied(i) {
            Some(data) => error(id, message, data),
            None => error(id, &format!("{message} ({WHOLE})"), general(WHOLE)),
        })
        .collect();
    if errors.is_empty() {
        error(&None, message, general(reason))
    } else {
        Value::Array(errors)
    }
}

/// "alice may not call tool issue_credit (the mcp_server policy does not allow it)": the
/// request part in words, named once; several denials are joined with "; ". The Cerbos action
/// and resource id stay in the decision log and in a JSON-RPC error's `data`.
pub fn denial_sentence(principal: &str, verdicts: &[Verdict]) -> String {
    verdicts
        .iter()
        .map(|v| {
            let what = match &v.check.subject {
                Subject::Model(m) => format!("invoke model {m}"),
                Subject::Tool(t) => format!("use tool {t}"),
                Subject::McpMessage(_) => mcp_request_in_words(&v.check),
                Subject::Console => format!("{} on {}", v.check.action, v.check.id),
            };
            format!("{principal} may not {what} ({})", v.reason())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What an MCP message asks for, from the attributes the vocabulary gave its check:
/// "call tool refund", "read resource file:///a", "get prompt triage", or, for session and
/// other messages, "send initialize to MCP server support".
fn mcp_request_in_words(check: &ResourceCheck) -> String {
    let attr = |key: &str| check.attr.get(key).and_then(Value::as_str);
    if let Some(tool) = attr("tool_name") {
        format!("call tool {tool}")
    } else if let Some(uri) = attr("uri") {
        format!("read resource {uri}")
    } else if let Some(prompt) = attr("prompt_name") {
        format!("get prompt {prompt}")
    } else {
        let method = attr("method").unwrap_or(&check.action);
        format!("send {method} to MCP server {}", check.id)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::decide::{Effect, ResourceCheck};

    const SETTINGS: AnswerSettings = AnswerSettings {
        pdp_unavailable_status: 503,
        mcp_denied_status: 200,
    };

    /// A denial; an MCP `tools/call/<tool>` check carries its tool name, as the vocabulary's.
    fn verdict(subject: Subject, id: &str, action: &str) -> Verdict {
        let mut attr = Map::new();
        if action.starts_with("tools/call/") {
            attr.insert("tool_name".into(), json!(id));
        }
        Verdict {
            check: ResourceCheck {
                kind: "k".into(),
                id: id.into(),
                action: action.into(),
                attr,
                subject,
            }
            .into(),
            effect: Effect::Deny,
            policy: Some("resource.k.vdefault".into()),
            outputs: vec![],
            derived_roles: vec![],
        }
    }

    fn body(d: &Denial) -> Value {
        serde_json::from_str(&d.body).unwrap()
    }

    #[test]
    fn model_denial_is_an_openai_403() {
        let r = Refusal::PolicyDenied(vec![verdict(
            Subject::Model("gpt-4o".into()),
            "gpt-4o",
            "invoke",
        )]);
        let d = r.answer("alice", &Dialect::Llm(Format::OpenaiChat), SETTINGS);
        assert_eq!(d.status, 403);
        let b = body(&d);
        assert_eq!(b["error"]["code"], "model_denied");
        assert_eq!(b["error"]["type"], "permission_denied");
        assert_eq!(
            b["error"]["message"],
            "agent-authz: alice may not invoke model gpt-4o (the k policy does not allow it)"
        );
    }

    #[test]
    fn mcp_denial_is_a_jsonrpc_error_with_the_request_id() {
        let r = Refusal::PolicyDenied(vec![verdict(
            Subject::McpMessage(0),
            "refund",
            "tools/call/refund",
        )]);
        let dialect = Dialect::Mcp {
            ids: vec![Some(json!(9))],
            batch: false,
        };
        let d = r.answer("alice", &dialect, SETTINGS);
        assert_eq!(d.status, 200);
        let b = body(&d);
        assert_eq!(b["id"], 9);
        assert_eq!(b["error"]["code"], 403);
        assert_eq!(
            b["error"]["message"],
            "agent-authz: alice may not call tool refund (the k policy does not allow it)"
        );
        assert_eq!(
            b["error"]["data"],
            json!({"refusal": "policy_denied", "action": "tools/call/refund", "resource": "refund",
                   "reason": "the k policy does not allow it"})
        );
    }

    #[test]
    fn every_mcp_error_carries_data_of_the_same_shape() {
        let dialect = Dialect::Mcp {
            ids: vec![Some(json!(3))],
            batch: false,
        };
        let unauthenticated = Refusal::Unauthenticated(IdentityError::MissingToken);
        let b = body(&unauthenticated.answer("", &dialect, SETTINGS));
        assert_eq!(b["error"]["code"], 401);
        let data = &b["error"]["data"];
        assert_eq!(data["refusal"], "unauthenticated");
        assert_eq!(data["reason"], IdentityError::MissingToken.to_string());
        assert!(data["action"].is_null() && data["resource"].is_null());
        let denied = Refusal::PolicyDenied(vec![verdict(Subject::McpMessage(0), "x", "a")]);
        let d = body(&denied.answer("bob", &dialect, SETTINGS))["error"]["data"].clone();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(data), keys(&d));
    }

    #[test]
    fn mcp_messages_are_named_in_words() {
        let mut check = std::sync::Arc::unwrap_or_clone(
            verdict(Subject::McpMessage(0), "support", "connect").check,
        );
        let words = |check: &ResourceCheck| mcp_request_in_words(check);
        check.attr = json!({"server": "support", "method": "initialize"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(words(&check), "send initialize to MCP server support");
        check.attr.insert("uri".into(), json!("file:///a"));
        assert_eq!(words(&check), "read resource file:///a");
        check.attr.remove("uri");
        check.attr.insert("prompt_name".into(), json!("triage"));
        assert_eq!(words(&check), "get prompt triage");
    }

    #[test]
    fn denied_batches_answer_every_request() {
        let r = Refusal::PolicyDenied(vec![verdict(
            Subject::McpMessage(1),
            "refund",
            "tools/call/refund",
        )]);
        let dialect = Dialect::Mcp {
            ids: vec![Some(json!(1)), Some(json!(2)), None],
            batch: true,
        };
        let b = body(&r.answer("alice", &dialect, SETTINGS));
        let items = b.as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["id"], 1);
        assert!(
            items[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("refused as a whole")
        );
        assert_eq!(items[1]["error"]["data"]["resource"], "refund");
    }

    #[test]
    fn each_provider_gets_its_own_error_shape() {
        let r = Refusal::PolicyDenied(vec![verdict(Subject::Model("m".into()), "m", "invoke")]);
        let anthropic = r.answer("a", &Dialect::Llm(Format::AnthropicMessages), SETTINGS);
        assert_eq!(body(&anthropic)["error"]["type"], "permission_error");
        assert_eq!(body(&anthropic)["type"], "error");
        let gemini = r.answer("a", &Dialect::Llm(Format::Gemini), SETTINGS);
        assert_eq!(
            (
                body(&gemini)["error"]["code"].as_i64(),
                body(&gemini)["error"]["status"].as_str()
            ),
            (Some(403), Some("PERMISSION_DENIED"))
        );
        let bedrock = r.answer("a", &Dialect::Llm(Format::BedrockConverse), SETTINGS);
        assert!(
            bedrock
                .headers
                .contains(&("x-amzn-errortype".into(), "AccessDeniedException".into()))
        );
        assert!(
            body(&bedrock)["message"]
                .as_str()
                .unwrap()
                .contains("may not invoke model m")
        );
        let responses = r.answer("a", &Dialect::Llm(Format::OpenaiResponses), SETTINGS);
        assert_eq!(body(&responses)["error"]["code"], "model_denied");
    }

    #[test]
    fn unauthenticated_carries_a_bearer_challenge() {
        let d = Refusal::Unauthenticated(IdentityError::MissingToken).answer(
            "",
            &Dialect::Llm(Format::OpenaiChat),
            SETTINGS,
        );
        assert_eq!(d.status, 401);
        assert!(d.headers.contains(&(
            "www-authenticate".into(),
            "Bearer realm=\"agent-authz\"".into()
        )));
        let d = Refusal::Unauthenticated(IdentityError::InvalidToken("token expired".into()))
            .answer(
                "",
                &Dialect::Mcp {
                    ids: vec![Some(json!(1))],
                    batch: false,
                },
                SETTINGS,
            );
        assert_eq!(d.status, 401);
        let challenge = &d
            .headers
            .iter()
            .find(|(k, _)| k == "www-authenticate")
            .unwrap()
            .1;
        assert!(
            challenge.contains("error=\"invalid_token\"") && challenge.contains("token expired")
        );
        assert_eq!(body(&d)["error"]["code"], 401);
    }

    #[test]
    fn statuses_follow_the_reason() {
        let status = |r: Refusal| {
            r.answer("a", &Dialect::Llm(Format::OpenaiChat), SETTINGS)
                .status
        };
        assert_eq!(
            status(Refusal::BadRequest(ExtractError::NotJson("x".into()))),
            400
        );
        assert_eq!(
            status(Refusal::BadRequest(ExtractError::TruncatedBody)),
            413
        );
        assert_eq!(
            status(Refusal::BadRequest(
                ExtractError::UnsupportedContentEncoding("gzip".into())
            )),
            415
        );
        assert_eq!(status(Refusal::UnclassifiedRoute("/x".into())), 403);
        assert_eq!(
            status(Refusal::PolicyUnavailable(DecideError::Timeout(5))),
            503
        );
        assert_eq!(
            status(Refusal::Unauthenticated(IdentityError::KeysUnavailable)),
            503
        );
        let mcp_parse = Refusal::BadRequest(ExtractError::Mcp {
            id: None,
            code: -32700,
            message: "parse error".into(),
        });
        let d = mcp_parse.answer(
            "a",
            &Dialect::Mcp {
                ids: vec![],
                batch: false,
            },
            SETTINGS,
        );
        assert_eq!(
            (d.status, body(&d)["error"]["code"].as_i64()),
            (400, Some(-32700))
        );
    }
}
