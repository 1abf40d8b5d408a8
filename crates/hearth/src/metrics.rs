//! The daemon's time series: the file (`DATA_DIR/metrics.redb`) and the
//! collectors that read each subsystem every interval. The names and
//! labels are listed in `hearth_metrics`'s crate doc and `docs/alerts.md`.
//!
//! Collectors read what the subsystems already count or record: the apps'
//! per-route counters, the services' health records, the VMM processes in
//! `/proc`, the workflows executor's failures, the state store's file and
//! revision. Rates and ratios are over the interval just ended.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use hearth_metrics::{Collector, Counts, Deltas, Options, Sample, TimeSeries};
use hearth_store::Store;

/// The time series file inside the data dir.
pub(crate) const FILE: &str = "metrics.redb";

/// Test override of the sampling interval, in milliseconds; never set
/// outside tests.
const INTERVAL_ENV: &str = "HEARTH_TEST_METRICS_INTERVAL_MS";

/// Opens the daemon's time series, with the test interval if one is set.
pub(crate) fn open(data_dir: &Path) -> anyhow::Result<TimeSeries> {
    let mut options = Options::default();
    if let Some(ms) =
        std::env::var(INTERVAL_ENV).ok().and_then(|v| v.parse::<u64>().ok()).filter(|ms| *ms > 0)
    {
        options.interval = Duration::from_millis(ms);
        tracing::warn!(interval_ms = ms, "{INTERVAL_ENV} is set: metrics are sampled at a test interval.");
    }
    let path = data_dir.join(FILE);
    TimeSeries::open(&path, options)
        .with_context(|| format!("cannot open the time series in {}", path.display()))
}

/// What the collectors read.
pub(crate) struct Sources {
    pub(crate) store: Arc<dyn Store>,
    /// The embedded store's file; `None` on etcd, whose size is etcd's.
    pub(crate) store_file: Option<PathBuf>,
    pub(crate) apps: hearth_apps::Apps,
    pub(crate) machines: hearth_machines::Machines,
    pub(crate) workflows: hearth_workflows::Workflows,
}

/// Every collector the daemon samples with.
pub(crate) fn collectors(sources: Sources) -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(Apps { apps: sources.apps, last: Mutex::new((Instant::now(), HashMap::new())) }),
        Box::new(Services { store: sources.store.clone() }),
        Box::new(Machines {
            machines: sources.machines,
            last: Mutex::new((Instant::now(), Deltas::default())),
        }),
        Box::new(Workflows { workflows: sources.workflows, last: Mutex::new(Deltas::default()) }),
        Box::new(StoreFile { store: sources.store, file: sources.store_file }),
    ]
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seconds since `then`, which becomes now; never zero.
fn seconds_since(then: &mut Instant) -> f64 {
    let now = Instant::now();
    let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
    *then = now;
    seconds
}

/// Each route's counts at the last interval (requests, errors,
/// latencies), by app and route.
type RouteCounts = HashMap<(String, String), (u64, u64, Counts)>;

/// Request rate, error ratio and latency per app and route.
struct Apps {
    apps: hearth_apps::Apps,
    last: Mutex<(Instant, RouteCounts)>,
}

#[async_trait]
impl Collector for Apps {
    async fn collect(&self) -> Vec<Sample> {
        let traffic = self.apps.traffic();
        let mut last = lock(&self.last);
        let (then, previous) = &mut *last;
        let seconds = seconds_since(then);
        let mut samples = Vec::new();
        let mut now = HashMap::with_capacity(traffic.len());
        for route in traffic {
            let key = (route.app, route.route);
            // A route's counters start at zero when it is loaded, so one
            // not seen before counted from zero.
            let (requests, errors, latency) = previous.get(&key).copied().unwrap_or_default();
            let requests = route.requests.saturating_sub(requests);
            let errors = route.errors.saturating_sub(errors);
            let latency = route.latency.since(&latency);
            let sample = |name: &str, value: f64| {
                Sample::new(name, value).label("app", key.0.as_str()).label("route", key.1.as_str())
            };
            samples.push(sample("app_request_rate", requests as f64 / seconds));
            if requests > 0 {
                samples.push(sample("app_error_ratio", errors as f64 / requests as f64));
                if let Some(p50) = latency.quantile(0.5) {
                    samples.push(sample("app_latency_p50_ms", p50));
                }
                if let Some(p99) = latency.quantile(0.99) {
                    samples.push(sample("app_latency_p99_ms", p99));
                }
            }
            now.insert(key, (route.requests, route.errors, route.latency));
        }
        *previous = now;
        samples
    }
}

/// Each instance's health and each service's passing count, from the
/// services' records.
struct Services {
    store: Arc<dyn Store>,
}

