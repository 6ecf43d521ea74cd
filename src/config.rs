//! The configuration file: what an operator writes, checked strictly at start.
//!
//! Every struct denies unknown keys and every field has a documented default, so a typo is a
//! start-up error naming the key (`identity.jwt.audience: unknown field ...`) rather than a
//! silently ignored setting. [`Config::load`] parses and then validates the cross-field rules
//! that serde cannot express (e.g. "HMAC algorithms are refused"). The README's configuration
//! reference mirrors this file; keep them together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Errors found while loading the configuration. Each names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gRPC service listens and how large a request it accepts.
    #[serde(default)]
    pub server: ServerConfig,
    /// How the caller is identified.
    pub identity: IdentityConfig,
    /// The Cerbos PDP that makes every decision.
    #[serde(default)]
    pub cerbos: CerbosConfig,
    /// Path prefix → request format. The first matching prefix wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// What happens to a request whose path matches no route.
    #[serde(default)]
    pub unclassified_routes: UnclassifiedRoutes,
    /// What happens when a request declares tools the principal may not use.
    #[serde(default)]
    pub denied_tools: DeniedTools,
    /// Add `x-agent-authz-denied-tools: a,b` to the response when declared tools were denied.
    #[serde(default)]
    pub denied_tools_response_header: bool,
    /// With `denied_tools: strip`, what happens when `tool_choice` forces a denied tool.
    #[serde(default)]
    pub forced_denied_tool: ForcedDeniedTool,
    /// Judge the tool calls a model's answer carries before the agent runs them (the ext_proc
    /// leg reads the answers of allowed LLM requests); routes may override it.
    #[serde(default)]
    pub model_tool_calls: ModelToolCalls,
    /// With `model_tool_calls: judge`, what a denied call becomes in the answer.
    #[serde(default)]
    pub denied_tool_call: DeniedToolCall,
    /// Names sent to Cerbos (resource kinds and actions).
    #[serde(default)]
    pub vocabulary: VocabularyConfig,
    /// How MCP denials are answered.
    #[serde(default)]
    pub mcp: McpConfig,
    /// Evaluate and log policy denials but let requests through (marked `dry_run` in the log),
    /// to roll a policy out safely. Identity, parsing and Cerbos failures are still enforced.
    #[serde(default)]
    pub dry_run: bool,
    /// The decision log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The admin HTTP listener (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Trace export.
    #[serde(default)]
    pub tracing: TracingConfig,
    /// The decision cache (off by default).
    #[serde(default)]
    pub cache: CacheConfig,
    /// The decision console on the admin listener (`/console`, `/api/v1/`).
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub azure_openai: AzureOpenaiConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureOpenaiConfig {
    /// Deployment name → the model it serves. Azure deployment names are arbitrary, so a
    /// policy about models is written against the mapped names; an unmapped deployment is
    /// judged under its own name.
    #[serde(default)]
    pub deployments: std::collections::HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console; it needs the admin listener (`admin.address`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Decision records kept in memory for the console; the oldest is dropped past this.
    #[serde(default = "default_console_retain")]
    pub retain: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retain: default_console_retain(),
        }
    }
}

fn default_console_retain() -> usize {
    10_000
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Reuse Cerbos verdicts for identical questions (same principal, attributes, resource,
    /// action). A policy change reaches cached questions when their entries expire.
    #[serde(default)]
    pub enabled: bool,
    /// How long a verdict is reused.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Most verdicts kept (a whole-request entry counts one per verdict it holds).
    #[serde(default = "default_cache_entries")]
    pub max_entries: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl: default_cache_ttl(),
            max_entries: default_cache_entries(),
        }
    }
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_cache_entries() -> u64 {
    100_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP traces endpoint (e.g. `http://127.0.0.1:4318/v1/traces`); none: no export.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Timeout of one export.
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: default_service_name(),
            export_timeout: default_export_timeout(),
        }
    }
}

fn default_service_name() -> String {
    "agent-authz".to_owned()
}

fn default_export_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `stdout` (default) or a file path (appended to).
    #[serde(default)]
    pub output: AuditOutput,
    /// Paths replaced by `"****"` before anything leaves agent-authz (decision log, Envoy
    /// metadata, Cerbos request): `arguments.<path>` (MCP call and prompt arguments) or
    /// `claims.<path>` (principal attributes). Steps are keys (`"quoted"` when they hold dots)
    /// and array steps `[*]` / `[n]` (see [`crate::redact`]); a path that does not parse is a
    /// start-up error. A policy cannot decide on a masked field.
    #[serde(default)]
    pub mask: Vec<String>,
    /// Paths removed from the log, same syntax as `mask`.
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AuditOutput {
    #[default]
    #[serde(skip)]
    Stdout,
    File(PathBuf),
}

impl AuditOutput {
    /// `stdout` written in the file means standard output.
    pub fn file(&self) -> Option<&Path> {
        match self {
            AuditOutput::File(p) if p.as_os_str() != "stdout" => Some(p),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener; `null` turns it off.
    #[serde(default = "default_admin_address")]
    pub address: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
        }
    }
}

