//! The real binary started while Cerbos is unreachable: it is alive but not ready, and it
//! denies (503) every classified request instead of letting anything through.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn chat_request() -> CheckRequest {
    let payload = Struct {
        fields: HashMap::from([
            ("sub".to_owned(), string("alice")),
            (
                "roles".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: vec![string("support")],
                    })),
                },
            ),
        ]),
    };
    let namespace = Struct {
        fields: HashMap::from([(
            "jwt_payload".to_owned(),
            Value {
                kind: Some(Kind::StructValue(payload)),
            },
        )]),
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    headers: HashMap::from([(
                        "content-type".to_owned(),
                        "application/json".to_owned(),
                    )]),
                    raw_body: br#"{"model":"gpt-4o-mini","messages":[]}"#.to_vec(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            metadata_context: Some(Metadata {
                filter_metadata: HashMap::from([(
                    "envoy.filters.http.jwt_authn".to_owned(),
                    namespace,
                )]),
                ..Metadata::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

async fn http_status(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let (host, path) = address.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let request = format!("GET /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

#[tokio::test]
async fn alive_not_ready_and_denying_while_cerbos_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let config = format!(
        "server: {{grpc_address: '127.0.0.1:{grpc}'}}\n\
         admin: {{address: '127.0.0.1:{admin}'}}\n\
         identity: {{source: envoy_jwt_authn}}\n\
         cerbos: {{address: 'http://127.0.0.1:{cerbos}', timeout: 300ms}}\n\
         routes: [{{path_prefix: /v1/chat/completions, format: openai_chat}}]\n",
        cerbos = free_port()
    );
    let path = dir.path().join("agent-authz.yaml");
    std::fs::write(&path, config).unwrap();
    let _service = Service(
        Command::new(env!("CARGO_BIN_EXE_agent-authz"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let healthz = loop {
        if let Some(answer) = http_status(&format!("http://127.0.0.1:{admin}/healthz")).await {
            break answer;
        }
        assert!(Instant::now() < deadline, "agent-authz did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(healthz.0, 200, "alive");
    let (status, body) = http_status(&format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(status, 503, "not ready");
    assert!(body.contains("cerbos not reachable"), "{body}");

    let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    for _ in 0..3 {
        let answer = client.check(chat_request()).await.unwrap().into_inner();
        assert_ne!(
            answer.status.unwrap().code,
            0,
            "nothing is allowed while the PDP is down"
        );
        let Some(HttpResponse::DeniedResponse(denied)) = answer.http_response else {
            panic!("a denial carries its answer")
        };
        assert_eq!(denied.status.unwrap().code, 503);
    }
}
