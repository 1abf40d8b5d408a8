//! A workload driver over any [`Store`], so that the embedded backend and a
//! networked one can be measured with the same load.
//!
//! Phases, in order: sequential puts from one client, puts from
//! `concurrency` clients, gets, compare-and-swap transactions, and puts
//! followed by a watcher (events per second delivered, and put-to-delivery
//! latency). Each phase stops after `ops` operations or [`PHASE_LIMIT`],
//! whichever comes first, so a run has a bounded duration on any machine.
//!
//! Everything is written under [`PREFIX`], which is cleared before and after
//! the run.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::{Compare, Error, EventKind, Op, Store, Txn};

/// The key prefix the benchmark owns.
pub const PREFIX: &str = "bench/";

/// The longest any one phase runs, so that a run is bounded on any machine
/// (five phases: under 20 s in all).
pub const PHASE_LIMIT: Duration = Duration::from_secs(3);

/// How long the watch phase waits for stragglers after its writers stop.
const WATCH_GRACE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// The most operations per phase.
    pub ops: usize,
    /// Clients in the concurrent phases.
    pub concurrency: usize,
    /// Bytes per value written.
    pub value_size: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { ops: 10_000, concurrency: 16, value_size: 256 }
    }
}

/// The results of a run: one row per phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub concurrency: usize,
    pub value_size: usize,
    pub phases: Vec<PhaseReport>,
}

/// One phase's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub clients: usize,
    /// Operations completed (events delivered, for the watch phase).
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    /// Median latency of one operation (put to delivery, for the watch
    /// phase), in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Operations that did not take effect: failed CAS comparisons, or
    /// events the watcher never delivered.
    pub misses: u64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<22} {:>7} {:>8} {:>8} {:>10} {:>9} {:>9} {:>7}",
            "phase", "clients", "ops", "time", "ops/s", "p50 ms", "p99 ms", "misses"
        )?;
        for phase in &self.phases {
            writeln!(
                f,
                "{:<22} {:>7} {:>8} {:>7.2}s {:>10.1} {:>9.3} {:>9.3} {:>7}",
                phase.name,
                phase.clients,
                phase.ops,
                phase.seconds,
                phase.ops_per_sec,
                phase.p50_ms,
                phase.p99_ms,
                phase.misses,
            )?;
        }
        writeln!(f, "({}-byte values)", self.value_size)
    }
}

/// The same workload on several backends, side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Each backend's name and report, in the order they ran.
    pub runs: Vec<(String, BenchReport)>,
}

impl fmt::Display for Comparison {
    /// One row per phase: each backend's operations per second and median
    /// latency, then, for two backends, the first's throughput over the
    /// second's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((_, first)) = self.runs.first() else { return Ok(()) };
        write!(f, "{:<22} {:>7}", "phase", "clients")?;
        for (name, _) in &self.runs {
            write!(f, " {:>12} {:>9}", format!("{name} ops/s"), "p50 ms")?;
        }
        if let [(a, _), (b, _)] = self.runs.as_slice() {
            write!(f, " {:>10}", format!("{a} ÷ {b}"))?;
        }
        writeln!(f)?;
        for (i, phase) in first.phases.iter().enumerate() {
            write!(f, "{:<22} {:>7}", phase.name, phase.clients)?;
            for (_, report) in &self.runs {
                match report.phases.get(i) {
                    Some(p) => write!(f, " {:>12.1} {:>9.3}", p.ops_per_sec, p.p50_ms)?,
                    None => write!(f, " {:>12} {:>9}", "-", "-")?,
                }
            }
            if let [(_, a), (_, b)] = self.runs.as_slice()
                && let (Some(a), Some(b)) = (a.phases.get(i), b.phases.get(i))
                && b.ops_per_sec > 0.0
            {
                write!(f, " {:>9.1}×", a.ops_per_sec / b.ops_per_sec)?;
            }
            writeln!(f)?;
        }
        writeln!(f, "({}-byte values)", first.value_size)
    }
}

/// Runs every phase against `store` and reports.
pub async fn run(store: Arc<dyn Store>, options: BenchOptions) -> Result<BenchReport, Error> {
    let options =
        BenchOptions { ops: options.ops.max(1), concurrency: options.concurrency.max(1), ..options };
    clear(&*store).await?;
    let phases = vec![
        put_phase(&store, &options, 1).await?,
        put_phase(&store, &options, options.concurrency).await?,
        get_phase(&store, &options).await?,
        cas_phase(&store, &options).await?,
        watch_phase(&store, &options).await?,
    ];
    clear(&*store).await?;
    Ok(BenchReport { concurrency: options.concurrency, value_size: options.value_size, phases })
}

async fn clear(store: &dyn Store) -> Result<(), Error> {
    store.txn(Txn::new().and_then(Op::DeletePrefix { prefix: PREFIX.to_owned() })).await?;
    Ok(())
}

/// What one client of a phase did.
#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<Duration>,
    misses: u64,
}

/// Runs `clients` copies of `client` until `ops` operations are claimed or
/// the phase limit passes. `client(c, i)` does operation `i` as client `c`
/// and says whether it took effect.
async fn drive<F, Fut>(
    name: &str,
    clients: usize,
    options: &BenchOptions,
    client: F,
) -> Result<PhaseReport, Error>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, Error>> + Send,
{
    let client = Arc::new(client);
    let claimed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + PHASE_LIMIT;
    let ops = options.ops;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let (client, claimed) = (Arc::clone(&client), Arc::clone(&claimed));
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = claimed.fetch_add(1, Ordering::Relaxed);
                if i >= ops || Instant::now() >= deadline {
                    return Ok::<_, Error>(tally);
                }
                let op_started = Instant::now();
                if client(c, i).await? {
                    tally.latencies.push(op_started.elapsed());
                } else {
                    tally.misses += 1;
                }
            }
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.map_err(|e| Error::Backend(Box::new(e)))??;
        total.latencies.extend(tally.latencies);
        total.misses += tally.misses;
    }
    Ok(phase_report(name, clients, started.elapsed(), total))
}