fn default_admin_address() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9192)))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the ext_authz gRPC listener.
    #[serde(default = "default_grpc_address")]
    pub grpc_address: SocketAddr,
    /// Largest request body judged, in bytes. Set it to Envoy's
    /// `with_request_body.max_request_bytes`; a larger body is refused with 413.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Most resources one request may ask about (a model plus its tools, or an MCP batch);
    /// more is refused with 400 rather than fanned out to Cerbos.
    #[serde(default = "default_max_checks")]
    pub max_checks_per_request: usize,
    /// Checks judged at once; past it a request is shed with 503 (never let through).
    #[serde(default = "default_max_concurrent_checks")]
    pub max_concurrent_checks: usize,
    /// How often the configuration file is checked for changes (also reloaded on SIGHUP);
    /// `0s` turns watching off.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub config_reload_interval: Duration,
    /// Threads that run checks; absent: one per CPU available to the process. Read at start
    /// only. Where the service shares few CPUs with Envoy and Cerbos, fewer workers than CPUs
    /// spend less time waking each other (see bench/RESULTS.md).
    #[serde(default)]
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_address: default_grpc_address(),
            max_request_bytes: default_max_request_bytes(),
            max_checks_per_request: default_max_checks(),
            max_concurrent_checks: default_max_concurrent_checks(),
            config_reload_interval: default_reload_interval(),
            worker_threads: None,
        }
    }
}

fn default_grpc_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9191))
}

fn default_max_request_bytes() -> usize {
    1024 * 1024
}

