//! The pipeline against a fake policy engine: every refusal path, and proof that nothing
//! reaches the engine when identity or parsing fails.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::*;
use crate::decide::{DecideError, Effect, ResourceCheck, Verdict};
use crate::handoff;

/// Allows what `allow` says; records every check it is asked.
struct FakeEngine {
    allow: fn(&Principal, &ResourceCheck) -> bool,
    fail: Option<DecideError>,
    calls: AtomicUsize,
    seen: Mutex<Vec<ResourceCheck>>,
}

impl PolicyEngine for FakeEngine {
    async fn check(
        &self,
        principal: &Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        _: &str,
    ) -> Result<Decision, DecideError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        self.seen.lock().unwrap().extend(checks.iter().cloned());
        Ok(Decision::each(
            checks,
            Some("resource.fake.vdefault"),
            |check| {
                if (self.allow)(principal, check) {
                    Effect::Allow
                } else {
                    Effect::Deny
                }
            },
        ))
    }
}

/// The demo rules: alice may invoke gpt-4o-mini, expose get_weather, connect, and refund up to
/// her limit on her ticket.
fn demo_rules(p: &Principal, c: &ResourceCheck) -> bool {
    match (c.kind.as_str(), c.action.as_str()) {
        ("llm_model", "invoke") => c.id == "gpt-4o-mini",
        ("llm_tool", "expose") => c.id == "get_weather",
        ("mcp_server", "connect") => true,
        ("mcp_server" | "llm_tool", "tools/call/refund") => {
            let args = &c.attr["arguments"];
            args["ticket_id"] == p.attr["assigned_ticket"]
                && args["amount_cents"].as_f64() <= p.attr["refund_limit_cents"].as_f64()
        }
        _ => false,
    }
}

const CONFIG: &str = "
identity:
  source: envoy_jwt_authn
routes:
  - {path_prefix: /v1/chat/completions, format: openai_chat}
  - {path_prefix: /mcp, format: mcp, mcp_server: support}
";

struct Harness {
    pipeline: Pipeline<FakeEngine>,
}

impl Harness {
    async fn new(extra: &str) -> Self {
        Self::with_engine(extra, None).await
    }

    async fn with_engine(extra: &str, fail: Option<DecideError>) -> Self {
        let config = Config::parse(&format!("{CONFIG}{extra}")).unwrap();
        let authenticator = Authenticator::start(&config.identity, Default::default())
            .await
            .unwrap();
        let engine = FakeEngine {
            allow: demo_rules,
            fail,
            calls: AtomicUsize::new(0),
            seen: Mutex::new(vec![]),
        };
        Self {
            pipeline: Pipeline::new(
                &config,
                authenticator,
                engine,
                AuditLog::memory(),
                Arc::new(Metrics::new()),
            ),
        }
    }

    fn engine_calls(&self) -> usize {
        self.pipeline.engine.calls.load(Ordering::SeqCst)
    }

    fn log(&self) -> Vec<Value> {
        self.pipeline.audit.lines()
    }
}

fn alice() -> HashMap<String, Value> {
    HashMap::from([(
        "envoy.filters.http.jwt_authn".to_owned(),
        json!({"jwt_payload": {"sub": "alice", "roles": ["support"], "assigned_ticket": "T-100", "refund_limit_cents": 100000.0}}),
    )])
}

fn input(path: &str, body: Value, metadata: HashMap<String, Value>) -> CheckInput {
    CheckInput {
        method: "POST".into(),
        path: path.into(),
        headers: Headers::from_iter([
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-request-id".to_owned(), "req-1".to_owned()),
        ]),
        body: Bytes::from(body.to_string()),
        metadata,
        source_principal: String::new(),
        context_extensions: HashMap::new(),
    }
}

fn chat(model: &str, tools: &[&str]) -> Value {
    let tools: Vec<Value> = tools
        .iter()
        .map(|t| json!({"type": "function", "function": {"name": t}}))
        .collect();
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "tools": tools})
}

fn refund(id: u64, ticket: &str, cents: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "refund", "arguments": {"ticket_id": ticket, "amount_cents": cents}}})
}

fn denial(outcome: &Outcome) -> (u16, Value) {
    match outcome {
        Outcome::Deny { denial, .. } => {
            (denial.status, serde_json::from_str(&denial.body).unwrap())
        }
        Outcome::Allow { .. } => panic!("expected a denial, got {outcome:?}"),
    }
}

#[tokio::test]
async fn allowed_chat_is_forwarded_with_identity_headers_and_forged_ones_removed() {
    let h = Harness::new("").await;
    let mut req = input(
        "/v1/chat/completions?stream=1",
        chat("gpt-4o-mini", &["get_weather"]),
        alice(),
    );
    req.headers
        .insert("x-agent-authz-principal".into(), "root".into());
    req.headers
        .insert("x-agent-authz-role".into(), "admin".into());
    let Outcome::Allow {
        headers,
        remove_headers,
        metadata,
        ..
    } = h.pipeline.check(req).await
    else {
        panic!("expected allow");
    };
    assert!(
        headers.contains(&(PRINCIPAL_HEADER.to_owned(), "alice".to_owned())),
        "overwrites the forged value"
    );
    assert!(headers.iter().any(|(k, _)| k == DECISION_ID_HEADER));
    assert_eq!(remove_headers, ["x-agent-authz-role"]);
    assert_eq!(
        (metadata["effect"].as_str(), metadata["principal"].as_str()),
        (Some("allow"), Some("alice"))
    );
    let log = h.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["effect"], "allow");
    assert_eq!(log[0]["request_id"], "req-1");
    assert_eq!(log[0]["principal"]["id"], "alice");
    assert_eq!(log[0]["principal"]["attr"]["refund_limit_cents"], 100000);
    assert_eq!(log[0]["resources"].as_array().unwrap().len(), 2);
    assert_eq!(log[0]["decision_id"], metadata["decision_id"]);
}

