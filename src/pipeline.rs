//! The one place the stages are chained: identity → extract → decide → respond → audit.
//! Transport-agnostic: ext_authz decodes into a [`CheckInput`] and encodes the [`Outcome`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Map, Value};
use tracing::Instrument;

use crate::audit::{
    AllowedTools, AuditLog, DecisionRecord, PrincipalRecord, Resources, now_rfc3339,
};
use crate::config::{
    Config, DeniedToolCall, DeniedTools, ForcedDeniedTool, Format, ModelToolCalls, RouteConfig,
    SessionBinding, UnclassifiedRoutes,
};
use crate::decide::vocabulary::Vocabulary;
use crate::decide::{DecideError, Decision, PolicyEngine, Recall, Subject};
use crate::extract::tool_schemas::ToolSchemas;
use crate::extract::{
    self, AgentRequest, ExtractError, HttpRequest, McpOperation, McpRequest, Router,
};
use crate::handoff::Handoff;
use crate::headers::Headers;
use crate::identity::session::SessionSeal;
use crate::identity::{Authenticator, Principal, SharedPrincipal};
use crate::metrics::Metrics;
use crate::redact::Redaction;
use crate::respond::Outcome;
use crate::respond::refusal::{AnswerSettings, Dialect, Refusal};
use crate::respond::tool_calls::ToolCall;
use crate::telemetry;

/// Header telling the upstream who was authorised.
pub const PRINCIPAL_HEADER: &str = "x-agent-authz-principal";
/// Header carrying the decision id, which joins the upstream's logs with ours.
pub const DECISION_ID_HEADER: &str = "x-agent-authz-decision-id";
/// Response header listing denied tools, when `denied_tools_response_header` is on.
pub const DENIED_TOOLS_HEADER: &str = "x-agent-authz-denied-tools";
/// Set by ext_authz on a request whose denied tools the ext_proc leg must strip, removed by the
/// leg when it has: the shipped Envoy configs refuse a request that still carries it at the
/// router (no leg ran), so a strip decision can never silently go unapplied.
pub const STRIP_PENDING_HEADER: &str = "x-agent-authz-strip-pending";
/// The MCP session header, sealed toward clients and unsealed toward servers.
pub const MCP_SESSION_HEADER: &str = "mcp-session-id";
/// Envoy marks a body cut at `max_request_bytes` with this header.
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// A request as the transport delivered it.
#[derive(Debug, Clone, Default)]
pub struct CheckInput {
    pub method: String,
    /// The request target as Envoy saw it (may include a query string).
    pub path: String,
    /// Lower-cased header names.
    pub headers: Headers,
    pub body: Bytes,
    /// Envoy metadata namespaces (`metadata_context.filter_metadata`) as JSON.
    pub metadata: HashMap<String, Value>,
    /// The mTLS peer identity Envoy verified (a SPIFFE id in a mesh); empty without mTLS.
    pub source_principal: String,
    /// The route's `ExtAuthzPerRoute.check_settings.context_extensions` (Envoy configuration,
    /// never request data): they name the route's format (see `extract::routing`).
    pub context_extensions: HashMap<String, String>,
}

pub struct Pipeline<E> {
    router: Router,
    authenticator: Authenticator,
    vocabulary: Vocabulary,
    engine: E,
    unclassified: UnclassifiedRoutes,
    denied_tools: DeniedTools,
    forced_denied_tool: ForcedDeniedTool,
    denied_tools_header: bool,
    model_tool_calls: ModelToolCalls,
    denied_tool_call: DeniedToolCall,
    output_headers: bool,
    max_body_bytes: usize,
    max_list_response_bytes: usize,
    max_checks: usize,
    in_flight: tokio::sync::Semaphore,
    tool_schemas: Arc<ToolSchemas>,
    azure_deployments: HashMap<String, String>,
    protected_prefixes: Vec<String>,
    answers: AnswerSettings,
    dry_run: bool,
    redaction: Redaction,
    /// Seals MCP session ids to their principal; `None` with `mcp.session_binding: off`.
    sessions: Option<SessionSeal>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
}