fn default_max_concurrent_checks() -> usize {
    4096
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_max_checks() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Where the verified claims come from.
    #[serde(default)]
    pub source: IdentitySource,
    /// JWT verification (required when `source: jwt`).
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Where Envoy's `jwt_authn` filter put the verified payload (used when
    /// `source: envoy_jwt_authn`).
    #[serde(default)]
    pub envoy_jwt_authn: EnvoyJwtAuthnConfig,
    /// How claims become the Cerbos principal.
    #[serde(default)]
    pub principal: PrincipalConfig,
    /// Request headers that only agent-authz may set: any header whose name starts with one of
    /// these prefixes is removed from the request before it reaches the upstream.
    #[serde(default = "default_protected_header_prefixes")]
    pub protected_header_prefixes: Vec<String>,
    /// Workloads identified by their mesh identity (the mTLS peer's SPIFFE id, which Envoy
    /// verified) when they present no bearer token: agents that are services.
    #[serde(default)]
    pub mesh_peers: Vec<MeshPeerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshPeerConfig {
    /// The peer's SPIFFE id as Envoy reports it (`attributes.source.principal`), matched exactly.
    pub spiffe_id: String,
    /// The Cerbos principal id.
    pub id: String,
    pub roles: Vec<String>,
    /// Principal attributes.
    #[serde(default)]
    pub attr: serde_json::Map<String, serde_json::Value>,
}

fn default_protected_header_prefixes() -> Vec<String> {
    vec!["x-agent-authz-".to_owned(), "x-authz-".to_owned()]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// Verify the bearer token in `Authorization` ourselves.
    #[default]
    Jwt,
    /// Trust the payload Envoy's `jwt_authn` filter verified and placed in metadata.
    EnvoyJwtAuthn,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// Required `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; the token must name at least one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms. HMAC (`HS*`) and `none` are refused.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Tokens longer than this are refused without being parsed.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned(), "ES256".to_owned()]
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_max_token_bytes() -> usize {
    8 * 1024
}

/// A JWKS from a file (read at start, then watched) or a URL (fetched at start and refreshed).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksSource {
    /// Path to a JWKS JSON file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// HTTP(S) URL of a JWKS document.
    #[serde(default)]
    pub url: Option<String>,
    /// How often the URL is fetched again. The last good key set is kept when a fetch fails.
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Timeout of one fetch.
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// How long a token naming an unknown `kid` waits for the JWKS fetch it triggers; the
    /// fetch goes on in the background. Keep it below Envoy's ext_authz check timeout minus
    /// `cerbos.timeout`, or a slow identity provider turns key rotation into 503s.
    #[serde(default = "default_unknown_kid_wait", with = "humantime_serde")]
    pub unknown_kid_wait: Duration,
}

fn default_unknown_kid_wait() -> Duration {
    Duration::from_millis(250)
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyJwtAuthnConfig {
    /// Metadata namespace (list it in ext_authz `metadata_context_namespaces`).
    #[serde(default = "default_jwt_authn_namespace")]
    pub namespace: String,
    /// Key under which `jwt_authn` stored the payload (`payload_in_metadata`).
    #[serde(default = "default_jwt_authn_payload_key")]
    pub payload_key: String,
}

impl Default for EnvoyJwtAuthnConfig {
    fn default() -> Self {
        Self {
            namespace: default_jwt_authn_namespace(),
            payload_key: default_jwt_authn_payload_key(),
        }
    }
}

fn default_jwt_authn_namespace() -> String {
    "envoy.filters.http.jwt_authn".to_owned()
}

fn default_jwt_authn_payload_key() -> String {
    "jwt_payload".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Claim holding the principal id.
    #[serde(default = "default_id_claim")]
    pub id_claim: String,
    /// Dot-separated path to the roles claim: an array of strings or a space-separated string.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Roles given when the token carries none (Cerbos needs at least one role).
    #[serde(default = "default_roles")]
    pub default_roles: Vec<String>,
    /// Which claims become principal attributes: `all`, or a list of claim names.
    #[serde(default)]
    pub attributes: AttributeSelection,
    /// Send the raw token to Cerbos as `auxData.jwt` (policies read `request.auxData.jwt`).
    #[serde(default)]
    pub pass_token_to_cerbos: bool,
}

impl Default for PrincipalConfig {
    fn default() -> Self {
        Self {
            id_claim: default_id_claim(),
            roles_claim: default_roles_claim(),
            default_roles: default_roles(),
            attributes: AttributeSelection::default(),
            pass_token_to_cerbos: false,
        }
    }
}

fn default_id_claim() -> String {
    "sub".to_owned()
}

fn default_roles_claim() -> String {
    "roles".to_owned()
}

fn default_roles() -> Vec<String> {
    vec!["authenticated".to_owned()]
}

/// `attributes: all` or `attributes: [claim, ...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AttributeSelection {
    #[default]
    #[serde(skip)]
    All,
    Keyword(AllKeyword),
    Claims(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllKeyword {
    All,
}

impl AttributeSelection {
    /// `None` means every claim.
    pub fn claims(&self) -> Option<&[String]> {
        match self {
            AttributeSelection::All | AttributeSelection::Keyword(AllKeyword::All) => None,
            AttributeSelection::Claims(c) => Some(c),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CerbosConfig {
    /// gRPC address of the PDP: `http://host:port` (plaintext) or `https://host:port` (TLS with
    /// the system roots).
    #[serde(default = "default_cerbos_address")]
    pub address: String,
    /// Deadline of one CheckResources call; past it the request fails closed.
    #[serde(default = "default_cerbos_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `policyVersion` sent on the principal and every resource.
    #[serde(default = "default_policy_version")]
    pub policy_version: String,
    /// Cerbos scope sent on the principal and every resource (empty: none).
    #[serde(default)]
    pub scope: String,
    /// Cerbos' `server.requestLimits.maxResourcesPerRequest`; larger requests are split.
    #[serde(default = "default_max_resources")]
    pub max_resources_per_request: usize,
    /// HTTP status answered when the PDP cannot be reached or errs (fail closed).
    #[serde(default = "default_unavailable_status")]
    pub unavailable_status: u16,
    /// Forward rule outputs to the upstream as headers: on an allowed request, every entry of an
    /// allowing rule's output object whose key starts with `x-authz-` becomes that request
    /// header (the convention of Cerbos' Envoy example). Keep `x-authz-` protected.
    #[serde(default)]
    pub output_headers: bool,
}

impl Default for CerbosConfig {
    fn default() -> Self {
        Self {
            address: default_cerbos_address(),
            timeout: default_cerbos_timeout(),
            policy_version: default_policy_version(),
            scope: String::new(),
            max_resources_per_request: default_max_resources(),
            unavailable_status: default_unavailable_status(),
            output_headers: false,
        }
    }
}

fn default_cerbos_address() -> String {
    "http://127.0.0.1:3593".to_owned()
}

fn default_cerbos_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_policy_version() -> String {
    "default".to_owned()
}

fn default_max_resources() -> usize {
    50
}

fn default_unavailable_status() -> u16 {
    503
}

/// One route of agent-authz's own table, matched the way Envoy matches its routes: exactly one
/// of `path` (exact), `path_prefix` (alias `prefix`) and `safe_regex`, optionally restricted to
/// `methods`. Envoy's per-route `context_extensions` take precedence over this table (see
/// `extract::routing`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name in logs and in the `route` attribute; defaults to its match.
    #[serde(default)]
    pub name: Option<String>,
    /// The exact request path (query string excluded).
    #[serde(default)]
    pub path: Option<String>,
    /// Request path prefix (query string excluded), matched on segment boundaries.
    #[serde(default, alias = "prefix")]
    pub path_prefix: Option<String>,
    /// A regular expression the whole path must match (RE2 syntax, as Envoy's `safe_regex`).
    #[serde(default)]
    pub safe_regex: Option<RouteRegex>,
    /// The HTTP methods the route matches (upper case); every method when empty.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The body format spoken on this route.
    pub format: Format,
    /// MCP only: the server name sent as `attr.server` (and as the id of session-level checks).
    #[serde(default)]
    pub mcp_server: Option<String>,
    /// MCP only: overrides the Cerbos resource kind for this server (e.g. `mcp::support`).
    #[serde(default)]
    pub resource_kind: Option<String>,
    /// Dry-run for this route only (see the top-level `dry_run`).
    #[serde(default)]
    pub dry_run: bool,
    /// Overrides the top-level `model_tool_calls` for this route.
    #[serde(default)]
    pub model_tool_calls: Option<ModelToolCalls>,
}

/// Whether the tool calls in a model's answer are judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelToolCalls {
    /// Answers pass unread.
    #[default]
    Off,
    /// Every tool call in the answer is judged (kind `tool_kind`, action `tool_call_action`);
    /// a denied call never reaches the client.
    Judge,
}

/// What a denied tool call becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeniedToolCall {
    /// The call is removed; an answer left without calls ends as an ordinary assistant answer
    /// saying which call was refused and why.
    #[default]
    Remove,
    /// The answer becomes the provider's own error (an error event once a stream has started).
    Error,
}

impl Format {
    /// Whether this format's answers are a model's (and may carry tool calls).
    pub fn answers_with_tool_calls(self) -> bool {
        !matches!(self, Format::Mcp | Format::OpenaiModels)
    }
}

/// A `safe_regex` route match, compiled when the configuration is read (a bad expression is a
/// configuration error) and anchored at both ends, as Envoy matches the whole path.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct RouteRegex {
    pub source: String,
    pub regex: regex::Regex,
}

impl TryFrom<String> for RouteRegex {
    type Error = String;

    fn try_from(source: String) -> Result<Self, String> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("safe_regex {source:?}: {e}"))?;
        Ok(Self { source, regex })
    }
}

