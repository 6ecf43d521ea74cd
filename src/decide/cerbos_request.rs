//! Cerbos' `CheckResourcesRequest`, encoded straight from the principal and the resource
//! checks.
//!
//! The generated types hold attributes as `HashMap<String, Value>` trees: building them
//! copied every key and string of every attribute into a hashed map of boxed values, only for
//! prost to walk them once to encode them (and the map's order to be random). Here the
//! protobuf bytes are written in one pass over the JSON attributes, each nested message's
//! length prefixed once its content is written. Same field numbers, same `Value` kinds
//! (numbers as doubles, as in every protobuf `Struct`); the tests decode the bytes with the
//! generated types and compare with the message those would have built.

use bytes::BufMut;
use prost::encoding::{DecodeContext, WireType, encode_varint, encoded_len_varint};
use serde_json::{Map, Value};

use super::ResourceCheck;
use crate::identity::Principal;

/// A `CheckResourcesRequest`, already encoded; sent as it is.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EncodedRequest(Vec<u8>);

/// What every message of one request shares.
pub struct Question<'a> {
    pub request_id: &'a str,
    pub principal: &'a Principal,
    pub policy_version: &'a str,
    pub scope: &'a str,
    /// The raw token, sent as `auxData.jwt` when configured.
    pub token: Option<&'a str>,
}

impl Question<'_> {
    /// `CheckResourcesRequest { requestId, includeMeta: true, principal, resources, auxData }`.
    pub fn encode(&self, checks: &[ResourceCheck]) -> EncodedRequest {
        let mut out = Vec::with_capacity(512 + 256 * checks.len());
        string(&mut out, 1, self.request_id);
        key(&mut out, 2, WireType::Varint);
        out.push(1);
        message(&mut out, 3, |out| {
            let p = self.principal;
            string(out, 1, &p.id);
            string(out, 2, self.policy_version);
            for role in &p.roles {
                string_always(out, 3, role);
            }
            attributes(out, 4, &p.attr);
            string(out, 5, self.scope);
        });
        for check in checks {
            message(&mut out, 4, |out| {
                string_always(out, 1, &check.action);
                message(out, 2, |out| {
                    string(out, 1, &check.kind);
                    string(out, 2, self.policy_version);
                    string(out, 3, &check.id);
                    attributes(out, 4, &check.attr);
                    string(out, 5, self.scope);
                });
            });
        }
        if let Some(token) = self.token {
            message(&mut out, 5, |out| {
                message(out, 1, |out| string(out, 1, token))
            });
        }
        EncodedRequest(out)
    }
}

fn key(out: &mut Vec<u8>, tag: u32, wire_type: WireType) {
    encode_varint(u64::from(tag << 3 | wire_type as u32), out);
}

/// A string field, omitted when empty (proto3's default).
fn string(out: &mut Vec<u8>, tag: u32, value: &str) {
    if !value.is_empty() {
        string_always(out, tag, value);
    }
}

/// A string that is always written (an element of a repeated field, a `oneof` member).
fn string_always(out: &mut Vec<u8>, tag: u32, value: &str) {
    key(out, tag, WireType::LengthDelimited);
    encode_varint(value.len() as u64, out);
    out.put_slice(value.as_bytes());
}

/// A length-delimited message written by `content`: a one-byte length is reserved, and the
/// content moved up when its length needs more (messages past 127 bytes, the minority).
fn message(out: &mut Vec<u8>, tag: u32, content: impl FnOnce(&mut Vec<u8>)) {
    key(out, tag, WireType::LengthDelimited);
    let at = out.len();
    out.push(0);
    content(out);
    let len = out.len() - at - 1;
    let width = encoded_len_varint(len as u64);
    if width == 1 {
        out[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(width);
        encode_varint(len as u64, &mut prefix);
        out.splice(at..=at, prefix);
    }
}

/// A `map<string, google.protobuf.Value>` field: one entry message per attribute.
fn attributes(out: &mut Vec<u8>, tag: u32, map: &Map<String, Value>) {
    for (name, value) in map {
        message(out, tag, |out| {
            string(out, 1, name);
            message(out, 2, |out| kind(out, value));
        });
    }
}

/// The `kind` oneof of a `google.protobuf.Value`.
fn kind(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => {
            key(out, 1, WireType::Varint);
            out.push(0);
        }
        Value::Number(n) => {
            key(out, 2, WireType::SixtyFourBit);
            out.put_f64_le(n.as_f64().unwrap_or(f64::NAN));
        }
        Value::String(s) => string_always(out, 3, s),
        Value::Bool(b) => {
            key(out, 4, WireType::Varint);
            out.push(u8::from(*b));
        }
        Value::Object(map) => message(out, 5, |out| attributes(out, 1, map)),
        Value::Array(items) => message(out, 6, |out| {
            for item in items {
                message(out, 1, |out| kind(out, item));
            }
        }),
    }
}

