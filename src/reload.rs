//! Configuration reload without restart. The services read the pipeline through [`Current`];
//! a reload builds a complete new pipeline from the new file and swaps it in. A check in
//! flight keeps the pipeline it started with (it holds an `Arc`), so nothing is dropped; a
//! file that does not load, validate or start (e.g. an unreadable JWKS) is refused with a log
//! line and the running configuration stays.
//!
//! Listener addresses and the gRPC message limit are fixed at start: a change to them is
//! reported as needing a restart and otherwise ignored.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::Config;
use crate::pipeline::Pipeline;

/// The pipeline in force.
pub struct Current<E> {
    pipeline: RwLock<Arc<Pipeline<E>>>,
}

impl<E> Current<E> {
    pub fn new(pipeline: Pipeline<E>) -> Self {
        Self {
            pipeline: RwLock::new(Arc::new(pipeline)),
        }
    }

    pub fn get(&self) -> Arc<Pipeline<E>> {
        match self.pipeline.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn replace(&self, pipeline: Pipeline<E>) {
        let pipeline = Arc::new(pipeline);
        match self.pipeline.write() {
            Ok(mut p) => *p = pipeline,
            Err(poisoned) => *poisoned.into_inner() = pipeline,
        }
    }
}

/// Watches the configuration file (by content, so ConfigMap symlink swaps count) and on
/// SIGHUP, rebuilding the pipeline with `build` when it changed.
pub async fn watch<E, F, Fut>(
    path: PathBuf,
    running: Config,
    interval: Duration,
    current: Arc<Current<E>>,
    build: F,
) where
    F: Fn(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Pipeline<E>>>,
{
    let mut last = std::fs::read(&path).unwrap_or_default();
    let mut running = running;
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let forced = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            () = hangup => true,
        };
        let Ok(bytes) = std::fs::read(&path) else {
            tracing::warn!(path = %path.display(), "configuration file unreadable; keeping the running configuration");
            continue;
        };
        if bytes == last && !forced {
            continue;
        }
        last = bytes;
        let config = match Config::load(&path) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(error = %e, "configuration change rejected; keeping the running configuration");
                continue;
            }
        };
        for (key, changed) in [
            (
                "server.grpc_address",
                config.server.grpc_address != running.server.grpc_address,
            ),
            (
                "server.max_request_bytes",
                config.server.max_request_bytes != running.server.max_request_bytes,
            ),
            (
                "server.worker_threads",
                config.server.worker_threads != running.server.worker_threads,
            ),
            (
                "admin.address",
                config.admin.address != running.admin.address,
            ),
            (
                "console",
                config.console.enabled != running.console.enabled
                    || config.console.retain != running.console.retain,
            ),
            (
                "tracing",
                config.tracing.otlp_endpoint != running.tracing.otlp_endpoint,
            ),
        ] {
            if changed {
                tracing::warn!(key, "this setting changes only on restart");
            }
        }
        match build(config.clone()).await {
            Ok(pipeline) => {
                current.replace(pipeline);
                running = config;
                tracing::info!(path = %path.display(), "configuration reloaded");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration change rejected; keeping the running configuration")
            }
        }
    }
}
