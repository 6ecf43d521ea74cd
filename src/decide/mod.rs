//! Stage 3: may they. Turns the principal and the extracted request into Cerbos resource
//! checks (the vocabulary), and asks a [`PolicyEngine`] for one verdict per check.
//!
//! Only [`cerbos`] knows Cerbos' wire types; everything else sees [`ResourceCheck`] and
//! [`Verdict`], so the pipeline can be tested with a fake engine.

pub mod cache;
pub mod cerbos;
mod cerbos_answer;
mod cerbos_connection;
mod cerbos_request;
mod deadline_floor;
mod deferred_pong;
mod in_flight;
pub mod question;
pub mod vocabulary;

use std::future::Future;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::audit::SharedResources;
use crate::identity::SharedPrincipal;

/// One question for the PDP: may the principal perform `action` on this resource?
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceCheck {
    pub kind: String,
    pub id: String,
    pub action: String,
    pub attr: Map<String, Value>,
    /// What part of the request the check is about, so the answer can name it.
    pub subject: Subject,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// The model an LLM call invokes.
    Model(String),
    /// A tool an LLM call declares.
    Tool(String),
    /// The MCP message at this index of the exchange (a batch has several).
    McpMessage(usize),
    /// The decision console itself (a viewer's access check, [`crate::console`]).
    Console,
}

/// Cerbos' effect for one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
    /// No policy rule matched; treated as deny.
    NoMatch,
}

impl Effect {
    pub fn allows(self) -> bool {
        self == Effect::Allow
    }

    /// The name used in logs and metrics (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::NoMatch => "no_match",
        }
    }
}

/// The answer to one [`ResourceCheck`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Shared: a remembered decision answers a repeated request with the checks it was asked
    /// ([`cache`]), without building them again.
    pub check: Arc<ResourceCheck>,
    pub effect: Effect,
    /// The policy that produced the effect, as Cerbos reports it (`resource.mcp_server.vdefault`).
    /// Shared: a remembered decision hands out its verdicts every turn without copying it.
    pub policy: Option<Arc<str>>,
    /// Rule outputs (`src` is `policy#rule`), for plain-language reasons.
    pub outputs: Vec<(String, Value)>,
    /// Derived roles that applied for this resource (`meta.effectiveDerivedRoles`), for the
    /// decision record: they explain why a role-less rule matched.
    pub derived_roles: Vec<String>,
}

impl Verdict {
    /// A plain-text reason. For a denial, the first non-empty rule output (a string, or an
    /// object with `reason`/`message`) when the policy gives one, else the policy name; an
    /// allow names its policy (outputs explain denials).
    pub fn reason(&self) -> String {
        let explains = if self.effect.allows() {
            &[][..]
        } else {
            &self.outputs[..]
        };
        for (_, value) in explains {
            let text = match value {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o
                    .get("reason")
                    .or_else(|| o.get("message"))
                    .and_then(Value::as_str),
                _ => None,
            };
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                return text.to_owned();
            }
        }
        match (&self.effect, self.policy.as_deref()) {
            (Effect::Allow, Some(p)) => format!("allowed by {}", policy_in_words(p)),
            (Effect::Allow, None) => "allowed".to_owned(),
            (Effect::Deny, Some(NO_POLICY | "")) | (Effect::NoMatch, _) => {
                "no policy covers it".to_owned()
            }
            // Cerbos does not say whether a deny rule matched or no rule allowed: the words
            // fit both. An `output` on the rule gives a better reason.
            (Effect::Deny, Some(p)) => format!("{} does not allow it", policy_in_words(p)),
            (Effect::Deny, None) => "the policy does not allow it".to_owned(),
        }
    }

    /// The rule whose output gave a denial's reason (from the output's `src`,
    /// `resource.x.vdefault#support-refund`). Cerbos names the deciding policy, never the
    /// deciding rule, so this is the explaining rule, which may differ from the denying one.
    pub fn reason_rule(&self) -> Option<&str> {
        if self.effect.allows() {
            return None;
        }
        self.outputs.iter().find_map(|(src, value)| {
            let non_empty = !matches!(value, Value::Null) && value.as_str() != Some("");
            non_empty
                .then(|| src.split_once('#').map(|(_, rule)| rule))
                .flatten()
        })
    }
}

