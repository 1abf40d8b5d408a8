//! The executor. It is driven by records, not calls: it follows the store's
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

use std::time::{Duration, Instant};

use hearth_store::{Change, Compare, Follower, LeaseId, Op, Revision, Txn};
use tokio::sync::watch;
use wasmtime::UpdateDeadline;

use super::{LogLine, Workflows, crate_chain, lock};
use crate::host::{Exec, OutputPipe, Stop, bindings::WorkflowPre};
use crate::journal::Entry;
use crate::record::{self, Run, Signal, Status, Wait, WaitKind, decode, encode};
use crate::{Error, now_ms};

/// How long an executor's claims outlive it: a lease renewed every third of
/// this while it runs.
const LEASE_TTL: Duration = Duration::from_secs(10);

impl Workflows {
    /// Picks up every run where it was, then follows runs, signals and
    /// claims, and fires timers, cron and event triggers, until `shutdown`
    /// turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        self.give_up_last_life().await?;
        let from = self.recover(true).await? + 1;
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
        let leases: std::collections::BTreeSet<LeaseId> = claims
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
                self.recover(false).await?;
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
    /// Returns the revision the runs were read at. At start-up
    /// (`after_restart`) the runs picked up are recorded as an act, for
    /// `hearth alert history`.
    async fn recover(&self, after_restart: bool) -> Result<Revision, Error> {
        let runs = self.inner.store.range(record::RUNS).await?;
        let (mut woken, mut waiting) = (0, 0);
        let mut picked_up: Vec<&str> = Vec::new();
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
                    picked_up.push(kv.key.trim_start_matches(record::RUNS));
                }
                (Status::Waiting, Some(wait)) => {
                    waiting += 1;
                    picked_up.push(kv.key.trim_start_matches(record::RUNS));
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
        if after_restart && !picked_up.is_empty() {
            let mut named = picked_up.iter().take(5).copied().collect::<Vec<_>>().join(", ");
            if picked_up.len() > 5 {
                named.push_str(&format!(" and {} more", picked_up.len() - 5));
            }
            let reason = format!(
                "picked up {} runs when the daemon restarted ({woken} to resume, {} waiting): {named}",
                picked_up.len(),
                picked_up.len() - woken
            );
            hearth_store::acts::record(&*self.inner.store, "workflows", "recovered", reason).await;
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
                | Error::Shared(hearth_wasm::blobs::Error::Corrupt { .. })
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
                Some(Stop::Config(message)) => return Err(Error::Config(message.clone())),
                Some(stop @ (Stop::Diverged(_) | Stop::Corrupt { .. } | Stop::Sealed { .. })) => {
                    Err(stop.to_string())
                }
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
        if self.write_run(&ended, rev).await? && ended.status == Status::Failed {
            self.count_failed(&ended.workflow);
        }
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
    pub(super) async fn write_run(&self, run: &Run, rev: Revision) -> Result<bool, Error> {
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

    pub(super) async fn journal(&self, id: &str) -> Result<Vec<Entry>, Error> {
        let range = self.inner.store.range(&record::journal_prefix(id)).await?;
        range.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    /// The pre-instantiated component of `sha256`, compiling it if needed.
    /// Bytes missing here are fetched from the store, where the host that
    /// deployed the version shared them if it shares the store with others.
    async fn prepare(&self, workflow: &str, sha256: &str) -> Result<(WorkflowPre<Exec>, bool), Error> {
        // The usual case, every wake-up: no blocking thread needed.
        if let Some(pre) = self.inner.runtime.loaded(sha256) {
            return Ok((pre, false));
        }
        match self.compile(workflow, sha256).await {
            Err(missing @ Error::BlobMissing { .. }) => {
                let Some(bytes) =
                    hearth_wasm::blobs::fetch(&*self.inner.store, record::BLOBS, sha256).await?
                else {
                    return Err(missing);
                };
                let (path, size) = (self.inner.blobs_dir.join(format!("{sha256}.wasm")), bytes.len());
                tokio::task::spawn_blocking(move || hearth_wasm::write_atomically(&path, &bytes))
                    .await
                    .map_err(|e| Error::Runtime(format!("the write task failed: {e}")))??;
                tracing::info!(workflow, sha256, size, "Fetched a workflow's component from the store.");
                self.compile(workflow, sha256).await
            }
            compiled => compiled,
        }
    }

    /// [`Workflows::prepare`] from the compiled cache or the bytes in the
    /// data dir ([`Error::BlobMissing`] when they are not there).
    async fn compile(&self, workflow: &str, sha256: &str) -> Result<(WorkflowPre<Exec>, bool), Error> {
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
}
