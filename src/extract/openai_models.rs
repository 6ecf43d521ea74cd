//! OpenAI model listing (`GET /v1/models`). The request carries nothing to judge; the answer
//! (`{"object":"list","data":[{"id":...}]}`) is filtered by the ext_proc leg to the models the
//! principal may invoke, each judged with the model vocabulary (`llm_model` / `invoke`).

use super::{AgentRequest, ExtractError, HttpRequest, RequestFormat};
use crate::rewrite::json_edit::EditError;

/// OpenAI `GET /v1/models`.
pub struct OpenaiModels;

impl RequestFormat for OpenaiModels {
    fn extract(&self, request: &HttpRequest<'_>) -> Result<AgentRequest, ExtractError> {
        match request.method {
            "GET" | "HEAD" => Ok(AgentRequest::ModelList),
            other => Err(ExtractError::InvalidRequest(format!(
                "{other} is not a model listing"
            ))),
        }
    }

    fn strip_tools(&self, _: &[u8], _: &[String]) -> Result<Option<Vec<u8>>, EditError> {
        Ok(None)
    }
}