async fn put_phase(
    store: &Arc<dyn Store>,
    options: &BenchOptions,
    clients: usize,
) -> Result<PhaseReport, Error> {
    let name = if clients == 1 { "put (sequential)" } else { "put (concurrent)" };
    let (store, value) = (Arc::clone(store), vec![b'x'; options.value_size]);
    let prefix = format!("{PREFIX}put{clients}/");
    drive(name, clients, options, move |_, i| {
        let (store, value, key) = (Arc::clone(&store), value.clone(), format!("{prefix}{i:08}"));
        async move { store.put(&key, value, None).await.map(|_| true) }
    })
    .await
}

async fn get_phase(store: &Arc<dyn Store>, options: &BenchOptions) -> Result<PhaseReport, Error> {
    // Read back what the concurrent put phase wrote; a miss is a key it did
    // not get round to.
    let written = store.range(&format!("{PREFIX}put{}/", options.concurrency)).await?.kvs.len();
    let (store, prefix) = (Arc::clone(store), format!("{PREFIX}put{}/", options.concurrency));
    drive("get", options.concurrency, options, move |_, i| {
        let store = Arc::clone(&store);
        let key = format!("{prefix}{:08}", i % written.max(1));
        async move { store.get(&key).await.map(|kv| kv.is_some()) }
    })
    .await
}

async fn cas_phase(store: &Arc<dyn Store>, options: &BenchOptions) -> Result<PhaseReport, Error> {
    // One counter per client, so that misses measure the store, not the
    // contention the benchmark made up.
    let clients = options.concurrency;
    for client in 0..clients {
        store.put(&format!("{PREFIX}cas/{client}"), 0u64.to_be_bytes().to_vec(), None).await?;
    }
    let store = Arc::clone(store);
    drive("txn CAS", clients, options, move |client, _| {
        let store = Arc::clone(&store);
        let key = format!("{PREFIX}cas/{client}");
        async move {
            let Some(kv) = store.get(&key).await? else { return Ok(false) };
            let count = kv.value.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
            let txn = Txn::new()
                .when(Compare::mod_revision(key.clone(), kv.mod_revision))
                .and_then(Op::Put { key, value: (count + 1).to_be_bytes().to_vec(), lease: None });
            Ok(store.txn(txn).await?.succeeded)
        }
    })
    .await
}

async fn watch_phase(store: &Arc<dyn Store>, options: &BenchOptions) -> Result<PhaseReport, Error> {
    let prefix = format!("{PREFIX}watch/");
    let mut watch = store.watch(&prefix, 0).await?;
    let base = Instant::now();
    let (writers, value_size) = (Arc::clone(store), options.value_size.max(8));
    let key_prefix = prefix.clone();
    let mut writing = tokio::spawn({
        let options = options.clone();
        async move {
            drive("watch", options.concurrency, &options, move |_, i| {
                let store = Arc::clone(&writers);
                let key = format!("{key_prefix}{i:08}");
                // The value carries its send time, so the watcher can tell
                // the put-to-delivery latency.
                let mut value = vec![b'x'; value_size];
                value[..8].copy_from_slice(&nanos_since(base).to_be_bytes());
                async move { store.put(&key, value, None).await.map(|_| true) }
            })
            .await
        }
    });

    let mut latencies = Vec::new();
    let mut last_delivery = base;
    let mut written: Option<(u64, Instant)> = None;
    loop {
        if let Some((total, stopped)) = written
            && (latencies.len() as u64 >= total || stopped.elapsed() > WATCH_GRACE)
        {
            break;
        }
        if written.is_none() && writing.is_finished() {
            let writers = (&mut writing).await.map_err(|e| Error::Backend(Box::new(e)))??;
            written = Some((writers.ops, Instant::now()));
            continue;
        }
        match tokio::time::timeout(Duration::from_millis(50), watch.next()).await {
            Ok(Some(Ok(event))) if event.kind == EventKind::Put => {
                let sent = event.kv.value.get(..8).and_then(|b| b.try_into().ok());
                let sent = Duration::from_nanos(sent.map(u64::from_be_bytes).unwrap_or(0));
                latencies.push(base.elapsed().saturating_sub(sent));
                last_delivery = Instant::now();
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err(Error::Closed),
        }
    }
    let total = written.map_or(0, |(total, _)| total);
    let tally = Tally { misses: total.saturating_sub(latencies.len() as u64), latencies };
    Ok(phase_report("watch (put→event)", options.concurrency, last_delivery - base, tally))
}

fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn phase_report(name: &str, clients: usize, elapsed: Duration, mut tally: Tally) -> PhaseReport {
    tally.latencies.sort_unstable();
    let ops = tally.latencies.len() as u64;
    let seconds = elapsed.as_secs_f64();
    PhaseReport {
        name: name.to_owned(),
        clients,
        ops,
        seconds,
        ops_per_sec: if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
        p50_ms: percentile(&tally.latencies, 0.50),
        p99_ms: percentile(&tally.latencies, 0.99),
        misses: tally.misses,
    }
}

/// The `q` quantile of sorted `latencies`, in milliseconds (0 if empty).
fn percentile(latencies: &[Duration], q: f64) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    let index = ((latencies.len() - 1) as f64 * q).round() as usize;
    latencies[index.min(latencies.len() - 1)].as_secs_f64() * 1000.0
}
