//! A small closed-loop gRPC load generator for `bench/run.sh`: a fixed number of concurrent
//! callers send one prepared request over and over until `--requests` calls are done or
//! `--max-seconds` have passed (whichever comes first), then it prints one JSON object with
//! latency percentiles and throughput on stdout.
//!
//! Two targets:
//! - `cerbos`: `cerbos.svc.v1.CerbosService/CheckResources`, built from a spec
//!   `{"principal": {"id", "roles", "attr"}, "resources": [{"kind", "id", "action", "attr"}],
//!     "policy_version": "default", "scope": ""}`
//!   (the bench derives it from agent-authz's decision log, so it is the same question
//!   agent-authz asked), with `includeMeta: true` and a fresh `requestId` per call.
//! - `ext-authz`: `envoy.service.auth.v3.Authorization/Check`, built from
//!   `{"method", "path", "host", "headers": {..}, "body_file": "...", "tokens_file": "..."}`;
//!   the body goes into `raw_body` (Envoy's `pack_as_bytes`), a fresh `x-request-id` per call,
//!   and `Authorization: Bearer <token>` rotates through `tokens_file` (one token a line).
//!
//! `--interval-us` paces each caller (a call starts at most once per interval) instead of
//! a hot loop.
//!
//! ```text
//! grpc_load --target cerbos --addr http://127.0.0.1:3593 --spec q.json \
//!           --concurrency 16 --requests 20000 --max-seconds 10 --warmup 500
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cerbos::genpb::cerbos::effect::v1::Effect;
use cerbos::genpb::cerbos::engine::v1 as engine;
use cerbos::genpb::cerbos::request::v1::CheckResourcesRequest;
use cerbos::genpb::cerbos::request::v1::check_resources_request::ResourceEntry;
use cerbos::genpb::cerbos::svc::v1::cerbos_service_client::CerbosServiceClient;
use cerbos::genpb::google::protobuf as cpb;
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Target {
    Cerbos,
    ExtAuthz,
}

#[derive(Parser, Debug)]
#[command(about = "Closed-loop gRPC load for Cerbos CheckResources or Envoy ext_authz Check")]
struct Args {
    #[arg(long, value_enum)]
    target: Target,
    /// e.g. http://127.0.0.1:3593
    #[arg(long)]
    addr: String,
    /// JSON file describing the request (see the module docs).
    #[arg(long)]
    spec: PathBuf,
    /// Concurrent callers (each waits for its answer before sending again).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Measured calls (the run stops here at the latest).
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Unmeasured calls first (connections, caches, JIT-free warm-up of the target).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Hard bound on each phase's wall time, in seconds.
    #[arg(long, default_value_t = 30.0)]
    max_seconds: f64,
    /// HTTP/2 connections, shared round-robin by the callers.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Tokio worker threads of this load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Paced callers: each caller starts a call at most once per this many microseconds
    /// (sooner calls wait; a slower answer starts the next call at once). 0: a hot loop.
    /// The bench uses it to ask Cerbos at the rate agent-authz asked it, so Cerbos idles
    /// between calls as long as it did behind agent-authz.
    #[arg(long, default_value_t = 0)]
    interval_us: u64,
}

enum Workload {
    Cerbos {
        clients: Vec<CerbosServiceClient<Channel>>,
        template: Box<CheckResourcesRequest>,
    },
    ExtAuthz {
        clients: Vec<AuthorizationClient<Channel>>,
        template: Box<CheckRequest>,
        tokens: Vec<String>,
    },
}

impl Workload {
    /// One call; `Ok` carries the outcome label (allow/deny, or the ext_authz status code).
    async fn call(&self, n: u64, caller: usize) -> Result<String, String> {
        let request_id = uuid::Uuid::new_v4().to_string();
        match self {
            Workload::Cerbos { clients, template } => {
                let mut client = clients[caller % clients.len()].clone();
                let mut body = template.as_ref().clone();
                body.request_id = request_id.clone();
                let mut request = tonic::Request::new(body);
                if let Ok(value) = request_id.parse() {
                    request.metadata_mut().insert("x-request-id", value);
                }
                let answer = client
                    .check_resources(request)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                let all_allowed = !answer.results.is_empty()
                    && answer.results.iter().all(|r| {
                        r.actions
                            .values()
                            .all(|e| Effect::try_from(*e) == Ok(Effect::Allow))
                    });
                Ok(if all_allowed { "allow" } else { "deny" }.to_owned())
            }
            Workload::ExtAuthz {
                clients,
                template,
                tokens,
            } => {
                let mut client = clients[caller % clients.len()].clone();
                let mut check = template.as_ref().clone();
                if let Some(http) = check
                    .attributes
                    .as_mut()
                    .and_then(|a| a.request.as_mut())
                    .and_then(|r| r.http.as_mut())
                {
                    http.id = request_id.clone();
                    http.headers.insert("x-request-id".into(), request_id);
                    if !tokens.is_empty() {
                        let token = &tokens[(n % tokens.len() as u64) as usize];
                        http.headers
                            .insert("authorization".into(), format!("Bearer {token}"));
                    }
                }
                let answer = client
                    .check(check)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                let code = answer.status.map_or(-1, |s| s.code);
                Ok(format!("grpc_{code}"))
            }
        }
    }
}

