//! What the benchmark's own ext_authz servers (allow_all.rs, ask_cerbos.rs) share, so that
//! they differ in what they do per check and nothing else: the same answer, the same tonic
//! server settings as agent-authz's (TCP_NODELAY, the same message size limit).

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// Room for a 2 MiB body plus headers, as agent-authz derives it (max_request_bytes + 1 MiB).
const MAX_MESSAGE_BYTES: usize = 3 * 1024 * 1024;

/// An OK answer with nothing added.
pub fn allowed() -> CheckResponse {
    CheckResponse {
        status: Some(Status {
            code: 0,
            message: String::new(),
            details: vec![],
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        dynamic_metadata: None,
    }
}

/// Serves `service` as Envoy's `Authorization/Check` on `address` until the process ends.
pub async fn serve<S: Authorization>(name: &str, address: &str, service: S) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    eprintln!("{name} listening on {}", listener.local_addr()?);
    Server::builder()
        .add_service(AuthorizationServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
