//! The Cerbos vocabulary: which resource kind, id, action and attributes each part of a
//! request becomes. All names come from `vocabulary:` in the config; the README documents them.

use serde_json::{Map, Value, json};

use super::question::{length, string};
use super::{ResourceCheck, Subject};
use crate::config::{Format, RouteConfig, VocabularyConfig};
use crate::extract::{AgentRequest, LlmRequest, McpOperation, McpRequest};

pub struct Vocabulary {
    config: VocabularyConfig,
    /// The action templates (`tools/call/{tool}`, ...) split once at start-up for
    /// [`Vocabulary::action_label`]: (prefix, suffix, label with `*` for the name).
    templates: Vec<(String, String, String)>,
}

impl Vocabulary {
    pub fn new(config: &VocabularyConfig) -> Self {
        let templates = [
            config.tool_call_action_template(),
            config.tool_list_action_template(),
            config.prompt_get_action_template(),
            config.tool_call_action.as_str(),
        ]
        .into_iter()
        .filter_map(|template| {
            let (prefix, rest) = template.split_once('{')?;
            let suffix = rest.split_once('}').map_or("", |(_, s)| s);
            Some((
                prefix.to_owned(),
                suffix.to_owned(),
                format!("{prefix}*{suffix}"),
            ))
        })
        .collect();
        Self {
            config: config.clone(),
            templates,
        }
    }

    /// The checks for `request`, read in `format` on `route`.
    pub fn checks(
        &self,
        route: &RouteConfig,
        format: Format,
        request: &AgentRequest,
    ) -> Vec<ResourceCheck> {
        match request {
            AgentRequest::Llm(llm) => self.llm_checks(route, format, llm),
            AgentRequest::Mcp(mcp) => self.mcp_checks(route, mcp),
            AgentRequest::ModelList => Vec::new(),
        }
    }

    /// Every input [`Self::checks`] reads of an LLM request, as prefix-free bytes: requests
    /// with the same derivation get the same checks from this vocabulary (whose names are
    /// fixed for its configuration, as the cache is), so the engine can recall a decision
    /// for them ([`super::PolicyEngine::recall`]). Keep it in step with `llm_checks`. `None`
    /// for other requests (MCP checks hold arguments, redacted as they are built).
    pub fn derivation(
        &self,
        route: &RouteConfig,
        format: Format,
        request: &AgentRequest,
    ) -> Option<Vec<u8>> {
        let AgentRequest::Llm(llm) = request else {
            return None;
        };
        let mut out = Vec::with_capacity(64 + 32 * llm.tools.len());
        string(&mut out, route.label());
        string(&mut out, format.as_str());
        string(&mut out, &llm.model);
        length(&mut out, llm.tools.len());
        for tool in llm.tools.iter() {
            string(&mut out, &tool.name);
            string(&mut out, &tool.kind);
            match &tool.server {
                None => out.push(0),
                Some(server) => {
                    out.push(1);
                    string(&mut out, server);
                }
            }
        }
        Some(out)
    }

    fn llm_checks(
        &self,
        route: &RouteConfig,
        format: Format,
        request: &LlmRequest,
    ) -> Vec<ResourceCheck> {
        let format = format.as_str();
        let mut checks = vec![ResourceCheck {
            kind: self.config.model_kind.clone(),
            id: request.model.clone(),
            action: self.config.model_action.clone(),
            attr: object(json!({"route": route.label(), "format": format})),
            subject: Subject::Model(request.model.clone()),
        }];
        checks.extend(request.tools.iter().map(|tool| match &tool.server {
            // A remote MCP tool the provider will call itself: judged as that server's
            // tools/call, with no arguments to judge (argument-bound rules cannot allow it).
            Some(server) => ResourceCheck {
                kind: self.config.mcp_kind.clone(),
                id: tool.name.clone(),
                action: self.config.tool_call_action_template().replace("{tool}", &tool.name),
                attr: object(json!({
                    "server": server, "tool_name": tool.name, "arguments": {}, "method": "tools/call",
                    "model": request.model, "format": format, "declared": true
                })),
                subject: Subject::Tool(tool.key()),
            },
            None => ResourceCheck {
                kind: self.config.tool_kind.clone(),
                id: tool.name.clone(),
                action: self.config.tool_action.clone(),
                attr: object(json!({"model": request.model, "type": tool.kind, "format": format})),
                subject: Subject::Tool(tool.key()),
            },
        }));
        checks
    }