/// What happened, accumulated as the stages run, then logged once.
struct Trace {
    started: Instant,
    decision_id: String,
    request_id: String,
    principal: Option<Arc<SharedPrincipal>>,
    route: Option<RouteConfig>,
    /// The format the body was read in (the route's).
    format: Option<Format>,
    request: Option<AgentRequest>,
    decision: Decision,
    denied_tools: Vec<String>,
    /// The server's own id of the MCP session the request belongs to (unsealed).
    session: Option<String>,
}

impl<E: PolicyEngine> Pipeline<E> {
    pub fn new(
        config: &Config,
        authenticator: Authenticator,
        engine: E,
        audit: AuditLog,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            router: Router::new(&config.routes),
            authenticator,
            vocabulary: Vocabulary::new(&config.vocabulary),
            engine,
            unclassified: config.unclassified_routes,
            denied_tools: config.denied_tools,
            forced_denied_tool: config.forced_denied_tool,
            denied_tools_header: config.denied_tools_response_header,
            model_tool_calls: config.model_tool_calls,
            denied_tool_call: config.denied_tool_call,
            output_headers: config.cerbos.output_headers,
            max_body_bytes: config.server.max_request_bytes,
            max_list_response_bytes: config.mcp.max_list_response_bytes,
            max_checks: config.server.max_checks_per_request,
            in_flight: tokio::sync::Semaphore::new(config.server.max_concurrent_checks),
            tool_schemas: Arc::default(),
            azure_deployments: config.azure_openai.deployments.clone(),
            protected_prefixes: config.identity.protected_header_prefixes.clone(),
            answers: AnswerSettings {
                pdp_unavailable_status: config.cerbos.unavailable_status,
                mcp_denied_status: config.mcp.denied_http_status,
            },
            dry_run: config.dry_run,
            redaction: Redaction::new(&config.audit),
            sessions: match config.mcp.session_binding {
                SessionBinding::Seal => Some(SessionSeal::per_process()),
                SessionBinding::Off => None,
            },
            audit,
            metrics,
        }
    }

    /// Refuses a `tools/call` whose argument types contradict the schema the server published.
    fn check_argument_types(
        &self,
        route: &RouteConfig,
        mcp: &McpRequest,
    ) -> Result<(), ExtractError> {
        let server = route.mcp_server.as_deref().unwrap_or_default();
        for message in &mcp.messages {
            if let McpOperation::ToolCall { name, arguments } = &message.operation {
                self.tool_schemas
                    .check(server, name, arguments)
                    .map_err(|why| ExtractError::Mcp {
                        id: message.id.clone(),
                        code: crate::extract::mcp::INVALID_PARAMS,
                        message: format!("{name}: {why}"),
                    })?;
            }
        }
        Ok(())
    }

    /// Seals sessions with the keys of `mcp.session_keys_file` (when binding is on).
    pub fn with_session_keys(mut self, seal: SessionSeal) -> Self {
        if self.sessions.is_some() {
            self.sessions = Some(seal);
        }
        self
    }

    /// The id to hand `principal` for the session id an MCP server minted; the server's id
    /// when binding is off.
    pub fn seal_session(&self, principal: &str, session: &str) -> Option<String> {
        self.sessions.as_ref().map(|s| s.seal(principal, session))
    }

    /// The server's id of the session a request names, if the request is `principal`'s to
    /// send. Requests without a session id pass (the server decides whether it needs one).
    fn unseal_session(
        &self,
        principal: &Principal,
        headers: &Headers,
    ) -> Result<Option<String>, Refusal> {
        let (Some(seal), Some(sealed)) = (&self.sessions, headers.get(MCP_SESSION_HEADER)) else {
            return Ok(None);
        };
        seal.unseal(&principal.id, sealed.trim())
            .map(|session| Some(session.to_owned()))
            .ok_or(Refusal::UnknownSession)
    }

    /// Shares the store of learnt tool schemas (it outlives configuration reloads).
    pub fn with_tool_schemas(mut self, schemas: Arc<ToolSchemas>) -> Self {
        self.tool_schemas = schemas;
        self
    }

    /// Learns the tool schemas a `tools/list` answer published.
    pub fn learn_tool_schemas(&self, handoff: &Handoff, tools: &[Value]) {
        if let Some(list) = &handoff.tools_list {
            self.tool_schemas.learn(&list.server, tools);
        }
    }

    /// Asks the engine, timing the round trip (also for the console's access checks).
    pub(crate) async fn ask(
        &self,
        principal: &Arc<SharedPrincipal>,
        checks: Vec<crate::decide::ResourceCheck>,
        request_id: &str,
    ) -> Result<Decision, DecideError> {
        let asked = Instant::now();
        let answer = self.engine.check(principal, checks, request_id).await;
        let error = answer.as_ref().err().map(DecideError::label);
        self.metrics.observe_cerbos(asked.elapsed(), error);
        answer.map(|decision| Decision {
            engine_ms: Some(asked.elapsed().as_secs_f64() * 1000.0),
            ..decision
        })
    }

    /// [`PolicyEngine::recall`], timed as [`Self::ask`] times an answer.
    fn recall(
        &self,
        principal: &SharedPrincipal,
        derivation: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Recall {
        let asked = Instant::now();
        match self.engine.recall(principal, derivation) {
            Recall::Answered(decision) => {
                self.metrics.observe_cerbos(asked.elapsed(), None);
                Recall::Answered(Decision {
                    engine_ms: Some(asked.elapsed().as_secs_f64() * 1000.0),
                    ..decision
                })
            }
            unknown => unknown,
        }
    }

    /// Readiness: signing keys loaded, and Cerbos answering.
    pub async fn readiness(&self) -> (bool, bool) {
        (self.authenticator.keys_loaded(), self.engine.ready().await)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The console identifies its viewers exactly as traffic is identified.
    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// Judges one request. Never fails: every problem becomes a refusal.
    pub async fn check(&self, input: CheckInput) -> Outcome {
        let span = telemetry::check_span(&input.headers);
        self.check_in_span(input).instrument(span).await
    }

    async fn check_in_span(&self, input: CheckInput) -> Outcome {
        let request_id = input
            .headers
            .get("x-request-id")
            .filter(|id| !id.is_empty())
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut trace = Trace {
            started: Instant::now(),
            decision_id: uuid::Uuid::new_v4().to_string(),
            request_id,
            principal: None,
            route: None,
            format: None,
            request: None,
            decision: Decision::default(),
            denied_tools: Vec::new(),
            session: None,
        };
        let (result, dialect) = self.run(&input, &mut trace).await;
        let principal_id = trace
            .principal
            .as_ref()
            .map_or("", |p| p.id.as_str())
            .to_owned();
        let dry_run = self.dry_run || trace.route.as_ref().is_some_and(|r| r.dry_run);
        let (outcome, status, reason, refusal, dry_run) = match result {
            Ok(()) => {
                let verb = match self.denied_tools {
                    DeniedTools::Strip => "to be stripped by ext_proc",
                    DeniedTools::Pass | DeniedTools::Reject => "passed",
                };
                let reason = if trace.denied_tools.is_empty() {
                    "allowed".to_owned()
                } else {
                    format!(
                        "allowed; denied tools {verb}: {}",
                        trace.denied_tools.join(", ")
                    )
                };
                (
                    self.allow(&input, &trace, &reason),
                    200,
                    reason,
                    None,
                    false,
                )
            }
            // Dry-run rolls out policy: only policy denials are waived, never identity,
            // parsing or PDP failures, nor an unclassified route (`unclassified_routes: deny`
            // is a configuration decision, not a policy being tried out).
            Err(refusal @ Refusal::PolicyDenied(_)) if dry_run => {
                let reason = format!("dry-run, would deny: {}", refusal.reason(&principal_id));
                (
                    self.allow(&input, &trace, &reason),
                    200,
                    reason,
                    Some(refusal.label()),
                    true,
                )
            }
            Err(refusal) => {
                let reason = refusal.reason(&principal_id);
                let dialect = with_request_ids(dialect, &input.body);
                let denial = refusal.answer(&principal_id, &dialect, self.answers);
                let status = denial.status;
                let metadata = outcome::metadata(&trace, "deny", &reason);
                (
                    Outcome::Deny { denial, metadata },
                    status,
                    reason,
                    Some(refusal.label()),
                    false,
                )
            }
        };
        let record = evidence::record(&input, trace, status, reason, refusal, dry_run);
        let span = tracing::Span::current();
        span.record("decision_id", record.decision_id.as_str());
        span.record("effect", record.effect);
        if let Some(p) = &record.principal {
            span.record("principal", p.id.as_str());
        }
        self.count(&record);
        self.audit.write(record);
        outcome
    }

    async fn run(&self, input: &CheckInput, trace: &mut Trace) -> (Result<(), Refusal>, Dialect) {
        let path = extract::path_without_query(&input.path);
        // Envoy's route (its context extensions) decides; else agent-authz's own table.
        let route = match self
            .router
            .route(&input.context_extensions, &input.method, path)
        {
            Ok(route) => route,
            Err(why) => {
                let dialect = Dialect::Llm(Format::OpenaiChat);
                return (Err(Refusal::RouteMisconfigured(why)), dialect);
            }
        };
        trace.route = route.clone();
        // Early refusals are counted and answered under the route's dialect.
        trace.format = route.as_ref().map(|r| r.format);
        let mut dialect = match route.as_ref().map(|r| r.format) {
            Some(Format::Mcp) => Dialect::Mcp {
                ids: vec![],
                batch: false,
            },
            Some(format) => Dialect::Llm(format),
            None => Dialect::Llm(Format::OpenaiChat),
        };
        // Past the concurrency limit, shed with a clear 503 rather than queue without bound;
        // never let a request through unjudged.
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return (Err(Refusal::Overloaded), dialect);
        };
        if let Err(e) = extract::check_normalized(path, route.as_ref().map(|r| r.format)) {
            return (Err(Refusal::BadRequest(e)), dialect);
        }
        let principal = match self
            .authenticator
            .authenticate(&input.headers, &input.metadata, &input.source_principal)
            .await
        {
            Ok(principal) => principal,
            Err(e) => return (Err(Refusal::Unauthenticated(e)), dialect),
        };
        // A remembered token's principal is shared, not copied (its claims showed in
        // profiles); redacting claims makes this check its own copy.
        let principal = if self.redaction.redacts_claims() {
            let mut own = Principal::clone(&principal);
            self.redaction.claims(&mut own.attr);
            SharedPrincipal::new(own)
        } else {
            principal
        };
        // The trace keeps the principal; the stages below borrow it.
        let principal: &Arc<SharedPrincipal> = trace.principal.insert(principal);
        let Some(route) = route else {
            return match self.unclassified {
                UnclassifiedRoutes::Allow => (Ok(()), dialect),
                UnclassifiedRoutes::Deny => {
                    (Err(Refusal::UnclassifiedRoute(path.to_owned())), dialect)
                }
            };
        };
        // The route alone names the format: a client never chooses how its body is judged.
        let format = route.format;
        let mut request = match self.read_body(format, input, path) {
            Ok(request) => request,
            Err(e) => return (Err(Refusal::BadRequest(e)), dialect),
        };
        // An Azure deployment is judged as the model it serves, when the config says which.
        if let (Format::AzureOpenaiChat | Format::AzureOpenaiResponses, AgentRequest::Llm(llm)) =
            (format, &mut request)
            && let Some(model) = self.azure_deployments.get(&llm.model)
        {
            llm.model = model.clone();
        }
        if let AgentRequest::Mcp(mcp) = &request {
            dialect = Dialect::Mcp {
                ids: mcp.messages.iter().map(|m| m.id.clone()).collect(),
                batch: mcp.batch,
            };
            match self.unseal_session(principal, &input.headers) {
                Ok(session) => trace.session = session,
                Err(refusal) => return (Err(refusal), dialect),
            }
            if let Err(e) = self.check_argument_types(&route, mcp) {
                return (Err(Refusal::BadRequest(e)), dialect);
            }
        }
        // An LLM request's checks follow from its route, format, model and tools alone: a
        // repeated one (an agent loop resends them every turn) is answered with the decision
        // remembered for them, its checks neither built nor keyed again.
        let derivation = || self.vocabulary.derivation(&route, format, &request);
        let recall = match self.recall(principal, derivation) {
            Recall::Answered(decision) => {
                trace.request = Some(request);
                trace.decision = decision;
                return (self.judge(trace), dialect);
            }
            Recall::Unknown(key) => key,
        };
        let mut checks = self.vocabulary.checks(&route, format, &request);
        for check in &mut checks {
            if let Some(arguments) = check.attr.get_mut("arguments") {
                self.redaction.arguments(arguments);
            }
        }
        trace.request = Some(request);
        if checks.len() > self.max_checks {
            let too_many = ExtractError::TooManyResources {
                count: checks.len(),
                limit: self.max_checks,
            };
            return (Err(Refusal::BadRequest(too_many)), dialect);
        }
        match self.ask(principal, checks, &trace.request_id).await {
            Ok(decision) => {
                if let Some(key) = recall {
                    self.engine.remember(key, &decision);
                }
                trace.decision = decision;
            }
            Err(e) => return (Err(Refusal::PolicyUnavailable(e)), dialect),
        }
        (self.judge(trace), dialect)
    }

    fn read_body(
        &self,
        format: Format,
        input: &CheckInput,
        path: &str,
    ) -> Result<AgentRequest, ExtractError> {
        if input
            .headers
            .get(PARTIAL_BODY_HEADER)
            .is_some_and(|v| v == "true")
        {
            return Err(ExtractError::TruncatedBody);
        }
        if input.body.len() > self.max_body_bytes {
            return Err(ExtractError::BodyTooLarge {
                limit: self.max_body_bytes,
            });
        }
        if format == Format::Mcp {
            extract::mcp::refuse_legacy_messages(&input.method, &input.path)?;
        }
        let declared = input
            .headers
            .get("content-length")
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if input.body.is_empty()
            && (declared > 0 || input.headers.contains_key("transfer-encoding"))
        {
            tracing::warn!(
                path,
                "request has a body but Envoy sent none: set with_request_body on the ext_authz filter"
            );
        }
        extract::extract(
            format,
            &HttpRequest {
                method: &input.method,
                path,
                headers: &input.headers,
                body: &input.body,
            },
        )
    }

    /// Applies the verdicts: any denied model or MCP message refuses the request; denied
    /// declared tools refuse it, pass, or are stripped by the ext_proc leg, as configured. A
    /// denied tool that `tool_choice` forces is refused in strip mode unless
    /// `forced_denied_tool: auto`.
    fn judge(&self, trace: &mut Trace) -> Result<(), Refusal> {
        let (forced, declared): (&[String], &[extract::DeclaredTool]) = match &trace.request {
            Some(AgentRequest::Llm(llm)) => (&llm.forced_tools, &llm.tools),
            _ => (&[], &[]),
        };
        let tool_blocks = |key: &str| match self.denied_tools {
            DeniedTools::Reject => true,
            DeniedTools::Pass => false,
            DeniedTools::Strip => {
                (self.forced_denied_tool == ForcedDeniedTool::Reject
                    && forced.iter().any(|f| f == key))
                    || declared.iter().any(|t| !t.strippable && t.has_key(key))
            }
        };
        let denied: Vec<_> = trace
            .decision
            .verdicts
            .iter()
            .filter(|v| !v.effect.allows())
            .collect();
        trace.denied_tools = denied
            .iter()
            .filter_map(|v| match &v.check.subject {
                Subject::Tool(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        let mut blocking: Vec<_> = denied
            .into_iter()
            .filter(|v| match &v.check.subject {
                Subject::Tool(name) => tool_blocks(name),
                Subject::Model(_) | Subject::McpMessage(_) | Subject::Console => true,
            })
            .cloned()
            .collect();
        if blocking.is_empty() {
            return Ok(());
        }
        // Report the model first: it is the question the caller most needs answered.
        blocking.sort_by_key(|v| !matches!(v.check.subject, Subject::Model(_)));
        Err(Refusal::PolicyDenied(blocking))
    }
}

/// An MCP refusal decided before the body was read (identity, path) still echoes the JSON-RPC
/// id when the body has a readable one, so the client can match the error to its request.
fn with_request_ids(dialect: Dialect, body: &[u8]) -> Dialect {
    match dialect {
        Dialect::Mcp { ids, batch } if ids.is_empty() => {
            let id_of = |m: &Value| {
                m.get("id")
                    .filter(|id| id.is_string() || id.is_number())
                    .cloned()
            };
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Array(items)) => Dialect::Mcp {
                    ids: items.iter().map(id_of).collect(),
                    batch: true,
                },
                Ok(message) => Dialect::Mcp {
                    ids: vec![id_of(&message)],
                    batch: false,
                },
                Err(_) => Dialect::Mcp { ids, batch },
            }
        }
        other => other,
    }
}

mod answers;
mod evidence;
mod outcome;

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
