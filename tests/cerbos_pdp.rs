//! The decision stage against the real Cerbos PDP and the shipped `policies/`.
//!
//! Cerbos comes from `CERBOS_BIN` or `.tools/bin/cerbos` (installed by `scripts/setup.sh`).
//! Without it the tests are skipped with a loud message, except under CI (`CI` set), where a
//! missing PDP is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_authz::config::{CerbosConfig, Format, RouteConfig, VocabularyConfig};
use agent_authz::decide::cerbos::CerbosEngine;
use agent_authz::decide::vocabulary::Vocabulary;
use agent_authz::decide::{DecideError, Decision, Effect, PolicyEngine};
use agent_authz::extract::{
    AgentRequest, DeclaredTool, LlmRequest, McpMessage, McpOperation, McpRequest,
};
use agent_authz::identity::{Principal, SharedPrincipal};
use serde_json::{Value, json};

mod common;
use common::free_port;

fn cerbos_binary() -> Option<PathBuf> {
    let path = std::env::var_os("CERBOS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/cerbos"));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "Cerbos binary not found at {} (run scripts/setup.sh)",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: Cerbos binary not found at {}; run scripts/setup.sh",
        path.display()
    );
    None
}

/// A Cerbos PDP child process serving `policies/`, killed on drop.
struct Pdp {
    child: Child,
    grpc_port: u16,
    _dir: tempfile::TempDir,
}

