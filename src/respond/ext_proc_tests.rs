use std::sync::Arc;

use super::super::processing_request::HttpBody;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, Metadata};

use super::*;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::decide::{DecideError, Decision, Effect, ResourceCheck};
use crate::handoff::{EXT_AUTHZ_NAMESPACE, HandoffPrincipal, METADATA_KEY, ToolsListHandoff};
use crate::identity::{Authenticator, SharedPrincipal};

/// Hides `delete_repo`; sees everything else.
struct HideDeleteRepo;

impl PolicyEngine for HideDeleteRepo {
    async fn check(
        &self,
        _: &std::sync::Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        _: &str,
    ) -> Result<Decision, DecideError> {
        Ok(Decision::each(checks, None, |check| {
            if check.id == "delete_repo" {
                Effect::Deny
            } else {
                Effect::Allow
            }
        }))
    }
}

async fn pipeline() -> Pipeline<HideDeleteRepo> {
    let config = Config::parse("identity: {source: envoy_jwt_authn}\n").unwrap();
    let auth = Authenticator::start(&config.identity, Default::default())
        .await
        .unwrap();
    Pipeline::new(
        &config,
        auth,
        HideDeleteRepo,
        AuditLog::memory(),
        Arc::new(crate::metrics::Metrics::new()),
    )
}

fn handoff(strip: &[&str], list_id: Option<Value>) -> Handoff {
    Handoff {
        decision_id: "d-1".into(),
        request_id: "r-1".into(),
        format: Some(crate::config::Format::OpenaiChat),
        principal: HandoffPrincipal {
            id: "alice".into(),
            roles: vec!["support".into()],
            attr: Default::default(),
        },
        strip_tools: strip.iter().map(|s| s.to_string()).collect(),
        models_list: None,
        judge_tool_calls: None,
        tools_list: list_id.map(|id| ToolsListHandoff {
            request_ids: vec![id.to_string()],
            server: "support".into(),
            kind: "mcp_server".into(),
            probe_transport: false,
        }),
    }
}

fn metadata(handoff: &Handoff) -> Metadata {
    let fields = json!({ METADATA_KEY: handoff.to_value() });
    let Some(Value::Object(map)) = Some(fields) else {
        unreachable!()
    };
    Metadata {
        filter_metadata: HashMap::from([(
            EXT_AUTHZ_NAMESPACE.to_owned(),
            super::super::ext_authz::json_to_struct(map),
        )]),
        ..Metadata::default()
    }
}

fn headers(
    phase: fn(HttpHeaders) -> Phase,
    pairs: &[(&str, &str)],
    meta: Option<Metadata>,
) -> ProcessingRequest {
    let headers = HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    };
    ProcessingRequest {
        metadata_context: meta,
        request: Some(phase(HttpHeaders {
            headers: Some(headers),
            ..HttpHeaders::default()
        })),
    }
}

fn body(phase: fn(HttpBody) -> Phase, bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(phase(HttpBody {
            body: Bytes::copy_from_slice(bytes),
            end_of_stream,
        })),
        ..ProcessingRequest::default()
    }
}

fn mutated_body(r: &ProcessingResponse) -> Option<Vec<u8>> {
    let (Some(Reply::RequestBody(b)) | Some(Reply::ResponseBody(b))) = &r.response else {
        panic!("expected a body reply, got {r:?}")
    };
    match b
        .response
        .as_ref()?
        .body_mutation
        .as_ref()?
        .mutation
        .as_ref()?
    {
        Mutation::Body(bytes) => Some(bytes.clone()),
        Mutation::ClearBody(_) => Some(vec![]),
        Mutation::StreamedResponse(_) => None,
    }
}

/// An exchange whose request headers (on `path`, with ext_authz's `handoff` in the
/// metadata) were handled, and the reply to them.
async fn opened(
    p: &Pipeline<HideDeleteRepo>,
    path: &str,
    handoff: &Handoff,
) -> (Exchange, ProcessingResponse) {
    let mut x = Exchange::default();
    let r = x
        .handle(
            p,
            headers(
                Phase::RequestHeaders,
                &[(":path", path)],
                Some(metadata(handoff)),
            ),
        )
        .await
        .unwrap();
    (x, r)
}