struct Phase {
    latencies_ns: Vec<u64>,
    outcomes: BTreeMap<String, u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

async fn run_phase(
    workload: Arc<Workload>,
    concurrency: usize,
    total: u64,
    max: Duration,
    interval: Duration,
) -> Phase {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + max;
    let mut tasks = Vec::with_capacity(concurrency);
    for caller in 0..concurrency {
        let workload = Arc::clone(&workload);
        let issued = Arc::clone(&issued);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity((total as usize / concurrency.max(1)) + 1);
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            let mut errors = 0u64;
            let mut first_error = None;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                let result = workload.call(n, caller).await;
                let took = sent.elapsed();
                latencies.push(took.as_nanos() as u64);
                if let Some(rest) = interval.checked_sub(took).filter(|r| !r.is_zero()) {
                    // tokio's timer has 1 ms granularity; a thread's sleep is ~50 µs exact.
                    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
                }
                match result {
                    Ok(label) => *outcomes.entry(label).or_default() += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (latencies, outcomes, errors, first_error)
        }));
    }
    let mut phase = Phase {
        latencies_ns: Vec::new(),
        outcomes: BTreeMap::new(),
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, outcomes, errors, first_error) = task.await.expect("caller panicked");
        phase.latencies_ns.extend(latencies);
        for (k, v) in outcomes {
            *phase.outcomes.entry(k).or_default() += v;
        }
        phase.errors += errors;
        if phase.first_error.is_none() {
            phase.first_error = first_error;
        }
    }
    phase.elapsed = started.elapsed();
    phase
}

/// Nearest-rank percentile of sorted nanoseconds, in milliseconds.
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
}

fn to_cerbos_value(value: &Value) -> cpb::Value {
    use cpb::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(cpb::ListValue {
            values: items.iter().map(to_cerbos_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(cpb::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), to_cerbos_value(v)))
                .collect(),
        }),
    };
    cpb::Value { kind: Some(kind) }
}

