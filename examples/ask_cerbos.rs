//! The floor of an uncached check: the allow-all ext_authz server (examples/allow_all.rs) that,
//! before allowing, asks Cerbos one fixed question through agent-authz's own Cerbos client
//! (`CerbosEngine`: the same HTTP/2 connection, request encoding and answer decoding) and waits
//! for the answer. It reads no identity, no body and no route, builds no checks and keeps no
//! record, so `bench/run.sh` can tell what the second hop itself costs (allow-all → this) from
//! what agent-authz does besides (this → agent-authz without the cache). Same runtime as
//! agent-authz: mimalloc, and `--worker-threads` as `server.worker_threads`.
//!
//!   cargo run --release --example ask_cerbos -- 127.0.0.1:9292 http://127.0.0.1:3593 \
//!       question.json --worker-threads 1
//!
//! `question.json` is grpc_load's Cerbos spec: `{"principal": {"id", "roles", "attr"},
//! "resources": [{"kind", "id", "action", "attr"}]}` (bench/bench.py writes it from the question
//! agent-authz asked, taken from its decision log).

#[path = "common/ext_authz.rs"]
mod ext_authz;

use std::sync::Arc;

use agent_authz::config::CerbosConfig;
use agent_authz::decide::cerbos::CerbosEngine;
use agent_authz::decide::{PolicyEngine, ResourceCheck, Subject};
use agent_authz::identity::{Principal, SharedPrincipal};
use anyhow::Context;
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use serde_json::{Map, Value};
use tonic::{Request, Response};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct AskCerbos {
    engine: CerbosEngine,
    principal: Arc<SharedPrincipal>,
    checks: Vec<ResourceCheck>,
}

#[tonic::async_trait]
impl Authorization for AskCerbos {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, tonic::Status> {
        // Decoded (body included) like allow_all's, then dropped.
        drop(std::hint::black_box(request.into_inner()));
        let decision = self
            .engine
            .check(&self.principal, self.checks.clone(), "ask-cerbos")
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
        std::hint::black_box(decision);
        Ok(Response::new(ext_authz::allowed()))
    }
}

/// The question: the principal and the resource checks of grpc_load's Cerbos spec.
fn question(spec: &Value) -> anyhow::Result<(Principal, Vec<ResourceCheck>)> {
    let text = |v: &Value, key: &str| -> anyhow::Result<String> {
        v[key]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{key} is not a string"))
    };
    let attr =
        |v: &Value| -> Map<String, Value> { v["attr"].as_object().cloned().unwrap_or_default() };
    let p = &spec["principal"];
    let principal = Principal {
        id: text(p, "id")?,
        roles: serde_json::from_value(p["roles"].clone()).context("principal.roles")?,
        attr: attr(p),
        token: None,
    };
    let checks = spec["resources"]
        .as_array()
        .context("resources is not an array")?
        .iter()
        .map(|r| {
            Ok(ResourceCheck {
                kind: text(r, "kind")?,
                id: text(r, "id")?,
                action: text(r, "action")?,
                attr: attr(r),
                subject: Subject::Model(text(r, "id")?),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((principal, checks))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, cerbos, spec, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: ask_cerbos LISTEN CERBOS_URL QUESTION_JSON [--worker-threads N]");
    };
    let workers = match rest {
        [] => None,
        [flag, n] if flag == "--worker-threads" => Some(n.parse::<usize>()?),
        _ => anyhow::bail!("unexpected arguments {rest:?}"),
    };
    let spec: Value = serde_json::from_slice(&std::fs::read(spec)?)?;
    let (principal, checks) = question(&spec)?;
    let engine = CerbosEngine::new(&CerbosConfig {
        address: cerbos.clone(),
        ..CerbosConfig::default()
    })
    .map_err(anyhow::Error::msg)?;
    let service = AskCerbos {
        engine,
        principal: SharedPrincipal::new(principal),
        checks,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        runtime.worker_threads(n);
    }
    runtime
        .enable_all()
        .build()?
        .block_on(ext_authz::serve("ask_cerbos", address, service))
}
