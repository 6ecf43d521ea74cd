//! The decision ext_authz hands to the ext_proc leg, so a request is judged once.
//!
//! ext_authz returns it in its dynamic metadata (namespace `envoy.filters.http.ext_authz`,
//! key `agent_authz`); Envoy forwards that namespace to ext_proc when the ext_proc filter lists
//! it in `metadata_options.forwarding_namespaces.untyped`. Metadata is written only by Envoy's
//! filters, so a client cannot forge it (unlike a header, or a cache keyed on `x-request-id`).
//!
//! The handoff travels as one JSON string, not as a protobuf `Struct`: a `Struct` stores every
//! number as a double, and a JSON-RPC id or a claim beyond 2^53 would arrive changed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Format;
use crate::identity::Principal;

/// Key of the handoff inside ext_authz's metadata namespace.
pub const METADATA_KEY: &str = "agent_authz";
/// The metadata namespace Envoy gives ext_authz's dynamic metadata.
pub const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// `P`: the principal as ext_authz writes it (its JSON, written once per remembered token by
/// [`crate::identity::SharedPrincipal::json`]) or as the ext_proc leg reads it back
/// ([`HandoffPrincipal`]); both are the same JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff<P = HandoffPrincipal> {
    pub decision_id: String,
    /// Envoy's `x-request-id`, also sent to Cerbos as its request id.
    pub request_id: String,
    pub principal: P,
    /// The request's format, so the body is edited in its own dialect.
    #[serde(default)]
    pub format: Option<Format>,
    /// Declared tools to remove from the request body (`denied_tools: strip`), by
    /// [`crate::extract::DeclaredTool::key`].
    #[serde(default)]
    pub strip_tools: Vec<String>,
    /// Set when the exchange's answer may carry a `tools/list` result that must be filtered:
    /// a request (or batch) with a `tools/list` message, or a resumed MCP stream.
    #[serde(default)]
    pub tools_list: Option<ToolsListHandoff>,
    /// Set for a model listing whose answer must be filtered: the route prefix.
    #[serde(default)]
    pub models_list: Option<String>,
    /// Set when the tool calls in the model's answer must be judged (`model_tool_calls:
    /// judge` on the route): the model the request invoked (attribute `model`).
    #[serde(default)]
    pub judge_tool_calls: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffPrincipal {
    pub id: String,
    pub roles: Vec<String>,
    pub attr: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolsListHandoff {
    /// The JSON-RPC ids of the `tools/list` requests, each as its exact JSON text (evidence;
    /// answers are recognised by shape, see [`crate::rewrite::listing`]).
    #[serde(default)]
    pub request_ids: Vec<String>,
    pub server: String,
    pub kind: String,
    /// An MCP GET stream opened without `Last-Event-ID`: filtered only if its first event
    /// shows the 2024-11-05 HTTP+SSE transport (which answers every request on it).
    #[serde(default)]
    pub probe_transport: bool,
}

impl<P: Serialize> Handoff<P> {
    /// Whether the ext_proc leg rewrites the answer (a listing to filter, tool calls to judge).
    pub fn filters_answer(&self) -> bool {
        self.tools_list.is_some() || self.models_list.is_some() || self.judge_tool_calls.is_some()
    }

    /// The metadata value: the handoff as its JSON text.
    pub fn to_value(&self) -> Value {
        Value::String(serde_json::to_string(self).unwrap_or_default())
    }
}

impl Handoff {
    /// Reads the handoff from forwarded metadata (namespace → content).
    pub fn from_metadata(metadata: &std::collections::HashMap<String, Value>) -> Option<Handoff> {
        let raw = metadata
            .get(EXT_AUTHZ_NAMESPACE)?
            .get(METADATA_KEY)?
            .as_str()?;
        serde_json::from_str(raw).ok()
    }
}

impl From<HandoffPrincipal> for Principal {
    fn from(p: HandoffPrincipal) -> Self {
        Principal {
            id: p.id,
            roles: p.roles,
            attr: p.attr,
            token: None,
        }
    }
}
