//! Envoy's `envoy.service.ext_proc.v3.ExternalProcessor/Process`: the leg that changes bodies,
//! which ext_authz cannot do. It never judges a request: it applies the decision ext_authz
//! handed over in forwarded metadata ([`crate::handoff`]):
//!
//! - request body (BUFFERED): remove the declared tools ext_authz denied (`denied_tools: strip`),
//!   byte-preservingly, and fix `content-length`;
//! - response of an MCP `tools/list` (response headers SEND, body STREAMED): remove the tools
//!   the principal may not see, from an `application/json` body (held back until complete,
//!   bounded) or from the one SSE event that carries the result (other events flow through as
//!   they arrive). Visibility is a new question (the answer's tools were unknown at request
//!   time), asked once per answer.
//!
//! A stream without ext_authz's handoff is refused (500): ext_proc must run after ext_authz with
//! `metadata_options.forwarding_namespaces.untyped: [envoy.filters.http.ext_authz]`.
//! Every response sets the variant matching its request; Envoy treats any other as spurious.

use std::collections::HashMap;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    ImmediateResponse, ProcessingResponse, TrailersResponse, body_mutation::Mutation,
    processing_response::Response as Reply,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status, Streaming};

use super::ext_authz::struct_to_json;
use super::processing_request::{Phase, ProcessingRequest};
use super::tool_calls;
use crate::config::Format;
use crate::decide::PolicyEngine;
use crate::extract::dialect;
use crate::handoff::Handoff;
use crate::pipeline::{MCP_SESSION_HEADER, Pipeline, STRIP_PENDING_HEADER};
use crate::reload::Current;
use crate::rewrite::{listing, sse};

/// Namespace of the metadata this leg emits (list it in ext_proc `receiving_namespaces`).
pub const METADATA_NAMESPACE: &str = "agent_authz";

/// One `Process` stream: each message of one HTTP exchange, answered in order, with the
/// pipeline running when the stream opened (served by
/// [`super::processing_request::ExtProcServer`]).
pub fn process<E: PolicyEngine>(
    current: &Current<E>,
    mut inbound: Streaming<ProcessingRequest>,
) -> Response<ReceiverStream<Result<ProcessingResponse, Status>>> {
    let (tx, rx) = mpsc::channel(4);
    // One configuration for the whole exchange, even across a reload.
    let pipeline = current.get();
    tokio::spawn(async move {
        let mut exchange = Exchange::default();
        while let Ok(Some(message)) = inbound.message().await {
            let reply = exchange.handle(&pipeline, message).await;
            let stop = reply.is_err() || exchange.finished;
            if tx.send(reply).await.is_err() || stop {
                break;
            }
        }
        // Ending the stream (OK) tells Envoy the rest of the exchange needs no processing: an
        // MCP GET stream open for hours, or a completion streaming for minutes, then holds no
        // ext_proc stream (each counts against the agent_authz cluster's circuit breaker).
    });
    Response::new(ReceiverStream::new(rx))
}

/// What one HTTP exchange has shown so far.
#[derive(Default)]
struct Exchange {
    handoff: Option<Handoff>,
    saw_request_headers: bool,
    path: String,
    response: ResponseFilter,
    /// Nothing left to do: the stream can end after this reply.
    finished: bool,
}

/// Which message of the exchange was answered, for [`Exchange::done_after`].
#[derive(Clone, Copy)]
enum Step {
    RequestHeaders,
    RequestBodyEnd,
    ResponseHeaders,
    ResponseBody,
    ResponseBodyEnd,
    Other,
}

impl Step {
    fn of(phase: &Phase) -> Step {
        match phase {
            Phase::RequestHeaders(_) => Step::RequestHeaders,
            Phase::RequestBody(b) if b.end_of_stream => Step::RequestBodyEnd,
            Phase::ResponseHeaders(h) if h.end_of_stream => Step::ResponseBodyEnd,
            Phase::ResponseHeaders(_) => Step::ResponseHeaders,
            Phase::ResponseBody(b) if b.end_of_stream => Step::ResponseBodyEnd,
            Phase::ResponseBody(_) => Step::ResponseBody,
            _ => Step::Other,
        }
    }
}

