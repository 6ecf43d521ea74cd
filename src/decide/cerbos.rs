//! The Cerbos PDP over gRPC: one `CheckResources` call per request (split only past Cerbos'
//! per-request resource limit), on a persistent HTTP/2 channel that reconnects by itself.
//!
//! The raw generated client is used rather than the SDK's `CerbosAsyncClient` because the SDK
//! cannot ask for `includeMeta` (which names the matched policy for the decision log), cannot
//! set the request id, and takes `&mut self` (one call at a time); the tonic stub is cheap to
//! clone and multiplexes concurrent calls over one connection ([`CerbosConnection`]).

use std::sync::Arc;
use std::time::Duration;

use cerbos::genpb::cerbos::effect::v1::Effect as PbEffect;
use cerbos::genpb::google::protobuf::{Value as PbValue, value::Kind};
use futures_util::future::try_join_all;
use serde_json::Value;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_prost::ProstCodec;

use super::cerbos_answer::CheckResourcesAnswer;
use super::cerbos_connection::CerbosConnection;
use super::cerbos_request::{EncodedRequest, Question};
use super::deadline_floor::DeadlineFloor;
use super::{DecideError, Decision, Effect, PolicyEngine, ResourceCheck, Verdict};
use crate::config::CerbosConfig;
use crate::identity::SharedPrincipal;

#[derive(Clone)]
pub struct CerbosEngine {
    client: Grpc<CerbosConnection>,
    health: HealthClient<CerbosConnection>,
    timeout: Duration,
    /// Keeps arming each call's deadline from waking the runtime's I/O driver.
    deadline_floor: Arc<DeadlineFloor>,
    policy_version: String,
    scope: String,
    max_per_request: usize,
}

impl CerbosEngine {
    /// Prepares the connection without connecting: the service starts even while Cerbos is
    /// down, answers with the configured unavailable status, and recovers when Cerbos returns.
    pub fn new(config: &CerbosConfig) -> Result<Self, String> {
        let connection = CerbosConnection::new(&config.address, config.timeout)?;
        let origin = connection.origin();
        Ok(Self {
            client: Grpc::with_origin(connection.clone(), origin.clone()),
            health: HealthClient::with_origin(connection, origin),
            timeout: config.timeout,
            deadline_floor: DeadlineFloor::new(config.timeout),
            policy_version: config.policy_version.clone(),
            scope: config.scope.clone(),
            max_per_request: config.max_resources_per_request,
        })
    }

