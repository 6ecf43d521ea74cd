//! Azure OpenAI: the OpenAI Chat Completions and Responses bodies, on Azure's paths.
//!
//! On `/openai/deployments/{deployment}/chat/completions?api-version=...` (and
//! `/deployments/{deployment}/responses`) the model is the deployment, whatever the body says:
//! Azure serves the deployment's model. On the paths without a deployment
//! (`/openai/responses`, `/openai/v1/chat/completions`, `/openai/v1/responses`) it is the body's
//! `model`, which Azure also reads as a deployment name. Deployment names are arbitrary, so
//! `azure_openai.deployments` in the config maps them to the model they serve; the pipeline
//! judges the mapped name (the `llm_model` id).
//!
//! The `api-key` header is Azure's key for the upstream, never an identity.

use super::{AgentRequest, ExtractError, HttpRequest, RequestFormat, llm};
use super::{openai_chat, openai_responses};
use crate::rewrite::json_edit::EditError;

/// Azure OpenAI Chat Completions.
pub struct AzureChat;

/// Azure OpenAI Responses.
pub struct AzureResponses;

impl RequestFormat for AzureChat {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        openai_chat::read(request, deployment(request.path)?).map(AgentRequest::Llm)
    }

    fn strip_tools(&self, body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        openai_chat::OpenaiChat.strip_tools(body, denied)
    }
}

impl RequestFormat for AzureResponses {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        openai_responses::read(request, deployment(request.path)?).map(AgentRequest::Llm)
    }

    fn strip_tools(&self, body: &[u8], denied: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        openai_responses::OpenaiResponses.strip_tools(body, denied)
    }
}

/// The `{deployment}` of a `.../deployments/{deployment}/...` path (`None` without one).
fn deployment(path: &str) -> Result<Option<String>, ExtractError> {
    let Some((_, rest)) = path.split_once("/deployments/") else {
        return Ok(None);
    };
    let name = rest.split('/').next().unwrap_or_default();
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || !name.chars().all(valid) || !rest.contains('/') {
        return Err(llm::invalid(
            "Azure OpenAI path must be /openai/deployments/{deployment}/{operation}",
        ));
    }
    Ok(Some(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::extract::test_support;
    use crate::extract::{DeclaredTool, LlmRequest};

    fn chat(path: &str, body: Value) -> Result<LlmRequest, ExtractError> {
        test_support::read(&AzureChat, path, &body)
    }

    #[test]
    fn the_deployment_is_the_model() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather"}}]);
        let r = chat(
            "/openai/deployments/prod-gpt/chat/completions",
            json!({"messages": [], "tools": tools}),
        )
        .unwrap();
        assert_eq!(r.model, "prod-gpt");
        assert_eq!(*r.tools, [DeclaredTool::new("get_weather", "function")]);
        let r = chat(
            "/openai/deployments/prod-gpt/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": []}),
        )
        .unwrap();
        assert_eq!(
            r.model, "prod-gpt",
            "Azure serves the deployment, not the body's model"
        );
        let r = chat("/openai/v1/chat/completions", json!({"model": "prod-gpt"})).unwrap();
        assert_eq!(r.model, "prod-gpt");
        assert!(chat("/openai/v1/chat/completions", json!({"messages": []})).is_err());
        for bad in [
            "/openai/deployments//chat/completions",
            "/openai/deployments/a%2Fb/chat/completions",
            "/openai/deployments/x",
        ] {
            assert!(chat(bad, json!({"model": "m"})).is_err(), "{bad}");
        }
        let r = test_support::read(
            &AzureResponses,
            "/openai/deployments/prod-gpt/responses",
            &json!({"input": "hi", "tools": [{"type": "function", "name": "f"}]}),
        )
        .unwrap();
        assert_eq!((r.model.as_str(), r.tools.len()), ("prod-gpt", 1));
    }
}