#[derive(Default)]
enum ResponseFilter {
    /// Not a `tools/list` answer (or not a successful one): bytes flow through untouched.
    #[default]
    Pass,
    /// An `application/json` answer, held back until complete.
    Json(Vec<u8>),
    /// A `text/event-stream` answer, rewritten event by event.
    Sse(sse::EventSplitter),
    /// An MCP GET stream, held until its first event shows the transport: the 2024-11-05
    /// HTTP+SSE transport opens with an `endpoint` event and delivers every answer (tools/list
    /// results included) on this stream, so it is filtered like [`ResponseFilter::Sse`]; a
    /// Streamable HTTP stream carries no answers (resumptions aside, which are filtered from
    /// the start) and is released.
    Probe(sse::EventSplitter),
    /// A model's answer whose tool calls are judged ([`tool_calls`]).
    ToolCalls(Box<tool_calls::Judged>),
}

impl Exchange {
    async fn handle<E: PolicyEngine>(
        &mut self,
        pipeline: &Pipeline<E>,
        message: ProcessingRequest,
    ) -> Result<ProcessingResponse, Status> {
        if let (None, Some(metadata)) = (&self.handoff, message.metadata_context) {
            let namespaces: HashMap<String, Value> = metadata
                .filter_metadata
                .into_iter()
                .map(|(ns, s)| (ns, Value::Object(struct_to_json(s))))
                .collect();
            self.handoff = Handoff::from_metadata(&namespaces);
        }
        let Some(phase) = message.request else {
            return Err(Status::invalid_argument(
                "ProcessingRequest without a phase",
            ));
        };
        if self.handoff.is_none()
            && matches!(phase, Phase::RequestHeaders(_) | Phase::RequestBody(_))
        {
            tracing::error!(
                "ext_proc stream without ext_authz's decision: run ext_proc after ext_authz and forward \
                 the envoy.filters.http.ext_authz metadata namespace"
            );
            return Ok(immediate(
                500,
                "agent-authz: no authorization decision for this request",
            ));
        }
        let step = Step::of(&phase);
        let reply = self.dispatch(pipeline, phase).await;
        self.finished = self.done_after(step);
        reply
    }

    /// Whether the exchange needs no further message after `step`: the request body only
    /// when tools must be stripped; the response only on MCP routes (session ids to seal, a
    /// listing to filter) or for a model listing; the response body only while it is filtered.
    fn done_after(&self, step: Step) -> bool {
        let Some(handoff) = &self.handoff else {
            return true;
        };
        let needs_body = !handoff.strip_tools.is_empty();
        let needs_response = handoff.format == Some(Format::Mcp) || handoff.filters_answer();
        match step {
            Step::RequestHeaders => !needs_body && !needs_response,
            Step::RequestBodyEnd => !needs_response,
            Step::ResponseHeaders | Step::ResponseBody => {
                matches!(self.response, ResponseFilter::Pass)
            }
            Step::ResponseBodyEnd => true,
            Step::Other => false,
        }
    }

    async fn dispatch<E: PolicyEngine>(
        &mut self,
        pipeline: &Pipeline<E>,
        phase: Phase,
    ) -> Result<ProcessingResponse, Status> {
        match phase {
            Phase::RequestHeaders(headers) => {
                self.saw_request_headers = true;
                self.path = header(&headers, ":path").unwrap_or_default();
                Ok(reply(Reply::RequestHeaders(HeadersResponse::default())))
            }
            Phase::RequestBody(body) => self.request_body(pipeline, body.body, body.end_of_stream),
            Phase::RequestTrailers(_) => {
                Ok(reply(Reply::RequestTrailers(TrailersResponse::default())))
            }
            Phase::ResponseHeaders(headers) => Ok(self.response_headers(pipeline, &headers)),
            Phase::ResponseBody(body) => {
                self.response_body(pipeline, body.body, body.end_of_stream)
                    .await
            }
            Phase::ResponseTrailers(_) => {
                Ok(reply(Reply::ResponseTrailers(TrailersResponse::default())))
            }
        }
    }

