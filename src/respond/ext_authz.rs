//! Envoy's `envoy.service.auth.v3.Authorization/Check`: decode the `CheckRequest` into a
//! [`CheckInput`], encode the [`Outcome`] as a `CheckResponse` (the service is in
//! [`super::check_request`]).
//!
//! Every response carries an explicit status: Envoy treats a response without one as OK.
//! Denials use `denied_response` (never `error_response`), so a deployment that turned on
//! `failure_mode_allow` still cannot let a refused request through.

use bytes::Bytes;
use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as PbValue, value::Kind};
use envoy_types::pb::google::rpc::Status;
use serde_json::{Map, Value};

use super::check_request::CheckRequest;
use super::{Denial, Outcome};
use crate::headers::Headers;
use crate::pipeline::CheckInput;

/// gRPC status codes used in `CheckResponse.status`.
const CODE_OK: i32 = 0;
const CODE_PERMISSION_DENIED: i32 = 7;
const CODE_UNAVAILABLE: i32 = 14;
const CODE_UNAUTHENTICATED: i32 = 16;

/// CheckRequest → CheckInput. Reads `raw_body` (exact bytes, `pack_as_bytes: true`) when
/// present, else `body`; and headers from `header_map` when Envoy sends raw headers.
pub fn decode(request: CheckRequest) -> CheckInput {
    let attributes = request.attributes.unwrap_or_default();
    let source_principal = attributes
        .source
        .as_ref()
        .map(|peer| peer.principal.clone())
        .unwrap_or_default();
    let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
    let raw = http.header_map.map(|m| m.headers).unwrap_or_default();
    let mut headers =
        Headers::with_capacity_and_hasher(http.headers.len() + raw.len(), Default::default());
    // A key given twice: the last entry wins, as in a proto map (Envoy sends each once).
    for entry in http.headers {
        headers.insert(entry.key, entry.value);
    }
    for h in raw {
        let value = if h.raw_value.is_empty() {
            h.value
        } else {
            String::from_utf8_lossy(&h.raw_value).into_owned()
        };
        headers
            .entry(h.key.to_ascii_lowercase())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let body = if http.raw_body.is_empty() {
        Bytes::from(http.body.into_bytes())
    } else {
        http.raw_body
    };
    let metadata = attributes
        .metadata_context
        .map(|m| {
            m.filter_metadata
                .into_iter()
                .map(|(ns, s)| (ns, Value::Object(struct_to_json(s))))
                .collect()
        })
        .unwrap_or_default();
    CheckInput {
        method: http.method,
        path: http.path,
        headers,
        body,
        metadata,
        source_principal,
        context_extensions: attributes.context_extensions,
    }
}

/// Outcome → CheckResponse.
pub fn encode(outcome: Outcome) -> CheckResponse {
    match outcome {
        Outcome::Allow {
            headers,
            remove_headers,
            response_headers,
            metadata,
        } => CheckResponse {
            status: Some(status(CODE_OK, "")),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: headers.into_iter().map(|(k, v)| header(k, v)).collect(),
                headers_to_remove: remove_headers,
                response_headers_to_add: response_headers
                    .into_iter()
                    .map(|(k, v)| header(k, v))
                    .collect(),
                ..OkHttpResponse::default()
            })),
            dynamic_metadata: Some(json_to_struct(metadata)),
        },
        Outcome::Deny {
            denial:
                Denial {
                    status: http_status,
                    headers,
                    body,
                },
            metadata,
        } => {
            let code = match http_status {
                401 => CODE_UNAUTHENTICATED,
                500..=599 => CODE_UNAVAILABLE,
                _ => CODE_PERMISSION_DENIED,
            };
            CheckResponse {
                status: Some(status(code, "denied by agent-authz")),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(http_status),
                    }),
                    headers: headers.into_iter().map(|(k, v)| header(k, v)).collect(),
                    body,
                })),
                dynamic_metadata: Some(json_to_struct(metadata)),
            }
        }
    }
}

fn status(code: i32, message: &str) -> Status {
    Status {
        code,
        message: message.to_owned(),
        details: vec![],
    }
}

fn header(key: String, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key,
            value,
            raw_value: vec![],
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

pub(crate) fn struct_to_json(s: Struct) -> Map<String, Value> {
    s.fields
        .into_iter()
        .map(|(k, v)| (k, pb_to_json(v)))
        .collect()
}

fn pb_to_json(value: PbValue) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(pb_to_json).collect()),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
    }
}

pub(crate) fn json_to_struct(map: Map<String, Value>) -> Struct {
    Struct {
        fields: map.into_iter().map(|(k, v)| (k, json_to_pb(v))).collect(),
    }
}

