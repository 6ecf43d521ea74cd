//! Stage 4: the answer. [`Outcome`] is what the pipeline decided, independent of transport;
//! [`refusal`] is the one place where every reason to refuse becomes an HTTP status, headers
//! and a body in the caller's dialect (OpenAI error shape, or a JSON-RPC error for MCP).
//! [`ext_authz`] turns an `Outcome` into Envoy's `CheckResponse`; [`coalesced_writes`] sends
//! each answer in one write.

pub mod check_request;
pub mod coalesced_writes;
pub mod ext_authz;
pub mod ext_proc;
pub mod processing_request;
pub mod refusal;
pub mod tool_calls;

use serde_json::{Map, Value};

/// What Envoy should do with the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Allow {
        /// Headers set on the request to the upstream (overwriting any client value).
        headers: Vec<(String, String)>,
        /// Client-sent headers that only agent-authz may set.
        remove_headers: Vec<String>,
        /// Headers added to the response sent back to the client.
        response_headers: Vec<(String, String)>,
        metadata: Map<String, Value>,
    },
    Deny {
        denial: Denial,
        metadata: Map<String, Value>,
    },
}

/// An HTTP answer sent to the client instead of forwarding the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}
