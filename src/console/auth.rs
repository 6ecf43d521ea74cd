//! Who may look: every console API request carries a bearer JWT, verified exactly as traffic's
//! is ([`crate::identity::Authenticator`]), and Cerbos must allow `view` on resource kind
//! `agent_authz_console` (id `decisions`). Access to the decisions is itself a policy decision;
//! anyone else gets 401 or 403 and no data. Each answer is logged (never the token).

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Map;

use crate::decide::{DecideError, PolicyEngine, ResourceCheck, Subject};
use crate::headers::Headers;
use crate::identity::{IdentityError, SharedPrincipal};
use crate::pipeline::Pipeline;

pub const KIND: &str = "agent_authz_console";
pub const ID: &str = "decisions";
pub const ACTION: &str = "view";

/// Why a viewer was turned away; its [`IntoResponse`] is the console's only error answer.
#[derive(Debug)]
pub enum Denied {
    /// No token, or one that does not verify: 401.
    Unauthenticated(IdentityError),
    /// Cerbos did not allow `view`: 403.
    Forbidden(String),
    /// Cerbos did not answer: 503 (fail closed).
    Unavailable(DecideError),
    /// A filter that does not parse: 400.
    BadRequest(String),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Denied::Unauthenticated(IdentityError::KeysUnavailable) => (
                StatusCode::SERVICE_UNAVAILABLE,
                IdentityError::KeysUnavailable.to_string(),
            ),
            Denied::Unauthenticated(e) => {
                (StatusCode::UNAUTHORIZED, format!("unauthenticated: {e}"))
            }
            Denied::Forbidden(id) => (
                StatusCode::FORBIDDEN,
                format!("principal {id} may not view the decision console"),
            ),
            Denied::Unavailable(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            Denied::BadRequest(why) => (StatusCode::BAD_REQUEST, why.clone()),
        };
        let mut response = (
            status,
            super::api::no_store(),
            axum::Json(serde_json::json!({ "error": message })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The viewer, when they may view the console.
pub async fn authorize<E: PolicyEngine>(
    pipeline: &Pipeline<E>,
    headers: &HeaderMap,
) -> Result<Arc<SharedPrincipal>, Denied> {
    let headers = flatten(headers);
    // Straight from the browser, not through Envoy: no jwt_authn payload, no mesh peer.
    let principal = pipeline
        .authenticator()
        .authenticate(&headers, &HashMap::new(), "")
        .await
        .map_err(|e| {
            tracing::info!(error = %e, "console access refused: unauthenticated");
            Denied::Unauthenticated(e)
        })?;
    let check = ResourceCheck {
        kind: KIND.to_owned(),
        id: ID.to_owned(),
        action: ACTION.to_owned(),
        attr: Map::new(),
        subject: Subject::Console,
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    let decision = pipeline
        .ask(&principal, vec![check], &request_id)
        .await
        .map_err(Denied::Unavailable)?;
    let allowed =
        decision.verdicts.iter().all(|v| v.effect.allows()) && !decision.verdicts.is_empty();
    tracing::info!(principal = %principal.id, allowed, request_id, "console access");
    if allowed {
        Ok(principal)
    } else {
        Err(Denied::Forbidden(principal.id.clone()))
    }
}

/// Headers as the authenticator reads them (lower-case names). Repeated headers are joined
/// with commas, as Envoy joins them, so two Authorization headers are refused, not guessed.
fn flatten(headers: &HeaderMap) -> Headers {
    let mut flat = Headers::default();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        flat.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    flat
}