impl RouteConfig {
    /// A route of `format` with no match (Envoy's context extensions name it) and no options.
    pub fn new(format: Format) -> Self {
        Self {
            name: None,
            path: None,
            path_prefix: None,
            safe_regex: None,
            methods: Vec::new(),
            format,
            mcp_server: None,
            resource_kind: None,
            dry_run: false,
            model_tool_calls: None,
        }
    }

    /// A route of `format` matching the path prefix `prefix`.
    pub fn prefix(prefix: &str, format: Format) -> Self {
        Self {
            path_prefix: Some(prefix.to_owned()),
            ..Self::new(format)
        }
    }

    /// What names this route in logs and the `route` attribute: its name, else its match.
    pub fn label(&self) -> &str {
        self.name
            .as_deref()
            .or(self.path.as_deref())
            .or(self.path_prefix.as_deref())
            .or(self.safe_regex.as_ref().map(|r| r.source.as_str()))
            .unwrap_or("")
    }

    /// The rules every route obeys, wherever it was defined (this table or Envoy's context
    /// extensions); `Err((field, why))`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.format == Format::Mcp && self.mcp_server.as_deref().unwrap_or("").is_empty() {
            return Err((
                "mcp_server",
                "required for format mcp (it names the server in Cerbos requests)".to_owned(),
            ));
        }
        if self.format != Format::Mcp {
            for (key, set) in [
                ("mcp_server", self.mcp_server.is_some()),
                ("resource_kind", self.resource_kind.is_some()),
            ] {
                if set {
                    return Err((key, "only valid for format mcp".to_owned()));
                }
            }
        }
        Ok(())
    }
}

/// Request formats agent-authz can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// OpenAI Chat Completions (`/v1/chat/completions`).
    OpenaiChat,
    /// OpenAI Responses (`/v1/responses`).
    OpenaiResponses,
    /// OpenAI model listing (`GET /v1/models`), filtered on the way back (needs ext_proc).
    OpenaiModels,
    /// Anthropic Messages (`/v1/messages`).
    AnthropicMessages,
    /// Google Gemini `generateContent` / `streamGenerateContent` (model from the path).
    Gemini,
    /// Amazon Bedrock Converse / ConverseStream (model from the path).
    BedrockConverse,
    /// Azure OpenAI Chat Completions (`/openai/deployments/{d}/chat/completions`: the
    /// deployment is the model; `/openai/v1/chat/completions`: the body's).
    AzureOpenaiChat,
    /// Azure OpenAI Responses (`/openai/responses`, `/openai/deployments/{d}/responses`).
    AzureOpenaiResponses,
    /// MCP Streamable HTTP (JSON-RPC 2.0).
    Mcp,
}

