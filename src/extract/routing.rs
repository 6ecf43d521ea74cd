//! Which route a request is on, and so which format its body is read in.
//!
//! Envoy's route table is the source of truth: a route's `ExtAuthzPerRoute`
//! `check_settings.context_extensions` name its `format` (and, for MCP, its `mcp_server`, and
//! optionally `resource_kind` and a `route` name), so agent-authz reads the body exactly as the
//! route Envoy chose says, whatever the path looks like. Routes without them fall back to
//! agent-authz's own table, matched the way Envoy matches (exact `path`, `path_prefix` on
//! segment boundaries, whole-path `safe_regex`, `methods`), first match wins.
//!
//! The client never chooses: context extensions are Envoy configuration, never request data.

use std::collections::HashMap;

use crate::config::{Format, ModelToolCalls, RouteConfig};

/// The context-extension keys agent-authz reads.
pub const FORMAT_KEY: &str = "format";
pub const MCP_SERVER_KEY: &str = "mcp_server";
pub const RESOURCE_KIND_KEY: &str = "resource_kind";
pub const ROUTE_NAME_KEY: &str = "route";
/// `judge` or `off`: the route's `model_tool_calls` (the Envoy route must also send the
/// answer to ext_proc).
pub const MODEL_TOOL_CALLS_KEY: &str = "model_tool_calls";

/// The configured routes, compiled for matching.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self {
            routes: routes.to_vec(),
        }
    }

    /// The first route of the table matching `method` (any method when `None`) and `path`.
    pub fn classify(&self, method: Option<&str>, path: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| matches(r, method, path))
    }
}