    /// Invocation checks for the models a model listing names.
    pub fn model_checks(
        &self,
        route: &str,
        format: Format,
        models: &[String],
    ) -> Vec<ResourceCheck> {
        models
            .iter()
            .map(|model| ResourceCheck {
                kind: self.config.model_kind.clone(),
                id: model.clone(),
                action: self.config.model_action.clone(),
                attr: object(json!({"route": route, "format": format.as_str()})),
                subject: Subject::Model(model.clone()),
            })
            .collect()
    }

    /// The check for one tool call a model emitted: the tool, called with these arguments.
    pub fn model_tool_call_check(
        &self,
        model: &str,
        format: Format,
        name: &str,
        kind: &str,
        arguments: Map<String, Value>,
    ) -> ResourceCheck {
        ResourceCheck {
            kind: self.config.tool_kind.clone(),
            id: name.to_owned(),
            action: self.config.tool_call_action.replace("{tool}", name),
            attr: object(json!({
                "model": model, "format": format.as_str(), "type": kind, "arguments": arguments
            })),
            subject: Subject::Tool(name.to_owned()),
        }
    }

    /// The resource kind of an MCP route's server.
    pub fn mcp_kind(&self, route: &RouteConfig) -> String {
        route
            .resource_kind
            .clone()
            .unwrap_or_else(|| self.config.mcp_kind.clone())
    }

    /// Visibility checks for the tools a `tools/list` answer names, judged with empty
    /// arguments so that a tool callable with the right arguments stays visible.
    pub fn tool_visibility_checks(
        &self,
        server: &str,
        kind: &str,
        tools: &[String],
    ) -> Vec<ResourceCheck> {
        tools
            .iter()
            .map(|name| ResourceCheck {
                kind: kind.to_owned(),
                id: name.clone(),
                action: self.config.tool_list_action_template().replace("{tool}", name),
                attr: object(json!({"server": server, "tool_name": name, "arguments": {}, "method": "tools/list"})),
                subject: Subject::Tool(name.clone()),
            })
            .collect()
    }

    fn mcp_checks(&self, route: &RouteConfig, request: &McpRequest) -> Vec<ResourceCheck> {
        let server = route.mcp_server.clone().unwrap_or_default();
        let kind = self.mcp_kind(route);
        request
            .messages
            .iter()
            .enumerate()
            .map(|(index, message)| {
                let method = &message.method;
                let (id, action, attr) = match &message.operation {
                    McpOperation::ToolCall { name, arguments } => (
                        name.clone(),
                        self.config.tool_call_action_template().replace("{tool}", name),
                        json!({"server": server, "tool_name": name, "arguments": arguments, "method": method}),
                    ),
                    McpOperation::ResourceRead { uri } => (
                        uri.clone(),
                        self.config.mcp_resource_read_action.clone(),
                        json!({"server": server, "uri": uri, "method": method}),
                    ),
                    McpOperation::PromptGet { name, arguments } => (
                        name.clone(),
                        self.config.prompt_get_action_template().replace("{prompt}", name),
                        json!({"server": server, "prompt_name": name, "arguments": arguments, "method": method}),
                    ),
                    McpOperation::Session => (
                        server.clone(),
                        self.config.mcp_connect_action.clone(),
                        json!({"server": server, "method": method}),
                    ),
                    McpOperation::Other => (
                        server.clone(),
                        method.clone(),
                        json!({"server": server, "method": method}),
                    ),
                };
                ResourceCheck {
                    kind: kind.clone(),
                    id,
                    action,
                    attr: object(attr),
                    subject: Subject::McpMessage(index),
                }
            })
            .collect()
    }
}

/// MCP methods the specification defines that are judged with the method as the action (the
/// others map to configured actions): metric labels may name them.
const SPEC_METHODS: &[&str] = &[
    "completion/complete",
    "resources/subscribe",
    "resources/unsubscribe",
    "roots/list",
    "sampling/createMessage",
    "elicitation/create",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "response",
];

