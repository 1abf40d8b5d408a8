//! Requests per app and route, for the daemon's time series: counted on
//! the ingress's path with atomics only. Each route of the routing table
//! carries its counters (an `Arc`), so a request finds them with the route
//! it matched, under no lock; the counters outlive a new table (a deploy,
//! a rollback) and go away with the route.
//!
//! The counts are cumulative from the daemon's start; whoever samples
//! them takes the differences (`hearth_metrics::Deltas`, `Counts::since`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_metrics::{Counts, Histogram};

/// One route's counters.
#[derive(Debug, Default)]
pub(crate) struct RouteCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
}

impl RouteCounters {
    /// Counts one answered request: an error when it is a 5xx (which is
    /// also how every failure in the app is answered), timed to the
    /// response's head.
    pub(crate) fn record(&self, status: http::StatusCode, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(elapsed.as_secs_f64() * 1000.0);
    }
}

/// One route's counts so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTraffic {
    pub app: String,
    /// The path prefix of the route (`/` for a route by host alone).
    pub route: String,
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// Time to the response's head, in ms.
    pub latency: Counts,
}

/// Every loaded route's counters, by app and path prefix.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    routes: Mutex<BTreeMap<(String, String), Arc<RouteCounters>>>,
}

impl Traffic {
    /// The counters of `app`'s routes with these path prefixes (two routes
    /// with one prefix on different hosts share them); the counters of
    /// routes no longer in `all` are dropped.
    pub(crate) fn update(
        &self,
        all: &BTreeSet<(String, String)>,
    ) -> BTreeMap<(String, String), Arc<RouteCounters>> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|key, _| all.contains(key));
        for key in all {
            routes.entry(key.clone()).or_default();
        }
        routes.clone()
    }

    pub(crate) fn snapshot(&self) -> Vec<RouteTraffic> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .iter()
            .map(|((app, route), c)| RouteTraffic {
                app: app.clone(),
                route: route.clone(),
                requests: c.requests.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                latency: c.latency.snapshot(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(app: &str, route: &str) -> (String, String) {
        (app.to_owned(), route.to_owned())
    }

    #[test]
    fn counters_outlive_a_new_table_and_go_with_their_route() {
        let traffic = Traffic::default();
        let first = traffic.update(&[key("shop", "/"), key("shop", "/api")].into());
        first[&key("shop", "/api")].record(http::StatusCode::OK, Duration::from_millis(3));
        first[&key("shop", "/api")].record(http::StatusCode::BAD_GATEWAY, Duration::from_millis(5));
        first[&key("shop", "/")].record(http::StatusCode::NOT_FOUND, Duration::from_millis(1));
        let second = traffic.update(&[key("shop", "/api")].into());
        assert!(Arc::ptr_eq(&first[&key("shop", "/api")], &second[&key("shop", "/api")]));
        let snapshot = traffic.snapshot();
        assert_eq!(snapshot.len(), 1, "the route / is gone");
        assert_eq!((snapshot[0].requests, snapshot[0].errors), (2, 1));
        assert_eq!(snapshot[0].latency.total(), 2);
    }
}
