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
    /// Tools removed from a `tools/list` answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hidden_tools: Vec<String>,
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
    pub rule: Option<String>,
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
            rule: v.rule().map(str::to_owned),
            reason: v.reason(),
            attr: v.check.attr.clone(),
        }
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Where decision records go, and what is masked or dropped on the way.
pub struct AuditLog {
    sink: Sink,
    mask: Vec<RedactPath>,
    drop: Vec<RedactPath>,
}

enum Sink {
    Stdout,
    File(std::sync::Mutex<std::fs::File>),
    #[cfg(test)]
    Memory(std::sync::Mutex<Vec<Value>>),
}

/// A redaction target: a dot path into principal attributes or into call arguments.
#[derive(Debug, Clone)]
enum RedactPath {
    Claim(Vec<String>),
    Argument(Vec<String>),
}

impl RedactPath {
    fn parse(path: &str) -> Option<RedactPath> {
        let split = |rest: &str| rest.split('.').map(str::to_owned).collect();
        if let Some(rest) = path.strip_prefix("claims.") {
            Some(RedactPath::Claim(split(rest)))
        } else {
            path.strip_prefix("arguments.")
                .map(|rest| RedactPath::Argument(split(rest)))
        }
    }
}

/// The value written in place of a masked one.
pub const MASK: &str = "****";

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
        let parse = |paths: &[String]| paths.iter().filter_map(|p| RedactPath::parse(p)).collect();
        Ok(AuditLog {
            sink,
            mask: parse(&config.mask),
            drop: parse(&config.drop),
        })
    }

    #[cfg(test)]
    pub fn memory(config: &crate::config::AuditConfig) -> AuditLog {
        let mut log = AuditLog::new(config).unwrap_or_else(|_| unreachable!());
        log.sink = Sink::Memory(std::sync::Mutex::new(Vec::new()));
        log
    }

    #[cfg(test)]
    pub fn lines(&self) -> Vec<Value> {
        match &self.sink {
            Sink::Memory(lines) => lines.lock().map(|l| l.clone()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    pub fn write(&self, record: &DecisionRecord) {
        let mut record = record.clone();
        self.redact(&mut record);
        let mut line = match serde_json::to_vec(&record) {
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

    fn redact(&self, record: &mut DecisionRecord) {
        for (paths, masking) in [(&self.mask, true), (&self.drop, false)] {
            for path in paths {
                match path {
                    RedactPath::Claim(keys) => {
                        if let Some(p) = &mut record.principal {
                            redact_in(&mut p.attr, keys, masking);
                        }
                    }
                    RedactPath::Argument(keys) => {
                        for resource in &mut record.resources {
                            if let Some(Value::Object(args)) = resource.attr.get_mut("arguments") {
                                redact_in(args, keys, masking);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn redact_in(map: &mut Map<String, Value>, keys: &[String], masking: bool) {
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut current = map;
    for key in parents {
        match current.get_mut(key) {
            Some(Value::Object(next)) => current = next,
            _ => return,
        }
    }
    if masking {
        if let Some(v) = current.get_mut(last) {
            *v = Value::String(MASK.to_owned());
        }
    } else {
        current.remove(last);
    }
}
