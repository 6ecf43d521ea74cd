//! Stage 2: what is asked. Classifies the route, then turns the body into an [`AgentRequest`]:
//! the model and declared tools of an LLM call, or the JSON-RPC messages of an MCP exchange.
//!
//! Extraction knows nothing about policy. It refuses what it cannot read unambiguously (a body
//! that is not JSON, an unknown tool shape, MCP routing headers that disagree with the body),
//! because a request judged on one reading and forwarded with another is a bypass.

pub mod anthropic_messages;
pub mod azure_openai;
pub mod bedrock_converse;
pub mod gemini;
mod json_prescan;
mod json_view;
#[cfg(not(fuzzing))]
mod known_tools;
pub use known_tools::{ToolArrayCounts, tool_array_counts};
/// Public only to the `known_tools_differential` fuzz target, which reads bodies with and without
/// a remembered tool array.
#[cfg(fuzzing)]
pub mod known_tools;
mod llm;
pub mod mcp;
pub mod openai_chat;
pub mod openai_models;
pub mod openai_responses;
pub mod routing;
#[cfg(not(fuzzing))]
pub(crate) mod strict_json;
/// Public only to the `json_prescan_differential` fuzz target, which compares the fast reading
/// with the full one.
#[cfg(fuzzing)]
pub mod strict_json;
pub mod tool_schemas;

use serde_json::Value;

use crate::config::Format;
use crate::headers::Headers;
use crate::rewrite::json_edit::EditError;
use json_prescan::KnownValues;
pub use routing::Router;
pub use strict_json::Reading;

/// The parts of an HTTP request extraction reads.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The request target without the query string.
    pub path: &'a str,
    /// Lower-cased header names.
    pub headers: &'a Headers,
    pub body: &'a [u8],
}

/// A request in the vocabulary of the policy, whatever dialect it arrived in.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentRequest {
    Llm(LlmRequest),
    Mcp(McpRequest),
    /// A model listing (`GET /v1/models`): nothing to judge up front; its answer is filtered
    /// to the models the principal may invoke.
    ModelList,
}

/// An LLM API call: the model it invokes and the tools it declares to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    pub model: String,
    /// Declared tools, unique by name, in request order.
    pub tools: std::sync::Arc<[DeclaredTool]>,
    /// Tools the caller forces the model to call (`tool_choice` / `function_call` naming one).
    pub forced_tools: Vec<String>,
    pub stream: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredTool {
    /// The tool's name; for built-in tools judged by type, the type (`web_search`).
    pub name: String,
    /// The declaration's type as the dialect spells it (`function`, `custom`, `builtin`, ...).
    pub kind: String,
    /// For a tool on a remote MCP server the provider calls itself (OpenAI Responses `mcp`,
    /// Anthropic `mcp_toolset`): the server label. Judged as that server's `tools/call`.
    /// `name` is then `*` when the declaration allows every tool of the server.
    pub server: Option<String>,
    /// Whether the stripping leg can remove the declaration. Tools declared where the body
    /// editor does not cut (Anthropic `mcp_servers`, Bedrock `additionalModelRequestFields`)
    /// are not: a denied one refuses the request even in strip mode.
    pub strippable: bool,
}

