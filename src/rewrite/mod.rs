//! Byte-preserving body edits for the ext_proc leg: the JSON span editor each request format
//! uses to strip tools, and the MCP `tools/list` answer filter with its SSE framing. ext_authz
//! decides; these modules only apply decisions.

pub mod eventstream;
pub mod json_edit;
pub mod listing;
pub mod sse;
