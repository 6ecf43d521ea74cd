//! Start-up and the gRPC listener: builds the pipeline from a validated [`Config`] and serves
//! ext_authz and ext_proc on one port until SIGINT/SIGTERM, letting in-flight checks finish.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tonic::transport::Server;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::decide::cerbos::CerbosEngine;
use crate::identity::Authenticator;
use crate::pipeline::Pipeline;
use crate::respond::ext_authz::ExtAuthzService;
use crate::respond::ext_proc::ExtProcService;

/// Room for the headers and attributes around the largest body Envoy may send.
const GRPC_OVERHEAD_BYTES: usize = 1024 * 1024;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let authenticator = Authenticator::start(&config.identity).await?;
    let engine = CerbosEngine::new(&config.cerbos).map_err(anyhow::Error::msg)?;
    let pipeline = Arc::new(Pipeline::new(
        &config,
        authenticator,
        engine,
        AuditLog::Stdout,
    ));
    let max_message = pipeline
        .max_body_bytes()
        .saturating_add(GRPC_OVERHEAD_BYTES);
    let authz = AuthorizationServer::new(ExtAuthzService::new(Arc::clone(&pipeline)))
        .max_decoding_message_size(max_message);
    let ext_proc = ExternalProcessorServer::new(ExtProcService::new(pipeline))
        .max_decoding_message_size(max_message);

    let listener = tokio::net::TcpListener::bind(config.server.grpc_address).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, cerbos = %config.cerbos.address, "agent-authz listening");
    Server::builder()
        .add_service(authz)
        .add_service(ext_proc)
        .serve_with_incoming_shutdown(tokio_stream_listener(listener), shutdown_signal())
        .await?;
    tracing::info!("agent-authz stopped");
    Ok(())
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight checks");
}