impl DeclaredTool {
    pub fn new(name: &str, kind: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: kind.to_owned(),
            server: None,
            strippable: true,
        }
    }

    /// A tool of the remote MCP server `server` (`name` may be `*`: every tool).
    pub fn remote(name: &str, server: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: "mcp".to_owned(),
            server: Some(server.to_owned()),
            strippable: true,
        }
    }

    /// The same declaration, marked as one the stripping leg cannot remove.
    pub fn unstrippable(self) -> Self {
        Self {
            strippable: false,
            ..self
        }
    }

    /// The identity used to name a denied tool to the stripping leg: the name, or
    /// `<server>/<name>` for a remote MCP tool.
    pub fn key(&self) -> String {
        match &self.server {
            Some(server) => format!("{server}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// `self.key() == key`, without building the key (the duplicate check compares every
    /// pair of declared tools).
    pub fn has_key(&self, key: &str) -> bool {
        match &self.server {
            None => self.name == key,
            Some(server) => key
                .strip_prefix(server.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|name| name == self.name),
        }
    }
}

/// One request dialect: how to read it, and how to remove denied tools from it. A new format
/// is one module implementing this trait, a [`Format`] variant naming it, and a line in
/// [`dialect`].
pub trait RequestFormat: Sync {
    /// Reads a request of this dialect.
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError>;

    /// The body without the declared tools whose [`DeclaredTool::key`] is in `denied`, still a
    /// valid request of the dialect; `None` when none of them is declared.
    fn strip_tools(&self, body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError>;
}

/// The implementation of a configured format.
pub fn dialect(format: Format) -> &'static dyn RequestFormat {
    match format {
        Format::OpenaiChat => &openai_chat::OpenaiChat,
        Format::OpenaiResponses => &openai_responses::OpenaiResponses,
        Format::OpenaiModels => &openai_models::OpenaiModels,
        Format::AnthropicMessages => &anthropic_messages::AnthropicMessages,
        Format::Gemini => &gemini::Gemini,
        Format::BedrockConverse => &bedrock_converse::BedrockConverse,
        Format::AzureOpenaiChat => &azure_openai::AzureChat,
        Format::AzureOpenaiResponses => &azure_openai::AzureResponses,
        Format::Mcp => &mcp::Mcp,
    }
}

/// One MCP HTTP exchange: a single JSON-RPC message, or a batch (2025-03-26 only).
#[derive(Debug, Clone, PartialEq)]
pub struct McpRequest {
    pub batch: bool,
    /// `MCP-Protocol-Version` as sent (absent before the handshake completes).
    pub protocol_version: Option<String>,
    pub messages: Vec<McpMessage>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct McpMessage {
    /// The JSON-RPC id; `None` for notifications and for the bodiless GET/DELETE exchanges.
    pub id: Option<Value>,
    /// The JSON-RPC method, or `GET`/`DELETE`/`response` for exchanges that carry none.
    pub method: String,
    pub operation: McpOperation,
}

#[derive(Debug, Clone, PartialEq)]
pub enum McpOperation {
    /// `tools/call`: judged on the tool and its arguments.
    ToolCall { name: String, arguments: Value },
    /// `resources/read`.
    ResourceRead { uri: String },
    /// `prompts/get`.
    PromptGet { name: String, arguments: Value },
    /// Handshake, notifications, list calls, ping, responses, and the GET/DELETE session
    /// exchanges: judged as use of the server as a whole.
    Session,
    /// Any other method: judged with the method itself as the action, so policies deny what
    /// they do not name.
    Other,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExtractError {
    #[error("request body is empty")]
    EmptyBody,
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body was truncated by Envoy (allow_partial_message); it cannot be judged")]
    TruncatedBody,
    #[error("unsupported content type {0:?}: expected application/json")]
    UnsupportedContentType(String),
    #[error("unsupported content encoding {0:?}: send the body uncompressed")]
    UnsupportedContentEncoding(String),
    #[error("path is not normalized ({0}); enable normalize_path and merge_slashes in Envoy")]
    UnnormalizedPath(&'static str),
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// Valid JSON, refused because parsers disagree on which of two equal keys wins.
    #[error(
        "body is refused as ambiguous: {0} (valid JSON, but parsers disagree on which duplicate wins)"
    )]
    DuplicateKey(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request asks about {count} resources; the limit is {limit}")]
    TooManyResources { count: usize, limit: usize },
    /// An MCP request that breaks JSON-RPC or MCP rules; answered as a JSON-RPC error.
    #[error("{message}")]
    Mcp {
        id: Option<Value>,
        code: i64,
        message: String,
    },
    #[error("HTTP method {0} is not used by MCP Streamable HTTP")]
    McpMethodNotAllowed(String),
}

/// Splits the query string off a request target.
pub fn path_without_query(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or(target)
}

/// Refuses paths that Envoy would route differently from how we classify them. Envoy's
/// `normalize_path`/`merge_slashes` settle these before ext_authz; if they are off, the
/// request is refused rather than guessed at. On a Bedrock route the model segment is left to
/// the Bedrock reader, which decodes it once (model ids hold an escaped `:` and ARNs a `/`).
pub fn check_normalized(path: &str, format: Option<Format>) -> Result<(), ExtractError> {
    let masked = match format {
        Some(Format::BedrockConverse) => bedrock_converse::mask_model(path),
        _ => None,
    };
    let path = masked.as_deref().unwrap_or(path);
    if path.contains("//") {
        return Err(ExtractError::UnnormalizedPath("double slash"));
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(ExtractError::UnnormalizedPath("dot segment"));
    }
    if path.contains('%') {
        return Err(ExtractError::UnnormalizedPath("percent-encoding"));
    }
    if path.contains('\\') {
        return Err(ExtractError::UnnormalizedPath("backslash"));
    }
    Ok(())
}

/// Reads a request in `format`, refusing tool names no dialect allows.
pub fn extract(format: Format, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
    let request = dialect(format).extract(request)?;
    match &request {
        AgentRequest::Llm(llm) => {
            for tool in llm.tools.iter().filter(|t| t.name != "*") {
                check_tool_name(&tool.name).map_err(ExtractError::InvalidRequest)?;
            }
        }
        AgentRequest::Mcp(mcp) => {
            for message in &mcp.messages {
                if let McpOperation::ToolCall { name, .. } | McpOperation::PromptGet { name, .. } =
                    &message.operation
                {
                    check_tool_name(name).map_err(|e| ExtractError::Mcp {
                        id: message.id.clone(),
                        code: mcp::INVALID_PARAMS,
                        message: e,
                    })?;
                }
            }
        }
        AgentRequest::ModelList => {}
    }
    Ok(request)
}

/// Tool names are judged exactly as sent (case-sensitive, as OpenAI, Anthropic, Gemini and MCP
/// all define them), so only names every dialect allows are accepted: 1 to 128 of `A-Z a-z 0-9
/// _ - . : /`. This refuses look-alikes (fullwidth letters that Unicode NFKC folds onto ASCII,
/// zero-width or control characters, spaces) that a lenient server might resolve to a tool the
/// policy denies under its plain name.
pub fn check_tool_name(name: &str) -> Result<(), String> {
    // By bytes, with a table: every allowed character is ASCII, so a byte of a multi-byte
    // character is refused as the character is (a cached 20-tool check spent ~1.5 % of its
    // instructions decoding names as chars).
    if name.is_empty() || name.len() > 128 || !name.bytes().all(|b| TOOL_NAME_BYTES[b as usize]) {
        return Err(format!(
            "tool name {name:?} is not 1-128 of A-Z a-z 0-9 _ - . : /"
        ));
    }
    Ok(())
}

/// The bytes [`check_tool_name`] allows.
const TOOL_NAME_BYTES: [bool; 256] = {
    let mut allowed = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        allowed[b] = c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':' | b'/');
        b += 1;
    }
    allowed
};

/// Test helpers shared by the format modules.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::headers::Headers;

    use serde_json::Value;

    use super::{AgentRequest, ExtractError, HttpRequest, LlmRequest, RequestFormat};

    /// Reads `body` (sent as JSON to `path`) as an LLM request in `format`.
    pub fn read(
        format: &dyn RequestFormat,
        path: &str,
        body: &Value,
    ) -> Result<LlmRequest, ExtractError> {
        read_bytes(format, path, body.to_string().as_bytes())
    }

    /// [`read`], of the body's bytes as sent (for bodies that are not valid JSON, or must keep
    /// their exact bytes).
    pub fn read_bytes(
        format: &dyn RequestFormat,
        path: &str,
        body: &[u8],
    ) -> Result<LlmRequest, ExtractError> {
        let headers =
            Headers::from_iter([("content-type".to_owned(), "application/json".to_owned())]);
        match format.extract(&HttpRequest {
            method: "POST",
            path,
            headers: &headers,
            body,
        })? {
            AgentRequest::Llm(llm) => Ok(llm),
            other => panic!("not an LLM request: {other:?}"),
        }
    }

    /// A seeded xorshift: each call a number below its argument (0 for 0), the same sequence
    /// for the same seed, so mutation tests are repeatable.
    pub fn below(seed: u64) -> impl FnMut(usize) -> usize {
        let mut rng = seed;
        move |below: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % below.max(1) as u64) as usize
        }
    }

    /// Strips `denied` from `body` in `format`; `None` when nothing changed.
    pub fn strip(format: &dyn RequestFormat, body: &str, denied: &[&str]) -> Option<String> {
        let denied: Vec<String> = denied.iter().map(|s| s.to_string()).collect();
        format
            .strip_tools(body.as_bytes(), &denied)
            .unwrap()
            .map(|b| String::from_utf8(b).unwrap())
    }
}

