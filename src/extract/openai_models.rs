//! OpenAI model listing (`GET /v1/models`). The request carries nothing to judge; the answer
//! (`{"object":"list","data":[{"id":...}]}`) is filtered by the ext_proc leg to the models the
//! principal may invoke, each judged with the model vocabulary (`llm_model` / `invoke`).
//!
//! `GET /v1/models/{id}` (retrieve one model) is judged as invoking that model: describing a
//! model the principal may not call is refused like calling it.

use super::{AgentRequest, ExtractError, HttpRequest, LlmRequest, RequestFormat};
use crate::rewrite::json_edit::EditError;

/// OpenAI `GET /v1/models`.
pub struct OpenaiModels;

impl RequestFormat for OpenaiModels {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        if !matches!(request.method, "GET" | "HEAD") {
            return Err(ExtractError::InvalidRequest(format!(
                "{} is not a model listing",
                request.method
            )));
        }
        let Some((_, model)) = request.path.split_once("/models/") else {
            return Ok(AgentRequest::ModelList);
        };
        if model.is_empty() || model.contains('/') {
            return Err(ExtractError::InvalidRequest(format!(
                "{} is neither a model listing nor one model",
                request.path
            )));
        }
        Ok(AgentRequest::Llm(LlmRequest {
            model: model.to_owned(),
            tools: Vec::new().into(),
            forced_tools: Vec::new(),
            stream: false,
        }))
    }

    fn strip_tools(&self, _: &[u8], _: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use crate::headers::Headers;

    use super::*;

    fn read(method: &str, path: &str) -> Result<AgentRequest, ExtractError> {
        let headers = Headers::default();
        OpenaiModels.extract(&HttpRequest {
            method,
            path,
            headers: &headers,
            body: b"",
        })
    }

    #[test]
    fn one_model_is_judged_as_invoking_it() {
        assert_eq!(read("GET", "/v1/models"), Ok(AgentRequest::ModelList));
        let Ok(AgentRequest::Llm(llm)) = read("GET", "/v1/models/ft:gpt-4o:acme::x1") else {
            panic!("one model")
        };
        assert_eq!(llm.model, "ft:gpt-4o:acme::x1");
        assert!(read("GET", "/v1/models/a/b").is_err());
        assert!(read("GET", "/v1/models/").is_err());
        assert!(read("DELETE", "/v1/models/gpt-4o").is_err());
    }
}