impl Format {
    pub const ALL: [Format; 9] = [
        Format::OpenaiChat,
        Format::OpenaiResponses,
        Format::OpenaiModels,
        Format::AnthropicMessages,
        Format::Gemini,
        Format::BedrockConverse,
        Format::AzureOpenaiChat,
        Format::AzureOpenaiResponses,
        Format::Mcp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::OpenaiChat => "openai_chat",
            Format::OpenaiResponses => "openai_responses",
            Format::OpenaiModels => "openai_models",
            Format::AnthropicMessages => "anthropic_messages",
            Format::Gemini => "gemini",
            Format::BedrockConverse => "bedrock_converse",
            Format::AzureOpenaiChat => "azure_openai_chat",
            Format::AzureOpenaiResponses => "azure_openai_responses",
            Format::Mcp => "mcp",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnclassifiedRoutes {
    /// Deny (403) every request whose path matches no route.
    #[default]
    Deny,
    /// Let it through after authenticating the caller, without a Cerbos check.
    Allow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeniedTools {
    /// Refuse the whole request with 403 naming the denied tools.
    #[default]
    Reject,
    /// Let the request through unchanged; denied tools are only logged.
    Pass,
    /// Let the request through; the ext_proc leg removes the denied tools from the body
    /// before the upstream sees it. Requires the ext_proc filter after ext_authz.
    Strip,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForcedDeniedTool {
    /// Refuse the request with 403 naming the tool: the caller demanded a tool it may not use,
    /// and a request that silently stops forcing it would be a different request.
    #[default]
    Reject,
    /// Strip the tool and fall back to `tool_choice: "auto"`.
    Auto,
}

/// Cerbos names. Templates may use `{tool}` / `{prompt}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocabularyConfig {
    /// `default` (`tools/call/<tool>`) or `fastmcp` (cerbos-fastmcp's `tools/call::<tool>`).
    #[serde(default)]
    pub preset: VocabularyPreset,
    #[serde(default = "default_model_kind")]
    pub model_kind: String,
    #[serde(default = "default_model_action")]
    pub model_action: String,
    #[serde(default = "default_tool_kind")]
    pub tool_kind: String,
    #[serde(default = "default_tool_action")]
    pub tool_action: String,
    /// Action for a tool call a model emits (`model_tool_calls: judge`), with `{tool}`.
    #[serde(default = "default_tool_call_action")]
    pub tool_call_action: String,
    #[serde(default = "default_mcp_kind")]
    pub mcp_kind: String,
    /// Action for `tools/call`; the preset decides the default.
    #[serde(default)]
    pub mcp_tool_call_action: Option<String>,
    /// Action for session-level MCP messages (initialize, notifications, lists, ping).
    #[serde(default = "default_mcp_connect_action")]
    pub mcp_connect_action: String,
    #[serde(default = "default_mcp_resource_read_action")]
    pub mcp_resource_read_action: String,
    /// Action for `prompts/get`; the preset decides the default.
    #[serde(default)]
    pub mcp_prompt_get_action: Option<String>,
    /// Action judging whether a tool appears in a `tools/list` answer (judged with empty
    /// arguments); the preset decides the default.
    #[serde(default)]
    pub mcp_tool_list_action: Option<String>,
}

impl Default for VocabularyConfig {
    fn default() -> Self {
        Self {
            preset: VocabularyPreset::default(),
            model_kind: default_model_kind(),
            model_action: default_model_action(),
            tool_kind: default_tool_kind(),
            tool_action: default_tool_action(),
            tool_call_action: default_tool_call_action(),
            mcp_kind: default_mcp_kind(),
            mcp_tool_call_action: None,
            mcp_connect_action: default_mcp_connect_action(),
            mcp_resource_read_action: default_mcp_resource_read_action(),
            mcp_prompt_get_action: None,
            mcp_tool_list_action: None,
        }
    }
}

impl VocabularyConfig {
    pub fn tool_call_action_template(&self) -> &str {
        self.mcp_tool_call_action
            .as_deref()
            .unwrap_or(match self.preset {
                VocabularyPreset::Default => "tools/call/{tool}",
                VocabularyPreset::Fastmcp => "tools/call::{tool}",
            })
    }

    pub fn tool_list_action_template(&self) -> &str {
        self.mcp_tool_list_action
            .as_deref()
            .unwrap_or(match self.preset {
                VocabularyPreset::Default => "tools/list/{tool}",
                VocabularyPreset::Fastmcp => "tools/list::{tool}",
            })
    }

    pub fn prompt_get_action_template(&self) -> &str {
        self.mcp_prompt_get_action
            .as_deref()
            .unwrap_or(match self.preset {
                VocabularyPreset::Default => "prompts/get/{prompt}",
                VocabularyPreset::Fastmcp => "prompts/get::{prompt}",
            })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VocabularyPreset {
    #[default]
    Default,
    Fastmcp,
}

fn default_model_kind() -> String {
    "llm_model".to_owned()
}
fn default_model_action() -> String {
    "invoke".to_owned()
}
fn default_tool_kind() -> String {
    "llm_tool".to_owned()
}
fn default_tool_action() -> String {
    "expose".to_owned()
}
fn default_tool_call_action() -> String {
    "tools/call/{tool}".to_owned()
}
fn default_mcp_kind() -> String {
    "mcp_server".to_owned()
}
fn default_mcp_connect_action() -> String {
    "connect".to_owned()
}
fn default_mcp_resource_read_action() -> String {
    "resources/read".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// HTTP status of a policy denial on an MCP route. The body is always a JSON-RPC error.
    /// 200 by default: MCP clients surface a JSON-RPC error as a tool error, while some
    /// (python-sdk 1.x) hang on a 4xx and OAuth-aware ones retry a 403.
    #[serde(default = "default_mcp_denied_status")]
    pub denied_http_status: u16,
    /// Largest `tools/list` answer (JSON body, or one SSE event) filtered by the ext_proc leg;
    /// a larger one fails closed.
    #[serde(default = "default_max_list_response_bytes")]
    pub max_list_response_bytes: usize,
    /// Bind each MCP session to the principal that opened it (`seal`, the default): the
    /// ext_proc leg seals the `Mcp-Session-Id` the server mints, and a request carrying a
    /// session sealed for someone else (or not sealed) is answered `404`. `off` passes ids
    /// through unbound: only for deployments without the ext_proc leg on MCP routes.
    #[serde(default)]
    pub session_binding: SessionBinding,
    /// Secrets that seal session ids, one per line (at least 32 bytes each): the first seals,
    /// all verify (rotation). Without it each process draws a random key, so a session is
    /// bound to one replica; set it wherever several replicas serve one gateway.
    #[serde(default)]
    pub session_keys_file: Option<std::path::PathBuf>,
}

/// See [`McpConfig::session_binding`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionBinding {
    #[default]
    Seal,
    Off,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            denied_http_status: default_mcp_denied_status(),
            max_list_response_bytes: default_max_list_response_bytes(),
            session_binding: SessionBinding::default(),
            session_keys_file: None,
        }
    }
}

fn default_mcp_denied_status() -> u16 {
    200
}

fn default_max_list_response_bytes() -> usize {
    4 * 1024 * 1024
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        })
    }

    /// Parses and validates configuration text; errors are `(key path, message)`.
    pub fn parse(text: &str) -> Result<Config, (String, String)> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            (
                if key == "." {
                    "(top level)".to_owned()
                } else {
                    key
                },
                message,
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: &str| Err((key.to_owned(), msg.to_owned()));
        if self.server.max_concurrent_checks == 0 {
            return bad("server.max_concurrent_checks", "must be greater than 0");
        }
        if self.server.max_request_bytes == 0 {
            return bad("server.max_request_bytes", "must be greater than 0");
        }
        if self.console.enabled && self.console.retain == 0 {
            return bad("console.retain", "must be greater than 0");
        }
        match (self.identity.source, &self.identity.jwt) {
            (IdentitySource::Jwt, None) => {
                return bad("identity.jwt", "required when identity.source is jwt");
            }
            (_, Some(jwt)) => validate_jwt(jwt)?,
            (IdentitySource::EnvoyJwtAuthn, None) => {}
        }
        for (i, peer) in self.identity.mesh_peers.iter().enumerate() {
            let key = |k: &str| format!("identity.mesh_peers[{i}].{k}");
            if !peer.spiffe_id.starts_with("spiffe://") {
                return Err((key("spiffe_id"), "must be a spiffe:// URI".into()));
            }
            if peer.id.is_empty() || peer.id.chars().any(char::is_control) {
                return Err((key("id"), "must be a non-empty printable string".into()));
            }
            if peer.roles.is_empty() {
                return Err((key("roles"), "list at least one role".into()));
            }
        }
        if self.identity.principal.id_claim.is_empty() {
            return bad("identity.principal.id_claim", "must not be empty");
        }
        if self.identity.principal.roles_claim.is_empty() {
            return bad("identity.principal.roles_claim", "must not be empty");
        }
        if !self.cerbos.address.starts_with("http://")
            && !self.cerbos.address.starts_with("https://")
        {
            return bad(
                "cerbos.address",
                "must start with http:// (plaintext) or https:// (TLS)",
            );
        }
        if self.cerbos.max_resources_per_request == 0 {
            return bad("cerbos.max_resources_per_request", "must be greater than 0");
        }
        if self.cerbos.timeout.is_zero() {
            return bad("cerbos.timeout", "must be greater than 0");
        }
        validate_status(
            "cerbos.unavailable_status",
            self.cerbos.unavailable_status,
            400,
        )?;
        validate_status("mcp.denied_http_status", self.mcp.denied_http_status, 200)?;
        for (i, route) in self.routes.iter().enumerate() {
            let matches = [
                ("path", route.path.as_deref()),
                ("path_prefix", route.path_prefix.as_deref()),
                (
                    "safe_regex",
                    route.safe_regex.as_ref().map(|r| r.source.as_str()),
                ),
            ];
            if matches.iter().filter(|(_, m)| m.is_some()).count() != 1 {
                return Err((
                    format!("routes[{i}]"),
                    "needs exactly one of path, path_prefix, safe_regex".to_owned(),
                ));
            }
            for (key, value) in &matches[..2] {
                if value.is_some_and(|v| !v.starts_with('/')) {
                    return Err((format!("routes[{i}].{key}"), "must start with /".to_owned()));
                }
            }
            if let Some(method) = route
                .methods
                .iter()
                .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err((
                    format!("routes[{i}].methods"),
                    format!("{method:?} is not an upper-case HTTP method"),
                ));
            }
            route
                .check()
                .map_err(|(key, why)| (format!("routes[{i}].{key}"), why))?;
        }
        for (key, paths) in [
            ("audit.mask", &self.audit.mask),
            ("audit.drop", &self.audit.drop),
        ] {
            for (i, path) in paths.iter().enumerate() {
                crate::redact::parse_path(path).map_err(|e| (format!("{key}[{i}]"), e))?;
            }
        }
        let redacts_claims = self
            .audit
            .mask
            .iter()
            .chain(&self.audit.drop)
            .any(|p| p.starts_with("claims."));
        if self.identity.principal.pass_token_to_cerbos && redacts_claims {
            // The raw token carries every claim: Cerbos would record in its audit log
            // (auxData.jwt) exactly what audit.mask / audit.drop hide everywhere else.
            return bad(
                "identity.principal.pass_token_to_cerbos",
                "cannot be combined with claims.* paths in audit.mask / audit.drop: the raw token \
                 sent as auxData.jwt carries the claims they hide (Cerbos would log them)",
            );
        }
        for (key, value) in [
            ("vocabulary.model_kind", &self.vocabulary.model_kind),
            ("vocabulary.model_action", &self.vocabulary.model_action),
            ("vocabulary.tool_kind", &self.vocabulary.tool_kind),
            ("vocabulary.tool_action", &self.vocabulary.tool_action),
            ("vocabulary.mcp_kind", &self.vocabulary.mcp_kind),
            (
                "vocabulary.mcp_connect_action",
                &self.vocabulary.mcp_connect_action,
            ),
        ] {
            if value.is_empty() {
                return bad(key, "must not be empty");
            }
        }
        if !self.vocabulary.tool_call_action.contains("{tool}") {
            return bad("vocabulary.tool_call_action", "must contain {tool}");
        }
        if !self
            .vocabulary
            .tool_call_action_template()
            .contains("{tool}")
        {
            return bad("vocabulary.mcp_tool_call_action", "must contain {tool}");
        }
        Ok(())
    }
}

