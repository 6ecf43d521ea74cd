//! The real binary: it answers gRPC health checks, and reloads its configuration without a
//! restart (a valid change takes effect, an invalid one is refused with a log line and the
//! running configuration stays).

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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

fn config(port: u16, unclassified: &str) -> String {
    format!(
        "server: {{grpc_address: '127.0.0.1:{port}', config_reload_interval: 100ms}}\n\
         admin: {{address: null}}\n\
         identity: {{source: envoy_jwt_authn}}\n\
         cerbos: {{address: 'http://127.0.0.1:1'}}\n\
         unclassified_routes: {unclassified}\n"
    )
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// A request to an unclassified path from a principal Envoy's jwt_authn verified.
fn request() -> CheckRequest {
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
                    method: "GET".into(),
                    path: "/v2/other".into(),
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

async fn status_code(port: u16) -> Option<i32> {
    let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .ok()?;
    let response = client.check(request()).await.ok()?.into_inner();
    Some(response.status?.code)
}

async fn eventually(port: u16, want: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if status_code(port).await == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn configuration_changes_apply_without_restart_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent-authz.yaml");
    let port = free_port();
    std::fs::write(&path, config(port, "deny")).unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let _service = Service(
        Command::new(env!("CARGO_BIN_EXE_agent-authz"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
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

    std::fs::write(&path, config(port, "allow")).unwrap();
    assert!(
        eventually(port, 0).await,
        "allowed after the reload, same process"
    );

    std::fs::write(
        &path,
        config(port, "allow").replace("unclassified_routes", "unclassified_routez"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        status_code(port).await,
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
