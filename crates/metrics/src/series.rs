//! The store: series and their points in one redb file.
//!
//! Two tables: `series` (an id → the series' name and labels) and `points`
//! (`(id, time in Unix ms)` → value), so one series' points over a span
//! are one range read. The ids, names and labels are also held in memory,
//! which is how a query finds its series and a write finds a sample's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

const SERIES: TableDefinition<u32, &str> = TableDefinition::new("series");
const POINTS: TableDefinition<(u32, u64), f64> = TableDefinition::new("points");

/// The most points a query returns per series (a day at 10 s is 8,640).
pub const MAX_POINTS: usize = 11_000;
/// Pruning runs at most this often (by the samples' clock), or once per
/// retention if that is shorter.
const PRUNE_EVERY_MS: u64 = 60_000;
/// The longest name, label name or label value.
const MAX_TEXT: usize = 256;
/// Batches a slow subscriber may fall behind before it misses some.
const BACKLOG: usize = 64;
/// Separates the name and labels in a series' stored form; refused in them.
const SEP: char = '\u{1f}';

/// How the store is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// How often [`TimeSeries::run`] samples.
    pub interval: Duration,
    /// How long points are kept.
    pub retention: Duration,
    /// The most series kept at once.
    pub max_series: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            interval: Duration::from_secs(10),
            retention: Duration::from_secs(24 * 3600),
            max_series: 4096,
        }
    }
}

/// One value of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn new(name: impl Into<String>, value: f64) -> Sample {
        Sample { name: name.into(), labels: BTreeMap::new(), value }
    }

    /// The sample with one more label.
    #[must_use]
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Sample {
        self.labels.insert(name.into(), value.into());
        self
    }
}

/// What one write stored: every sample taken at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Unix milliseconds.
    pub at: u64,
    pub samples: Vec<Sample>,
}

/// What a query asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pub name: String,
    /// Labels the series must have, with these values.
    pub matchers: BTreeMap<String, String>,
    /// From (inclusive), Unix ms.
    pub since_ms: u64,
    /// To (inclusive), Unix ms.
    pub until_ms: u64,
    /// One point per step (the mean of its bucket); raw points without.
    pub step_ms: Option<u64>,
}

/// One series' points, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(u64, f64)>,
}

/// What a write did with its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Written {
    pub stored: usize,
    /// Samples of new series past the bound.
    pub over_bound: usize,
    /// Samples with a bad name or label, or a value that is not finite.
    pub invalid: usize,
}

/// A metric name and how many series it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameCount {
    pub name: String,
    pub series: usize,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options cannot work.
    #[error("the time series options are invalid: {0}")]
    Options(String),
    /// The file cannot be opened.
    #[error("cannot open the time series file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    /// Reading or writing the file failed.
    #[error("the time series file failed")]
    Storage(#[source] redb::Error),
    /// The file holds a series this code cannot read.
    #[error("the time series file holds a series it cannot read: {0:?}")]
    Corrupt(String),
    /// No series has this name.
    #[error("there is no metric named {name:?}")]
    UnknownName {
        name: String,
        /// The names there are.
        known: Vec<String>,
    },
    /// The query cannot be answered as asked.
    #[error("{0}")]
    Query(String),
}

fn storage(error: impl Into<redb::Error>) -> Error {
    Error::Storage(error.into())
}

/// A series as memory holds it.
#[derive(Debug, Clone)]
struct Known {
    name: String,
    labels: BTreeMap<String, String>,
    /// The time of its newest point.
    last_ms: u64,
}

#[derive(Debug, Default)]
struct Index {
    /// The stored form of a series → its id.
    ids: HashMap<String, u32>,
    series: BTreeMap<u32, Known>,
    next_id: u32,
    /// The newest time written: "now" for retention.
    newest_ms: u64,
    pruned_ms: u64,
}

/// A cheap-to-clone handle to the store.
#[derive(Clone)]
pub struct TimeSeries {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    options: Options,
    index: Mutex<Index>,
    published: broadcast::Sender<Arc<Batch>>,
    over_bound: AtomicU64,
    said_full: AtomicBool,
}

impl std::fmt::Debug for TimeSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeSeries").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