/// Whether `route` takes a request: its path match, and its methods if it names any.
fn matches(route: &RouteConfig, method: Option<&str>, path: &str) -> bool {
    let method_ok =
        route.methods.is_empty() || method.is_none_or(|m| route.methods.iter().any(|r| r == m));
    let path_ok = if let Some(exact) = &route.path {
        path == exact
    } else if let Some(prefix) = &route.path_prefix {
        prefix_matches(prefix, path)
    } else {
        route
            .safe_regex
            .as_ref()
            .is_some_and(|r| r.regex.is_match(path))
    };
    method_ok && path_ok
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// The format Envoy's context extensions name (`None`: they name none), or why it is not one.
pub fn named_format(extensions: &HashMap<String, String>) -> Option<Result<Format, String>> {
    let name = extensions.get(FORMAT_KEY)?;
    Some(Format::from_name(name).ok_or_else(|| {
        format!(
            "Envoy route context_extensions name an unknown format {name:?} (known: {})",
            Format::ALL.map(Format::as_str).join(", ")
        )
    }))
}

impl Router {
    /// The route a request is on: the one Envoy's context extensions describe when they name a
    /// format, else the first of the table matching `method` and `path` (`Ok(None)`: none).
    /// An MCP route whose extensions do not name its server takes the server (and resource
    /// kind, and dry-run) from the table's MCP route for the path, so the server's name can
    /// live in agent-authz's configuration. `Err` when the extensions describe a route that
    /// cannot be (an unknown format, an MCP route without a server): Envoy is misconfigured,
    /// and the request is refused rather than read in a guessed format.
    pub fn route(
        &self,
        extensions: &HashMap<String, String>,
        method: &str,
        path: &str,
    ) -> Result<Option<RouteConfig>, String> {
        let format = match named_format(extensions) {
            None => return Ok(self.classify(Some(method), path).cloned()),
            Some(format) => format?,
        };
        let mut route = RouteConfig {
            name: Some(
                extensions
                    .get(ROUTE_NAME_KEY)
                    .cloned()
                    .unwrap_or_else(|| format!("envoy:{}", format.as_str())),
            ),
            mcp_server: extensions.get(MCP_SERVER_KEY).cloned(),
            resource_kind: extensions.get(RESOURCE_KIND_KEY).cloned(),
            model_tool_calls: match extensions.get(MODEL_TOOL_CALLS_KEY).map(String::as_str) {
                None => None,
                Some("judge") => Some(ModelToolCalls::Judge),
                Some("off") => Some(ModelToolCalls::Off),
                Some(other) => {
                    return Err(format!(
                        "Envoy route context_extensions: model_tool_calls {other:?} is not judge or off"
                    ));
                }
            },
            ..RouteConfig::new(format)
        };
        if format == Format::Mcp
            && route.mcp_server.is_none()
            && let Some(table) = self
                .classify(Some(method), path)
                .filter(|r| r.format == Format::Mcp)
        {
            route.mcp_server.clone_from(&table.mcp_server);
            route.resource_kind = route.resource_kind.or(table.resource_kind.clone());
            route.dry_run = table.dry_run;
        }
        route
            .check()
            .map_err(|(key, why)| format!("Envoy route context_extensions: {key} {why}"))?;
        Ok(Some(route))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteRegex;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let router = Router::new(&[
            RouteConfig::prefix("/v1/chat/completions", Format::OpenaiChat),
            RouteConfig::prefix("/mcp/", Format::Mcp),
        ]);
        let hit = |p: &str| router.classify(None, p).map(RouteConfig::label);
        assert_eq!(hit("/v1/chat/completions"), Some("/v1/chat/completions"));
        assert_eq!(hit("/v1/chat/completions/x"), Some("/v1/chat/completions"));
        assert_eq!(hit("/v1/chat/completionsX"), None);
        assert_eq!(hit("/mcp/a"), Some("/mcp/"));
        assert_eq!(hit("/v1/models"), None);
    }

    #[test]
    fn exact_regex_and_method_matches_separate_providers_on_one_host() {
        let gemini = RouteRegex::try_from(
            r"/v1(beta)?/models/[^/:]+:(generateContent|streamGenerateContent)".to_owned(),
        )
        .unwrap();
        let router = Router::new(&[
            RouteConfig {
                path: Some("/v1/models".into()),
                methods: vec!["GET".into()],
                ..RouteConfig::new(Format::OpenaiModels)
            },
            RouteConfig {
                safe_regex: Some(gemini),
                ..RouteConfig::new(Format::Gemini)
            },
        ]);
        let format = |m: &str, p: &str| router.classify(Some(m), p).map(|r| r.format);
        assert_eq!(format("GET", "/v1/models"), Some(Format::OpenaiModels));
        assert_eq!(format("POST", "/v1/models"), None, "methods");
        assert_eq!(
            format("POST", "/v1/models/gemini-2.5-flash:generateContent"),
            Some(Format::Gemini)
        );
        assert_eq!(
            format(
                "POST",
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
            ),
            Some(Format::Gemini)
        );
        assert_eq!(
            format("GET", "/v1/models/gpt-4o"),
            None,
            "exact, not prefix"
        );
        assert_eq!(
            format("POST", "/x/v1/models/m:generateContent"),
            None,
            "anchored"
        );
        assert!(RouteRegex::try_from("(".to_owned()).is_err());
    }

    #[test]
    fn context_extensions_name_the_route() {
        let ext = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let table = Router::new(&[RouteConfig {
            mcp_server: Some("support".into()),
            dry_run: true,
            ..RouteConfig::prefix("/mcp", Format::Mcp)
        }]);
        let route = |e: &[(&str, &str)], path: &str| table.route(&ext(e), "POST", path);
        let fallback = route(&[("other", "x")], "/mcp").unwrap().unwrap();
        assert_eq!(
            fallback.label(),
            "/mcp",
            "no format named: the table's route"
        );
        let named = route(&[("format", "mcp"), ("mcp_server", "crm")], "/mcp")
            .unwrap()
            .unwrap();
        assert_eq!(
            (named.format, named.mcp_server.as_deref(), named.label()),
            (Format::Mcp, Some("crm"), "envoy:mcp")
        );
        let server_from_table = route(&[("format", "mcp"), ("route", "mcp")], "/mcp/x")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                server_from_table.mcp_server.as_deref(),
                server_from_table.dry_run,
                server_from_table.label()
            ),
            (Some("support"), true, "mcp")
        );
        let gemini = route(&[("format", "gemini")], "/v1/models/m:generateContent");
        assert_eq!(gemini.unwrap().unwrap().format, Format::Gemini);
        for (bad, path) in [
            (&[("format", "openai-chat")][..], "/mcp"),
            (&[("format", "mcp")][..], "/other"),
            (
                &[("format", "openai_chat"), ("mcp_server", "crm")][..],
                "/mcp",
            ),
        ] {
            assert!(route(bad, path).is_err(), "{bad:?} {path}");
        }
    }

    #[test]
    fn context_extensions_may_turn_tool_call_judging_on_or_off() {
        let router = Router::new(&[]);
        let ext = |v: &str| {
            HashMap::from([
                ("format".to_owned(), "openai_chat".to_owned()),
                (MODEL_TOOL_CALLS_KEY.to_owned(), v.to_owned()),
            ])
        };
        let judged = router.route(&ext("judge"), "POST", "/c").unwrap().unwrap();
        assert_eq!(judged.model_tool_calls, Some(ModelToolCalls::Judge));
        let off = router.route(&ext("off"), "POST", "/c").unwrap().unwrap();
        assert_eq!(off.model_tool_calls, Some(ModelToolCalls::Off));
        assert!(router.route(&ext("yes"), "POST", "/c").is_err());
    }
}
