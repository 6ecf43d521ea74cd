//! Benchmark upstream: a tiny HTTP/1.1 server that reads the whole request body and answers
//! every request with the same small chat-completion JSON. It stands in for the LLM / MCP
//! server in `bench/run.sh`, so that what is measured is the gateway, not the upstream.
//!
//!   cargo run --release --example bench_upstream -- 127.0.0.1:8081 [worker_threads]

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::IntoResponse;
use axum::serve::ListenerExt;

const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

async fn answer(body: Bytes) -> impl IntoResponse {
    // Reading the body is the point: Envoy streams it, and the upstream must drain it.
    std::hint::black_box(body.len());
    ([(header::CONTENT_TYPE, "application/json")], ANSWER)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = Router::new()
            .fallback(answer)
            .layer(DefaultBodyLimit::max(16 * 1024 * 1024));
        let listener = tokio::net::TcpListener::bind(&address)
            .await?
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        eprintln!("bench_upstream listening on {address}");
        axum::serve(listener, app).await
    })
}
