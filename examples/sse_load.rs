//! A small closed-loop load generator for streamed (SSE) answers, for `bench/run.sh`: a fixed
//! number of concurrent callers POST one prepared request over HTTP/1.1 keep-alive until
//! `--requests` answers are read or `--max-seconds` have passed, and for every answer record
//! the time to its response headers, to its first body byte (the first event: what wrk cannot
//! report) and to its last byte. Prints one JSON object with percentiles of each on stdout.
//!
//! An answer counts only when its status is 200, it ends with `data: [DONE]` and it contains
//! every `--expect` string (e.g. the tool call that must arrive); otherwise it is an error.
//!
//! ```text
//! sse_load --url http://127.0.0.1:10005/v1/chat/completions --body-file chat.json \
//!          --header 'authorization: Bearer ...' --header 'x-bench-sse: text:200' \
//!          --concurrency 1 --requests 1000 --max-seconds 5 --expect '"word199 "'
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Closed-loop load for streamed answers: time to first byte and total time")]
struct Args {
    /// e.g. http://127.0.0.1:10005/v1/chat/completions
    #[arg(long)]
    url: String,
    /// The request body.
    #[arg(long)]
    body_file: PathBuf,
    /// `name: value`, repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Stop after this many answers...
    #[arg(long)]
    requests: u64,
    /// ...or after this many seconds, whichever comes first.
    #[arg(long)]
    max_seconds: f64,
    /// A string every answer must contain; repeatable.
    #[arg(long)]
    expect: Vec<String>,
}

/// Nanoseconds from sending the request to: the response headers, the first body byte, the
/// last body byte.
#[derive(Default)]
struct Sample {
    headers: u64,
    first_byte: u64,
    total: u64,
}

struct Outcome {
    samples: Vec<Sample>,
    errors: u64,
    first_error: Option<String>,
    events: usize,
    bytes: usize,
}

async fn one(
    client: &reqwest::Client,
    args: &Args,
    headers: &reqwest::header::HeaderMap,
    body: &bytes::Bytes,
) -> anyhow::Result<(Sample, usize, usize)> {
    let started = Instant::now();
    let mut answer = client
        .post(&args.url)
        .headers(headers.clone())
        .body(body.clone())
        .send()
        .await?;
    let mut sample = Sample {
        headers: started.elapsed().as_nanos() as u64,
        ..Sample::default()
    };
    let status = answer.status();
    let mut read = Vec::new();
    while let Some(chunk) = answer.chunk().await? {
        if read.is_empty() && !chunk.is_empty() {
            sample.first_byte = started.elapsed().as_nanos() as u64;
        }
        read.extend_from_slice(&chunk);
    }
    sample.total = started.elapsed().as_nanos() as u64;
    let text = String::from_utf8_lossy(&read);
    if status != 200 {
        anyhow::bail!(
            "status {status}: {}",
            text.chars().take(300).collect::<String>()
        );
    }
    if !text.trim_end().ends_with("data: [DONE]") {
        anyhow::bail!("the answer does not end with data: [DONE]: {}", tail(&text));
    }
    if let Some(missing) = args.expect.iter().find(|e| !text.contains(e.as_str())) {
        anyhow::bail!("the answer lacks {missing:?}: {}", tail(&text));
    }
    Ok((sample, text.matches("data: ").count(), read.len()))
}

fn tail(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(400)..].iter().collect()
}

async fn caller(
    client: reqwest::Client,
    args: Arc<Args>,
    headers: Arc<reqwest::header::HeaderMap>,
    body: bytes::Bytes,
    issued: Arc<AtomicU64>,
    deadline: Instant,
) -> Outcome {
    let mut out = Outcome {
        samples: Vec::new(),
        errors: 0,
        first_error: None,
        events: 0,
        bytes: 0,
    };
    while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < args.requests {
        match one(&client, &args, &headers, &body).await {
            Ok((sample, events, bytes)) => {
                out.samples.push(sample);
                out.events = events;
                out.bytes = bytes;
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    out
}

/// Nearest-rank percentile of sorted nanoseconds, in milliseconds.
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
}

fn summary(prefix: &str, mut ns: Vec<u64>, out: &mut serde_json::Map<String, Value>) {
    ns.sort_unstable();
    let mean = if ns.is_empty() {
        f64::NAN
    } else {
        ns.iter().map(|&x| x as f64).sum::<f64>() / ns.len() as f64 / 1e6
    };
    for (name, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0)] {
        out.insert(format!("{prefix}{name}_ms"), json!(percentile_ms(&ns, p)));
    }
    out.insert(
        format!("{prefix}max_ms"),
        json!(ns.last().map_or(f64::NAN, |&x| x as f64 / 1e6)),
    );
    out.insert(format!("{prefix}mean_ms"), json!(mean));
}

async fn run(args: Args) -> anyhow::Result<Value> {
    let body = bytes::Bytes::from(
        std::fs::read(&args.body_file)
            .with_context(|| format!("body {}", args.body_file.display()))?,
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("content-type", "application/json".parse()?);
    for line in &args.headers {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("--header {line:?} is not `name: value`"))?;
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())?,
            value.trim().parse()?,
        );
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency.max(1))
        .timeout(Duration::from_secs(30))
        .build()?;
    let concurrency = args.concurrency.max(1);
    let args = Arc::new(args);
    let headers = Arc::new(headers);
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.max_seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(caller(
                client.clone(),
                Arc::clone(&args),
                Arc::clone(&headers),
                body.clone(),
                Arc::clone(&issued),
                deadline,
            ))
        })
        .collect();
    let (mut headers_ns, mut first_ns, mut total_ns) = (Vec::new(), Vec::new(), Vec::new());
    let (mut errors, mut first_error, mut events, mut bytes) = (0, None, 0, 0);
    for task in tasks {
        let out = task.await?;
        errors += out.errors;
        first_error = first_error.or(out.first_error);
        events = events.max(out.events);
        bytes = bytes.max(out.bytes);
        for s in out.samples {
            headers_ns.push(s.headers);
            first_ns.push(s.first_byte);
            total_ns.push(s.total);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let n = total_ns.len();
    let mut report = serde_json::Map::new();
    report.insert("concurrency".into(), json!(concurrency));
    report.insert("requests".into(), json!(n));
    report.insert("errors".into(), json!(errors));
    report.insert("first_error".into(), json!(first_error));
    report.insert("events_per_answer".into(), json!(events));
    report.insert("bytes_per_answer".into(), json!(bytes));
    report.insert("duration_s".into(), json!(seconds));
    report.insert("throughput_rps".into(), json!(n as f64 / seconds));
    summary("", total_ns, &mut report);
    summary("ttfb_", first_ns, &mut report);
    summary("headers_", headers_ns, &mut report);
    Ok(Value::Object(report))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(args))?;
    println!("{report}");
    Ok(())
}