#[tokio::test]
async fn denied_model_is_a_403_naming_it() {
    let h = Harness::new("").await;
    let (status, body) = denial(
        &h.pipeline
            .check(input("/v1/chat/completions", chat("gpt-4o", &[]), alice()))
            .await,
    );
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "model_denied");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alice may not invoke model gpt-4o")
    );
    let log = h.log();
    assert_eq!(
        (log[0]["effect"].as_str(), log[0]["refusal"].as_str()),
        (Some("deny"), Some("policy_denied"))
    );
    assert_eq!(log[0]["resources"][0]["effect"], "deny");
    assert_eq!(log[0]["resources"][0]["policy"], "resource.fake.vdefault");
}

#[tokio::test]
async fn denied_tools_reject_or_pass_as_configured() {
    let h = Harness::new("").await;
    let req = || {
        input(
            "/v1/chat/completions",
            chat("gpt-4o-mini", &["get_weather", "delete_repo"]),
            alice(),
        )
    };
    let (status, body) = denial(&h.pipeline.check(req()).await);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("tool_denied"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("use tool delete_repo")
    );

    let h = Harness::new("denied_tools: pass\n").await;
    let Outcome::Allow { metadata, .. } = h.pipeline.check(req()).await else {
        panic!("pass mode allows")
    };
    assert_eq!(metadata["denied_tools"], "delete_repo");
    assert_eq!(h.log()[0]["denied_tools"], json!(["delete_repo"]));
    // Both halves of the tool decision, and the model, are on record (the console lists them).
    assert_eq!(h.log()[0]["allowed_tools"], json!(["get_weather"]));
    assert_eq!(h.log()[0]["model"], "gpt-4o-mini");
    assert!(h.log()[0]["cerbos_ms"].as_f64().is_some());

    // A denied model still refuses in pass mode, and is named first.
    let (status, body) = denial(
        &h.pipeline
            .check(input(
                "/v1/chat/completions",
                chat("gpt-4o", &["delete_repo"]),
                alice(),
            ))
            .await,
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("model_denied"))
    );
}

#[tokio::test]
async fn mcp_refunds_are_judged_on_their_arguments() {
    let h = Harness::new("").await;
    assert!(matches!(
        h.pipeline
            .check(input("/mcp", refund(1, "T-100", 5000), alice()))
            .await,
        Outcome::Allow { .. }
    ));
    for (ticket, cents) in [("T-100", 200_000), ("T-999", 10)] {
        let (status, body) = denial(
            &h.pipeline
                .check(input("/mcp", refund(2, ticket, cents), alice()))
                .await,
        );
        assert_eq!(status, 200, "JSON-RPC error over HTTP 200");
        assert_eq!(body["id"], 2);
        assert_eq!(body["error"]["code"], 403);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("may not call tool refund")
        );
        assert_eq!(body["error"]["data"]["action"], "tools/call/refund");
    }
    let denied = &h.log()[1];
    assert_eq!(
        denied["resources"][0]["attr"]["arguments"]["amount_cents"],
        200000
    );
    assert_eq!(denied["format"], "mcp");
}

#[tokio::test]
async fn an_mcp_batch_is_judged_element_by_element() {
    let h = Harness::new("").await;
    let batch = json!([refund(1, "T-100", 10), refund(2, "T-100", 999_999)]);
    let (status, body) = denial(&h.pipeline.check(input("/mcp", batch, alice())).await);
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 2);
    assert_eq!(h.pipeline.engine.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn identity_failures_never_reach_the_engine() {
    let h = Harness::new("").await;
    let (status, body) = denial(
        &h.pipeline
            .check(input(
                "/v1/chat/completions",
                chat("gpt-4o-mini", &[]),
                HashMap::new(),
            ))
            .await,
    );
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "authentication_error");
    let (status, body) = denial(
        &h.pipeline
            .check(input("/mcp", refund(4, "T-100", 1), HashMap::new()))
            .await,
    );
    assert_eq!((status, body["error"]["code"].as_i64()), (401, Some(401)));
    assert_eq!(h.engine_calls(), 0);
    assert_eq!(h.log()[0]["refusal"], "unauthenticated");
}

#[tokio::test]
async fn unreadable_bodies_are_refused_before_the_engine() {
    let h = Harness::new("").await;
    let mut req = input("/v1/chat/completions", json!({}), alice());
    req.body = Bytes::from_static(b"{not json");
    assert_eq!(denial(&h.pipeline.check(req).await).0, 400);
    let mut req = input("/v1/chat/completions", chat("gpt-4o-mini", &[]), alice());
    req.headers
        .insert("x-envoy-auth-partial-body".into(), "true".into());
    assert_eq!(denial(&h.pipeline.check(req).await).0, 413);
    let mut req = input("/v1/chat/completions", chat("gpt-4o-mini", &[]), alice());
    req.body = Bytes::from(vec![b' '; 2 << 20]);
    assert_eq!(denial(&h.pipeline.check(req).await).0, 413);
    let req = input(
        "/v1/chat/completions/../models",
        chat("gpt-4o-mini", &[]),
        alice(),
    );
    assert_eq!(denial(&h.pipeline.check(req).await).0, 400);
    assert_eq!(h.engine_calls(), 0);
}

#[tokio::test]
async fn unclassified_routes_follow_config() {
    let h = Harness::new("").await;
    let (status, body) = denial(
        &h.pipeline
            .check(input("/v2/other", json!({}), alice()))
            .await,
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("route_denied"))
    );
    let h = Harness::new("unclassified_routes: allow\n").await;
    assert!(matches!(
        h.pipeline
            .check(input("/v2/other", json!({}), alice()))
            .await,
        Outcome::Allow { .. }
    ));
    let (status, _) = denial(
        &h.pipeline
            .check(input("/v2/other", json!({}), HashMap::new()))
            .await,
    );
    assert_eq!(
        status, 401,
        "allowed unclassified routes still need an identity"
    );
    assert_eq!(h.engine_calls(), 0);
}