fn validate_jwt(jwt: &JwtConfig) -> Result<(), (String, String)> {
    let bad = |key: &str, msg: String| Err((key.to_owned(), msg));
    match (&jwt.jwks.file, &jwt.jwks.url) {
        (Some(_), Some(_)) | (None, None) => {
            return bad("identity.jwt.jwks", "set exactly one of file or url".into());
        }
        (None, Some(url)) if !url.starts_with("https://") && !is_loopback_http(url) => {
            return bad(
                "identity.jwt.jwks.url",
                "must be https:// (plain http only to a loopback address: keys fetched in the clear could be swapped)".into(),
            );
        }
        _ => {}
    }
    if jwt.jwks.refresh_interval < Duration::from_secs(1) {
        return bad(
            "identity.jwt.jwks.refresh_interval",
            "must be at least 1s".into(),
        );
    }
    if jwt.issuer.is_empty() {
        return bad("identity.jwt.issuer", "must not be empty".into());
    }
    if jwt.audiences.is_empty() || jwt.audiences.iter().any(String::is_empty) {
        return bad(
            "identity.jwt.audiences",
            "list at least one non-empty audience".into(),
        );
    }
    if jwt.algorithms.is_empty() {
        return bad(
            "identity.jwt.algorithms",
            "list at least one algorithm".into(),
        );
    }
    for alg in &jwt.algorithms {
        if let Err(msg) = crate::identity::jwt::parse_allowed_algorithm(alg) {
            return bad("identity.jwt.algorithms", msg);
        }
    }
    Ok(())
}