/// Parses a JSON body after checking that it is declared as uncompressed JSON.
pub fn json_body(request: &HttpRequest<'_>) -> Result<Value, ExtractError> {
    json_body_checks(request)?;
    strict_json::parse(request.body).map_err(body_error)
}

/// Like [`json_body`], but builds only what `reading` names: the rest of the body (a
/// conversation can be megabytes of messages, tool schemas most of the rest) is checked to
/// be valid JSON without being copied (duplicate keys are refused where they could change the
/// judgement: see `extract/strict_json.rs`). `Ok(None)` when the
/// body is JSON but not an object.
/// `scratch` holds the compacted body the members are built from (a `View` borrows from it).
/// `known` may know top-level members whole from earlier bodies (see `json_prescan::KnownValues`).
pub fn json_fields<'b, T: strict_json::Tree<'b>>(
    request: &HttpRequest<'b>,
    reading: &Reading<'_>,
    known: &mut dyn KnownValues,
    scratch: &'b mut String,
) -> Result<Option<T::Object>, ExtractError> {
    json_body_checks(request)?;
    strict_json::parse_members_with::<T>(request.body, reading, known, scratch).map_err(body_error)
}

/// A duplicate key is told apart from broken JSON: the body is valid, only ambiguous.
fn body_error(e: serde_json::Error) -> ExtractError {
    let why = e.to_string();
    if why.starts_with(strict_json::DUPLICATE_KEY) {
        ExtractError::DuplicateKey(why)
    } else {
        ExtractError::NotJson(why)
    }
}