    fn request_body<E: PolicyEngine>(
        &mut self,
        pipeline: &Pipeline<E>,
        body: Bytes,
        end_of_stream: bool,
    ) -> Result<ProcessingResponse, Status> {
        let strip = self
            .handoff
            .as_ref()
            .map(|h| h.strip_tools.as_slice())
            .unwrap_or(&[]);
        if strip.is_empty() {
            return Ok(reply(Reply::RequestBody(BodyResponse::default())));
        }
        if !end_of_stream {
            tracing::error!(
                "tools must be stripped but the body arrived in parts: set request_body_mode: BUFFERED"
            );
            return Ok(immediate(
                500,
                "agent-authz: request body must be buffered to remove denied tools",
            ));
        }
        let format = self.handoff.as_ref().and_then(|h| h.format);
        let Some(format) = format else {
            return Ok(immediate(
                500,
                "agent-authz: the decision names no request format",
            ));
        };
        let rewritten = match dialect(format).strip_tools(&body, strip) {
            Ok(Some(rewritten)) => rewritten,
            // ext_authz read a denied tool in this body that the editor cannot find: the two
            // readings differ, so the body is not passed on.
            Ok(None) => {
                tracing::error!(tools = ?strip, "denied tools not found in the body to strip");
                return Ok(immediate(
                    500,
                    "agent-authz: the denied tools could not be removed from the request body",
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot strip tools from the request body");
                return Ok(immediate(
                    400,
                    "agent-authz: request body cannot be rewritten",
                ));
            }
        };
        tracing::debug!(tools = ?strip, "stripped denied tools");
        if let Some(handoff) = &self.handoff {
            pipeline.confirm_strip(handoff, &self.path);
        }
        // With request headers SKIPped Envoy already dropped content-length; otherwise the new
        // length must be set or Envoy answers 500 for the mismatch. The pending-strip marker
        // goes: the strip is done (a buffered body's reply may change headers).
        let header_mutation = Some(HeaderMutation {
            set_headers: if self.saw_request_headers {
                vec![set_header("content-length", rewritten.len().to_string())]
            } else {
                vec![]
            },
            remove_headers: vec![STRIP_PENDING_HEADER.to_owned()],
        });
        Ok(reply(Reply::RequestBody(BodyResponse {
            response: Some(CommonResponse {
                header_mutation,
                body_mutation: Some(BodyMutation {
                    mutation: Some(Mutation::Body(rewritten)),
                }),
                ..CommonResponse::default()
            }),
        })))
    }

    fn response_headers<E: PolicyEngine>(
        &mut self,
        pipeline: &Pipeline<E>,
        headers: &HttpHeaders,
    ) -> ProcessingResponse {
        let filtered = self.handoff.as_ref().is_some_and(Handoff::filters_answer);
        let ok = header(headers, ":status").as_deref() == Some("200");
        // ext_authz asked for this answer uncompressed; one that is encoded anyway cannot be
        // read, so it is not passed on (a client would decode it and see every item or call).
        if let Some(encoding) = header(headers, "content-encoding").filter(|e| {
            filtered && !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity")
        }) {
            tracing::error!(
                encoding,
                "an answer to filter arrived compressed and cannot be read; refused"
            );
            return immediate(
                502,
                "agent-authz: the upstream answered compressed, and this answer must be read",
            );
        }
        let content_type = header(headers, "content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let judging = self
            .handoff
            .as_ref()
            .filter(|h| h.judge_tool_calls.is_some() && ok && !headers.end_of_stream)
            .map(|h| h.format.unwrap_or(Format::OpenaiChat));
        let judged = match judging {
            Some(format) => match tool_calls::Judged::new(
                format,
                &content_type,
                pipeline.max_list_response_bytes(),
                pipeline.denied_tool_call(),
            ) {
                Ok(judged) => Some(judged),
                // An answer in a shape no reader reads (text/plain, none, a stream framing the
                // format does not use): a lenient client could still read calls out of it, so
                // it is not passed on unjudged.
                Err(tool_calls::Unread {
                    format,
                    content_type,
                }) => {
                    tracing::error!(
                        format = format.as_str(),
                        content_type,
                        "model_tool_calls: judge on an answer that cannot be read; refused"
                    );
                    return immediate(
                        502,
                        "agent-authz: tool calls in this answer cannot be judged",
                    );
                }
            },
            None => None,
        };
        let listing = filtered
            && self
                .handoff
                .as_ref()
                .is_some_and(|h| h.judge_tool_calls.is_none());
        self.response = match (
            listing && ok && !headers.end_of_stream,
            content_type.as_str(),
            judged,
        ) {
            (_, _, Some(judged)) => ResponseFilter::ToolCalls(Box::new(judged)),
            (true, ct, None) if ct.starts_with("application/json") => {
                ResponseFilter::Json(Vec::new())
            }
            (true, ct, None) if ct.starts_with("text/event-stream") => {
                let splitter = sse::EventSplitter::new(pipeline.max_list_response_bytes());
                if self.probes_transport() {
                    ResponseFilter::Probe(splitter)
                } else {
                    ResponseFilter::Sse(splitter)
                }
            }
            // A listing answer in a type the filter does not read (text/plain, none): a lenient
            // client could still parse the list out of it, so it is not passed on.
            (true, ct, None) => {
                tracing::error!(
                    content_type = ct,
                    "a listing answer arrived in a type that cannot be filtered; refused"
                );
                return immediate(
                    502,
                    "agent-authz: the upstream answered a listing in a type that cannot be filtered",
                );
            }
            _ => ResponseFilter::Pass,
        };
        let mut mutation = HeaderMutation::default();
        if !matches!(self.response, ResponseFilter::Pass) {
            // The body will change length.
            mutation.remove_headers.push("content-length".to_owned());
        }
        if let Some(sealed) = self.sealed_session(pipeline, headers) {
            mutation
                .set_headers
                .push(set_header(MCP_SESSION_HEADER, sealed));
        }
        let changed = !mutation.set_headers.is_empty() || !mutation.remove_headers.is_empty();
        let response = changed.then(|| CommonResponse {
            header_mutation: Some(mutation),
            ..CommonResponse::default()
        });
        reply(Reply::ResponseHeaders(HeadersResponse { response }))
    }

    /// The session id an MCP server minted, sealed to the principal of the exchange (see
    /// [`crate::identity::session`]).
    fn sealed_session<E: PolicyEngine>(
        &self,
        pipeline: &Pipeline<E>,
        headers: &HttpHeaders,
    ) -> Option<String> {
        let handoff = self.handoff.as_ref()?;
        if handoff.format != Some(Format::Mcp) {
            return None;
        }
        let session = header(headers, MCP_SESSION_HEADER)?;
        pipeline.seal_session(&handoff.principal.id, session.trim())
    }

    async fn response_body<E: PolicyEngine>(
        &mut self,
        pipeline: &Pipeline<E>,
        chunk: Bytes,
        end_of_stream: bool,
    ) -> Result<ProcessingResponse, Status> {
        let limit = pipeline.max_list_response_bytes();
        let mut hidden = Vec::new();
        let unreadable = |e: sse::SseError| Status::resource_exhausted(e.to_string());
        if let ResponseFilter::Probe(splitter) = &mut self.response {
            let mut events = splitter.push(&chunk).map_err(unreadable)?;
            if end_of_stream {
                events.push(splitter.finish());
            }
            let Some(first) = events.first() else {
                return Ok(body_reply(None));
            };
            if first.event_type() != "endpoint" {
                // Streamable HTTP: nothing to filter; release what was held and let go.
                let mut raw: Vec<u8> = events.into_iter().flat_map(|e| e.raw).collect();
                raw.extend(splitter.finish().raw);
                self.response = ResponseFilter::Pass;
                return Ok(body_reply(Some(raw)));
            }
            if let ResponseFilter::Probe(splitter) = std::mem::take(&mut self.response) {
                self.response = ResponseFilter::Sse(splitter);
            }
            let output = self.filter_events(pipeline, events, &mut hidden).await?;
            return Ok(with_hidden(body_reply(Some(output)), &hidden));
        }
        let output = match &mut self.response {
            ResponseFilter::Pass => return Ok(reply(Reply::ResponseBody(BodyResponse::default()))),
            ResponseFilter::ToolCalls(judged) => {
                let Some(handoff) = &self.handoff else {
                    return Err(Status::internal("no decision to judge the answer by"));
                };
                // An answer that cannot be read is not passed on: its calls would go unjudged.
                return judged
                    .chunk(pipeline, handoff, &self.path, &chunk, end_of_stream)
                    .await
                    .map(|(out, withheld)| {
                        with_names(body_reply(Some(out)), "withheld_tool_calls", &withheld)
                    })
                    .map_err(|e| Status::internal(format!("the answer cannot be judged: {e}")));
            }
            ResponseFilter::Json(buffer) => {
                buffer.extend_from_slice(&chunk);
                if buffer.len() > limit {
                    return Err(Status::resource_exhausted(format!(
                        "tools/list answer exceeds {limit} bytes"
                    )));
                }
                if !end_of_stream {
                    return Ok(body_reply(None));
                }
                let message = std::mem::take(buffer);
                self.filter_message(pipeline, message, &mut hidden).await?
            }
            ResponseFilter::Sse(splitter) => {
                let mut events = splitter.push(&chunk).map_err(unreadable)?;
                if end_of_stream {
                    events.push(splitter.finish());
                }
                self.filter_events(pipeline, events, &mut hidden).await?
            }
            // Handled above.
            ResponseFilter::Probe(_) => Vec::new(),
        };
        Ok(with_hidden(body_reply(Some(output)), &hidden))
    }

    /// Whether this exchange is an MCP GET stream whose transport its first event tells.
    fn probes_transport(&self) -> bool {
        self.handoff
            .as_ref()
            .and_then(|h| h.tools_list.as_ref())
            .is_some_and(|l| l.probe_transport)
    }

    /// The events, each carrying a listing filtered (see [`Self::filter_message`]).
    async fn filter_events<E: PolicyEngine>(
        &self,
        pipeline: &Pipeline<E>,
        events: Vec<sse::Event>,
        hidden: &mut Vec<String>,
    ) -> Result<Vec<u8>, Status> {
        let mut output = Vec::new();
        for event in events {
            let message = event
                .message()
                .map_err(|e| Status::resource_exhausted(e.to_string()))?;
            match message {
                Some(data) => {
                    let filtered = self.filter_message(pipeline, data.clone(), hidden).await?;
                    if filtered == data {
                        output.extend_from_slice(&event.raw);
                    } else {
                        output.extend_from_slice(&event.with_message(&filtered));
                    }
                }
                None => output.extend_from_slice(&event.raw),
            }
        }
        Ok(output)
    }
}

/// Reports the hidden tools in the `agent_authz` metadata namespace (for the access log).
fn with_hidden(response: ProcessingResponse, hidden: &[String]) -> ProcessingResponse {
    with_names(response, "hidden", hidden)
}

/// Reports `names` under `key` in the `agent_authz` metadata namespace (for the access log):
/// the hidden tools of a listing, the tool calls withheld from an answer.
fn with_names(mut response: ProcessingResponse, key: &str, names: &[String]) -> ProcessingResponse {
    if !names.is_empty() {
        response.dynamic_metadata = Some(Struct {
            fields: HashMap::from([(
                METADATA_NAMESPACE.to_owned(),
                PbValue {
                    kind: Some(Kind::StructValue(Struct {
                        fields: HashMap::from([(
                            key.to_owned(),
                            PbValue {
                                kind: Some(Kind::StringValue(names.join(","))),
                            },
                        )]),
                    })),
                },
            )]),
        });
    }
    response
}

impl Exchange {
    /// Filters one JSON-RPC message if it is the `tools/list` answer; returns it unchanged
    /// otherwise. Fails closed: an answer that cannot be judged is not passed on.
    async fn filter_message<E: PolicyEngine>(
        &self,
        pipeline: &Pipeline<E>,
        message: Vec<u8>,
        hidden_out: &mut Vec<String>,
    ) -> Result<Vec<u8>, Status> {
        let Some(handoff) = &self.handoff else {
            return Ok(message);
        };
        let found = match (&handoff.tools_list, &handoff.models_list) {
            (Some(_), _) => listing::tools_list(&message),
            (None, Some(_)) => listing::model_list(&message),
            (None, None) => return Ok(message),
        };
        let parsed = match found {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(message),
            Err(e) => {
                return Err(Status::internal(format!(
                    "the listing cannot be filtered: {e}"
                )));
            }
        };
        if handoff.tools_list.is_some() {
            pipeline.learn_tool_schemas(handoff, &parsed.entries);
        }
        let hidden = if handoff.tools_list.is_some() {
            pipeline
                .hidden_tools(handoff, &self.path, &parsed.names)
                .await
        } else {
            pipeline
                .hidden_models(handoff, &self.path, &parsed.names)
                .await
        }
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let filtered = parsed
            .without(&message, &hidden)
            .map_err(|e| Status::internal(format!("the listing cannot be filtered: {e}")))?;
        hidden_out.extend(hidden);
        Ok(filtered)
    }
}

fn reply(response: Reply) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..ProcessingResponse::default()
    }
}

/// A response-body reply: `Some(bytes)` replaces the chunk, `None` holds it back.
fn body_reply(body: Option<Vec<u8>>) -> ProcessingResponse {
    let mutation = match body {
        Some(bytes) => Mutation::Body(bytes),
        None => Mutation::ClearBody(true),
    };
    reply(Reply::ResponseBody(BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(mutation),
            }),
            ..CommonResponse::default()
        }),
    }))
}

fn immediate(status: u16, message: &str) -> ProcessingResponse {
    reply(Reply::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(status),
        }),
        headers: Some(HeaderMutation {
            set_headers: vec![set_header("content-type", "application/json".to_owned())],
            remove_headers: vec![],
        }),
        body: json!({"error": {"message": message, "type": "server_error", "code": "ext_proc"}})
            .to_string()
            .into_bytes(),
        grpc_status: None,
        details: "agent_authz_ext_proc".to_owned(),
    }))
}

fn set_header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: String::new(),
            raw_value: value.into_bytes(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

/// A header's value; ext_proc sends values in `raw_value`.
fn header(headers: &HttpHeaders, name: &str) -> Option<String> {
    headers
        .headers
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
}

#[cfg(test)]
#[path = "ext_proc_tests.rs"]
mod tests;