/// `http://127.0.0.1...`, `http://[::1]...` or `http://localhost...`.
fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split_once(']')
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        host.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn validate_status(key: &str, status: u16, min: u16) -> Result<(), (String, String)> {
    if (min..=599).contains(&status) {
        Ok(())
    } else {
        Err((
            key.to_owned(),
            format!("must be an HTTP status in {min}..=599"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
identity:
  jwt:
    jwks: {file: /tmp/jwks.json}
    issuer: https://issuer
    audiences: [gw]
routes:
  - {path_prefix: /v1/chat/completions, format: openai_chat}
  - {path_prefix: /mcp, format: mcp, mcp_server: support}
";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.server.grpc_address.to_string(), "127.0.0.1:9191");
        assert_eq!(c.server.max_request_bytes, 1 << 20);
        assert_eq!(c.unclassified_routes, UnclassifiedRoutes::Deny);
        assert_eq!(c.denied_tools, DeniedTools::Reject);
        assert_eq!(c.cerbos.unavailable_status, 503);
        assert_eq!(c.identity.principal.id_claim, "sub");
        assert_eq!(c.identity.principal.attributes.claims(), None);
        assert_eq!(
            c.vocabulary.tool_call_action_template(),
            "tools/call/{tool}"
        );
        assert_eq!(c.mcp.denied_http_status, 200);
        assert!(!c.dry_run);
        assert_eq!(c.audit.output.file(), None);
        assert_eq!(c.admin.address.unwrap().to_string(), "127.0.0.1:9192");
        assert!(c.console.enabled);
        assert_eq!(c.console.retain, 10_000);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("audiences: [gw]", "audiences: [gw]\n    audience: gw");
        let (key, msg) = Config::parse(&text).unwrap_err();
        assert_eq!(key, "identity.jwt.audience");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                "format: openai_chat}",
                "format: openai_chatt}",
                "routes[0].format",
            ),
            (
                "issuer: https://issuer",
                "issuer: ''",
                "identity.jwt.issuer",
            ),
            ("audiences: [gw]", "audiences: []", "identity.jwt.audiences"),
            (
                "mcp_server: support}",
                "mcp_server: ''}",
                "routes[1].mcp_server",
            ),
            (
                "audiences: [gw]",
                "audiences: [gw]\n    algorithms: [HS256]",
                "identity.jwt.algorithms",
            ),
            (
                "audiences: [gw]",
                "audiences: [gw]\n    algorithms: [none]",
                "identity.jwt.algorithms",
            ),
            (
                "audiences: [gw]",
                "audiences: [gw]\n    leeway: forever",
                "identity.jwt.leeway",
            ),
            (
                "routes:",
                "audit: {mask: [card_number]}\nroutes:",
                "audit.mask[0]",
            ),
            (
                "jwks: {file: /tmp/jwks.json}",
                "jwks: {url: 'http://idp.example/jwks.json'}",
                "identity.jwt.jwks.url",
            ),
            ("routes:", "console: {retain: 0}\nroutes:", "console.retain"),
            ("routes:", "console: {retian: 5}\nroutes:", "console.retian"),
            (
                "jwks: {file: /tmp/jwks.json}",
                "jwks: {url: 'http://127.0.0.1.evil.example/jwks.json'}",
                "identity.jwt.jwks.url",
            ),
        ];
        for (from, to, key) in cases {
            let text = MINIMAL.replace(from, to);
            let (got, msg) = Config::parse(&text).unwrap_err();
            assert_eq!(got, key, "{to}: {msg}");
        }
    }

    #[test]
    fn redaction_paths_are_parsed_at_load() {
        let with = |audit: &str| Config::parse(&format!("{MINIMAL}audit: {audit}\n"));
        assert!(with(r#"{mask: ['arguments.items[*].pan', 'arguments."card.number"']}"#).is_ok());
        for (audit, key) in [
            (
                "{mask: [arguments.ok, 'arguments.items[x].pan']}",
                "audit.mask[1]",
            ),
            ("{drop: ['arguments.\"open']}", "audit.drop[0]"),
            ("{drop: ['claims..email']}", "audit.drop[0]"),
        ] {
            let (got, msg) = with(audit).unwrap_err();
            assert_eq!(got, key, "{audit}: {msg}");
        }
    }

    #[test]
    fn the_raw_token_cannot_go_to_cerbos_while_claims_are_redacted() {
        let passing = MINIMAL.replace(
            "identity:\n",
            "identity:\n  principal: {pass_token_to_cerbos: true}\n",
        );
        assert!(Config::parse(&passing).is_ok());
        assert!(Config::parse(&format!("{passing}audit: {{mask: [arguments.card]}}\n")).is_ok());
        for audit in ["{mask: [claims.email]}", "{drop: [claims.phone]}"] {
            let (key, msg) = Config::parse(&format!("{passing}audit: {audit}\n")).unwrap_err();
            assert_eq!(key, "identity.principal.pass_token_to_cerbos", "{msg}");
        }
    }

    #[test]
    fn jwks_urls_are_https_or_loopback() {
        for url in [
            "https://idp.example/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
        ] {
            let text = MINIMAL.replace(
                "jwks: {file: /tmp/jwks.json}",
                &format!("jwks: {{url: '{url}'}}"),
            );
            assert!(Config::parse(&text).is_ok(), "{url}");
        }
    }

    #[test]
    fn fastmcp_preset_changes_the_tool_action() {
        let text = format!("{MINIMAL}vocabulary: {{preset: fastmcp}}\n");
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.vocabulary.tool_call_action_template(),
            "tools/call::{tool}"
        );
    }

    #[test]
    fn attributes_accept_all_or_a_list() {
        let listed = MINIMAL.replace(
            "identity:\n",
            "identity:\n  principal: {attributes: [team, refund_limit_cents]}\n",
        );
        let c = Config::parse(&listed).unwrap();
        assert_eq!(
            c.identity.principal.attributes.claims(),
            Some(&["team".to_owned(), "refund_limit_cents".to_owned()][..])
        );
        let keyword = MINIMAL.replace("identity:\n", "identity:\n  principal: {attributes: all}\n");
        let c = Config::parse(&keyword).unwrap();
        assert_eq!(c.identity.principal.attributes.claims(), None);
    }
}
