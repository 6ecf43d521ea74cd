//! Stage 5: evidence. One JSON line per decision on stdout, naming the principal, each
//! resource judged (with the attributes sent, so an MCP call's arguments are on record), the
//! effect, the policy and the reason. Diagnostics go to stderr through `tracing`, so the
//! decision stream stays machine-readable.
//!
//! The raw token never enters a record: [`crate::identity::BearerToken`] is kept out of it.

use std::io::Write;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::console::ring::Ring;
use crate::decide::{Effect, Verdict};
use crate::identity::{Principal, SharedPrincipal};

mod resources;
pub use resources::{AllowedTools, Resources, SharedResources};

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
    /// The model an LLM call invokes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub resources: Resources,
    /// Declared tools the policy allowed (the other half of `denied_tools`).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub allowed_tools: AllowedTools,
    /// Declared tools the policy denied (reported even when `denied_tools: pass` let them by).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_tools: Vec<String>,
    /// What a filtered answer lost: tools of a `tools/list`, or models of a model listing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<String>,
    pub cerbos_call_ids: Vec<String>,
    /// Time spent asking Cerbos (its round trips, or the verdict cache), when it was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cerbos_ms: Option<f64>,
    pub latency_ms: f64,
}

/// The principal on record: `{"id", "roles", "attr"}` (never the token), shared with the
/// check that judged it, its JSON written once per remembered token (see
/// [`SharedPrincipal::json`]).
#[derive(Debug, Clone)]
pub struct PrincipalRecord(Arc<SharedPrincipal>);

impl std::ops::Deref for PrincipalRecord {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl Serialize for PrincipalRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.json().serialize(serializer)
    }
}

impl From<Principal> for PrincipalRecord {
    fn from(p: Principal) -> Self {
        Self::from(SharedPrincipal::new(p))
    }
}

/// Shares the check's principal, unless it holds the raw token (`pass_token_to_cerbos`):
/// records outlive checks (the console keeps the latest), and the token never enters one.
impl From<Arc<SharedPrincipal>> for PrincipalRecord {
    fn from(p: Arc<SharedPrincipal>) -> Self {
        if p.token.is_none() {
            return Self(p);
        }
        Self(SharedPrincipal::new(Principal {
            token: None,
            ..Principal::clone(&p)
        }))
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
    /// Derived roles that applied to the principal for this resource (Cerbos'
    /// `meta.effectiveDerivedRoles`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub derived_roles: Vec<String>,
    /// The attributes sent to Cerbos (for MCP calls: server, tool and the arguments judged).
    pub attr: Map<String, Value>,
}

/// Moves the verdict's parts into the record: records are built once per decision, after the
/// answer, and copying 21 attribute maps showed in profiles.
impl From<Verdict> for ResourceRecord {
    fn from(v: Verdict) -> Self {
        let reason_rule = v.reason_rule().map(str::to_owned);
        let reason = v.reason();
        // The only holder, unless a remembered decision shares the check.
        let check = Arc::unwrap_or_clone(v.check);
        Self {
            kind: check.kind,
            id: check.id,
            action: check.action,
            effect: v.effect,
            policy: v.policy.as_deref().map(str::to_owned),
            reason_rule,
            reason,
            derived_roles: v.derived_roles,
            attr: check.attr,
        }
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Where decision records go. Redaction happened before: records only hold what
/// [`crate::redact`] let through.
///
/// Records are serialised and written by one background thread, not on the request path: a
/// decision is answered without waiting for the log, and records that arrive together are
/// written in one system call. The queue is bounded; when it is full (the output stalls),
/// [`AuditLog::write`] waits rather than drop evidence, so a stalled log slows decisions down
/// instead of losing them. Dropping the log (shutdown, a reloaded configuration) writes what
/// is queued before returning. The writer then hands each record to the console's ring, when
/// there is one, so the console sees exactly what the log holds and costs a check nothing.
pub struct AuditLog {
    /// `None` once dropping (or for the in-memory log of tests).
    queue: Option<std::sync::mpsc::SyncSender<DecisionRecord>>,
    thread: Option<std::thread::JoinHandle<()>>,
    #[cfg(test)]
    memory: Option<std::sync::Mutex<Vec<Value>>>,
}

/// Records waiting to be written at most; a few seconds' worth at full speed.
const QUEUE_RECORDS: usize = 16 * 1024;

/// Where the writer thread puts lines.
enum Output {
    Stdout,
    File(std::fs::File),
}

impl Output {
    fn write_batch(&mut self, batch: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(batch).and_then(|()| out.flush())
            }
            // One write per batch: with O_APPEND, lines from two logs sharing the file (an
            // old and a reloaded configuration, briefly) do not interleave.
            Output::File(file) => file.write_all(batch),
        }
    }
}

impl AuditLog {
    pub fn new(
        config: &crate::config::AuditConfig,
        console: Option<Arc<Ring>>,
    ) -> std::io::Result<AuditLog> {
        let output = match config.output.file() {
            None => Output::Stdout,
            Some(path) => Output::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (queue, records) = std::sync::mpsc::sync_channel(QUEUE_RECORDS);
        let thread = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_records(&records, output, console.as_deref()))?;
        Ok(AuditLog {
            queue: Some(queue),
            thread: Some(thread),
            #[cfg(test)]
            memory: None,
        })
    }

