//! Every route of a shipped Envoy config that names an agent-authz format in its ext_authz
//! `context_extensions` names one agent-authz can read (checked with the function `serve` uses
//! on each request): a typo would otherwise surface only as a 500 on that route's first request.

use std::collections::HashMap;
use std::path::Path;

use agent_authz::extract::routing::{FORMAT_KEY, named_format};
use serde_json::Value;

/// Every `context_extensions` map anywhere in `value`.
fn context_extensions(value: &Value, out: &mut Vec<HashMap<String, String>>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "context_extensions" {
                    let ext = serde_json::from_value(inner.clone())
                        .expect("context_extensions is a map of strings");
                    out.push(ext);
                } else {
                    context_extensions(inner, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| context_extensions(i, out)),
        _ => {}
    }
}

#[test]
fn shipped_envoy_routes_name_known_formats() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.push(root.join("k8s/base/config/envoy.yaml"));
    let mut named = 0;
    for file in files {
        let config: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let mut found = Vec::new();
        context_extensions(&config, &mut found);
        for ext in found.iter().filter(|e| e.contains_key(FORMAT_KEY)) {
            named += 1;
            if let Some(Err(why)) = named_format(ext) {
                panic!("{}: {why}", file.display());
            }
        }
    }
    assert!(
        named >= 10,
        "the shipped Envoy configs name their routes' formats"
    );
}

#[test]
fn a_typo_is_caught() {
    let ext = HashMap::from([(FORMAT_KEY.to_owned(), "openai-chat".to_owned())]);
    assert!(matches!(named_format(&ext), Some(Err(_))));
}
