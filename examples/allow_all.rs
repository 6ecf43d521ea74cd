//! The floor of the ext_authz hop: an Envoy `Authorization/Check` server that allows every
//! request without looking at it. Same gRPC stack as agent-authz (tonic, TCP_NODELAY, default
//! multi-threaded tokio runtime) and the same message size limit, so that `bench/run.sh` can
//! separate what the hop costs (Envoy buffering the body, the gRPC round trip) from what
//! agent-authz adds on top.
//!
//!   cargo run --release --example allow_all -- 127.0.0.1:9291

#[path = "common/ext_authz.rs"]
mod ext_authz;

use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use tonic::{Request, Response};

struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, tonic::Status> {
        // The request is decoded (body included) like agent-authz's, then dropped.
        drop(std::hint::black_box(request.into_inner()));
        Ok(Response::new(ext_authz::allowed()))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9291".to_owned());
    ext_authz::serve("allow_all", &address, AllowAll).await
}