/// What Cerbos names as the matched policy when no policy exists for the resource kind.
const NO_POLICY: &str = "NO_MATCH";

/// A policy as Cerbos names it, in words: `resource.llm_tool.vdefault` is "the llm_tool
/// policy", `resource.mcp_server.vdefault/acme` "the mcp_server policy (scope acme)",
/// `principal.alice.vdefault` "alice's principal policy"; anything else is kept as it is.
fn policy_in_words(policy: &str) -> String {
    let Some((kind, name_and_version)) = policy.split_once('.') else {
        return policy.to_owned();
    };
    let Some((name, version)) = name_and_version.rsplit_once(".v") else {
        return policy.to_owned();
    };
    let scope = version
        .split_once('/')
        .map(|(_, scope)| format!(" (scope {scope})"))
        .unwrap_or_default();
    match kind {
        "resource" => format!("the {name} policy{scope}"),
        "principal" => format!("{name}'s principal policy{scope}"),
        "role" => format!("the {name} role policy{scope}"),
        _ => policy.to_owned(),
    }
}

/// What an engine recalls of a request like one it answered before ([`PolicyEngine::recall`]).
pub enum Recall {
    /// The decision remembered for the same principal and derivation.
    Answered(Decision),
    /// Nothing remembered: once the request is decided, [`PolicyEngine::remember`] the decision
    /// under this key (`None`: the engine remembers nothing).
    Unknown(Option<RecallKey>),
}

/// Where [`PolicyEngine::remember`] keeps a decision: the request's principal and derivation.
pub struct RecallKey(Arc<question::Question>);

/// All verdicts for one request, in check order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub verdicts: Vec<Verdict>,
    /// Cerbos' call ids (one per CheckResources call), for joining with its audit log.
    pub call_ids: Vec<String>,
    /// How long the engine took to answer (cache included), set by the pipeline that asked.
    pub engine_ms: Option<f64>,
    /// The decision record's resources for exactly these verdicts, serialised once, when a
    /// request-level cache entry answered (or was made by) this decision.
    pub shared_records: Option<Arc<SharedResources>>,
}

#[cfg(test)]
impl Decision {
    /// Test support, for fake engines: every check answered with the effect `effect` picks,
    /// naming `policy`, without outputs, from one (fake) Cerbos call.
    pub fn each(
        checks: Vec<ResourceCheck>,
        policy: Option<&str>,
        effect: impl Fn(&ResourceCheck) -> Effect,
    ) -> Decision {
        let verdicts = checks
            .into_iter()
            .map(|check| Verdict {
                effect: effect(&check),
                check: check.into(),
                policy: policy.map(Arc::from),
                outputs: vec![],
                derived_roles: vec![],
            })
            .collect();
        Decision {
            verdicts,
            call_ids: vec!["call-1".into()],
            engine_ms: None,
            shared_records: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecideError {
    #[error("policy decision point unavailable: {0}")]
    Unavailable(String),
    #[error("policy decision point timed out after {0} ms")]
    Timeout(u128),
    #[error("unexpected answer from the policy decision point: {0}")]
    Protocol(String),
}

impl DecideError {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DecideError::Unavailable(_) => "unavailable",
            DecideError::Timeout(_) => "timeout",
            DecideError::Protocol(_) => "protocol",
        }
    }
}

/// A policy decision point.
pub trait PolicyEngine: Send + Sync + 'static {
    /// Judges every check for `principal` in as few round trips as the engine allows.
    /// `request_id` correlates the engine's own audit log with ours. The principal is the one
    /// the identity stage shares: a call shared in flight holds it, not a copy of its claims.
    fn check(
        &self,
        principal: &Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        request_id: &str,
    ) -> impl Future<Output = Result<Decision, DecideError>> + Send;

