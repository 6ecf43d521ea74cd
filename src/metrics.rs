//! Prometheus metrics, served as text on the admin port (`/metrics`). Names spell out subject
//! and verb (`agent_authz_checks_total`, `agent_authz_cerbos_errors_total`); label values are
//! bounded by configuration (routes, resource kinds, actions), never by request content other
//! than the tool and model names a policy already knows.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
/// Every label but the route is one of a fixed set of names: borrowed, not built per check.
pub struct CheckLabels {
    pub route: String,
    pub format: &'static str,
    /// `allow` or `deny`.
    pub effect: &'static str,
    /// Why a denial happened (`policy_denied`, `unauthenticated`, ...); empty on allow.
    pub refusal: &'static str,
    /// `true` when dry-run turned a denial into an allow.
    pub dry_run: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub kind: String,
    pub action: String,
    pub effect: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemovedLabels {
    /// `strip` (request body) or `hide` (tools/list answer).
    pub how: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

pub struct Metrics {
    registry: Registry,
    pub checks: Family<CheckLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub check_duration: Histogram,
    pub cerbos_duration: Histogram,
    pub cerbos_errors: Family<ErrorLabels, Counter>,
    pub jwks_refresh_failures: Counter,
    pub tools_removed: Family<RemovedLabels, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub console_dropped: Counter,
    pub console_stream_skipped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agent_authz");
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "checks",
            "Requests judged, by route, format and outcome",
            checks.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Cerbos verdicts, by resource kind, action and effect",
            decisions.clone(),
        );
        let check_duration = Histogram::new(exponential_buckets(0.0002, 2.0, 16));
        registry.register(
            "check_duration_seconds",
            "Time to judge one request, Cerbos included",
            check_duration.clone(),
        );
        let cerbos_duration = Histogram::new(exponential_buckets(0.0002, 2.0, 16));
        registry.register(
            "cerbos_request_duration_seconds",
            "Time of one CheckResources round trip",
            cerbos_duration.clone(),
        );
        let cerbos_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "cerbos_errors",
            "Cerbos calls that failed (the request failed closed)",
            cerbos_errors.clone(),
        );
        let jwks_refresh_failures = Counter::default();
        registry.register(
            "jwks_refresh_failures",
            "JWKS fetches that failed (the last good keys were kept)",
            jwks_refresh_failures.clone(),
        );
        let tools_removed = Family::<RemovedLabels, Counter>::default();
        registry.register(
            "tools_removed",
            "Tools removed from request bodies or tools/list answers, and tool calls withheld from model answers",
            tools_removed.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Verdicts answered from the decision cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Verdicts the decision cache had to ask Cerbos for",
            cache_misses.clone(),
        );
        let console_dropped = Counter::default();
        registry.register(
            "console_records_dropped",
            "Decision records the console's ring dropped, oldest first, past console.retain",
            console_dropped.clone(),
        );
        let console_stream_skipped = Counter::default();
        registry.register(
            "console_stream_skipped",
            "Live console events a slow viewer fell too far behind to receive",
            console_stream_skipped.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        registry.register_collector(Box::new(KnownToolArrays));
        Self {
            registry,
            checks,
            decisions,
            check_duration,
            cerbos_duration,
            cerbos_errors,
            jwks_refresh_failures,
            tools_removed,
            cache_hits,
            cache_misses,
            console_dropped,
            console_stream_skipped,
        }
    }

    pub fn observe_cerbos(&self, elapsed: Duration, error: Option<&str>) {
        self.cerbos_duration.observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.cerbos_errors
                .get_or_create(&ErrorLabels {
                    error: error.to_owned(),
                })
                .inc();
        }
    }

    pub fn count_removed(&self, how: &str, n: usize) {
        if n > 0 {
            self.tools_removed
                .get_or_create(&RemovedLabels {
                    how: how.to_owned(),
                })
                .inc_by(n as u64);
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The known tool arrays' counts (`extract/known_tools.rs`), read at each scrape: a body is read
/// without the registry at hand, so the readers count in process-wide atomics.
#[derive(Debug)]
struct KnownToolArrays;

impl Collector for KnownToolArrays {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = crate::extract::tool_array_counts();
        for (name, help, value) in [
            (
                "tool_arrays_known",
                "Declared tool arrays taken as read: the same bytes as an array read before (an agent resending its tools)",
                counts.known,
            ),
            (
                "tool_arrays_remembered",
                "Declared tool arrays read and remembered for the next turn",
                counts.remembered,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_exposition_names_what_happened() {
        let m = Metrics::new();
        m.checks
            .get_or_create(&CheckLabels {
                route: "/mcp".into(),
                format: "mcp",
                effect: "deny",
                refusal: "policy_denied",
                dry_run: false,
            })
            .inc();
        m.observe_cerbos(Duration::from_millis(3), Some("timeout"));
        m.count_removed("strip", 2);
        let text = m.encode();
        assert!(text.contains(
            r#"agent_authz_checks_total{route="/mcp",format="mcp",effect="deny",refusal="policy_denied",dry_run="false"} 1"#
        ));
        assert!(text.contains(r#"agent_authz_cerbos_errors_total{error="timeout"} 1"#));
        assert!(text.contains(r#"agent_authz_tools_removed_total{how="strip"} 2"#));
        assert!(text.contains("agent_authz_cerbos_request_duration_seconds_count 1"));
        assert!(text.contains("agent_authz_build_info{version="));
        assert!(text.contains("# TYPE agent_authz_tool_arrays_known counter"));
        assert!(text.contains("agent_authz_tool_arrays_remembered_total "));
    }
}