#[async_trait]
impl Collector for Services {
    async fn collect(&self) -> Vec<Sample> {
        use hearth_services::record::{self, HealthRecord, Status};
        let (health, defs) =
            match (self.store.range(record::HEALTH).await, self.store.range(record::DEFS).await) {
                (Ok(health), Ok(defs)) => (health, defs),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(error = %error, "Cannot read the services' health for metrics.");
                    return Vec::new();
                }
            };
        let mut passing: BTreeMap<String, u32> = BTreeMap::new();
        for kv in &defs.kvs {
            if let Some(name) = kv.key.strip_prefix(record::DEFS) {
                passing.entry(name.to_owned()).or_default();
            }
        }
        let mut samples = Vec::new();
        for kv in &health.kvs {
            let Some((service, instance)) = record::split_instance_key(record::HEALTH, &kv.key) else {
                continue;
            };
            let Ok(health) = serde_json::from_slice::<HealthRecord>(&kv.value) else { continue };
            // A sleeping instance passed before it fell asleep and serves
            // the next request: a service that sleeps is not unhealthy.
            let healthy = matches!(health.status, Status::Passing | Status::Sleeping);
            *passing.entry(service.to_owned()).or_default() += u32::from(healthy);
            samples.push(
                Sample::new("service_instance_healthy", if healthy { 1.0 } else { 0.0 })
                    .label("service", service)
                    .label("instance", instance),
            );
        }
        for (service, count) in passing {
            samples
                .push(Sample::new("service_healthy_instances", f64::from(count)).label("service", service));
        }
        samples
    }
}

/// CPU and memory of each machine's VMM process, from `/proc`.
struct Machines {
    machines: hearth_machines::Machines,
    /// CPU ticks by machine and pid: a new VMM process starts its own count.
    last: Mutex<(Instant, Deltas<(String, u32)>)>,
}

#[async_trait]
impl Collector for Machines {
    async fn collect(&self) -> Vec<Sample> {
        let machines = self.machines.clone();
        let read = tokio::task::spawn_blocking(move || {
            machines
                .vmm_pids()
                .into_iter()
                .filter_map(|(name, pid)| Some((name, pid, proc_usage(pid)?)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let tick = clock_ticks_per_second();
        let mut last = lock(&self.last);
        let (then, deltas) = &mut *last;
        let seconds = seconds_since(then);
        let mut samples = Vec::new();
        for (name, pid, usage) in read {
            if let Some(ticks) = deltas.delta((name.clone(), pid), usage.cpu_ticks) {
                samples.push(
                    Sample::new("machine_cpu_cores", ticks as f64 / tick / seconds)
                        .label("machine", name.as_str()),
                );
            }
            samples.push(Sample::new("machine_memory_bytes", usage.rss_bytes as f64).label("machine", name));
        }
        deltas.finish();
        samples
    }
}

/// What `/proc` says a process used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    /// User and system time, in clock ticks.
    cpu_ticks: u64,
    rss_bytes: u64,
}

fn proc_usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Usage { cpu_ticks: cpu_ticks(&stat)?, rss_bytes: rss_bytes(&status)? })
}

/// utime + stime from `/proc/PID/stat` (fields 14 and 15; the command,
/// field 2, is in parentheses and may hold spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// `VmRSS` from `/proc/PID/status`, in bytes.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

/// Runs failed per workflow over the interval.
struct Workflows {
    workflows: hearth_workflows::Workflows,
    last: Mutex<Deltas<String>>,
}

#[async_trait]
impl Collector for Workflows {
    async fn collect(&self) -> Vec<Sample> {
        // Every deployed workflow has a value, zero without failures, so
        // that a rule on it sees it fall back.
        let deployed = match self.workflows.definitions().await {
            Ok(definitions) => definitions.into_iter().map(|d| d.name).collect(),
            Err(error) => {
                tracing::warn!(error = %error, "Cannot list the workflows for metrics.");
                Vec::new()
            }
        };
        let mut failed: BTreeMap<String, u64> = deployed.into_iter().map(|name| (name, 0)).collect();
        let mut deltas = lock(&self.last);
        for (name, total) in self.workflows.failed_runs() {
            // A workflow's count appears with its first failure, after the
            // last interval: all of it is new.
            failed.insert(name.clone(), deltas.delta(name, total).unwrap_or(total));
        }
        deltas.finish();
        failed
            .into_iter()
            .map(|(name, n)| Sample::new("workflow_runs_failed", n as f64).label("workflow", name))
            .collect()
    }
}

/// The state store's file size and revision.
struct StoreFile {
    store: Arc<dyn Store>,
    file: Option<PathBuf>,
}

#[async_trait]
impl Collector for StoreFile {
    async fn collect(&self) -> Vec<Sample> {
        let mut samples = Vec::new();
        if let Some(file) = &self.file {
            match tokio::fs::metadata(file).await {
                Ok(meta) => samples.push(Sample::new("store_size_bytes", meta.len() as f64)),
                Err(error) => {
                    tracing::warn!(error = %error, "Cannot read the store file's size for metrics.")
                }
            }
        }
        match self.store.revision().await {
            Ok(revision) => samples.push(Sample::new("store_revision", revision as f64)),
            Err(error) => tracing::warn!(error = %error, "Cannot read the store's revision for metrics."),
        }
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_with_spaces() {
        let stat = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn resident_memory_is_read_in_bytes() {
        let status = "Name:\tqemu\nVmPeak:\t 9000 kB\nVmRSS:\t  2048 kB\nThreads:\t3\n";
        assert_eq!(rss_bytes(status), Some(2048 * 1024));
        assert_eq!(rss_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_has_usage() {
        let usage = proc_usage(std::process::id()).expect("our own /proc entry");
        assert!(usage.rss_bytes > 0);
    }
}
