//! Cerbos' `CheckResourcesResponse`, decoded as far as agent-authz reads it.
//!
//! The generated type decodes every field, and each result's two maps (`actions` and
//! `meta.actions`) into `HashMap`s: per resource, two hashed and allocated maps that are read
//! once, by one key. Without the cache, decoding the answer for 21 resources was the largest
//! single cost of a check in agent-authz (callgrind). The messages below mirror the wire format
//! (same field numbers) for the fields agent-authz uses. A protobuf map is, on the wire, a
//! repeated entry message, so the maps decode into vectors of entries; fields not listed
//! (`validation_errors`, the resource's version and scope) are
//! skipped without being built.

use cerbos::genpb::cerbos::engine::v1::OutputEntry;

/// `cerbos.response.v1.CheckResourcesResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckResourcesAnswer {
    #[prost(message, repeated, tag = "2")]
    pub results: Vec<ResultEntry>,
    #[prost(string, tag = "3")]
    pub cerbos_call_id: String,
}

/// `CheckResourcesResponse.ResultEntry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResultEntry {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// `map<string, cerbos.effect.v1.Effect> actions`.
    #[prost(message, repeated, tag = "2")]
    pub actions: Vec<ActionEffect>,
    #[prost(message, optional, tag = "4")]
    pub meta: Option<Meta>,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<OutputEntry>,
}

impl ResultEntry {
    /// The effect Cerbos gave `action` (the raw enum value), as a map lookup would: the last
    /// entry for the key wins.
    pub fn effect(&self, action: &str) -> Option<i32> {
        self.actions
            .iter()
            .rev()
            .find(|e| e.action == action)
            .map(|e| e.effect)
    }

    /// The policy that decided `action`, when Cerbos named one (`includeMeta`).
    pub fn matched_policy(&self, action: &str) -> Option<&str> {
        self.meta
            .as_ref()?
            .actions
            .iter()
            .rev()
            .find(|e| e.action == action)
            .and_then(|e| e.meta.as_ref())
            .map(|m| m.matched_policy.as_str())
            .filter(|p| !p.is_empty())
    }
}

/// `ResultEntry.Resource`: what the result is about.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub kind: String,
}

/// One entry of `ResultEntry.actions`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActionEffect {
    #[prost(string, tag = "1")]
    pub action: String,
    #[prost(int32, tag = "2")]
    pub effect: i32,
}

/// `ResultEntry.Meta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Meta {
    /// `map<string, EffectMeta> actions`.
    #[prost(message, repeated, tag = "1")]
    pub actions: Vec<ActionMeta>,
    #[prost(string, repeated, tag = "2")]
    pub effective_derived_roles: Vec<String>,
}

/// One entry of `Meta.actions`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActionMeta {
    #[prost(string, tag = "1")]
    pub action: String,
    #[prost(message, optional, tag = "2")]
    pub meta: Option<EffectMeta>,
}

/// `Meta.EffectMeta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EffectMeta {
    #[prost(string, tag = "1")]
    pub matched_policy: String,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use cerbos::genpb::cerbos::response::v1::CheckResourcesResponse;
    use cerbos::genpb::cerbos::response::v1::check_resources_response::ResultEntry as FullEntry;
    use cerbos::genpb::cerbos::response::v1::check_resources_response::result_entry::{
        self, meta::EffectMeta as FullEffectMeta,
    };
    use cerbos::genpb::google::protobuf::{Value, value::Kind};
    use prost::Message;

    use super::*;

    /// The full generated response, encoded, reads back the same through the lean types.
    #[test]
    fn decodes_what_the_generated_response_encodes() {
        let full = CheckResourcesResponse {
            request_id: "r".into(),
            cerbos_call_id: "c1".into(),
            results: vec![FullEntry {
                resource: Some(result_entry::Resource {
                    id: "gpt-4o".into(),
                    kind: "llm_model".into(),
                    policy_version: "default".into(),
                    scope: "acme".into(),
                }),
                actions: HashMap::from([("invoke".into(), 1), ("list".into(), 2)]),
                validation_errors: vec![],
                meta: Some(result_entry::Meta {
                    actions: HashMap::from([(
                        "invoke".into(),
                        FullEffectMeta {
                            matched_policy: "resource.llm_model.vdefault".into(),
                            matched_scope: "acme".into(),
                        },
                    )]),
                    effective_derived_roles: vec!["owner".into()],
                }),
                outputs: vec![OutputEntry {
                    src: "resource.llm_model.vdefault#rule-1".into(),
                    val: Some(Value {
                        kind: Some(Kind::StringValue("why".into())),
                    }),
                }],
            }],
        };
        let lean = CheckResourcesAnswer::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(lean.cerbos_call_id, "c1");
        let entry = &lean.results[0];
        let resource = entry.resource.as_ref().unwrap();
        assert_eq!(
            (resource.id.as_str(), resource.kind.as_str()),
            ("gpt-4o", "llm_model")
        );
        assert_eq!(entry.effect("invoke"), Some(1));
        assert_eq!(entry.effect("list"), Some(2));
        assert_eq!(entry.effect("delete"), None);
        assert_eq!(
            entry.matched_policy("invoke"),
            Some("resource.llm_model.vdefault")
        );
        assert_eq!(entry.matched_policy("list"), None);
        assert_eq!(entry.outputs, full.results[0].outputs);
        assert_eq!(
            entry.meta.as_ref().unwrap().effective_derived_roles,
            ["owner"]
        );
    }
}
