//! hearth's time series: what the daemon samples every interval, kept in a
//! file of its own (`DATA_DIR/metrics.redb`), apart from the state store,
//! so that a sample never costs a store revision or an event.
//!
//! The policy, each sentence a test in [`series`]:
//!
//! - **Samples are kept for the retention and no longer.** A write prunes
//!   the points older than the retention (at most once a minute, by the
//!   samples' own clock); a query never returns them even before that.
//! - **The number of series is bounded.** A sample of a new series past
//!   `max_series` is dropped, counted, and said in the log once; the file
//!   holds at most `max_series` × retention ÷ interval points, so it never
//!   grows without bound. A series with no point left in the retention is
//!   forgotten, and makes room.
//! - **A query with a step gives one point per step bucket, the mean of the
//!   bucket's points,** at the bucket's start (a multiple of the step).
//!   Without a step it gives the raw points, the newest
//!   [`MAX_POINTS`] of each series at most.
//! - **Matchers are labels a series must have,** with those values; other
//!   labels do not matter. No matcher matches every series of the name.
//! - **Reopening the file keeps its data;** series keep their labels.
//! - **Every batch written is published** to [`TimeSeries::subscribe`]'s
//!   receivers, after it is committed (the alerting service observes them).
//!
//! [`TimeSeries::run`] is the loop: every interval it asks each
//! [`Collector`] for its samples, writes them as one batch and publishes
//! it. Collectors turn counters into values: [`Deltas`] gives the increase
//! of a counter since the last interval (a rate per second once divided by
//! the interval's seconds), [`Histogram`] times requests in fixed buckets,
//! atomically, so the request path stays cheap.
//!
//! # What the daemon samples
//!
//! The daemon's collectors (`crates/hearth/src/metrics.rs`) write these;
//! `docs/alerts.md` has the same table.
//!
//! | name | labels | value |
//! |------|--------|-------|
//! | `app_request_rate` | `app`, `route` | requests per second over the interval |
//! | `app_error_ratio` | `app`, `route` | answers 5xx (failed included) ÷ requests, 0 to 1; no sample without a request |
//! | `app_latency_p50_ms` | `app`, `route` | median time to the response's head, ms; no sample without a request |
//! | `app_latency_p99_ms` | `app`, `route` | 99th percentile of the same, ms |
//! | `service_instance_healthy` | `service`, `instance` | 1 when the instance's health is passing, else 0 |
//! | `service_healthy_instances` | `service` | instances passing |
//! | `machine_cpu_cores` | `machine` | cores the VMM process used over the interval (user + system) |
//! | `machine_memory_bytes` | `machine` | the VMM process's resident memory |
//! | `workflow_runs_failed` | `workflow` | runs that failed over the interval |
//! | `store_size_bytes` | | the state store file's size |
//! | `store_revision` | | the state store's revision |
//!
//! `route` is the path prefix of the app's route that matched (`/` for an
//! app routed by host alone).

mod collect;
mod histogram;
pub mod series;

pub use collect::{Collector, Deltas};
pub use histogram::{BUCKETS, Counts, Histogram};
pub use series::{Batch, Error, MAX_POINTS, NameCount, Options, Query, Sample, Series, TimeSeries, Written};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