/// The stored form of a series: its name and labels, joined by [`SEP`].
fn stored_form(name: &str, labels: &BTreeMap<String, String>) -> String {
    let mut text = name.to_owned();
    for (k, v) in labels {
        text.push(SEP);
        text.push_str(k);
        text.push(SEP);
        text.push_str(v);
    }
    text
}

fn parse_form(text: &str) -> Option<(String, BTreeMap<String, String>)> {
    let mut parts = text.split(SEP);
    let name = parts.next()?.to_owned();
    let mut labels = BTreeMap::new();
    while let Some(k) = parts.next() {
        labels.insert(k.to_owned(), parts.next()?.to_owned());
    }
    Some((name, labels))
}

/// A metric or label name: a letter or `_`, then letters, digits and `_`
/// (Prometheus's rule, without `:`).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_TEXT
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_sample(sample: &Sample) -> bool {
    sample.value.is_finite()
        && valid_name(&sample.name)
        && sample
            .labels
            .iter()
            .all(|(k, v)| valid_name(k) && v.len() <= MAX_TEXT && !v.chars().any(char::is_control))
}

fn lock(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl TimeSeries {
    /// Opens (or creates) the file at `path`.
    pub fn open(path: &Path, options: Options) -> Result<TimeSeries, Error> {
        if options.interval.is_zero() {
            return Err(Error::Options("the interval must be more than zero".into()));
        }
        if options.retention < options.interval {
            return Err(Error::Options("the retention must be at least one interval".into()));
        }
        if options.max_series == 0 {
            return Err(Error::Options("at least one series must be allowed".into()));
        }
        let db = Database::create(path).map_err(|source| Error::Open { path: path.to_owned(), source })?;
        let index = load(&db)?;
        Ok(TimeSeries {
            inner: Arc::new(Inner {
                db,
                options,
                index: Mutex::new(index),
                published: broadcast::channel(BACKLOG).0,
                over_bound: AtomicU64::new(0),
                said_full: AtomicBool::new(false),
            }),
        })
    }

    pub fn options(&self) -> Options {
        self.inner.options
    }

    /// Samples of new series dropped because the bound was reached, since open.
    pub fn over_bound(&self) -> u64 {
        self.inner.over_bound.load(Ordering::Relaxed)
    }

    /// Every batch written from now on, as it is committed. A receiver
    /// that falls more than 64 batches behind misses the oldest (and is
    /// told so by `Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.inner.published.subscribe()
    }

    /// Stores `samples` at `at_ms` (Unix ms) as one transaction, prunes if
    /// it is time, and publishes the batch. Blocks on the file: call it
    /// off the async runtime's threads (`run` does).
    pub fn write(&self, at_ms: u64, samples: &[Sample]) -> Result<Written, Error> {
        let inner = &self.inner;
        let mut index = lock(&inner.index);
        let mut written = Written::default();
        let mut created: HashMap<String, (u32, usize)> = HashMap::new();
        let mut stored: Vec<Sample> = Vec::with_capacity(samples.len());
        let mut touched: Vec<u32> = Vec::with_capacity(samples.len());
        let retention = millis(inner.options.retention);
        let newest = index.newest_ms.max(at_ms);
        let prune_every = PRUNE_EVERY_MS.min(retention);
        let prune = newest >= index.pruned_ms.saturating_add(prune_every);
        let cutoff = newest.saturating_sub(retention);
        let mut forgotten: HashSet<u32> = HashSet::new();
        let mut next_id = index.next_id;
        let txn = inner.db.begin_write().map_err(storage)?;
        {
            let mut series = txn.open_table(SERIES).map_err(storage)?;
            let mut points = txn.open_table(POINTS).map_err(storage)?;
            // Pruned first, so that a series aged out makes room for a new one.
            if prune {
                for (&id, known) in &index.series {
                    points.retain_in((id, 0)..(id, cutoff), |_, _| false).map_err(storage)?;
                    if known.last_ms < cutoff {
                        series.remove(id).map_err(storage)?;
                        forgotten.insert(id);
                    }
                }
            }
            for (i, sample) in samples.iter().enumerate() {
                if !valid_sample(sample) {
                    written.invalid += 1;
                    continue;
                }
                let form = stored_form(&sample.name, &sample.labels);
                let known = index.ids.get(&form).copied();
                let id = match known.or_else(|| created.get(&form).map(|(id, _)| *id)) {
                    // Aged out in this very write, and back: kept after all.
                    Some(id) if forgotten.remove(&id) => {
                        series.insert(id, form.as_str()).map_err(storage)?;
                        id
                    }
                    Some(id) => id,
                    None if index.series.len() - forgotten.len() + created.len()
                        >= inner.options.max_series =>
                    {
                        written.over_bound += 1;
                        continue;
                    }
                    None => {
                        let id = next_id;
                        next_id = next_id.wrapping_add(1);
                        series.insert(id, form.as_str()).map_err(storage)?;
                        created.insert(form, (id, i));
                        id
                    }
                };
                points.insert((id, at_ms), sample.value).map_err(storage)?;
                touched.push(id);
                stored.push(sample.clone());
            }
        }
        txn.commit().map_err(storage)?;
        written.stored = stored.len();
        for (form, (id, i)) in created {
            let sample = &samples[i];
            index.ids.insert(form, id);
            index
                .series
                .insert(id, Known { name: sample.name.clone(), labels: sample.labels.clone(), last_ms: 0 });
        }
        index.next_id = next_id;
        for id in touched {
            if let Some(known) = index.series.get_mut(&id) {
                known.last_ms = known.last_ms.max(at_ms);
            }
        }
        for id in forgotten {
            if let Some(known) = index.series.remove(&id) {
                index.ids.remove(&stored_form(&known.name, &known.labels));
            }
        }
        index.newest_ms = newest;
        if prune {
            index.pruned_ms = newest;
        }
        drop(index);
        if written.over_bound > 0 {
            inner.over_bound.fetch_add(written.over_bound as u64, Ordering::Relaxed);
            if !inner.said_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_series = inner.options.max_series,
                    "The time series store is full: samples of new series are dropped until old series age out."
                );
            }
        }
        // No subscriber is not an error: the alerting service may not run.
        let _ = inner.published.send(Arc::new(Batch { at: at_ms, samples: stored }));
        Ok(written)
    }

    /// The metric names there are, with their series counts, by name.
    pub fn names(&self) -> Vec<NameCount> {
        let index = lock(&self.inner.index);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for known in index.series.values() {
            *counts.entry(known.name.as_str()).or_default() += 1;
        }
        counts.into_iter().map(|(name, series)| NameCount { name: name.to_owned(), series }).collect()
    }

    /// The series of `query.name` that carry every matcher, each with its
    /// points in the span (or its buckets' means with a step), ordered by
    /// labels. Blocks on the file.
    pub fn query(&self, query: &Query) -> Result<Vec<Series>, Error> {
        if query.since_ms > query.until_ms {
            return Err(Error::Query("the span ends before it starts".into()));
        }
        if query.step_ms == Some(0) {
            return Err(Error::Query("the step must be more than zero".into()));
        }
        let (wanted, since) = {
            let index = lock(&self.inner.index);
            let mut named = index.series.iter().filter(|(_, k)| k.name == query.name).peekable();
            if named.peek().is_none() {
                let mut known: Vec<String> = index.series.values().map(|k| k.name.clone()).collect();
                known.sort();
                known.dedup();
                return Err(Error::UnknownName { name: query.name.clone(), known });
            }
            let wanted: Vec<(u32, BTreeMap<String, String>)> = named
                .filter(|(_, k)| query.matchers.iter().all(|(m, v)| k.labels.get(m) == Some(v)))
                .map(|(id, k)| (*id, k.labels.clone()))
                .collect();
            let oldest = index.newest_ms.saturating_sub(millis(self.inner.options.retention));
            (wanted, query.since_ms.max(oldest))
        };
        // Counted over the span that can hold points: a span reaching
        // back past the retention is not refused for the part that is gone.
        if let Some(step) = query.step_ms {
            let buckets = query.until_ms.saturating_sub(since) / step + 1;
            if buckets > MAX_POINTS as u64 {
                return Err(Error::Query(format!(
                    "the step gives {buckets} points per series, over the limit of {MAX_POINTS}: use a longer step or a shorter span"
                )));
            }
        }
        let txn = self.inner.db.begin_read().map_err(storage)?;
        let points = txn.open_table(POINTS).map_err(storage)?;
        let mut out = Vec::with_capacity(wanted.len());
        for (id, labels) in wanted {
            let mut raw = Vec::new();
            if since <= query.until_ms {
                for entry in points.range((id, since)..=(id, query.until_ms)).map_err(storage)? {
                    let (key, value) = entry.map_err(storage)?;
                    raw.push((key.value().1, value.value()));
                }
            }
            let points = match query.step_ms {
                Some(step) => buckets(&raw, step),
                None => {
                    let skip = raw.len().saturating_sub(MAX_POINTS);
                    raw.split_off(skip)
                }
            };
            out.push(Series { labels, points });
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// Samples every interval until `stop`: each collector's samples,
    /// written as one batch and published. A failed write is logged and
    /// the loop goes on.
    pub async fn run(
        self,
        collectors: Vec<Box<dyn crate::Collector>>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(self.inner.options.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is now: nothing has been counted yet.
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let mut samples = Vec::new();
            for collector in &collectors {
                samples.extend(collector.collect().await);
            }
            let at = crate::now_ms();
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.write(at, &samples)).await {
                Ok(Ok(written)) if written.invalid > 0 => {
                    tracing::warn!(
                        invalid = written.invalid,
                        "Some metric samples were invalid and dropped."
                    );
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "Cannot write the metric samples.");
                }
                Err(error) => tracing::error!(error = %error, "The metric write task failed."),
            }
        }
    }
}

