//! Masking and dropping sensitive values (`audit.mask`, `audit.drop`) before anything leaves
//! agent-authz: the decision log, Envoy's dynamic metadata (and so its access log) and Cerbos'
//! request (and so its audit log) all see the redacted value. The price is deliberate: a policy
//! cannot decide on a masked field, so mask what no rule needs (card numbers, e-mail
//! addresses), never what a rule reads.

use serde_json::{Map, Value};

use crate::config::AuditConfig;

/// The value written in place of a masked one.
pub const MASK: &str = "****";

#[derive(Debug, Clone, Default)]
pub struct Redaction {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    target: Target,
    keys: Vec<String>,
    mask: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Claims,
    Arguments,
}

impl Redaction {
    /// Paths are `claims.<name>[.<nested>...]` or `arguments.<path>` (validated in config).
    pub fn new(config: &AuditConfig) -> Self {
        let rules = [(&config.mask, true), (&config.drop, false)]
            .into_iter()
            .flat_map(|(paths, mask)| paths.iter().map(move |p| (p, mask)))
            .filter_map(|(path, mask)| {
                let (target, rest) = if let Some(rest) = path.strip_prefix("claims.") {
                    (Target::Claims, rest)
                } else {
                    (Target::Arguments, path.strip_prefix("arguments.")?)
                };
                Some(Rule {
                    target,
                    keys: rest.split('.').map(str::to_owned).collect(),
                    mask,
                })
            })
            .collect();
        Self { rules }
    }

    /// Redacts principal attributes (the claims).
    pub fn claims(&self, attr: &mut Map<String, Value>) {
        self.apply(Target::Claims, attr);
    }

    /// Redacts an MCP call's or prompt's `arguments` object.
    pub fn arguments(&self, arguments: &mut Value) {
        if let Value::Object(map) = arguments {
            self.apply(Target::Arguments, map);
        }
    }

    fn apply(&self, target: Target, map: &mut Map<String, Value>) {
        for rule in self.rules.iter().filter(|r| r.target == target) {
            redact_in(map, &rule.keys, rule.mask);
        }
    }
}

fn redact_in(map: &mut Map<String, Value>, keys: &[String], mask: bool) {
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut current = map;
    for key in parents {
        match current.get_mut(key) {
            Some(Value::Object(next)) => current = next,
            _ => return,
        }
    }
    if mask {
        if let Some(v) = current.get_mut(last) {
            *v = Value::String(MASK.to_owned());
        }
    } else {
        current.remove(last);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn masks_and_drops_nested_paths() {
        let config = AuditConfig {
            mask: vec!["arguments.card.number".into(), "claims.email".into()],
            drop: vec!["arguments.cvv".into(), "claims.phone".into()],
            ..AuditConfig::default()
        };
        let r = Redaction::new(&config);
        let mut args =
            json!({"card": {"number": "4111", "brand": "visa"}, "cvv": "123", "email": "keep"});
        r.arguments(&mut args);
        assert_eq!(
            args,
            json!({"card": {"number": "****", "brand": "visa"}, "email": "keep"})
        );
        let mut claims = json!({"email": "a@x", "phone": "1", "card": {"number": "keep"}});
        r.claims(claims.as_object_mut().unwrap());
        assert_eq!(claims, json!({"email": "****", "card": {"number": "keep"}}));
    }
}
