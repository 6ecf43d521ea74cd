//! agent-authz: Cerbos policy decisions for AI agent traffic behind Envoy.
//!
//! Envoy's `ext_authz` filter sends every request (with its buffered body) to
//! [`respond::ext_authz`]. The [`pipeline`] then runs the stages in request order:
//!
//! 1. [`identity`]: who asks (a verified JWT, or the payload Envoy's `jwt_authn` verified);
//! 2. [`extract`]: what they ask for (model and declared tools, or MCP JSON-RPC messages);
//! 3. [`decide`]: whether they may (one Cerbos `CheckResources` call for everything);
//! 4. [`respond`]: the answer Envoy enforces (forward with identity headers, or a refusal in
//!    the caller's dialect);
//! 5. [`audit`]: one decision record per request.
//!
//! Each module depends only on the stages after it, never on the transport.

// `deny`, not `forbid`: the one exception is the SSE2 string scan of the body prescan
// (`extract/json_prescan/scan.rs`, its `#[allow(unsafe_code)]` says why it is sound).
#![deny(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod config;
pub mod console;
pub mod decide;
pub mod extract;
pub mod handoff;
pub mod headers;
pub mod identity;
pub mod metrics;
pub mod pipeline;
pub mod redact;
pub mod reload;
pub mod respond;
pub mod rewrite;
pub mod server;
pub mod telemetry;