/// Loads the series (and each one's newest point) into memory.
fn load(db: &Database) -> Result<Index, Error> {
    let txn = db.begin_write().map_err(storage)?;
    // Made here, so that reads never meet a missing table.
    txn.open_table(SERIES).map_err(storage)?;
    txn.open_table(POINTS).map_err(storage)?;
    txn.commit().map_err(storage)?;
    let txn = db.begin_read().map_err(storage)?;
    let series = txn.open_table(SERIES).map_err(storage)?;
    let points = txn.open_table(POINTS).map_err(storage)?;
    let mut index = Index::default();
    for entry in series.iter().map_err(storage)? {
        let (id, form) = entry.map_err(storage)?;
        let (id, form) = (id.value(), form.value().to_owned());
        let (name, labels) = parse_form(&form).ok_or_else(|| Error::Corrupt(form.clone()))?;
        let last_ms = match points.range((id, 0)..=(id, u64::MAX)).map_err(storage)?.next_back() {
            Some(entry) => entry.map_err(storage)?.0.value().1,
            None => 0,
        };
        index.newest_ms = index.newest_ms.max(last_ms);
        index.next_id = index.next_id.max(id.wrapping_add(1));
        index.ids.insert(form, id);
        index.series.insert(id, Known { name, labels, last_ms });
    }
    Ok(index)
}

