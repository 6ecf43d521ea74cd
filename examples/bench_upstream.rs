//! Benchmark upstream: a tiny HTTP/1.1 server that reads the whole request body and answers
//! every request with the same small chat-completion JSON. It stands in for the LLM / MCP
//! server in `bench/run.sh`, so that what is measured is the gateway, not the upstream.
//!
//! With `x-bench-sse: text:<n>` it answers instead with a streamed Chat Completions answer
//! (`text/event-stream`) of `n` text deltas, and with `x-bench-sse: tool` with one streamed
//! tool call (`lookup_ticket` on T-100, its arguments in fragments of 7 bytes, after one text
//! delta), each ending with `data: [DONE]`: the answers the response leg
//! (`model_tool_calls: judge`) reads. Every event is its own chunk on the wire;
//! `x-bench-sse-interval-us: <us>` paces them on a fixed schedule, the n-th event n intervals
//! after the first (0, the default: back to back, yielding between events so each is written on
//! its own).
//!
//!   cargo run --release --example bench_upstream -- 127.0.0.1:8081 [worker_threads]

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;

const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

/// The tool call of `x-bench-sse: tool`: allowed by bench/policies/llm_tool.yaml for alice.
const TOOL: &str = "lookup_ticket";
const TOOL_ARGUMENTS: &str =
    r#"{"ticket_id":"T-100","query":"status of the duplicate charge refund"}"#;

async fn answer(headers: HeaderMap, body: Bytes) -> Response {
    // Reading the body is the point: Envoy streams it, and the upstream must drain it.
    std::hint::black_box(body.len());
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(spec) = header("x-bench-sse") {
        let Some(events) = sse_events(spec) else {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                "x-bench-sse: text:<n> | tool",
            )
                .into_response();
        };
        let interval = header("x-bench-sse-interval-us")
            .and_then(|v| v.parse().ok())
            .map_or(Duration::ZERO, Duration::from_micros);
        return sse(events, interval);
    }
    ([(header::CONTENT_TYPE, "application/json")], ANSWER).into_response()
}

/// One Chat Completions stream chunk, framed as an SSE event.
fn chunk(delta: &str, finish_reason: Option<&str>) -> Bytes {
    let finish = finish_reason.map_or("null".to_owned(), |r| format!("\"{r}\""));
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\
         \"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\
         \"finish_reason\":{finish}}}]}}\n\n"
    ))
}

/// The events of `x-bench-sse`, or None when it names no answer.
fn sse_events(spec: &str) -> Option<Vec<Bytes>> {
    let mut events = vec![chunk(r#"{"role":"assistant","content":""}"#, None)];
    if let Some(n) = spec.strip_prefix("text:") {
        let n: usize = n.parse().ok()?;
        events.extend((0..n).map(|i| chunk(&format!(r#"{{"content":"word{i} "}}"#), None)));
        events.push(chunk("{}", Some("stop")));
    } else if spec == "tool" {
        events.push(chunk(r#"{"content":"Let me look that up."}"#, None));
        events.push(chunk(
            &format!(
                r#"{{"tool_calls":[{{"index":0,"id":"call_0_{TOOL}","type":"function","function":{{"name":"{TOOL}","arguments":""}}}}]}}"#
            ),
            None,
        ));
        for piece in TOOL_ARGUMENTS.as_bytes().chunks(7) {
            let piece = std::str::from_utf8(piece).ok()?.replace('"', "\\\"");
            events.push(chunk(
                &format!(
                    r#"{{"tool_calls":[{{"index":0,"function":{{"arguments":"{piece}"}}}}]}}"#
                ),
                None,
            ));
        }
        events.push(chunk("{}", Some("tool_calls")));
    } else {
        return None;
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Some(events)
}

fn sse(events: Vec<Bytes>, interval: Duration) -> Response {
    // A fixed schedule (the n-th event at n × interval), not a sleep per event: timer
    // granularity then delays single events, not the whole answer.
    let ticks = (!interval.is_zero()).then(|| {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticks
    });
    let stream = futures_util::stream::unfold(
        (events.into_iter(), ticks, true),
        |(mut it, mut ticks, first)| async move {
            let event = it.next()?;
            if !first {
                match ticks.as_mut() {
                    Some(ticks) => {
                        ticks.tick().await;
                    }
                    None => tokio::task::yield_now().await,
                }
            }
            Some((Ok::<_, Infallible>(event), (it, ticks, false)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
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
