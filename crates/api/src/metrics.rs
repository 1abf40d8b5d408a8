//! Prometheus metrics for the API, served at `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
    outcome: String,
}

/// The requests the apps ingress proxied to services, read from the apps
/// subsystem's counters at each scrape.
#[derive(Debug)]
struct ServiceRequests(hearth_apps::Apps);

impl Collector for ServiceRequests {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.0.service_requests();
        if counts.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "ingress_service_requests",
            "Requests the apps ingress proxied to services, by service and outcome",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (service, outcome, n) in counts {
            let labels = ServiceLabels { service, outcome: outcome.to_owned() };
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The daemon's metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
    revision: Gauge,
    uptime: Gauge,
}

impl Metrics {
    pub(crate) fn new(apps: hearth_apps::Apps) -> Self {
        let mut registry = Registry::with_prefix("hearth");
        registry.register_collector(Box::new(ServiceRequests(apps)));
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "API requests served, by route and status", requests.clone());
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to ~6.5 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17))
        });
        registry.register("http_request_duration_seconds", "API request latency", durations.clone());
        let revision = Gauge::default();
        registry.register("store_revision", "The state store's current revision", revision.clone());
        let uptime = Gauge::default();
        registry.register("uptime_seconds", "Seconds since the daemon started", uptime.clone());
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: crate::VERSION.to_owned() }).set(1);
        registry.register("build_info", "The daemon's version, as a label", build);
        Self { registry: Arc::new(registry), requests, durations, revision, uptime }
    }

    pub(crate) fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { method: method.to_owned(), route: route.to_owned(), status })
            .inc();
        self.durations.get_or_create(&RouteLabels { route: route.to_owned() }).observe(elapsed.as_secs_f64());
    }

    /// Renders the text exposition format, with gauges refreshed.
    pub(crate) fn render(&self, revision: u64, uptime: Duration) -> Result<String, std::fmt::Error> {
        self.revision.set(i64::try_from(revision).unwrap_or(i64::MAX));
        self.uptime.set(i64::try_from(uptime.as_secs()).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