/// The body must be declared as uncompressed JSON, and not be empty.
fn json_body_checks(request: &HttpRequest<'_>) -> Result<(), ExtractError> {
    if let Some(encoding) = request.headers.get("content-encoding") {
        let encoding = encoding.trim();
        if !encoding.eq_ignore_ascii_case("identity") {
            return Err(ExtractError::UnsupportedContentEncoding(
                encoding.to_owned(),
            ));
        }
    }
    let content_type = request
        .headers
        .get("content-type")
        .map(String::as_str)
        .unwrap_or("");
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media_type != "application/json" && !media_type.ends_with("+json") {
        return Err(ExtractError::UnsupportedContentType(
            content_type.to_owned(),
        ));
    }
    if request.body.is_empty() {
        return Err(ExtractError::EmptyBody);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_key_agrees_with_key() {
        let tools = [
            DeclaredTool::new("refund", "function"),
            DeclaredTool::new("crm/refund", "function"),
            DeclaredTool::remote("refund", "crm"),
            DeclaredTool::remote("*", "crm"),
            DeclaredTool::remote("refund", "cr"),
        ];
        for a in &tools {
            for b in &tools {
                assert_eq!(
                    a.has_key(&b.key()),
                    a.key() == b.key(),
                    "{a:?} vs {}",
                    b.key()
                );
            }
        }
    }

    #[test]
    fn query_strings_are_not_part_of_the_path() {
        assert_eq!(path_without_query("/mcp?x=/v1"), "/mcp");
        assert_eq!(path_without_query("/mcp#frag"), "/mcp");
        assert_eq!(path_without_query("/mcp"), "/mcp");
    }

    #[test]
    fn unnormalized_paths_are_refused() {
        for p in [
            "/v1//chat",
            "/v1/chat/completions/../models",
            "/v1/./x",
            "/v1/%63hat",
            "/a\\b",
        ] {
            assert!(check_normalized(p, None).is_err(), "{p}");
            assert!(
                check_normalized(p, Some(Format::BedrockConverse)).is_err(),
                "{p}"
            );
        }
        assert!(check_normalized("/v1/chat/completions", None).is_ok());
        let bedrock = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
        assert!(check_normalized(bedrock, None).is_err());
        assert!(check_normalized(bedrock, Some(Format::BedrockConverse)).is_ok());
        for p in ["/model/m%3A0/converse%2F", "/x%2F/model/m%3A0/converse"] {
            assert!(
                check_normalized(p, Some(Format::BedrockConverse)).is_err(),
                "{p}"
            );
        }
    }

    #[test]
    fn tool_names_outside_the_common_alphabet_are_refused() {
        for ok in ["get_weather", "github/search", "a.b:c-d", "X9"] {
            assert!(check_tool_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ｄelete_repo",
            "delete\u{200b}_repo",
            "delete repo",
            "tool\n",
            &"a".repeat(129),
        ] {
            assert!(check_tool_name(bad).is_err(), "{bad:?}");
        }
        // Every character, one at a time, against the alphabet as written.
        for c in (0..=0x3000).filter_map(char::from_u32) {
            let expected = c.is_ascii_alphanumeric() || "_-.:/".contains(c);
            let name = format!("a{c}b");
            assert_eq!(check_tool_name(&name).is_ok(), expected, "{c:?}");
        }
        assert!(check_tool_name(&"a".repeat(128)).is_ok());
        let headers =
            Headers::from_iter([("content-type".to_owned(), "application/json".to_owned())]);
        let body =
            r#"{"model":"m","tools":[{"type":"function","function":{"name":"ｄelete_repo"}}]}"#;
        let r = extract(
            Format::OpenaiChat,
            &HttpRequest {
                method: "POST",
                path: "/",
                headers: &headers,
                body: body.as_bytes(),
            },
        );
        assert!(matches!(r, Err(ExtractError::InvalidRequest(_))), "{r:?}");
        let call =
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"ｄelete_repo"}}"#;
        let r = extract(
            Format::Mcp,
            &HttpRequest {
                method: "POST",
                path: "/mcp",
                headers: &headers,
                body: call.as_bytes(),
            },
        );
        assert!(
            matches!(
                r,
                Err(ExtractError::Mcp {
                    code: mcp::INVALID_PARAMS,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn json_bodies_must_say_so() {
        let mut headers = Headers::from_iter([(
            "content-type".to_owned(),
            "application/json; charset=utf-8".to_owned(),
        )]);
        let req = |h: &Headers, body: &'static [u8]| {
            json_body(&HttpRequest {
                method: "POST",
                path: "/",
                headers: &h.clone(),
                body,
            })
        };
        assert!(req(&headers, br#"{"a":1}"#).is_ok());
        assert_eq!(req(&headers, b""), Err(ExtractError::EmptyBody));
        assert!(matches!(req(&headers, b"{"), Err(ExtractError::NotJson(_))));
        assert!(
            matches!(
                req(&headers, b"\xef\xbb\xbf{}"),
                Err(ExtractError::NotJson(_))
            ),
            "BOM"
        );
        for dup in [
            &br#"{"model":"a","model":"b"}"#[..],
            br#"{"params":{"name":"x","name":"y"}}"#,
            br#"[{"a":1,"a":1}]"#,
        ] {
            match req(&headers, Box::leak(dup.to_vec().into_boxed_slice())) {
                Err(e @ ExtractError::DuplicateKey(_)) => {
                    let message = e.to_string();
                    assert!(message.contains("duplicate key"), "{message}");
                    assert!(message.contains("valid JSON, but"), "{message}");
                }
                other => panic!("duplicate keys accepted: {other:?}"),
            }
        }
        assert_eq!(
            req(
                &headers,
                br#"{"a":{"k":1},"b":{"k":2},"n":1.5,"i":-3,"u":18446744073709551615}"#
            )
            .unwrap(),
            serde_json::json!({"a":{"k":1},"b":{"k":2},"n":1.5,"i":-3,"u":18446744073709551615u64})
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep: &'static [u8] = Box::leak(deep.into_bytes().into_boxed_slice());
        assert!(
            matches!(req(&headers, deep), Err(ExtractError::NotJson(_))),
            "deep nesting"
        );
        headers.insert("content-encoding".into(), "gzip".into());
        assert!(matches!(
            req(&headers, br#"{}"#),
            Err(ExtractError::UnsupportedContentEncoding(_))
        ));
        headers.remove("content-encoding");
        headers.insert("content-type".into(), "text/plain".into());
        assert!(matches!(
            req(&headers, br#"{}"#),
            Err(ExtractError::UnsupportedContentType(_))
        ));
        headers.remove("content-type");
        assert!(matches!(
            req(&headers, br#"{}"#),
            Err(ExtractError::UnsupportedContentType(_))
        ));
    }
}