fn to_cerbos_map(value: Option<&Value>) -> Option<HashMap<String, cpb::Value>> {
    Some(
        value?
            .as_object()?
            .iter()
            .map(|(k, v)| (k.clone(), to_cerbos_value(v)))
            .collect(),
    )
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

fn cerbos_request(spec: &Value) -> anyhow::Result<CheckResourcesRequest> {
    let version = spec
        .get("policy_version")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let scope = str_field(spec, "scope");
    let p = spec.get("principal").context("spec.principal")?;
    let principal = engine::Principal {
        id: str_field(p, "id").to_owned(),
        policy_version: version.to_owned(),
        roles: p
            .get("roles")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        attr: to_cerbos_map(p.get("attr")).unwrap_or_default(),
        scope: scope.to_owned(),
    };
    let resources = spec
        .get("resources")
        .and_then(Value::as_array)
        .context("spec.resources")?
        .iter()
        .map(|r| ResourceEntry {
            actions: vec![str_field(r, "action").to_owned()],
            resource: Some(engine::Resource {
                kind: str_field(r, "kind").to_owned(),
                policy_version: version.to_owned(),
                id: str_field(r, "id").to_owned(),
                attr: to_cerbos_map(r.get("attr")).unwrap_or_default(),
                scope: scope.to_owned(),
            }),
        })
        .collect();
    Ok(CheckResourcesRequest {
        request_id: String::new(),
        include_meta: true,
        principal: Some(principal),
        resources,
        aux_data: None,
    })
}

fn ext_authz_request(spec: &Value) -> anyhow::Result<(CheckRequest, Vec<String>)> {
    let body = match spec.get("body_file").and_then(Value::as_str) {
        Some(path) => std::fs::read(path).with_context(|| format!("body_file {path}"))?,
        None => Vec::new(),
    };
    let tokens = match spec.get("tokens_file").and_then(Value::as_str) {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("tokens_file {path}"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let method = spec.get("method").and_then(Value::as_str).unwrap_or("POST");
    let path = str_field(spec, "path");
    let host = spec
        .get("host")
        .and_then(Value::as_str)
        .unwrap_or("127.0.0.1");
    // What Envoy puts in the header map: pseudo-headers included.
    let mut headers: HashMap<String, String> = HashMap::from([
        (":authority".into(), host.to_owned()),
        (":method".into(), method.to_owned()),
        (":path".into(), path.to_owned()),
        (":scheme".into(), "http".into()),
        ("x-forwarded-proto".into(), "http".into()),
        ("user-agent".into(), "grpc_load".into()),
        ("content-length".into(), body.len().to_string()),
    ]);
    if let Some(extra) = spec.get("headers").and_then(Value::as_object) {
        for (k, v) in extra {
            headers.insert(k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_owned());
        }
    }
    let http = HttpRequest {
        method: method.to_owned(),
        headers,
        path: path.to_owned(),
        host: host.to_owned(),
        scheme: "http".into(),
        size: body.len() as i64,
        protocol: "HTTP/1.1".into(),
        raw_body: body,
        ..HttpRequest::default()
    };
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(http),
            }),
            ..AttributeContext::default()
        }),
    };
    Ok((check, tokens))
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(addr.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

async fn run(args: Args) -> anyhow::Result<Value> {
    let spec: Value = serde_json::from_slice(
        &std::fs::read(&args.spec).with_context(|| format!("spec {}", args.spec.display()))?,
    )
    .context("spec is not JSON")?;
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(connect(&args.addr).await?);
    }
    let limit = 64 * 1024 * 1024;
    let workload = match args.target {
        Target::Cerbos => Workload::Cerbos {
            clients: channels
                .into_iter()
                .map(|c| CerbosServiceClient::new(c).max_decoding_message_size(limit))
                .collect(),
            template: Box::new(cerbos_request(&spec)?),
        },
        Target::ExtAuthz => {
            let (template, tokens) = ext_authz_request(&spec)?;
            Workload::ExtAuthz {
                clients: channels
                    .into_iter()
                    .map(|c| {
                        AuthorizationClient::new(c)
                            .max_decoding_message_size(limit)
                            .max_encoding_message_size(limit)
                    })
                    .collect(),
                template: Box::new(template),
                tokens,
            }
        }
    };
    let workload = Arc::new(workload);
    let max = Duration::from_secs_f64(args.max_seconds);
    let interval = Duration::from_micros(args.interval_us);
    let concurrency = args.concurrency.max(1);
    if args.warmup > 0 {
        let warm = run_phase(
            Arc::clone(&workload),
            concurrency,
            args.warmup,
            max,
            interval,
        )
        .await;
        if warm.errors > 0 {
            eprintln!(
                "grpc_load: {} warm-up errors, first: {}",
                warm.errors,
                warm.first_error.unwrap_or_default()
            );
        }
    }
    let mut phase = run_phase(workload, concurrency, args.requests, max, interval).await;
    phase.latencies_ns.sort_unstable();
    let n = phase.latencies_ns.len();
    let seconds = phase.elapsed.as_secs_f64();
    let mean_ms = if n == 0 {
        f64::NAN
    } else {
        phase.latencies_ns.iter().map(|&x| x as f64).sum::<f64>() / n as f64 / 1e6
    };
    Ok(json!({
        "target": format!("{:?}", args.target),
        "concurrency": concurrency,
        "interval_us": args.interval_us,
        "connections": args.connections.max(1),
        "requests": n,
        "errors": phase.errors,
        "first_error": phase.first_error,
        "outcomes": phase.outcomes,
        "duration_s": seconds,
        "throughput_rps": n as f64 / seconds,
        "p50_ms": percentile_ms(&phase.latencies_ns, 50.0),
        "p90_ms": percentile_ms(&phase.latencies_ns, 90.0),
        "p99_ms": percentile_ms(&phase.latencies_ns, 99.0),
        "max_ms": phase.latencies_ns.last().map_or(f64::NAN, |&x| x as f64 / 1e6),
        "mean_ms": mean_ms,
    }))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(args))?;
    println!("{report}");
    Ok(())
}
