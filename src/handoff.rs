//! The decision ext_authz hands to the ext_proc leg, so a request is judged once.
//!
//! ext_authz returns it in its dynamic metadata (namespace `envoy.filters.http.ext_authz`,
//! key `agent_authz`); Envoy forwards that namespace to ext_proc when the ext_proc filter lists
//! it in `metadata_options.forwarding_namespaces.untyped`. Metadata is written only by Envoy's
//! filters, so a client cannot forge it (unlike a header, or a cache keyed on `x-request-id`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Format;
use crate::identity::Principal;

/// Key of the handoff inside ext_authz's metadata namespace.
pub const METADATA_KEY: &str = "agent_authz";
/// The metadata namespace Envoy gives ext_authz's dynamic metadata.
pub const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub decision_id: String,
    /// Envoy's `x-request-id`, also sent to Cerbos as its request id.
    pub request_id: String,
    pub principal: HandoffPrincipal,
    /// The request's format, so the body is edited in its own dialect.
    #[serde(default)]
    pub format: Option<Format>,
    /// Declared tools to remove from the request body (`denied_tools: strip`), by
    /// [`crate::extract::DeclaredTool::key`].
    #[serde(default)]
    pub strip_tools: Vec<String>,
    /// Set when the exchange is a single MCP `tools/list` request whose answer must be filtered.
    #[serde(default)]
    pub tools_list: Option<ToolsListHandoff>,
    /// Set for a model listing whose answer must be filtered: the route prefix.
    #[serde(default)]
    pub models_list: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffPrincipal {
    pub id: String,
    pub roles: Vec<String>,
    pub attr: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolsListHandoff {
    /// The JSON-RPC id of the `tools/list` request, to find its answer in an SSE stream.
    pub request_id: Value,
    pub server: String,
    pub kind: String,
}

impl Handoff {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Reads the handoff from forwarded metadata (namespace → content).
    pub fn from_metadata(metadata: &std::collections::HashMap<String, Value>) -> Option<Handoff> {
        let raw = metadata.get(EXT_AUTHZ_NAMESPACE)?.get(METADATA_KEY)?;
        let mut handoff: Handoff = serde_json::from_value(raw.clone()).ok()?;
        // Protobuf Structs carry every number as a double: restore integers.
        handoff.principal.attr = handoff
            .principal
            .attr
            .into_iter()
            .map(|(k, v)| (k, crate::identity::normalize_numbers(v)))
            .collect();
        if let Some(list) = &mut handoff.tools_list {
            list.request_id = crate::identity::normalize_numbers(list.request_id.take());
        }
        Some(handoff)
    }
}

impl From<&Principal> for HandoffPrincipal {
    fn from(p: &Principal) -> Self {
        Self {
            id: p.id.clone(),
            roles: p.roles.clone(),
            attr: p.attr.clone(),
        }
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