#[tokio::test]
async fn envoy_context_extensions_name_the_route_and_the_client_cannot() {
    let h = Harness::new("").await;
    // Envoy's route says Gemini: the body is read as Gemini, the model from the path, although
    // the path matches no route of agent-authz's own table.
    let mut req = input(
        "/v1/models/gemini-2.5-flash:generateContent",
        json!({"contents": []}),
        alice(),
    );
    req.context_extensions = HashMap::from([
        ("format".to_owned(), "gemini".to_owned()),
        ("route".to_owned(), "gemini".to_owned()),
    ]);
    let (status, body) = denial(&h.pipeline.check(req).await);
    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["status"], "PERMISSION_DENIED",
        "Gemini's shape"
    );
    let log = h.log();
    assert_eq!(
        (log[0]["route"].as_str(), log[0]["format"].as_str()),
        (Some("gemini"), Some("gemini"))
    );
    assert_eq!(log[0]["resources"][0]["id"], "gemini-2.5-flash");
    // A route naming a format that does not exist is Envoy misconfigured: 500, nothing asked.
    let mut req = input("/v1/chat/completions", chat("gpt-4o-mini", &[]), alice());
    req.context_extensions = HashMap::from([("format".to_owned(), "openai-chat".to_owned())]);
    let (status, body) = denial(&h.pipeline.check(req).await);
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "route_misconfigured");
    // A header naming a format changes nothing: the chat body is judged as chat.
    let mut req = input("/v1/chat/completions", chat("gpt-4o", &[]), alice());
    req.headers.insert("x-llm-format".into(), "mcp".into());
    let (status, body) = denial(&h.pipeline.check(req).await);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("model_denied"))
    );
    assert_eq!(h.engine_calls(), 2);
}

#[tokio::test]
async fn engine_failure_fails_closed() {
    let h = Harness::with_engine(
        "",
        Some(DecideError::Unavailable("connection refused".into())),
    )
    .await;
    let (status, body) = denial(
        &h.pipeline
            .check(input(
                "/v1/chat/completions",
                chat("gpt-4o-mini", &[]),
                alice(),
            ))
            .await,
    );
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "policy_unavailable");
    let h = Harness::with_engine(
        "cerbos: {unavailable_status: 500}\n",
        Some(DecideError::Timeout(500)),
    )
    .await;
    let (status, body) = denial(
        &h.pipeline
            .check(input("/mcp", refund(3, "T-100", 1), alice()))
            .await,
    );
    assert_eq!((status, body["error"]["code"].as_i64()), (500, Some(503)));
}

fn handoff_of(outcome: &Outcome) -> Handoff {
    let Outcome::Allow { metadata, .. } = outcome else {
        panic!("expected allow, got {outcome:?}")
    };
    let namespaces = HashMap::from([(
        handoff::EXT_AUTHZ_NAMESPACE.to_owned(),
        Value::Object(metadata.clone()),
    )]);
    Handoff::from_metadata(&namespaces).expect("handoff in metadata")
}

/// An agent's next turn resends its tool declarations byte for byte, and they are taken as
/// read then (`extract/known_tools.rs`); a tool added to them is judged all the same.
#[tokio::test]
async fn a_tool_added_to_a_resent_tool_set_is_judged() {
    let h = Harness::new("").await;
    let declared = |names: &[&str]| -> Value {
        names
            .iter()
            .map(|name| json!({"type": "function", "function": {"name": name,
                "description": "Weather for a city. ".repeat(30), "parameters": {"type": "object"}}}))
            .collect()
    };
    let turn = |names: &[&str], user: &str| {
        input(
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": user}],
                   "tools": declared(names)}),
            alice(),
        )
    };
    for user in ["turn one", "turn two"] {
        let outcome = h.pipeline.check(turn(&["get_weather"], user)).await;
        assert!(matches!(outcome, Outcome::Allow { .. }), "{outcome:?}");
    }
    let (status, body) = denial(
        &h.pipeline
            .check(turn(&["get_weather", "delete_repo"], "turn three"))
            .await,
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("tool_denied"))
    );
}

#[tokio::test]
async fn strip_mode_allows_and_hands_the_denied_tools_to_ext_proc() {
    let h = Harness::new("denied_tools: strip\ndenied_tools_response_header: true\n").await;
    let req = input(
        "/v1/chat/completions",
        chat("gpt-4o-mini", &["get_weather", "delete_repo"]),
        alice(),
    );
    let outcome = h.pipeline.check(req).await;
    let handoff = handoff_of(&outcome);
    assert_eq!(handoff.strip_tools, ["delete_repo"]);
    assert_eq!(handoff.principal.id, "alice");
    assert_eq!(handoff.request_id, "req-1");
    let Outcome::Allow {
        response_headers, ..
    } = outcome
    else {
        unreachable!()
    };
    assert_eq!(
        response_headers,
        [(DENIED_TOOLS_HEADER.to_owned(), "delete_repo".to_owned())]
    );
}

#[tokio::test]
async fn a_forced_denied_tool_is_refused_unless_configured_to_fall_back() {
    let mut body = chat("gpt-4o-mini", &["get_weather", "delete_repo"]);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "delete_repo"}});
    let h = Harness::new("denied_tools: strip\n").await;
    let (status, reply) = denial(
        &h.pipeline
            .check(input("/v1/chat/completions", body.clone(), alice()))
            .await,
    );
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (403, Some("tool_denied"))
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delete_repo")
    );

    let h = Harness::new("denied_tools: strip\nforced_denied_tool: auto\n").await;
    let handoff = handoff_of(
        &h.pipeline
            .check(input("/v1/chat/completions", body, alice()))
            .await,
    );
    assert_eq!(handoff.strip_tools, ["delete_repo"]);
}