/// The upstream's answer headers (`pairs`) reaching the leg, and its reply.
async fn answer_headers(
    x: &mut Exchange,
    p: &Pipeline<HideDeleteRepo>,
    pairs: &[(&str, &str)],
) -> ProcessingResponse {
    x.handle(p, headers(Phase::ResponseHeaders, pairs, None))
        .await
        .unwrap()
}

const CHAT: &[u8] = br#"{"model":"m","tools":[{"type":"function","function":{"name":"get_weather"}},{"type":"function","function":{"name":"delete_repo"}}]}"#;

#[tokio::test]
async fn denied_tools_are_stripped_with_a_correct_content_length() {
    let p = pipeline().await;
    let (mut x, r) = opened(&p, "/v1/chat/completions", &handoff(&["delete_repo"], None)).await;
    assert!(matches!(r.response, Some(Reply::RequestHeaders(_))));
    let r = x
        .handle(&p, body(Phase::RequestBody, CHAT, true))
        .await
        .unwrap();
    let out = mutated_body(&r).unwrap();
    assert_eq!(
        out,
        br#"{"model":"m","tools":[{"type":"function","function":{"name":"get_weather"}}]}"#
    );
    let Some(Reply::RequestBody(b)) = &r.response else {
        unreachable!()
    };
    let set = &b
        .response
        .as_ref()
        .unwrap()
        .header_mutation
        .as_ref()
        .unwrap()
        .set_headers[0];
    let set = set.header.as_ref().unwrap();
    assert_eq!(
        (set.key.as_str(), set.raw_value.as_slice()),
        ("content-length", out.len().to_string().as_bytes())
    );
    let mutation = b
        .response
        .as_ref()
        .unwrap()
        .header_mutation
        .as_ref()
        .unwrap();
    assert_eq!(mutation.remove_headers, [STRIP_PENDING_HEADER]);
    let log = p.audit_lines();
    let strip = log
        .iter()
        .find(|r| r["phase"] == "strip")
        .expect("strip record");
    assert_eq!(strip["decision_id"], "d-1");
    assert_eq!(strip["denied_tools"], json!(["delete_repo"]));
}

#[tokio::test]
async fn a_denied_tool_the_editor_cannot_find_fails_closed() {
    let p = pipeline().await;
    let (mut x, _) = opened(&p, "/v1/chat/completions", &handoff(&["not_there"], None)).await;
    let r = x
        .handle(&p, body(Phase::RequestBody, CHAT, true))
        .await
        .unwrap();
    let Some(Reply::ImmediateResponse(i)) = r.response else {
        panic!("expected a refusal, got {r:?}")
    };
    assert_eq!(i.status.unwrap().code, 500);
}

#[tokio::test]
async fn nothing_to_strip_leaves_the_body_alone() {
    let p = pipeline().await;
    let mut x = Exchange::default();
    let r = x
        .handle(
            &p,
            ProcessingRequest {
                metadata_context: Some(metadata(&handoff(&[], None))),
                ..body(Phase::RequestBody, CHAT, true)
            },
        )
        .await
        .unwrap();
    assert_eq!(mutated_body(&r), None);
}

#[tokio::test]
async fn a_stream_without_ext_authz_decision_is_refused() {
    let p = pipeline().await;
    let mut x = Exchange::default();
    let r = x
        .handle(
            &p,
            headers(
                Phase::RequestHeaders,
                &[(":path", "/v1/chat/completions")],
                None,
            ),
        )
        .await
        .unwrap();
    let Some(Reply::ImmediateResponse(i)) = r.response else {
        panic!("expected refusal")
    };
    assert_eq!(i.status.unwrap().code, 500);
}

