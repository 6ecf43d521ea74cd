//! Configuration reload without restart. The services read the pipeline through [`Current`];
//! a reload builds a complete new pipeline from the new file and swaps it in. A check in
//! flight keeps the pipeline it started with (it holds an `Arc`), so nothing is dropped; a
//! file that does not load, validate or start (e.g. an unreadable JWKS) is refused with a log
//! line and the running configuration stays.
//!
//! A file caught mid-write can still parse (cut just before `audit.mask`), so a change is
//! applied only when two reads [`SETTLE`] apart agree: the exact bytes read are parsed, never
//! a third read. Writers should still replace the file atomically (rename, or a ConfigMap).
//!
//! Listener addresses and the gRPC message limit are fixed at start: a change to them is
//! reported as needing a restart and otherwise ignored.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{Config, ConfigError};
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

/// How long a changed configuration file must stay the same before it is applied.
pub const SETTLE: Duration = Duration::from_millis(250);

/// What one look at a changed file decided.
#[derive(Debug, PartialEq)]
pub enum Settled {
    /// Both reads agree: apply these bytes.
    Stable(Vec<u8>),
    /// The file changed between the reads (still being written): keep the running config.
    Changing,
    /// The file could not be read: keep the running config.
    Unreadable(String),
}

/// Reads `path`, waits [`SETTLE`], reads again.
pub async fn read_settled(path: &Path) -> Settled {
    let first = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return Settled::Unreadable(e.to_string()),
    };
    tokio::time::sleep(SETTLE).await;
    match std::fs::read(path) {
        Ok(second) if second == first => Settled::Stable(first),
        Ok(_) => Settled::Changing,
        Err(e) => Settled::Unreadable(e.to_string()),
    }
}

/// Watches the configuration file (by content, so ConfigMap symlink swaps count) and on
/// SIGHUP, rebuilding the pipeline with `build` when it changed and settled.
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
    // The content last acted on (applied or refused), so a refused file is not retried (and
    // logged) on every tick.
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
        if !forced && std::fs::read(&path).is_ok_and(|bytes| bytes == last) {
            continue;
        }
        let bytes = match read_settled(&path).await {
            Settled::Stable(bytes) => bytes,
            Settled::Changing => {
                tracing::warn!(path = %path.display(), "configuration file is still changing; keeping the running configuration until two reads agree");
                continue;
            }
            Settled::Unreadable(e) => {
                tracing::warn!(path = %path.display(), error = %e, "configuration file unreadable; keeping the running configuration");
                continue;
            }
        };
        if bytes == last && !forced {
            continue;
        }
        last = bytes;
        let parsed = std::str::from_utf8(&last)
            .map_err(|e| ("(file)".to_owned(), e.to_string()))
            .and_then(Config::parse);
        let config = match parsed {
            Ok(config) => config,
            Err((key, message)) => {
                let e = ConfigError::Invalid {
                    path: path.clone(),
                    key,
                    message,
                };
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
