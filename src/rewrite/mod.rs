//! Body rewrites applied by the ext_proc leg: removing tools the principal may not use from
//! requests, and tools they may not see from MCP `tools/list` answers. ext_authz decides;
//! these modules only apply decisions, byte-preservingly.

pub mod json_edit;
pub mod mcp_tools_list;
pub mod openai_chat;
pub mod sse;
