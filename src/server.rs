//! Start-up and listeners: builds the pipeline from a validated [`Config`], serves ext_authz,
//! ext_proc and `grpc.health.v1` on the gRPC port and the admin router on its own port, until
//! SIGINT/SIGTERM, letting in-flight checks finish.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::TryStreamExt;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::console::Ring;
use crate::decide::cache::CachedEngine;
use crate::decide::cerbos::CerbosEngine;
use crate::extract::tool_schemas::ToolSchemas;

/// The policy engine in production: Cerbos behind the (optional) verdict cache.
type Engine = CachedEngine<CerbosEngine>;
use crate::identity::Authenticator;
use crate::identity::jwks::KeyStores;
use crate::identity::session::SessionSeal;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::reload::Current;
use crate::respond::check_request::ExtAuthzServer;
use crate::respond::coalesced_writes::CoalescedWrites;
use crate::respond::processing_request::ExtProcServer;

/// Room for the headers and attributes around the largest body Envoy may send.
const GRPC_OVERHEAD_BYTES: usize = 1024 * 1024;

/// Builds everything a configuration describes, sharing the process-wide metrics and the
/// signing keys in force (a reload keeps them, see [`KeyStores`]).
async fn build(
    config: &Config,
    metrics: &Arc<Metrics>,
    schemas: &Arc<ToolSchemas>,
    keys: &KeyStores,
    console: &Option<Arc<Ring>>,
) -> anyhow::Result<Pipeline<Engine>> {
    let authenticator = Authenticator::start_with(&config.identity, keys).await?;
    let cerbos = CerbosEngine::new(&config.cerbos).map_err(anyhow::Error::msg)?;
    let ttl = if config.cache.enabled {
        config.cache.ttl
    } else {
        std::time::Duration::ZERO
    };
    let namespace = format!("{}/{}", config.cerbos.policy_version, config.cerbos.scope);
    let engine = CachedEngine::new(
        cerbos,
        ttl,
        config.cache.max_entries,
        namespace,
        Arc::clone(metrics),
    );
    let audit = AuditLog::new(&config.audit, console.clone())
        .map_err(|e| anyhow::anyhow!("audit.output: {e}"))?;
    let mut pipeline = Pipeline::new(config, authenticator, engine, audit, Arc::clone(metrics))
        .with_tool_schemas(Arc::clone(schemas));
    if let Some(path) = &config.mcp.session_keys_file {
        let seal = SessionSeal::from_file(path)
            .map_err(|e| anyhow::anyhow!("mcp.session_keys_file: {e}"))?;
        pipeline = pipeline.with_session_keys(seal);
    }
    Ok(pipeline)
}

/// Serves until SIGINT/SIGTERM. `path` is watched for configuration changes.
pub async fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let schemas = Arc::new(ToolSchemas::default());
    let keys = Arc::new(KeyStores::new(metrics.jwks_refresh_failures.clone()));
    // The console's records outlive configuration reloads, like the learnt tool schemas.
    let console = (config.console.enabled && config.admin.address.is_some())
        .then(|| Arc::new(Ring::new(config.console.retain, &metrics)));
    let current = Arc::new(Current::new(
        build(&config, &metrics, &schemas, &keys, &console).await?,
    ));
    let max_message = config
        .server
        .max_request_bytes
        .saturating_add(GRPC_OVERHEAD_BYTES);
    let authz = ExtAuthzServer::new(Arc::clone(&current), max_message);
    let ext_proc = ExtProcServer::new(Arc::clone(&current), max_message);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ExtAuthzServer<Engine>>()
        .await;
    health_reporter.set_serving::<ExtProcServer<Engine>>().await;
    if !config.server.config_reload_interval.is_zero() {
        let reload_metrics = Arc::clone(&metrics);
        let reload_schemas = Arc::clone(&schemas);
        let reload_keys = Arc::clone(&keys);
        let reload_console = console.clone();
        tokio::spawn(crate::reload::watch(
            path,
            config.clone(),
            config.server.config_reload_interval,
            Arc::clone(&current),
            move |new| {
                let metrics = Arc::clone(&reload_metrics);
                let schemas = Arc::clone(&reload_schemas);
                let keys = Arc::clone(&reload_keys);
                let console = reload_console.clone();
                async move { build(&new, &metrics, &schemas, &keys, &console).await }
            },
        ));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let admin = match config.admin.address {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| anyhow::anyhow!("admin.address {address}: {e}"))?;
            let router = crate::admin::router(Arc::clone(&current), console);
            Some(tokio::spawn(crate::admin::serve(
                listener,
                router,
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(config.server.grpc_address)
        .await
        .map_err(|e| anyhow::anyhow!("server.grpc_address {}: {e}", config.server.grpc_address))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, cerbos = %config.cerbos.address, "agent-authz listening");
    Server::builder()
        .add_service(health)
        .add_service(authz)
        .add_service(ext_proc)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map_ok(CoalescedWrites::new),
            stopped(stop_rx),
        )
        .await?;
    if let Some(admin) = admin {
        admin.await??;
    }
    tracing::info!("agent-authz stopped");
    Ok(())
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
