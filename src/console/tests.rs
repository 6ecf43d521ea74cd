//! The console's API through its router, against a fake engine: who gets in, what they see,
//! and that a stranger learns nothing.

use std::sync::Mutex;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tower_service::Service;

use super::*;
use crate::audit::AuditLog;
use crate::audit::tests::record;
use crate::config::Config;
use crate::decide::{DecideError, Decision, Effect, ResourceCheck};
use crate::identity::{Authenticator, SharedPrincipal};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

const RSA_KEY: &[u8] = include_bytes!("../identity/testdata/rsa_private.pem");

/// Allows `view` on the console to auditors only; records what it was asked.
struct Auditors {
    seen: Arc<Mutex<Vec<ResourceCheck>>>,
    down: bool,
}

impl PolicyEngine for Auditors {
    async fn check(
        &self,
        principal: &std::sync::Arc<SharedPrincipal>,
        checks: Vec<ResourceCheck>,
        _: &str,
    ) -> Result<Decision, DecideError> {
        if self.down {
            return Err(DecideError::Unavailable("connection refused".into()));
        }
        self.seen.lock().unwrap().extend(checks.iter().cloned());
        Ok(Decision::each(checks, None, |c| {
            let auditor = principal.roles.iter().any(|r| r == "auditor");
            if auditor && c.kind == "agent_authz_console" && c.action == "view" {
                Effect::Allow
            } else {
                Effect::Deny
            }
        }))
    }
}

struct Harness {
    router: Router,
    seen: Arc<Mutex<Vec<ResourceCheck>>>,
    ring: Arc<Ring>,
}

async fn harness(down: bool) -> Harness {
    let jwks = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/identity/testdata/jwks.json"
    );
    let config = Config::parse(&format!(
        "identity:\n  jwt:\n    jwks: {{file: {jwks}}}\n    issuer: https://issuer\n    audiences: [gw]\n"
    ))
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let authenticator = Authenticator::start(&config.identity, Default::default())
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let engine = Auditors {
        seen: Arc::clone(&seen),
        down,
    };
    let pipeline = Pipeline::new(
        &config,
        authenticator,
        engine,
        AuditLog::memory(),
        Arc::clone(&metrics),
    );
    let current = Arc::new(Current::new(pipeline));
    let ring = Arc::new(Ring::new(100, &metrics));
    Harness {
        router: router(current, Arc::clone(&ring)),
        seen,
        ring,
    }
}

fn token(sub: &str, roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let claims =
        json!({"sub": sub, "iss": "https://issuer", "aud": "gw", "exp": exp, "roles": roles});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
    )
    .unwrap()
}

impl Harness {
    async fn get(&self, uri: &str, token: Option<&str>) -> (StatusCode, http::HeaderMap, Value) {
        let mut request = Request::get(uri);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let response = self
            .router
            .clone()
            .call(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, json)
    }

    fn seen(&self) -> Vec<ResourceCheck> {
        self.seen.lock().unwrap().clone()
    }

    /// d-1 (alice, denied), d-2 (bob, allowed), d-3 (alice, allowed) and d-2's response phase.
    fn fill(&self) {
        for (n, who, effect) in [
            (1, "alice", "deny"),
            (2, "bob", "allow"),
            (3, "alice", "allow"),
        ] {
            let mut r = record(n);
            r.effect = effect;
            r.principal = Some(crate::audit::PrincipalRecord::from(
                crate::identity::Principal {
                    id: who.into(),
                    roles: vec!["support".into()],
                    attr: Default::default(),
                    token: None,
                },
            ));
            self.ring.push(r);
        }
        let mut response = record(2);
        response.phase = "response";
        response.hidden = vec!["delete_repo".into()];
        self.ring.push(response);
    }
}