#[tokio::test]
async fn ids_and_claims_cross_to_ext_proc_exactly() {
    let h = Harness::new("").await;
    let list = serde_json::from_str::<Value>(
        r#"[{"jsonrpc":"2.0","id":9000000000000001,"method":"tools/list"},{"jsonrpc":"2.0","id":"s","method":"ping"},{"jsonrpc":"2.0","id":"t","method":"tools/list"}]"#,
    )
    .unwrap();
    let mut req = input("/mcp", list, alice());
    req.headers
        .insert("mcp-protocol-version".into(), "2025-03-26".into());
    req.headers.insert("accept-encoding".into(), "gzip".into());
    let outcome = h.pipeline.check(req).await;
    let Outcome::Allow { remove_headers, .. } = &outcome else {
        panic!("expected allow, got {outcome:?}")
    };
    assert!(remove_headers.iter().any(|h| h == "accept-encoding"));
    let tools_list = handoff_of(&outcome).tools_list.expect("batch tools/list");
    assert_eq!(tools_list.request_ids, ["9000000000000001", "\"t\""]);
}

#[tokio::test]
async fn tools_list_requests_hand_over_what_the_answer_filter_needs() {
    let h = Harness::new("").await;
    let list = json!({"jsonrpc": "2.0", "id": 12, "method": "tools/list", "params": {}});
    let handoff = handoff_of(&h.pipeline.check(input("/mcp", list, alice())).await);
    let tools_list = handoff.tools_list.expect("tools/list handoff");
    assert_eq!(tools_list.request_ids, ["12"]);
    assert_eq!(
        (tools_list.server.as_str(), tools_list.kind.as_str()),
        ("support", "mcp_server")
    );
    assert_eq!(handoff.principal.attr["refund_limit_cents"], json!(100000));
    assert!(handoff.strip_tools.is_empty());

    let hidden = h
        .pipeline
        .hidden_tools(
            &handoff_of(
                &h.pipeline
                    .check(input(
                        "/mcp",
                        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
                        alice(),
                    ))
                    .await,
            ),
            "/mcp",
            &["refund".into(), "delete_repo".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        hidden,
        ["refund", "delete_repo"],
        "the fake engine knows no tools/list/* action"
    );
    let seen = h.pipeline.engine.seen.lock().unwrap().clone();
    let last = seen.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.attr["arguments"].clone()),
        ("tools/list/delete_repo", json!({}))
    );
    let log = h.log();
    let response_phase = log.last().unwrap();
    assert_eq!(response_phase["phase"], "response");
    assert_eq!(response_phase["hidden"], json!(["refund", "delete_repo"]));
}

#[tokio::test]
async fn dry_run_still_denies_unclassified_routes() {
    let h = Harness::new("dry_run: true\n").await;
    let outcome = h
        .pipeline
        .check(input("/v2/unlisted", chat("gpt-4o-mini", &[]), alice()))
        .await;
    let Outcome::Deny { denial, .. } = outcome else {
        panic!("an unclassified route is a config gap, not a policy on trial")
    };
    assert_eq!(denial.status, 403);
    let line = &h.log()[0];
    assert_eq!(
        (
            line["refusal"].as_str(),
            line["dry_run"].as_bool().unwrap_or(false)
        ),
        (Some("unclassified_route"), false)
    );
}

#[tokio::test]
async fn dry_run_logs_the_denial_and_lets_the_request_through() {
    let h = Harness::new("dry_run: true\n").await;
    let outcome = h
        .pipeline
        .check(input("/v1/chat/completions", chat("gpt-4o", &[]), alice()))
        .await;
    assert!(matches!(outcome, Outcome::Allow { .. }));
    let line = &h.log()[0];
    assert_eq!(
        (line["effect"].as_str(), line["dry_run"].as_bool()),
        (Some("deny"), Some(true))
    );
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .starts_with("dry-run, would deny: alice may not invoke model gpt-4o")
    );
    // Identity is still enforced.
    let (status, _) = denial(
        &h.pipeline
            .check(input(
                "/v1/chat/completions",
                chat("gpt-4o", &[]),
                HashMap::new(),
            ))
            .await,
    );
    assert_eq!(status, 401);

    let per_route = CONFIG.replace(
        "format: mcp, mcp_server: support}",
        "format: mcp, mcp_server: support, dry_run: true}",
    );
    let config = Config::parse(&per_route).unwrap();
    assert!(config.routes[1].dry_run && !config.routes[0].dry_run);
}

#[tokio::test]
async fn redaction_happens_before_anything_leaves() {
    let h = Harness::new(
        "audit: {mask: [arguments.card.number, claims.email, 'arguments.items[*].pan', 'arguments.\"a.b\"'], drop: [arguments.cvv, claims.phone]}\n",
    )
    .await;
    let mut identity = alice();
    let payload = identity.get_mut("envoy.filters.http.jwt_authn").unwrap();
    payload["jwt_payload"]["email"] = json!("alice@example.com");
    payload["jwt_payload"]["phone"] = json!("+44 1234");
    let mut body = refund(1, "T-100", 10);
    body["params"]["arguments"]["card"] = json!({"number": "4111111111111111", "brand": "visa"});
    body["params"]["arguments"]["cvv"] = json!("123");
    body["params"]["arguments"]["items"] = json!([{"pan": "5500005555555559", "sku": 1}]);
    body["params"]["arguments"]["a.b"] = json!("dotted-secret");
    let outcome = h.pipeline.check(input("/mcp", body, identity)).await;

    // The decision log.
    let line = h.log()[0].clone();
    let args = &line["resources"][0]["attr"]["arguments"];
    assert_eq!(args["card"], json!({"number": "****", "brand": "visa"}));
    assert!(args.get("cvv").is_none());
    assert_eq!(line["principal"]["attr"]["email"], "****");
    assert!(line["principal"]["attr"].get("phone").is_none());
    // What Cerbos was sent.
    let sent = h.pipeline.engine.seen.lock().unwrap()[0].attr.clone();
    assert_eq!(sent["arguments"]["card"]["number"], "****");
    assert_eq!(
        sent["arguments"]["items"],
        json!([{"pan": "****", "sku": 1}])
    );
    // Envoy's metadata (and so its access log).
    let Outcome::Allow { metadata, .. } = outcome else {
        panic!("refund within limits")
    };
    let everywhere = format!("{line} {} {metadata:?}", Value::Object(sent));
    for secret in [
        "5500005555555559",
        "dotted-secret",
        "4111111111111111",
        "\"123\"",
        "alice@example.com",
        "+44 1234",
    ] {
        assert!(!everywhere.contains(secret), "{secret} leaked");
    }
}

