//! Stage 5: evidence. One JSON line per decision on stdout, naming the principal, each
//! resource judged (with the attributes sent, so an MCP call's arguments are on record), the
//! effect, the policy and the reason. Diagnostics go to stderr through `tracing`, so the
//! decision stream stays machine-readable.
//!
//! The raw token never enters a record: [`crate::identity::BearerToken`] is kept out of it.

use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::decide::{Effect, Verdict};
use crate::identity::Principal;

/// Everything known about one decision.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    pub time: String,
    /// `request` (the ext_authz decision) or `response` (filtering a `tools/list` answer; it
    /// shares the request's decision id).
    pub phase: &'static str,
    pub decision_id: String,
    pub request_id: String,
    /// W3C trace id from the `traceparent` header Envoy forwards, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// `allow` or `deny`: the decision. Under dry-run a `deny` is logged here while the
    /// request is let through.
    pub effect: &'static str,
    /// The request was let through despite `effect: deny` because dry-run is on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// HTTP status of the answer (200 when forwarded).
    pub status: u16,
    pub reason: String,
    /// Why the request was refused, as a stable label (`policy_denied`, `unauthenticated`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<&'static str>,
    pub principal: Option<PrincipalRecord>,
    pub method: String,
    pub path: String,
    pub route: Option<String>,
    pub format: Option<&'static str>,
    pub resources: Vec<ResourceRecord>,
    /// Declared tools the policy denied (reported even when `denied_tools: pass` let them by).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_tools: Vec<String>,
    /// What a filtered answer lost: tools of a `tools/list`, or models of a model listing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<String>,
    pub cerbos_call_ids: Vec<String>,
    pub latency_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrincipalRecord {
    pub id: String,
    pub roles: Vec<String>,
    pub attr: Map<String, Value>,
}

impl From<&Principal> for PrincipalRecord {
    fn from(p: &Principal) -> Self {
        Self {
            id: p.id.clone(),
            roles: p.roles.clone(),
            attr: p.attr.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceRecord {
    pub kind: String,
    pub id: String,
    pub action: String,
    pub effect: Effect,
    pub policy: Option<String>,
    /// The rule whose output gave the reason (see [`Verdict::reason_rule`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_rule: Option<String>,
    pub reason: String,
    /// The attributes sent to Cerbos (for MCP calls: server, tool and the arguments judged).
    pub attr: Map<String, Value>,
}

impl From<&Verdict> for ResourceRecord {
    fn from(v: &Verdict) -> Self {
        Self {
            kind: v.check.kind.clone(),
            id: v.check.id.clone(),
            action: v.check.action.clone(),
            effect: v.effect,
            policy: v.policy.clone(),
            reason_rule: v.reason_rule().map(str::to_owned),
            reason: v.reason(),
            attr: v.check.attr.clone(),
        }
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Where decision records go. Redaction happened before: records only hold what
/// [`crate::redact`] let through.
pub struct AuditLog {
    sink: Sink,
}

enum Sink {
    Stdout,
    File(std::sync::Mutex<std::fs::File>),
    #[cfg(test)]
    Memory(std::sync::Mutex<Vec<Value>>),
}

impl AuditLog {
    pub fn new(config: &crate::config::AuditConfig) -> std::io::Result<AuditLog> {
        let sink = match config.output.file() {
            None => Sink::Stdout,
            Some(path) => Sink::File(std::sync::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        };
        Ok(AuditLog { sink })
    }

    #[cfg(test)]
    pub fn memory() -> AuditLog {
        AuditLog {
            sink: Sink::Memory(std::sync::Mutex::new(Vec::new())),
        }
    }

    #[cfg(test)]
    pub fn lines(&self) -> Vec<Value> {
        match &self.sink {
            Sink::Memory(lines) => lines.lock().map(|l| l.clone()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    pub fn write(&self, record: &DecisionRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise a decision record");
                return;
            }
        };
        line.push(b'\n');
        let result = match &self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line).and_then(|()| out.flush())
            }
            Sink::File(file) => match file.lock() {
                Ok(mut f) => f.write_all(&line),
                Err(_) => Ok(()),
            },
            #[cfg(test)]
            Sink::Memory(lines) => {
                if let (Ok(mut lines), Ok(value)) = (lines.lock(), serde_json::from_slice(&line)) {
                    lines.push(value);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the decision log");
        }
    }
}