const LIST: &[u8] = br#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"refund"},{"name":"delete_repo"}],"nextCursor":"n"}}"#;
const FILTERED: &[u8] =
    br#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"refund"}],"nextCursor":"n"}}"#;

async fn list_exchange(p: &Pipeline<HideDeleteRepo>, content_type: &str) -> Exchange {
    let (mut x, _) = opened(p, "/mcp", &handoff(&[], Some(json!(5)))).await;
    let r = answer_headers(
        &mut x,
        p,
        &[
            (":status", "200"),
            ("content-type", content_type),
            ("content-length", "99"),
        ],
    )
    .await;
    let Some(Reply::ResponseHeaders(hr)) = r.response else {
        panic!("headers reply")
    };
    assert_eq!(
        hr.response.unwrap().header_mutation.unwrap().remove_headers,
        ["content-length"]
    );
    x
}

#[tokio::test]
async fn json_tools_list_answers_are_held_back_then_filtered() {
    let p = pipeline().await;
    let mut x = list_exchange(&p, "application/json").await;
    let (a, b) = LIST.split_at(30);
    let first = x
        .handle(&p, body(Phase::ResponseBody, a, false))
        .await
        .unwrap();
    assert_eq!(mutated_body(&first).unwrap(), b"", "held back");
    let last = x
        .handle(&p, body(Phase::ResponseBody, b, true))
        .await
        .unwrap();
    assert_eq!(mutated_body(&last).unwrap(), FILTERED);
    assert_eq!(
        struct_to_json(last.dynamic_metadata.unwrap())[METADATA_NAMESPACE]["hidden"],
        "delete_repo"
    );
}

#[tokio::test]
async fn sse_tools_list_answers_are_filtered_at_any_chunk_boundary() {
    let p = pipeline().await;
    let stream = [
        &b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"[..],
        b"event: message\ndata: ",
        LIST,
        b"\n\n",
    ]
    .concat();
    let expected = [
        &b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"[..],
        b"event: message\ndata: ",
        FILTERED,
        b"\n\n",
    ]
    .concat();
    for split in (0..stream.len()).step_by(7) {
        let mut x = list_exchange(&p, "text/event-stream").await;
        let mut out = Vec::new();
        for (chunk, last) in [(&stream[..split], false), (&stream[split..], true)] {
            let r = x
                .handle(&p, body(Phase::ResponseBody, chunk, last))
                .await
                .unwrap();
            out.extend(mutated_body(&r).unwrap());
        }
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected),
            "split at {split}"
        );
    }
}

#[tokio::test]
async fn other_answers_pass_untouched() {
    let p = pipeline().await;
    let (mut x, _) = opened(&p, "/mcp", &handoff(&[], None)).await;
    let r = answer_headers(
        &mut x,
        &p,
        &[(":status", "200"), ("content-type", "application/json")],
    )
    .await;
    let Some(Reply::ResponseHeaders(hr)) = r.response else {
        panic!("headers reply")
    };
    assert!(hr.response.is_none());
    let r = x
        .handle(&p, body(Phase::ResponseBody, LIST, true))
        .await
        .unwrap();
    assert_eq!(mutated_body(&r), None);
}

#[tokio::test]
async fn mcp_session_ids_reach_the_client_sealed_to_the_principal() {
    let p = pipeline().await;
    let mut h = handoff(&[], None);
    h.format = Some(Format::Mcp);
    let (mut x, _) = opened(&p, "/mcp", &h).await;
    let r = answer_headers(
        &mut x,
        &p,
        &[(":status", "200"), ("mcp-session-id", "srv-1")],
    )
    .await;
    let Some(Reply::ResponseHeaders(hr)) = r.response else {
        panic!("headers reply")
    };
    let set = hr.response.unwrap().header_mutation.unwrap().set_headers;
    let sealed = set[0].header.as_ref().unwrap();
    assert_eq!(sealed.key, MCP_SESSION_HEADER);
    let sealed = String::from_utf8(sealed.raw_value.clone()).unwrap();
    assert_eq!(p.seal_session("alice", "srv-1").unwrap(), sealed);
    assert_ne!(sealed, "srv-1");
}

