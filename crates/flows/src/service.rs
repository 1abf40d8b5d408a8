//! The workflows service: deploys, runs, signals and cancels, and the
//! executor that brings waiting runs back.
//!
//! The executor is driven by records, not calls: it follows the store's
//! run records, signals and claims, so whoever writes them (this daemon's
//! API, a trigger, another executor on the same store) wakes a run:
//!
//! - a run record that says `running` (a start, a migrate) is executed;
//! - one that says `waiting` with a deadline sets a timer;
//! - one that ended wakes its parent;
//! - a signal wakes the run if it runs or waits for that signal;
//! - a claim that goes away (an execution ended, or its executor's lease
//!   expired) wakes the run if what it waits for is there.
//!
//! A run is executed by at most one executor at a time: each execution
//! first claims the run (`workflows/claims/RUN`, attached to the executor's
//! lease) and every journal write compares that claim, as well as the run
//! record's revision, so a run that was cancelled, or claimed by anyone
//! else, stops at its next step. Within one executor `wake` starts one
//! execution, or, if one is under way, asks it to go again when it ends (a
//! signal that arrives while the run is executing is never lost).
//!
//! Timers live in memory and are rebuilt from the run records on start;
//! what is due while the daemon is down fires when it comes back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hearth_store::{Change, Compare, Follower, KeyValue, LeaseId, Op, OpResponse, Revision, Store, Txn};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, watch};
use wasmtime::UpdateDeadline;

use crate::host::{Exec, OutputPipe, Stop, bindings::WorkflowPre};
use crate::journal::{Call, Entry, Recorded};
use crate::record::{
    self, Definition, Run, RunDetail, Signal, Status, Version, Wait, WaitKind, decode, encode,
};
use crate::runtime::{self, Runtime};
use crate::triggers::Triggers;
use crate::{Error, now_ms};

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Uploaded components are kept in `DATA_DIR/workflows/blobs`, by hash.
    pub data_dir: PathBuf,
    /// Compiled components are cached in `CACHE_DIR/workflows/compiled`.
    pub cache_dir: PathBuf,
    /// Largest accepted upload, in bytes.
    pub max_upload: usize,
    /// Executions at once; more wait their turn.
    pub concurrency: usize,
    /// CPU a workflow may use between two durable calls.
    pub cpu_budget: Duration,
    /// This executor's name among those sharing the store: its claims say
    /// it, so that a restart gives up the claims of its last life.
    pub executor: String,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Options {
        Options {
            data_dir: data_dir.into(),
            cache_dir: cache_dir.into(),
            max_upload: 32 << 20,
            concurrency: 32,
            cpu_budget: Duration::from_secs(10),
            executor: "local".into(),
        }
    }
}

/// What a deploy did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployed {
    pub workflow: String,
    pub version: Version,
    /// False when the compiled component came from the cache.
    pub compiled: bool,
    pub duration_ms: f64,
}

/// What starts a run.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub workflow: String,
    pub input: String,
    /// Starting twice with one id starts one run.
    pub id: Option<String>,
    /// `cli`, `webhook`, `cron`, `event`, `child`...
    pub started_by: String,
    pub parent: Option<String>,
}

/// A run, and whether this call created it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    pub run: Run,
    pub created: bool,
}

/// One line of `workflow logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub time: u64,
    /// `log` (the durable log call) or `output` (stdout and stderr).
    pub source: String,
    pub text: String,
}