fn ids(page: &Value) -> Vec<&str> {
    page["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["decision_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn without_a_token_nothing_is_shown_and_cerbos_is_not_asked() {
    let h = harness(false).await;
    h.fill();
    for uri in [
        "/api/v1/decisions",
        "/api/v1/decisions/d-1",
        "/api/v1/decisions/stream",
        "/api/v1/overview",
        "/api/v1/decisions?nonsense=1",
    ] {
        let (status, headers, body) = h.get(uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(
            body,
            json!({"error": "unauthenticated: missing bearer token"})
        );
    }
    let (status, _, body) = h.get("/api/v1/decisions", Some("not.a.jwt")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.get("decisions").is_none());
    assert!(h.seen().is_empty());
}

#[tokio::test]
async fn a_principal_cerbos_does_not_allow_to_view_gets_403_and_no_data() {
    let h = harness(false).await;
    h.fill();
    let (status, _, body) = h
        .get("/api/v1/decisions", Some(&token("alice", &["support"])))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"error": "principal alice may not view the decision console"})
    );
    let asked = h.seen();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (
            asked[0].kind.as_str(),
            asked[0].id.as_str(),
            asked[0].action.as_str()
        ),
        ("agent_authz_console", "decisions", "view")
    );
}

#[tokio::test]
async fn cerbos_down_fails_closed() {
    let h = harness(true).await;
    h.fill();
    let (status, _, body) = h
        .get("/api/v1/decisions", Some(&token("audrey", &["auditor"])))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.get("decisions").is_none());
}

#[tokio::test]
async fn an_auditor_lists_newest_first_filters_and_pages_with_the_cursor() {
    let h = harness(false).await;
    h.fill();
    let auditor = token("audrey", &["auditor"]);
    let (status, headers, page) = h.get("/api/v1/decisions", Some(&auditor)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(ids(&page), ["d-2", "d-3", "d-2", "d-1"]);
    assert_eq!(page["decisions"][0]["seq"], 4);
    assert!(page.get("next_cursor").is_none());

    let (_, _, page) = h
        .get(
            "/api/v1/decisions?principal=ALI&phase=request",
            Some(&auditor),
        )
        .await;
    assert_eq!(ids(&page), ["d-3", "d-1"]);
    let (_, _, page) = h.get("/api/v1/decisions?effect=deny", Some(&auditor)).await;
    assert_eq!(ids(&page), ["d-1"]);

    let (_, _, first) = h.get("/api/v1/decisions?limit=3", Some(&auditor)).await;
    assert_eq!(ids(&first), ["d-2", "d-3", "d-2"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, _, second) = h
        .get(
            &format!("/api/v1/decisions?limit=3&cursor={cursor}"),
            Some(&auditor),
        )
        .await;
    assert_eq!(ids(&second), ["d-1"]);
    assert!(second.get("next_cursor").is_none());

    let (status, _, body) = h
        .get("/api/v1/decisions?effect=maybe", Some(&auditor))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("effect"));
    let (status, _, _) = h.get("/api/v1/decisions?nonsense=1", Some(&auditor)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn one_decision_shows_its_request_and_response_records() {
    let h = harness(false).await;
    h.fill();
    let auditor = token("audrey", &["auditor"]);
    let (status, _, body) = h.get("/api/v1/decisions/d-2", Some(&auditor)).await;
    assert_eq!(status, StatusCode::OK);
    let phases: Vec<&str> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["request", "response"]);
    assert_eq!(body["records"][1]["hidden"], json!(["delete_repo"]));
    let (status, _, _) = h.get("/api/v1/decisions/d-9", Some(&auditor)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_live_stream_sends_new_matching_records() {
    let h = harness(false).await;
    let request = Request::get("/api/v1/decisions/stream?effect=deny")
        .header(
            "authorization",
            format!("Bearer {}", token("audrey", &["auditor"])),
        )
        .body(Body::empty())
        .unwrap();
    let response = h.router.clone().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut allowed = record(7);
    allowed.effect = "allow";
    h.ring.push(allowed);
    let mut denied = record(8);
    denied.effect = "deny";
    h.ring.push(denied);
    let frame = body.frame().await.unwrap().unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(text.starts_with("event: decision\n"), "{text}");
    assert!(text.contains("\"decision_id\":\"d-8\""), "{text}");
    assert!(!text.contains("d-7"));
}

#[tokio::test]
async fn the_page_is_served_without_data_under_a_strict_content_policy() {
    let h = harness(false).await;
    let response = h
        .router
        .clone()
        .call(Request::get("/console").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    for asset in ["/console/console.js", "/console/console.css"] {
        let response = h
            .router
            .clone()
            .call(Request::get(asset).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }
}