impl Pdp {
    fn start(binary: &Path, grpc_port: u16) -> Pdp {
        let dir = tempfile::tempdir().unwrap();
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let config = format!(
            "server:\n  httpListenAddr: 127.0.0.1:{http}\n  grpcListenAddr: 127.0.0.1:{grpc_port}\n\
             storage:\n  driver: disk\n  disk:\n    directory: {policies}\n    watchForChanges: false\n\
             telemetry:\n  disabled: true\n",
            http = free_port(),
            policies = policies.display()
        );
        let config_path = dir.path().join("cerbos.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("cerbos.log")).unwrap();
        let child = Command::new(binary)
            .arg("server")
            .arg(format!("--config={}", config_path.display()))
            .env("CERBOS_NO_TELEMETRY", "1")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Pdp {
            child,
            grpc_port,
            _dir: dir,
        }
    }
}

impl Drop for Pdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn engine(grpc_port: u16, max_per_request: usize) -> CerbosEngine {
    CerbosEngine::new(&CerbosConfig {
        address: format!("http://127.0.0.1:{grpc_port}"),
        timeout: Duration::from_secs(2),
        max_resources_per_request: max_per_request,
        ..CerbosConfig::default()
    })
    .unwrap()
}

fn principal(id: &str, roles: &[&str], attr: Value) -> Principal {
    Principal {
        id: id.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        attr: attr.as_object().unwrap().clone(),
        token: None,
    }
}

fn alice() -> Principal {
    principal(
        "alice",
        &["support"],
        json!({"assigned_ticket": "T-100", "refund_limit_cents": 100000, "allowed_models": ["gpt-4o-mini"]}),
    )
}

fn chat_route() -> RouteConfig {
    RouteConfig::prefix("/v1/chat/completions", Format::OpenaiChat)
}

fn mcp_route() -> RouteConfig {
    RouteConfig {
        mcp_server: Some("support".into()),
        ..RouteConfig::prefix("/mcp", Format::Mcp)
    }
}

fn llm(model: &str, tools: &[&str]) -> AgentRequest {
    AgentRequest::Llm(LlmRequest {
        model: model.into(),
        tools: tools
            .iter()
            .map(|t| DeclaredTool::new(t, "function"))
            .collect(),
        forced_tools: vec![],
        stream: false,
    })
}

fn refund(ticket: &str, cents: i64) -> AgentRequest {
    AgentRequest::Mcp(McpRequest {
        batch: false,
        protocol_version: Some("2025-11-25".into()),
        messages: vec![McpMessage {
            id: Some(json!(1)),
            method: "tools/call".into(),
            operation: McpOperation::ToolCall {
                name: "refund".into(),
                arguments: json!({"ticket_id": ticket, "amount_cents": cents}),
            },
        }],
    })
}

/// Retries until the freshly started PDP answers (bounded).
async fn decide(
    engine: &CerbosEngine,
    who: &Principal,
    route: &RouteConfig,
    request: &AgentRequest,
) -> Decision {
    let checks = Vocabulary::new(&VocabularyConfig::default()).checks(route, route.format, request);
    let who = SharedPrincipal::new(who.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match engine.check(&who, checks.clone(), "test-request").await {
            Ok(decision) => return decision,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("Cerbos did not answer: {e}"),
        }
    }
}

fn effects(decision: &Decision) -> Vec<(String, Effect)> {
    decision
        .verdicts
        .iter()
        .map(|v| (v.check.id.clone(), v.effect))
        .collect()
}

#[tokio::test]
async fn shipped_policies_answer_the_three_questions() {
    let Some(binary) = cerbos_binary() else {
        return;
    };
    let pdp = Pdp::start(&binary, free_port());
    let cerbos = engine(pdp.grpc_port, 50);

    // 1. Models, by role and by the principal's allowed_models attribute.
    let d = decide(&cerbos, &alice(), &chat_route(), &llm("gpt-4o-mini", &[])).await;
    assert_eq!(effects(&d), [("gpt-4o-mini".into(), Effect::Allow)]);
    assert!(
        d.verdicts[0]
            .policy
            .as_deref()
            .unwrap_or("")
            .contains("llm_model"),
        "{:?}",
        d.verdicts[0]
    );
    assert!(!d.call_ids[0].is_empty());
    let d = decide(&cerbos, &alice(), &chat_route(), &llm("gpt-4o", &[])).await;
    assert!(!d.verdicts[0].effect.allows());
    let root = principal("root", &["admin"], json!({}));
    let d = decide(&cerbos, &root, &chat_route(), &llm("gpt-4o", &[])).await;
    assert!(d.verdicts[0].effect.allows());

    // 2. Declared tools.
    let d = decide(
        &cerbos,
        &alice(),
        &chat_route(),
        &llm("gpt-4o-mini", &["get_weather", "delete_repo"]),
    )
    .await;
    let got = effects(&d);
    assert_eq!(got[1], ("get_weather".into(), Effect::Allow));
    assert_eq!(got[2].0, "delete_repo");
    assert!(!got[2].1.allows());

    // 3. MCP tool arguments against the principal's attributes (the refund-binding rule).
    let d = decide(&cerbos, &alice(), &mcp_route(), &refund("T-100", 5000)).await;
    assert!(
        d.verdicts[0].effect.allows(),
        "within limit on own ticket: {:?}",
        d.verdicts[0]
    );
    let d = decide(&cerbos, &alice(), &mcp_route(), &refund("T-100", 200_000)).await;
    assert_eq!(d.verdicts[0].effect, Effect::Deny, "over limit");
    assert!(
        d.verdicts[0]
            .policy
            .as_deref()
            .unwrap_or("")
            .contains("mcp_server")
    );
    let d = decide(&cerbos, &alice(), &mcp_route(), &refund("T-999", 10)).await;
    assert_eq!(d.verdicts[0].effect, Effect::Deny, "other ticket");
    let guest = principal("mallory", &["guest"], json!({}));
    let d = decide(&cerbos, &guest, &mcp_route(), &refund("T-100", 1)).await;
    assert!(!d.verdicts[0].effect.allows());
}

#[tokio::test]
async fn large_requests_are_split_and_answers_stay_in_order() {
    let Some(binary) = cerbos_binary() else {
        return;
    };
    let pdp = Pdp::start(&binary, free_port());
    let cerbos = engine(pdp.grpc_port, 2);
    let tools = [
        "get_weather",
        "delete_repo",
        "lookup_ticket",
        "run_shell",
        "refund",
    ];
    let d = decide(
        &cerbos,
        &alice(),
        &chat_route(),
        &llm("gpt-4o-mini", &tools),
    )
    .await;
    assert_eq!(d.call_ids.len(), 3, "6 resources in chunks of 2");
    let allowed: Vec<_> = d
        .verdicts
        .iter()
        .map(|v| (v.check.id.as_str(), v.effect.allows()))
        .collect();
    assert_eq!(
        allowed,
        [
            ("gpt-4o-mini", true),
            ("get_weather", true),
            ("delete_repo", false),
            ("lookup_ticket", true),
            ("run_shell", false),
            ("refund", true)
        ]
    );
}

#[tokio::test]
async fn an_unreachable_pdp_fails_closed_then_recovers() {
    let Some(binary) = cerbos_binary() else {
        return;
    };
    let port = free_port();
    let cerbos = engine(port, 50);
    let checks = Vocabulary::new(&VocabularyConfig::default()).checks(
        &chat_route(),
        Format::OpenaiChat,
        &llm("gpt-4o-mini", &[]),
    );
    let err = cerbos
        .check(&SharedPrincipal::new(alice()), checks, "r")
        .await
        .unwrap_err();
    assert!(
        matches!(err, DecideError::Unavailable(_) | DecideError::Timeout(_)),
        "{err:?}"
    );
    let _pdp = Pdp::start(&binary, port);
    let d = decide(&cerbos, &alice(), &chat_route(), &llm("gpt-4o-mini", &[])).await;
    assert!(
        d.verdicts[0].effect.allows(),
        "the same engine recovers once Cerbos is up"
    );
}
