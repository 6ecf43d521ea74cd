//! Masking and dropping sensitive values (`audit.mask`, `audit.drop`) before anything leaves
//! agent-authz: the decision log, Envoy's dynamic metadata (and so its access log) and Cerbos'
//! request (and so its audit log) all see the redacted value. The price is deliberate: a policy
//! cannot decide on a masked field, so mask what no rule needs (card numbers, e-mail
//! addresses), never what a rule reads.
//!
//! Path syntax: `arguments.<step>...` or `claims.<step>...`, where a step is a key (`card`),
//! a quoted key for names holding dots or brackets (`"card.number"`, `\"` and `\\` escaped),
//! and a key may be followed by array steps: `[*]` (every element) or `[2]` (one element). A
//! key step that meets an array applies to each element, so `items.pan` also reaches
//! `{"items": [{"pan": ...}]}`: for redaction, reaching too far is the safe mistake. Paths are
//! parsed at config load ([`parse_path`]); one that does not parse is a start-up error.

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
    steps: Vec<Step>,
    mask: bool,
}

/// Which object a path starts from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Claims,
    Arguments,
}

/// One step of a redaction path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Key(String),
    /// `[*]`: every element of an array.
    Each,
    /// `[n]`: one element of an array.
    Index(usize),
}

/// Parses `arguments.<path>` / `claims.<path>`; the error says what is wrong and where.
pub fn parse_path(path: &str) -> Result<(Target, Vec<Step>), String> {
    let (target, rest) = if let Some(rest) = path.strip_prefix("claims.") {
        (Target::Claims, rest)
    } else if let Some(rest) = path.strip_prefix("arguments.") {
        (Target::Arguments, rest)
    } else {
        return Err(format!("{path:?} must start with arguments. or claims."));
    };
    let bad = |why: &str| Err(format!("{path:?}: {why}"));
    let mut chars = rest.chars().peekable();
    let mut steps = Vec::new();
    loop {
        // A key: quoted or bare.
        let mut key = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\')) => key.push(c),
                        _ => return bad("inside quotes only \\\" and \\\\ are escapes"),
                    },
                    Some(c) => key.push(c),
                    None => return bad("unterminated quoted key"),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                match c {
                    '.' | '[' => break,
                    ']' | '"' | '*' => {
                        return bad(&format!("{c:?} in a key: quote the key (\"...\")"));
                    }
                    _ => {
                        key.push(c);
                        chars.next();
                    }
                }
            }
        }
        if key.is_empty() {
            return bad("empty key");
        }
        steps.push(Step::Key(key));
        // Array steps.
        while chars.peek() == Some(&'[') {
            chars.next();
            let mut inner = String::new();
            loop {
                match chars.next() {
                    Some(']') => break,
                    Some(c) => inner.push(c),
                    None => return bad("unterminated ["),
                }
            }
            steps.push(match inner.as_str() {
                "*" => Step::Each,
                n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => match n.parse() {
                    Ok(i) => Step::Index(i),
                    Err(_) => return bad("array index too large"),
                },
                _ => return bad("an array step is [*] or [<index>]"),
            });
        }
        match chars.next() {
            None => return Ok((target, steps)),
            Some('.') => {}
            Some(c) => return bad(&format!("expected . or [ after a key, found {c:?}")),
        }
    }
}

impl Redaction {
    /// Paths were validated at config load ([`parse_path`]).
    pub fn new(config: &AuditConfig) -> Self {
        let rules = [(&config.mask, true), (&config.drop, false)]
            .into_iter()
            .flat_map(|(paths, mask)| paths.iter().map(move |p| (p, mask)))
            .filter_map(|(path, mask)| {
                let (target, steps) = parse_path(path).ok()?;
                Some(Rule {
                    target,
                    steps,
                    mask,
                })
            })
            .collect();
        Self { rules }
    }

    /// Whether any rule redacts principal attributes (a `claims.` path).
    pub fn redacts_claims(&self) -> bool {
        self.rules.iter().any(|r| r.target == Target::Claims)
    }

    /// Redacts principal attributes (the claims).
    pub fn claims(&self, attr: &mut Map<String, Value>) {
        for rule in self.rules.iter().filter(|r| r.target == Target::Claims) {
            redact_object(attr, &rule.steps, rule.mask);
        }
    }

    /// Redacts an MCP call's or prompt's `arguments` object.
    pub fn arguments(&self, arguments: &mut Value) {
        for rule in self.rules.iter().filter(|r| r.target == Target::Arguments) {
            redact(arguments, &rule.steps, rule.mask);
        }
    }
}

