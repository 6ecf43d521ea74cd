//! The floor of the ext_authz hop: an Envoy `Authorization/Check` server that allows every
//! request without looking at it. Same gRPC stack as agent-authz (tonic, TCP_NODELAY, default
//! multi-threaded tokio runtime) and the same message size limit, so that `bench/run.sh` can
//! separate what the hop costs (Envoy buffering the body, the gRPC round trip) from what
//! agent-authz adds on top.
//!
//!   cargo run --release --example allow_all -- 127.0.0.1:9291

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response};

/// Room for a 2 MiB body plus headers, as agent-authz derives it (max_request_bytes + 1 MiB).
const MAX_MESSAGE_BYTES: usize = 3 * 1024 * 1024;

struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, tonic::Status> {
        // The request is decoded (body included) like agent-authz's, then dropped.
        drop(std::hint::black_box(request.into_inner()));
        Ok(Response::new(CheckResponse {
            status: Some(Status {
                code: 0,
                message: String::new(),
                details: vec![],
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9291".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("allow_all listening on {}", listener.local_addr()?);
    Server::builder()
        .add_service(
            AuthorizationServer::new(AllowAll).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