/// How long an executor's claims outlive it: a lease renewed every third of
/// this while it runs.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// A cheap-to-clone handle to the workflows service.
#[derive(Clone)]
pub struct Flows {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    options: Options,
    blobs_dir: PathBuf,
    runtime: Runtime,
    http: ureq::Agent,
    /// Runs being executed; `true` asks the execution to go again.
    active: Mutex<HashMap<String, bool>>,
    /// (when, run) of every timer and wait deadline.
    timers: Mutex<BTreeSet<(u64, String)>>,
    timers_changed: Notify,
    permits: Semaphore,
    /// Deploys serialise on this, so versions are numbered without races.
    deploys: tokio::sync::Mutex<()>,
    /// The executor's lease, once it has claimed a run, and the task that
    /// keeps it alive.
    lease: Mutex<Option<(LeaseId, tokio::task::JoinHandle<()>)>>,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Flows {
    /// Sets up the runtime and the directories. No run executes until
    /// [`Flows::run`] starts.
    pub fn new(store: Arc<dyn Store>, options: Options) -> Result<Flows, Error> {
        let blobs_dir = options.data_dir.join("workflows").join("blobs");
        hearth_wasm::create_private_dir(&blobs_dir)?;
        let runtime = Runtime::new(&options.cache_dir)?;
        let permits = Semaphore::new(options.concurrency.max(1));
        Ok(Flows {
            inner: Arc::new(Inner {
                store,
                options,
                blobs_dir,
                runtime,
                http: crate::host::http_agent(),
                active: Mutex::default(),
                timers: Mutex::default(),
                timers_changed: Notify::new(),
                permits,
                deploys: tokio::sync::Mutex::new(()),
                lease: Mutex::default(),
            }),
        })
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub(crate) fn http_agent(&self) -> ureq::Agent {
        self.inner.http.clone()
    }

    /// Picks up every run where it was, then follows runs, signals and
    /// claims, and fires timers, cron and event triggers, until `shutdown`
    /// turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        self.give_up_last_life().await?;
        let from = self.recover().await? + 1;
        let store = &self.inner.store;
        let mut runs = Follower::new(store.clone(), record::RUNS, from, "Workflow runs");
        let mut signals = Follower::new(store.clone(), record::SIGNALS, from, "Workflow signals");
        let mut claims = Follower::new(store.clone(), record::CLAIMS, from, "Workflow claims");
        let triggers = tokio::spawn(crate::triggers::run(self.clone(), shutdown.clone()));
        loop {
            let next = lock(&self.inner.timers).first().map(|(at, _)| *at);
            let wait = next
                .map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.saturating_sub(now_ms())));
            let change = tokio::select! {
                () = tokio::time::sleep(wait) => None,
                () = self.inner.timers_changed.notified() => continue,
                _ = shutdown.changed() => None,
                change = runs.next() => Some(change),
                change = signals.next() => Some(change),
                change = claims.next() => Some(change),
            };
            if *shutdown.borrow() {
                break;
            }
            if let Some(change) = change {
                if let Err(e) = self.on_change(change).await {
                    tracing::warn!(error = %crate_chain(&e), "A workflow change could not be followed.");
                }
                continue;
            }
            let now = now_ms();
            let due: Vec<String> = {
                let mut timers = lock(&self.inner.timers);
                let later = timers.split_off(&(now + 1, String::new()));
                let due = std::mem::replace(&mut *timers, later);
                due.into_iter().map(|(_, id)| id).collect()
            };
            for id in due {
                self.wake(&id);
            }
        }
        triggers.abort();
        // Executions under way stop at their next step; their claims go now,
        // not when the lease would have expired.
        let lease = lock(&self.inner.lease).take();
        if let Some((lease, keep_alive)) = lease {
            keep_alive.abort();
            let _ = self.inner.store.lease_revoke(lease).await;
        }
        Ok(())
    }

    /// Revokes the leases of claims this executor left in its last life (a
    /// daemon killed mid-execution), so that they go at once instead of
    /// when the lease expires. Writes nothing when there are none.
    async fn give_up_last_life(&self) -> Result<(), Error> {
        let mine = format!("{}/", self.inner.options.executor);
        let claims = self.inner.store.range(record::CLAIMS).await?;
        let leases: BTreeSet<LeaseId> = claims
            .kvs
            .iter()
            .filter_map(|kv| std::str::from_utf8(&kv.value).ok()?.strip_prefix(&mine)?.parse().ok())
            .collect();
        for lease in leases {
            match self.inner.store.lease_revoke(lease).await {
                Ok(_) => tracing::info!(lease, "Gave up the claims of this executor's last life."),
                Err(hearth_store::Error::LeaseNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The executor's lease, granted at its first claim and renewed while
    /// it lives; the claims hang on it.
    async fn lease(&self) -> Result<LeaseId, Error> {
        if let Some((lease, _)) = &*lock(&self.inner.lease) {
            return Ok(*lease);
        }
        let granted = self.inner.store.lease_grant(LEASE_TTL).await?.id;
        let mut slot = lock(&self.inner.lease);
        if let Some((lease, _)) = &*slot {
            // Another execution got there first; this one is not needed.
            let (store, lease) = (self.inner.store.clone(), *lease);
            tokio::spawn(async move { store.lease_revoke(granted).await });
            return Ok(lease);
        }
        let keep_alive = tokio::spawn(self.clone().keep_lease_alive(granted));
        *slot = Some((granted, keep_alive));
        Ok(granted)
    }

    /// Renews the executor's lease. One that expired anyway (the daemon
    /// stalled) is forgotten: the next claim takes a new one, and the runs
    /// it had claimed are woken by their claims going away.
    async fn keep_lease_alive(self, lease: LeaseId) {
        loop {
            tokio::time::sleep(LEASE_TTL / 3).await;
            match self.inner.store.lease_keep_alive(lease).await {
                Ok(_) => {}
                Err(hearth_store::Error::LeaseNotFound(_)) => {
                    tracing::warn!(
                        lease,
                        "The workflow executor's lease expired; the next claim takes a new one."
                    );
                    let mut slot = lock(&self.inner.lease);
                    if slot.as_ref().is_some_and(|(l, _)| *l == lease) {
                        *slot = None;
                    }
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "Cannot renew the workflow executor's lease; retrying."),
            }
        }
    }

    /// What a change to a run, a signal or a claim calls for.
    async fn on_change(&self, change: Change) -> Result<(), Error> {
        let event = match change {
            Change::Event(event) => event,
            Change::Reset(_) => {
                self.recover().await?;
                return Ok(());
            }
        };
        let key = &event.kv.key;
        let deleted = event.kind == hearth_store::EventKind::Delete;
        if let Some(id) = record::run_of(key, record::RUNS) {
            if deleted {
                return Ok(());
            }
            let run: Run = decode(key, &event.kv.value)?;
            debug_assert_eq!(run.id, id);
            match (run.status, &run.wait) {
                (Status::Running, _) => self.wake(&run.id),
                (Status::Waiting, Some(Wait { deadline: Some(at), .. })) => self.schedule(*at, &run.id),
                (status, _) if status.is_terminal() => {
                    if let Some(parent) = &run.parent {
                        self.wake(parent);
                    }
                }
                _ => {}
            }
        } else if let Some(id) = record::run_of(key, record::SIGNALS) {
            if deleted {
                return Ok(());
            }
            let signal: Signal = decode(key, &event.kv.value)?;
            let Ok(run) = self.get_run(id).await else { return Ok(()) };
            let waits_for_it = matches!(&run.wait, Some(Wait { kind: WaitKind::Signal { name }, .. }) if *name == signal.name);
            if run.status == Status::Running || waits_for_it {
                self.wake(id);
            }
        } else if let Some(id) = record::run_of(key, record::CLAIMS) {
            // An execution ended, or its executor went: whatever came for
            // the run meanwhile was left to whoever claims it next.
            if deleted
                && let Ok(run) = self.get_run(id).await
                && (run.status == Status::Running || self.ready(&run).await?)
            {
                self.wake(id);
            }
        }
        Ok(())
    }

    /// Wakes what was running, schedules what waits on time, and wakes what
    /// waits on a signal or a child that came while the daemon was down.
    /// Returns the revision the runs were read at.
    async fn recover(&self) -> Result<Revision, Error> {
        let runs = self.inner.store.range(record::RUNS).await?;
        let (mut woken, mut waiting) = (0, 0);
        for kv in &runs.kvs {
            let run: Run = match decode(&kv.key, &kv.value) {
                Ok(run) => run,
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "Skipping an unreadable workflow run.");
                    continue;
                }
            };
            match (run.status, &run.wait) {
                (Status::Running, _) => {
                    self.wake(&run.id);
                    woken += 1;
                }
                (Status::Waiting, Some(wait)) => {
                    waiting += 1;
                    if let Some(deadline) = wait.deadline {
                        self.schedule(deadline, &run.id);
                    }
                    if self.ready(&run).await? {
                        self.wake(&run.id);
                        woken += 1;
                    }
                }
                _ => {}
            }
        }
        if woken + waiting > 0 {
            tracing::info!(resumed = woken, waiting, "Workflow runs picked up.");
        }
        Ok(runs.revision)
    }

    /// Whether a waiting run has what it waits for (a timer is left to its
    /// timer), or an execution got past the wait (recorded its step) and was
    /// cut off before it wrote the run again.
    async fn ready(&self, run: &Run) -> Result<bool, Error> {
        let Some(wait) = run.wait.as_ref().filter(|_| run.status == Status::Waiting) else {
            return Ok(false);
        };
        if self.inner.store.get(&record::journal_key(&run.id, wait.seq)).await?.is_some() {
            return Ok(true);
        }
        Ok(match &wait.kind {
            WaitKind::Timer => false,
            WaitKind::Signal { name } => self.has_pending_signal(&run.id, name).await?,
            WaitKind::Child { id } => self.get_run(id).await.map(|c| c.status.is_terminal()).unwrap_or(true),
        })
    }

    fn schedule(&self, at: u64, id: &str) {
        lock(&self.inner.timers).insert((at, id.to_owned()));
        self.inner.timers_changed.notify_one();
    }

    /// Executes the run now, or again right after the execution under way.
    pub(crate) fn wake(&self, id: &str) {
        {
            let mut active = lock(&self.inner.active);
            if let Some(again) = active.get_mut(id) {
                *again = true;
                return;
            }
            active.insert(id.to_owned(), false);
        }
        let (this, id) = (self.clone(), id.to_owned());
        tokio::spawn(async move {
            loop {
                this.execute(&id).await;
                let mut active = lock(&this.inner.active);
                match active.get_mut(&id) {
                    Some(again) if *again => *again = false,
                    _ => {
                        active.remove(&id);
                        break;
                    }
                }
            }
        });
    }

    async fn execute(&self, id: &str) {
        let Ok(_permit) = self.inner.permits.acquire().await else { return };
        if let Err(e) = self.try_execute(id).await {
            tracing::warn!(run = id, error = %crate_chain(&e), "A workflow run could not execute; trying again in 5 s.");
            self.schedule(now_ms() + 5000, id);
        }
    }

    /// Executes the run under a claim, unless another execution has it.
    async fn try_execute(&self, id: &str) -> Result<(), Error> {
        let Some(kv) = self.inner.store.get(&record::run_key(id)).await? else { return Ok(()) };
        let run: Run = decode(&kv.key, &kv.value)?;
        if run.status.is_terminal() {
            return Ok(());
        }
        let Some(claim) = self.claim(id).await? else {
            tracing::debug!(run = id, "Another execution has claimed this run.");
            return Ok(());
        };
        let result = self.execute_claimed(run, kv.mod_revision, claim.clone()).await;
        self.release(id, claim).await;
        result
    }

    /// Claims a run for this executor: the claim's value, or `None` if
    /// another execution holds it.
    async fn claim(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        let lease = self.lease().await?;
        let key = record::claim_key(id);
        let value = format!("{}/{lease}", self.inner.options.executor).into_bytes();
        let txn = Txn::new().when(Compare::missing(&key)).and_then(Op::Put {
            key,
            value: value.clone(),
            lease: Some(lease),
        });
        Ok(self.inner.store.txn(txn).await?.succeeded.then_some(value))
    }

    /// Gives a claim up, if it is still this one.
    async fn release(&self, id: &str, claim: Vec<u8>) {
        let key = record::claim_key(id);
        let txn = Txn::new()
            .when(Compare::new(
                &key,
                hearth_store::CompareOp::Equal,
                hearth_store::CompareTarget::Value(claim),
            ))
            .and_then(Op::Delete { key });
        if let Err(e) = self.inner.store.txn(txn).await {
            tracing::warn!(run = id, error = %e, "Cannot release a workflow run's claim; it goes with the lease.");
        }
    }

    async fn execute_claimed(&self, run: Run, run_rev: Revision, claim: Vec<u8>) -> Result<(), Error> {
        let id = run.id.as_str();
        let journal = self.journal(id).await?;
        let pre = match self.prepare(&run.workflow, &run.sha256).await {
            Ok((pre, _)) => pre,
            Err(
                e @ (Error::BlobMissing { .. }
                | Error::InvalidComponent(_)
                | Error::NoRun
                | Error::UnsupportedImport(_)),
            ) => {
                return self.finish(&run, run_rev, Err(e.to_string())).await;
            }
            Err(e) => return Err(e),
        };
        let output = OutputPipe::default();
        let exec = Exec::new(self.clone(), run.clone(), run_rev, claim, journal, output.clone());
        let mut store = wasmtime::Store::new(&self.inner.runtime.engine, exec);
        store.limiter(|e| &mut e.limits);
        let budget = self.inner.options.cpu_budget.as_millis().div_ceil(hearth_wasm::TICK.as_millis()) as u64;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let cx = &mut ctx.data_mut().cx;
            cx.ticks += 1;
            if cx.ticks >= budget.max(1) {
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        let started = Instant::now();
        let result = async {
            let workflow = pre.instantiate_async(&mut store).await?;
            workflow.call_run(&mut store, &run.input).await
        }
        .await;
        self.save_output(&run, output.take()).await;
        let cx = &store.data().cx;
        tracing::debug!(
            run = id,
            replayed = cx.cursor.entries().len() as u32 - cx.live_steps,
            live = cx.live_steps,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Workflow execution ended."
        );
        let end = match result {
            Ok(returned) => match cx.cursor.finish() {
                Ok(()) => returned,
                Err(divergence) => Err(divergence.to_string()),
            },
            Err(error) => match error.downcast_ref::<Stop>() {
                Some(Stop::Suspend(wait)) => return self.suspend(&run, run_rev, wait.clone()).await,
                Some(Stop::Interrupted(why)) => {
                    tracing::debug!(run = id, why = %why, "A workflow execution was interrupted.");
                    return Ok(());
                }
                Some(Stop::Store(message)) => {
                    return Err(Error::Store(hearth_store::Error::Backend(message.clone().into())));
                }
                Some(stop @ (Stop::Diverged(_) | Stop::Corrupt { .. })) => Err(stop.to_string()),
                None if error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) => {
                    Err(format!(
                        "the workflow computed for more than {} without a durable call, and was stopped; a workflow should wait with sleep or wait-signal, not spin",
                        crate::human_duration(self.inner.options.cpu_budget.as_millis() as u64)
                    ))
                }
                None => Err(format!("the workflow trapped: {error:#}")),
            },
        };
        self.finish(&run, run_rev, end).await
    }

    /// Writes the end of a run, unless it changed since `rev`.
    async fn finish(&self, run: &Run, rev: Revision, end: Result<String, String>) -> Result<(), Error> {
        let mut ended = run.clone();
        let now = now_ms();
        match end {
            Ok(output) => {
                ended.status = Status::Completed;
                ended.output = Some(output);
            }
            Err(error) => {
                tracing::info!(run = %run.id, error = %error, "A workflow run failed.");
                ended.status = Status::Failed;
                ended.error = Some(error);
            }
        }
        ended.wait = None;
        ended.executions += 1;
        ended.updated_at = now;
        ended.finished_at = Some(now);
        // The parent, if any, is woken by the record this writes.
        self.write_run(&ended, rev).await?;
        Ok(())
    }

    async fn suspend(&self, run: &Run, rev: Revision, wait: Wait) -> Result<(), Error> {
        let mut waiting = run.clone();
        waiting.status = Status::Waiting;
        waiting.executions += 1;
        waiting.updated_at = now_ms();
        waiting.wait = Some(wait);
        // Its timer, if any, is set by the record this writes.
        self.write_run(&waiting, rev).await?;
        Ok(())
    }

    /// Replaces the run record if it is still at `rev`.
    async fn write_run(&self, run: &Run, rev: Revision) -> Result<bool, Error> {
        let key = record::run_key(&run.id);
        let txn = Txn::new().when(Compare::mod_revision(&key, rev)).and_then(Op::Put {
            key,
            value: encode(run),
            lease: None,
        });
        Ok(self.inner.store.txn(txn).await?.succeeded)
    }

    async fn save_output(&self, run: &Run, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let key = format!("{}{:06}", record::output_prefix(&run.id), run.executions);
        let line = LogLine {
            time: now_ms(),
            source: "output".into(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        };
        if let Err(e) = self.inner.store.put(&key, encode(&line), None).await {
            tracing::warn!(run = %run.id, error = %e, "Cannot keep a workflow's output.");
        }
    }

    async fn journal(&self, id: &str) -> Result<Vec<Entry>, Error> {
        let range = self.inner.store.range(&record::journal_prefix(id)).await?;
        range.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    /// The pre-instantiated component of `sha256`, compiling it if needed.
    async fn prepare(&self, workflow: &str, sha256: &str) -> Result<(WorkflowPre<Exec>, bool), Error> {
        // The usual case, every wake-up: no blocking thread needed.
        if let Some(pre) = self.inner.runtime.loaded(sha256) {
            return Ok((pre, false));
        }
        let this = self.clone();
        let (workflow, sha256) = (workflow.to_owned(), sha256.to_owned());
        tokio::task::spawn_blocking(move || {
            let path = this.inner.blobs_dir.join(format!("{sha256}.wasm"));
            this.inner.runtime.prepare(&sha256, || {
                std::fs::read(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Error::BlobMissing {
                        workflow: workflow.clone(),
                        sha256: sha256.clone(),
                        dir: this.inner.blobs_dir.clone(),
                    },
                    _ => Error::io(&path, e),
                })
            })
        })
        .await
        .map_err(|e| Error::Runtime(format!("the compile task failed: {e}")))?
    }

    // ----------------------------------------------------------------------
    // Definitions

    /// Uploads, checks and compiles a workflow component, and makes it the
    /// version new runs start on. Runs already started stay on theirs.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        manifest: Option<String>,
    ) -> Result<Deployed, Error> {
        let started = Instant::now();
        record::validate_name(name)?;
        if bytes.len() > self.inner.options.max_upload {
            return Err(Error::TooLarge { size: bytes.len(), limit: self.inner.options.max_upload });
        }
        runtime::check_header(&bytes)?;
        let triggers = Triggers::parse(manifest.as_deref().unwrap_or(""))?;
        let sha256 = hearth_wasm::sha256_hex(&bytes);
        let size = bytes.len() as u64;
        let blob = self.inner.blobs_dir.join(format!("{sha256}.wasm"));
        let bytes = Arc::new(bytes);
        let (_, compiled) = {
            let (this, sha, bytes) = (self.clone(), sha256.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || this.inner.runtime.prepare(&sha, || Ok(bytes.to_vec())))
                .await
                .map_err(|e| Error::Runtime(format!("the compile task failed: {e}")))??
        };
        if !blob.is_file() {
            hearth_wasm::write_atomically(&blob, &bytes)?;
        }
        let _guard = self.inner.deploys.lock().await;
        let key = record::def_key(name);
        for _ in 0..16 {
            let existing = self.inner.store.get(&key).await?;
            let now = now_ms();
            let (mut def, rev) = match &existing {
                Some(kv) => (decode::<Definition>(&kv.key, &kv.value)?, kv.mod_revision),
                None => (
                    Definition {
                        name: name.to_owned(),
                        versions: Vec::new(),
                        active: 0,
                        triggers: Triggers::default(),
                        created_at: now,
                        updated_at: now,
                    },
                    0,
                ),
            };
            let number = def.versions.iter().map(|v| v.number).max().unwrap_or(0) + 1;
            let version =
                Version { number, sha256: sha256.clone(), size, created_at: now, manifest: manifest.clone() };
            def.versions.push(version.clone());
            def.active = number;
            def.triggers = triggers.clone();
            def.updated_at = now;
            let txn = Txn::new().when(Compare::mod_revision(&key, rev)).and_then(Op::Put {
                key: key.clone(),
                value: encode(&def),
                lease: None,
            });
            if self.inner.store.txn(txn).await?.succeeded {
                return Ok(Deployed {
                    workflow: name.to_owned(),
                    version,
                    compiled,
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                });
            }
        }
        Err(Error::Contended(name.to_owned()))
    }

    pub async fn definitions(&self) -> Result<Vec<Definition>, Error> {
        let range = self.inner.store.range(record::DEFS).await?;
        range.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    pub async fn definition(&self, name: &str) -> Result<Definition, Error> {
        let key = record::def_key(name);
        match self.inner.store.get(&key).await? {
            Some(kv) => decode(&key, &kv.value),
            None => Err(Error::NotFound(name.to_owned())),
        }
    }

    /// Removes a workflow: no new runs start. Runs under way go on, on the
    /// version they started on.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        // Its triggers go with it, in the same transaction (no trigger
        // outlives its workflow, whatever happens between); its runs and
        // their journals stay.
        let key = record::def_key(name);
        let txn = hearth_store::Txn::new()
            .when(hearth_store::Compare::exists(key.as_str()))
            .and_then(hearth_store::Op::Delete { key })
            .and_then(hearth_store::Op::DeletePrefix { prefix: record::triggers_prefix(name) })
            .and_then(hearth_store::Op::DeletePrefix { prefix: format!("{}{name}/", record::CRON) });
        if !self.inner.store.txn(txn).await?.succeeded {
            return Err(Error::NotFound(name.to_owned()));
        }
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Runs

    /// Starts a run of the workflow's active version; with an id that
    /// exists, returns that run instead (starting is idempotent).
    pub async fn start(&self, request: StartRequest) -> Result<Started, Error> {
        record::validate_name(&request.workflow)?;
        let id = match &request.id {
            Some(id) => id.clone(),
            None => format!("{}-{:012x}", request.workflow, rand::random::<u64>() >> 16),
        };
        record::validate_run_id(&id)?;
        let key = record::run_key(&id);
        if let Some(kv) = self.inner.store.get(&key).await? {
            return self.existing(&request.workflow, &kv);
        }
        let def = self.definition(&request.workflow).await?;
        let version = def
            .version(def.active)
            .ok_or_else(|| Error::Invalid(format!("workflow {:?} has no active version", def.name)))?;
        let now = now_ms();
        let run = Run {
            id: id.clone(),
            workflow: def.name.clone(),
            version: version.number,
            sha256: version.sha256.clone(),
            status: Status::Running,
            input: request.input,
            output: None,
            error: None,
            wait: None,
            parent: request.parent,
            started_by: if request.started_by.is_empty() { "api".into() } else { request.started_by },
            executions: 0,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let txn = Txn::new()
            .when(Compare::missing(&key))
            .and_then(Op::Put { key: key.clone(), value: encode(&run), lease: None })
            .or_else(Op::Get { key: key.clone() });
        let done = self.inner.store.txn(txn).await?;
        if !done.succeeded {
            return match done.responses.first() {
                Some(OpResponse::Get { kv: Some(kv) }) => self.existing(&request.workflow, kv),
                _ => Err(Error::Contended(id)),
            };
        }
        // The executor follows run records: this one wakes it.
        Ok(Started { run, created: true })
    }

    fn existing(&self, workflow: &str, kv: &KeyValue) -> Result<Started, Error> {
        let run: Run = decode(&kv.key, &kv.value)?;
        if run.workflow != workflow {
            return Err(Error::IdTaken { id: run.id, existing: run.workflow, asked: workflow.to_owned() });
        }
        Ok(Started { run, created: false })
    }

    pub async fn get_run(&self, id: &str) -> Result<Run, Error> {
        let key = record::run_key(id);
        match self.inner.store.get(&key).await? {
            Some(kv) => decode(&key, &kv.value),
            None => Err(Error::RunNotFound(id.to_owned())),
        }
    }

    /// The run once it has ended, or as it is when `timeout` passes first.
    /// Follows the run's record in the store: no polling.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Run, Error> {
        let key = record::run_key(id);
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(kv) = self.inner.store.get(&key).await? else {
            return Err(Error::RunNotFound(id.to_owned()));
        };
        // The prefix also matches longer ids; a change to one of them just
        // means reading this run again.
        let mut changes =
            Follower::new(self.inner.store.clone(), key.clone(), kv.mod_revision + 1, "Run wait");
        let mut run: Run = decode(&key, &kv.value)?;
        loop {
            if run.status.is_terminal() {
                return Ok(run);
            }
            if tokio::time::timeout_at(deadline, changes.next()).await.is_err() {
                return Ok(run);
            }
            let Some(kv) = self.inner.store.get(&key).await? else {
                return Err(Error::RunNotFound(id.to_owned()));
            };
            run = decode(&key, &kv.value)?;
        }
    }

    /// Runs, newest first, optionally only those with `status` or of `workflow`.
    pub async fn runs(&self, status: Option<Status>, workflow: Option<&str>) -> Result<Vec<Run>, Error> {
        let range = self.inner.store.range(record::RUNS).await?;
        let mut runs: Vec<Run> = range
            .kvs
            .iter()
            .map(|kv| decode::<Run>(&kv.key, &kv.value))
            .filter(|r| match r {
                Ok(run) => {
                    status.is_none_or(|s| run.status == s) && workflow.is_none_or(|w| run.workflow == w)
                }
                Err(_) => true,
            })
            .collect::<Result<_, _>>()?;
        runs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(runs)
    }

    /// A run with its journal and the signals no step has consumed yet.
    pub async fn show(&self, id: &str) -> Result<RunDetail, Error> {
        let run = self.get_run(id).await?;
        let journal = self.journal(id).await?;
        let consumed: HashSet<&str> = journal
            .iter()
            .filter_map(|e| match &e.outcome {
                Recorded::Signal { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let signals = self.inner.store.range(&record::signals_prefix(id)).await?;
        let mut pending_signals = Vec::new();
        for kv in &signals.kvs {
            if !consumed.contains(kv.key.as_str()) {
                pending_signals.push(decode::<Signal>(&kv.key, &kv.value)?);
            }
        }
        Ok(RunDetail { run, journal, pending_signals })
    }

    /// Sends a signal; the run takes it at its next `wait-signal` for `name`.
    pub async fn signal(&self, id: &str, name: &str, data: String) -> Result<(), Error> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "signal name {name:?} is not valid: use 1 to 128 printable characters"
            )));
        }
        let run = self.get_run(id).await?;
        if run.status.is_terminal() {
            return Err(Error::Ended { id: id.to_owned(), status: run.status.as_str() });
        }
        let signal = Signal { name: name.to_owned(), data, sent_at: now_ms() };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = format!("{}{nanos:024}-{:08x}", record::signals_prefix(id), rand::random::<u32>());
        // The executor follows signals: this one wakes the run if it waits
        // for it.
        self.inner.store.put(&key, encode(&signal), None).await?;
        Ok(())
    }

    /// The first signal called `name` that no step has consumed.
    pub(crate) async fn pending_signal(
        &self,
        id: &str,
        name: &str,
        consumed: &HashSet<String>,
    ) -> Result<Option<(String, Signal)>, Error> {
        let range = self.inner.store.range(&record::signals_prefix(id)).await?;
        for kv in range.kvs {
            if consumed.contains(&kv.key) {
                continue;
            }
            let signal: Signal = decode(&kv.key, &kv.value)?;
            if signal.name == name {
                return Ok(Some((kv.key, signal)));
            }
        }
        Ok(None)
    }

    async fn has_pending_signal(&self, id: &str, name: &str) -> Result<bool, Error> {
        let consumed: HashSet<String> = self
            .journal(id)
            .await?
            .into_iter()
            .filter_map(|e| match e.outcome {
                Recorded::Signal { key, .. } => Some(key),
                _ => None,
            })
            .collect();
        Ok(self.pending_signal(id, name, &consumed).await?.is_some())
    }

    /// Cancels a run that has not ended. Its execution, if one is under way,
    /// stops at its next step; a parent waiting on it is woken.
    pub async fn cancel(&self, id: &str) -> Result<Run, Error> {
        let key = record::run_key(id);
        for _ in 0..16 {
            let Some(kv) = self.inner.store.get(&key).await? else {
                return Err(Error::RunNotFound(id.to_owned()));
            };
            let mut run: Run = decode(&key, &kv.value)?;
            if run.status.is_terminal() {
                return Err(Error::Ended { id: id.to_owned(), status: run.status.as_str() });
            }
            let now = now_ms();
            run.status = Status::Cancelled;
            run.wait = None;
            run.error = Some("cancelled".into());
            run.updated_at = now;
            run.finished_at = Some(now);
            // A parent waiting on this run is woken by the record.
            if self.write_run(&run, kv.mod_revision).await? {
                return Ok(run);
            }
        }
        Err(Error::Contended(id.to_owned()))
    }

    /// Moves a run that has not ended to another version of its workflow,
    /// to ship a fix to a run that waits. Its next execution replays the
    /// journal on the new code; if the new code does not make the same
    /// calls as the old one did, the run fails with the step that differs.
    pub async fn migrate(&self, id: &str, to: u32) -> Result<Run, Error> {
        let key = record::run_key(id);
        for _ in 0..16 {
            let Some(kv) = self.inner.store.get(&key).await? else {
                return Err(Error::RunNotFound(id.to_owned()));
            };
            let mut run: Run = decode(&key, &kv.value)?;
            if run.status.is_terminal() {
                return Err(Error::Ended { id: id.to_owned(), status: run.status.as_str() });
            }
            let def = self.definition(&run.workflow).await?;
            let version = def.version(to).ok_or_else(|| {
                let have: Vec<String> = def.versions.iter().map(|v| v.number.to_string()).collect();
                Error::Invalid(format!(
                    "workflow {:?} has no version {to}; it has {}",
                    def.name,
                    have.join(", ")
                ))
            })?;
            run.version = version.number;
            run.sha256 = version.sha256.clone();
            run.updated_at = now_ms();
            if self.write_run(&run, kv.mod_revision).await? {
                return Ok(run);
            }
        }
        Err(Error::Contended(id.to_owned()))
    }

    /// What the run logged (the durable `log` call, once each) and printed.
    pub async fn logs(&self, id: &str) -> Result<Vec<LogLine>, Error> {
        self.get_run(id).await?;
        let mut lines: Vec<LogLine> = self
            .journal(id)
            .await?
            .into_iter()
            .filter_map(|e| match e.call {
                Call::Log { message } => Some(LogLine { time: e.at, source: "log".into(), text: message }),
                _ => None,
            })
            .collect();
        let output = self.inner.store.range(&record::output_prefix(id)).await?;
        for kv in &output.kvs {
            lines.push(decode(&kv.key, &kv.value)?);
        }
        lines.sort_by_key(|l| l.time);
        Ok(lines)
    }

    /// Runs being executed right now (for tests and `status`).
    pub fn executing(&self) -> usize {
        lock(&self.inner.active).len()
    }
}

fn crate_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