fn redact(value: &mut Value, steps: &[Step], mask: bool) {
    match value {
        Value::Object(map) => redact_object(map, steps, mask),
        Value::Array(items) => redact_array(items, steps, mask),
        _ => {}
    }
}

fn redact_object(map: &mut Map<String, Value>, steps: &[Step], mask: bool) {
    let Some((Step::Key(key), rest)) = steps.split_first() else {
        return;
    };
    if rest.is_empty() {
        if mask {
            if let Some(v) = map.get_mut(key) {
                *v = Value::String(MASK.to_owned());
            }
        } else {
            map.shift_remove(key);
        }
    } else if let Some(child) = map.get_mut(key) {
        redact(child, rest, mask);
    }
}

fn redact_array(items: &mut Vec<Value>, steps: &[Step], mask: bool) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    match step {
        // A key step meeting an array applies to every element.
        Step::Key(_) => items.iter_mut().for_each(|item| redact(item, steps, mask)),
        Step::Each if rest.is_empty() => {
            if mask {
                items
                    .iter_mut()
                    .for_each(|item| *item = Value::String(MASK.to_owned()));
            } else {
                items.clear();
            }
        }
        Step::Each => items.iter_mut().for_each(|item| redact(item, rest, mask)),
        Step::Index(i) if *i < items.len() => {
            if rest.is_empty() {
                if mask {
                    items[*i] = Value::String(MASK.to_owned());
                } else {
                    items.remove(*i);
                }
            } else {
                redact(&mut items[*i], rest, mask);
            }
        }
        Step::Index(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn redaction(mask: &[&str], drop: &[&str]) -> Redaction {
        let config = AuditConfig {
            mask: mask.iter().map(|s| s.to_string()).collect(),
            drop: drop.iter().map(|s| s.to_string()).collect(),
            ..AuditConfig::default()
        };
        Redaction::new(&config)
    }

    #[test]
    fn masks_and_drops_nested_paths() {
        let r = redaction(
            &["arguments.card.number", "claims.email"],
            &["arguments.cvv", "claims.phone"],
        );
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

    #[test]
    fn paths_reach_into_arrays() {
        let r = redaction(
            &[
                "arguments.items[*].pan",
                "arguments.order.lines.cvv",
                "arguments.codes[1]",
            ],
            &["arguments.items[0].holder", "arguments.tags[*]"],
        );
        let mut args = json!({
            "items": [{"pan": "4111", "holder": "A", "sku": 1}, {"pan": "5500", "holder": "B"}],
            "order": {"lines": [{"cvv": "123"}, {"cvv": "456", "qty": 2}]},
            "codes": ["a", "secret", "c"],
            "tags": ["x", "y"],
        });
        r.arguments(&mut args);
        assert_eq!(
            args,
            json!({
                "items": [{"pan": "****", "sku": 1}, {"pan": "****", "holder": "B"}],
                "order": {"lines": [{"cvv": "****"}, {"cvv": "****", "qty": 2}]},
                "codes": ["a", "****", "c"],
                "tags": [],
            })
        );
    }

    #[test]
    fn quoted_keys_name_keys_with_dots() {
        let r = redaction(
            &[
                r#"arguments."card.number""#,
                r#"claims."https://idp/email""#,
            ],
            &[r#"arguments."a\"b""#],
        );
        let mut args = json!({"card.number": "4111", "card": {"number": "keep"}, "a\"b": 1});
        r.arguments(&mut args);
        assert_eq!(
            args,
            json!({"card.number": "****", "card": {"number": "keep"}})
        );
        let mut claims = json!({"https://idp/email": "a@x"});
        r.claims(claims.as_object_mut().unwrap());
        assert_eq!(claims, json!({"https://idp/email": "****"}));
    }

    #[test]
    fn unparseable_paths_are_refused() {
        for bad in [
            "card",
            "arguments.",
            "arguments..x",
            "arguments.items[",
            "arguments.items[x]",
            "arguments.items[]",
            "arguments.items[*]pan",
            r#"arguments."open"#,
            r#"arguments."a\x""#,
            "arguments.a]",
            "arguments.a*",
            "claims.x.",
        ] {
            assert!(parse_path(bad).is_err(), "{bad} parsed");
        }
        assert_eq!(
            parse_path(r#"arguments.items[*]."p.an"[3]"#).unwrap(),
            (
                Target::Arguments,
                vec![
                    Step::Key("items".into()),
                    Step::Each,
                    Step::Key("p.an".into()),
                    Step::Index(3)
                ]
            )
        );
    }
}