/// Sent only: encoding writes the bytes as they are; decoding (never done) skips everything.
impl prost::Message for EncodedRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use cerbos::genpb::cerbos::engine::v1 as engine;
    use cerbos::genpb::cerbos::request::v1::{
        AuxData, CheckResourcesRequest, aux_data, check_resources_request::ResourceEntry,
    };
    use cerbos::genpb::google::protobuf::{ListValue, Struct, Value as PbValue, value::Kind};
    use prost::Message;
    use serde_json::json;

    use super::*;
    use crate::decide::test_support::check;

    /// What the generated types would have built (the encoder before this one).
    fn to_pb_map(map: &Map<String, Value>) -> HashMap<String, PbValue> {
        map.iter().map(|(k, v)| (k.clone(), to_pb(v))).collect()
    }

    fn to_pb(value: &Value) -> PbValue {
        let kind = match value {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(items) => Kind::ListValue(ListValue {
                values: items.iter().map(to_pb).collect(),
            }),
            Value::Object(map) => Kind::StructValue(Struct {
                fields: to_pb_map(map),
            }),
        };
        PbValue { kind: Some(kind) }
    }

    fn generated(q: &Question<'_>, checks: &[ResourceCheck]) -> CheckResourcesRequest {
        CheckResourcesRequest {
            request_id: q.request_id.to_owned(),
            include_meta: true,
            principal: Some(engine::Principal {
                id: q.principal.id.clone(),
                policy_version: q.policy_version.to_owned(),
                roles: q.principal.roles.clone(),
                attr: to_pb_map(&q.principal.attr),
                scope: q.scope.to_owned(),
            }),
            resources: checks
                .iter()
                .map(|c| ResourceEntry {
                    actions: vec![c.action.clone()],
                    resource: Some(engine::Resource {
                        kind: c.kind.clone(),
                        policy_version: q.policy_version.to_owned(),
                        id: c.id.clone(),
                        attr: to_pb_map(&c.attr),
                        scope: q.scope.to_owned(),
                    }),
                })
                .collect(),
            aux_data: q.token.map(|t| AuxData {
                jwt: Some(aux_data::Jwt {
                    token: t.to_owned(),
                    key_set_id: String::new(),
                }),
            }),
        }
    }

    #[test]
    fn decodes_as_the_generated_request_would_have_been_built() {
        let long = "x".repeat(300);
        let longer = "y".repeat(20_000);
        let principal = Principal {
            id: "alice".into(),
            roles: vec!["support".into(), String::new(), "admin".into()],
            attr: json!({
                "team": "a", "limit": 3, "ratio": -0.25, "big": 18446744073709551615u64,
                "on": true, "off": false, "none": null, "": "empty key", "empty": "",
                "nested": {"list": [1, "two", [3.5, {"four": null}], {}, []], "long": long},
                "unicode": "é漢🙂\u{0}",
            })
            .as_object()
            .cloned()
            .unwrap(),
            token: None,
        };
        let checks = [
            check("a", json!({"tool_name": "a", "schema": {"type": "object"}})),
            check("", json!({})),
            ResourceCheck {
                kind: "mcp_server".into(),
                action: "tools/call/x".into(),
                ..check("b", json!({"arguments": {"text": longer, "n": [0, 1e300]}}))
            },
        ];
        for (request_id, token, scope) in
            [("r-1", None, "acme.eu"), ("", Some("eyJ.token.sig"), "")]
        {
            let q = Question {
                request_id,
                principal: &principal,
                policy_version: "default",
                scope,
                token,
            };
            for range in [0..0, 0..1, 0..3] {
                let encoded = q.encode(&checks[range.clone()]);
                assert_eq!(encoded.encoded_len(), encoded.0.len());
                let decoded = CheckResourcesRequest::decode(&encoded.0[..]).unwrap();
                assert_eq!(decoded, generated(&q, &checks[range]));
            }
        }
    }
}
