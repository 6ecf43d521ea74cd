//! Traces: one span per check, parented to the W3C trace context Envoy forwards
//! (`traceparent`), exported over OTLP/HTTP when `tracing.otlp_endpoint` is set. Without an
//! endpoint the spans only feed the stderr diagnostics.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TracingConfig;
use crate::headers::Headers;

/// Builds the OTLP tracer provider, if configured. Keep it alive (and shut it down at exit, to
/// flush) for as long as spans should be exported.
pub fn otlp_provider(config: &TracingConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .with_timeout(config.export_timeout)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    Ok(Some(provider))
}

/// The `tracing` layer that turns spans into OpenTelemetry spans for `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("agent-authz"))
}

/// The span of one check, child of the caller's trace when `traceparent` names one.
pub fn check_span(headers: &Headers) -> tracing::Span {
    let span = tracing::info_span!(
        "agent_authz.check",
        decision_id = tracing::field::Empty,
        principal = tracing::field::Empty,
        effect = tracing::field::Empty,
    );
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(headers);
        // Fails only when no OpenTelemetry layer is installed, where a parent means nothing.
        let _ = span.set_parent(parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// An OTLP/HTTP collector on loopback that keeps every request body.
    fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut data = Vec::new();
                let mut buf = [0u8; 65536];
                // Read headers, then content-length bytes of body.
                loop {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if data.len() >= end + 4 + length {
                            kept.lock().unwrap().push(data[end + 4..].to_vec());
                            break;
                        }
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
            }
        });
        (url, bodies)
    }

    #[test]
    fn check_spans_join_the_callers_trace_and_are_exported() {
        let (url, bodies) = collector();
        let config = TracingConfig {
            otlp_endpoint: Some(url),
            service_name: "agent-authz-test".into(),
            export_timeout: Duration::from_secs(5),
        };
        let provider = otlp_provider(&config).unwrap().unwrap();
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        let headers = Headers::from_iter([(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]);
        tracing::subscriber::with_default(subscriber, || {
            let span = check_span(&headers);
            span.record("effect", "deny");
            drop(span.enter());
        });
        provider.force_flush().unwrap();
        let trace_id: Vec<u8> = (0..16)
            .map(|i| {
                u8::from_str_radix(&"4bf92f3577b34da6a3ce929d0e0e4736"[i * 2..i * 2 + 2], 16)
                    .unwrap()
            })
            .collect();
        let parent: Vec<u8> = (0..8)
            .map(|i| u8::from_str_radix(&"00f067aa0ba902b7"[i * 2..i * 2 + 2], 16).unwrap())
            .collect();
        let bodies = bodies.lock().unwrap();
        let all: Vec<u8> = bodies.concat();
        let contains = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
        assert!(
            contains(&trace_id),
            "the span carries the caller's trace id"
        );
        assert!(contains(&parent), "and names the caller's span as parent");
        assert!(contains(b"agent_authz.check") && contains(b"agent-authz-test"));
        let _ = provider.shutdown();
    }
}