impl Vocabulary {
    /// The metrics label of an action: the action when the configuration or the MCP
    /// specification names it, a template with `*` for the name it was filled with
    /// (`tools/call/*`), or `other`. Never request text, so the set of series is bounded.
    pub fn action_label<'a>(&self, action: &'a str) -> std::borrow::Cow<'a, str> {
        let c = &self.config;
        let exact = [
            c.model_action.as_str(),
            c.tool_action.as_str(),
            c.mcp_connect_action.as_str(),
            c.mcp_resource_read_action.as_str(),
        ];
        if exact.contains(&action) || SPEC_METHODS.contains(&action) {
            return action.into();
        }
        self.templates
            .iter()
            .find(|(prefix, suffix, _)| {
                action.len() >= prefix.len() + suffix.len()
                    && action.starts_with(prefix.as_str())
                    && action.ends_with(suffix.as_str())
            })
            .map_or("other".into(), |(_, _, label)| label.clone().into())
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Format, VocabularyPreset};
    use crate::extract::{DeclaredTool, McpMessage};

    fn mcp_route(kind: Option<&str>) -> RouteConfig {
        RouteConfig {
            mcp_server: Some("support".into()),
            resource_kind: kind.map(str::to_owned),
            ..RouteConfig::prefix("/mcp", Format::Mcp)
        }
    }

    fn msg(method: &str, operation: McpOperation) -> McpMessage {
        McpMessage {
            id: Some(json!(1)),
            method: method.into(),
            operation,
        }
    }

    fn summary(checks: &[ResourceCheck]) -> Vec<(String, String, String)> {
        checks
            .iter()
            .map(|c| (c.kind.clone(), c.id.clone(), c.action.clone()))
            .collect()
    }

    /// A remembered decision answers any request with the same derivation: that is only sound
    /// if equal derivations always mean equal checks, and every input the checks read changes
    /// the derivation.
    #[test]
    fn equal_derivations_mean_equal_checks_and_every_input_changes_it() {
        let vocabulary = Vocabulary::new(&VocabularyConfig::default());
        let chat = RouteConfig::prefix("/v1/chat/completions", Format::OpenaiChat);
        let other_route = RouteConfig::prefix("/openai/v1/chat/completions", Format::OpenaiChat);
        let llm = |model: &str, tools: Vec<DeclaredTool>| {
            AgentRequest::Llm(LlmRequest {
                model: model.into(),
                tools: tools.into(),
                forced_tools: vec![],
                stream: false,
            })
        };
        let weather = || DeclaredTool::new("get_weather", "function");
        let base = llm(
            "gpt-4o",
            vec![weather(), DeclaredTool::remote("search", "github")],
        );
        let variants = [
            (&chat, Format::OpenaiChat, base.clone()),
            (&other_route, Format::OpenaiChat, base.clone()),
            (&chat, Format::AzureOpenaiChat, base.clone()),
            (
                &chat,
                Format::OpenaiChat,
                llm(
                    "gpt-4o-mini",
                    vec![weather(), DeclaredTool::remote("search", "github")],
                ),
            ),
            (&chat, Format::OpenaiChat, llm("gpt-4o", vec![weather()])),
            (
                &chat,
                Format::OpenaiChat,
                llm(
                    "gpt-4o",
                    vec![DeclaredTool::remote("search", "github"), weather()],
                ),
            ),
            (
                &chat,
                Format::OpenaiChat,
                llm(
                    "gpt-4o",
                    vec![
                        DeclaredTool::new("get_weather", "custom"),
                        DeclaredTool::remote("search", "github"),
                    ],
                ),
            ),
            (
                &chat,
                Format::OpenaiChat,
                llm(
                    "gpt-4o",
                    vec![weather(), DeclaredTool::remote("search", "gitlab")],
                ),
            ),
            (
                &chat,
                Format::OpenaiChat,
                llm(
                    "gpt-4o",
                    vec![weather(), DeclaredTool::new("search", "mcp")],
                ),
            ),
            (
                &chat,
                Format::OpenaiChat,
                llm(
                    "gpt-4o",
                    vec![weather(), DeclaredTool::remote("*", "github")],
                ),
            ),
            // Read by the pipeline's judgement, not by the checks: the same derivation.
            (
                &chat,
                Format::OpenaiChat,
                AgentRequest::Llm(LlmRequest {
                    forced_tools: vec!["get_weather".into()],
                    stream: true,
                    ..match base.clone() {
                        AgentRequest::Llm(l) => l,
                        _ => unreachable!(),
                    }
                }),
            ),
        ];
        let derived: Vec<_> = variants
            .iter()
            .map(|(route, format, request)| {
                let derivation = vocabulary.derivation(route, *format, request).unwrap();
                (derivation, vocabulary.checks(route, *format, request))
            })
            .collect();
        for (i, (derivation, checks)) in derived.iter().enumerate() {
            for (j, (other, other_checks)) in derived.iter().enumerate() {
                if derivation == other {
                    assert_eq!(checks, other_checks, "variants {i} and {j}");
                } else {
                    assert_ne!(
                        checks, other_checks,
                        "variants {i} and {j}: needlessly apart"
                    );
                }
            }
        }
        let distinct: std::collections::HashSet<_> = derived.iter().map(|(d, _)| d).collect();
        assert_eq!(
            distinct.len(),
            variants.len() - 1,
            "only the last variant repeats the first"
        );
        assert_eq!(derived[0].0, derived[variants.len() - 1].0);
        assert_eq!(
            vocabulary.derivation(&chat, Format::Mcp, &AgentRequest::ModelList),
            None
        );
    }

    #[test]
    fn llm_requests_check_the_model_and_every_tool() {
        let route = RouteConfig::prefix("/v1/chat/completions", Format::OpenaiChat);
        let request = AgentRequest::Llm(LlmRequest {
            model: "gpt-4o".into(),
            tools: vec![
                DeclaredTool::new("get_weather", "function"),
                DeclaredTool::remote("search", "github"),
            ]
            .into(),
            forced_tools: vec![],
            stream: false,
        });
        let checks = Vocabulary::new(&VocabularyConfig::default()).checks(
            &route,
            Format::OpenaiChat,
            &request,
        );
        assert_eq!(
            summary(&checks),
            [
                ("llm_model".into(), "gpt-4o".into(), "invoke".into()),
                ("llm_tool".into(), "get_weather".into(), "expose".into()),
                (
                    "mcp_server".into(),
                    "search".into(),
                    "tools/call/search".into()
                )
            ]
        );
        assert_eq!(
            Value::Object(checks[2].attr.clone()),
            json!({"server": "github", "tool_name": "search", "arguments": {}, "method": "tools/call",
                   "model": "gpt-4o", "format": "openai_chat", "declared": true})
        );
        assert_eq!(checks[2].subject, Subject::Tool("github/search".into()));
        assert_eq!(
            Value::Object(checks[0].attr.clone()),
            json!({"route": "/v1/chat/completions", "format": "openai_chat"})
        );
        assert_eq!(
            Value::Object(checks[1].attr.clone()),
            json!({"model": "gpt-4o", "type": "function", "format": "openai_chat"})
        );
        assert_eq!(checks[1].subject, Subject::Tool("get_weather".into()));
    }

    #[test]
    fn mcp_messages_map_to_actions() {
        let request = AgentRequest::Mcp(McpRequest {
            batch: true,
            protocol_version: None,
            messages: vec![
                msg(
                    "tools/call",
                    McpOperation::ToolCall {
                        name: "refund".into(),
                        arguments: json!({"amount_cents": 5}),
                    },
                ),
                msg("initialize", McpOperation::Session),
                msg(
                    "resources/read",
                    McpOperation::ResourceRead {
                        uri: "file:///a".into(),
                    },
                ),
                msg(
                    "prompts/get",
                    McpOperation::PromptGet {
                        name: "greet".into(),
                        arguments: json!({}),
                    },
                ),
                msg("tasks/get", McpOperation::Other),
            ],
        });
        let vocab = Vocabulary::new(&VocabularyConfig::default());
        let checks = vocab.checks(&mcp_route(None), Format::Mcp, &request);
        let k = "mcp_server".to_owned();
        assert_eq!(
            summary(&checks),
            [
                (k.clone(), "refund".into(), "tools/call/refund".into()),
                (k.clone(), "support".into(), "connect".into()),
                (k.clone(), "file:///a".into(), "resources/read".into()),
                (k.clone(), "greet".into(), "prompts/get/greet".into()),
                (k.clone(), "support".into(), "tasks/get".into()),
            ]
        );
        assert_eq!(
            Value::Object(checks[0].attr.clone()),
            json!({"server": "support", "tool_name": "refund", "arguments": {"amount_cents": 5}, "method": "tools/call"})
        );
        assert_eq!(checks[4].subject, Subject::McpMessage(4));

        let fastmcp = VocabularyConfig {
            preset: VocabularyPreset::Fastmcp,
            ..VocabularyConfig::default()
        };
        let checks = Vocabulary::new(&fastmcp).checks(
            &mcp_route(Some("mcp::support")),
            Format::Mcp,
            &request,
        );
        assert_eq!(checks[0].action, "tools/call::refund");
        assert_eq!(checks[0].kind, "mcp::support");
    }

    #[test]
    fn metric_labels_come_from_a_bounded_set() {
        let v = Vocabulary::new(&VocabularyConfig::default());
        let label = |a: &str| v.action_label(a).into_owned();
        assert_eq!(label("invoke"), "invoke");
        assert_eq!(label("tools/call/refund"), "tools/call/*");
        assert_eq!(label("tools/call/x-9f3e"), "tools/call/*");
        assert_eq!(label("tools/list/anything"), "tools/list/*");
        assert_eq!(label("completion/complete"), "completion/complete");
        assert_eq!(label("made/up/method-12345"), "other");
        assert_eq!(label(&"m".repeat(200_000)), "other");
    }
}