/// The mean of each step's points, at the step's start.
fn buckets(raw: &[(u64, f64)], step: u64) -> Vec<(u64, f64)> {
    let mut out: Vec<(u64, f64, u32)> = Vec::new();
    for &(at, value) in raw {
        let start = at - at % step;
        match out.last_mut() {
            Some((s, sum, n)) if *s == start => {
                *sum += value;
                *n += 1;
            }
            _ => out.push((start, value, 1)),
        }
    }
    out.into_iter().map(|(start, sum, n)| (start, sum / f64::from(n))).collect()
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata as _;

    use super::*;

    const MIN: u64 = 60_000;

    fn open(dir: &Path, options: Options) -> TimeSeries {
        TimeSeries::open(&dir.join("metrics.redb"), options).expect("open")
    }

    fn rate(app: &str, value: f64) -> Sample {
        Sample::new("app_request_rate", value).label("app", app).label("route", "/")
    }

    fn query(name: &str, since_ms: u64, until_ms: u64) -> Query {
        Query { name: name.into(), since_ms, until_ms, ..Query::default() }
    }

    fn values(series: &Series) -> Vec<(u64, f64)> {
        series.points.clone()
    }

    #[test]
    fn samples_are_kept_for_the_retention_and_no_longer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options { retention: Duration::from_secs(600), ..Options::default() };
        let ts = open(dir.path(), options);
        for minute in 0..=20 {
            ts.write(minute * MIN, &[rate("shop", minute as f64)]).expect("write");
        }
        let all = ts.query(&query("app_request_rate", 0, 20 * MIN)).expect("query");
        let times: Vec<u64> = all[0].points.iter().map(|p| p.0).collect();
        assert_eq!(times, (10..=20).map(|m| m * MIN).collect::<Vec<_>>(), "the last 10 minutes only");
        // Pruned from the file too, not only hidden.
        let txn = ts.inner.db.begin_read().expect("read");
        let points = txn.open_table(POINTS).expect("table");
        assert_eq!(points.len().expect("len"), 11);
    }

    #[test]
    fn a_series_with_no_point_left_is_forgotten_and_makes_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options { retention: Duration::from_secs(60), max_series: 1, ..Options::default() };
        let ts = open(dir.path(), options);
        ts.write(0, &[rate("old", 1.0)]).expect("write");
        let written = ts.write(2 * MIN, &[rate("new", 2.0)]).expect("write");
        assert_eq!(written.stored, 1, "{written:?}");
        assert_eq!(ts.names(), vec![NameCount { name: "app_request_rate".into(), series: 1 }]);
        let series = ts.query(&query("app_request_rate", 0, 3 * MIN)).expect("query");
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].labels["app"], "new");
    }

    #[test]
    fn the_number_of_series_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = open(dir.path(), Options { max_series: 3, ..Options::default() });
        let batch: Vec<Sample> = (0..5).map(|i| rate(&format!("app{i}"), 1.0)).collect();
        let written = ts.write(1_000, &batch).expect("write");
        assert_eq!(written, Written { stored: 3, over_bound: 2, invalid: 0 });
        // Known series still take points; new ones are still dropped.
        let written = ts.write(11_000, &batch).expect("write");
        assert_eq!(written, Written { stored: 3, over_bound: 2, invalid: 0 });
        assert_eq!(ts.over_bound(), 4);
        assert_eq!(ts.names()[0].series, 3);
    }

    #[test]
    fn series_made_in_later_writes_never_take_an_earlier_ones_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = open(dir.path(), Options::default());
        for (round, at) in [(0, 1_000), (1, 11_000), (2, 21_000)] {
            let batch: Vec<Sample> = (0..8).map(|i| rate(&format!("app{round}-{i}"), f64::from(i))).collect();
            ts.write(at, &batch).expect("write");
        }
        assert_eq!(ts.names()[0].series, 24);
        let mut q = query("app_request_rate", 0, 30_000);
        q.matchers.insert("app".into(), "app0-7".into());
        assert_eq!(ts.query(&q).expect("query")[0].points, vec![(1_000, 7.0)]);
        drop(ts);
        assert_eq!(open(dir.path(), Options::default()).names()[0].series, 24, "and in the file");
    }

    #[test]
    fn a_query_with_a_step_gives_the_mean_of_each_bucket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = open(dir.path(), Options::default());
        for (at, value) in [(60_000, 1.0), (70_000, 3.0), (110_000, 5.0), (120_000, 10.0), (250_000, 7.0)] {
            ts.write(at, &[rate("shop", value)]).expect("write");
        }
        let mut q = query("app_request_rate", 0, 300_000);
        q.step_ms = Some(MIN);
        let series = ts.query(&q).expect("query");
        assert_eq!(values(&series[0]), vec![(60_000, 3.0), (120_000, 10.0), (240_000, 7.0)]);
        // Without a step: the raw points.
        let raw = ts.query(&query("app_request_rate", 65_000, 120_000)).expect("query");
        assert_eq!(values(&raw[0]), vec![(70_000, 3.0), (110_000, 5.0), (120_000, 10.0)]);
        q.step_ms = Some(0);
        assert!(matches!(ts.query(&q), Err(Error::Query(_))));
        q.step_ms = Some(1);
        assert!(matches!(ts.query(&q), Err(Error::Query(_))), "300,001 buckets is over the limit");
    }

    #[test]
    fn matchers_are_labels_a_series_must_have() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = open(dir.path(), Options::default());
        let api = Sample::new("app_request_rate", 2.0).label("app", "shop").label("route", "/api");
        ts.write(1_000, &[rate("shop", 1.0), api, rate("blog", 3.0)]).expect("write");
        let mut q = query("app_request_rate", 0, 2_000);
        assert_eq!(ts.query(&q).expect("query").len(), 3, "no matcher: every series");
        q.matchers.insert("app".into(), "shop".into());
        let shop = ts.query(&q).expect("query");
        assert_eq!(shop.len(), 2);
        assert!(shop.iter().all(|s| s.labels["app"] == "shop"));
        q.matchers.insert("route".into(), "/api".into());
        assert_eq!(ts.query(&q).expect("query")[0].points, vec![(1_000, 2.0)]);
        q.matchers.insert("region".into(), "eu".into());
        assert!(ts.query(&q).expect("query").is_empty(), "a label the series lacks");
    }

    #[test]
    fn an_unknown_name_says_which_names_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = open(dir.path(), Options::default());
        ts.write(1_000, &[rate("shop", 1.0), Sample::new("store_revision", 7.0)]).expect("write");
        match ts.query(&query("app_requests", 0, 2_000)) {
            Err(Error::UnknownName { name, known }) => {
                assert_eq!(name, "app_requests");
                assert_eq!(known, vec!["app_request_rate", "store_revision"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reopening_the_file_keeps_its_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let ts = open(dir.path(), Options::default());
            ts.write(1_000, &[rate("shop", 1.5), Sample::new("store_revision", 7.0)]).expect("write");
        }
        let ts = open(dir.path(), Options::default());
        assert_eq!(ts.names().len(), 2);
        ts.write(11_000, &[rate("shop", 2.5), rate("blog", 1.0)]).expect("write");
        let mut q = query("app_request_rate", 0, 20_000);
        q.matchers.insert("app".into(), "shop".into());
        assert_eq!(ts.query(&q).expect("query")[0].points, vec![(1_000, 1.5), (11_000, 2.5)]);
        assert_eq!(ts.names()[0], NameCount { name: "app_request_rate".into(), series: 2 });
    }

    #[test]
    fn invalid_samples_are_dropped_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = open(dir.path(), Options::default());
        let bad = [
            Sample::new("has space", 1.0),
            Sample::new("nan", f64::NAN),
            Sample::new("x", 1.0).label("route", "a\u{1f}b"),
            Sample::new("9lives", 1.0),
        ];
        let written = ts.write(1_000, &bad).expect("write");
        assert_eq!(written, Written { stored: 0, over_bound: 0, invalid: 4 });
        assert!(ts.names().is_empty());
    }

    #[tokio::test]
    async fn every_batch_written_is_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = open(dir.path(), Options { max_series: 1, ..Options::default() });
        let mut rx = ts.subscribe();
        ts.write(1_000, &[rate("shop", 1.0), rate("blog", 2.0)]).expect("write");
        let batch = rx.recv().await.expect("a batch");
        assert_eq!(batch.at, 1_000);
        assert_eq!(batch.samples, vec![rate("shop", 1.0)], "only what was stored");
    }

    struct Fixed;

    #[async_trait::async_trait]
    impl crate::Collector for Fixed {
        async fn collect(&self) -> Vec<Sample> {
            vec![Sample::new("store_revision", 7.0)]
        }
    }

    #[tokio::test]
    async fn run_writes_every_collectors_samples_each_interval_until_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options { interval: Duration::from_millis(20), ..Options::default() };
        let ts = open(dir.path(), options);
        let mut rx = ts.subscribe();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(ts.clone().run(vec![Box::new(Fixed), Box::new(Fixed)], stopped));
        for _ in 0..2 {
            let batch = rx.recv().await.expect("a batch");
            assert_eq!(batch.samples.len(), 2);
        }
        stop.send(true).expect("stop");
        task.await.expect("the loop ends");
        let points = ts.query(&query("store_revision", 0, u64::MAX)).expect("query")[0].points.len();
        assert!(points >= 2, "{points}");
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.redb");
        for options in [
            Options { interval: Duration::ZERO, ..Options::default() },
            Options { retention: Duration::from_secs(1), ..Options::default() },
            Options { max_series: 0, ..Options::default() },
        ] {
            assert!(matches!(TimeSeries::open(&path, options), Err(Error::Options(_))));
        }
    }
}