    /// The decision remembered for a request whose checks all follow from `derivation` (see
    /// [`vocabulary::Vocabulary::derivation`]; `None`: they do not) and `principal`, so that a
    /// repeated request is answered without building, keying and answering its checks one by
    /// one. `derivation` is only computed by an engine that remembers; the default remembers
    /// nothing.
    fn recall(
        &self,
        _principal: &SharedPrincipal,
        _derivation: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Recall {
        Recall::Unknown(None)
    }

    /// Remembers `decision`, made for the request `key` was recalled for.
    fn remember(&self, _key: RecallKey, _decision: &Decision) {}

    /// Whether the engine answers right now (for readiness probes).
    fn ready(&self) -> impl Future<Output = bool> + Send {
        async { true }
    }
}

/// Test support for the decide modules: the principal and checks their tests ask about.
#[cfg(test)]
pub(crate) mod test_support {
    use serde_json::Value;

    use super::{ResourceCheck, Subject};
    use crate::identity::Principal;

    /// alice, role support, with the claims `attr` (a JSON object).
    pub fn principal(attr: Value) -> Principal {
        Principal {
            id: "alice".into(),
            roles: vec!["support".into()],
            attr: attr.as_object().cloned().unwrap_or_default(),
            token: None,
        }
    }

    /// The `expose` check of the LLM tool `id`, with the attributes `attr` (a JSON object).
    pub fn check(id: &str, attr: Value) -> ResourceCheck {
        ResourceCheck {
            kind: "llm_tool".into(),
            id: id.into(),
            action: "expose".into(),
            attr: attr.as_object().cloned().unwrap_or_default(),
            subject: Subject::Tool(id.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn verdict(effect: Effect, policy: &str, outputs: Vec<(String, Value)>) -> Verdict {
        Verdict {
            check: ResourceCheck {
                kind: "llm_tool".into(),
                id: "t".into(),
                action: "expose".into(),
                attr: Map::new(),
                subject: Subject::Tool("t".into()),
            }
            .into(),
            effect,
            policy: Some(policy.into()),
            outputs,
            derived_roles: vec![],
        }
    }

    #[test]
    fn a_default_reason_names_the_policy_in_words() {
        let reason = |effect, policy| verdict(effect, policy, vec![]).reason();
        let deny = Effect::Deny;
        assert_eq!(
            reason(deny, "resource.llm_tool.vdefault"),
            "the llm_tool policy does not allow it"
        );
        assert_eq!(
            reason(deny, "resource.mcp::support.v1/acme.eu"),
            "the mcp::support policy (scope acme.eu) does not allow it"
        );
        assert_eq!(
            reason(deny, "principal.alice.vdefault"),
            "alice's principal policy does not allow it"
        );
        assert_eq!(reason(deny, "NO_MATCH"), "no policy covers it");
        assert_eq!(
            reason(Effect::Allow, "resource.llm_model.vdefault"),
            "allowed by the llm_model policy"
        );
    }

    #[test]
    fn a_denying_output_is_the_reason() {
        let out = |v: Value| vec![("resource.llm_tool.vdefault#r".to_owned(), v)];
        let policy = "resource.llm_tool.vdefault";
        assert_eq!(
            verdict(Effect::Deny, policy, out(json!("over your limit"))).reason(),
            "over your limit"
        );
        assert_eq!(
            verdict(Effect::Deny, policy, out(json!({"reason": "not yours"}))).reason(),
            "not yours"
        );
        // an allow's outputs explain nothing
        assert_eq!(
            verdict(Effect::Allow, policy, out(json!("x"))).reason(),
            "allowed by the llm_tool policy"
        );
    }
}