#[tokio::test]
async fn metrics_count_checks_and_decisions() {
    let h = Harness::new("").await;
    h.pipeline
        .check(input("/v1/chat/completions", chat("gpt-4o", &[]), alice()))
        .await;
    h.pipeline
        .check(input(
            "/v1/chat/completions",
            chat("gpt-4o-mini", &[]),
            alice(),
        ))
        .await;
    let text = h.pipeline.metrics().encode();
    assert!(text.contains(r#"agent_authz_checks_total{route="/v1/chat/completions",format="openai_chat",effect="deny",refusal="policy_denied",dry_run="false"} 1"#), "{text}");
    assert!(text.contains(r#"agent_authz_checks_total{route="/v1/chat/completions",format="openai_chat",effect="allow",refusal="",dry_run="false"} 1"#));
    assert!(text.contains(
        r#"agent_authz_decisions_total{kind="llm_model",action="invoke",effect="deny"} 1"#
    ));
    assert!(
        text.contains("agent_authz_cerbos_request_duration_seconds_count 2"),
        "{text}"
    );
    assert!(text.contains("agent_authz_check_duration_seconds_count 2"));
}

#[tokio::test]
async fn too_many_resources_are_refused_not_fanned_out() {
    let h = Harness::new("").await;
    let many: Vec<String> = (0..300).map(|i| format!("tool_{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let req = input("/v1/chat/completions", chat("gpt-4o-mini", &many), alice());
    let (status, body) = denial(&h.pipeline.check(req).await);
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("301 resources; the limit is 256")
    );
    assert_eq!(h.engine_calls(), 0);
}

#[tokio::test]
async fn the_trace_id_of_traceparent_is_logged() {
    let h = Harness::new("").await;
    let mut req = input("/v1/chat/completions", chat("gpt-4o-mini", &[]), alice());
    req.headers.insert(
        "traceparent".into(),
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".into(),
    );
    h.pipeline.check(req).await;
    let mut bad = input("/v1/chat/completions", chat("gpt-4o-mini", &[]), alice());
    bad.headers
        .insert("traceparent".into(), "00-nothex-00f067aa0ba902b7-01".into());
    h.pipeline.check(bad).await;
    let log = h.log();
    assert_eq!(log[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(log[1].get("trace_id").is_none());
}

#[tokio::test]
async fn mesh_peers_without_a_token_are_identified_by_their_spiffe_id() {
    let peers = "identity:\n  source: envoy_jwt_authn\n  mesh_peers:\n    - {spiffe_id: 'spiffe://cluster.local/ns/agents/sa/billing-bot', id: billing-bot, roles: [support], attr: {assigned_ticket: T-100, refund_limit_cents: 500}}\n";
    let config = CONFIG.replace("identity:\n  source: envoy_jwt_authn\n", peers);
    let config = Config::parse(&config).unwrap();
    let authenticator = Authenticator::start(&config.identity, Default::default())
        .await
        .unwrap();
    let pipeline = Pipeline::new(
        &config,
        authenticator,
        FakeEngine {
            allow: demo_rules,
            fail: None,
            calls: AtomicUsize::new(0),
            seen: Mutex::new(vec![]),
        },
        AuditLog::memory(),
        Arc::new(Metrics::new()),
    );
    let mut req = input("/mcp", refund(1, "T-100", 400), HashMap::new());
    req.source_principal = "spiffe://cluster.local/ns/agents/sa/billing-bot".into();
    let Outcome::Allow { headers, .. } = pipeline.check(req.clone()).await else {
        panic!("the bot may refund within its limit")
    };
    assert!(headers.contains(&(PRINCIPAL_HEADER.to_owned(), "billing-bot".to_owned())));
    let mut over = input("/mcp", refund(2, "T-100", 600), HashMap::new());
    over.source_principal = req.source_principal.clone();
    assert_eq!(
        denial(&pipeline.check(over).await).0,
        200,
        "JSON-RPC denial over its limit"
    );
    // An unknown workload, or a known one presenting a (bad) token, is not let in by its peer id.
    let mut stranger = input("/mcp", refund(3, "T-100", 1), HashMap::new());
    stranger.source_principal = "spiffe://cluster.local/ns/agents/sa/other".into();
    assert_eq!(denial(&pipeline.check(stranger).await).0, 401);
    let mut with_token = req.clone();
    with_token
        .headers
        .insert("authorization".into(), "Bearer not-a-jwt".into());
    with_token.metadata = HashMap::new();
    assert_eq!(
        denial(&pipeline.check(with_token).await).0,
        401,
        "a token always decides"
    );
    let mut forged_payload = req;
    forged_payload.metadata = HashMap::from([(
        "envoy.filters.http.jwt_authn".to_owned(),
        json!({"other": {}}),
    )]);
    assert_eq!(
        denial(&pipeline.check(forged_payload).await).0,
        401,
        "a jwt_authn namespace without payload is not a peer"
    );
}

#[tokio::test]
async fn mcp_refusals_before_the_body_is_read_still_echo_the_id() {
    let h = Harness::new("").await;
    let (status, body) = denial(
        &h.pipeline
            .check(input("/mcp", refund(41, "T-100", 1), HashMap::new()))
            .await,
    );
    assert_eq!((status, body["id"].as_i64()), (401, Some(41)));
}

/// Holds every check until released.
struct Gate(tokio::sync::Notify);

impl PolicyEngine for Gate {
    async fn check(
        &self,
        _: &Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        _: &str,
    ) -> Result<Decision, DecideError> {
        self.0.notified().await;
        Ok(Decision::each(checks, None, |_| Effect::Allow))
    }
}

#[tokio::test]
async fn past_the_concurrency_limit_requests_are_shed_never_allowed() {
    let config = Config::parse(&format!("{CONFIG}server: {{max_concurrent_checks: 1}}\n")).unwrap();
    let authenticator = Authenticator::start(&config.identity, Default::default())
        .await
        .unwrap();
    let pipeline = Arc::new(Pipeline::new(
        &config,
        authenticator,
        Gate(tokio::sync::Notify::new()),
        AuditLog::memory(),
        Arc::new(Metrics::new()),
    ));
    let first = {
        let p = Arc::clone(&pipeline);
        tokio::spawn(async move {
            p.check(input(
                "/v1/chat/completions",
                chat("gpt-4o-mini", &[]),
                alice(),
            ))
            .await
        })
    };
    tokio::task::yield_now().await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let shed = pipeline
        .check(input(
            "/v1/chat/completions",
            chat("gpt-4o-mini", &[]),
            alice(),
        ))
        .await;
    let Outcome::Deny { denial, .. } = &shed else {
        panic!("shed, not allowed: {shed:?}")
    };
    assert_eq!(denial.status, 503);
    assert!(
        denial
            .headers
            .contains(&("retry-after".to_owned(), "1".to_owned()))
    );
    assert!(denial.body.contains("overloaded"));
    pipeline.engine.0.notify_one();
    assert!(matches!(first.await.unwrap(), Outcome::Allow { .. }));
    assert_eq!(pipeline.audit.lines()[0]["refusal"], "overloaded");
}

/// Allows everything, with rule outputs carrying upstream headers.
struct WithOutputs;

impl PolicyEngine for WithOutputs {
    async fn check(
        &self,
        _: &Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        _: &str,
    ) -> Result<Decision, DecideError> {
        let verdicts = checks
            .into_iter()
            .map(|check| Verdict {
                check: check.into(),
                effect: Effect::Allow,
                policy: None,
                outputs: vec![(
                    "resource.llm_model.vdefault#tier".into(),
                    json!({"x-authz-tier": "gold", "x-authz-limit": 5, "x-other": "no", "x-authz-bad": "a\nb"}),
                )],
                derived_roles: vec![],
            })
            .collect();
        Ok(Decision {
            verdicts,
            call_ids: vec![],
            engine_ms: None,
            shared_records: None,
        })
    }
}

#[tokio::test]
async fn allowing_rule_outputs_become_upstream_headers_when_configured() {
    for (enabled, expected) in [(true, 2), (false, 0)] {
        let config =
            Config::parse(&format!("{CONFIG}cerbos: {{output_headers: {enabled}}}\n")).unwrap();
        let authenticator = Authenticator::start(&config.identity, Default::default())
            .await
            .unwrap();
        let pipeline = Pipeline::new(
            &config,
            authenticator,
            WithOutputs,
            AuditLog::memory(),
            Arc::new(Metrics::new()),
        );
        let mut req = input("/v1/chat/completions", chat("gpt-4o-mini", &[]), alice());
        req.headers.insert("x-authz-tier".into(), "forged".into());
        let Outcome::Allow {
            headers,
            remove_headers,
            ..
        } = pipeline.check(req).await
        else {
            panic!("allowed")
        };
        let authz: Vec<_> = headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-authz-"))
            .cloned()
            .collect();
        assert_eq!(authz.len(), expected, "{authz:?}");
        if enabled {
            assert!(authz.contains(&("x-authz-tier".into(), "gold".into())));
            assert!(authz.contains(&("x-authz-limit".into(), "5".into())));
        } else {
            assert_eq!(
                remove_headers,
                ["x-authz-tier"],
                "a client cannot forge the output header"
            );
        }
    }
}

#[tokio::test]
async fn mcp_sessions_open_only_for_the_principal_they_were_sealed_for() {
    let h = Harness::new("").await;
    let sealed = h.pipeline.seal_session("alice", "srv-1").unwrap();
    let with_session = |session: &str, who: HashMap<String, Value>| {
        let mut req = input("/mcp", refund(1, "T-100", 10), who);
        req.headers
            .insert(MCP_SESSION_HEADER.to_owned(), session.to_owned());
        req
    };
    let outcome = h.pipeline.check(with_session(&sealed, alice())).await;
    let Outcome::Allow { headers, .. } = &outcome else {
        panic!("alice's own session: {outcome:?}")
    };
    assert!(
        headers.contains(&(MCP_SESSION_HEADER.to_owned(), "srv-1".to_owned())),
        "the server gets its own id back"
    );
    let bob = HashMap::from([(
        "envoy.filters.http.jwt_authn".to_owned(),
        json!({"jwt_payload": {"sub": "bob", "roles": ["support"]}}),
    )]);
    let calls = h.engine_calls();
    for (session, who) in [(sealed.as_str(), bob), ("srv-1", alice())] {
        let (status, body) = denial(&h.pipeline.check(with_session(session, who)).await);
        assert_eq!(status, 404, "{session}");
        assert_eq!(body["id"], 1);
        assert_eq!(body["error"]["code"], 404);
    }
    assert_eq!(h.engine_calls(), calls, "refused before Cerbos is asked");
    assert_eq!(h.log().last().unwrap()["refusal"], "unknown_session");
}

#[tokio::test]
async fn a_denied_tool_no_leg_can_strip_refuses_the_request_in_strip_mode() {
    let route = "  - {path_prefix: /v1/messages, format: anthropic_messages}\n";
    let h = Harness::new(&format!("{route}denied_tools: strip\n")).await;
    let body = |tools: Value| {
        json!({"model": "gpt-4o-mini", "max_tokens": 1, "messages": [],
               "tools": [{"name": "get_weather", "input_schema": {}}], "mcp_servers": tools})
    };
    // A connector server whose tools the principal may not call: refused, not stripped.
    let (status, _) = denial(
        &h.pipeline
            .check(input(
                "/v1/messages",
                body(json!([{"type": "url", "url": "https://x", "name": "crm"}])),
                alice(),
            ))
            .await,
    );
    assert_eq!(status, 403);
    // Without it the request passes.
    assert!(matches!(
        h.pipeline
            .check(input("/v1/messages", body(json!([])), alice()))
            .await,
        Outcome::Allow { .. }
    ));
}

fn emitted(name: &str, arguments: &str) -> crate::respond::tool_calls::ToolCall {
    crate::respond::tool_calls::ToolCall::from_text(name, "function", arguments)
}

#[tokio::test]
async fn judged_routes_hand_the_model_to_ext_proc_and_ask_for_a_readable_answer() {
    let mut req = input("/v1/chat/completions", chat("gpt-4o-mini", &[]), alice());
    req.headers
        .insert("accept-encoding".to_owned(), "gzip".to_owned());
    let h = Harness::new("").await;
    assert_eq!(
        handoff_of(&h.pipeline.check(req.clone()).await).judge_tool_calls,
        None
    );
    let h = Harness::new("model_tool_calls: judge\n").await;
    let outcome = h.pipeline.check(req).await;
    assert_eq!(
        handoff_of(&outcome).judge_tool_calls.as_deref(),
        Some("gpt-4o-mini")
    );
    let Outcome::Allow { remove_headers, .. } = outcome else {
        unreachable!()
    };
    assert!(remove_headers.contains(&"accept-encoding".to_owned()));
}

#[tokio::test]
async fn an_answers_tool_calls_are_judged_with_their_arguments_in_one_request() {
    let h = Harness::new("model_tool_calls: judge\n").await;
    let handoff = handoff_of(
        &h.pipeline
            .check(input(
                "/v1/chat/completions",
                chat("gpt-4o-mini", &[]),
                alice(),
            ))
            .await,
    );
    let before = h.engine_calls();
    let calls = [
        emitted("refund", r#"{"ticket_id":"T-100","amount_cents":500}"#),
        emitted("refund", r#"{"ticket_id":"T-999","amount_cents":999999}"#),
        emitted("refund", "not json"),
    ];
    let refusals = h
        .pipeline
        .judge_tool_calls(&handoff, "/v1/chat/completions", &calls)
        .await;
    assert_eq!(
        h.engine_calls(),
        before + 1,
        "one Cerbos request for the answer"
    );
    assert_eq!(refusals[0], None);
    assert!(refusals[1].is_some());
    assert_eq!(
        refusals[2].as_deref(),
        Some("its arguments are not valid JSON")
    );
    let seen = h.pipeline.engine.seen.lock().unwrap().clone();
    let judged = seen.iter().rev().take(2).collect::<Vec<_>>();
    assert!(
        judged
            .iter()
            .all(|c| c.kind == "llm_tool" && c.action == "tools/call/refund")
    );
    assert_eq!(judged[0].attr["arguments"]["amount_cents"], json!(999999));
    assert_eq!(judged[0].attr["model"], "gpt-4o-mini");
    assert_eq!(judged[0].attr["format"], "openai_chat");
    assert_eq!(judged[0].attr["type"], "function");
    let log = h.log();
    let response = log.iter().find(|r| r["phase"] == "response").unwrap();
    assert_eq!(response["decision_id"], handoff.decision_id);
    assert_eq!(response["request_id"], "req-1");
    assert_eq!(response["resources"].as_array().unwrap().len(), 3);
    assert_eq!(response["denied_tools"], json!(["refund", "refund"]));
}

#[tokio::test]
async fn tool_calls_are_withheld_when_cerbos_cannot_answer() {
    let h = Harness::new("model_tool_calls: judge\n").await;
    let handoff = handoff_of(
        &h.pipeline
            .check(input(
                "/v1/chat/completions",
                chat("gpt-4o-mini", &[]),
                alice(),
            ))
            .await,
    );
    let down = Harness::with_engine(
        "model_tool_calls: judge\n",
        Some(DecideError::Unavailable("connection refused".into())),
    )
    .await;
    let refusals = down
        .pipeline
        .judge_tool_calls(
            &handoff,
            "/v1/chat/completions",
            &[emitted("get_weather", "{}")],
        )
        .await;
    assert!(
        refusals[0]
            .as_deref()
            .unwrap()
            .contains("could not be reached")
    );
    let log = down.log();
    assert_eq!(log.last().unwrap()["effect"], "deny");
}

#[test]
fn every_model_format_may_be_judged() {
    let base = "identity: {source: envoy_jwt_authn}\nmodel_tool_calls: judge\nroutes:\n";
    Config::parse(&format!(
        "{base}  - {{path_prefix: /model, format: bedrock_converse}}\n  - {{path_prefix: /v1/chat/completions, format: openai_chat}}\n  - {{path_prefix: /mcp, format: mcp, mcp_server: s}}\n"
    ))
    .unwrap();
}

#[tokio::test]
async fn get_streams_without_a_session_are_filtered_throughout() {
    let h = Harness::new("").await;
    let get = |session: Option<String>| {
        let mut req = input("/mcp", json!({}), alice());
        req.method = "GET".into();
        req.body = Bytes::new();
        if let Some(session) = session {
            req.headers.insert(MCP_SESSION_HEADER.to_owned(), session);
        }
        req
    };
    // Maybe the 2024-11-05 HTTP+SSE transport, which answers every request on this stream.
    let list = handoff_of(&h.pipeline.check(get(None)).await).tools_list;
    assert!(list.is_some_and(|l| !l.probe_transport));
    // A Streamable HTTP session's stream: the leg reads its first event before letting go.
    let sealed = h.pipeline.seal_session("alice", "srv-1");
    let list = handoff_of(&h.pipeline.check(get(sealed)).await).tools_list;
    assert!(list.is_some_and(|l| l.probe_transport));
    // That transport's messages (session id in the query) are not served.
    let mut legacy = input("/mcp?sessionId=abc", refund(1, "T-100", 10), alice());
    legacy.method = "POST".into();
    let (status, body) = denial(&h.pipeline.check(legacy).await);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], -32600);
}

/// The pipeline over the verdict cache, as `server.rs` builds it, with the fake engine behind.
async fn cached(extra: &str) -> Pipeline<crate::decide::cache::CachedEngine<FakeEngine>> {
    let config = Config::parse(&format!("{CONFIG}{extra}")).unwrap();
    let authenticator = Authenticator::start(&config.identity, Default::default())
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let engine = crate::decide::cache::CachedEngine::new(
        FakeEngine {
            allow: demo_rules,
            fail: None,
            calls: AtomicUsize::new(0),
            seen: Mutex::new(vec![]),
        },
        std::time::Duration::from_secs(60),
        1000,
        "default/".into(),
        Arc::clone(&metrics),
    );
    Pipeline::new(&config, authenticator, engine, AuditLog::memory(), metrics)
}

/// A repeated request is answered from the decision remembered for its model and tools: its
/// denials too, and a request differing in anything its checks are built from is judged anew.
#[tokio::test]
async fn a_repeated_chat_keeps_its_judgement_and_any_change_is_judged_anew() {
    let pipeline = cached("denied_tools: reject\n").await;
    let ask = |model: &str, tools: &[&str]| {
        pipeline.check(input("/v1/chat/completions", chat(model, tools), alice()))
    };
    for turn in 0..3 {
        let (status, body) = denial(&ask("gpt-4o-mini", &["get_weather", "delete_repo"]).await);
        assert_eq!(status, 403, "turn {turn}");
        assert!(
            body.to_string().contains("delete_repo"),
            "turn {turn}: {body}"
        );
        assert!(
            matches!(
                ask("gpt-4o-mini", &["get_weather"]).await,
                Outcome::Allow { .. }
            ),
            "turn {turn}"
        );
    }
    // The model the remembered decision allowed, swapped for one the policy denies.
    let (status, body) = denial(&ask("gpt-4o", &["get_weather"]).await);
    assert_eq!(status, 403);
    assert!(body.to_string().contains("gpt-4o"), "{body}");
    let log = pipeline.audit.lines();
    assert_eq!(log.len(), 7);
    assert_eq!(
        log[0]["resources"], log[4]["resources"],
        "the same evidence"
    );
    assert_eq!(log[4]["effect"], "deny");
    assert_eq!(log[4]["denied_tools"], json!(["delete_repo"]));
    let text = pipeline.metrics.encode();
    assert!(
        text.contains("agent_authz_cache_hits_total 12")
            && text.contains("agent_authz_cache_misses_total 5"),
        "{text}"
    );
}

/// A remembered decision's records are shared, and so are the counters they add to: every
/// turn still counts each of its verdicts once.
#[tokio::test]
async fn a_remembered_decision_counts_its_verdicts_every_turn() {
    let pipeline = cached("denied_tools: reject\n").await;
    let decisions = |text: String| -> Vec<(String, u64)> {
        text.lines()
            .filter(|l| l.starts_with("agent_authz_decisions_total{"))
            .map(|l| {
                let (series, n) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), n.parse().unwrap())
            })
            .collect()
    };
    let turn = || {
        pipeline.check(input(
            "/v1/chat/completions",
            chat("gpt-4o-mini", &["get_weather", "delete_repo", "search"]),
            alice(),
        ))
    };
    turn().await;
    let once = decisions(pipeline.metrics.encode());
    let verdicts: u64 = once.iter().map(|(_, n)| n).sum();
    assert_eq!(verdicts, 4, "the model and three tools: {once:?}");
    turn().await;
    turn().await;
    let text = pipeline.metrics.encode();
    assert!(text.contains("agent_authz_cache_hits_total"), "{text}");
    let thrice: Vec<(String, u64)> = once.iter().map(|(s, n)| (s.clone(), 3 * n)).collect();
    assert_eq!(decisions(text), thrice);
}

/// A remembered decision's record carries the tool lists and resources a record built afresh
/// from the same verdicts carries (the remembered one's JSON was written when it was made).
#[tokio::test]
async fn a_remembered_decision_records_what_a_fresh_decision_records() {
    let remembering = cached("denied_tools: strip\n").await;
    let fresh = Harness::new("denied_tools: strip\n").await;
    let turn = || {
        input(
            "/v1/chat/completions",
            chat("gpt-4o-mini", &["get_weather", "delete_repo", "search"]),
            alice(),
        )
    };
    for _ in 0..3 {
        remembering.check(turn()).await;
    }
    fresh.pipeline.check(turn()).await;
    let metrics = remembering.metrics.encode();
    assert!(
        metrics.contains("agent_authz_cache_hits_total 8"),
        "turns two and three remembered (four verdicts each): {metrics}"
    );
    let built = &fresh.log()[0];
    assert_eq!(built["allowed_tools"], json!(["get_weather"]));
    assert_eq!(built["denied_tools"], json!(["delete_repo", "search"]));
    for line in remembering.audit.lines() {
        for key in ["allowed_tools", "denied_tools", "resources"] {
            assert_eq!(line[key], built[key], "{key}");
        }
    }
}