fn json_to_pb(value: Value) -> PbValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_pb).collect(),
        }),
        Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    PbValue { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, Metadata};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request as AttrRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest as EnvoyCheckRequest,
    };
    use prost::Message;
    use serde_json::json;

    use super::*;

    /// Built with envoy-types' complete messages and sent through the wire format, so the lean
    /// messages agent-authz decodes are checked against Envoy's field numbers too.
    fn check_request(http: HttpRequest, metadata: Option<Metadata>) -> CheckRequest {
        let full = EnvoyCheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    principal: "spiffe://cluster.local/ns/agents/sa/bot".into(),
                    service: "ignored".into(),
                    ..Peer::default()
                }),
                destination: Some(Peer {
                    principal: "not the source".into(),
                    ..Peer::default()
                }),
                request: Some(AttrRequest {
                    http: Some(http),
                    ..AttrRequest::default()
                }),
                context_extensions: HashMap::from([("k".to_owned(), "v".to_owned())]),
                metadata_context: metadata,
                ..AttributeContext::default()
            }),
        };
        CheckRequest::decode(full.encode_to_vec().as_slice()).expect("wire-compatible")
    }

    #[test]
    fn decodes_both_body_packings_and_raw_headers() {
        let input = decode(check_request(
            HttpRequest {
                method: "POST".into(),
                path: "/mcp?x=1".into(),
                body: "{\"a\":1}".into(),
                ..HttpRequest::default()
            },
            None,
        ));
        assert_eq!(
            (input.method.as_str(), input.path.as_str()),
            ("POST", "/mcp?x=1")
        );
        assert_eq!(&input.body[..], b"{\"a\":1}");
        assert_eq!(
            input.source_principal,
            "spiffe://cluster.local/ns/agents/sa/bot"
        );

        let input = decode(check_request(
            HttpRequest {
                body: "ignored".into(),
                raw_body: b"\xff\xfe".to_vec(),
                header_map: Some(HeaderMap {
                    headers: vec![
                        HeaderValue {
                            key: "Authorization".into(),
                            value: String::new(),
                            raw_value: b"Bearer a".to_vec(),
                        },
                        HeaderValue {
                            key: "authorization".into(),
                            value: String::new(),
                            raw_value: b"Bearer b".to_vec(),
                        },
                    ],
                }),
                ..HttpRequest::default()
            },
            None,
        ));
        assert_eq!(
            &input.body[..],
            b"\xff\xfe",
            "raw_body wins and keeps exact bytes"
        );
        assert_eq!(
            input.headers["authorization"], "Bearer a,Bearer b",
            "repeats are joined like Envoy does"
        );
    }

    #[test]
    fn headers_decode_as_envoy_sends_them() {
        let sent = HashMap::from(
            [
                ("authorization", "Bearer t"),
                ("x-request-id", "r-1"),
                ("content-type", "application/json"),
                (":path", "/v1/chat/completions"),
                ("x-empty", ""),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let input = decode(check_request(
            HttpRequest {
                headers: sent.clone(),
                ..HttpRequest::default()
            },
            None,
        ));
        assert_eq!(input.headers, sent.into_iter().collect::<Headers>());
    }

    #[test]
    fn a_header_key_sent_twice_keeps_the_last_value_as_a_proto_map_does() {
        use super::super::check_request as lean;
        let entry = |key: &str, value: &str| lean::HeaderEntry {
            key: key.into(),
            value: value.into(),
        };
        let wire = lean::CheckRequest {
            attributes: Some(lean::AttributeContext {
                request: Some(lean::Request {
                    http: Some(lean::HttpRequest {
                        headers: vec![
                            entry("authorization", "Bearer a"),
                            entry("x-request-id", "r-1"),
                            entry("authorization", "Bearer b"),
                        ],
                        ..lean::HttpRequest::default()
                    }),
                }),
                ..lean::AttributeContext::default()
            }),
        }
        .encode_to_vec();
        // What prost's own map decoding (envoy-types' message) makes of the same bytes.
        let reference = EnvoyCheckRequest::decode(wire.as_slice())
            .unwrap()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap()
            .headers;
        let input = decode(CheckRequest::decode(wire.as_slice()).unwrap());
        assert_eq!(input.headers, reference.into_iter().collect::<Headers>());
        assert_eq!(input.headers["authorization"], "Bearer b");
        assert_eq!(input.headers.len(), 2);
    }

    #[test]
    fn decodes_jwt_authn_metadata() {
        let payload = json_to_struct(
            json!({"sub": "alice", "exp": 1.0e9})
                .as_object()
                .unwrap()
                .clone(),
        );
        let metadata = Metadata {
            filter_metadata: HashMap::from([(
                "envoy.filters.http.jwt_authn".to_owned(),
                Struct {
                    fields: HashMap::from([(
                        "jwt_payload".to_owned(),
                        PbValue {
                            kind: Some(Kind::StructValue(payload)),
                        },
                    )]),
                },
            )]),
            ..Metadata::default()
        };
        let input = decode(check_request(HttpRequest::default(), Some(metadata)));
        assert_eq!(
            input.metadata["envoy.filters.http.jwt_authn"]["jwt_payload"]["sub"],
            "alice"
        );
    }

    #[test]
    fn every_response_has_an_explicit_status() {
        let allow = encode(Outcome::Allow {
            headers: vec![("x-a".into(), "1".into())],
            remove_headers: vec!["x-b".into()],
            response_headers: vec![("x-c".into(), "2".into())],
            metadata: Map::new(),
        });
        assert_eq!(allow.status.unwrap().code, CODE_OK);
        let Some(HttpResponse::OkResponse(ok)) = allow.http_response else {
            panic!("ok response")
        };
        assert_eq!(
            ok.headers[0].append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(ok.headers_to_remove, ["x-b"]);
        assert_eq!(
            ok.response_headers_to_add[0].header.as_ref().unwrap().key,
            "x-c"
        );

        for (http, code) in [
            (401, CODE_UNAUTHENTICATED),
            (403, CODE_PERMISSION_DENIED),
            (200, CODE_PERMISSION_DENIED),
            (503, CODE_UNAVAILABLE),
        ] {
            let deny = encode(Outcome::Deny {
                denial: Denial {
                    status: http,
                    headers: vec![],
                    body: "b".into(),
                },
                metadata: json!({"effect": "deny"}).as_object().unwrap().clone(),
            });
            assert_eq!(deny.status.unwrap().code, code, "HTTP {http}");
            let Some(HttpResponse::DeniedResponse(d)) = deny.http_response else {
                panic!("denied response")
            };
            assert_eq!(d.status.unwrap().code, i32::from(http));
            assert_eq!(
                pb_to_json(PbValue {
                    kind: Some(Kind::StructValue(deny.dynamic_metadata.unwrap()))
                }),
                json!({"effect": "deny"})
            );
        }
    }
}
