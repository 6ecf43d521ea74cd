//! The `agent-authz` binary: parses the command line, sets up diagnostics, loads the
//! configuration and hands over to the library. Exit codes: 0 ok, 64 bad configuration or
//! usage, 1 runtime failure (for `classify`: a path that matches no route).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use agent_authz::config::{Config, UnclassifiedRoutes};
use agent_authz::extract::{Router, path_without_query};
use agent_authz::telemetry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser)]
#[command(
    version,
    about = "Cerbos policy decisions for AI agent traffic behind Envoy ext_authz"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Envoy's ext_authz gRPC API.
    Serve {
        /// Path to the YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit (0 valid, 64 invalid).
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the route (format, MCP server) each request path is judged as, by the same
    /// matcher `serve` uses; exit 1 if a path matches no route. For checking that every path
    /// Envoy sends to agent-authz is classified.
    Classify {
        #[arg(long, short)]
        config: PathBuf,
        /// Request paths, e.g. /v1/models (a query string is ignored, as when serving).
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

const EX_USAGE: u8 = 64;

/// mimalloc instead of the system allocator: a check builds and drops many small JSON values,
/// and allocation was a third of the instructions per check in a callgrind profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option index of `purge_delay` (mimalloc v3's `mi_option_e`); the Rust binding
/// names no constant for it, so its documented default is checked before it is changed.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MIMALLOC_DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// How long freed memory stays mapped before mimalloc returns it to the system. mimalloc v3
/// keeps it a full second by default; under 64 concurrent 1 MiB bodies the freed bodies of the
/// last second piled up to a peak resident set of ~100-125 MiB. 50 ms keeps the peak near the
/// bodies actually in flight (~80 MiB) at no measurable CPU cost (immediate purging cost
/// +60 % CPU on 1 MiB bodies). `MIMALLOC_PURGE_DELAY` in the environment still wins.
const PURGE_DELAY_MS: std::ffi::c_long = 50;

fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_get and mi_option_set read and write one integer in mimalloc's option
    // table; the index is checked to hold purge_delay's default before it is written.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MIMALLOC_DEFAULT_PURGE_DELAY_MS
        {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

/// One line per path: the path, then the matching route's prefix, format and MCP server, or
/// `unclassified` and what `unclassified_routes` does with it.
fn classify(config: &Config, paths: &[String]) -> ExitCode {
    let router = Router::new(&config.routes);
    let mut all_classified = true;
    for path in paths {
        match router.classify(None, path_without_query(path)) {
            Some(route) => {
                let server = route
                    .mcp_server
                    .as_deref()
                    .map(|s| format!(" mcp_server={s}"))
                    .unwrap_or_default();
                println!(
                    "{path} route={} format={}{server}",
                    route.label(),
                    route.format.as_str()
                );
            }
            None => {
                all_classified = false;
                let what = match config.unclassified_routes {
                    UnclassifiedRoutes::Deny => "denied",
                    UnclassifiedRoutes::Allow => "allowed without a policy check",
                };
                println!("{path} unclassified ({what}: unclassified_routes)");
            }
        }
    }
    if all_classified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let path = match &cli.command {
        Command::Serve { config }
        | Command::Validate { config }
        | Command::Classify { config, .. } => config,
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("agent-authz: invalid configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    match &cli.command {
        Command::Validate { .. } => {
            println!("{}: ok", path.display());
            return ExitCode::SUCCESS;
        }
        Command::Classify { paths, .. } => return classify(&config, paths),
        Command::Serve { .. } => {}
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = config.server.worker_threads {
        builder.worker_threads(workers.get());
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent-authz: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _guard = runtime.enter();
    let traces = match telemetry::otlp_provider(&config.tracing) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("agent-authz: tracing.otlp_endpoint: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(traces.as_ref().map(telemetry::layer))
        .init();
    let result = runtime.block_on(agent_authz::server::serve(config, path.clone()));
    if let Some(traces) = traces {
        let _ = traces.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-authz: {e:#}");
            ExitCode::FAILURE
        }
    }
}