    /// `cerbos.svc.v1.CerbosService/CheckResources`, its answer decoded as
    /// [`CheckResourcesAnswer`] (what the generated client would do, with the lean type).
    async fn call(
        &self,
        request: EncodedRequest,
        request_id: &str,
    ) -> Result<CheckResourcesAnswer, DecideError> {
        let mut client = self.client.clone();
        let mut grpc = tonic::Request::new(request);
        if let Ok(mut value) = request_id.parse::<tonic::metadata::AsciiMetadataValue>() {
            // Cerbos' audit log records this when `includeMetadataKeys` lists it. Each value is
            // new: sent as never indexed, it takes no HPACK table entry on either side (adding
            // one to each table per call only pushed out the entries that do repeat).
            value.set_sensitive(true);
            grpc.metadata_mut().insert("x-request-id", value);
        }
        let call = async move {
            client.ready().await.map_err(|e| {
                tonic::Status::unavailable(format!("Cerbos connection not ready: {e}"))
            })?;
            let codec = ProstCodec::<EncodedRequest, CheckResourcesAnswer>::default();
            let path = PathAndQuery::from_static("/cerbos.svc.v1.CerbosService/CheckResources");
            client.unary(grpc, path, codec).await
        };
        self.deadline_floor.call_starts();
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(DecideError::Timeout(self.timeout.as_millis())),
            Ok(Err(status)) => Err(DecideError::Unavailable(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }
}

impl PolicyEngine for CerbosEngine {
    async fn ready(&self) -> bool {
        let mut health = self.health.clone();
        let probe = health.check(HealthCheckRequest {
            service: String::new(),
        });
        matches!(
            tokio::time::timeout(self.timeout, probe).await,
            Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32
        )
    }

    async fn check(
        &self,
        principal: &Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        request_id: &str,
    ) -> Result<Decision, DecideError> {
        if checks.is_empty() {
            return Ok(Decision::default());
        }
        let question = Question {
            request_id,
            principal,
            policy_version: &self.policy_version,
            scope: &self.scope,
            token: principal.token.as_ref().map(|t| t.expose()),
        };
        let mut decision = Decision::default();
        if checks.len() <= self.max_per_request {
            // One call, nearly every request: awaited as it is, not moved into a join of one.
            let mut response = self.call(question.encode(&checks), request_id).await?;
            decision
                .call_ids
                .push(std::mem::take(&mut response.cerbos_call_id));
            decision.verdicts = verdicts(checks, response)?;
            return Ok(decision);
        }
        let chunks: Vec<&[ResourceCheck]> = checks.chunks(self.max_per_request).collect();
        let calls = chunks.iter().enumerate().map(|(i, chunk)| {
            let request_id = format!("{request_id}/{i}");
            let request = Question {
                request_id: &request_id,
                ..question
            }
            .encode(chunk);
            async move { self.call(request, &request_id).await }
        });
        let responses = try_join_all(calls).await?;
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        // The checks move into their verdicts (the request is done with them).
        let mut checks = checks.into_iter();
        for (size, mut response) in sizes.into_iter().zip(responses) {
            decision
                .call_ids
                .push(std::mem::take(&mut response.cerbos_call_id));
            let chunk = checks.by_ref().take(size).collect();
            decision.verdicts.extend(verdicts(chunk, response)?);
        }
        Ok(decision)
    }
}

/// Pairs each check with its result. Cerbos answers in request order; the id and kind are
/// checked anyway so that a reordering can never attach one resource's effect to another.
fn verdicts(
    checks: Vec<ResourceCheck>,
    response: CheckResourcesAnswer,
) -> Result<Vec<Verdict>, DecideError> {
    if response.results.len() != checks.len() {
        return Err(DecideError::Protocol(format!(
            "{} results for {} resources",
            response.results.len(),
            checks.len()
        )));
    }
    checks
        .into_iter()
        .zip(response.results)
        .map(|(check, mut result)| {
            let (id, kind) = result
                .resource
                .as_ref()
                .map_or(("", ""), |r| (r.id.as_str(), r.kind.as_str()));
            if id != check.id || kind != check.kind {
                return Err(DecideError::Protocol(format!(
                    "result for {kind}:{id} where {}:{} was asked",
                    check.kind, check.id
                )));
            }
            let effect = match result.effect(&check.action).map(PbEffect::try_from) {
                Some(Ok(PbEffect::Allow)) => Effect::Allow,
                Some(Ok(PbEffect::NoMatch)) | None => Effect::NoMatch,
                Some(_) => Effect::Deny,
            };
            let policy = result.matched_policy(&check.action).map(Arc::from);
            let derived_roles = result
                .meta
                .as_mut()
                .map(|m| std::mem::take(&mut m.effective_derived_roles))
                .unwrap_or_default();
            let outputs = result
                .outputs
                .into_iter()
                .map(|o| (o.src, o.val.map(from_pb).unwrap_or(Value::Null)))
                .collect();
            Ok(Verdict {
                check: check.into(),
                effect,
                policy,
                outputs,
                derived_roles,
            })
        })
        .collect()
}

/// A rule output's value, as JSON.
fn from_pb(value: PbValue) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(from_pb).collect()),
        Some(Kind::StructValue(s)) => {
            Value::Object(s.fields.into_iter().map(|(k, v)| (k, from_pb(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use cerbos::genpb::google::protobuf::{ListValue, Struct};
    use serde_json::Map;

    use super::super::Subject;
    use super::super::cerbos_answer::{ActionEffect, Meta, Resource, ResultEntry};
    use super::*;

    #[test]
    fn rule_outputs_read_as_json() {
        let pb = |kind| PbValue { kind: Some(kind) };
        let output = pb(Kind::StructValue(Struct {
            fields: [
                ("reason".to_owned(), pb(Kind::StringValue("no".into()))),
                (
                    "list".to_owned(),
                    pb(Kind::ListValue(ListValue {
                        values: vec![pb(Kind::NumberValue(1.5)), pb(Kind::BoolValue(true))],
                    })),
                ),
                ("none".to_owned(), pb(Kind::NullValue(0))),
            ]
            .into(),
        }));
        assert_eq!(
            from_pb(output),
            json!({"reason": "no", "list": [1.5, true], "none": null})
        );
    }

    #[test]
    fn derived_roles_cerbos_names_reach_the_verdict() {
        let check = ResourceCheck {
            kind: "mcp_server".into(),
            id: "refund".into(),
            action: "tools/call/refund".into(),
            attr: Map::new(),
            subject: Subject::McpMessage(0),
        };
        let answer = CheckResourcesAnswer {
            cerbos_call_id: "c1".into(),
            results: vec![ResultEntry {
                resource: Some(Resource {
                    id: "refund".into(),
                    kind: "mcp_server".into(),
                }),
                actions: vec![ActionEffect {
                    action: "tools/call/refund".into(),
                    effect: PbEffect::Allow as i32,
                }],
                meta: Some(Meta {
                    actions: vec![],
                    effective_derived_roles: vec!["ticket_owner".into()],
                }),
                outputs: vec![],
            }],
        };
        let verdicts = verdicts(vec![check], answer).unwrap();
        assert_eq!(verdicts[0].effect, Effect::Allow);
        assert_eq!(verdicts[0].derived_roles, ["ticket_owner"]);
    }
}