    #[cfg(test)]
    pub fn memory() -> AuditLog {
        AuditLog {
            queue: None,
            thread: None,
            memory: Some(std::sync::Mutex::new(Vec::new())),
        }
    }

    #[cfg(test)]
    pub fn lines(&self) -> Vec<Value> {
        self.memory
            .as_ref()
            .and_then(|m| m.lock().ok().map(|l| l.clone()))
            .unwrap_or_default()
    }

    pub fn write(&self, record: DecisionRecord) {
        #[cfg(test)]
        if let Some(memory) = &self.memory {
            if let (Ok(mut lines), Ok(value)) = (memory.lock(), serde_json::to_value(&record)) {
                lines.push(value);
            }
            return;
        }
        if self.queue.as_ref().is_none_or(|q| q.send(record).is_err()) {
            tracing::error!("the decision log writer has stopped: a record was lost");
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long the writer rests after a batch. Records arriving meanwhile wait in the queue, so
/// under load the writer wakes a few hundred times a second instead of once per decision
/// (waking a thread costs a request more than queueing its record); an idle writer sleeps in
/// the queue and the next record wakes it at once.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// The writer thread: takes every record queued so far, writes them in one batch, repeats
/// until the log is dropped.
fn write_records(
    records: &std::sync::mpsc::Receiver<DecisionRecord>,
    mut output: Output,
    console: Option<&Ring>,
) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = records.recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            let start = batch.len();
            match serde_json::to_writer(&mut batch, &record) {
                Ok(()) => batch.push(b'\n'),
                Err(e) => {
                    batch.truncate(start);
                    tracing::error!(error = %e, "cannot serialise a decision record");
                }
            }
            if let Some(ring) = console {
                ring.push(record);
            }
            next = if batch.len() < 1024 * 1024 {
                records.try_recv().ok()
            } else {
                None
            };
        }
        if let Err(e) = output.write_batch(&batch) {
            tracing::error!(error = %e, "cannot write the decision log");
        }
        batch.clear();
        std::thread::sleep(BATCH_PAUSE);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{AuditConfig, AuditOutput};

    #[test]
    fn a_record_shares_the_principal_but_never_holds_its_token() {
        let principal = |token: Option<&str>| {
            SharedPrincipal::new(Principal {
                id: "alice".into(),
                roles: vec!["support".into()],
                attr: Map::new(),
                token: token.map(crate::identity::BearerToken::for_tests),
            })
        };
        let shared = principal(None);
        let PrincipalRecord(kept) = PrincipalRecord::from(Arc::clone(&shared));
        assert!(Arc::ptr_eq(&kept, &shared), "shared, not copied");

        let with_token = principal(Some("header.payload.signature"));
        let record = PrincipalRecord::from(Arc::clone(&with_token));
        assert!(record.token.is_none());
        assert_eq!((record.id.as_str(), record.roles.len()), ("alice", 1));
        assert_eq!(
            serde_json::to_value(&record).unwrap(),
            serde_json::json!({"id": "alice", "roles": ["support"], "attr": {}})
        );
    }

    pub(crate) fn record(n: usize) -> DecisionRecord {
        DecisionRecord {
            time: now_rfc3339(),
            phase: "request",
            decision_id: format!("d-{n}"),
            request_id: format!("r-{n}"),
            trace_id: None,
            effect: "allow",
            dry_run: false,
            status: 200,
            reason: "allowed".into(),
            refusal: None,
            principal: None,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            route: None,
            format: None,
            model: None,
            resources: Resources::default(),
            allowed_tools: AllowedTools::default(),
            denied_tools: Vec::new(),
            hidden: Vec::new(),
            cerbos_call_ids: Vec::new(),
            cerbos_ms: None,
            latency_ms: 0.1,
        }
    }

    #[test]
    fn every_queued_record_is_written_in_order_by_the_time_the_log_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = AuditLog::new(
            &AuditConfig {
                output: AuditOutput::File(path.clone()),
                ..AuditConfig::default()
            },
            None,
        )
        .unwrap();
        for n in 0..500 {
            log.write(record(n));
        }
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["decision_id"].to_string())
            .collect();
        let expected: Vec<String> = (0..500).map(|n| format!("\"d-{n}\"")).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn the_writer_hands_every_record_to_the_console_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Arc::new(Ring::new(100, &crate::metrics::Metrics::new()));
        let log = AuditLog::new(
            &AuditConfig {
                output: AuditOutput::File(dir.path().join("decisions.jsonl")),
                ..AuditConfig::default()
            },
            Some(Arc::clone(&ring)),
        )
        .unwrap();
        for n in 0..3 {
            log.write(record(n));
        }
        drop(log);
        let ids: Vec<String> = ring
            .snapshot()
            .iter()
            .map(|e| e.record.decision_id.clone())
            .collect();
        assert_eq!(ids, ["d-0", "d-1", "d-2"]);
    }
}