#[tokio::test]
async fn a_compressed_listing_is_refused_not_passed() {
    let p = pipeline().await;
    let (mut x, _) = opened(&p, "/mcp", &handoff(&[], Some(json!(5)))).await;
    let r = answer_headers(
        &mut x,
        &p,
        &[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    )
    .await;
    let Some(Reply::ImmediateResponse(i)) = r.response else {
        panic!("expected a refusal, got {r:?}")
    };
    assert_eq!(i.status.unwrap().code, 502);
}

#[tokio::test]
async fn the_stream_ends_as_soon_as_nothing_is_left_to_do() {
    let p = pipeline().await;
    // An LLM request with nothing to strip: done once its headers are answered.
    let (x, _) = opened(&p, "/v1/chat/completions", &handoff(&[], None)).await;
    assert!(x.finished);
    // With tools to strip: the body is still to come.
    let (x, _) = opened(&p, "/v1/chat/completions", &handoff(&["delete_repo"], None)).await;
    assert!(!x.finished);
    // MCP: the answer's headers may carry a session id to seal; after them, an answer
    // that is not filtered (a GET stream open for hours) needs nothing more.
    let mut mcp = handoff(&[], None);
    mcp.format = Some(Format::Mcp);
    let (mut x, _) = opened(&p, "/mcp", &mcp).await;
    assert!(!x.finished);
    let answer = [(":status", "200"), ("content-type", "text/event-stream")];
    answer_headers(&mut x, &p, &answer).await;
    assert!(x.finished);
    // A tools/list answer is filtered to its end.
    let mut x = list_exchange(&p, "text/event-stream").await;
    assert!(!x.finished);
    x.handle(&p, body(Phase::ResponseBody, b"data: {}\n\n", true))
        .await
        .unwrap();
    assert!(x.finished);
}

/// An MCP GET stream (no Last-Event-ID) answered with SSE.
async fn get_stream(p: &Pipeline<HideDeleteRepo>) -> Exchange {
    let mut h = handoff(&[], Some(json!(null)));
    h.format = Some(Format::Mcp);
    if let Some(list) = &mut h.tools_list {
        list.request_ids.clear();
        list.probe_transport = true;
    }
    let (mut x, _) = opened(p, "/mcp", &h).await;
    let answer = [(":status", "200"), ("content-type", "text/event-stream")];
    answer_headers(&mut x, p, &answer).await;
    x
}

#[tokio::test]
async fn a_streamable_get_stream_is_released_after_its_first_event() {
    let p = pipeline().await;
    let mut x = get_stream(&p).await;
    assert!(
        !x.finished,
        "held until the first event shows the transport"
    );
    let r = x
        .handle(
            &p,
            body(Phase::ResponseBody, b"id: 1\nretry: 5000\ndata:", false),
        )
        .await
        .unwrap();
    assert_eq!(
        mutated_body(&r).unwrap(),
        b"",
        "a partial first event is held"
    );
    let r = x
        .handle(&p, body(Phase::ResponseBody, b"\n\nevent: mess", false))
        .await
        .unwrap();
    assert_eq!(
        mutated_body(&r).unwrap(),
        b"id: 1\nretry: 5000\ndata:\n\nevent: mess",
        "released whole, the next event's start too"
    );
    assert!(x.finished, "nothing more to do: the ext_proc stream ends");
}

#[tokio::test]
async fn the_http_sse_transport_stream_is_filtered_throughout() {
    let p = pipeline().await;
    let mut x = get_stream(&p).await;
    let r = x
        .handle(
            &p,
            body(
                Phase::ResponseBody,
                b"event: endpoint\ndata: /messages?sessionId=1\n\n",
                false,
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        mutated_body(&r).unwrap(),
        b"event: endpoint\ndata: /messages?sessionId=1\n\n"
    );
    assert!(!x.finished);
    let answer = [&b"event: message\ndata: "[..], LIST, b"\n\n"].concat();
    let r = x
        .handle(&p, body(Phase::ResponseBody, &answer, false))
        .await
        .unwrap();
    let want = [&b"event: message\ndata: "[..], FILTERED, b"\n\n"].concat();
    assert_eq!(mutated_body(&r).unwrap(), want);
}

#[tokio::test]
async fn a_judged_answer_loses_its_denied_calls_and_keeps_the_stream_open() {
    let p = pipeline().await;
    let mut h = handoff(&[], None);
    h.judge_tool_calls = Some("m".into());
    let (mut x, _) = opened(&p, "/v1/chat/completions", &h).await;
    assert!(!x.finished, "the answer is still to be judged");
    let answer = [(":status", "200"), ("content-type", "text/event-stream")];
    answer_headers(&mut x, &p, &answer).await;
    assert!(!x.finished);
    let call = |i: u64, name: &str| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "id": name, "type": "function", "function": {"name": name, "arguments": "{}"}}]}, "finish_reason": null}]})
        )
    };
    let stream = [
        call(0, "delete_repo"),
        call(1, "get_weather"),
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        ),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let (a, b) = stream.split_at(40);
    let mut out = Vec::new();
    let mut withheld = Vec::new();
    for (chunk, last) in [(a, false), (b, true)] {
        let r = x
            .handle(&p, body(Phase::ResponseBody, chunk.as_bytes(), last))
            .await
            .unwrap();
        out.extend(mutated_body(&r).unwrap());
        if let Some(meta) = r.dynamic_metadata {
            withheld.push(struct_to_json(meta)[METADATA_NAMESPACE]["withheld_tool_calls"].clone());
        }
    }
    assert_eq!(
        withheld,
        [json!("delete_repo")],
        "reported for the access log"
    );
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("delete_repo"), "{out}");
    assert!(out.contains(r#""index":0,"id":"get_weather""#), "{out}");
    assert!(x.finished);
    let log = p.audit_lines();
    let judged = log.iter().find(|r| r["phase"] == "response").unwrap();
    assert_eq!(judged["decision_id"], "d-1");
    assert_eq!(judged["denied_tools"], json!(["delete_repo"]));
}

#[tokio::test]
async fn a_judged_answer_in_a_shape_no_reader_reads_is_refused() {
    let p = pipeline().await;
    let cases = [
        (
            Format::BedrockConverse,
            "/model/amazon.nova-lite/converse",
            "text/plain",
        ),
        (
            Format::BedrockConverse,
            "/model/amazon.nova-lite/converse",
            "",
        ),
        (
            Format::OpenaiChat,
            "/v1/chat/completions",
            "application/vnd.amazon.eventstream",
        ),
    ];
    for (format, path, content_type) in cases {
        let mut h = handoff(&[], None);
        h.judge_tool_calls = Some("amazon.nova-lite".into());
        h.format = Some(format);
        let (mut x, _) = opened(&p, path, &h).await;
        let mut answer = vec![(":status", "200")];
        if !content_type.is_empty() {
            answer.push(("content-type", content_type));
        }
        let r = answer_headers(&mut x, &p, &answer).await;
        let Some(Reply::ImmediateResponse(i)) = r.response else {
            panic!("expected a refusal for {content_type:?}, got {r:?}")
        };
        assert_eq!(i.status.unwrap().code, 502);
    }
}

#[tokio::test]
async fn a_listing_in_a_type_the_filter_cannot_read_is_refused() {
    let p = pipeline().await;
    for content_type in ["text/plain", ""] {
        let (mut x, _) = opened(&p, "/mcp", &handoff(&[], Some(json!(5)))).await;
        let mut answer = vec![(":status", "200")];
        if !content_type.is_empty() {
            answer.push(("content-type", content_type));
        }
        let r = answer_headers(&mut x, &p, &answer).await;
        let Some(Reply::ImmediateResponse(i)) = r.response else {
            panic!("expected a refusal for {content_type:?}, got {r:?}")
        };
        assert_eq!(i.status.unwrap().code, 502);
    }
}
