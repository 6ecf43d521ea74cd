//! The real binary, driven over its own gRPC and admin ports (no Envoy): gRPC health, hot
//! configuration reload, and start-up while Cerbos is unreachable.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, ProcessingRequest, processing_request::Request as Phase,
};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

mod common;
use common::free_port;

/// `agent-authz serve` on `config`, killed on drop; stderr goes to `stderr`.
struct Service(Child);

impl Service {
    fn start(config: &Path, stderr: Stdio) -> Service {
        Service(
            Command::new(env!("CARGO_BIN_EXE_agent-authz"))
                .args(["serve", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap(),
        )
    }
}

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

/// A request from alice, as Envoy's jwt_authn verified her, for `method path` with `body`.
fn request(method: &str, path: &str, body: &[u8]) -> CheckRequest {
    let roles = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![string("support")],
        })),
    };
    let payload = Struct {
        fields: HashMap::from([
            ("sub".to_owned(), string("alice")),
            ("roles".to_owned(), roles),
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
                    method: method.into(),
                    path: path.into(),
                    headers: HashMap::from([(
                        "content-type".to_owned(),
                        "application/json".to_owned(),
                    )]),
                    raw_body: body.to_vec(),
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

fn unclassified() -> CheckRequest {
    request("GET", "/v2/other", b"")
}

async fn status_code(port: u16, check: CheckRequest) -> Option<i32> {
    let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .ok()?;
    let response = client.check(check).await.ok()?.into_inner();
    Some(response.status?.code)
}

async fn eventually(port: u16, want: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if status_code(port, unclassified()).await == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// GET over plain HTTP/1.1: (status, whole response).
async fn http_get(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, path) = url.trim_start_matches("http://").split_once('/')?;
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let request = format!("GET /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

fn reload_config(port: u16, unclassified: &str) -> String {
    format!(
        "server: {{grpc_address: '127.0.0.1:{port}', config_reload_interval: 100ms}}\n\
         admin: {{address: null}}\n\
         identity: {{source: envoy_jwt_authn}}\n\
         cerbos: {{address: 'http://127.0.0.1:1'}}\n\
         unclassified_routes: {unclassified}\n"
    )
}

#[tokio::test]
async fn configuration_changes_apply_without_restart_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent-authz.yaml");
    let port = free_port();
    std::fs::write(&path, reload_config(port, "deny")).unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let _service = Service::start(&path, Stdio::from(log));
    assert!(
        eventually(port, 7).await,
        "denied (PERMISSION_DENIED) while unclassified_routes: deny"
    );

    // grpc.health.v1 on the same port, for Envoy and Kubernetes probes.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in [
        "",
        "envoy.service.auth.v3.Authorization",
        "envoy.service.ext_proc.v3.ExternalProcessor",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    std::fs::write(&path, reload_config(port, "allow")).unwrap();
    assert!(
        eventually(port, 0).await,
        "allowed after the reload, same process"
    );

    std::fs::write(
        &path,
        reload_config(port, "allow").replace("unclassified_routes", "unclassified_routez"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        status_code(port, unclassified()).await,
        Some(0),
        "the old configuration stays"
    );
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    assert!(
        stderr.contains("configuration change rejected") && stderr.contains("unclassified_routez"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_configuration_file_caught_mid_write_is_not_applied() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent-authz.yaml");
    let port = free_port();
    std::fs::write(&path, reload_config(port, "deny")).unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let _service = Service::start(&path, Stdio::from(log));
    assert!(
        eventually(port, 7).await,
        "running with unclassified_routes: deny"
    );

    // A writer that is slower than the 100 ms poll: the first part alone parses (it lacks
    // the last line), and must not be applied on its own.
    let full = reload_config(port, "allow");
    let (first, rest) = full.split_at(full.find("unclassified_routes").unwrap());
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(first.as_bytes()).unwrap();
    file.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    file.write_all(rest.as_bytes()).unwrap();
    file.flush().unwrap();
    drop(file);
    assert!(eventually(port, 0).await, "the complete file applies");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert_eq!(
        stderr.matches("configuration reloaded").count(),
        1,
        "only the complete file was applied: {stderr}"
    );
    assert!(
        stderr.contains("configuration file is still changing"),
        "{stderr}"
    );
}

#[tokio::test]
async fn alive_not_ready_and_denying_while_cerbos_is_down_at_start() {
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
    let _service = Service::start(&path, Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(15);
    let healthz = loop {
        if let Some(answer) = http_get(&format!("http://127.0.0.1:{admin}/healthz")).await {
            break answer;
        }
        assert!(Instant::now() < deadline, "agent-authz did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(healthz.0, 200, "alive");
    let (status, body) = http_get(&format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(status, 503, "not ready");
    assert!(body.contains("cerbos not reachable"), "{body}");

    let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    for _ in 0..3 {
        let chat = request(
            "POST",
            "/v1/chat/completions",
            br#"{"model":"gpt-4o-mini","messages":[]}"#,
        );
        let answer = client.check(chat).await.unwrap().into_inner();
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

    // The gRPC message limit (max_request_bytes, 1 MiB by default, plus 1 MiB for headers)
    // holds before anything is decoded: a bigger CheckRequest is refused by the transport.
    let huge = request("POST", "/v1/chat/completions", &vec![b' '; 3 * 1024 * 1024]);
    let refused = client.check(huge).await.expect_err("an oversized message");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");

    // The same limit on the ext_proc service (also hand-written, respond/processing_request.rs):
    // the oversized message is never processed, so it gets no answer (the stream ends; Envoy
    // treats that as a failed exchange).
    let mut ext_proc = ExternalProcessorClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    let huge_body = ProcessingRequest {
        request: Some(Phase::RequestBody(HttpBody {
            body: vec![b' '; 3 * 1024 * 1024],
            end_of_stream: true,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    };
    let answer = match ext_proc.process(tokio_stream::iter([huge_body])).await {
        Ok(stream) => stream.into_inner().message().await,
        Err(status) => Err(status),
    };
    assert!(
        !matches!(answer, Ok(Some(_))),
        "an oversized message was processed: {answer:?}"
    );
}
