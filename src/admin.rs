//! The admin HTTP listener, apart from the gRPC port so probes and scrapes never compete with
//! Envoy's checks: `/healthz` (the process is alive), `/readyz` (signing keys loaded and Cerbos
//! answering; 503 otherwise, naming what is missing) and `/metrics` (Prometheus text), plus
//! the decision console ([`crate::console`]) when it is on.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::console::Ring;
use crate::decide::PolicyEngine;
use crate::reload::Current;

pub fn router<E: PolicyEngine>(current: Arc<Current<E>>, console: Option<Arc<Ring>>) -> Router {
    let admin = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<E>))
        .route("/metrics", get(metrics::<E>))
        .with_state(Arc::clone(&current));
    match console {
        Some(ring) => admin.merge(crate::console::router(current, ring)),
        None => admin,
    }
}

async fn readyz<E: PolicyEngine>(State(current): State<Arc<Current<E>>>) -> impl IntoResponse {
    match current.get().readiness().await {
        (true, true) => (StatusCode::OK, "ready\n".to_owned()),
        (keys, cerbos) => {
            let mut missing = Vec::new();
            if !keys {
                missing.push("signing keys not loaded");
            }
            if !cerbos {
                missing.push("cerbos not reachable");
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", missing.join(", ")),
            )
        }
    }
}

async fn metrics<E: PolicyEngine>(State(current): State<Arc<Current<E>>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        current.get().metrics().encode(),
    )
}

/// Serves the admin router until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?address, "admin listening (/healthz, /readyz, /metrics)");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
